"""Task lists and calibration specs that several families share as defaults (names only: no task is loaded here)."""

from __future__ import annotations

SMOKE_TASKS: tuple[str, ...] = ("tamp_smoke_vqa", "tamp_smoke_mc")
# The paper's calibration: 128 conversations of the ShareGPT4V subset of LLaVA-NeXT-Data.
# $TAMP_DATA (default ./data) holds it; pass --calib to use anything else.
SHAREGPT4V = "$TAMP_DATA/sharegpt4v/llava_next_sharegpt4v.json:$TAMP_DATA/sharegpt4v/images"
# The paper's audio-visual calibration: AVInstruct's AVQA-music split (samples name a "video" and an "audio" file).
AVINSTRUCT = "$TAMP_DATA/avinstruct/avinstruct_avqa_music.json:$TAMP_DATA/avinstruct/media"
IMAGE_TASKS = ("textvqa_val", "vizwiz_vqa_val", "pope", "mme", "mmbench_en_dev_static", "scienceqa_img", "muirbench")
VIDEO_TASKS = ("mvbench", "videomme", "nextqa_mc_test", "egoschema_subset")
AUDIO_TASKS = ("clotho_aqa_test", "vocalsound_test")
# offline audio / video smoke tasks (tasks/tamp_smoke_av) for the tiny audio and video families
SMOKE_AUDIO = ("tamp_smoke_audio",)
SMOKE_VIDEO = ("tamp_smoke_video", "tamp_smoke_video_mc")
# LLaVA and Qwen-VL stacks: the language model under model.language_model (older layouts: language_model.model)
VLM_TEXT_PATHS = ("model.language_model", "language_model.model")
# CLIP / SigLIP towers of the LLaVA families, as transformers nests them now and did before
LLAVA_VISION_PATHS = ("model.vision_tower.encoder.layers", "model.vision_tower.vision_model.encoder.layers",
                      "vision_tower.vision_model.encoder.layers")
QWEN_VISION_PATHS = ("model.visual.blocks", "visual.blocks")

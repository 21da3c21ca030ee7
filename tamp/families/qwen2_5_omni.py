"""Qwen2.5-Omni: audio + vision encoders and a language model (the thinker), plus a speech talker tamp never runs.

The transformers-native audio-visual model nearest to the paper's VideoLLaMA2-AV (which is not transformers-native).
Its top-level model has no forward (only generate, which also drives the talker): the thinker is what takes a
processor batch, and its config is where the media token ids sit.
"""

from __future__ import annotations

from tamp.families.base import Evaluation, Family, TinyBuild, VideoFallback
from tamp.families.defaults import AUDIO_TASKS, AVINSTRUCT, SMOKE_AUDIO, SMOKE_VIDEO, VIDEO_TASKS

# The talker's speaker file: from_pretrained insists on it even with the talker disabled, and save_pretrained does
# not write it, so artifacts copy it and the tiny builder writes a placeholder.
SPEAKER_FILE = "spk_dict.pt"

FAMILY = Family(
    name="qwen2.5-omni", model_type="qwen2_5_omni", model_class="Qwen2_5OmniForConditionalGeneration", order=6,
    inputs=("image", "video", "audio"), registry_name="qwen2.5-omni", hf_id="Qwen/Qwen2.5-Omni-7B",
    text_model_paths=("thinker.model.language_model",), text_config_paths=("thinker_config.text_config",),
    vision_layer_paths=("thinker.model.visual.blocks",),
    media_token_configs=("", "thinker_config"), forward_path="thinker", extra_files=(SPEAKER_FILE,),
    video_fallback=VideoFallback("Qwen2_5OmniProcessor", "QwenVideoProcessorNumpy"),
    tiny=TinyBuild("tamp.testing.tiny:build_qwen2_5_omni", tokenizer="qwen2.5-omni", order=8),
    # audio-visual: the paper's AVInstruct AVQA-music JSON + media under $TAMP_DATA/avinstruct (fetch it yourself;
    # any LLaVA-format JSON whose samples name "video" / "audio" files works with --calib FILE.json:MEDIA_DIR)
    evaluation=Evaluation("tamp_qwen2_5_omni", AVINSTRUCT, (*AUDIO_TASKS, *VIDEO_TASKS), (*SMOKE_AUDIO, SMOKE_VIDEO[0]),
                          order=6),
)

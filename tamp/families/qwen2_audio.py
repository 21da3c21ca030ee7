"""Qwen2-Audio: a Whisper-style audio encoder in front of a Qwen2 language model; no default calibration set."""

from __future__ import annotations

from tamp.families.base import Evaluation, Family, TinyBuild
from tamp.families.defaults import AUDIO_TASKS, SMOKE_AUDIO, VLM_TEXT_PATHS

FAMILY = Family(
    name="qwen2-audio", model_type="qwen2_audio", model_class="Qwen2AudioForConditionalGeneration", order=5,
    inputs=("audio",), registry_name="qwen2-audio", hf_id="Qwen/Qwen2-Audio-7B-Instruct",
    text_model_paths=VLM_TEXT_PATHS, vision_layer_paths=(),
    tiny=TinyBuild("tamp.testing.tiny:build_qwen2_audio", tokenizer="qwen2-audio", order=6),
    evaluation=Evaluation("tamp_qwen2_audio", None, AUDIO_TASKS, SMOKE_AUDIO, order=5),
)

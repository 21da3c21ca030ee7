"""lmms-eval model wrappers for tamp artifacts, registered through the `lmms_eval.models` entry point.

pyproject.toml points the entry point at `manifests`, so after `make install`
`python -m lmms_eval --model tamp_llava_hf --model_args pretrained=DIR ...` finds them. This module
imports nothing from lmms-eval at import time: lmms-eval loads its entry points while
`lmms_eval.models` is being imported, so a top-level import here would be circular whenever a
wrapper module is imported first. Each wrapper module (and the stock wrapper it subclasses) is
imported only when lmms-eval first asks for that model. All are simple (non-chat) models: they serve
generation and multiple-choice tasks alike.
"""

from __future__ import annotations

from typing import Any

# lmms-eval model id -> wrapper class path (each family's Evaluation.wrapper, tamp.families, names the id it uses)
WRAPPER_CLASSES: dict[str, str] = {
    "tamp_llava_hf": "harness.wrappers.llava_hf.TampLlavaHf",
    "tamp_qwen2_vl": "harness.wrappers.qwen_vl.TampQwen2VL",
    "tamp_qwen2_5_vl": "harness.wrappers.qwen_vl.TampQwen2_5VL",
    "tamp_qwen2_audio": "harness.wrappers.qwen2_audio.TampQwen2Audio",
    "tamp_qwen2_5_omni": "harness.wrappers.qwen2_5_omni.TampQwen2_5Omni",
    "tamp_smolvlm": "harness.wrappers.smolvlm.TampSmolVLM",
    "tamp_qwen3_vl": "harness.wrappers.qwen3_vl.TampQwen3VL",
    "tamp_internvl3": "harness.wrappers.internvl3.TampInternVL3",
    "tamp_gemma3": "harness.wrappers.gemma3.TampGemma3",
}


def manifests() -> list[Any]:
    """The entry point's payload: one simple-model ModelManifest per wrapper."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=model_id, simple_class_path=path) for model_id, path in WRAPPER_CLASSES.items()]

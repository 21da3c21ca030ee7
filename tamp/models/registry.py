"""Short model names -> where the weights come from."""

from __future__ import annotations

import os
from pathlib import Path

# short name -> Hugging Face id (the paper's LLaVA-NeXT is the llava-hf conversion of llama3-llava-next-8b)
HF_MODELS: dict[str, str] = {
    "llava-next": "llava-hf/llama3-llava-next-8b-hf",
    "llava-1.5": "llava-hf/llava-1.5-7b-hf",
    "llava-onevision": "llava-hf/llava-onevision-qwen2-7b-ov-hf",
    "qwen2-vl": "Qwen/Qwen2-VL-7B-Instruct",
    "qwen2.5-vl": "Qwen/Qwen2.5-VL-7B-Instruct",
    "qwen2-audio": "Qwen/Qwen2-Audio-7B-Instruct",
    # the transformers-native audio-visual model nearest to the paper's VideoLLaMA2-AV (not transformers-native)
    "qwen2.5-omni": "Qwen/Qwen2.5-Omni-7B",
}
# short names served from a GGUF file shipped inside a PyPI package
GGUF_MODELS: tuple[str, ...] = ("smollm2",)
TINY_PREFIX = "tiny-"


def tiny_cache_dir() -> Path:
    """Where tiny random models are built on first use (deterministic, so a cache is safe)."""
    root = os.environ.get("TAMP_CACHE", str(Path.home() / ".cache" / "tamp"))
    return Path(root) / "tiny"


def registry_names() -> list[str]:
    from tamp.tiny import TINY_FAMILIES

    return [*HF_MODELS, *GGUF_MODELS, *(TINY_PREFIX + f for f in TINY_FAMILIES)]

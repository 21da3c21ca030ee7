"""Scores of a block's attention (last-row attention, or any function of its query and key), captured while
the block runs.

AMIA and FastV score tokens by how much the last token attends to them; AIM runs PageRank over the whole
attention. Rather than re-deriving queries and keys per family (RoPE, GQA, Qwen2-VL's mrope), a wrapper is
registered in transformers' AttentionInterface: it runs the block's own attention function unchanged and
additionally computes the score from the exact query / key tensors the block produced. The last-row score
forms one row only, so its memory stays O(T).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from tamp.models import internals

_NAME = "tamp_last_row"
_state: dict[str, Any] = {"inner": None, "sink": None, "score": None}

# (query [B, H, T, d], key [B, KVH, T, d], attention mask or None, scaling or None) -> a per-token score [B, T]
ScoreFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None", "float | None"], torch.Tensor]


@dataclass(frozen=True)
class AttentionScore:
    """A score of one layer's attention, and the FLOPs its matmuls cost: (tokens, heads, head_dim) -> FLOPs."""

    fn: ScoreFn
    flops: Callable[[int, int, int], float]


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
        _state["sink"].append(_state["score"](query, key, attention_mask, kwargs.get("scaling")))
    return out


AttentionInterface.register(_NAME, _wrapper)

_OVERRIDE = "tamp_override"
_override: dict[str, Any] = {"module": None, "inner": None, "fn": None}

# (the block's own attention function, module, query, key, value, mask, **kwargs) -> (output [B, T, H, d], weights)
OverrideFn = Callable[..., tuple[torch.Tensor, "torch.Tensor | None"]]


def _override_wrapper(module: nn.Module, query, key, value, attention_mask, **kwargs):
    inner = _override["inner"]
    if module is not _override["module"]:
        return inner(module, query, key, value, attention_mask, **kwargs)
    return _override["fn"](inner, module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(_OVERRIDE, _override_wrapper)


def _inner_function(attn_module: nn.Module, name: str) -> Callable:
    if name in ALL_ATTENTION_FUNCTIONS and name not in (_NAME, _OVERRIDE):
        return ALL_ATTENTION_FUNCTIONS[name]
    return internals.eager_attention(attn_module)


def find_attention(block: nn.Module) -> nn.Module:
    """The block's self-attention module (the one whose config picks the attention implementation)."""
    return internals.self_attention(block)


def attention_dims(block: nn.Module) -> tuple[int, int]:
    """(query heads, head_dim) of a block's self-attention."""
    return internals.attention_heads(block)


def head_logits(query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None, scaling: float | None,
                b: int, heads: slice) -> torch.Tensor:
    """Sample b, a slice of the query heads: the masked attention logits [h, Tq, Tk] in fp32 (the causal mask
    applied when the block runs without a mask tensor, as sdpa does with is_causal)."""
    n_heads, kvh, d = query.shape[1], key.shape[1], query.shape[-1]
    q = query[b, heads].float()
    kv_index = torch.arange(n_heads, device=key.device)[heads] // (n_heads // kvh)  # GQA: the head's key group
    k = key[b].float().index_select(0, kv_index)
    logits = (q @ k.transpose(-1, -2)) * (scaling if scaling is not None else d ** -0.5)
    tq, tk = q.shape[-2], k.shape[-2]
    if attention_mask is not None and attention_mask.dim() == 4:
        mask = attention_mask[b if attention_mask.shape[0] > 1 else 0, 0, -tq:, :tk]
        return logits.masked_fill_(~mask, float("-inf")) if mask.dtype == torch.bool else logits.add_(mask.float())
    causal = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(tk - tq)
    return logits.masked_fill_(~causal, float("-inf"))


def allowed_keys(attention_mask: torch.Tensor | None, b: int, tq: int, tk: int, device: torch.device) -> torch.Tensor:
    """[tq, tk] bool: which keys each of the last tq queries of sample b may attend to, from a 4-D mask (bool, or
    additive with 0 where allowed), or the causal pattern when the block runs without one."""
    if attention_mask is not None and attention_mask.dim() == 4:
        mask = attention_mask[b if attention_mask.shape[0] > 1 else 0, 0, -tq:, :tk]
        return mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
    return torch.ones(tq, tk, dtype=torch.bool, device=device).tril(tk - tq)


LAST_ROW = AttentionScore(last_row_attention, lambda tokens, heads, head_dim: 2.0 * tokens * heads * head_dim)


@contextmanager
def capture_attention_score(block: nn.Module, sink: list[torch.Tensor],
                            score: ScoreFn = last_row_attention) -> Iterator[None]:
    """While active, every forward of `block` appends score(query, key, mask, scaling) [B, T] to `sink`."""
    attn = find_attention(block)
    config = attn.config
    original = internals.attention_implementation(config)
    _state["inner"] = _inner_function(attn, original or "eager")
    _state["sink"], _state["score"] = sink, score
    internals.set_attention_implementation(config, _NAME)
    try:
        yield
    finally:
        internals.set_attention_implementation(config, original)
        _state["inner"], _state["sink"], _state["score"] = None, None, None


@contextmanager
def override_attention(attn: nn.Module, fn: OverrideFn) -> Iterator[None]:
    """While active, the attention module `attn` (one block's self-attention, after its own q/k/v projections and
    rotary embedding) computes its attention with fn(inner, module, query, key, value, mask, **kwargs), where
    inner is the attention function it would have used. For one call: the config is shared by every block."""
    config = attn.config
    original = internals.attention_implementation(config)
    saved = dict(_override)
    _override.update(module=attn, inner=_inner_function(attn, original or "eager"), fn=fn)
    internals.set_attention_implementation(config, _OVERRIDE)
    try:
        yield
    finally:
        internals.set_attention_implementation(config, original)
        _override.update(saved)


def capture_last_row_attention(block: nn.Module, sink: list[torch.Tensor]) -> Any:
    """While active, every forward of `block` appends its [B, T] last-row attention to `sink`."""
    return capture_attention_score(block, sink, last_row_attention)


def rows_attention(query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None,
                   scaling: float | None, rows: list[torch.Tensor]) -> torch.Tensor:
    """[B, T] attention probabilities of a few query rows per sample (rows[b]: positions in the current sequence),
    mean over heads and over those rows (fp32): an [R, T] block per head, never the [T, T] matrix (SparseVLM's
    text raters). A sample with no rows scores zero."""
    b_size, h, t, d = query.shape
    out = query.new_zeros(b_size, key.shape[-2], dtype=torch.float32)
    for b in range(b_size):
        if rows[b].numel() == 0:
            continue
        q = query[b][:, rows[b]].float()
        k = key[b].float().repeat_interleave(h // key.shape[1], dim=0)
        logits = torch.matmul(q, k.transpose(-1, -2)) * (scaling if scaling is not None else d ** -0.5)
        allowed = allowed_keys(attention_mask, b, t, k.shape[-2], query.device)[rows[b]]
        probs = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
        out[b] = torch.nan_to_num(probs, nan=0.0).mean(dim=(0, 1))
    return out


def rows_score(rows: Callable[[int], list[torch.Tensor]]) -> AttentionScore:
    """An AttentionScore of the query rows rows(T) names per sample (T: the current length): 2 x R x T x H x d
    FLOPs for the mean R rows."""

    def flops(tokens: int, heads: int, head_dim: int) -> float:
        chosen = rows(tokens)
        return 2.0 * sum(r.numel() for r in chosen) / max(1, len(chosen)) * tokens * heads * head_dim

    return AttentionScore(lambda q, k, mask, scaling: rows_attention(q, k, mask, scaling, rows(q.shape[2])), flops)

"""A gated MLP (Llama / Qwen2: down(act(gate(x)) * up(x))) run on the first `channels` intermediate channels only.

YOPO's sparse FFN projection for visual tokens zeroes the gate and up outputs beyond a channel count for the
visual positions; with act(0) = 0 (SiLU) those channels add nothing, so the same result comes from slicing
the weights and skipping them, which is what saves the compute.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

# bumped when what this module computes changes: the artifact keys of the methods using it cover it
VERSION = 1


def kept_channels(intermediate: int, keep: float) -> int:
    """Channels left at fraction `keep` (int(), as the release's int(I / mlpcut_ratio)); at least one."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"FFN keep must be in (0, 1], got {keep}")
    return max(1, int(intermediate * keep))


def _linear(x: Tensor, layer: nn.Linear, rows: slice | None = None, cols: slice | None = None) -> Tensor:
    weight = layer.weight
    if rows is not None:
        weight = weight[rows]
    if cols is not None:
        weight = weight[:, cols]
    bias = layer.bias[rows] if layer.bias is not None and rows is not None else layer.bias
    return torch.nn.functional.linear(x, weight, bias)


def sliced_mlp(x: Tensor, gate: nn.Linear, up: nn.Linear, down: nn.Linear, act: Callable[[Tensor], Tensor],
               channels: int) -> Tensor:
    """down(act(gate(x)) * up(x)) over intermediate channels [0, channels) only."""
    keep = slice(0, channels)
    return _linear(act(_linear(x, gate, rows=keep)) * _linear(x, up, rows=keep), down, cols=keep)

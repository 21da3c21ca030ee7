"""The attention each patch receives at the vision encoder's feature layer (mean over heads and queries), for
HoliTom, which picks each frame's dominant tokens by it: an install on the vision tower.

HoliTom's release swaps in a SigLIP encoder that runs eager attention with `output_attentions=True` and reads the
last layer's [frames, H, T, T] matrix, averaged over heads and then over queries. Here the same column means are
formed from that layer's own query and key inside its attention call (tamp.engine.attention, so the layer itself
still runs its own kernel): one frame and a few heads at a time, so only a [h, T, T] block exists at once, never
the whole [frames, H, T, T]. Cost: 2 x T x T x head_dim per head per frame (the q k^T matmul).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from tamp.engine.attention import capture_attention_score
from tamp.errors import TampError

if TYPE_CHECKING:
    from tamp.inference.sequence_edit import SequenceEditor

CHUNK_BYTES = 1 << 26  # fp32 logits formed at once (64 MiB)


def received_attention(query: Tensor, key: Tensor, mask: Tensor | None, scaling: float | None) -> Tensor:
    """[B, H, T, d] query and key -> [B, T]: softmax(q k^T x scale) per head, averaged over heads, then over
    queries (the release's `attn_weights.mean(dim=1).mean(dim=1)`), in fp32."""
    batch, heads, tokens, d = query.shape
    kvh = key.shape[1]
    chunk = max(1, CHUNK_BYTES // (4 * tokens * tokens))
    out = torch.zeros(batch, tokens, dtype=torch.float32, device=query.device)
    for b in range(batch):
        for h in range(0, heads, chunk):
            q = query[b, h:h + chunk].float()
            index = torch.arange(h, min(h + chunk, heads), device=key.device) // (heads // kvh)
            logits = (q @ key[b].float().index_select(0, index).transpose(-1, -2)) * (
                scaling if scaling is not None else d ** -0.5)
            if mask is not None and mask.dim() == 4:
                m = mask[b if mask.shape[0] > 1 else 0, 0, :tokens, :tokens]
                logits = logits.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else logits + m.float()
            out[b] += torch.softmax(logits, dim=-1).mean(dim=1).sum(dim=0)
    return out / heads


@dataclass
class ReceivedCall:
    """One vision call: `rows` the attention each patch received, one [items, T] block per attention call of the
    layer (LLaVA-OneVision: one, [frames, T]; Qwen2-VL's tower attends frame by frame: one [1, T] per frame), and
    `flops` of their q k^T."""

    rows: list[Tensor]
    flops: float
    grid: Tensor | None = None  # Qwen-VL: the call's grid_thw

@dataclass
class ReceivedCapture:
    """Install (tamp.inference.sequence_edit.Install): appends a `ReceivedCall` per vision call to `calls` (the
    feature layer `vision_feature_layer` selects, or the tower's last block where the config has none);
    `check(config)` returns why the model cannot take the method, or None."""

    method: str
    check: Any = None
    calls: list[ReceivedCall] = field(default_factory=list)
    needs: tuple[str, ...] = ("vision attention",)  # what `tamp methods` lists
    editor: SequenceEditor | None = None
    _handles: list[Any] = field(default_factory=list)
    _context: Any = None
    _grid: Tensor | None = None

    def __call__(self, editor: SequenceEditor) -> ReceivedCapture:
        problem = self.check(editor.model.config) if self.check is not None else None
        if problem is not None:
            raise TampError(problem)
        stack = editor.adapter.vision_stack(editor.model)
        if stack is None:
            raise TampError(f"{self.method}: no vision tower found in this model")
        index = getattr(editor.model.config, "vision_feature_layer", -1)  # Qwen-VL: the tower's last block
        layer = list(stack.layers)[index if index < 0 else index - 1]
        self.editor, self.calls = editor, []
        tower = editor.model.get_submodule(stack.name.rsplit(".", 1)[0])
        self._handles = [tower.register_forward_pre_hook(self._on_tower, with_kwargs=True),
                         layer.register_forward_pre_hook(lambda mod, args: self._start(mod)),
                         layer.register_forward_hook(lambda mod, args, out: self._stop())]
        return self

    def _on_tower(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        self._grid = grid if isinstance(grid, Tensor) else None

    def _score(self, query: Tensor, key: Tensor, mask: Tensor | None, scaling: float | None) -> Tensor:
        rows = received_attention(query, key, mask, scaling)
        batch, heads, tokens, d = query.shape
        self.calls[-1].rows.append(rows)
        self.calls[-1].flops += 2.0 * batch * tokens * tokens * heads * d
        return rows

    def _start(self, module: nn.Module) -> None:
        self.calls.append(ReceivedCall([], 0.0, self._grid))
        self._context = capture_attention_score(module, [], self._score)
        self._context.__enter__()

    def _stop(self) -> None:
        if self._context is not None:
            self._context.__exit__(None, None, None)
            self._context = None

    def take(self) -> list[ReceivedCall]:
        """The calls recorded since the last take (a prefill's vision calls), and forget them."""
        calls, self.calls = self.calls, []
        return calls

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.editor = None


def pooled(rows: Tensor, side: int) -> Tensor:
    """[frames, side x side] -> [frames, ceil(side/2)^2]: bilinear, as LLaVA-OneVision pools a video frame's
    features (and as the release pools the attention map with the same get_2dPool)."""
    grid = rows.view(rows.shape[0], 1, side, side)
    half = -(-side // 2)
    return torch.nn.functional.interpolate(grid, size=[half, half], mode="bilinear").flatten(1)


"""pool: average-pool each image's grid of visual tokens before the LLM (the plain-downsampling baseline that
VTC-Bench found beats many token methods).

Each image and video frame is pooled on its own 2-D grid, as tamp.inference.visual_grid computes it from the
model's own inputs (`group_segments`: LLaVA-1.5's 24 x 24, Qwen2-VL's grid after its 2 x 2 merge, LLaVA-NeXT /
OneVision's base tile and unpadded high-resolution part, InternVL's tiles and thumbnail, each a grid of its own):
by default 2 x 2 windows (`pool_stride`, a side of n becomes ceil(n / 2); PyTorch's adaptive bins where n is odd).
LLaVA-NeXT's high-resolution part is pooled without its newline column, and each pooled row keeps one newline
(its first row's), so the LLM still sees rows closed by newlines; the base tile and the high-resolution part are
pooled apart (two grids, as transformers packs them); LLaVA-OneVision's closing video newline is a group of one and stays.

Positions: a pooled token takes the position of its window's first (top-left) token. Every other token method
here (FastV, DART, random) keeps its survivors at their original positions, so a table compares which states the
LLM sees, not a new position scheme; the text keeps its distance to the image; on Qwen2-VL the token keeps the
top-left's own 3-D (t, h, w) position, inside its window. (Re-packing them as a smaller image would give
positions the image never had in a full-resolution prompt either.)

`pool_keep` = SHARE with `pool_count` = side pools each grid side n to round(n x sqrt(SHARE)) (adaptive average
pooling): LLaVA-1.5's 24 x 24 -> 14 x 14 = 196, 11 x 11 = 121, 8 x 8 = 64 for 0.333 / 0.222 / 0.111, the nearest
square grids; on the tiny LLaVA-NeXT's 4 x 4 grids both 0.333 and 0.222 round to 2 x 2 (10 of 36 with the
newlines). Budget: `token_budget=SHARE` sets `pool_keep` = SHARE and `pool_count` = budget: each image keeps
round(SHARE x its visual tokens), newlines included, its grids in turn taking what the running total still needs
(tamp.algorithms.token_pool.budget_grid: the nearest count, the pooled grid's aspect within 2x of the grid's):
24 x 24 -> 12 x 16, 8 x 16, 8 x 8 = 192 / 128 / 64; the tiny model's 36 -> 12 / 8 / 4.
"""

from __future__ import annotations

from typing import Any

import torch

from tamp.algorithms.token_keep import keep_count
from tamp.algorithms.token_pool import budget_grid, pool_grid, pooled_side
from tamp.inference.sequence_edit import Drop, DropInput, Kept, SequenceEditor, TokenPlan
from tamp.inference.visual_grid import Segment, group_segments, tile_side
from tamp.methods.base import Param, TokenMethod


class GridView:
    """An install that keeps the editor, so the chooser can read each prefill's grids (computed once per prefill
    from the model's config and the prefill's grid arguments, as YOPO's window does)."""

    def __init__(self) -> None:
        self.editor: SequenceEditor | None = None
        self._for: Any = None
        self._segments: dict[int, list[Segment]] = {}

    def __call__(self, editor: SequenceEditor) -> GridView:
        self.editor = editor
        return self

    def remove(self) -> None:
        self.editor = None

    @property
    def tiled(self) -> bool:
        """InternVL: a group's grids are its tiles, none with a newline column."""
        return self.editor is not None and tile_side(self.editor.model.config) is not None

    def segments(self) -> dict[int, list[Segment]]:
        editor = self.editor
        assert editor is not None and editor.groups is not None and editor.video is not None
        if self._for is not editor.history[-1]:
            self._segments = group_segments(editor.model.config, editor.media_kwargs, editor.video, editor.groups)
            self._for = editor.history[-1]
        return self._segments


def plan(params: dict[str, Any], num_layers: int) -> TokenPlan:
    stride, keep = int(params["pool_stride"]), params["pool_keep"]
    share = None if keep is None else float(keep)
    exact = share is not None and str(params["pool_count"]) == "budget"
    if share is None and str(params["pool_count"]) == "budget":
        raise ValueError("pool_count=budget counts a share of each image's visual tokens, but pool_keep is unset; "
                         "set pool_keep=SHARE (or token_budget=SHARE)")
    view = GridView()

    def sides(rows: int, inner: int, newline: bool, target: int) -> tuple[int, int]:
        if exact:
            return budget_grid(rows, inner, target, newline)
        return pooled_side(rows, stride, share), pooled_side(inner, stride, share)

    def choose(seen: DropInput) -> Kept:
        segments = view.segments()
        hidden = seen.hidden.clone()
        kept = ~seen.visual
        for group in torch.unique(seen.groups[seen.visual & (seen.groups >= 0)]).tolist():
            members = torch.nonzero(seen.groups == group).flatten()
            seen_tokens = taken = 0  # the budget's running totals over this group's grids
            for index, (offset, rows, cols) in enumerate(segments.get(group, [])):
                # besides InternVL's tiles, only anyres_segments gives a group a second grid: the high-resolution
                # rows with their newline
                newline = index >= 1 and cols > 1 and not view.tiled
                inner = cols - int(newline)
                span = members[offset:offset + rows * cols]
                seen_tokens += rows * cols
                target = keep_count(seen_tokens, share) - taken if exact and share is not None else 0
                offsets, pooled = pool_grid(seen.hidden[span], rows, inner, *sides(rows, inner, newline, target),
                                            newline)
                taken += int(offsets.numel())
                hidden[span[offsets]] = pooled
                kept[span[offsets]] = True
            covered = sum(rows * cols for _, rows, cols in segments.get(group, []))
            kept[members[covered:]] = True  # tokens no grid accounts for stay as they are
        positions = torch.nonzero(kept).flatten()
        return Kept(positions, hidden[positions])  # averaging is no matmul: flops 0

    return TokenPlan({0: Drop(choose)}, (view,))


COUNTS = ("side", "budget")


def _share(v: float | None) -> str | None:
    return None if v is None or 0 < v <= 1 else f"pool_keep must be in (0, 1] (or unset), got {v}"


PARAMS = (
    Param("pool_stride", int, 2, "pooling window side: each grid side n becomes ceil(n / stride) (2: 2 x 2 windows)",
          check=lambda v: f"pool_stride must be at least 1, got {v}" if v < 1 else None),
    Param("pool_keep", float, None, "share of each grid's tokens kept instead of the stride: sides pooled to "
          "round(n x sqrt(share)) (adaptive average pooling)", check=_share),
    Param("pool_count", str, "side", "with pool_keep: side pools each grid side to round(n x sqrt(share)); budget "
          "keeps round(share x each image's visual tokens), each grid's pooled shape the nearest count (the common "
          "token budget's)", choices=COUNTS),
)

METHOD = TokenMethod(
    name="pool", label="Pool", order=31,
    summary="average-pool each image's grid of visual tokens (2 x 2 windows) before the LLM",
    params=PARAMS, plan=plan, budget=lambda share: {"pool_keep": share, "pool_count": "budget"},
)

"""Where each visual token sits in its image: the 2-D grids of one prefill's images and video frames, from what the
model's own inputs say, and each visual token's window neighbours as sequence positions.

- Qwen2-VL / Qwen2.5-VL (`image_grid_thw`, `video_grid_thw`): an image or video frame is an (h / m) x (w / m)
  grid of merged patches (m = spatial_merge_size), row-major.
- LLaVA-NeXT / LLaVA-OneVision images (`image_sizes`): the base tile's s x s grid (s = image_size / patch_size),
  then the high-resolution part, unpadded (and for OneVision possibly resized), rows x (cols + 1) with the
  image_newline token closing each row. Its rows and cols are the factorisation of the remaining count whose
  aspect (cols / rows) is closest to the image's; the newline column is part of the grid.
- Anything else (LLaVA-1.5's single tile, LLaVA-OneVision's pooled video frames and its closing newline): a
  square when the count is one, else a single row.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from tamp.algorithms.attention_window import window_neighbours

# one grid within a group: (offset of its first token within the group, rows, cols)
Segment = tuple[int, int, int]


def _square_or_row(count: int) -> list[Segment]:
    side = math.isqrt(count)
    return [(0, side, side)] if side * side == count else [(0, 1, count)]


def anyres_segments(count: int, base_side: int, height: int, width: int) -> list[Segment]:
    """LLaVA-NeXT / OneVision: the base tile, then the high-resolution rows x (cols + 1) (newline column)."""
    base = base_side * base_side
    rest = count - base
    if rest < 0:
        return _square_or_row(count)
    segments: list[Segment] = [(0, base_side, base_side)]
    if rest == 0:
        return segments
    aspect = math.log(width / height)
    shapes = [(rows, rest // rows) for rows in range(1, rest + 1) if rest % rows == 0]
    rows, cols = min(shapes, key=lambda rc: (abs(math.log(max(rc[1] - 1, 1) / rc[0]) - aspect), rc[0]))
    return [*segments, (base, rows, cols)]


def group_segments(config: Any, kwargs: dict[str, Any], video: Tensor, groups: Tensor) -> dict[int, list[Segment]]:
    """group id -> its grids, for every image / frame group of one prefill (tamp.inference.token_drop's groups)."""
    vision = getattr(config, "vision_config", None)
    image_thw, video_thw = kwargs.get("image_grid_thw"), kwargs.get("video_grid_thw")
    sizes = kwargs.get("image_sizes")
    merge = int(getattr(vision, "spatial_merge_size", 1) or 1)
    images = iter(image_thw.tolist()) if isinstance(image_thw, Tensor) else iter(())
    videos = iter(video_thw.tolist()) if isinstance(video_thw, Tensor) else iter(())
    image_sizes = iter(sizes.tolist()) if isinstance(sizes, Tensor) else iter(())
    out: dict[int, list[Segment]] = {}
    frames_left, frame_grid = 0, (0, 0)
    flat_groups, flat_video = groups.flatten().tolist(), video.flatten().tolist()
    seen: dict[int, int] = {}
    order: list[int] = []
    for g, v in zip(flat_groups, flat_video):
        if g < 0:
            continue
        if g not in seen:
            order.append(g)
            seen[g] = int(v)
    counts = torch.bincount(groups[groups >= 0].flatten().cpu()).tolist()
    for g in order:
        count, is_video = counts[g], bool(seen[g])
        grid: list[Segment] | None = None
        if is_video and isinstance(video_thw, Tensor):
            if frames_left == 0:
                t, h, w = next(videos, (0, 0, 0))
                frames_left, frame_grid = int(t), (int(h) // merge, int(w) // merge)
            if frames_left > 0 and frame_grid[0] * frame_grid[1] == count:
                grid, frames_left = [(0, *frame_grid)], frames_left - 1
        elif not is_video and isinstance(image_thw, Tensor):
            t, h, w = next(images, (0, 0, 0))
            if int(t) * (int(h) // merge) * (int(w) // merge) == count and int(t) == 1:
                grid = [(0, int(h) // merge, int(w) // merge)]
        elif not is_video and isinstance(sizes, Tensor) and vision is not None:
            height, width = next(image_sizes, (1, 1))
            side = int(vision.image_size) // int(vision.patch_size)
            grid = anyres_segments(count, side, int(height), int(width))
        out[g] = grid if grid is not None else _square_or_row(count)
    return out


def neighbour_positions(groups: Tensor, segments: dict[int, list[Segment]], window: int, causal: bool) -> Tensor:
    """[n_visual, window^2] for one sample: each visual token's window neighbours as sequence positions (-1 none),
    visual tokens in sequence order."""
    rows: list[Tensor] = []
    for g in torch.unique_consecutive(groups[groups >= 0]).tolist():
        positions = torch.nonzero(groups == g).flatten().cpu()
        for offset, r, c in segments[g]:
            span = positions[offset:offset + r * c]
            near = window_neighbours(r, c, window, causal)
            rows.append(torch.where(near >= 0, span[near.clamp(min=0)], near))
    return torch.cat(rows) if rows else torch.zeros(0, window * window, dtype=torch.long)

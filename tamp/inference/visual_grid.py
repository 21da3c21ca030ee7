"""Where each visual token sits in its image: the 2-D grids of one prefill's images and video frames, from what the
model's own inputs say, and each visual token's window neighbours as sequence positions.

- Qwen2-VL / Qwen2.5-VL (`image_grid_thw`, `video_grid_thw`): an image or video frame is an (h / m) x (w / m)
  grid of merged patches (m = spatial_merge_size), row-major.
- LLaVA-NeXT / LLaVA-OneVision images (`image_sizes`): the base tile's s x s grid (s = image_size / patch_size),
  then the high-resolution part, unpadded (and for OneVision possibly resized), rows x (cols + 1) with the
  image_newline token closing each row; the newline column is part of the grid. Rows and cols are computed as
  transformers packs the features (`anyres_grid`: the tile grid, unpadded, OneVision's shrink past anyres_max_N);
  only when that does not account for the count (a config this does not know) are they guessed: the
  factorisation of the remaining count whose aspect (cols / rows) is closest to the image's.
- InternVL (`downsample_ratio`, no grid argument): an image is its tiles in order (the crops row by row, then the
  thumbnail; one tile when it is not cropped), each an s x s grid of pixel-shuffled tokens, s = (image_size /
  patch_size) x downsample_ratio; the tiles are separate grids (a window stops at a tile's edge).
- Anything else (LLaVA-1.5's single tile, LLaVA-OneVision's pooled video frames and its closing newline): a
  square when the count is one, else a single row.

The grid arguments come with the model call, except under `generate`: transformers encodes the media first
(the base model's `get_image_features` / `get_video_features`) and hands the prefill only the features, so
`GridArgs` records what those encoders were last called with.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any

import torch
from torch import Tensor

from tamp.algorithms.attention_window import window_neighbours
from tamp.models import internals

# one grid within a group: (offset of its first token within the group, rows, cols)
Segment = tuple[int, int, int]
GRID_ARGS = ("image_sizes", "image_grid_thw", "video_grid_thw")
ENCODERS = ("get_image_features", "get_video_features")


class GridArgs:
    """The grid arguments the model's own media encoders were last called with (`seen`); `remove()` unwraps them."""

    def __init__(self, model: Any) -> None:
        self.seen: dict[str, Tensor] = {}
        self._base = getattr(model, "base_model", model)
        self._wrapped: list[str] = []
        for name in ENCODERS:
            encoder = getattr(self._base, name, None)
            if encoder is None:
                continue
            setattr(self._base, name, self._recording(encoder, inspect.signature(encoder)))
            self._wrapped.append(name)

    def _recording(self, encoder: Any, signature: inspect.Signature) -> Any:
        @functools.wraps(encoder)  # its signature stays readable: generate() picks the arguments to pass by it
        def call(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind_partial(*args, **kwargs).arguments
            self.seen.update({k: bound[k] for k in GRID_ARGS if isinstance(bound.get(k), Tensor)})
            return encoder(*args, **kwargs)

        return call

    def remove(self) -> None:
        for name in self._wrapped:
            self._base.__dict__.pop(name, None)
        self._wrapped = []


def _square_or_row(count: int) -> list[Segment]:
    side = math.isqrt(count)
    return [(0, side, side)] if side * side == count else [(0, 1, count)]


def anyres_grid(config: Any, height: int, width: int) -> tuple[int, int] | None:
    """(rows, cols) of an anyres image's high-resolution features as transformers packs them (before the newline
    column), or None when the config has no anyres pinpoints."""
    vision, pinpoints = getattr(config, "vision_config", None), getattr(config, "image_grid_pinpoints", None)
    if vision is None or not isinstance(pinpoints, list) or not pinpoints:
        return None
    side = int(vision.image_size) // int(vision.patch_size)
    rows, cols = internals.anyres_unpadded_grid((height, width), pinpoints, int(vision.image_size), side)
    aspect = getattr(config, "vision_aspect_ratio", None)
    if getattr(config, "model_type", "") == "llava_onevision" and isinstance(aspect, str) \
            and aspect.startswith("anyres_max_"):
        # OneVision shrinks (bilinear) a grid of more than ~1.1^2 x N tiles' features back to about N tiles
        ratio = math.sqrt(rows * cols / (int(aspect[len("anyres_max_"):]) * side ** 2))
        if ratio > 1.1:
            rows, cols = int(rows // ratio), int(cols // ratio)
    return rows, cols


def anyres_segments(count: int, base_side: int, height: int, width: int,
                    grid: tuple[int, int] | None = None) -> list[Segment]:
    """LLaVA-NeXT / OneVision: the base tile, then the high-resolution rows x (cols + 1) (newline column); `grid`:
    the (rows, cols) transformers packed (`anyres_grid`), used when it accounts for the count."""
    base = base_side * base_side
    rest = count - base
    if rest < 0:
        return _square_or_row(count)
    segments: list[Segment] = [(0, base_side, base_side)]
    if rest == 0:
        return segments
    if grid is not None and grid[0] * (grid[1] + 1) == rest:
        return [*segments, (base, grid[0], grid[1] + 1)]
    aspect = math.log(width / height)
    shapes = [(rows, rest // rows) for rows in range(1, rest + 1) if rest % rows == 0]
    rows, cols = min(shapes, key=lambda rc: (abs(math.log(max(rc[1] - 1, 1) / rc[0]) - aspect), rc[0]))
    return [*segments, (base, rows, cols)]


def tile_side(config: Any) -> int | None:
    """InternVL: the LM tokens along one side of a tile after pixel shuffle; None for a model without tiles."""
    ratio, vision = getattr(config, "downsample_ratio", None), getattr(config, "vision_config", None)
    if not isinstance(ratio, (int, float)) or vision is None:
        return None
    size, patch = vision.image_size, vision.patch_size
    size, patch = (size[0] if isinstance(size, (list, tuple)) else size), \
        (patch[0] if isinstance(patch, (list, tuple)) else patch)
    side = int(int(size) // int(patch) * ratio)
    return side if side > 0 else None


def group_segments(config: Any, kwargs: dict[str, Any], video: Tensor, groups: Tensor) -> dict[int, list[Segment]]:
    """group id -> its grids, for every image / frame group of one prefill (tamp.inference.token_drop's groups)."""
    vision = getattr(config, "vision_config", None)
    image_thw, video_thw = kwargs.get("image_grid_thw"), kwargs.get("video_grid_thw")
    sizes = kwargs.get("image_sizes")
    merge = int(getattr(vision, "spatial_merge_size", 1) or 1)
    tile = tile_side(config)
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
            grid = anyres_segments(count, side, int(height), int(width), anyres_grid(config, int(height), int(width)))
        elif not is_video and tile is not None and count % (tile * tile) == 0:
            grid = [(k * tile * tile, tile, tile) for k in range(count // (tile * tile))]
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

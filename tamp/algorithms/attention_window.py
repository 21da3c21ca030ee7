"""YOPO's attention for visual queries, as pure tensor math: which heads are inactive for visual tokens, and the
attention of visual query rows over a dense set of keys plus a gathered set (a window of neighbours).

A visual query row in a kept head attends to `dense` keys (every key it may see causally, or only the
non-visual ones when a window is on) and to `gathered` keys (its w x w neighbours in its own image grid); the
softmax runs over both sets together, so this equals a dense attention whose mask allows exactly those keys.
Only the keys that are used are multiplied: the gathered part costs Tv x W, not Tv x T, per head.

The released YOPO's masking (post-softmax, no renormalisation): in the heads `zero_heads`, the probabilities on
visual keys (the dense keys marked `dense_visual`, and every gathered key) are multiplied by zero after the
softmax, so the softmax denominator still counts them; used for text rows too, over every key.
"""

from __future__ import annotations

import torch
from torch import Tensor

# bumped when what this module computes changes: the artifact keys of the methods using it cover it
VERSION = 2  # 2: post-softmax zeroing of visual keys (the release's masking)


def visual_mass(logits: Tensor, visual_keys: Tensor) -> Tensor:
    """[h, Tq, Tk] masked logits of visual query rows (-inf where not allowed), [Tk] bool -> [h]: per head, the
    softmax probability those queries put on visual keys, averaged over the queries (fp32)."""
    probs = torch.softmax(logits.float(), dim=-1)
    probs = torch.nan_to_num(probs, nan=0.0)
    return probs[..., visual_keys].sum(-1).mean(-1)


def choose_pruned_heads(stat: Tensor, keep: float) -> list[list[int]]:
    """[L, H] statistic -> per layer, the heads pruned for visual queries: the L x H - round(keep x L x H) lowest
    over all layers together (one global ranking, as the release's masks keep a different count per layer);
    ties go to the earlier layer and head."""
    if not 0.0 <= keep <= 1.0:
        raise ValueError(f"head keep share must be in [0, 1], got {keep}")
    layers, heads = stat.shape
    count = layers * heads - int(round(keep * layers * heads))
    flat = stat.double().flatten().tolist()
    order = sorted(range(len(flat)), key=lambda i: (flat[i], i))[:count]
    pruned: list[list[int]] = [[] for _ in range(layers)]
    for i in sorted(order):
        pruned[i // heads].append(i % heads)
    return pruned


def window_neighbours(rows: int, cols: int, window: int, causal: bool) -> Tensor:
    """[rows x cols, window^2] indices (row-major) of each grid position's neighbours within a window x window
    square centred on it, -1 where the square leaves the grid (or, causal, where the neighbour comes later)."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"the window must be an odd positive size, got {window}")
    half = window // 2
    r = torch.arange(rows).repeat_interleave(cols)
    c = torch.arange(cols).repeat(rows)
    dr = torch.arange(-half, half + 1).repeat_interleave(window)
    dc = torch.arange(-half, half + 1).repeat(window)
    nr, nc = r[:, None] + dr[None, :], c[:, None] + dc[None, :]
    inside = (nr >= 0) & (nr < rows) & (nc >= 0) & (nc < cols)
    index = nr * cols + nc
    if causal:
        inside &= index <= (r * cols + c)[:, None]
    return torch.where(inside, index, torch.full_like(index, -1))


def window_keys(window: int, grid_tokens: float) -> float:
    """The visual keys a w x w window around a visual query holds at most: w^2, or the grid's own tokens when the
    grid is smaller (a window wider than its grid adds no key). `grid_tokens` may be a mean over samples (YOPO's
    budget has the calibration's mean visual tokens), which bounds each of their grids too."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"the window must be an odd positive size, got {window}")
    return float(min(window * window, max(grid_tokens, 0.0)))


def rows_attention(query: Tensor, dense_key: Tensor, dense_value: Tensor, dense_allowed: Tensor,
                   gathered_key: Tensor | None, gathered_value: Tensor | None, gathered_allowed: Tensor | None,
                   scaling: float, zero_heads: Tensor | None = None, dense_visual: Tensor | None = None) -> Tensor:
    """Attention of query rows over two key sets under one softmax.

    query [h, n, d]; dense keys/values [h, m, d] with dense_allowed [n, m] bool; gathered keys/values per row
    [h, n, W, d] with gathered_allowed [n, W] bool (or None: no gathered set). Returns [h, n, d] in the query's
    dtype (softmax in fp32, as the eager attention does); a row allowed no key gets zeros. zero_heads [h] bool,
    dense_visual [m] bool: after the softmax, those heads' probabilities on visual keys are set to zero."""
    logits = torch.matmul(query, dense_key.transpose(-1, -2)) * scaling
    logits = logits.float().masked_fill(~dense_allowed, float("-inf"))
    parts = [logits]
    if gathered_key is not None:
        near = torch.matmul(query.unsqueeze(-2), gathered_key.transpose(-1, -2)).squeeze(-2) * scaling
        parts.append(near.float().masked_fill(~gathered_allowed, float("-inf")))
    probs = torch.nan_to_num(torch.softmax(torch.cat(parts, dim=-1), dim=-1), nan=0.0)
    if zero_heads is not None and bool(zero_heads.any()):
        visual = dense_visual if dense_visual is not None else torch.zeros(logits.shape[-1], dtype=torch.bool)
        if gathered_key is not None:
            visual = torch.cat([visual.to(probs.device), torch.ones(probs.shape[-1] - logits.shape[-1],
                                                                    dtype=torch.bool, device=probs.device)])
        drop = zero_heads.to(probs.device)[:, None, None] & visual.to(probs.device)[None, None, :]
        probs = probs.masked_fill(drop, 0.0)
    probs = probs.to(query.dtype)
    m = dense_key.shape[-2]
    out = torch.matmul(probs[..., :m], dense_value)
    if gathered_key is not None:
        out = out + torch.matmul(probs[..., m:].unsqueeze(-2), gathered_value).squeeze(-2)
    return out

"""CDPruner's conditional determinantal point process: which visual tokens of a crop to keep, given an instruction.

The released code (Theia-4869/CDPruner, `llava/model/llava_arch.py`, `encode_images`) builds, per crop, the kernel
L = diag(r) S diag(r): S the cosine similarity of the crop's visual features after the projector, r each token's
relevance to the instruction, the mean over the instruction's embeddings of the NEGATED cosine between token and
text embedding, min-max normalised over every crop of the call as (r - min + 1e-6) / (max - min). (A commented-out
variant weights r as exp(theta / (2 (1 - theta)) r); `theta` here, off by default as in the release.) It then picks
a fixed count of tokens by the fast greedy MAP inference of Chen et al. (2018): each step takes the token with the
largest remaining gain d_j (first the largest diagonal entry), appends its orthogonalised row
e = (L_j - C^T C_j) / sqrt(d_j) and lowers every gain by e^2. There is no early stop: exactly `count` picks. The
picks are kept in token order.

Where a gain is not positive (the picked set already spans the kernel's rank: more picks than feature
dimensions, or duplicate tokens) the release divides by sqrt(<= 0), turning every gain into NaN and picking tokens
twice; here such a pick adds a zero row, and picked tokens are excluded explicitly (docs/fidelity.md).
"""

from __future__ import annotations

import torch
from torch import Tensor

# bumped when what this module computes changes: the artifact keys of the methods using it cover it
VERSION = 1


def unit_rows(x: Tensor) -> Tensor:
    """Each row divided by its norm (a zero row stays zero instead of the release's NaN)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)


def raw_relevance(image: Tensor, text: Tensor) -> Tensor:
    """[n, d] visual features, [m, d] instruction embeddings -> [n]: the mean over the m texts of -cos (the
    release's sign), before normalisation. One [n, d] x [d, m] matmul."""
    if image.dim() != 2 or text.dim() != 2 or image.shape[1] != text.shape[1] or text.shape[0] == 0:
        raise ValueError(f"need [n, d] features and [m >= 1, d] texts, got {tuple(image.shape)}, {tuple(text.shape)}")
    return (-torch.mm(unit_rows(image), unit_rows(text).t())).mean(dim=1)


def normalise(relevance: Tensor) -> Tensor:
    """The release's min-max over every token of the call: (r - min + 1e-6) / (max - min); all equal: ones."""
    low, high = relevance.min(), relevance.max()
    if float(high - low) <= 0:
        return torch.ones_like(relevance)
    return (relevance - low + 1e-6) / (high - low)


def conditional_kernel(features: Tensor, relevance: Tensor, theta: float | None = None) -> Tensor:
    """[n, d] features, [n] normalised relevance -> [n, n] L = r_i cos(x_i, x_j) r_j; with theta in [0, 1) the
    release's commented-out weighting r -> exp(theta / (2 (1 - theta)) r). One [n, d] x [d, n] matmul."""
    unit = unit_rows(features)
    if theta is not None:
        relevance = torch.exp(theta / (2 * (1 - theta)) * relevance)
    return relevance[:, None] * torch.mm(unit, unit.t()) * relevance[None, :]


def greedy_map(kernel: Tensor, count: int) -> Tensor:
    """[n, n] kernel -> the indices the fast greedy MAP picks, in the order picked (min(count, n) of them)."""
    n = kernel.shape[0]
    if kernel.dim() != 2 or kernel.shape[1] != n:
        raise ValueError(f"kernel must be square, got {tuple(kernel.shape)}")
    count = max(0, min(count, n))
    gains = torch.diagonal(kernel).clone()
    basis = kernel.new_zeros(count, n)  # the orthogonalised rows of the tokens picked (the release's `cis`)
    picked = torch.empty(count, dtype=torch.long, device=kernel.device)
    taken = torch.zeros(n, dtype=torch.bool, device=kernel.device)
    low = torch.tensor(float("-inf"), dtype=kernel.dtype, device=kernel.device)
    for i in range(count):
        j = int(torch.argmax(torch.where(taken, low, gains)))
        picked[i], taken[j] = j, True
        row = kernel[j] - torch.mm(basis[:i, j].unsqueeze(0), basis[:i]).squeeze(0)  # [1, i] x [i, n]
        gain = float(gains[j])
        if gain > 0:  # else token j adds nothing new: its row stays zero (the release's NaN)
            basis[i] = row / gain ** 0.5
            gains = gains - basis[i] * basis[i]
    return picked


def choice_flops(n: int, d: int, texts: int, count: int) -> float:
    """The matmul FLOPs of one crop's choice: the relevance (n x d x texts), the similarity (n x n x d) and the
    greedy's projections (step i: 1 x i x n), as the functions above run them."""
    k = max(0, min(count, n))
    return 2.0 * n * d * texts + 2.0 * n * n * d + float(k * (k - 1) * n)

"""AMIA: attention-guided, MMD-stopped token selection for Wanda's input statistic (TAMP).

For one calibration sample and one linear module, AMIA picks the tokens whose module *inputs* feed Wanda's
activation norm. It works on the module's *output* tokens ``out`` (T x D) and a per-token attention score
``a`` (T,):

1. rows of ``out`` are L2-normalised (fp32);
2. a modality "density" (mean of within-modality positive similarities and cross-modality similarities)
   sets the stopping threshold ``mmd_factor * sqrt(1 - density)``;
3. every token gets a graph score ``a_i + sum_{j in kNN(i)} exp(-edge_temp * d_ij) a_j`` (``d = 1 - cos``);
4. a greedy loop repeatedly takes the best-scoring token, suppresses its neighbours' scores, and stops
   once the Gaussian-kernel MMD^2 between all tokens and the selected ones falls below the threshold.

This reproduces the released TAMP code's semantics with these deliberate differences:

* everything runs in fp32 (the release used fp16); the MMD sums over selected tokens are accumulated in fp64,
  which is *exact* here (see the note above ``_FIRST_CHUNK``), so the incremental fast path and the recomputing
  reference agree bit for bit; the mean of the whole kernel (a loop constant) comes from the shared preparation;
* guards against endless loops: at most T greedy steps, a selected token can never be re-picked,
  ``1 - density`` is clamped at 0, non-finite scores count as 0 and non-finite output rows as zero vectors.

Details kept from the release: kNN drops topk's column 0 even when, with duplicate tokens, it is not the token
itself (then the token can be its own neighbour); the suppression uses the picked token's score as it was
when picked; selected scores are reset to ``min(g) - 1`` (with the re-pick guard that reset has no effect).

Two implementations share the (deterministic) preparation step ``_prepare``:

* ``amia_select_reference``: one token per step, a Python ``set``, kernel means recomputed every step. It is
  written for clarity and is the test oracle / benchmark baseline.
* ``amia_select`` / ``amia_select_batched``: the greedy loop runs for M modules in lock-step with vectorised
  argmax/gather/scatter; a chunk of steps picks its tokens first, then gets its MMD^2 values at once from the
  picked tokens' kernel rows and columns and running sums, with one host sync per chunk. Because the selection
  order does not depend on the stopping rule, the chunk is simply truncated at the first step that satisfies
  it, which gives exactly the reference's selection.

``_prepare`` computes the gram matrix into the kernel's buffer and walks it in row blocks that stay in cache
(similarity terms, kNN, kernel, kernel total), so it allocates no other T x T tensor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

# bumped when what this module computes changes: the artifact keys of the methods using it cover it
VERSION = 1

__all__ = [
    "amia_select",
    "amia_select_batched",
    "amia_select_reference",
    "density",
    "modality_similarities",
]

# Why the fp64 MMD sums are exact: with sigma = 1 and unit (or zero) rows every kernel value lies in
# [exp(-2) - eps, 1 + eps] within [0.125, 2), where every fp32 number is a multiple of 2**-26. Any partial sum
# of fewer than 2**27 such values is then a multiple of 2**-26 below 2**27, which fits fp64's 53-bit mantissa,
# whatever the summation order. So for T up to ~11,000 the incremental sums equal the recomputed ones bit for
# bit. Outside that regime (other sigma, larger T) they agree to ~1e-16 relative.

# Greedy chunking: the first chunk is short because real selections are usually small (tens of tokens).
_FIRST_CHUNK = 8
_MAX_CHUNK = 256
# Run the CPU's picking steps on numpy views (False: the torch loop that accelerators run; tests flip it).
_HOST_STEPS = True
# Scores whose worst-case drift stays below this cannot overflow fp32 (max ~3.4e38) in the greedy loop.
_SAFE_BOUND = 1e37


# ---------------------------------------------------------------------------------------------------------------------
# Modality similarity terms (shared with DAS)
# ---------------------------------------------------------------------------------------------------------------------


def _normalise_rows(out: Tensor) -> Tensor:
    """fp32 L2-normalised rows; a non-finite row becomes a zero vector so NaNs cannot poison the whole sample.

    Same bits as ``F.normalize`` (x / max(|x|, eps)); a row holds a NaN/inf exactly when its norm is not finite
    (an overflowing norm gives a zero row either way), so finiteness is checked on the T norms, not on T x D values.
    """
    x = out.float()
    norms = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    x = x / norms.clamp_min(1e-12)  # a fresh tensor, so the zeroing below may work in place
    bad = ~torch.isfinite(norms)
    # On the CPU the check is free and spares a T x D pass; elsewhere zero unconditionally rather than sync.
    if x.device.type != "cpu" or bool(bad.any()):
        x.masked_fill_(bad, 0.0)
    return x


def _check_masks(masks: Mapping[str, Tensor], t: int, device: torch.device) -> dict[str, Tensor]:
    """Bool (T,) masks on ``device``; a wrong shape would silently mix modalities, so it fails loudly."""
    checked: dict[str, Tensor] = {}
    for name, m in masks.items():
        if "|" in name:
            raise ValueError(f"modality name {name!r} may not contain '|' (used for cross-term keys)")
        m = torch.as_tensor(m)
        if m.dim() != 1 or m.shape[0] != t:
            raise ValueError(f"mask {name!r} must have shape ({t},), got {tuple(m.shape)}")
        checked[name] = m.to(device=device, dtype=torch.bool)
    return checked


def _ratio(total: Tensor, count: Tensor) -> Tensor:
    """``total / count`` as a 0-d fp32 tensor, NaN when the count is 0 (term absent); no host sync."""
    nan = torch.full((), float("nan"), dtype=total.dtype, device=total.device)
    return torch.where(count > 0, total / count.clamp(min=1), nan)


# Row-block size for the T x T passes: a block of gram rows and its temporaries stay in cache (~1 MiB each),
# so each element of the (T, T) matrix is read from memory about once instead of once per elementwise op, and
# no (T, T) temporary is allocated (a fresh T x T buffer costs its page faults on every call).
_BLOCK_ELEMS = 1 << 18


def _block_rows(t: int) -> int:
    return max(1, min(t, _BLOCK_ELEMS // max(t, 1)))


class _TermsAccumulator:
    """Within (positive upper-triangle entries only) and cross (all entries) similarity sums, row block by row block.

    Block sums are quadratic forms ``m_a^T G m_b``, all modalities at once through (B, T) x (T, M) GEMMs; only the
    rows of the current block are read, so the caller may overwrite them afterwards (``_prepare`` does).
    """

    def __init__(self, masks: Mapping[str, Tensor], t: int, device: torch.device, positive_only: bool) -> None:
        self.names = list(masks)
        self.positive_only = positive_only
        m = len(self.names)
        f32 = torch.float32
        # (T, M): one GEMM serves all modalities
        self.ind = torch.stack([masks[n].to(f32) for n in self.names], dim=1) if m else None
        self.within_rows = torch.empty(t, m, dtype=f32, device=device)  # row i: sum_j kept(i, j) g_ij m(j)
        self.count_rows = torch.empty(t, m, dtype=f32, device=device)  # row i: #kept(i, j) m(j); integers <= T
        self.cross_rows = torch.empty(t, m, dtype=f32, device=device)  # (G @ ind)[i]

    def add_rows(self, r0: int, g: Tensor, scratch: Tensor) -> None:
        """Rows ``r0 .. r0 + B`` of the gram matrix; ``scratch`` holds at least B * (T - r0) fp32 values."""
        if self.ind is None:
            return
        b, t = g.shape
        r1 = r0 + b
        # Row r0 + i keeps columns j > r0 + i: nothing left of r0, the upper triangle of the (B, B) square, all the rest.
        u = scratch[: b * (t - r0)].view(b, t - r0)
        if self.positive_only:
            torch.clamp(g[:, r0:], min=0.0, out=u)  # g is finite (rows were sanitised)
        else:  # the paper's words: every pair counts
            u.copy_(g[:, r0:])
        u[:, :b].triu_(1)
        ind_tail = self.ind[r0:]
        torch.matmul(u, ind_tail, out=self.within_rows[r0:r1])
        if self.positive_only:
            u.sign_()  # 1 where an entry counts, else 0; integer counts < 2**24 add exactly in fp32
        else:
            u.fill_(1.0)
            u[:, :b].triu_(1)
        torch.matmul(u, ind_tail, out=self.count_rows[r0:r1])
        torch.matmul(g, self.ind, out=self.cross_rows[r0:r1])

    def terms(self) -> dict[str, Tensor]:
        """NaN = absent. Totals are summed over rows in fp64 (counts stay exact for any T)."""
        if self.ind is None:
            return {}
        f64 = torch.float64
        ind = self.ind.to(f64)
        within_sums = (ind * self.within_rows).sum(dim=0)
        within_counts = (ind * self.count_rows).sum(dim=0)
        cross = ind.T @ self.cross_rows.to(f64)  # (M, M) block sums
        sizes = ind.sum(dim=0)
        names = self.names
        terms: dict[str, Tensor] = {}
        for i, name in enumerate(names):
            terms[name] = _ratio(within_sums[i], within_counts[i]).float()
        for i, a in enumerate(names):
            for j in range(i + 1, len(names)):
                terms[f"{a}|{names[j]}"] = _ratio(cross[i, j], sizes[i] * sizes[j]).float()
        return terms


def _terms_from_gram(gram: Tensor, masks: Mapping[str, Tensor], positive_only: bool = True) -> dict[str, Tensor]:
    """Within (positive upper-triangle entries only) and cross (all entries) mean similarities; NaN = absent."""
    t = gram.shape[0]
    acc = _TermsAccumulator(masks, t, gram.device, positive_only)
    if acc.ind is not None and t:
        b = _block_rows(t)
        scratch = torch.empty(b * t, dtype=torch.float32, device=gram.device)
        for r0 in range(0, t, b):
            acc.add_rows(r0, gram[r0 : r0 + b], scratch)
    return acc.terms()


def modality_similarities(x: Tensor, masks: Mapping[str, Tensor], positive_only: bool = True) -> dict[str, Tensor]:
    """Per-modality cosine-similarity terms of the tokens ``x`` (T, D); rows are L2-normalised here (fp32).

    Keys: each modality name (within term: mean of the *positive* entries of ``triu(x_m x_m^T, 1)``) and
    ``"a|b"`` for each pair in ``masks`` order (cross term: mean of *all* entries of ``x_a x_b^T``).
    A term with nothing to average (modality with < 2 tokens, empty pair, no positive entry) is a NaN
    0-d tensor, so callers can drop it without a host sync (``density``; DAS sums ``1 - term`` over the rest).
    ``positive_only=False`` averages every within-modality pair (the paper's "average cosine distance").
    """
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (tokens, features), got shape {tuple(x.shape)}")
    xn = _normalise_rows(x)
    return _terms_from_gram(xn @ xn.T, _check_masks(masks, xn.shape[0], xn.device), positive_only)


def density(terms: Mapping[str, Tensor | float]) -> Tensor:
    """Mean of the present (non-NaN) similarity terms, 0 when none is present (then the threshold is mmd_factor)."""
    values = list(terms.values())
    if not values:
        return torch.zeros(())
    device = next((v.device for v in values if isinstance(v, Tensor)), torch.device("cpu"))
    v = torch.stack([torch.as_tensor(t, dtype=torch.float32, device=device).reshape(()) for t in values])
    present = ~torch.isnan(v)
    count = present.sum()
    total = torch.where(present, v, torch.zeros((), dtype=v.dtype, device=device)).sum()
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros((), dtype=v.dtype, device=device))


# ---------------------------------------------------------------------------------------------------------------------
# Shared preparation
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Prepared:
    """Everything the greedy loop needs for one (sample, module); identical bits for fast and reference paths."""

    kernel: Tensor  # (T, T) fp32; not assumed symmetric bitwise (GEMM and exp's scalar tail path may differ)
    total: Tensor  # 0-d fp64, sum of all K[i, j] (fp32 row-block sums added in fp64); shared by both paths
    neighbours: Tensor  # (T, k) int64, kNN of each token (column 0 of topk dropped, as released)
    suppress: Tensor  # (T, k) fp32, exp(-suppress_temp * d[i, neighbours[i]])
    graph: Tensor  # (T,) fp32 initial graph scores
    threshold: Tensor  # 0-d fp64, mmd_factor * sqrt(max(1 - density, 0))


def _check_common(k: int, sigma: float) -> None:
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")


def _prepare(
    out: Tensor,
    scores: Tensor,
    masks: Mapping[str, Tensor],
    k: int,
    edge_temp: float,
    suppress_temp: float,
    mmd_factor: float,
    sigma: float,
    kernel_out: Tensor | None = None,
) -> _Prepared:
    """Normalise, threshold, kNN graph, graph scores and kernel for one module (T >= 1).

    ``kernel_out`` (T, T, contiguous) receives the kernel, so the batched path fills its (M, T, T) buffer without a
    copy. The gram matrix is computed into the same buffer and consumed row block by row block (similarity terms,
    kNN, kernel), so the preparation allocates no other (T, T) tensor and reads the gram matrix from memory about
    once; the kernel's bits do not depend on which buffer it lives in.
    """
    if out.dim() != 2:
        raise ValueError(f"out must be 2-D (tokens, features), got shape {tuple(out.shape)}")
    t = out.shape[0]
    if scores.shape != (t,):
        raise ValueError(f"scores must have shape ({t},), got {tuple(scores.shape)}")
    x = _normalise_rows(out)
    kernel = kernel_out if kernel_out is not None else torch.empty(t, t, dtype=torch.float32, device=x.device)
    torch.matmul(x, x.T, out=kernel)  # the gram matrix; each row block becomes kernel rows once it has been used

    # |x_i|^2 as the gram diagonal (1 for unit rows up to rounding, exactly 0 for zero rows), so K_ii = exp(0) = 1
    sq = kernel.diagonal().clone()
    scale = -1.0 / (2.0 * sigma**2)
    kk = min(k, t - 1)
    neighbours = torch.empty(t, kk, dtype=torch.long, device=x.device)
    d_nb = torch.empty(t, kk, dtype=torch.float32, device=x.device)
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    terms = _TermsAccumulator(_check_masks(masks, t, x.device), t, x.device, positive_only=True)
    one = torch.ones((), dtype=torch.float32, device=x.device)
    b = _block_rows(t)
    scratch = torch.empty(b * t, dtype=torch.float32, device=x.device)
    for r0 in range(0, t, b):
        g = kernel[r0 : r0 + b]  # gram rows r0 .. r0 + B (a contiguous view)
        terms.add_rows(r0, g, scratch)
        w = scratch[: g.numel()].view(g.shape)
        # kNN on d = 1 - cos, materialised per block in cache. (topk of the largest cosines would pick the same
        # tokens, but topk breaks exact ties, e.g. between duplicate tokens, differently for largest=True/False.)
        # Column 0 is assumed to be the token itself, exactly as released (with duplicates it may not be).
        nb = torch.sub(one, g, out=w).topk(kk + 1, dim=1, largest=False)
        neighbours[r0 : r0 + b] = nb.indices[:, 1:]
        d_nb[r0 : r0 + b] = nb.values[:, 1:]
        # exp(-(|x_i|^2 + |x_j|^2 - 2 x_i.x_j) / (2 sigma^2)), written over the gram rows it came from
        torch.add(sq[r0 : r0 + b, None], sq[None, :], out=w).sub_(g, alpha=2.0).mul_(scale)
        torch.exp(w, out=g)
        # sum(dtype=float64) would first copy the block to fp64 (a pass and a fresh buffer ~10x the cost of the sum)
        total += g.sum().double()

    dens = density(terms.terms())
    threshold = mmd_factor * (1.0 - dens.double()).clamp(min=0.0).sqrt()

    a = scores.to(device=x.device, dtype=torch.float32)
    a = torch.where(torch.isfinite(a), a, torch.zeros((), dtype=a.dtype, device=a.device))
    graph = a + (torch.exp(-edge_temp * d_nb) * a[neighbours]).sum(dim=1)
    suppress = torch.exp(-suppress_temp * d_nb)
    return _Prepared(kernel, total, neighbours, suppress, graph, threshold)


def _pick(graph: Tensor, selected: Tensor) -> Tensor:
    """argmax over unselected tokens (first index on ties); -inf scores are lifted so a new token is always taken."""
    floor = torch.finfo(graph.dtype).min
    return graph.clamp(min=floor).masked_fill(selected, float("-inf")).argmax(dim=-1)


# ---------------------------------------------------------------------------------------------------------------------
# Reference (oracle)
# ---------------------------------------------------------------------------------------------------------------------


def amia_select_reference(
    out: Tensor,
    scores: Tensor,
    masks: Mapping[str, Tensor],
    k: int = 3,
    edge_temp: float = 1.0,
    suppress_temp: float = 0.2,
    mmd_factor: float = 0.1,
    sigma: float = 1.0,
) -> Tensor:
    """Straightforward AMIA (one token per step, MMD^2 recomputed from scratch); the oracle for the fast path."""
    _check_common(k, sigma)
    t = out.shape[0]
    if t == 0:
        return torch.zeros(0, dtype=torch.bool, device=out.device)
    p = _prepare(out, scores, masks, k, edge_temp, suppress_temp, mmd_factor, sigma)
    kernel, g = p.kernel, p.graph.clone()
    mean_all = p.total / (t * t)  # mean of all kernel entries (the one constant of the loop; from the preparation)

    selected: set[int] = set()
    idx = torch.zeros(0, dtype=torch.long, device=kernel.device)
    for _ in range(t):  # at most T steps: every step adds a new token
        mask = torch.zeros(t, dtype=torch.bool, device=kernel.device)
        mask[idx] = True
        s = int(_pick(g, mask))
        gs = g[s].clamp(min=0.0)  # g[s] before any update of this step
        nb = p.neighbours[s]
        g[nb] = g[nb] - p.suppress[s] * gs
        selected.add(s)
        idx = torch.tensor(sorted(selected), dtype=torch.long, device=kernel.device)
        g[idx] = g.min() - 1.0

        n = len(selected)
        mean_yy = kernel[idx][:, idx].sum(dtype=torch.float64) / (n * n)
        mean_xy = kernel[:, idx].sum(dtype=torch.float64) / (t * n)
        mmd2 = mean_all + mean_yy - 2.0 * mean_xy
        if bool(mmd2 < p.threshold) or n == t:
            break

    result = torch.zeros(t, dtype=torch.bool, device=out.device)
    result[idx.to(out.device)] = True
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Fast, batched
# ---------------------------------------------------------------------------------------------------------------------


def _greedy_lockstep(preps: Sequence[_Prepared], kernel: Tensor) -> Tensor:
    """Run M greedy selections in lock-step; returns (M, T) bool. One host sync per chunk of steps.

    ``kernel`` is the (M, T, T) buffer the preps' kernels live in. Within a chunk the loop only picks tokens and
    suppresses neighbours (the selection order does not depend on the MMD); the chunk's MMD^2 values are then
    computed at once from the picked tokens' kernel rows and columns. Every fp64 sum is exact, so running sums,
    prefix sums and the reference's recomputed sums agree bit for bit.
    """
    m, t, _ = kernel.shape
    device = kernel.device
    kk = preps[0].neighbours.shape[1]
    neighbours = torch.stack([p.neighbours for p in preps]).view(m * t, kk)  # row b * T + i: kNN of token i, module b
    neg_suppress = torch.stack([p.suppress for p in preps]).neg_().view(m * t, kk)
    g = torch.stack([p.graph for p in preps])  # (M, T), a fresh copy
    threshold = torch.stack([p.threshold for p in preps])  # (M,)

    f64 = torch.float64
    mean_all = torch.stack([p.total for p in preps]) / (t * t)  # (M,), the reference's value
    acc_rows = torch.zeros(m, t, dtype=f64, device=device)  # sum_{y in Y} K[y, :]
    acc_cols = torch.zeros(m, t, dtype=f64, device=device)  # sum_{y in Y} K[:, y]
    sum_yy = torch.zeros(m, dtype=f64, device=device)
    sum_xy = torch.zeros(m, dtype=f64, device=device)
    selected = torch.zeros(m, t, dtype=torch.bool, device=device)
    order = torch.empty(m, t, dtype=torch.long, device=device)
    mmd2 = torch.empty(m, t, dtype=f64, device=device)
    base_flat = torch.arange(m, device=device) * t  # (M,) row offset of each module in the flat views
    base = base_flat[:, None]
    kernel_rows = kernel.view(m * t, t)

    # Scores only fall (a step subtracts w * max(g[s], 0) >= 0 from a few of them), so a score can never go below
    # -max|g| * (1 + T * max w). When that bound is finite the reference's clamp is a no-op and a picked token can
    # simply be set to -inf: argmax alone then picks (3 fewer ops per step). Otherwise (huge or non-finite scores,
    # negative temperatures) the reference's clamp + mask run every step. One host sync, before the loop.
    bound = g.abs().amax() * (1.0 + t * neg_suppress.abs().amax()) if kk else g.abs().amax()
    plain = bool(bound < _SAFE_BOUND)
    g_flat = g.view(-1)
    # On the CPU a torch op on a handful of numbers costs several microseconds of dispatch, numpy's about one: the
    # picking steps (argmax, gather, scatter) then run on numpy views of the same memory, with the same fp32
    # arithmetic (a product, then a sum), so the bits do not change. Accelerators keep the torch loop (no host sync).
    host = plain and device.type == "cpu" and _HOST_STEPS
    if host:
        host_views = (g.numpy(), neighbours.numpy(), neg_suppress.numpy(), base_flat.numpy())
    step, chunk = 0, _FIRST_CHUNK
    while step < t:
        end = min(t, step + chunk)
        if host:
            idx = torch.from_numpy(_steps_on_host(*host_views, end - step))  # (M, c)
        else:
            picked = []
            for _ in range(step, end):
                s = g.argmax(dim=1) if plain else _pick(g, selected)  # (M,)
                flat = s if m == 1 else s + base_flat
                gs = g_flat.index_select(0, flat).clamp_(min=0.0)[:, None]  # g[s] before any update of this step
                if kk:  # == g[nb] - w * gs
                    g.scatter_add_(1, neighbours.index_select(0, flat), neg_suppress.index_select(0, flat).mul_(gs))
                if plain:
                    g_flat.index_fill_(0, flat, float("-inf"))
                else:
                    selected.view(-1).index_fill_(0, flat, True)
                picked.append(s)
                # The reference also resets selected scores to min(g) - 1; with the re-pick guard nothing reads them.
            idx = torch.stack(picked, dim=1)  # (M, c)

        # MMD^2 after each step of the chunk. Step a adds K[s_a, Y_old], K[Y_old, s_a] and K[s_a, s_a] to sum_yy.
        c = end - step
        order[:, step:end] = idx
        rows = kernel_rows.index_select(0, (idx + base).view(-1)).view(m, c, t)  # K[s_a, :]
        cols = kernel.gather(2, idx[:, None, :].expand(m, t, c))  # K[:, s_a]
        block = rows.gather(2, idx[:, None, :].expand(m, c, c)).to(f64)  # K[s_a, s_b]
        inc = (
            acc_rows.gather(1, idx)
            + acc_cols.gather(1, idx)
            + block.tril(-1).sum(dim=2)  # K[s_a, s_b], b < a
            + block.triu(1).sum(dim=1)  # K[s_b, s_a], b < a
            + block.diagonal(dim1=1, dim2=2)
        )
        yy = sum_yy[:, None] + inc.cumsum(dim=1)
        xy = sum_xy[:, None] + cols.sum(dim=1, dtype=f64).cumsum(dim=1)  # sum_i K[i, s_a], exact
        n = torch.arange(step + 1, end + 1, dtype=f64, device=device)
        mmd2[:, step:end] = mean_all[:, None] + yy / (n * n) - 2.0 * (xy / (t * n))
        sum_yy, sum_xy = yy[:, -1], xy[:, -1]
        acc_rows += rows.sum(dim=1, dtype=f64)
        acc_cols += cols.sum(dim=2, dtype=f64)
        if bool((mmd2[:, :end] < threshold[:, None]).any(dim=1).all()):
            break
        step, chunk = end, min(2 * chunk, _MAX_CHUNK)

    done = end
    hit = mmd2[:, :done] < threshold[:, None]
    steps = torch.arange(done, device=device)
    count = torch.where(hit, steps, done - 1).amin(dim=1) + 1  # first step meeting the rule, else all computed
    keep = steps[None, :] < count[:, None]
    result = torch.zeros(m, t, dtype=torch.bool, device=device)
    result.scatter_(1, order[:, :done], keep)  # order rows hold distinct indices
    return result


def _steps_on_host(g: np.ndarray, neighbours: np.ndarray, neg_suppress: np.ndarray, base: np.ndarray,
                   steps: int) -> np.ndarray:
    """``steps`` picking steps of the plain greedy loop on numpy views (CPU); returns the (M, steps) picks.

    Same rule as the torch loop: argmax (first index on ties; picked tokens hold -inf), then every neighbour's
    score gets ``-w * max(g[s], 0)`` added. A token's neighbours are distinct, so the fancy-index add is a scatter.
    """
    m = g.shape[0]
    picks = np.empty((m, steps), dtype=np.int64)
    g_flat = g.reshape(-1)
    rows = np.arange(m)[:, None]
    for a in range(steps):
        s = g.argmax(axis=1)
        flat = s + base
        if neighbours.shape[1]:
            gs = np.maximum(g_flat[flat], np.float32(0.0))[:, None]
            g[rows, neighbours[flat]] += neg_suppress[flat] * gs
        g_flat[flat] = -np.inf
        picks[:, a] = s
    return picks


def amia_select_batched(
    out: Tensor | Sequence[Tensor],
    scores: Tensor,
    masks: Mapping[str, Tensor],
    k: int = 3,
    edge_temp: float = 1.0,
    suppress_temp: float = 0.2,
    mmd_factor: float = 0.1,
    sigma: float = 1.0,
) -> Tensor:
    """AMIA for M modules of one sample at once (what the engine calls); returns (M, T) bool.

    ``out`` is (M, T, D) or a sequence of M (T, D_m) tensors (modules differ in width). ``scores`` is the
    sample's (T,) attention score, or (M, T). Each module stops at its own step; selections equal
    ``amia_select_reference`` exactly. Preparation runs per module (a matmul-sized job each); only the
    latency-bound greedy loop is batched.
    """
    _check_common(k, sigma)
    outs = list(out.unbind(0)) if isinstance(out, Tensor) else list(out)
    if isinstance(out, Tensor) and out.dim() != 3:
        raise ValueError(f"out must be (M, T, D) or a sequence of (T, D) tensors, got shape {tuple(out.shape)}")
    if not outs:
        raise ValueError("out holds no module")
    t = outs[0].shape[0]
    if any(o.dim() != 2 or o.shape[0] != t for o in outs):
        raise ValueError(f"every module output must be 2-D with {t} tokens, got {[tuple(o.shape) for o in outs]}")
    m = len(outs)
    if scores.dim() == 1:
        per_module = [scores] * m
    elif scores.dim() == 2 and scores.shape[0] == m:
        per_module = list(scores.unbind(0))
    else:
        raise ValueError(f"scores must be (T,) or (M, T) with M={m}, got shape {tuple(scores.shape)}")
    if t == 0:
        return torch.zeros(m, 0, dtype=torch.bool, device=outs[0].device)
    kernel = torch.empty(m, t, t, dtype=torch.float32, device=outs[0].device)
    preps = [
        _prepare(o, a, masks, k, edge_temp, suppress_temp, mmd_factor, sigma, kernel_out=kernel[i])
        for i, (o, a) in enumerate(zip(outs, per_module))
    ]
    return _greedy_lockstep(preps, kernel)


def amia_select(
    out: Tensor,
    scores: Tensor,
    masks: Mapping[str, Tensor],
    k: int = 3,
    edge_temp: float = 1.0,
    suppress_temp: float = 0.2,
    mmd_factor: float = 0.1,
    sigma: float = 1.0,
) -> Tensor:
    """Fast AMIA for one module: (T,) bool mask of the tokens whose inputs feed Wanda's statistic."""
    if out.dim() != 2:
        raise ValueError(f"out must be 2-D (tokens, features), got shape {tuple(out.shape)}")
    return amia_select_batched([out], scores, masks, k, edge_temp, suppress_temp, mmd_factor, sigma)[0]

"""Tests of the pure pruning functions against slow, obvious re-statements of the same math."""

from __future__ import annotations

import math

import pytest
import torch

from tamp.algorithms import (
    add_to_hessian,
    apply_mask,
    magnitude_mask,
    nm_mask,
    parse_pattern,
    row_mask,
    sparsegpt_prune,
    wanda_scores,
)

# ---------------------------------------------------------------------------------------------------------------------
# Slow reference re-statements
# ---------------------------------------------------------------------------------------------------------------------


def _smallest_k(values: list[float], k: int) -> list[int]:
    """Indices of the k smallest values; Python's sort is stable, so ties go to the lower index."""
    return sorted(range(len(values)), key=lambda i: values[i])[:k]


def ref_magnitude_mask(w: torch.Tensor, s: float) -> torch.Tensor:
    flat = [abs(v) for v in w.flatten().tolist()]
    mask = [False] * len(flat)
    for i in _smallest_k(flat, int(len(flat) * s)):
        mask[i] = True
    return torch.tensor(mask).view(w.shape)


def ref_row_mask(scores: torch.Tensor, s: float) -> torch.Tensor:
    d_out, d_in = scores.shape
    mask = torch.zeros(d_out, d_in, dtype=torch.bool)
    for r in range(d_out):
        for j in _smallest_k(scores[r].tolist(), int(d_in * s)):
            mask[r, j] = True
    return mask


def ref_nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    d_out, d_in = scores.shape
    mask = torch.zeros(d_out, d_in, dtype=torch.bool)
    for r in range(d_out):
        for g in range(0, d_in, m):
            for j in _smallest_k(scores[r, g : g + m].tolist(), n):
                mask[r, g + j] = True
    return mask


def ref_obs_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    n: int = 0,
    m: int = 0,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Direct OBS in fp64, one column at a time, with no Cholesky trick and no lazy batching.

    When column j is fixed, the columns still free are F = {j, ..., d_in-1}; their inverse Hessian is inv(H[F, F]).
    The saliency of w_rj is w_rj^2 / inv(H[F, F])[j, j]; removing it moves row r's free weights by
    -w_rj / inv(H[F, F])[j, j] * inv(H[F, F])[j, :].
    """
    w = weight.double().clone()
    h = hessian.double().clone()
    d_out, d_in = w.shape
    for j in range(d_in):
        if h[j, j] == 0:
            h[j, j] = 1.0
            w[:, j] = 0.0
    damp = percdamp * sum(h[j, j].item() for j in range(d_in)) / d_in
    for j in range(d_in):
        h[j, j] += damp
    inv_free = [torch.linalg.inv(h[j:, j:]) for j in range(d_in)]  # inverse Hessian of the columns still free at j

    mask = torch.zeros(d_out, d_in, dtype=torch.bool)
    for b in range(0, d_in, blocksize):
        e = min(b + blocksize, d_in)
        if n == 0:
            sal = [(w[r, j] ** 2 / inv_free[j][0, 0]).item() for r in range(d_out) for j in range(b, e)]
            for flat in _smallest_k(sal, int(len(sal) * sparsity)):
                mask[flat // (e - b), b + flat % (e - b)] = True
        for j in range(b, e):
            if n != 0 and (j - b) % m == 0:
                for r in range(d_out):
                    sal = [(w[r, c] ** 2 / inv_free[c][0, 0]).item() for c in range(j, j + m)]
                    for c in _smallest_k(sal, n):
                        mask[r, j + c] = True
            f = inv_free[j]
            for r in range(d_out):
                if mask[r, j]:
                    w[r, j:] -= w[r, j] / f[0, 0] * f[0, :]
                    w[r, j] = 0.0
    return w, mask


def _correlated_inputs(tokens: int, d_in: int, seed: int) -> torch.Tensor:
    """Activations with correlated features and uneven scales, like real hidden states."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d_in, d_in, generator=g) / math.sqrt(d_in) + torch.eye(d_in)
    scales = torch.exp(torch.randn(d_in, generator=g))
    return (torch.randn(tokens, d_in, generator=g) @ mix) * scales


def _recon_error(w: torch.Tensor, w_new: torch.Tensor, x: torch.Tensor) -> float:
    return float((((w.double() - w_new.double()) @ x.double().t()) ** 2).sum())


# ---------------------------------------------------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("s", [0.0, 0.1, 0.5, 0.7, 0.99])
def test_magnitude_mask_matches_loop(seed: int, s: float) -> None:
    g = torch.Generator().manual_seed(seed)
    shape = (7, 13)
    # integer-valued weights with both signs force many ties in |W|
    w = torch.randint(-4, 5, shape, generator=g).float() if seed % 2 == 0 else torch.randn(shape, generator=g)
    mask = magnitude_mask(w, s)
    assert mask.dtype == torch.bool and mask.shape == w.shape
    assert int(mask.sum()) == int(w.numel() * s)
    assert torch.equal(mask, ref_magnitude_mask(w, s))


def test_magnitude_mask_is_global_not_per_row() -> None:
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]])
    assert torch.equal(magnitude_mask(w, 0.5), torch.tensor([[True] * 4, [False] * 4]))


def test_magnitude_mask_bf16_same_ranking() -> None:
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(0)).bfloat16()
    assert torch.equal(magnitude_mask(w, 0.5), ref_magnitude_mask(w.float(), 0.5))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("s", [0.0, 0.25, 0.5, 0.6, 0.9])
def test_row_mask_matches_loop(seed: int, s: float) -> None:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 5, (9, 20), generator=g).float() if seed == 0 else torch.rand(9, 20, generator=g)
    mask = row_mask(scores, s)
    assert mask.shape == scores.shape and mask.dtype == torch.bool
    assert (mask.sum(dim=1) == int(20 * s)).all()
    assert torch.equal(mask, ref_row_mask(scores, s))
    if s == 0.0:
        assert not mask.any()


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_sparsity_out_of_range_rejected(bad: float) -> None:
    w = torch.randn(4, 8)
    with pytest.raises(ValueError, match="sparsity"):
        row_mask(w, bad)
    with pytest.raises(ValueError, match="sparsity"):
        magnitude_mask(w, bad)
    with pytest.raises(ValueError, match="sparsity"):
        sparsegpt_prune(w, torch.eye(8), bad)


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8), (1, 4), (3, 4)])
@pytest.mark.parametrize("ties", [False, True])
def test_nm_mask(n: int, m: int, ties: bool) -> None:
    g = torch.Generator().manual_seed(n * 10 + m)
    d_out, d_in = 6, 32
    scores = torch.randint(0, 3, (d_out, d_in), generator=g).float() if ties else torch.rand(d_out, d_in, generator=g)
    mask = nm_mask(scores, n, m)
    groups = mask.view(d_out, d_in // m, m)
    assert (groups.sum(dim=2) == n).all()
    grouped_scores = scores.view(d_out, d_in // m, m)
    max_pruned = grouped_scores.masked_fill(~groups, -math.inf).amax(dim=2)
    min_kept = grouped_scores.masked_fill(groups, math.inf).amin(dim=2)
    assert (max_pruned <= min_kept).all()
    assert torch.equal(mask, ref_nm_mask(scores, n, m))


def test_nm_mask_errors() -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        nm_mask(torch.rand(4, 10), 2, 4)
    for n, m in [(0, 4), (4, 4), (5, 4), (-1, 4), (2, 0)]:
        with pytest.raises(ValueError, match="0 < N < M"):
            nm_mask(torch.rand(4, 8), n, m)
    with pytest.raises(ValueError, match="2-D"):
        nm_mask(torch.rand(8), 2, 4)


@pytest.mark.parametrize("seed", range(3))
def test_masks_match_stable_sort_on_larger_tie_heavy_inputs(seed: int) -> None:
    """The selection must equal "first k of a stable sort" even when many values tie at the threshold."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(-3, 4, (64, 96), generator=g).float()  # 7 distinct values: huge tie groups
    for s in [0.1, 0.5, 0.77]:
        k = int(w.numel() * s)
        expected = torch.zeros(w.numel(), dtype=torch.bool)
        expected[torch.sort(w.abs().reshape(-1), stable=True).indices[:k]] = True
        assert torch.equal(magnitude_mask(w, s), expected.view(w.shape))
        kr = int(96 * s)
        expected_rows = torch.zeros_like(w, dtype=torch.bool)
        expected_rows.scatter_(1, torch.sort(w, dim=1, stable=True).indices[:, :kr], True)
        assert torch.equal(row_mask(w, s), expected_rows)
    grouped = w.view(64, 24, 4)
    expected_nm = torch.zeros_like(grouped, dtype=torch.bool)
    expected_nm.scatter_(2, torch.sort(grouped, dim=2, stable=True).indices[:, :, :2], True)
    assert torch.equal(nm_mask(w, 2, 4), expected_nm.view(64, 96))


def test_nan_scores_rejected() -> None:
    scores = torch.rand(4, 8)
    scores[1, 2] = float("nan")
    for fn in (lambda: row_mask(scores, 0.5), lambda: nm_mask(scores, 2, 4), lambda: magnitude_mask(scores, 0.5)):
        with pytest.raises(ValueError, match="NaN"):
            fn()

def test_wanda_scores_matches_double_loop() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 7, generator=g).half()
    x = torch.randn(30, 7, generator=g)
    col_sq_sum = (x.float() ** 2).sum(dim=0)
    scores = wanda_scores(w, col_sq_sum)
    assert scores.dtype == torch.float32
    expected = torch.empty(5, 7)
    for i in range(5):
        for j in range(7):
            expected[i, j] = abs(float(w[i, j])) * math.sqrt(float(col_sq_sum[j]))
    torch.testing.assert_close(scores, expected, rtol=1e-6, atol=0)
    # the scale of col_sq_sum (sum vs. mean over tokens) does not change which weights Wanda prunes
    assert torch.equal(row_mask(scores, 0.5), row_mask(wanda_scores(w, col_sq_sum / 30), 0.5))
    with pytest.raises(ValueError, match="col_sq_sum"):
        wanda_scores(w, col_sq_sum[:5])


def test_apply_mask_in_place_keeps_dtype() -> None:
    w = torch.randn(4, 8).bfloat16()
    mask = magnitude_mask(w, 0.5)
    before = w.clone()
    out = apply_mask(w, mask)
    assert out is w and w.dtype == torch.bfloat16
    assert (w[mask] == 0).all()
    assert torch.equal(w[~mask], before[~mask])
    with pytest.raises(ValueError):
        apply_mask(w, mask[:, :4])


def test_parse_pattern() -> None:
    assert parse_pattern("unstructured") is None
    assert parse_pattern("2:4") == (2, 4)
    assert parse_pattern("4:8") == (4, 8)
    assert parse_pattern(" 1:4 ") == (1, 4)
    for bad in ["", "2:2", "4:2", "0:4", "2-4", "2:4:8", "a:b", "structured", "-1:4", "2 4", "2:"]:
        with pytest.raises(ValueError, match="0<N<M"):
            parse_pattern(bad)


# ---------------------------------------------------------------------------------------------------------------------
# SparseGPT
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("blocksize", [4, 8, 32])
@pytest.mark.parametrize(("s", "n", "m"), [(0.5, 0, 0), (0.3, 0, 0), (0.0, 2, 4), (0.0, 1, 4)])
@pytest.mark.parametrize("seed", [0, 1])
def test_sparsegpt_matches_direct_obs(blocksize: int, s: float, n: int, m: int, seed: int) -> None:
    d_out, d_in = 8, 16
    x = _correlated_inputs(64, d_in, seed)
    w = torch.randn(d_out, d_in, generator=torch.Generator().manual_seed(100 + seed))
    h = add_to_hessian(None, x)
    new_w, mask = sparsegpt_prune(w, h, s, n=n, m=m, blocksize=blocksize, percdamp=0.01)
    ref_w, ref_mask = ref_obs_prune(w, h, s, n=n, m=m, blocksize=blocksize, percdamp=0.01)
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(new_w.double(), ref_w, rtol=1e-4, atol=1e-4)


def test_sparsegpt_does_not_modify_inputs_and_zero_sparsity_is_identity() -> None:
    x = _correlated_inputs(64, 16, 3)
    w = torch.randn(8, 16)
    h = add_to_hessian(None, x)
    w0, h0 = w.clone(), h.clone()
    new_w, mask = sparsegpt_prune(w, h, 0.0, blocksize=8)
    assert torch.equal(w, w0) and torch.equal(h, h0)
    assert not mask.any()
    assert torch.equal(new_w, w)


@pytest.mark.parametrize(("d_in", "blocksize"), [(96, 32), (100, 32), (64, 128)])
@pytest.mark.parametrize("s", [0.5, 0.7])
def test_sparsegpt_exact_block_sparsity(d_in: int, blocksize: int, s: float) -> None:
    d_out = 24
    x = _correlated_inputs(256, d_in, 7)
    w = torch.randn(d_out, d_in)
    new_w, mask = sparsegpt_prune(w, add_to_hessian(None, x), s, blocksize=blocksize)
    for b in range(0, d_in, blocksize):
        block = mask[:, b : b + blocksize]
        assert int(block.sum()) == int(block.numel() * s)
    assert (new_w[mask] == 0).all()
    assert torch.isfinite(new_w).all()


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8)])
def test_sparsegpt_nm_valid(n: int, m: int) -> None:
    d_out, d_in = 16, 64
    x = _correlated_inputs(256, d_in, 11)
    w = torch.randn(d_out, d_in)
    new_w, mask = sparsegpt_prune(w, add_to_hessian(None, x), 0.0, n=n, m=m, blocksize=32)
    assert (mask.view(d_out, d_in // m, m).sum(dim=2) == n).all()
    assert ((new_w == 0) | ~mask).all() and (new_w[mask] == 0).all()


def test_sparsegpt_nm_argument_errors() -> None:
    w, h = torch.randn(4, 12), torch.eye(12)
    with pytest.raises(ValueError, match="multiple of 8"):
        sparsegpt_prune(w, h, 0.0, n=4, m=8)
    with pytest.raises(ValueError, match="0 < N < M"):
        sparsegpt_prune(w, h, 0.0, n=4, m=4)
    with pytest.raises(ValueError, match="blocksize"):
        sparsegpt_prune(w, h, 0.0, n=2, m=4, blocksize=6)
    with pytest.raises(ValueError, match="hessian"):
        sparsegpt_prune(w, torch.eye(8), 0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_sparsegpt_pruned_entries_exactly_zero_in_dtype(dtype: torch.dtype) -> None:
    x = _correlated_inputs(128, 32, 5)
    w = torch.randn(16, 32).to(dtype)
    for kwargs in [dict(sparsity=0.5), dict(sparsity=0.0, n=2, m=4)]:
        new_w, mask = sparsegpt_prune(w, add_to_hessian(None, x), blocksize=16, **kwargs)
        assert new_w.dtype == dtype and new_w.shape == w.shape and mask.shape == w.shape
        assert (new_w[mask] == 0).all()
        assert mask.float().mean() == 0.5


@pytest.mark.parametrize("pattern", [None, (2, 4)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sparsegpt_reconstructs_better_than_wanda_and_magnitude(pattern: tuple[int, int] | None, seed: int) -> None:
    d_out, d_in, s = 32, 64, 0.5
    x = _correlated_inputs(1024, d_in, seed)
    w = torch.randn(d_out, d_in, generator=torch.Generator().manual_seed(50 + seed))
    scores = wanda_scores(w, (x**2).sum(dim=0))
    if pattern is None:
        sg_w, _ = sparsegpt_prune(w, add_to_hessian(None, x), s, blocksize=32)
        wanda_mask, mag_mask = row_mask(scores, s), magnitude_mask(w, s)
    else:
        n, m = pattern
        sg_w, _ = sparsegpt_prune(w, add_to_hessian(None, x), 0.0, n=n, m=m, blocksize=32)
        wanda_mask, mag_mask = nm_mask(scores, n, m), nm_mask(w.abs(), n, m)
    err_sg = _recon_error(w, sg_w, x)
    err_wanda = _recon_error(w, apply_mask(w.clone(), wanda_mask), x)
    err_mag = _recon_error(w, apply_mask(w.clone(), mag_mask), x)
    assert err_sg < err_wanda < err_mag


def test_sparsegpt_dead_input_column() -> None:
    d_out, d_in = 8, 32
    x = _correlated_inputs(128, d_in, 9)
    x[:, [3, 17]] = 0.0  # two inputs that never fire
    h = add_to_hessian(None, x)
    assert h[3, 3] == 0 and h[17, 17] == 0
    w = torch.randn(d_out, d_in)
    for kwargs in [dict(sparsity=0.5), dict(sparsity=0.0, n=2, m=4)]:
        new_w, mask = sparsegpt_prune(w, h, blocksize=16, **kwargs)
        assert torch.isfinite(new_w).all()
        assert (new_w[:, [3, 17]] == 0).all()
        assert (new_w[mask] == 0).all()
    ref_w, ref_mask = ref_obs_prune(w, h, 0.5, blocksize=16)
    new_w, mask = sparsegpt_prune(w, h, 0.5, blocksize=16)
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(new_w.double(), ref_w, rtol=1e-4, atol=1e-4)


def test_sparsegpt_bad_hessian_raises_clear_error() -> None:
    w = torch.randn(4, 8)
    h = torch.eye(8)
    h[2, 5] = h[5, 2] = float("nan")
    with pytest.raises(RuntimeError, match="percdamp"):
        sparsegpt_prune(w, h, 0.5)
    # not positive definite, and the damping (relative to a negative mean diagonal) cannot fix it
    with pytest.raises(RuntimeError, match="increase percdamp or use more calibration samples"):
        sparsegpt_prune(w, -torch.eye(8), 0.5)
    # singular (rank 1, no dead inputs) and undamped: fails; the default damping makes the same Hessian usable
    h_low = torch.ones(8, 8)
    with pytest.raises(RuntimeError, match="percdamp"):
        sparsegpt_prune(w, h_low, 0.5, percdamp=0.0)
    new_w, _ = sparsegpt_prune(w, h_low, 0.5, percdamp=0.01)
    assert torch.isfinite(new_w).all()


def test_add_to_hessian_accumulates() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 5, 6, generator=g).bfloat16()
    b = torch.randn(7, 6, generator=g)
    h = add_to_hessian(None, a)
    assert h.dtype == torch.float32 and h.shape == (6, 6)
    h = add_to_hessian(h, b)
    xs = torch.cat([a.float().reshape(-1, 6), b], dim=0).double()
    torch.testing.assert_close(h.double(), xs.t() @ xs, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        add_to_hessian(h, torch.randn(3, 5))

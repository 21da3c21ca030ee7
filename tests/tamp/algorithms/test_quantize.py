"""RTN and GPTQ against slow re-statements of the released GPTQ (IST-DASLab/gptq 2d65066: quant.py, gptq.py).

RTN is element-wise IEEE arithmetic in the same order as the oracle, so it is compared exactly. GPTQ's oracle
quantizes one column at a time and updates every later column at once (no blocks, no lazy updates); both run in
fp64 so that no rounding decision can fall differently between the two summation orders, and codes are compared
exactly. The release fits a group inside a block from stale weights, so the two agree whenever groups start on
block boundaries (group_size a multiple of blocksize, or one group per row); that case is tested apart.
"""

from __future__ import annotations

import pytest
import torch

from tamp.algorithms.quantize import (
    fake_quantize,
    fit_grid,
    gptq_quantize,
    rtn_quantize,
    sparsegpt_quantize,
)
from tamp.algorithms.sparsegpt import sparsegpt_prune


def _grid_oracle(row: list[float], bits: int, sym: bool) -> tuple[float, float]:
    """quant.py's find_params for one row, in fp32 scalars."""
    f = torch.float32
    low = min(min(row), 0.0)
    high = max(max(row), 0.0)
    if sym:
        high = max(abs(low), high)
        if low < 0:
            low = -high
    if low == 0 and high == 0:
        low, high = -1.0, 1.0
    maxq = 2**bits - 1
    scale = (torch.tensor(high, dtype=f) - torch.tensor(low, dtype=f)) / maxq
    zero = torch.tensor((maxq + 1) / 2, dtype=f) if sym else torch.round(-torch.tensor(low, dtype=f) / scale)
    return float(scale), float(zero)


def _q_oracle(x: float, scale: float, zero: float, bits: int) -> float:
    f = torch.float32
    s, z = torch.tensor(scale, dtype=f), torch.tensor(zero, dtype=f)
    code = torch.clamp(torch.round(torch.tensor(x, dtype=f) / s) + z, 0, 2**bits - 1)
    return float(s * (code - z))


@pytest.mark.parametrize(("bits", "group", "sym"), [(4, 128, True), (4, 32, False), (8, -1, True), (3, 64, False)])
def test_rtn_equals_the_element_by_element_oracle(bits: int, group: int, sym: bool) -> None:
    torch.manual_seed(0)
    w = torch.randn(6, 128) * torch.rand(6, 1) * 3
    w[2] = 0.0  # an all-zero row takes the release's [-1, 1] grid
    w[3, :40] = w[3, :40].abs()  # a group with no negative weight
    got = rtn_quantize(w, bits, group, sym)
    size = 128 if group == -1 else group
    for r in range(w.shape[0]):
        for start in range(0, 128, size):
            row = w[r, start:start + size].tolist()
            scale, zero = _grid_oracle(row, bits, sym)
            expect = [_q_oracle(x, scale, zero, bits) for x in row]
            assert got.weight[r, start:start + size].tolist() == expect
            assert float(got.scale[r, start // size]) == scale and float(got.zero[r, start // size]) == zero


def test_zero_is_on_every_grid() -> None:
    """A pruned weight stays exactly zero, symmetric or not, at any width."""
    torch.manual_seed(1)
    w = torch.randn(8, 64)
    w[:, ::3] = 0.0
    for bits in (2, 3, 4, 8):
        for sym in (True, False):
            assert bool((rtn_quantize(w, bits, 16, sym).weight[:, ::3] == 0).all())


def test_the_grid_has_2_to_the_bits_levels() -> None:
    torch.manual_seed(2)
    w = torch.randn(4, 256)
    got = rtn_quantize(w, 4, 256, sym=False)
    assert int(got.codes.max()) <= 15 and len(torch.unique(got.codes[0])) <= 16
    assert torch.equal(got.weight, fake_quantize(w, got.scale[:, :1], got.zero[:, :1], 4))


def _gptq_oracle(w: torch.Tensor, h: torch.Tensor, bits: int, group: int, sym: bool, act_order: bool,
                 static: bool, percdamp: float = 0.01, pruned: torch.Tensor | None = None) -> torch.Tensor:
    """The released loop, column by column, every later column updated at once (fp64); `pruned` weights are zero
    and take no update (llm-compressor's preserve_zeros)."""
    w, h = w.double().clone(), h.double().clone()
    if pruned is not None:
        w[pruned] = 0.0
    d_in = w.shape[1]
    row_scale, row_zero = fit_grid(w, bits, sym)
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    size = d_in if group == -1 else group
    fixed = [fit_grid(w[:, g:g + size], bits, sym) for g in range(0, d_in, size)]
    perm = torch.argsort(torch.diag(h), descending=True, stable=True) if act_order else torch.arange(d_in)
    w, h = w[:, perm], h[perm][:, perm]
    held = pruned[:, perm] if pruned is not None else torch.zeros_like(w, dtype=torch.bool)
    h = h + torch.eye(d_in, dtype=h.dtype) * percdamp * torch.mean(torch.diag(h))
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q = torch.zeros_like(w)
    scale, zero = row_scale, row_zero
    for j in range(d_in):
        if static:
            scale, zero = fixed[int(perm[j]) // size]
        elif group != -1 and j % size == 0:
            scale, zero = fit_grid(w[:, j:j + size], bits, sym)
        for r in range(w.shape[0]):
            code = min(max(torch.round(w[r, j] / scale[r]) + zero[r], 0), 2**bits - 1)
            q[r, j] = scale[r] * (code - zero[r])
        err = (w[:, j] - q[:, j]) / u[j, j]
        for k in range(j + 1, d_in):
            for r in range(w.shape[0]):
                if not held[r, k]:
                    w[r, k] -= err[r] * u[j, k]
    return q[:, torch.argsort(perm)]


def _problem(seed: int, d_out: int = 12, d_in: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    x = torch.randn(4 * d_in, d_in, generator=g, dtype=torch.float64) * torch.rand(d_in, generator=g) * 2
    x[:, 5] = 0.0  # an input that never fires
    return w, x.t() @ x


@pytest.mark.parametrize(("bits", "group", "sym", "act_order", "static", "blocksize"), [
    (4, 128, True, False, False, 128),
    (4, 128, False, False, False, 32),
    (4, -1, True, False, False, 64),
    (3, 64, True, True, False, 64),
    (4, 64, False, True, True, 128),
    (8, 128, True, True, True, 16),
])
def test_gptq_equals_the_column_by_column_release_loop(bits: int, group: int, sym: bool, act_order: bool,
                                                       static: bool, blocksize: int) -> None:
    w, h = _problem(bits + group + blocksize)
    got = gptq_quantize(w, h, bits, group, sym, act_order, static, blocksize)
    expect = _gptq_oracle(w, h, bits, group, sym, act_order, static)
    assert got.weight.dtype == torch.float64
    assert torch.allclose(got.weight, expect, rtol=0, atol=1e-9)
    assert bool((got.weight[:, 5] == 0).all())  # dead input: zero weights, as released


@pytest.mark.parametrize(("act_order", "blocksize"), [(False, 32), (True, 64)])
def test_gptq_holds_pruned_weights_at_zero(act_order: bool, blocksize: int) -> None:
    """A pruned matrix quantized after pruning (wanda + gptq): its zeros take no update and stay exactly zero,
    the rest follows the column-by-column loop."""
    w, h = _problem(13, d_out=8, d_in=128)
    pruned = torch.rand(w.shape, generator=torch.Generator().manual_seed(5)) < 0.5
    got = gptq_quantize(w, h, 4, 64, True, act_order, False, blocksize, pruned=pruned)
    expect = _gptq_oracle(w, h, 4, 64, True, act_order, False, pruned=pruned)
    assert torch.allclose(got.weight, expect, rtol=0, atol=1e-9)
    assert bool((got.weight[pruned] == 0).all())
    free = gptq_quantize(w, h, 4, 64, True, act_order, False, blocksize).weight
    assert int((free[pruned] != 0).sum()) > 0  # without the mask the error moves them


def test_gptq_codes_scales_and_groups_describe_its_weights() -> None:
    """What an export packs (codes, a grid per row and group, each column's group) gives back the weights."""
    w, h = _problem(7)
    for act_order in (False, True):
        got = gptq_quantize(w.float(), h.float(), 4, 64, False, act_order)
        scale = got.scale.gather(1, got.group.expand(w.shape[0], -1))
        zero = got.zero.gather(1, got.group.expand(w.shape[0], -1))
        assert torch.equal(scale * (got.codes.float() - zero), got.weight)
        assert sorted(torch.bincount(got.group).tolist()) == [64] * 4


def test_gptq_beats_rtn_on_the_layer_output() -> None:
    """The point of GPTQ: a smaller output error ||(W - Q) X|| than rounding each weight alone, on correlated
    inputs (as activations are; on independent ones every column stands alone and there is little to gain)."""
    g = torch.Generator().manual_seed(11)
    w = torch.randn(32, 128, generator=g)
    x = torch.randn(512, 16, generator=g) @ torch.randn(16, 128, generator=g) + 0.1 * torch.randn(512, 128, generator=g)
    h = x.t() @ x
    gptq = gptq_quantize(w, h, 3, 128).weight
    rtn = rtn_quantize(w, 3, 128).weight
    err = lambda q: float(torch.einsum("oi,ij,oj->", w - q, h, w - q))  # noqa: E731
    assert err(gptq) < 0.5 * err(rtn)


@pytest.mark.parametrize("bad", [dict(bits=1), dict(bits=9), dict(group_size=0), dict(blocksize=0)])
def test_bad_settings_are_refused(bad: dict) -> None:
    w, h = _problem(3, d_in=64)
    with pytest.raises(ValueError):
        gptq_quantize(w, h, **bad)


def _joint_oracle(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, n: int, m: int, bits: int,
                  group: int, sym: bool, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT's joint pass restated as direct OBS in fp64 (no Cholesky trick, no lazy updates): when column j is
    fixed, the free columns are j.. with inverse Hessian inv(H[j:, j:]); each row's weight there is pruned or kept
    by SparseGPT's rule, rounded to its grid, and the difference spread over the free columns."""
    w, h = weight.double().clone(), hessian.double().clone()
    d_out, d_in = w.shape
    row_grid = fit_grid(w, bits, sym)
    for j in range(d_in):
        if h[j, j] == 0:
            h[j, j], w[:, j] = 1.0, 0.0
    h += torch.eye(d_in, dtype=h.dtype) * 0.01 * float(torch.diag(h).mean())
    inv_free = [torch.linalg.inv(h[j:, j:]) for j in range(d_in)]
    size = d_in if group == -1 else group
    mask = torch.zeros(d_out, d_in, dtype=torch.bool)
    scale, zero = row_grid
    for b in range(0, d_in, blocksize):
        e = min(b + blocksize, d_in)
        if n == 0:
            sal = torch.tensor([[float(w[r, j] ** 2 / inv_free[j][0, 0]) for j in range(b, e)] for r in range(d_out)])
            k = int(sal.numel() * sparsity)
            order = sorted(range(sal.numel()), key=lambda f: (float(sal.view(-1)[f]), f))[:k]
            for f in order:
                mask[f // (e - b), b + f % (e - b)] = True
        for j in range(b, e):
            if n != 0 and (j - b) % m == 0:
                for r in range(d_out):
                    sal = [float(w[r, c] ** 2 / inv_free[c][0, 0]) for c in range(j, j + m)]
                    for c in sorted(range(m), key=lambda c: (sal[c], c))[:n]:
                        mask[r, j + c] = True
            if group != -1 and j % size == 0:
                scale, zero = fit_grid(w[:, j:j + size], bits, sym)
            f = inv_free[j]
            for r in range(d_out):
                kept = 0.0 if mask[r, j] else float(w[r, j])
                code = min(max(round(kept / float(scale[r])) + float(zero[r]), 0), 2**bits - 1)
                q = float(scale[r]) * (code - float(zero[r]))
                w[r, j:] -= (w[r, j] - q) / f[0, 0] * f[0, :]
                w[r, j] = q
    return w, mask


@pytest.mark.parametrize(("sparsity", "n", "m", "bits", "group", "sym", "blocksize"), [
    (0.5, 0, 0, 4, -1, False, 16),  # the release's joint 50% + 4-bit: one asymmetric grid per row
    (0.5, 0, 0, 4, 16, True, 16),
    (0.3, 0, 0, 3, 32, False, 16),
    (0.0, 2, 4, 4, 16, True, 8),
])
def test_sparsegpt_quantize_equals_the_direct_joint_obs(sparsity: float, n: int, m: int, bits: int, group: int,
                                                        sym: bool, blocksize: int) -> None:
    w, h = _problem(int(sparsity * 10) + bits + group + 50, d_out=8, d_in=32)
    got, mask = sparsegpt_quantize(w, h, sparsity, n, m, bits, group, sym, blocksize)
    expect, expect_mask = _joint_oracle(w, h, sparsity, n, m, bits, group, sym, blocksize)
    assert torch.equal(mask, expect_mask)
    assert torch.allclose(got.weight, expect, rtol=0, atol=1e-9)
    assert bool((got.weight[mask] == 0).all())


def test_joint_keeps_sparsegpts_mask_and_its_zeros_in_fp32() -> None:
    """On the working precision the engine uses: the mask is the one SparseGPT alone chooses (the grid moves no
    pruning decision of the first block, and the zeros are exactly zero everywhere)."""
    w, h = _problem(21, d_out=16, d_in=128)
    w, h = w.float(), h.float()
    q, mask = sparsegpt_quantize(w, h, 0.5, bits=4, group_size=128, blocksize=128)
    _, alone = sparsegpt_prune(w, h, 0.5, blocksize=128)
    assert torch.equal(mask, alone)  # one block: the mask is chosen before any column is rounded
    assert bool((q.weight[mask] == 0).all()) and float(mask.float().mean()) == 0.5
    assert len(torch.unique(q.codes)) <= 16


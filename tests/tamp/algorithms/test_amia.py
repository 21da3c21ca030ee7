"""AMIA token selection: the fast lock-step path against the straightforward reference, plus hand-checked cases."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from tamp.algorithms.amia import (
    amia_select,
    amia_select_batched,
    amia_select_reference,
    density,
    modality_similarities,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: intra-op threads only add contention on shared cores (seconds instead of ms)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------------------------------
# Input builders
# ---------------------------------------------------------------------------------------------------------------------


def _two_modalities(t: int, start: int, stop: int) -> dict[str, Tensor]:
    """Media tokens in [start, stop), text elsewhere, as in a prompt with one image span."""
    media = torch.zeros(t, dtype=torch.bool)
    media[start:stop] = True
    return {"image": media, "text": ~media}


def _clustered(gen: torch.Generator, t: int, d: int, clusters: int) -> Tensor:
    """Tokens around a few centres, like real activations; MMD then needs more (and varied) steps."""
    centres = torch.randn(clusters, d, generator=gen) * 3
    which = torch.randint(0, clusters, (t,), generator=gen)
    return centres[which] + torch.randn(t, d, generator=gen)


def _case(seed: int, t: int, d: int, kind: str) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    out = _clustered(gen, t, d, clusters=4) if kind in ("clustered", "dups") else torch.randn(t, d, generator=gen)
    scores = torch.rand(t, generator=gen)
    if kind == "dups":  # exact duplicate tokens: kNN column 0 may be another token, not the token itself
        src = torch.randint(0, max(1, t // 3), (t,), generator=gen)
        out = out[src].clone()
    if kind == "int_scores":  # many exact ties in the graph scores' inputs
        scores = torch.randint(0, 3, (t,), generator=gen).float()
    if kind == "nan_scores":
        scores[torch.rand(t, generator=gen) < 0.3] = float("nan")
    masks = _two_modalities(t, t // 4, (3 * t) // 4)
    if kind == "text_only":
        masks = _two_modalities(t, 0, 0)
    if kind == "one_image_token":
        masks = _two_modalities(t, t // 2, t // 2 + 1)
    if kind == "three":
        third = max(1, t // 3)
        video = torch.zeros(t, dtype=torch.bool)
        audio = torch.zeros(t, dtype=torch.bool)
        video[:third] = True
        audio[third : 2 * third] = True
        masks = {"video": video, "audio": audio, "text": ~(video | audio)}
    return out, scores, masks


KINDS = ["plain", "clustered", "dups", "int_scores", "nan_scores", "text_only", "one_image_token", "three"]
FACTORS = [0.1, 0.03, 0.01, 0.0]

# ---------------------------------------------------------------------------------------------------------------------
# Fast vs reference
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [1, 2, 3, 4, 50])
@pytest.mark.parametrize("kind", KINDS)
def test_fast_matches_reference_small(t: int, kind: str) -> None:
    for seed in range(5):
        out, scores, masks = _case(100 * t + seed, t, 8 + 14 * seed, kind)
        for factor in FACTORS:
            fast = amia_select(out, scores, masks, mmd_factor=factor)
            ref = amia_select_reference(out, scores, masks, mmd_factor=factor)
            assert fast.dtype == torch.bool and fast.shape == (t,)
            assert torch.equal(fast, ref), (kind, t, seed, factor)
            assert 1 <= int(fast.sum()) <= t


@pytest.mark.parametrize("kind", KINDS)
def test_fast_matches_reference_t300(kind: str) -> None:
    out, scores, masks = _case(7, 300, 64, kind)
    counts = []
    for factor in [0.1, 0.02, 0.005, 0.0]:  # stops fall inside different greedy chunks
        fast = amia_select(out, scores, masks, mmd_factor=factor)
        assert torch.equal(fast, amia_select_reference(out, scores, masks, mmd_factor=factor)), factor
        counts.append(int(fast.sum()))
    assert counts == sorted(counts)  # a lower threshold only extends the same greedy order


def test_fast_matches_reference_random_sweep() -> None:
    gen = torch.Generator().manual_seed(1234)
    for case in range(150):
        t = int(torch.randint(1, 121, (1,), generator=gen))
        d = int(torch.randint(8, 65, (1,), generator=gen))
        kind = KINDS[int(torch.randint(0, len(KINDS), (1,), generator=gen))]
        factor = float(torch.rand((), generator=gen)) * 0.12
        out, scores, masks = _case(case, t, d, kind)
        fast = amia_select(out, scores, masks, mmd_factor=factor)
        assert torch.equal(fast, amia_select_reference(out, scores, masks, mmd_factor=factor)), (case, t, d, kind)


@pytest.mark.parametrize("host_steps", [True, False])
def test_both_greedy_loops_match_reference(monkeypatch: pytest.MonkeyPatch, host_steps: bool) -> None:
    # On the CPU the picking steps run on numpy views; accelerators run the torch loop. Both must give the
    # reference's selection, for one module and for several in lock-step.
    from tamp.algorithms import amia

    monkeypatch.setattr(amia, "_HOST_STEPS", host_steps)
    calls: list[int] = []
    original = amia._steps_on_host
    monkeypatch.setattr(amia, "_steps_on_host", lambda *a: calls.append(a[-1]) or original(*a))
    gen = torch.Generator().manual_seed(99)
    for case in range(40):
        t = int(torch.randint(2, 200, (1,), generator=gen))
        kind = KINDS[case % len(KINDS)]
        factor = [0.1, 0.02, 0.0][case % 3]
        outs = [_case(case * 7 + j, t, 8 + 8 * j, kind)[0] for j in range(3)]
        _, scores, masks = _case(case * 7, t, 8, kind)
        batched = amia_select_batched(outs, scores, masks, mmd_factor=factor)
        for j, out in enumerate(outs):
            ref = amia_select_reference(out, scores, masks, mmd_factor=factor)
            assert torch.equal(batched[j], ref), (case, j, kind)
            assert torch.equal(amia_select(out, scores, masks, mmd_factor=factor), ref), (case, j, kind)
    assert bool(calls) is host_steps  # the numpy steps ran exactly when enabled


def test_fast_matches_reference_other_hyperparameters() -> None:
    out, scores, masks = _case(3, 120, 16, "clustered")
    for k, edge, supp, sigma in [(1, 0.5, 1.0, 1.0), (5, 2.0, 0.0, 0.7), (0, 1.0, 0.2, 2.0), (200, 1.0, 0.2, 1.0)]:
        kw = dict(k=k, edge_temp=edge, suppress_temp=supp, mmd_factor=0.02, sigma=sigma)
        assert torch.equal(amia_select(out, scores, masks, **kw), amia_select_reference(out, scores, masks, **kw))


def test_nan_scores_count_as_zero() -> None:
    out, scores, masks = _case(11, 60, 16, "nan_scores")
    zeroed = torch.nan_to_num(scores, nan=0.0)
    for factor in FACTORS:
        with_nan = amia_select(out, scores, masks, mmd_factor=factor)
        assert torch.equal(with_nan, amia_select(out, zeroed, masks, mmd_factor=factor))


def test_kernel_fp64_sums_are_exact() -> None:
    """The fast path's running sums equal the reference's recomputed ones only because these sums are exact."""
    from tamp.algorithms.amia import _prepare

    out, scores, masks = _case(9, 150, 32, "dups")
    prepared = _prepare(out, scores, masks, 3, 1.0, 0.2, 0.1, 1.0)
    kernel = prepared.kernel
    exact_cols = [math.fsum(column) for column in kernel.double().T.tolist()]
    assert torch.equal(kernel.sum(dim=0, dtype=torch.float64), torch.tensor(exact_cols, dtype=torch.float64))
    for picked in ([3], [0, 7, 149], list(range(0, 150, 4))):  # the fast path's per-column sums, any order
        assert torch.equal(kernel[:, picked].sum(dim=0, dtype=torch.float64),
                           torch.tensor([exact_cols[j] for j in picked], dtype=torch.float64))
    assert float(kernel.min()) > 0.125 and float(kernel.max()) < 2.0
    exact = math.fsum(kernel.double().flatten().tolist())
    assert float(kernel.sum(dtype=torch.float64)) == exact
    # the one sum that is not exact: the total (fp32 row-block sums), shared by the fast path and the reference
    assert float(prepared.total) == pytest.approx(exact, rel=1e-6)
    assert float(kernel[:, 7:90].sum(dtype=torch.float64)) == math.fsum(kernel[:, 7:90].double().flatten().tolist())


def test_asymmetric_kernel_matches_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """A GEMM may round K[i, j] and K[j, i] differently; the running MMD sums must not assume symmetry.

    On this CPU the kernel happens to come out symmetric, so skew it on purpose (values stay in [0.125, 2)).
    """
    import dataclasses

    from tamp.algorithms import amia

    original = amia._prepare

    def skewed(*args: object, **kwargs: object) -> object:
        prepared = original(*args, **kwargs)
        kernel = prepared.kernel
        gen = torch.Generator().manual_seed(kernel.shape[0])
        kernel.mul_(1.0 + 0.3 * torch.rand(kernel.shape, generator=gen).triu(diagonal=1))
        return dataclasses.replace(prepared, total=kernel.sum(dtype=torch.float64))

    monkeypatch.setattr(amia, "_prepare", skewed)
    for seed, kind in enumerate(["plain", "clustered", "three"]):
        out, scores, masks = _case(40 + seed, 90, 24, kind)
        for factor in (0.1, 0.03, 0.01):
            fast = amia_select(out, scores, masks, mmd_factor=factor)
            assert torch.equal(fast, amia_select_reference(out, scores, masks, mmd_factor=factor)), (kind, factor)


# ---------------------------------------------------------------------------------------------------------------------
# Batched
# ---------------------------------------------------------------------------------------------------------------------


def test_batched_matches_single_per_module() -> None:
    gen = torch.Generator().manual_seed(5)
    t = 80
    masks = _two_modalities(t, 10, 60)
    # Modules of different widths and structure so that they stop at different steps.
    outs = [
        torch.randn(t, 24, generator=gen),
        _clustered(gen, t, 40, clusters=3),
        _clustered(gen, t, 8, clusters=12),
        torch.randn(t, 1, generator=gen),
    ]
    shared = torch.rand(t, generator=gen)
    per_module = torch.randint(0, 4, (len(outs), t), generator=gen).float()
    for scores in (shared, per_module):
        for factor in (0.1, 0.01):
            got = amia_select_batched(outs, scores, masks, mmd_factor=factor)
            assert got.shape == (len(outs), t) and got.dtype == torch.bool
            for i, o in enumerate(outs):
                a = scores if scores.dim() == 1 else scores[i]
                assert torch.equal(got[i], amia_select(o, a, masks, mmd_factor=factor)), (i, factor)
                assert torch.equal(got[i], amia_select_reference(o, a, masks, mmd_factor=factor)), (i, factor)
    counts = amia_select_batched(outs, shared, masks, mmd_factor=0.01).sum(dim=1).tolist()
    assert len(set(counts)) > 1, counts  # the lock-step loop really had to stop modules at different steps


def test_batched_tensor_input_matches_list() -> None:
    gen = torch.Generator().manual_seed(8)
    out = _clustered(gen, 3 * 40, 16, clusters=5).reshape(3, 40, 16)
    scores = torch.rand(40, generator=gen)
    masks = _two_modalities(40, 5, 30)
    assert torch.equal(amia_select_batched(out, scores, masks), amia_select_batched(list(out), scores, masks))


def test_batched_rejects_bad_shapes() -> None:
    masks = _two_modalities(5, 1, 3)
    with pytest.raises(ValueError):
        amia_select_batched([torch.randn(5, 4), torch.randn(6, 4)], torch.rand(5), masks)
    with pytest.raises(ValueError):
        amia_select_batched(torch.randn(2, 5, 4), torch.rand(3, 5), masks)
    with pytest.raises(ValueError):
        amia_select(torch.randn(5, 4), torch.rand(5), {"image": torch.ones(4, dtype=torch.bool)})


# ---------------------------------------------------------------------------------------------------------------------
# Termination guards
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [0.0, -1.0])
def test_rule_that_never_fires_selects_everything(factor: float) -> None:
    # factor -1: threshold < 0 <= MMD^2, so the released rule could never stop; the loop must end at T.
    out, scores, masks = _case(2, 40, 16, "plain")
    assert bool(amia_select(out, scores, masks, mmd_factor=factor).all())
    assert bool(amia_select_reference(out, scores, masks, mmd_factor=factor).all())


def test_identical_tokens_terminate() -> None:
    # All tokens equal: density rounds to ~1 (1 - density may be < 0: the release took sqrt of a negative -> NaN).
    out = torch.randn(1, 16).expand(30, 16).clone()
    scores = torch.rand(30)
    masks = _two_modalities(30, 5, 20)
    fast = amia_select(out, scores, masks)
    assert torch.equal(fast, amia_select_reference(out, scores, masks))
    assert int(fast.sum()) >= 1


def test_non_finite_inputs_terminate() -> None:
    out, scores, masks = _case(4, 30, 8, "plain")
    out[3] = float("nan")
    out[7, 2] = float("inf")
    scores[0] = float("inf")
    scores[1] = float("-inf")
    scores[2] = float("nan")
    for factor in (0.1, 0.0):
        fast = amia_select(out, scores, masks, mmd_factor=factor)
        assert torch.equal(fast, amia_select_reference(out, scores, masks, mmd_factor=factor))
    assert bool(amia_select(out, scores, masks, mmd_factor=0.0).all())


def test_huge_scores_do_not_stall() -> None:
    # Scores so large that graph scores overflow to inf and suppression produces -inf / NaN.
    out, _, masks = _case(6, 20, 8, "plain")
    scores = torch.full((20,), 3e38)
    fast = amia_select(out, scores, masks, mmd_factor=0.0)
    assert bool(fast.all())
    assert torch.equal(amia_select(out, scores, masks), amia_select_reference(out, scores, masks))


@pytest.mark.parametrize("magnitude", [1.0, 1e30, 1e34, 1e36])
@pytest.mark.parametrize("suppress_temp", [0.2, -5.0, -200.0])
def test_greedy_guard_boundary(magnitude: float, suppress_temp: float) -> None:
    # The fast loop drops the reference's clamp + mask when no score can overflow; around that bound (large scores,
    # negative temperatures that make suppression weights > 1 or inf) both loop variants must match the reference.
    out, scores, masks = _case(9, 40, 8, "clustered")
    scores = scores * magnitude
    for factor in (0.1, 0.0):
        kw = {"mmd_factor": factor, "suppress_temp": suppress_temp}
        assert torch.equal(amia_select(out, scores, masks, **kw), amia_select_reference(out, scores, masks, **kw))


def test_empty_and_single_token() -> None:
    masks0 = _two_modalities(0, 0, 0)
    assert amia_select(torch.randn(0, 8), torch.rand(0), masks0).shape == (0,)
    assert amia_select_reference(torch.randn(0, 8), torch.rand(0), masks0).shape == (0,)
    assert amia_select_batched(torch.randn(2, 0, 8), torch.rand(0), masks0).shape == (2, 0)
    masks1 = _two_modalities(1, 0, 1)
    assert amia_select(torch.randn(1, 8), torch.rand(1), masks1).tolist() == [True]
    assert amia_select_reference(torch.randn(1, 8), torch.tensor([float("nan")]), masks1).tolist() == [True]


# ---------------------------------------------------------------------------------------------------------------------
# Similarity terms and density
# ---------------------------------------------------------------------------------------------------------------------


def _unit_rows(x: Tensor) -> list[list[float]]:
    rows = x.double().tolist()
    return [[v / max(math.sqrt(sum(u * u for u in r)), 1e-12) for v in r] for r in rows]


def _dot(u: list[float], v: list[float]) -> float:
    return sum(a * b for a, b in zip(u, v))


def _loop_terms(x: Tensor, masks: dict[str, Tensor]) -> dict[str, float]:
    """Plain double loop over token pairs: within terms keep positive i<j pairs only, cross terms keep all pairs."""
    rows = _unit_rows(x)
    idx = {name: [i for i, on in enumerate(m.tolist()) if on] for name, m in masks.items()}
    names = list(masks)
    terms: dict[str, float] = {}
    for name in names:
        vals = [_dot(rows[i], rows[j]) for i in idx[name] for j in idx[name] if i < j]
        vals = [v for v in vals if v > 0]
        terms[name] = sum(vals) / len(vals) if vals else math.nan
    for a_i, a in enumerate(names):
        for b in names[a_i + 1 :]:
            vals = [_dot(rows[i], rows[j]) for i in idx[a] for j in idx[b]]
            terms[f"{a}|{b}"] = sum(vals) / len(vals) if vals else math.nan
    return terms


@pytest.mark.parametrize("kind", ["plain", "clustered", "text_only", "one_image_token", "three"])
def test_modality_similarities_match_double_loop(kind: str) -> None:
    out, _, masks = _case(21, 17, 6, kind)
    got = modality_similarities(out, masks)
    want = _loop_terms(out, masks)
    assert set(got) == set(want)
    for key, value in want.items():
        term = got[key]
        assert isinstance(term, Tensor) and term.dim() == 0
        if math.isnan(value):
            assert torch.isnan(term), key
        else:
            assert float(term) == pytest.approx(value, abs=1e-5), key
    present = [v for v in want.values() if not math.isnan(v)]
    expected_density = sum(present) / len(present) if present else 0.0
    assert float(density(got)) == pytest.approx(expected_density, abs=1e-5)


def test_density_cases() -> None:
    assert float(density({})) == 0.0
    assert float(density({"image": math.nan, "image|text": math.nan})) == 0.0
    terms = {"image": torch.tensor(0.5), "text": torch.tensor(0.25), "image|text": torch.tensor(-0.15)}
    assert float(density(terms)) == pytest.approx(0.2)
    # A text-only sample: the image and cross terms are absent, density is the text term alone.
    out = torch.randn(9, 5)
    terms = modality_similarities(out, _two_modalities(9, 0, 0))
    assert torch.isnan(terms["image"]) and torch.isnan(terms["image|text"])
    assert float(density(terms)) == pytest.approx(float(terms["text"]))


# ---------------------------------------------------------------------------------------------------------------------
# Hand-computed example (T = 4)
# ---------------------------------------------------------------------------------------------------------------------


def test_hand_example() -> None:
    """Four axis directions; every number below was worked out by hand.

    x = e1, e2, -e1, -e2 (token 0..3); image = {0, 1}, text = {2, 3}; scores a = (.1, .4, .3, .2).
    cos: adjacent 0, opposite -1, so d = 1 - cos is 1 between adjacent and 2 between opposite tokens.
    Density: within image cos(0,1) = 0 and within text cos(2,3) = 0 are not positive -> both absent;
      cross = mean(cos(0,2), cos(0,3), cos(1,2), cos(1,3)) = (-1 + 0 + 0 - 1)/4 = -0.5 -> density = -0.5,
      threshold = f * sqrt(1.5).
    k = min(3, T-1) = 3: every token's neighbours are the other three. Let p = e^-1, q = e^-2.
      g = (.1 + .6p + .3q, .4 + .4p + .2q, .3 + .6p + .1q, .2 + .4p + .4q) = (.3613, .5742, .5343, .4013)
    Step 1: pick 1; suppress by w * .5742 with w = e^-.2 (d=1) or e^-.4 (d=2):
      g0 = .3613 - .4701 = -.1088, g2 = .5343 - .4701 = .0641, g3 = .4013 - .3849 = .0164; g1 -> min - 1.
      MMD^2({1}) = mean(K) + 1 - 2 mean(K[:,1]) = 1 - c with c = (1 + 2p + q)/4 = .4678 (every column) -> .5322
    Step 2: pick 2 (.0641); g0 -> -.1518, g3 -> -.0361. MMD^2({1,2}) = (2 + 2p)/4 - c = .2162
    Step 3: pick 3 (-.0361 > -.1518); its score is negative, so no suppression.
      MMD^2({1,2,3}) = (3 + 2(2p + q))/9 - c = .0591
    Step 4: pick 0; MMD^2 = 0.
    """
    out = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    scores = torch.tensor([0.1, 0.4, 0.3, 0.2])
    masks = {"image": torch.tensor([True, True, False, False]), "text": torch.tensor([False, False, True, True])}

    terms = modality_similarities(out, masks)
    assert torch.isnan(terms["image"]) and torch.isnan(terms["text"])
    assert float(terms["image|text"]) == -0.5
    assert float(density(terms)) == -0.5

    # Re-derive the hand numbers so the brackets below stay honest.
    p, q = math.exp(-1), math.exp(-2)
    c = (1 + 2 * p + q) / 4
    mmd = [1 - c, (2 + 2 * p) / 4 - c, (3 + 2 * (2 * p + q)) / 9 - c, 0.0]
    assert mmd == pytest.approx([0.5322, 0.2162, 0.0591, 0.0], abs=1e-4)
    scale = math.sqrt(1.5)
    expected = {
        0.5: [False, True, False, False],  # threshold .612 > .5322: stop after token 1
        0.3: [False, True, True, False],  # .367 in (.2162, .5322]
        0.1: [False, True, True, True],  # .122 in (.0591, .2162]  (the default)
        0.04: [True, True, True, True],  # .049 < .0591: needs all four
    }
    for factor, want in expected.items():
        n = sum(want)
        assert mmd[n - 1] < factor * scale <= (mmd[n - 2] if n > 1 else math.inf)
        assert amia_select(out, scores, masks, mmd_factor=factor).tolist() == want, factor
        assert amia_select_reference(out, scores, masks, mmd_factor=factor).tolist() == want, factor


def test_all_pairs_reading_averages_every_within_pair():
    """positive_only=False (the paper's words) averages all within-modality pairs, negatives included."""
    torch.manual_seed(3)
    x = torch.randn(9, 5)
    masks = {"image": torch.tensor([True] * 5 + [False] * 4), "text": torch.tensor([False] * 5 + [True] * 4)}
    xn = torch.nn.functional.normalize(x, dim=-1)
    for name, mask in masks.items():
        idx = mask.nonzero().flatten().tolist()
        pairs = [float(xn[i] @ xn[j]) for a, i in enumerate(idx) for j in idx[a + 1:]]
        got = modality_similarities(x, masks, positive_only=False)[name]
        assert float(got) == pytest.approx(sum(pairs) / len(pairs), abs=1e-6)
        positive = [p for p in pairs if p > 0]
        assert float(modality_similarities(x, masks)[name]) == pytest.approx(sum(positive) / len(positive), abs=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# Blockwise preparation: block edges, kernel with zero rows, kNN ties
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block_elems", [1, 7, 64, 1 << 18])
@pytest.mark.parametrize("kind", ["plain", "clustered", "three", "one_image_token"])
def test_terms_blockwise_match_double_loop(monkeypatch: pytest.MonkeyPatch, block_elems: int, kind: str) -> None:
    """Row blocks of 1, a few and all rows: the upper-triangle cut must fall right at every block edge."""
    from tamp.algorithms import amia

    monkeypatch.setattr(amia, "_BLOCK_ELEMS", block_elems)
    out, _, masks = _case(31, 23, 5, kind)
    want = _loop_terms(out, masks)
    got = modality_similarities(out, masks)
    assert set(got) == set(want)
    for key, value in want.items():
        if math.isnan(value):
            assert torch.isnan(got[key]), key
        else:
            assert float(got[key]) == pytest.approx(value, abs=1e-5), key
    xn = torch.nn.functional.normalize(out.double(), dim=-1)
    for name, mask in masks.items():  # positive_only=False: every within pair, negatives included
        idx = mask.nonzero().flatten().tolist()
        pairs = [float(xn[i] @ xn[j]) for a, i in enumerate(idx) for j in idx[a + 1 :]]
        got_all = modality_similarities(out, masks, positive_only=False)[name]
        if pairs:
            assert float(got_all) == pytest.approx(sum(pairs) / len(pairs), abs=1e-5), name
        else:
            assert torch.isnan(got_all), name


@pytest.mark.parametrize("block_elems", [1, 100, 1 << 18])
def test_prepare_blockwise_matches_plain_formulas(monkeypatch: pytest.MonkeyPatch, block_elems: int) -> None:
    """_prepare against the textbook formulas, zero and non-finite rows included, for several block sizes."""
    from tamp.algorithms import amia

    monkeypatch.setattr(amia, "_BLOCK_ELEMS", block_elems)
    out, scores, masks = _case(12, 41, 9, "dups")
    out[5] = 0.0  # an all-zero token: stays a zero row
    out[9, 3] = float("nan")  # non-finite tokens: sanitised to zero rows
    out[17, 0] = float("inf")
    out[23] = 1e-20  # norm below F.normalize's eps: a row shorter than 1
    for sigma in (1.0, 0.7, 2.0):
        p = amia._prepare(out, scores, masks, 3, 1.0, 0.2, 0.1, sigma)
        x = amia._normalise_rows(out).double()
        assert x[[5, 9, 17]].abs().sum() == 0
        want = torch.exp(-torch.cdist(x, x).square() / (2 * sigma**2))  # exp(-|x_i - x_j|^2 / (2 sigma^2))
        assert torch.allclose(p.kernel.double(), want, rtol=0, atol=2e-6), sigma
        assert torch.equal(p.kernel.diagonal(), torch.ones(41))  # |x_i|^2 + |x_i|^2 - 2 x_i.x_i is exactly 0
        assert float(p.kernel[5, 9]) == 1.0 and float(p.kernel[5, 0]) == pytest.approx(math.exp(-0.5 / sigma**2))
        assert float(p.total) == pytest.approx(math.fsum(p.kernel.double().flatten().tolist()), rel=1e-6)
        terms = modality_similarities(out, masks)
        want_threshold = 0.1 * math.sqrt(max(1.0 - float(density(terms)), 0.0))
        assert float(p.threshold) == pytest.approx(want_threshold, abs=1e-6)


@pytest.mark.parametrize("block_elems", [1, 100, 1 << 18])
@pytest.mark.parametrize("kind", ["dups", "clustered", "plain"])
def test_knn_ties_follow_topk_on_distance(monkeypatch: pytest.MonkeyPatch, block_elems: int, kind: str) -> None:
    """kNN taken as the largest cosines equals topk on d = 1 - cos, ties between duplicate tokens included.

    (Both orders agree wherever rounding 1 - cos does not merge two distinct cosines: here every candidate
    cosine is far above 0.5, where 1 - cos is exact.) The result is also deterministic from call to call.
    """
    from tamp.algorithms import amia

    monkeypatch.setattr(amia, "_BLOCK_ELEMS", block_elems)
    gen = torch.Generator().manual_seed(17)
    t = 60
    centres = torch.randn(3, 12, generator=gen)
    out = centres[torch.randint(0, 3, (t,), generator=gen)]
    if kind != "dups":  # near-duplicates instead of exact ones
        out = out + (0.05 if kind == "clustered" else 0.3) * torch.randn(t, 12, generator=gen)
    out = out * (torch.rand(t, 1, generator=gen) + 0.5)  # duplicates differ in length only: same cosines
    scores = torch.rand(t, generator=gen)
    masks = _two_modalities(t, 10, 50)
    x = amia._normalise_rows(out)
    dist = 1.0 - x @ x.T
    for k in (1, 3, 8):
        p = amia._prepare(out, scores, masks, k, 1.0, 0.2, 0.1, 1.0)
        ref = dist.topk(k + 1, dim=1, largest=False)
        assert torch.equal(p.neighbours, ref.indices[:, 1:]), k
        assert torch.equal(p.suppress, torch.exp(-0.2 * ref.values[:, 1:])), k
        again = amia._prepare(out, scores, masks, k, 1.0, 0.2, 0.1, 1.0)
        assert torch.equal(p.neighbours, again.neighbours) and torch.equal(p.graph, again.graph)
        for factor in (0.1, 0.01):
            fast = amia_select(out, scores, masks, k=k, mmd_factor=factor)
            assert torch.equal(fast, amia_select_reference(out, scores, masks, k=k, mmd_factor=factor)), (k, factor)


def test_fast_matches_reference_tiny_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    from tamp.algorithms import amia

    monkeypatch.setattr(amia, "_BLOCK_ELEMS", 50)
    for seed, kind in enumerate(KINDS):
        out, scores, masks = _case(60 + seed, 45, 10, kind)
        for factor in (0.1, 0.01, 0.0):
            fast = amia_select(out, scores, masks, mmd_factor=factor)
            assert torch.equal(fast, amia_select_reference(out, scores, masks, mmd_factor=factor)), (kind, factor)

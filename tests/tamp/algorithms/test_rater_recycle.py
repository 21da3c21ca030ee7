"""SparseVLM's math against plain loop re-statements of the release (Gumpest/SparseVLMs: the raters of
`LlamaDynamicvitModel.forward`, `score.py`'s counts, `utils.py`'s `cluster_and_merge`)."""

from __future__ import annotations

import math

import pytest
import torch

from tamp.algorithms.rater_recycle import (
    RELEASE_COUNTS,
    density_peaks,
    fit_scale,
    layer_total,
    recycle,
    scaled_layers,
    select_raters,
    stage_count,
    stage_shares,
    stage_visuals,
)


def slow_raters(visual: list[list[float]], text: list[list[float]]) -> list[int]:
    """m = softmax over the text of v @ t per visual token, mean over the visual tokens; those above the mean."""
    rows = []
    for v in visual:
        logits = [sum(a * b for a, b in zip(v, t)) for t in text]
        top = max(logits)
        exp = [math.exp(x - top) for x in logits]
        rows.append([e / sum(exp) for e in exp])
    m = [sum(r[j] for r in rows) / len(rows) for j in range(len(text))]
    mean = sum(m) / len(m)
    return [j for j, x in enumerate(m) if x > mean]


def slow_cluster(x: list[list[float]], clusters: int) -> tuple[list[int], list[list[float]]]:
    """TCFormer's DPC-KNN as the release's cluster_and_merge, one sample, by loops (no tie noise): returns the
    centers (indices, ascending) and each center's cluster mean (sum / (count + 1e-6))."""
    n, c = len(x), len(x[0])
    dist = [[math.sqrt(sum((a - b) ** 2 for a, b in zip(x[i], x[j]))) / math.sqrt(c) for j in range(n)]
            for i in range(n)]
    density = [math.exp(-sum(d ** 2 for d in sorted(dist[i])[:clusters]) / clusters) for i in range(n)]
    dist_max = max(max(r) for r in dist)
    parent = [min([dist[i][j] for j in range(n) if density[j] > density[i]] or [dist_max]) for i in range(n)]
    score = [parent[i] * density[i] for i in range(n)]
    centers = sorted(sorted(range(n), key=lambda i: (-score[i], i))[:clusters])
    assign = [min(range(clusters), key=lambda k: (dist[centers[k]][i], k)) for i in range(n)]
    for k, center in enumerate(centers):
        assign[center] = k
    means = []
    for k in range(clusters):
        members = [x[i] for i in range(n) if assign[i] == k]
        means.append([sum(col) / (len(members) + 1e-6) for col in zip(*members)])
    return centers, means


def slow_recycle(dropped: list[list[float]], scores: list[float], share: float = 0.3,
                 per_cluster: int = 10) -> tuple[list[int], list[list[float]]]:
    """Top int(M x share) + 1 by score (earlier first on ties), int(that / per_cluster) + 1 clusters; the centers
    as indices into `dropped`, with their means."""
    count = int(len(dropped) * share) + 1
    chosen = sorted(range(len(dropped)), key=lambda i: (-scores[i], i))[:count]
    centers, means = slow_cluster([dropped[i] for i in chosen], int(count / per_cluster) + 1)
    return [chosen[c] for c in centers], means


def test_the_release_counts_at_its_budgets() -> None:
    for retain, counts in RELEASE_COUNTS.items():
        shares = stage_shares(retain / 576)
        assert [stage_count(576, s, 576) for s in shares] == list(counts)
    assert stage_shares(1.0) == (1.0, 1.0, 1.0)
    assert stage_count(576, 1.0, 576) == 575  # min(count, v_token_num - 1): one always goes
    assert stage_count(576, 0.5, 10) == 9
    between = stage_shares(160 / 576)  # half way between 128 and 192
    assert between == pytest.approx(tuple((a + b) / 2 / 576 for a, b in zip(RELEASE_COUNTS[128], RELEASE_COUNTS[192])))
    assert stage_shares(32 / 576) == pytest.approx(tuple(c / 2 / 576 for c in RELEASE_COUNTS[64]))
    with pytest.raises(ValueError, match="share"):
        stage_shares(0)


def test_layers_at_other_depths() -> None:
    assert scaled_layers(32) == (2, 6, 15)
    assert scaled_layers(28) == (2, 5, 13)
    assert scaled_layers(4) == (0, 1, 2)
    assert scaled_layers(3) == (0, 1)
    assert scaled_layers(2) == (0,)


@pytest.mark.parametrize("seed", range(4))
def test_raters_match_the_loop(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    visual, text = torch.randn(12, 8, generator=g), torch.randn(7, 8, generator=g)
    assert select_raters(visual, text).tolist() == slow_raters(visual.tolist(), text.tolist())
    assert select_raters(visual, text[:1]).tolist() == [0]  # one text token: it rates (the release: NaN)


@pytest.mark.parametrize(("n", "clusters", "seed"), [(9, 1, 0), (14, 2, 1), (25, 3, 2), (40, 5, 3), (6, 6, 4)])
def test_density_peaks_match_the_loop(n: int, clusters: int, seed: int) -> None:
    x = torch.randn(n, 16, generator=torch.Generator().manual_seed(seed))
    centers, assign = density_peaks(x, clusters)
    want_centers, want_means = slow_cluster(x.tolist(), clusters)
    assert centers.tolist() == want_centers
    means = torch.stack([x[assign == k].sum(0) / ((assign == k).sum() + 1e-6) for k in range(clusters)])
    torch.testing.assert_close(means, torch.tensor(want_means), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("m", "per_cluster", "seed"), [(1, 10, 0), (17, 10, 1), (60, 10, 2), (60, 4, 3)])
def test_recycle_matches_the_loop(m: int, per_cluster: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    dropped, scores = torch.randn(m, 12, generator=g), torch.rand(m, generator=g)
    merged, centers, flops = recycle(dropped, scores, 0.3, per_cluster)
    want_centers, want_means = slow_recycle(dropped.tolist(), scores.tolist(), 0.3, per_cluster)
    order = torch.argsort(centers)
    assert sorted(centers.tolist()) == sorted(want_centers)
    got = merged[order]
    want = torch.tensor(want_means)[torch.argsort(torch.tensor(want_centers))]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    count = int(m * 0.3) + 1
    assert merged.shape[0] == int(count / per_cluster) + 1 and flops == 2.0 * count * count * 12


def slow_schedule(n: int, shares: tuple[float, ...], layers: tuple[int, ...], depth: int, seed: int,
                  recycling: bool = True) -> list[int]:
    """Visual tokens each of `depth` layers runs on, by running the stages: keep stage_count of them, recycle the
    dropped ones through the loop re-statement on random states, count what stays."""
    g = torch.Generator().manual_seed(seed)
    now, per_layer, stage = n, [], 0
    for layer in range(depth):
        per_layer.append(now)
        if stage < len(layers) and layer == layers[stage]:
            kept = stage_count(n, shares[stage], now)
            gone = now - kept
            if recycling and gone:
                dropped = torch.randn(gone, 6, generator=g)
                centers, _ = slow_recycle(dropped.tolist(), torch.rand(gone, generator=g).tolist())
                kept += len(centers)
            now, stage = kept, stage + 1
    return per_layer


@pytest.mark.parametrize(("n", "share", "layers", "depth"), [(576, 192 / 576, (2, 6, 15), 32),
                                                             (576, 64 / 576, (2, 6, 15), 32), (36, 0.333, (0, 1, 2), 4),
                                                             (36, 0.01, (0, 1, 2), 4), (100, 0.2, (2, 5), 8)])
def test_stage_visuals_count_what_the_stages_keep(n: int, share: float, layers: tuple[int, ...], depth: int) -> None:
    shares = stage_shares(share)[-len(layers):]
    for recycling in (True, False):
        want = slow_schedule(n, shares, layers, depth, 0, recycling)
        got = stage_visuals(n, shares, 0.3 if recycling else None)
        assert layer_total(n, layers, depth, got) == sum(want)
        assert got == [want[layer + 1] for layer in layers]


def test_the_release_schedule_averages_above_its_count() -> None:
    """RETAIN_TOKN=192 on LLaVA-1.5 (576 tokens, 32 layers): 3 layers of 576, then 300 + 9, 200 + 4, 110 + 3
    recycled cluster means for 4, 9 and 16 layers: 206.5 per layer, not 192."""
    visuals = stage_visuals(576, stage_shares(192 / 576))
    assert visuals == [309, 204, 113]
    assert layer_total(576, (2, 6, 15), 32, visuals) == 206.5 * 32


@pytest.mark.parametrize(("n", "layers", "depth"), [(576, (2, 6, 15), 32), (36, (0, 1, 2), 4), (300, (2, 5, 13), 28)])
def test_fit_scale_is_the_nearest_on_a_grid(n: int, layers: tuple[int, ...], depth: int) -> None:
    """The fitted factor's layer total is as near share x n x depth as the best of 4,001 factors tried one by one
    (the smaller total on a tie)."""
    for share in (0.333, 0.222, 0.111, 0.05):
        shares = stage_shares(share)
        target = share * n * depth

        def total(f: float, shares: tuple[float, ...] = shares) -> int:
            return layer_total(n, layers, depth, stage_visuals(n, tuple(min(1.0, f * s) for s in shares)))

        got = total(fit_scale(n, shares, layers, depth, share))
        best = min((abs(total(k / 1000) - target), total(k / 1000)) for k in range(4001))
        assert (abs(got - target), got) <= best, (n, share, got, best)

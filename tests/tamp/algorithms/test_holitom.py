"""tamp.algorithms.holitom against plain loop re-statements of the released code (cokeshao/HoliTom,
holitom/llava_arch.py: select_static_windows, get_static_dynamic_features, cluster_dpc_knn,
merge_tokens_by_clustering, merge_tokens_by_attention_density, holitom; modeling_qwen2.py: the inner merge).
Discrete choices (segments, peaks, kept indices) must match exactly; states to 1e-5 (fp32 sums in another
order). The segment programme is also checked against every partition of the frames (its optimum)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from tamp.algorithms.holitom import adjacent_similarity, attended_merge, cluster, merge_video, static_windows


def segments_by_hand(sim: list[list[float]], tau: float, max_window: int) -> tuple[list[tuple[int, int]], float]:
    """The release's programme, with its count table built token by token."""
    frames = len(sim) + 1
    tokens = len(sim[0]) if sim else 0

    def saved(s: int, e: int) -> float:
        static = sum(all(sim[j][t] > tau for j in range(s, e)) for t in range(tokens))
        return float(static * (e - s))

    dp, prev = [0.0] * frames, [0] * frames
    for i in range(frames):
        best, first = (dp[i - 1] if i > 0 else 0.0), i
        for size in range(2, min(i + 1, max_window) + 1):
            j = i - size
            value = (dp[j] if j >= 0 else 0.0) + saved(j + 1, i)
            if value > best:
                best, first = value, j + 1
        dp[i], prev[i] = best, first
    out, i = [], frames - 1
    while i >= 0:
        out.append((prev[i], i))
        i = prev[i] - 1
    return out[::-1], dp[-1]


def best_partition(sim: list[list[float]], tau: float) -> float:
    """The most tokens any cut of the frames into consecutive segments saves (every partition tried)."""
    frames = len(sim) + 1
    best = 0.0
    for cuts in itertools.product((False, True), repeat=frames - 1):
        total, start = 0.0, 0
        for e in range(frames):
            if e == frames - 1 or cuts[e]:
                static = sum(all(sim[j][t] > tau for j in range(start, e)) for t in range(len(sim[0])))
                total += static * (e - start) if e > start else 0
                start = e + 1
        best = max(best, total)
    return best


def peaks_by_hand(x: list[list[float]], count: int, k: int) -> tuple[list[int], list[list[float]]]:
    n, d = len(x), len(x[0])
    dist = [[math.dist(a, b) / math.sqrt(d) for b in x] for a in x]
    density = [math.exp(-sum(v * v for v in sorted(row)[:k]) / k) for row in dist]
    top = max(max(row) for row in dist)
    score = []
    for i in range(n):
        denser = [dist[i][j] for j in range(n) if density[j] > density[i]]
        score.append((min(denser) if denser else top) * density[i])
    return sorted(sorted(range(n), key=lambda i: -score[i])[:count]), dist


def clusters_by_hand(x: list[list[float]], count: int, k: int, beta: float) -> tuple[list[int], list[list[float]]]:
    """cluster_dpc_knn then merge_tokens_by_clustering (the BETA path the scripts run)."""
    if count <= 0:
        return [], []
    peaks, dist = peaks_by_hand(x, count, min(k, count))
    members: dict[int, list[int]] = {c: [] for c in range(len(peaks))}
    for i in range(len(x)):
        if i not in peaks:
            members[min(range(len(peaks)), key=lambda c: dist[i][peaks[c]])].append(i)
    states = []
    for c, p in enumerate(peaks):
        if members[c]:
            mean = [sum(x[i][j] for i in members[c]) / len(members[c]) for j in range(len(x[0]))]
            states.append([beta * x[p][j] + (1 - beta) * mean[j] for j in range(len(x[0]))])
        else:
            states.append(list(x[p]))
    return peaks, states


def video_by_hand(frames: torch.Tensor, attention: torch.Tensor, keep: float, tau: float, beta: float, d: float,
                  k: int, max_window: int) -> tuple[list[int], list[list[float]]]:
    """The release's outer step on one video (one_token newline mode): (source frame x N + token, state) per
    output token, in its order."""
    count, n, _ = frames.shape
    x = frames.tolist()
    sim = adjacent_similarity(frames).tolist()
    segments, saved = segments_by_hand(sim, tau, max_window)
    share = min(keep / ((count * n - saved) / (count * n)), 1)
    sources, states = [], []
    for s, e in segments:
        static = [all(sim[j][t] > tau for j in range(s, e)) for t in range(n)] if e > s else [False] * n
        where = [t for t in range(n) if static[t]]
        if where:
            mean = [[sum(x[f][t][j] for f in range(s, e + 1)) / (e - s + 1) for j in range(len(x[0][0]))]
                    for t in where]
            peaks, merged = clusters_by_hand(mean, round(len(where) * share), k, beta)
            sources += [s * n + where[p] for p in peaks]
            states += merged
        moving = [t for t in range(n) if not static[t]]
        for f in range(s, e + 1):
            total = math.ceil(len(moving) * share)
            dominant = round(total * (1 - d))
            ranked = sorted(range(len(moving)), key=lambda i: -attention[f, moving[i]].item())[:dominant]
            chosen = sorted(ranked)
            sources += [f * n + moving[i] for i in chosen]
            states += [x[f][moving[i]] for i in chosen]
            rest = [i for i in range(len(moving)) if i not in chosen]
            peaks, merged = clusters_by_hand([x[f][moving[i]] for i in rest], total - dominant, k, beta)
            sources += [f * n + moving[rest[p]] for p in peaks]
            states += merged
    return sources, states


def inner_by_hand(hidden: torch.Tensor, scores: torch.Tensor, keep: int) -> tuple[list[int], torch.Tensor]:
    """modeling_qwen2's merge, literally: each non-kept token in order averaged into its most similar kept one."""
    h = hidden.clone()
    top = sorted(range(len(scores)), key=lambda i: (-scores[i].item(), i))[:keep]
    rest = [i for i in range(len(scores)) if i not in top]
    sim = [[torch.nn.functional.cosine_similarity(hidden[i], hidden[t], dim=0).item() for t in top] for i in rest]
    for i, row in zip(rest, sim):
        t = top[max(range(len(top)), key=lambda c: row[c])]
        h[t] = (h[t] + h[i]) / 2
    kept = sorted(top)
    return kept, h[kept]


def _video(seed: int, frames: int = 6, n: int = 9, d: int = 8) -> torch.Tensor:
    """Frames with runs of (nearly) repeated tokens, so segments and static tokens occur."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(frames, n, d, generator=g)
    for f in range(1, frames):
        still = torch.rand(n, generator=g) < 0.6
        x[f, still] = x[f - 1, still] + 0.05 * torch.randn(int(still.sum()), d, generator=g)
    return x


@pytest.mark.parametrize("seed", range(6))
def test_segments_equal_the_release_and_are_optimal(seed: int) -> None:
    frames = _video(seed)
    sim = adjacent_similarity(frames)
    for tau, window in ((0.8, 1024), (0.95, 1024), (0.8, 2), (0.5, 3)):
        got, saved = static_windows(sim, tau, window)
        assert (got, saved) == segments_by_hand(sim.tolist(), tau, window)
        if window >= frames.shape[0]:
            assert saved == best_partition(sim.tolist(), tau)
        assert [s for s, _ in got] == [0] + [e + 1 for _, e in got[:-1]] and got[-1][1] == frames.shape[0] - 1


@pytest.mark.parametrize("seed", range(6))
def test_clusters_equal_the_release(seed: int) -> None:
    x = torch.randn(13, 6, generator=torch.Generator().manual_seed(seed))
    for count, k in ((4, 7), (1, 7), (6, 3), (13, 7)):
        peaks, states, flops = cluster(x, count, k, 0.6)
        want_peaks, want_states = clusters_by_hand(x.tolist(), count, k, 0.6)
        assert peaks.tolist() == want_peaks
        torch.testing.assert_close(states, torch.tensor(want_states), rtol=0, atol=1e-5)
        assert flops == 2.0 * 13 * 13 * 6


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("keep", "tau", "d"), ((0.3, 0.8, 0.0), (0.15, 0.65, 0.0), (0.5, 0.9, 0.4), (1.0, 0.8, 0.0)))
def test_video_merge_equals_the_release(seed: int, keep: float, tau: float, d: float) -> None:
    frames = _video(seed)
    attention = torch.rand(frames.shape[:2], generator=torch.Generator().manual_seed(100 + seed))
    got = merge_video(frames, attention, keep, tau, 0.6, d, 7, 1024)
    sources, states = video_by_hand(frames, attention, keep, tau, 0.6, d, 7, 1024)
    assert got.sources.tolist() == sources
    torch.testing.assert_close(got.states, torch.tensor(states), rtol=0, atol=1e-5)
    assert len(set(sources)) == len(sources)  # each output token stands at a token of its own


def test_video_merge_without_static_tokens_keeps_the_share_per_frame() -> None:
    frames = torch.randn(4, 10, 8, generator=torch.Generator().manual_seed(7))
    attention = torch.rand(4, 10, generator=torch.Generator().manual_seed(8))
    got = merge_video(frames, attention, 0.3, 1.0, 0.6, 0.0, 7, 1024)  # tau 1: nothing is static
    assert got.segments == [(f, f) for f in range(4)] and got.saved == 0
    assert got.sources.tolist() == [f * 10 + t for f in range(4)
                                    for t in sorted(torch.topk(attention[f], 3).indices.tolist())]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("keep", (1, 3, 5, 8))
def test_inner_merge_equals_the_sequential_loop(seed: int, keep: int) -> None:
    g = torch.Generator().manual_seed(seed)
    hidden, scores = torch.randn(8, 16, generator=g), torch.rand(8, generator=g)
    kept, states, flops = attended_merge(hidden, scores, keep)
    want_kept, want_states = inner_by_hand(hidden, scores, keep)
    assert kept.tolist() == want_kept
    torch.testing.assert_close(states, want_states, rtol=0, atol=1e-5)
    assert flops == 2.0 * (8 - keep) * keep * 16

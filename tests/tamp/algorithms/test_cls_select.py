"""VisionZip's and VisPruner's per-crop choices against loop re-statements of the released code
(JIA-Lab-research/VisionZip `clip_encoder.py`, Theia-4869/VisPruner `llava_arch.py` `encode_images`), written
entry by entry in float64 lists."""

from __future__ import annotations

import math

import pytest
import torch

from tamp.algorithms.cls_select import visionzip_flops, visionzip_select, vispruner_flops, vispruner_keep


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b)) / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def _first_max(values: list[float]) -> int:
    best = 0
    for i in range(1, len(values)):
        if values[i] > values[best]:
            best = i
    return best


def visionzip_by_hand(attn: list[float], keys: list[list[float]], hidden: list[list[float]], dominant: int,
                      contextual: int) -> tuple[list[int], list[list[float]]]:
    """The release: the top `dominant` patches by [CLS] attention (in their order); of the rest, targets every
    step-th (step = max(1, rest // contextual), the first `contextual`); each other token to the target of highest
    key cosine (first on ties); a contextual token = its target's state + the mean of its members' (0 if none)."""
    n = len(attn)
    ranked = sorted(range(n), key=lambda i: -attn[i])[:dominant]
    chosen = sorted(ranked)
    rest = [i + 1 for i in range(n) if i not in chosen]  # rows of keys / hidden ([CLS] is row 0)
    step = max(1, len(rest) // contextual)
    targets = list(range(0, len(rest), step))[:contextual]
    members: dict[int, list[int]] = {t: [] for t in range(len(targets))}
    for k in range(len(rest)):
        if k in targets:
            continue
        members[_first_max([_cos(keys[rest[k]], keys[rest[t]]) for t in targets])].append(rest[k])
    merged = []
    for t, target in enumerate(targets):
        group = members[t]
        mean = [sum(hidden[r][c] for r in group) / max(1, len(group)) for c in range(len(hidden[0]))]
        merged.append([hidden[rest[target]][c] + mean[c] for c in range(len(hidden[0]))])
    return chosen, merged


def vispruner_by_hand(attn: list[float], features: list[list[float]], count: int, ratio: float) -> list[int]:
    """The release's loop: important = the first int(count x ratio) by descending attention; the residual (in that
    order) loses, per round, the r = min(8, R - diverse) even-slot tokens whose best cosine to an odd-slot token is
    highest; the even slots left (in descending-score order) are followed by the odd slots."""
    order = sorted(range(len(attn)), key=lambda i: -attn[i])
    important = int(count * ratio)
    diverse = count - important
    kept, residual = order[:important], order[important:]
    while diverse > 0:
        r = min(8, len(residual) - diverse)
        if r <= 0:
            break
        even, odd = residual[0::2], residual[1::2]
        best = [max(_cos(features[a], features[b]) for b in odd) for a in even]
        ranked = sorted(range(len(even)), key=lambda i: -best[i])[r:]
        residual = [even[i] for i in ranked] + odd
    return sorted(kept + residual) if diverse > 0 else sorted(kept)


@pytest.mark.parametrize("seed", range(8))
def test_visionzip_equals_the_release_loop(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(8, 50, (1,), generator=g))
    attn = torch.rand(n, generator=g, dtype=torch.float64)
    keys = torch.randn(n + 1, 5, generator=g, dtype=torch.float64)
    hidden = torch.randn(n + 1, 7, generator=g, dtype=torch.float64)
    for dominant, contextual in ((n // 4, 3), (n // 2, 1), (0, n // 3 + 1), (n - 3, 2), (n - 2, 5)):
        chosen, merged = visionzip_select(attn, keys, hidden, dominant, contextual)
        want_chosen, want_merged = visionzip_by_hand(attn.tolist(), keys.tolist(), hidden.tolist(), dominant,
                                                     contextual)
        assert chosen.tolist() == want_chosen
        torch.testing.assert_close(merged, torch.tensor(want_merged, dtype=torch.float64).reshape(-1, 7),
                                   rtol=0, atol=1e-12)
        rest = n - dominant
        targets = min(contextual, rest)
        assert visionzip_flops(n, dominant, contextual, 5) == 2.0 * (rest - targets) * targets * 5


def test_visionzip_without_contextual_tokens_keeps_only_the_dominant() -> None:
    """contextual 0 (where the release divides by zero): the dominant patches, nothing merged."""
    attn = torch.tensor([0.1, 0.5, 0.3, 0.9])
    chosen, merged = visionzip_select(attn, torch.randn(5, 2), torch.randn(5, 3), 2, 0)
    assert chosen.tolist() == [1, 3] and merged.shape == (0, 3)


@pytest.mark.parametrize("seed", range(8))
def test_vispruner_equals_the_release_loop(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n = 2 * int(torch.randint(6, 40, (1,), generator=g))  # even: the release's indexing needs an even residual
    attn = torch.rand(n, generator=g, dtype=torch.float64)
    features = torch.randn(n, 6, generator=g, dtype=torch.float64)
    for count, ratio in ((n // 4, 0.5), (n // 2, 0.5), (n // 3, 0.75), (n // 2, 0.0), (n // 5, 1.0), (n, 0.5)):
        if (n - int(count * ratio)) % 2:
            continue
        got = vispruner_keep(attn, features, count, ratio)
        assert got.tolist() == vispruner_by_hand(attn.tolist(), features.tolist(), count, ratio), (count, ratio)
        assert len(got) == min(count, n)


def test_vispruner_flops_count_each_round() -> None:
    """20 patches, keep 8, half important: residual 16 -> 8 -> 4 in rounds of 8 x 8
    and 4 x 4 similarities."""
    assert vispruner_flops(20, 8, 0.5, 3) == 2.0 * 3 * (8 * 8 + 4 * 4)
    # 40 patches: residual 36 -> 28 -> 20 -> 12 -> 6 (r = 8 > 6 even slots) -> 4
    assert vispruner_flops(40, 8, 0.5, 3) == 2.0 * 3 * (18 * 18 + 14 * 14 + 10 * 10 + 6 * 6 + 3 * 3)
    assert vispruner_flops(20, 20, 0.5, 3) == 0.0  # every patch kept: no round
    # 16 patches, keep 8: residual 12 has 6 even slots, a round of r = 8 removes those 6, then 6 -> 4 (3 x 3)
    assert vispruner_flops(16, 8, 0.5, 3) == 2.0 * 3 * (6 * 6 + 3 * 3)
    torch.manual_seed(0)
    assert len(vispruner_keep(torch.rand(16), torch.randn(16, 3), 8, 0.5)) == 8

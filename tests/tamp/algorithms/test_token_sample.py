"""The random baseline's choice: against a loop that draws a permutation per image the way LightCompress's random
does (`torch.randperm(n)[:round(n x keep)]`), per image; its counts; and that every token is kept about `keep` of
the time (uniform)."""

from __future__ import annotations

import pytest
import torch

from tamp.algorithms.token_sample import random_group_keep


def _loop(groups: list[int], keep: float, seed: int) -> list[int]:
    """Images in id order; for each, a permutation of its members (in sequence order) from one seeded generator,
    the first round(n x keep) of it kept; every token outside an image kept."""
    generator = torch.Generator().manual_seed(seed)
    kept = {t for t, g in enumerate(groups) if g < 0}
    for image in sorted({g for g in groups if g >= 0}):
        members = [t for t, g in enumerate(groups) if g == image]
        order = torch.randperm(len(members), generator=generator).tolist()
        for j in order[:int(round(len(members) * keep))]:
            kept.add(members[j])
    return sorted(kept)


def _prompt(seed: int) -> torch.Tensor:
    """Text, then 1-3 images (runs of visual tokens with increasing ids), text between and after."""
    g = torch.Generator().manual_seed(seed)
    groups: list[int] = [-1] * int(torch.randint(1, 6, (1,), generator=g))
    for image in range(int(torch.randint(1, 4, (1,), generator=g))):
        groups += [image] * int(torch.randint(1, 40, (1,), generator=g))
        groups += [-1] * int(torch.randint(0, 4, (1,), generator=g))
    return torch.tensor(groups)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("keep", [0.0, 0.111, 0.5, 1.0])
def test_matches_the_loop(seed: int, keep: float) -> None:
    groups = _prompt(seed)
    got = random_group_keep(groups, groups >= 0, keep, torch.Generator().manual_seed(seed))
    assert got.tolist() == _loop(groups.tolist(), keep, seed)
    for image in torch.unique(groups[groups >= 0]).tolist():
        n = int((groups == image).sum())
        assert int((groups[got] == image).sum()) == round(n * keep)


def test_uniform_over_tokens() -> None:
    """Over 4000 draws of 10 of 40 tokens each token is kept 1000 times on average; a binomial(4000, 0.25) count
    lies within 1000 +- 5 sd (5 x 27.4) with overwhelming probability."""
    groups = torch.zeros(40, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(40)
    for _ in range(4000):
        counts[random_group_keep(groups, groups >= 0, 0.25, generator)] += 1
    assert counts.sum() == 4000 * 10
    assert ((counts - 1000).abs() < 5 * 27.4).all()


def test_seeds_and_bad_input() -> None:
    groups = torch.zeros(100, dtype=torch.long)
    one = random_group_keep(groups, groups >= 0, 0.3, torch.Generator().manual_seed(1))
    assert one.tolist() == random_group_keep(groups, groups >= 0, 0.3, torch.Generator().manual_seed(1)).tolist()
    assert one.tolist() != random_group_keep(groups, groups >= 0, 0.3, torch.Generator().manual_seed(2)).tolist()
    with pytest.raises(ValueError, match="equal-length"):
        random_group_keep(groups, torch.ones(3, dtype=torch.bool), 0.5, torch.Generator())

"""Modality diversity over image / video / audio / text: every within and cross pair, the released six-term
audio-visual form, and modalities with fewer than two tokens (no NaN, no endless loop)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from tamp.algorithms.allocations import das_scores
from tamp.algorithms.amia import amia_select, amia_select_reference, density, modality_similarities


def _plain_terms(x: torch.Tensor, masks: dict[str, torch.Tensor], positive_only: bool = True) -> dict[str, float]:
    """Obvious re-statement: double loops over token pairs in float64; NaN where nothing is averaged."""
    rows = [r / r.norm() if r.norm() > 0 else r for r in x.double()]
    index = {name: [i for i in range(len(rows)) if bool(m[i])] for name, m in masks.items()}
    out: dict[str, float] = {}
    for name, idx in index.items():
        values = [float(rows[i] @ rows[j]) for a, i in enumerate(idx) for j in idx[a + 1:]]
        if positive_only:
            values = [v for v in values if v > 0]
        out[name] = sum(values) / len(values) if values else math.nan
    for a, b in itertools.combinations(index, 2):
        values = [float(rows[i] @ rows[j]) for i in index[a] for j in index[b]]
        out[f"{a}|{b}"] = sum(values) / len(values) if values else math.nan
    return out


def _masks(t: int, sizes: dict[str, int]) -> dict[str, torch.Tensor]:
    """Contiguous blocks of the given sizes (in order), the rest of the T tokens is text."""
    masks, start = {}, 0
    for name, n in sizes.items():
        m = torch.zeros(t, dtype=torch.bool)
        m[start:start + n] = True
        masks[name] = m
        start += n
    rest = torch.zeros(t, dtype=torch.bool)
    rest[start:] = True
    masks["text"] = rest
    return masks


def _close(got: dict[str, torch.Tensor], want: dict[str, float]) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        g = float(got[key])
        if math.isnan(value):
            assert math.isnan(g), key
        else:
            assert g == pytest.approx(value, abs=2e-6), key


@pytest.mark.parametrize("positive_only", (True, False))
def test_audio_visual_gives_the_six_terms_of_a_plain_double_loop(positive_only: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(40, 16)
    masks = _masks(40, {"video": 15, "audio": 12})
    got = modality_similarities(x, masks, positive_only=positive_only)
    assert set(got) == {"video", "audio", "text", "video|audio", "video|text", "audio|text"}  # 3 within + 3 cross
    _close(got, _plain_terms(x, masks, positive_only))


def test_four_modalities_give_every_pair() -> None:
    torch.manual_seed(1)
    x = torch.randn(30, 8)
    masks = _masks(30, {"image": 6, "video": 9, "audio": 5})
    got = modality_similarities(x, masks)
    assert len(got) == 4 + 6
    _close(got, _plain_terms(x, masks))


def test_six_term_das_score_and_density_are_the_released_sums() -> None:
    """VideoLLaMA2's release: score = sum over v, a, l, vl, al, av of (1 - sim); density = the six-term mean."""
    torch.manual_seed(2)
    x = torch.randn(25, 12)
    masks = _masks(25, {"video": 10, "audio": 8})
    terms = modality_similarities(x, masks)
    plain = _plain_terms(x, masks)
    score = das_scores({"q_proj": {k: float(v) for k, v in terms.items()}})["q_proj"]
    assert score == pytest.approx(sum(1.0 - v for v in plain.values()), abs=1e-5)
    assert float(density(terms)) == pytest.approx(sum(plain.values()) / 6, abs=1e-6)


def test_single_token_modalities_drop_out_without_nan() -> None:
    torch.manual_seed(3)
    x = torch.randn(12, 8)
    masks = _masks(12, {"video": 6, "audio": 1})  # one audio token: no within-audio pair
    terms = modality_similarities(x, masks)
    assert math.isnan(float(terms["audio"]))
    _close(terms, _plain_terms(x, masks))
    present = {k: float(v) for k, v in terms.items() if not math.isnan(float(v))}
    assert len(present) == 5 and math.isfinite(float(density(terms)))
    assert float(density(terms)) == pytest.approx(sum(present.values()) / 5, abs=1e-6)
    assert math.isfinite(das_scores({"m": present})["m"])


@pytest.mark.parametrize("sizes,t", [({"video": 1, "audio": 1}, 3), ({"video": 1, "audio": 1}, 2), ({}, 1),
                                     ({"audio": 1}, 1), ({"video": 4, "audio": 1}, 9)])
def test_amia_terminates_with_tiny_modalities(sizes: dict[str, int], t: int) -> None:
    torch.manual_seed(4)
    out, scores = torch.randn(t, 8), torch.rand(t)
    masks = _masks(t, sizes)
    fast = amia_select(out, scores, masks)
    slow = amia_select_reference(out, scores, masks)
    assert torch.equal(fast, slow)
    assert 1 <= int(fast.sum()) <= t

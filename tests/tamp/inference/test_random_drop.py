"""The random baseline on every tiny family: before layer 0, the kept visual tokens are those a plain re-statement
draws (LightCompress's `randperm(n)[:round(n x keep)]` over the image's token span, from our seeded generator);
each prefill draws anew from the installed transform's stream, and a new install repeats the run."""

from __future__ import annotations

import pytest
import torch

from tamp.models.adapters import get_adapter
from tamp.token_transform import TokenTransform
from tests.tamp.inference.conftest import FAMILIES, attn


def _expected(ids: list[int], visual_ids: set[int], keep: float, generator: torch.Generator) -> list[int]:
    """One image per prompt here: each run of its visual tokens (the image; SmolVLM: each tile) draws in turn; text
    all kept."""
    span = [t for t, i in enumerate(ids) if i in visual_ids]
    runs: list[list[int]] = []
    for t in span:
        if runs and runs[-1][-1] == t - 1:
            runs[-1].append(t)
        else:
            runs.append([t])
    chosen = set()
    for run in runs:
        order = torch.randperm(len(run), generator=generator).tolist()
        chosen |= {run[j] for j in order[:int(round(len(run) * keep))]}
    return [t for t in range(len(ids)) if t not in set(span) or t in chosen]


@pytest.mark.parametrize("family", FAMILIES)
def test_random_keeps_the_drawn_tokens(loaded, family: str) -> None:
    model, inputs, _ = loaded(family)
    attn(model, "sdpa")
    adapter = get_adapter(model)
    visual_ids = set(adapter.media_token_ids.get("image", [])) | set(adapter.media_token_ids.get("video", []))
    ids = inputs["input_ids"][0].tolist()
    keep, seed = 0.3, 7
    for _ in range(2):  # two installs: the same stream from the same seed
        reference = torch.Generator().manual_seed(seed)
        dropper = TokenTransform.build("random", {"random_keep": keep, "random_seed": seed}).install(model)
        drawn = []
        try:
            with torch.no_grad():
                for _ in range(2):
                    model(**inputs)
                    expected = _expected(ids, visual_ids, keep, reference)
                    assert dropper.kept_by_layer[0][0].tolist() == expected
                    stats = dropper.history[-1]
                    assert stats.tokens_per_layer == [len(expected)] * len(stats.tokens_per_layer)
                    drawn.append(expected)
        finally:
            dropper.remove()
        assert drawn[0] != drawn[1]  # the second prefill drew anew

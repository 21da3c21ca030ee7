"""pool on every tiny family: the states layer 0 runs on are the embeddings with each image grid (from
tamp.inference.visual_grid, the one owner of grids) replaced by a loop's window means at the windows' top-left
positions, LLaVA-NeXT's newline column kept once per pooled row; text untouched."""

from __future__ import annotations

import math

import pytest
import torch

from tamp.inference.sequence_edit import visual_groups
from tamp.inference.visual_grid import group_segments
from tamp.models.adapters import get_adapter
from tamp.token_transform import TokenTransform
from tests.tamp.inference.conftest import FAMILIES, attn

# the tiny image's grids per family: (rows, cols) of each, newline column included for the second
GRIDS = {"llava": [(6, 6)], "qwen2-vl": [(2, 2)], "qwen2.5-vl": [(2, 2)], "qwen3-vl": [(2, 2)], "gemma3": [(4, 4)]}
GRIDS["internvl3"] = [(4, 4)] * 5  # 2 x 2 tiles of 32 px, then the thumbnail: each 8 x 8 patches, pixel-shuffled


def _pooled(states: torch.Tensor, start: int, rows: int, cols: int, newline: bool, out_rows: int, out_cols: int):
    """{position: state}: the window means at the top-left positions, plus each pooled row's first newline."""
    width, inner = cols, cols - int(newline)
    out = {}
    for i in range(out_rows):
        r0, r1 = math.floor(i * rows / out_rows), math.ceil((i + 1) * rows / out_rows)
        for j in range(out_cols):
            c0, c1 = math.floor(j * inner / out_cols), math.ceil((j + 1) * inner / out_cols)
            cells = [states[start + r * width + c].double() for r in range(r0, r1) for c in range(c0, c1)]
            out[start + r0 * width + c0] = sum(cells) / len(cells)
        if newline:
            out[start + r0 * width + inner] = states[start + r0 * width + inner].double()
    return out


@pytest.mark.parametrize("share", (None, 0.3))
@pytest.mark.parametrize("family", FAMILIES)
def test_pool_replaces_each_grid_by_its_window_means(loaded, family: str, share: float | None) -> None:
    model, inputs, _ = loaded(family)
    attn(model, "sdpa")
    layer0 = get_adapter(model).language_stack(model).layers[0]
    seen: list[torch.Tensor] = []
    with torch.no_grad():
        embeddings = model(**inputs, output_hidden_states=True).hidden_states[0][0]
        dropper = TokenTransform.build("pool", {"pool_keep": share}).install(model)
        probe = layer0.register_forward_pre_hook(  # after the dropper's hook: the states layer 0 runs on
            lambda mod, args, kwargs: seen.append((args[0] if args else kwargs["hidden_states"])[0].clone()),
            with_kwargs=True)
        try:
            model(**inputs)
        finally:
            probe.remove()
            dropper.remove()
    adapter = get_adapter(model)
    ids = inputs["input_ids"]
    visual = torch.isin(ids, torch.tensor([i for m in ("image", "video") for i in adapter.media_token_ids.get(m, [])]))
    groups = visual_groups(visual, torch.zeros_like(visual), [])
    segments = group_segments(model.config, {k: v for k, v in inputs.items() if k in ("image_sizes", "image_grid_thw")},
                              torch.zeros_like(visual), groups)
    if family == "smolvlm":  # a 4 x 4 grid per tile (2 x 2 tiles and the global image), each tile its own run
        assert list(segments.values()) == [[(0, 4, 4)]] * 5
    else:
        assert len(segments) == 1
    if family in GRIDS:
        assert [(r, c) for _, r, c in segments[0]] == GRIDS[family]
    elif family != "smolvlm":  # LLaVA-NeXT / OneVision: the base tile, then the high-resolution rows with newlines
        assert len(segments[0]) == 2 and segments[0][0][1] == segments[0][0][2]
    expected: dict[int, torch.Tensor] = {}
    for group, grid in segments.items():
        start = int(torch.nonzero(groups[0] == group)[0])
        for index, (offset, rows, cols) in enumerate(grid):
            newline = index == 1 and family not in GRIDS  # LLaVA-NeXT / OneVision's high-resolution part
            inner = cols - int(newline)
            side = (lambda n: math.ceil(n / 2)) if share is None else \
                (lambda n: max(1, min(n, round(n * math.sqrt(share)))))
            expected.update(_pooled(embeddings, start + offset, rows, cols, newline, side(rows), side(inner)))
    text = [t for t in range(ids.shape[1]) if not bool(visual[0, t])]
    kept = sorted(text + list(expected))
    assert dropper.kept_by_layer[0][0].tolist() == kept
    states = seen[-1]
    assert states.shape[0] == len(kept)
    for row, position in enumerate(kept):
        want = expected.get(position, embeddings[position].double())
        torch.testing.assert_close(states[row].double(), want, rtol=1e-5, atol=1e-6)
    assert len(expected) < int(visual.sum())

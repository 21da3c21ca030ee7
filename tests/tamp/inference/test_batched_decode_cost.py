"""What a re-laid batch costs per decode step: the per-sample take is one gather (checked against the obvious
per-sample select it replaced), and a decode step builds each padding mask once for the layers that share a
layout instead of once per layer (the answers themselves: test_batched_drops.py)."""

from __future__ import annotations

import pytest
import torch

from tamp.inference.sequence_edit import SequenceEditor, _take, visual_groups
from tests.tamp.inference.conftest import attn
from tests.tamp.inference.methods import install


def _slow_take(x: torch.Tensor, index: torch.Tensor, batch_dim: int, seq_dim: int) -> torch.Tensor:
    """One index_select per sample (the shared batch-1 case: the same rows for every sample)."""
    if x.shape[batch_dim] == 1 and index.shape[0] > 1 and bool((index == index[:1]).all()):
        return x.index_select(seq_dim, index[0])
    rows = [(x if x.shape[batch_dim] == 1 else x.narrow(batch_dim, b, 1)).index_select(seq_dim, index[b])
            for b in range(index.shape[0])]
    return torch.cat(rows, dim=batch_dim)


@pytest.mark.parametrize(("shape", "batch_dim", "seq_dim"), [
    ((3, 7), 0, 1), ((3, 7, 5), 0, 1), ((1, 7, 5), 0, 1), ((2, 3, 7), 1, 2),  # states, rotary, mrope positions
    ((3, 1, 7, 7), 0, 2), ((3, 1, 7, 7), 0, 3), ((1, 1, 7, 7), 0, 3)])  # a 4-D mask's rows and columns
def test_take_is_the_per_sample_select(shape: tuple[int, ...], batch_dim: int, seq_dim: int) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen)
    batch = 3
    own = torch.randint(0, 7, (batch, 4), generator=gen)
    for index in (own, own[:1].expand(batch, -1), torch.arange(7).expand(batch, -1)):
        got, want = _take(x, index, batch_dim, seq_dim), _slow_take(x, index, batch_dim, seq_dim)
        assert got.shape == want.shape
        assert torch.equal(got, want)  # copies of the same entries: exact


def test_visual_groups_numbers_each_run() -> None:
    visual = torch.tensor([[0, 1, 1, 0, 1, 0], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    video = torch.tensor([[0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    # sample 0: two images (ids 0, 2; each run reserves count + 1 ids); sample 1: a video of 2 frames of 2 tokens
    assert visual_groups(visual, video, [2]).tolist() == [[-1, 0, 0, -1, 2, -1], [4, 4, 5, 5, -1, -1]]


def test_a_decode_step_builds_each_layout_mask_once(loaded_batch, monkeypatch: pytest.MonkeyPatch) -> None:
    model, batch, _, media = loaded_batch("llava-next")
    attn(model, "sdpa")
    made = {"prefill": 0, "decode": 0}
    for kind in made:
        name = f"_make_{kind}_pad_mask"
        original = getattr(SequenceEditor, name)

        def counted(self, *args, kind=kind, original=original):
            made[kind] += 1
            return original(self, *args)

        monkeypatch.setattr(SequenceEditor, name, counted)
    editor = install(model, "fastv")  # drops before layer 2 of 4: layers 2 and 3 share the re-laid layout
    steps = 4
    try:
        with torch.no_grad():
            model.generate(**batch, max_new_tokens=steps + 1, min_new_tokens=steps + 1, do_sample=False,
                           suppress_tokens=media)
    finally:
        editor.remove()
    assert sorted(editor.pad_by_layer) == [2, 3]
    assert made == {"prefill": 1, "decode": steps}

"""The sequence editor's public install API: an install sees the prefill's visual rows, charges the FLOPs its work
saves to the prefill (and the cost meter subtracts them), is removed with the editor; an install that fails leaves
the model as it was."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tamp.inference.cost import CostMeter
from tamp.inference.sequence_edit import Drop, DropInput, Kept, SequenceEditor, TokenPlan
from tamp.inference.visual_mlp import VisualMlpSlice
from tamp.models.adapters import get_adapter
from tests.tamp.inference.conftest import attn


class Probe:
    """An install that counts the visual rows entering layer 0's MLP, says it saved 2 dense / 1 non-zero FLOPs per
    row and spent 3 per row on work of its own."""

    def __init__(self, editor: SequenceEditor) -> None:
        self.editor, self.seen = editor, []
        self.handle = editor.layers[0].mlp.register_forward_pre_hook(self._before)

    def _before(self, module: nn.Module, args: tuple) -> None:
        visual = self.editor.visual_rows(args[0].shape[1])
        if visual is not None:
            rows = int(visual.sum())
            self.seen.append(rows)
            self.editor.skipped(2.0 * rows, 1.0 * rows)
            self.editor.spent(3.0 * rows)

    def remove(self) -> None:
        self.handle.remove()


def _hooks(model: nn.Module, inputs: dict) -> int:
    """Hooks on the model after a forward (transformers registers its own output-recording hooks on the first)."""
    with torch.no_grad():
        model(**inputs)
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def test_an_install_sees_visual_rows_and_charges_its_flops(loaded) -> None:
    model, inputs, _ = loaded("llava")
    attn(model, "sdpa")
    adapter = get_adapter(model)
    before = _hooks(model, inputs)
    editor = SequenceEditor(model, adapter, TokenPlan({}, (Probe,)))
    meter = CostMeter(model, editor, adapter)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        meter.remove()
        editor.remove()
    probe = editor.installed[0]
    stats = editor.history[-1]
    assert probe.seen == [stats.visual_in] and stats.visual_in > 0
    n = stats.visual_in
    assert (stats.skipped_flops, stats.skipped_nonzero_flops, stats.scoring_flops) == (2.0 * n, 1.0 * n, 3.0 * n)
    tokens = int(inputs["input_ids"].shape[1])
    full = meter.shape.prefill([tokens] * len(editor.layers), tokens)
    vision = meter.prefills[0]["encoder"] + meter.prefills[0]["projector"]  # the vision side (dense weights here)
    assert vision > 0
    assert meter.prefills[0]["dense"] == full["dense"] + 3.0 * n - 2.0 * n + vision
    assert meter.prefills[0]["nonzero"] == full["nonzero"] + 3.0 * n - 1.0 * n + vision
    assert _hooks(model, inputs) == before


def test_a_failing_install_leaves_the_model_as_it_was(loaded) -> None:
    model, inputs, _ = loaded("llava")
    attn(model, "sdpa")
    adapter = get_adapter(model)
    before = _hooks(model, inputs)
    with torch.no_grad():
        base = model(**inputs).logits

    def keep_all(seen: DropInput) -> Kept:
        return Kept(torch.arange(seen.hidden.shape[0]))

    plan = TokenPlan({1: Drop(keep_all)}, (VisualMlpSlice({0: 0.5}), VisualMlpSlice({9: 0.5})))
    with pytest.raises(ValueError, match="FFN layer 9 is outside 0..3"):
        SequenceEditor(model, adapter, plan)
    assert _hooks(model, inputs) == before
    assert all("forward" not in layer.mlp.__dict__ for layer in adapter.language_stack(model).layers)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, base)

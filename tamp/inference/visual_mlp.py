"""YOPO's sparse visual FFN as an install on the sequence editor: in a prefill, the visual rows of chosen layers go
through the first share of their MLP's intermediate channels only (tamp.algorithms.ffn_slice), the other rows
through the whole MLP; decoding and text-only prefills run the MLP unchanged. What the visual rows skip is charged
to the editor's `skipped`, counted once per layer from the weights (fixed once loaded).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from tamp.algorithms.ffn_slice import kept_channels, sliced_mlp
from tamp.inference.sequence_edit import SequenceEditor
from tamp.models import internals


@dataclass(frozen=True)
class VisualMlpSlice:
    """layer index -> the share of the MLP's intermediate channels the visual tokens in that layer go through."""

    keep: dict[int, float] = field(default_factory=dict)

    def __call__(self, editor: SequenceEditor) -> SlicedMlps:
        return SlicedMlps(self, editor)


class SlicedMlps:
    """The MLPs of one VisualMlpSlice, patched on an editor's model (`remove()` restores them)."""

    def __init__(self, plan: VisualMlpSlice, editor: SequenceEditor) -> None:
        self.editor = editor
        self.patched: list[torch.nn.Module] = []
        count = len(editor.layers)
        try:
            for i, keep in plan.keep.items():
                if not 0 <= i < count:
                    raise ValueError(f"FFN layer {i} is outside 0..{count - 1}")
                self._slice(internals.gated_mlp(editor.layers[i]), keep)
        except Exception:
            self.remove()
            raise

    def _slice(self, mlp: internals.GatedMlp, keep: float) -> None:
        channels = kept_channels(mlp.gate.out_features, keep)
        full = mlp.module.forward
        skipped = [mlp.gate.weight[channels:], mlp.up.weight[channels:], mlp.down.weight[:, channels:]]
        per_row = 2.0 * sum(w.numel() for w in skipped)
        per_row_nonzero = 2.0 * sum(int((w != 0).sum()) for w in skipped)
        editor = self.editor

        def forward(x: Tensor) -> Tensor:
            visual = editor.visual_rows(x.shape[1])
            if visual is None:
                return full(x)  # decoding (text only), or no visual token in this sequence
            out = torch.empty_like(x)
            out[~visual] = full(x[~visual])
            out[visual] = sliced_mlp(x[visual], mlp.gate, mlp.up, mlp.down, mlp.act, channels)
            rows = int(visual.sum()) / visual.shape[0]
            editor.skipped(rows * per_row, rows * per_row_nonzero)
            return out

        internals.replace_forward(mlp.module, forward)
        self.patched.append(mlp.module)

    def remove(self) -> None:
        for module in self.patched:
            internals.restore_forward(module)
        self.patched = []

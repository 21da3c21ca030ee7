"""The vision encoder's [CLS] attention at its feature layer, for the token methods that choose by it (VisionZip,
VisPruner): an install on the vision tower.

The released code of both asks CLIP for `output_attentions=True`, i.e. eager attention and every layer's full
[T, T] matrix per head. Here only the feature layer's [CLS] row is formed, from that layer's own query and key
(through transformers' AttentionInterface, tamp.engine.attention, so the layer itself still runs under sdpa /
flash attention unchanged): softmax(q_cls k^T x scale) per head, O(T) memory per head, 2 x T x width FLOPs per crop.
With it the same call records what the methods merge or compare: the layer's keys averaged over heads (VisionZip's
`metric`) and the layer's output states, [CLS] included (the feature layer `vision_feature_layer` selects: the
output of vision layer L for L < 0, of layer L - 1 for L > 0).

Only encoders with a [CLS] token qualify: CLIP with `vision_feature_select_strategy="default"` (LLaVA-1.5,
LLaVA-NeXT). SigLIP (LLaVA-OneVision) has none, and Qwen2-VL / Qwen2.5-VL's tower neither (the VisionZip and
VisPruner releases have no path for them); those are refused with one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from tamp.algorithms.diverse_subset import visual_runs
from tamp.engine.attention import capture_attention_score
from tamp.errors import TampError
from tamp.models import internals

if TYPE_CHECKING:
    from tamp.inference.sequence_edit import SequenceEditor

CLS_ENCODERS = ("clip_vision_model",)


def cls_problem(config: Any, method: str) -> str | None:
    """Why `method` cannot run on a model with this config (no [CLS] token at its feature layer), or None."""
    vision = getattr(config, "vision_config", None)
    kind = getattr(vision, "model_type", None)
    strategy = getattr(config, "vision_feature_select_strategy", None)
    layer = getattr(config, "vision_feature_layer", None)
    if kind not in CLS_ENCODERS or strategy != "default" or not isinstance(layer, int) or layer == 0:
        return (f"{method} chooses by the vision encoder's [CLS] attention and this model's encoder "
                f"({kind or getattr(config, 'model_type', '?')}) has no [CLS] token at a single feature layer; it "
                f"runs on LLaVA-1.5 / LLaVA-NeXT (CLIP), use divprune, dart, random or pool on this model")
    return None


@dataclass
class ClsAttention:
    """One vision call's feature layer, per crop: `rows` [crops, H, T] the [CLS] attention row of each head,
    `keys` [crops, T, d] the keys averaged over heads, `hidden` [crops, T, C] the layer's output (token 0: [CLS])."""

    rows: Tensor
    keys: Tensor
    hidden: Tensor
    flops: float  # per crop: the row's matmul


@dataclass
class ClsCapture:
    """Install (tamp.inference.sequence_edit.Install): records `ClsAttention` of every vision call in `last`."""

    method: str
    last: ClsAttention | None = None
    needs: tuple[str, ...] = ("vision attention",)  # what `tamp methods` lists
    editor: SequenceEditor | None = None
    _handles: list[Any] = field(default_factory=list)
    _parts: dict[str, Any] = field(default_factory=dict)

    def __call__(self, editor: SequenceEditor) -> ClsCapture:
        problem = cls_problem(editor.model.config, self.method)
        if problem is not None:
            raise TampError(problem)
        stack = editor.adapter.vision_stack(editor.model)
        if stack is None:
            raise TampError(f"{self.method}: no vision tower found in this model")
        layer_index = int(editor.model.config.vision_feature_layer)
        layers = list(stack.layers)
        layer = layers[layer_index if layer_index < 0 else layer_index - 1]
        self.editor = editor
        self._handles = [layer.register_forward_pre_hook(lambda mod, args: self._start(mod)),
                         layer.register_forward_hook(lambda mod, args, out: self._stop(out))]
        return self

    def _score(self, query: Tensor, key: Tensor, mask: Tensor | None, scaling: float | None) -> Tensor:
        """The [CLS] query's row only: [B, H, 1, T] logits, never the [B, H, T, T] matrix."""
        d = query.shape[-1]
        logits = (query[:, :, :1].float() @ key.float().transpose(-1, -2)) * (scaling if scaling is not None
                                                                              else d ** -0.5)
        if mask is not None and mask.dim() == 4:
            row = mask[:, :, :1, : key.shape[-2]]
            logits = logits.masked_fill(~row, float("-inf")) if row.dtype == torch.bool else logits + row.float()
        rows = torch.softmax(logits, dim=-1)[:, :, 0]
        self._parts["rows"], self._parts["keys"] = rows, key.float().mean(dim=1)
        self._parts["flops"] = 2.0 * key.shape[-2] * query.shape[1] * d
        return rows.mean(dim=1)

    def _start(self, module: nn.Module) -> None:
        self._parts = {"capture": capture_attention_score(module, [], self._score)}
        self._parts["capture"].__enter__()

    def _stop(self, out: Any) -> None:
        capture = self._parts.pop("capture", None)
        if capture is None:
            return
        capture.__exit__(None, None, None)
        hidden = out[0] if isinstance(out, tuple) else out
        if "rows" not in self._parts:
            raise RuntimeError(f"{self.method}: the vision feature layer ran without its attention being captured")
        self.last = ClsAttention(self._parts["rows"], self._parts["keys"], hidden.detach().float(),
                                 float(self._parts["flops"]))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.editor = None


def projector(model: nn.Module) -> nn.Module:
    """The model's multimodal projector (vision features -> language model states)."""
    for owner in (getattr(model, "model", None), model):
        found = getattr(owner, "multi_modal_projector", None)
        if isinstance(found, nn.Module):
            return found
    raise internals.moved("multi_modal_projector", type(model).__name__)


def linear_flops(module: nn.Module) -> float:
    """Matmul FLOPs per token of a stack of linears (the projector's): 2 x in x out each."""
    return sum(2.0 * m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


def crop_sources(config: Any, image_size: tuple[int, int] | None, patches: int) -> tuple[int, int, Tensor]:
    """(tiles_high, tiles_wide, sources) of one image: its crops' grid and, per token of its run in the language
    model's sequence, the crop x patches + patch it shows (-1: LLaVA-NeXT's newline). One crop without pinpoints."""
    pinpoints = getattr(config, "image_grid_pinpoints", None)
    if image_size is None or not isinstance(pinpoints, list) or not pinpoints:
        return 0, 0, torch.arange(patches)
    vision = config.vision_config
    side = int(vision.image_size) // int(vision.patch_size)
    return internals.anyres_packed_sources(image_size, pinpoints, int(vision.image_size), side)


@dataclass(frozen=True)
class ImageRun:
    """One image's run in a sample's sequence [start, end), the vision crops it came from (LLaVA-NeXT: base tile,
    then the tiles row-major), its tile grid (0 x 0: one crop) and each run token's source (`crop_sources`)."""

    start: int
    end: int
    crops: list[int]
    high: int
    wide: int
    sources: Tensor


class ImageRuns:
    """Walks a prefill's images in order over its samples (choosers are called sample by sample)."""

    def __init__(self, capture: ClsCapture) -> None:
        self.capture = capture
        self._for: Any = None
        self._image = self._crop = 0

    def __call__(self, visual: Tensor, video: Tensor | None) -> list[ImageRun]:
        capture, editor = self.capture, self.capture.editor
        if editor is None or capture.last is None:
            raise RuntimeError(f"{capture.method}: no vision encoder call was captured for this prefill")
        if video is not None and bool((video & visual).any()):
            raise TampError(f"{capture.method}: video input is not supported (the released code's LLaVA path "
                            f"is image only); use divprune, random or pool for video")
        if self._for is not editor.history[-1]:
            self._for, self._image, self._crop = editor.history[-1], 0, 0
        sizes = editor.media_kwargs.get("image_sizes")
        patches = capture.last.hidden.shape[1] - 1
        runs = []
        for start, end in visual_runs(visual.cpu()):
            size = None if sizes is None else tuple(int(v) for v in sizes[self._image].tolist())
            high, wide, sources = crop_sources(editor.model.config, size, patches)
            count = 1 + high * wide
            if sources.numel() != end - start or self._crop + count > capture.last.hidden.shape[0]:
                raise RuntimeError(f"{capture.method}: image {self._image} has {end - start} tokens in the sequence, "
                                   f"its crops account for {sources.numel()}")
            runs.append(ImageRun(start, end, list(range(self._crop, self._crop + count)), high, wide, sources))
            self._image += 1
            self._crop += count
        return runs

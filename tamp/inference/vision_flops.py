"""Prefill FLOPs of the vision side: the vision encoder and the projector, counted from what each of their
modules ran on in this prefill.

Forward hooks on the encoder's and the projector's linears, convolutions and attentions add, per call: a linear
2 x rows x (in x out) (its non-zero weights for the `nonzero` count), a convolution 2 x output positions x
(in / groups x kernel) x out, a self-attention 2 x 2 x n^2 x (heads x head_dim) per sequence it attends within
(a CLIP / SigLIP image or tile; a Qwen2-VL image or Qwen2.5-VL window, from its `cu_seqlens`), a pooling head
(`nn.MultiheadAttention`, SigLIP's) its four projections and two matmuls. So the count follows the tokens that
really reached each module: a token method that removes tokens before the projector (VisionZip's kind) changes
the projector's part without declaring anything, and what it spends choosing them it declares as scoring FLOPs,
as every token method does (tamp/inference/sequence_edit.py). Norms, activations, rotary embeddings and softmax
are left out, as on the language side (tamp/inference/flops.py) and in torch.utils.flop_counter; checked against
FlopCounterMode in tests/tamp/inference/test_flops.py. The projector is LLaVA's `multi_modal_projector` or the
Qwen vision tower's patch `merger`; everything else in the tower is the encoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tamp.models import internals
from tamp.models.adapters import ModelAdapter

# the vision tower's attribute on the multimodal model (SmolVLM's: vision_model)
TOWER_NAMES = ("vision_tower", "visual", "vision_model")
# beside the tower (LLaVA, Gemma 3, InternVL; SmolVLM's connector) or inside it (Qwen)
PROJECTOR_NAMES = ("multi_modal_projector", "merger", "connector")
PARTS = ("encoder", "projector")


@dataclass
class VisionFlops:
    """FLOPs of the vision side since the last `take`, per part: dense weights and non-zero weights."""

    dense: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PARTS, 0.0))
    nonzero: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PARTS, 0.0))

    def add(self, part: str, dense: float, nonzero: float | None = None) -> None:
        self.dense[part] += dense
        self.nonzero[part] += dense if nonzero is None else nonzero


def vision_parts(model: nn.Module, adapter: ModelAdapter) -> tuple[nn.Module, nn.Module | None] | None:
    """(the vision tower, its projector) of a multimodal model, None for a text-only or audio model."""
    stack = adapter.vision_stack(model)
    if stack is None:
        return None
    parts = stack.name.split(".")
    found = [i for i, name in enumerate(parts) if name in TOWER_NAMES]
    if not found:
        return None
    tower_path = ".".join(parts[:found[0] + 1])
    tower = model.get_submodule(tower_path)
    parent = model.get_submodule(".".join(parts[:found[0]])) if found[0] else model
    for owner in (tower, parent):
        for name in PROJECTOR_NAMES:
            projector = getattr(owner, name, None)
            if isinstance(projector, nn.Module):
                return tower, projector
    return tower, None


def _linear_flops(module: nn.Linear, inputs: tuple, nnz: int) -> tuple[float, float]:
    rows = inputs[0].numel() // module.in_features
    return 2.0 * rows * module.weight.numel(), 2.0 * rows * nnz


def _conv_flops(module: nn.Conv1d | nn.Conv2d | nn.Conv3d, output: torch.Tensor, nnz: int) -> tuple[float, float]:
    positions = output.numel() // module.out_channels  # batch x output positions
    return 2.0 * positions * module.weight.numel(), 2.0 * positions * nnz


def _attention_flops(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> float:
    """2 x 2 x n^2 x width per attended sequence: [batch, n, hidden] inputs (CLIP, SigLIP) or packed [n, hidden]
    inputs split by `cu_seqlens` (Qwen2-VL / Qwen2.5-VL)."""
    hidden = kwargs.get("hidden_states", args[0] if args else None)
    width = internals.vision_attention_width(module)
    cu = kwargs.get("cu_seqlens", args[1] if len(args) > 1 and hidden is not None and hidden.dim() == 2 else None)
    if hidden.dim() == 2 and isinstance(cu, torch.Tensor):
        lengths = (cu[1:] - cu[:-1]).double()
        return float(4.0 * (lengths ** 2).sum().item() * width)
    batch, n = (1, hidden.shape[0]) if hidden.dim() == 2 else (hidden.shape[0], hidden.shape[1])
    return 4.0 * batch * n * n * width


def _pooling_head_flops(module: nn.MultiheadAttention, args: tuple, kwargs: dict[str, Any],
                        nnz: tuple[int, int, int]) -> tuple[float, float]:
    """nn.MultiheadAttention (SigLIP's pooling head): q, k, v and out projections from their packed weights, and the
    two matmuls; (dense, non-zero); `nnz`: the non-zero weights of its q, k + v and out projections."""
    query = kwargs.get("query", args[0] if args else None)
    key = kwargs.get("key", args[1] if len(args) > 1 else query)
    if not module.batch_first:
        query, key = query.transpose(0, 1), key.transpose(0, 1)
    b, lq, lk, e = query.shape[0], query.shape[1], key.shape[1], module.embed_dim
    q_nnz, kv_nnz, o_nnz = nnz
    matmuls = 4.0 * b * lq * lk * e
    dense = 2.0 * b * (lq * e * e + lk * 2 * e * e + lq * e * e) + matmuls
    nonzero = 2.0 * b * (lq * q_nnz + lk * kv_nnz + lq * o_nnz) + matmuls
    return dense, nonzero


def _matmul_weights(module: nn.Module) -> list[tuple[int, int, int]]:
    """A projector's own 2-D weight parameters that it multiplies by directly, not through an nn.Linear (Gemma 3's
    `mm_input_projection_weight`): (columns, size, non-zero) each."""
    if isinstance(module, (nn.Embedding, nn.Linear)):
        return []
    return [(int(w.shape[-1]), w.numel(), int((w != 0).sum())) for w in module.parameters(recurse=False) if w.dim() == 2]


def _weights_flops(weights: list[tuple[int, int, int]], output: Any) -> tuple[float, float]:
    """2 x rows x weights per such matmul, the rows read from the module's output (its last dim the weight's
    columns)."""
    out = output[0] if isinstance(output, (tuple, list)) else output
    dense = nonzero = 0.0
    for columns, size, nnz in weights:
        rows = out.numel() // columns
        dense, nonzero = dense + 2.0 * rows * size, nonzero + 2.0 * rows * nnz
    return dense, nonzero


class VisionMeter:
    """Counts the vision encoder's and projector's FLOPs from forward hooks (`take` returns them and starts
    afresh). Weights are read once, at install: the count is for the weights as evaluated."""

    def __init__(self, tower: nn.Module, projector: nn.Module | None) -> None:
        self.flops = VisionFlops()
        self._handles: list[Any] = []
        in_projector = {id(m) for m in projector.modules()} if projector is not None else set()
        modules = list(tower.named_modules())
        if projector is not None and not any(m is projector for _, m in modules):
            modules += list(projector.named_modules())
        skip: set[int] = set()  # modules a pooling head computes itself (its out_proj)
        for _, module in modules:
            if isinstance(module, nn.MultiheadAttention):
                skip.update(id(m) for m in module.modules() if m is not module)
        for _, module in modules:
            if id(module) in skip:
                continue
            part = "projector" if id(module) in in_projector else "encoder"
            self._watch(module, part)

    def _add(self, part: str, dense: float, nonzero: float | None = None) -> None:
        self.flops.add(part, dense, nonzero)

    def _watch(self, module: nn.Module, part: str) -> None:
        add = self._add
        if isinstance(module, nn.Linear):
            nnz = int((module.weight != 0).sum())
            hook = module.register_forward_hook(lambda m, a, o: add(part, *_linear_flops(m, a, nnz)))
        elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            nnz = int((module.weight != 0).sum())
            hook = module.register_forward_hook(lambda m, a, o: add(part, *_conv_flops(m, o, nnz)))
        elif isinstance(module, nn.MultiheadAttention):
            e, w_in = module.embed_dim, module.in_proj_weight
            counts = (int((w_in[:e] != 0).sum()), int((w_in[e:] != 0).sum()), int((module.out_proj.weight != 0).sum()))
            hook = module.register_forward_hook(lambda m, a, k, o: add(part, *_pooling_head_flops(m, a, k, counts)),
                                                with_kwargs=True)
        elif part == "projector" and (weights := _matmul_weights(module)):
            hook = module.register_forward_hook(lambda m, a, o: add(part, *_weights_flops(weights, o)))
        elif internals.is_vision_attention(module):
            hook = module.register_forward_hook(lambda m, a, k, o: add(part, _attention_flops(m, a, k)),
                                                with_kwargs=True)
        else:
            return
        self._handles.append(hook)

    @classmethod
    def install(cls, model: nn.Module, adapter: ModelAdapter) -> VisionMeter | None:
        """A meter on the model's vision tower and projector; None when it has no vision tower."""
        found = vision_parts(model, adapter)
        return cls(*found) if found is not None else None

    def take(self) -> VisionFlops:
        out, self.flops = self.flops, VisionFlops()
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

"""Prefill FLOPs of a language model, counted analytically from its layers and the tokens each layer ran on.

Per decoder layer with n tokens: every linear costs 2 n (in x out) (dense weights) or 2 n nnz (non-zero
weights only, what a sparse kernel could reach); attention's two matmuls (q k^T and the weighted sum over
values) cost 2 x 2 n^2 (heads x head_dim), the full square as the kernels compute it (no causal halving).
The LM head costs 2 x positions x hidden x vocab for the positions whose logits are computed. A token
method's own scoring (FastV's last-row attention, AIM's PageRank) is charged by the cost meter from what the
sequence editor recorded (`PrefillStats.scoring_flops`, declared by the method's own parts). Norms,
rotary embeddings, softmax and activations are left out, as torch.utils.flop_counter leaves them out. The
vision encoder and projector are counted apart (tamp/inference/vision_flops.py) and added by the cost meter.
Checked against FlopCounterMode in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from tamp.engine.attention import attention_dims
from tamp.models.adapters import ModelAdapter


@dataclass(frozen=True)
class LayerShape:
    """What a decoder layer costs per token: linear weights (all and non-zero), attention width."""

    weights: int
    nonzero: int
    attention_width: int  # heads x head_dim of the query


@dataclass(frozen=True)
class ModelShape:
    layers: tuple[LayerShape, ...]
    head_weights: int  # hidden x vocab of the LM head

    @classmethod
    def of(cls, model: nn.Module, adapter: ModelAdapter) -> ModelShape:
        shapes = []
        for layer in adapter.language_stack(model).layers:
            linears = [m for m in layer.modules() if isinstance(m, nn.Linear)]
            heads, head_dim = attention_dims(layer)
            shapes.append(LayerShape(sum(m.weight.numel() for m in linears),
                                     sum(int((m.weight != 0).sum()) for m in linears), heads * head_dim))
        head = adapter.runner(model).get_output_embeddings()
        return cls(tuple(shapes), head.weight.numel())

    def prefill(self, tokens_per_layer: list[int], logits_positions: int) -> dict[str, float]:
        """FLOPs of one prefill: {'dense', 'nonzero'} (linears + attention + head), and the attention part."""
        if len(tokens_per_layer) != len(self.layers):
            raise ValueError(f"{len(tokens_per_layer)} token counts for {len(self.layers)} layers")
        linear = sum(2 * n * s.weights for n, s in zip(tokens_per_layer, self.layers))
        nonzero = sum(2 * n * s.nonzero for n, s in zip(tokens_per_layer, self.layers))
        attention = sum(4 * n * n * s.attention_width for n, s in zip(tokens_per_layer, self.layers))
        head = 2 * logits_positions * self.head_weights
        return {"dense": float(linear + attention + head), "nonzero": float(nonzero + attention + head),
                "attention": float(attention), "head": float(head)}

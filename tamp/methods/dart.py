"""DART (Wen et al., EMNLP 2025, "Stop Looking for Important Tokens in Multimodal Language Models: Duplication
Matters More"): before layer K, pick a few pivot tokens and keep the visual tokens that duplicate them least.

Released code read: ZichenWen1/DART at 5a19452 (through the fork xqy1111111/DART, whose history holds it:
`llava/model/language_model/modeling_llama_self.py` `DART.get_retained_image_token`, the Qwen2-VL / Qwen2.5-VL
ports), and its port in ModelTC/LightCompress 9701d03 (`token_reduction/dart.py`). Before layer K (default 2,
0-based), from layer K - 1's outputs:

- pivots: the 4 image tokens and the 4 tokens after the image with the largest L1 norm of layer K - 1's keys
  (after the rotary embedding, all key heads concatenated; `dart_image_pivots`, `dart_text_pivots`);
- the states compared are the final norm of the states entering layer K (cosine similarity, so the norm's weight
  is what matters: the per-token scale cancels);
- in the release's order (Python's iteration order of the pivot set), each pivot keeps the t visual tokens least
  cosine-similar to it among those not kept yet, t = round(n x keep) // 8; kept: the image pivots and the picks
  (4 + 8 x 16 = 132 of 576 for the paper's 128-token setting; text pivots are text, never dropped);
- the others leave the sequence for every later layer; no attention weights are needed, so it runs with sdpa or
  FlashAttention.

Differences (docs/fidelity.md): the visual tokens of a prompt are one pool, as the release's single image span is
(multi-image and video prompts: every image and frame together), and text pivots come from the tokens after the
last visual token; similarities in fp64, ties to the earlier token; counts capped where the release would fail
(fewer tokens than pivots or picks); keep = 1 keeps everything.

Budget: `token_budget=SHARE` sets `dart_keep` = SHARE and `dart_count` = budget: round(n x SHARE) visual tokens
in all, the image pivots counted in and the picks spread over the pivots (the first ones one more), so every
method keeps the same count (192 / 128 / 64 of 576; 12 / 8 / 4 of the tiny model's 36, where the release's rule
gives 12 / 12 / 4). `dart_count` = release is the paper's accounting: max_num_trunction = round(576 x SHARE), t =
24 / 16 / 8 per pivot, the image's 4 pivots on top (196 / 132 / 68).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tamp.algorithms.token_dedup import dart_keep
from tamp.engine.attention import AttentionScore
from tamp.inference.sequence_edit import Drop, DropInput, Kept, SequenceEditor, TokenPlan
from tamp.methods.base import Param, TokenMethod


def key_l1(query: Tensor, key: Tensor, mask: Tensor | None, scaling: float | None) -> Tensor:
    """[B, T]: the L1 norm of each token's keys over every key head (fp32), as the release's pivot score."""
    return key.float().abs().sum(dim=(1, 3))


COUNTS = ("release", "budget")
KEY_L1 = AttentionScore(key_l1, lambda tokens, heads, head_dim: 0.0)  # no matmul


@dataclass
class FinalNormWeight:
    """An install that reads the final norm's weight once the editor is set up: the similarity's only use of the
    norm (an RMSNorm's per-token scale cancels in a cosine)."""

    weight: Tensor | None = None

    def __call__(self, editor: SequenceEditor) -> FinalNormWeight:
        weight = getattr(editor.norm, "weight", None)
        self.weight = weight.detach() if isinstance(weight, Tensor) else None
        if self.weight is not None:  # the norm's own per-channel scale: w, or Gemma's 1 + w (up to a constant)
            with torch.no_grad():
                probe = torch.ones(1, self.weight.shape[-1], dtype=self.weight.dtype, device=self.weight.device)
                scale = editor.norm(probe)[0].detach()
            if not torch.allclose(scale, self.weight, rtol=1e-3, atol=0.0):
                self.weight = scale
        return self

    def remove(self) -> None:
        self.weight = None


def plan(params: dict[str, Any], num_layers: int) -> TokenPlan:
    keep, images, texts = float(params["dart_keep"]), int(params["dart_image_pivots"]), int(params["dart_text_pivots"])
    exact = str(params["dart_count"]) == "budget"
    if images + texts == 0:
        raise ValueError("dart_image_pivots and dart_text_pivots are both 0: DART needs at least one pivot")
    norm = FinalNormWeight()

    def choose(seen: DropInput) -> Kept:
        assert seen.scores is not None
        states = seen.hidden if norm.weight is None else seen.hidden * norm.weight.to(seen.hidden.dtype)
        positions = torch.arange(seen.visual.shape[0], device=seen.visual.device)
        last = int(positions[seen.visual].max()) if bool(seen.visual.any()) else -1
        text = ~seen.visual & (positions > last)
        kept, flops = dart_keep(seen.scores, states, seen.visual, text, images, texts, keep, exact)
        ordered = torch.sort(torch.cat([positions[~seen.visual], kept])).values
        return Kept(ordered, flops=flops)

    return TokenPlan({int(params["dart_k"]): Drop(choose, KEY_L1)}, (norm,))


def _count(name: str):
    return lambda v: f"{name} must be at least 0, got {v}" if v < 0 else None


PARAMS = (
    Param("dart_k", int, 2, "tokens are dropped before this layer (0-based), pivots and states from the layer before",
          check=lambda v: f"dart_k must be at least 1, got {v}" if v < 1 else None),
    Param("dart_keep", float, 0.222, "share of the visual tokens the pivots' picks add up to (0.222: 128 of 576, "
          "the release's example), the image pivots kept on top",
          check=lambda v: f"dart_keep must be in [0, 1], got {v}" if not 0 <= v <= 1 else None),
    Param("dart_image_pivots", int, 4, "pivots among the visual tokens (largest key L1 norm)",
          check=_count("dart_image_pivots")),
    Param("dart_text_pivots", int, 4, "pivots among the tokens after the image (largest key L1 norm)",
          check=_count("dart_text_pivots")),
    Param("dart_count", str, "release", "release: each pivot picks round(n x dart_keep) // pivots, the image pivots "
          "on top; budget: round(n x dart_keep) visual tokens in all, pivots included (the common token budget's)",
          choices=COUNTS),
)

METHOD = TokenMethod(
    name="dart", label="DART", order=32,
    summary="keep the visual tokens least similar to a few pivot tokens, after layer K (duplicates dropped)",
    params=PARAMS, plan=plan, budget=lambda share: {"dart_keep": share, "dart_count": "budget"},
    attention=("no attention weights: the L1 norm of layer K - 1's keys (KEY_L1), read from its key tensor inside "
               "its attention call, under any kernel"),
)

"""SparseVLM (Zhang et al., ICML 2025): text-guided visual-token sparsification inside the LLM, with recycling.

Released code read: Gumpest/SparseVLMs at 26a5f48 (main; `llava/model/language_model/modelling_sparse_llama.py`
`LlamaDynamicvitModel.forward`, `score.py`, `utils.py` `cluster_and_merge`). Its scripts (`RETAIN_TOKN=192 bash
scripts/v1_5/eval/mme.sh`) run `USE_VERSION` "1_0" by default: the v1.5 algorithm (fixed per-layer counts; the
paper's rank-adaptive count is commented out in every released version, `rank = 0`); `USE_VERSION=2_0` is
SparseVLM+ (not here). What it does on LLaVA-1.5 (576 image tokens, 32 layers):

- raters, once, from the input embeddings: the tokens after the image whose relevance to the image (softmax over
  them of v @ t, averaged over the image tokens) is above the mean relevance;
- after layers 2, 6 and 15 (before 3, 7, 16): each image token's score is the raters' rows of that layer's softmax
  attention, mean over heads then raters; the top count stays (RETAIN_TOKN 192: 300, 200, 110; 128: 303, 110, 36;
  96: 238, 48, 26; 64: 66, 30, 17; at most one fewer than there are);
- recycling: of the dropped image tokens (the layer's output states), the top int(0.3 x dropped) + 1 by score are
  clustered (DPC-KNN, int(that / 10) + 1 clusters) and each cluster's mean stays, among the image tokens (so a
  later stage may drop it again).

Here (tamp.algorithms.rater_recycle): the drops come before layers 3, 7, 16 of 32 (the release's layers scaled to
the depth: 0, 1, 2 of the tiny models' 4, so drops before 1, 2, 3), ranked by the `rows_score` of the layer before
(tamp.engine.attention: the raters' rows only, inside the layer's own attention call); counts are shares of the
visual tokens that entered the LLM (`sparsevlm_keep`: the release's RETAIN_TOKN / 576 picks them, interpolated
between its table's rows). Differences (docs/fidelity.md): kept tokens keep their positions (the release renumbers
them 0..n-1 after each drop) and a cluster's mean sits at its center token's position (the release puts the
clusters after the kept image tokens); every visual token of the prompt is one pool and the raters come from the
tokens after the last visual token (the release handles one image); the DPC-KNN tie-breaking noise is left out.
Applies to every image family: it needs only the attention of the language model. Token budget: the
budget (`token_budget=SHARE`) sets `sparsevlm_keep` = SHARE and `sparsevlm_average` = SHARE: the release's stage
shares for SHARE are scaled by one factor (tamp.algorithms.rater_recycle.fit_scale) so that the visual tokens per
layer, averaged over every layer with the recycled cluster means counted, come nearest SHARE x n at the model's
depth (the release's RETAIN_TOKN=192 counts average 206.5 of 576 over 32 layers). Layer 0 runs on all n and each
stage recycles at least one cluster, so on the tiny models' 4 layers no budget averages below 10 of 36.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

from tamp.algorithms.rater_recycle import (
    RECYCLE_SHARE,
    TOKENS_PER_CLUSTER,
    fit_scale,
    rater_flops,
    recycle,
    scaled_layers,
    select_raters,
    stage_count,
    stage_shares,
    top_first,
)
from tamp.engine.attention import rows_score
from tamp.inference.sequence_edit import Drop, DropInput, Kept, SequenceEditor, TokenPlan
from tamp.methods.base import Param, TokenMethod

RELEASE_KEEP = 192 / 576


@dataclass
class Raters:
    """An install holding each sample's raters of the prefill in progress, as distances from the sequence's end
    (the text after the image is never dropped, and padding is on the left, so they hold through every drop)."""

    editor: SequenceEditor | None = None
    prefill: int = -1
    offsets: list[Tensor] = field(default_factory=list)

    def __call__(self, editor: SequenceEditor) -> Raters:
        self.editor = editor
        return self

    def remove(self) -> None:
        self.editor, self.offsets = None, []

    def add(self, offsets: Tensor) -> None:
        now = len(self.editor.history) if self.editor is not None else 0
        if now != self.prefill:  # the first sample of a new prefill
            self.prefill, self.offsets = now, []
        self.offsets.append(offsets)

    def rows(self, tokens: int) -> list[Tensor]:
        return [tokens - o for o in self.offsets]


def _layers(params: dict[str, Any], num_layers: int) -> tuple[int, ...]:
    text = str(params["sparsevlm_layers"]).strip()
    return tuple(int(x) for x in text.split(",")) if text else scaled_layers(num_layers)


def plan(params: dict[str, Any], num_layers: int) -> TokenPlan:
    problem = depth_problem(params, num_layers)
    if problem is not None:
        raise ValueError(problem)
    layers = _layers(params, num_layers)
    shares = stage_shares(float(params["sparsevlm_keep"]))[-len(layers):]  # fewer stages: the later counts
    recycling = bool(params["sparsevlm_recycle"])
    share, per_cluster = float(params["sparsevlm_recycle_share"]), int(params["sparsevlm_cluster_size"])
    average = params["sparsevlm_average"]

    @lru_cache(maxsize=8)
    def shares_for(n: int) -> tuple[float, ...]:
        """The stage shares for n visual tokens entering: the release's, or scaled to the layer average."""
        if average is None:
            return shares
        f = fit_scale(n, shares, layers, num_layers, float(average), share if recycling else None, per_cluster)
        return tuple(min(1.0, f * s) for s in shares)

    raters = Raters()

    def pick_raters(seen: DropInput) -> Kept:
        every = torch.arange(seen.visual.shape[0], device=seen.visual.device)
        if not bool(seen.visual.any()):
            raters.add(every[:0])
            return Kept(every)
        after = int(every[seen.visual].max()) + 1
        visual, text = seen.hidden[seen.visual], seen.hidden[after:]
        chosen = select_raters(visual, text) if text.shape[0] else every[:0]
        raters.add(seen.visual.shape[0] - (after + chosen))
        return Kept(every, flops=rater_flops(visual.shape[0], text.shape[0], visual.shape[1]))

    def stage(k: int) -> Drop:
        def choose(seen: DropInput) -> Kept:
            assert seen.scores is not None
            where = torch.nonzero(seen.visual).flatten()
            if where.numel() == 0:
                return Kept(torch.arange(seen.visual.shape[0], device=seen.visual.device))
            count = stage_count(seen.visual_at_entry, shares_for(seen.visual_at_entry)[k], where.numel())
            dropped = seen.visual.clone()
            dropped[where[top_first(seen.scores[where], count)]] = False
            gone = torch.nonzero(dropped).flatten()
            if not recycling or gone.numel() == 0:
                return Kept(torch.nonzero(~dropped).flatten())
            merged, centers, flops = recycle(seen.hidden[gone], seen.scores[gone], share, per_cluster)
            slots = gone[centers]
            dropped[slots] = False
            positions = torch.nonzero(~dropped).flatten()
            rows = seen.hidden[positions].clone()
            rows[torch.searchsorted(positions, slots)] = merged.to(rows.dtype)
            return Kept(positions, rows, flops)

        return Drop(choose, rows_score(raters.rows))

    drops = {0: Drop(pick_raters), **{layer + 1: stage(k) for k, layer in enumerate(layers)}}
    return TokenPlan(drops, (raters,))


def depth_problem(params: dict[str, Any], num_layers: int) -> str | None:
    if num_layers < 2:
        return f"sparsevlm drops between decoder layers; this model has {num_layers}"
    layers = _layers(params, num_layers)
    if layers[-1] > num_layers - 2:
        return (f"sparsevlm_layers {params['sparsevlm_layers']} reaches past this model's {num_layers} decoder "
                f"layers (a drop follows each): use layers up to {num_layers - 2}")
    return None


def _layer_list(value: str) -> str | None:
    text = value.strip()
    if not text:
        return None
    parts = text.split(",")
    if not all(p.strip().isdigit() for p in parts):
        return f"sparsevlm_layers must be empty or comma-separated layer numbers such as 2,6,15, got {value!r}"
    numbers = [int(p) for p in parts]
    if len(numbers) > 3 or numbers != sorted(set(numbers)):
        return f"sparsevlm_layers must name 1 to 3 ascending distinct layers (the release: 2,6,15), got {value!r}"
    return None


PARAMS = (
    Param("sparsevlm_keep", float, RELEASE_KEEP, "retained share, the release's RETAIN_TOKN / 576 (192: 0.333; "
          "128, 96, 64 too): it picks the kept share after each stage, between the release's rows interpolated",
          check=lambda v: f"sparsevlm_keep must be in (0, 1], got {v}" if not 0 < v <= 1 else None),
    Param("sparsevlm_layers", str, "", "layers whose attention ranks (a drop after each); empty: the release's 2, "
          "6, 15 of 32 scaled to the depth; fewer than 3 take the later stages' counts", check=_layer_list),
    Param("sparsevlm_recycle", bool, True, "recycle the best-scored dropped tokens as cluster means (the release; "
          "false: SparseVLM+'s plain drop)"),
    Param("sparsevlm_recycle_share", float, RECYCLE_SHARE, "share of the dropped tokens recycled (+1; the "
          "release's 0.3)", check=lambda v: f"sparsevlm_recycle_share must be in [0, 1], got {v}"
          if not 0 <= v <= 1 else None),
    Param("sparsevlm_cluster_size", int, TOKENS_PER_CLUSTER, "recycled tokens per cluster (clusters: int(n / "
          "this) + 1; the release's 10)", check=lambda v: f"sparsevlm_cluster_size must be at least 1, got {v}"
          if v < 1 else None),
    Param("sparsevlm_average", float, None, "share of the visual tokens kept on average over the layers, recycled "
          "cluster means counted (the common token budget's): the stage shares scaled by one factor fitted at the "
          "model's depth (unset: the release's shares)",
          check=lambda v: f"sparsevlm_average must be in (0, 1] (or unset), got {v}" if v is not None and not 0 < v <= 1
          else None),
)

METHOD = TokenMethod(
    name="sparsevlm", label="SparseVLM", order=26,
    summary="drop the visual tokens the text raters attend to least, after layers 2, 6, 15, recycling some as "
            "cluster means",
    params=PARAMS, plan=plan, depth_problem=depth_problem,
    budget=lambda share: {"sparsevlm_keep": share, "sparsevlm_average": share},
    attention=("the raters' rows (text tokens after the image picked from the input embeddings) of each ranking "
               "layer's attention, mean over heads then raters, from that layer's own query and key inside its "
               "attention call (tamp.engine.attention.rows_score): R rows, O(R x T), never the full matrix, under "
               "any kernel (the release forms the whole T x T softmax in every layer)"),
)

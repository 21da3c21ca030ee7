"""YOPO (Zhang et al., arXiv 2410.06169): prune the computation spent on visual tokens once for the model.

Four strategies, each switchable (`yopo_strategies`, joined by '+'), all training-free:

- layers: visual layer dropping. From layer L on nothing attends to the visual tokens (the released code zeroes
  all heads' post-softmax attention to them from `layercut_num` on, as `release` does here); with `removal` they
  leave the sequence (tamp.inference.sequence_edit) and are computed no further;
- ffn: sparse FFN projection. In the layers the visual tokens run through (every layer with `release`, those
  before L with `removal`) they go through the first share of the MLP's
  intermediate channels (the release zeroes the gate and up outputs beyond I / mlpcut_ratio at the visual
  positions; mlpcut_ratio 2 in its scripts); here the sliced weights are applied to the visual rows only
  (tamp.inference.visual_mlp);
- heads: inactive visual heads. The heads whose visual queries put the least attention on visual keys (mean over
  the calibration samples, one ranking over all layers) are skipped by visual queries: their q rows and o_proj
  columns are not computed (tamp.inference.visual_attention). Chosen at prune time by `fit`, recorded with the
  statistic in pruning.json;
- attn: neighbour-aware visual attention. A visual query attends to the non-visual keys before it and to the
  visual keys in the w x w window around it in its own image grid (w = 5, the release's `attncut_w`).

Two readings of the layer cut and the pruned heads (`yopo_semantics`):

- release (the default, the released code's numbers): masking after the softmax, no renormalisation. In the
  layers before L a pruned head's probabilities on visual keys are zeroed for every query (text queries too); from
  L on every head's are. The visual tokens stay in the sequence through every layer (their keys still enter each
  softmax's denominator, so they are computed, MLP and all), with the FFN slice, the pruned heads and the window
  in every layer, as the release runs them;
- removal (our faster reading, what earlier artifacts ran): the visual tokens leave the sequence at L, and text
  queries attend to visual keys in every head before it.

L comes from a compute budget: the share of the visual tokens' FLOPs kept, the last layer whose cumulative share
stays within it. A layer's cost per visual token counts its linear weights (q and o at the share of heads kept
there, the MLP at the FFN share) and, when a fit recorded the calibration's mean sequence, attention's matmuls
against the keys a visual query sees (all of them, or the non-visual ones plus the window, whose keys are at most
the visual tokens there are: a window wider than the grid is costed as the grid).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from tamp.algorithms.attention_window import choose_pruned_heads, visual_mass, window_keys
from tamp.engine.attention import allowed_keys, attention_dims, capture_attention_score
from tamp.engine.capture import capture_block_inputs, run_block
from tamp.errors import TampError
from tamp.inference.sequence_edit import VISUAL, Drop, DropInput, Install, Kept, TokenPlan
from tamp.inference.visual_attention import VisualAttentionPatch
from tamp.inference.visual_mlp import VisualMlpSlice
from tamp.methods.base import Param, TokenMethod
from tamp.models import internals
from tamp.models.adapters import ModelAdapter

STRATEGIES = ("layers", "ffn", "heads", "attn")
SEMANTICS = ("release", "removal")
FULL = "+".join(STRATEGIES)  # the paper's YOPO, the default; any subset for ablations
CHUNK_BYTES = 1 << 28  # the visual rows' attention logits formed at once while fitting (256 MiB of fp32)
# what `fit` adds to the parameters (pruning.json's transform section keeps them under "fitted")
PRUNED_HEADS, HEAD_STAT, TOKENS, VISUAL_TOKENS = "yopo_pruned_heads", "yopo_head_stat", "yopo_tokens", "yopo_visual_tokens"


@dataclass(frozen=True)
class Fitted:
    """What `fit` records (the schema pruning.json's `fitted` is read against): per layer the heads pruned for
    visual queries and the statistic that chose them (with the heads strategy), the calibration's mean tokens."""

    yopo_tokens: float
    yopo_visual_tokens: float
    yopo_pruned_heads: list[list[int]] | None = None
    yopo_head_stat: list[list[float]] | None = None


def strategies(params: dict[str, Any]) -> set[str]:
    return set(str(params["yopo_strategies"]).split("+"))


def _strategies_problem(value: str) -> str | None:
    parts = str(value).split("+")
    bad = [p for p in parts if p not in STRATEGIES]
    if bad or len(set(parts)) != len(parts):
        return (f"unknown yopo_strategies '{value}'; join any of {', '.join(STRATEGIES)} with '+' "
                "(e.g. layers+ffn+heads+attn)")
    return None


def _weights(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


def _head_weights(layer: nn.Module) -> int:
    projections = internals.attention_projections(layer)
    return projections.q.weight.numel() + projections.o.weight.numel()


def budget_layer(layers: list[nn.Module], budget: float, ffn_keep: float, head_keep: list[float] | None = None,
                 keys: tuple[float, float] | None = None) -> int:
    """The first layer the visual tokens no longer reach: the largest L with sum_{l<L} kept_l <= budget x
    sum_l dense_l, per visual token. dense_l: the layer's linear weights (+ 2 x width x keys_dense, attention's two
    matmuls, when `keys` is given); kept_l: q and o weights at the share head_keep[l] of heads kept, the other
    attention weights, ffn_keep x the MLP weights (+ 2 x head_keep[l] x width x keys_kept). Both x 2 FLOPs."""
    spent, total, cut, costs = 0.0, 0.0, 0, []
    for i, layer in enumerate(layers):
        share = 1.0 if head_keep is None else head_keep[i]
        mlp, heads = _weights(internals.gated_mlp(layer).module), _head_weights(layer)
        other = _weights(layer) - mlp - heads
        dense, kept = float(other + heads + mlp), other + share * heads + ffn_keep * mlp
        if keys is not None:
            heads_n, head_dim = attention_dims(layer)
            dense += 2.0 * heads_n * head_dim * keys[0]
            kept += 2.0 * share * heads_n * head_dim * keys[1]
        total += dense
        costs.append(kept)
    for kept in costs:
        spent += kept
        if spent > budget * total + 1e-9:
            break
        cut += 1
    return cut


def _head_keep(params: dict[str, Any], layers: list[nn.Module]) -> list[float] | None:
    pruned = params.get(PRUNED_HEADS)
    if "heads" not in strategies(params) or pruned is None:
        return None
    return [1.0 - len(p) / attention_dims(layer)[0] for p, layer in zip(pruned, layers)]


def _keys(params: dict[str, Any]) -> tuple[float, float] | None:
    """(keys a visual query sees without YOPO, with it) at the calibration's mean sequence, when a fit recorded it."""
    if params.get(TOKENS) is None:
        return None
    tokens, visual = float(params[TOKENS]), float(params[VISUAL_TOKENS])
    if "attn" in strategies(params):  # the window's keys: at most the visual tokens there are
        return tokens, tokens - visual + window_keys(int(params["yopo_window"]), visual)
    return tokens, tokens


def model_defaults(params: dict[str, Any], layers: list[nn.Module]) -> dict[str, Any]:
    """The layer from the budget when `yopo_layer` is -1 (and the strategies drop layers)."""
    out = dict(params)
    if "layers" not in strategies(params):
        out["yopo_layer"] = len(layers)
    elif int(params["yopo_layer"]) < 0:
        keep = float(params["yopo_ffn_keep"]) if "ffn" in strategies(params) else 1.0
        out["yopo_layer"] = budget_layer(layers, float(params["yopo_budget"]), keep, _head_keep(params, layers),
                                         _keys(params))
    return out


def depth_problem(params: dict[str, Any], num_layers: int) -> str | None:
    """An explicit `yopo_layer` past the model's layers, checked from its config before anything is loaded or fitted
    (`yopo_layer` = the depth cuts nothing: allowed, as `plan` allows it); or one the strategies would ignore."""
    cut = int(params["yopo_layer"])
    if "layers" not in strategies(params) and cut >= 0:  # model_defaults would overwrite it: a silent no-op
        return (f"yopo_layer {cut} is set, but yopo_strategies {params['yopo_strategies']} has no 'layers', so nothing "
                "is cut there; add layers to yopo_strategies, or leave yopo_layer at -1")
    if "layers" in strategies(params) and cut > num_layers:
        return (f"yopo_layer {cut} is beyond this model's {num_layers} decoder layers; set it to at most {num_layers} "
                "(or -1: the layer from yopo_budget)")
    return None


# ---- fit: the inactive visual heads, from calibration statistics ----------------------------------------------
def needs_fit(params: dict[str, Any]) -> bool:
    """Heads to choose (some share pruned), or a window whose cost the budget must weigh."""
    chosen = strategies(params)
    return ("heads" in chosen and float(params["yopo_heads_keep"]) < 1.0) or \
        ("attn" in chosen and "layers" in chosen and int(params["yopo_layer"]) < 0)


def head_mass(query: Tensor, key: Tensor, mask: Tensor | None, scaling: float | None, visual: Tensor) -> Tensor:
    """[B, H]: per sample and head, the attention probability the visual queries put on visual keys, mean over
    the visual queries (NaN for a sample without visual tokens)."""
    batch, heads, length, d = query.shape
    groups = heads // key.shape[1]
    scale = scaling if scaling is not None else d ** -0.5
    out = torch.full((batch, heads), float("nan"))
    for b in range(batch):
        rows = torch.nonzero(visual[b]).flatten()
        if not rows.numel():
            continue
        allowed = allowed_keys(mask, b, length, key.shape[2], query.device)[rows]
        chunk = max(1, CHUNK_BYTES // (4 * rows.numel() * key.shape[2]))
        for h in range(0, heads, chunk):
            hs = torch.arange(h, min(h + chunk, heads), device=query.device)
            k = key[b].index_select(0, hs // groups).float()
            logits = (query[b, hs][:, rows].float() @ k.transpose(-1, -2)) * scale
            out[b, h:h + hs.numel()] = visual_mass(logits.masked_fill(~allowed, float("-inf")),
                                                   visual[b].to(query.device)).cpu()
    return out


def fit(params: dict[str, Any], model: nn.Module, adapter: ModelAdapter, batches: list[dict[str, Tensor]],
        device: torch.device) -> dict[str, Any]:
    """Run the calibration batches through the language model block by block (the engine's capture of block 0's
    inputs, then each block on them, its attention scored as it runs); returns what install needs: per layer
    the heads pruned for visual queries and the statistic that chose them, and the mean tokens and visual tokens
    per sample (the budget weighs attention's keys with them)."""
    layers = list(adapter.language_stack(model).layers)
    visual_ids = [i for m in VISUAL for i in adapter.media_token_ids.get(m, [])]
    items = capture_block_inputs(adapter.runner(model), layers[0], batches, device, device,
                                 lambda batch: {"visual": torch.isin(batch["input_ids"], torch.tensor(visual_ids))},
                                 desc="capture (yopo)")
    visual = [item.token_masks["visual"].to(device) for item in items]
    if not any(bool(v.any()) for v in visual):
        raise TampError("yopo: the calibration data has no image or video tokens to choose visual heads with; "
                        "pass --calib with images")
    holder: dict[str, Tensor] = {}
    stat = torch.zeros(len(layers), attention_dims(layers[0])[0], dtype=torch.float64)
    want_heads = "heads" in strategies(params)
    for i, layer in enumerate(layers if want_heads else []):
        sink: list[Tensor] = []
        per_sample = []
        with capture_attention_score(layer, sink, lambda q, k, m, s: head_mass(q, k, m, s, holder["visual"])), \
                torch.inference_mode():
            for item, vis in zip(items, visual):
                holder["visual"] = vis
                item.hidden = run_block(layer, item, device)
                per_sample.append(sink.pop())
        scores = torch.cat(per_sample).double()
        stat[i] = scores[~torch.isnan(scores[:, 0])].mean(0)
    tokens = torch.cat([torch.full((v.shape[0],), float(v.shape[1])) for v in visual])
    counts = torch.cat([v.sum(1).float().cpu() for v in visual])
    out: dict[str, Any] = {TOKENS: float(tokens.mean()), VISUAL_TOKENS: float(counts.mean())}
    if want_heads:
        out[HEAD_STAT] = [[float(x) for x in row] for row in stat.tolist()]
        out[PRUNED_HEADS] = choose_pruned_heads(stat, float(params["yopo_heads_keep"]))
    return out


def _drop_visual(seen: DropInput) -> Kept:
    return Kept(torch.nonzero(~seen.visual).flatten())


def plan(params: dict[str, Any], num_layers: int) -> TokenPlan:
    """The visual tokens dropped before the cut layer; before it, YOPO's own installs: the sliced visual MLP
    (tamp.inference.visual_mlp) and the visual-attention patch (pruned heads, window; tamp.inference.visual_attention),
    each charging the FLOPs it saves to the editor."""
    cut = int(params["yopo_layer"])
    if not 0 <= cut <= num_layers:
        raise ValueError(f"yopo_layer {cut} is outside 0..{num_layers} (the model's decoder layers)")
    chosen = strategies(params)
    release = str(params["yopo_semantics"]) == "release"
    reach = num_layers if release else cut  # the layers the visual tokens run through
    drops = {cut: Drop(_drop_visual)} if cut < num_layers and not release else {}
    ffn = {}
    if "ffn" in chosen and float(params["yopo_ffn_keep"]) < 1.0:
        ffn = {i: float(params["yopo_ffn_keep"]) for i in range(reach)}
    heads: dict[int, tuple[int, ...]] = {}
    if "heads" in chosen and float(params["yopo_heads_keep"]) < 1.0:
        pruned = params.get(PRUNED_HEADS)
        if pruned is None:
            raise ValueError("the heads strategy needs the heads chosen at prune time (tamp prune / harness run "
                             "record them in pruning.json)")
        if len(pruned) != num_layers:
            raise ValueError(f"{len(pruned)} layers of pruned heads recorded for a model of {num_layers} layers")
        heads = {i: tuple(int(h) for h in p) for i, p in enumerate(pruned[:reach]) if p}
    window = {i: int(params["yopo_window"]) for i in range(reach)} if "attn" in chosen else {}
    zeroed: dict[int, tuple[int, ...]] = {}
    if release:  # post-softmax: the pruned heads before the cut, every head from it on
        zeroed = {i: h for i, h in heads.items() if i < cut}
    installs: list[Install] = []
    if ffn:
        installs.append(VisualMlpSlice(ffn))
    cut_from = cut if release and "layers" in chosen and cut < num_layers else None
    if heads or window or cut_from is not None:
        installs.append(VisualAttentionPatch(heads, window, bool(params["yopo_window_causal"]), zeroed, cut_from))
    return TokenPlan(drops, tuple(installs))


PARAMS = (
    Param("yopo_strategies", str, FULL, "the strategies that run, joined by '+': layers (visual layer "
          "dropping), ffn (sparse visual FFN), heads (inactive visual heads), attn (neighbour-aware visual attention)",
          check=_strategies_problem),
    Param("yopo_budget", float, 0.25, "share of the visual tokens' linear FLOPs kept; picks the layer they stop at",
          check=lambda v: None if 0 <= v <= 1 else f"yopo_budget must be in [0, 1], got {v}"),
    Param("yopo_layer", int, -1, "the first layer the visual tokens no longer reach (0-based); -1: from yopo_budget",
          check=lambda v: None if v >= -1 else f"yopo_layer must be -1 (from the budget) or a layer index, got {v}"),
    Param("yopo_ffn_keep", float, 0.5, "share of the MLP's intermediate channels the visual tokens use "
          "(the release's mlpcut_ratio 2)",
          check=lambda v: None if 0 < v <= 1 else f"yopo_ffn_keep must be in (0, 1], got {v}"),
    Param("yopo_heads_keep", float, 0.5, "share of all layers' attention heads visual queries keep, the rest "
          "(least attention from visual queries to visual keys) pruned (the release's 7B masks: 16 of 32 per layer)",
          check=lambda v: None if 0 <= v <= 1 else f"yopo_heads_keep must be in [0, 1], got {v}"),
    Param("yopo_window", int, 5, "w: a visual query attends to the visual keys in the w x w square around it "
          "(the release's attncut_w 5)",
          check=lambda v: None if v >= 1 and v % 2 else f"yopo_window must be an odd size of at least 1, got {v}"),
    Param("yopo_semantics", str, "release", "release: the released code's post-softmax masking (pruned heads zero "
          "every query's attention to visual keys, the layer cut every head's; the visual tokens keep running); "
          "removal: the visual tokens leave the sequence at the cut, text queries keep every head (faster)",
          check=lambda v: None if v in SEMANTICS else f"yopo_semantics must be one of {', '.join(SEMANTICS)}, "
          f"got '{v}'"),
    Param("yopo_window_causal", bool, False, "the window holds only the visual keys before the query (the "
          "release: the whole square, later tokens too)"),
)

METHOD = TokenMethod(
    name="yopo", label="YOPO", order=22, version=3,  # 2: the anyres window grid as transformers packs it; 3: a window
    # wider than its grid costed as the grid (the budget's cut layer moves)
    summary="visual tokens skip inactive heads, attend to neighbours, use half of each MLP, stop at a budget layer",
    params=PARAMS, plan=plan, model_defaults=model_defaults, depth_problem=depth_problem, fit=fit, needs_fit=needs_fit,
    fitted_schema=Fitted,
)

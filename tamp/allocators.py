"""OWL, ECoFLaP and DAS allocations: statistics of the dense model -> per-matrix sparsity.

The arithmetic lives in tamp.algorithms.allocations (pure functions); this file only gathers the
statistics with the engine's sweep and maps blocks / matrices to names.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from tamp.algorithms.allocations import (
    das_allocation,
    keep_budget_allocation,
    outlier_ratio,
    owl_block_sparsities,
    sparsities_from_keep,
    zeroth_order_grad,
)
from tamp.engine.capture import Captured, run_block
from tamp.engine.stats import StatsCollector
from tamp.models.adapters import Stack, prunable_linears
from tamp.selection import sample_masks

if TYPE_CHECKING:
    from tamp.engine.sequential import Context


def _block_names(stack: Stack, i: int, layer: nn.Module) -> list[str]:
    return [f"{stack.name}.{i}.{name}" for name in prunable_linears(layer)]


# ----------------------------------------------------------------------------------------------- OWL
def owl(ctx: "Context") -> dict[str, float]:
    """One sparsity per decoder block from its share of outlier Wanda metrics (more outliers -> less)."""
    from tamp.engine.sequential import sweep

    cfg = ctx.cfg
    targets: dict[str, float] = {}
    for stack in ctx.stacks:
        ratios: list[float] = []
        blocks: list[list[str]] = []

        def observe(i: int, layer: nn.Module, items: list[Captured], stack: Stack = stack) -> None:
            linears = prunable_linears(layer)
            collector = StatsCollector(linears, need_sq=True, need_hessian=False)
            with torch.inference_mode():
                for item in items:
                    collector.next_batch(item)
                    item.hidden = run_block(layer, item, ctx.device)
            collector.remove()
            metric = torch.cat([(mod.weight.abs().float() * collector.result(n).col_sq.sqrt()).flatten()
                                for n, mod in linears.items()])
            ratios.append(outlier_ratio(metric, cfg.owl_m))
            blocks.append(_block_names(stack, i, layer))

        sweep(ctx, stack, observe, desc=f"OWL outliers {stack.name}")
        sparsities = owl_block_sparsities(ratios, cfg.sparsity, cfg.owl_lambda, released_tamp_sign=cfg.owl_released_sign)
        ctx.result.details.setdefault("owl_outlier_ratios", {})[stack.name] = ratios
        for names, s in zip(blocks, sparsities):
            targets.update({n: s for n in names})
    return targets


# ------------------------------------------------------------------------------------------- ECoFLaP
def lm_labels(batch: dict[str, torch.Tensor], media_ids: list[int]) -> torch.Tensor:
    """Next-token targets for the LM loss: media placeholder tokens and padding are ignored (-100)."""
    labels = batch["input_ids"].clone()
    if media_ids:
        labels[torch.isin(labels, torch.tensor(media_ids, device=labels.device))] = -100
    if "attention_mask" in batch:
        labels[batch["attention_mask"].to(labels.device) == 0] = -100
    return labels


def _full_loss(model: nn.Module, batch: dict[str, torch.Tensor], labels: torch.Tensor) -> float:
    return float(model(**batch, labels=labels, use_cache=False).loss)


def _suffix_loss(ctx: "Context", stack: Stack, start: int, item: Captured, labels: torch.Tensor) -> float:
    """The model's LM loss computed from block `start`'s captured input: blocks start.., final norm, head.

    Equal to the whole-model loss (the blocks before `start` are not perturbed), at a fraction of the cost.
    """
    hidden = item.hidden
    for layer in stack.layers[start:]:
        hidden = run_block(layer, Captured(hidden, item.args, item.kwargs), ctx.device)
    norm = ctx.model.get_submodule(stack.name.rsplit(".", 1)[0]).norm
    logits = ctx.adapter.runner(ctx.model).get_output_embeddings()(norm(hidden)).float()
    return float(F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten().to(logits.device),
                                 ignore_index=-100))


def ecoflap(ctx: "Context") -> dict[str, float]:
    """Zeroth-order importance |(L(w + eps z) - L(w - eps z)) / 2 eps| per matrix, summed per block, then
    the keep budget spread over blocks in proportion to the scores with max sparsity target + delta.

    For the language model's matrices the loss is computed from the perturbed block's captured input (one
    sequential sweep), so each evaluation skips the unchanged blocks before it; other stacks (a pruned vision
    tower) use whole-model forwards. The whole model must fit on the device.
    """
    from dataclasses import replace

    from tamp.engine.capture import move
    from tamp.engine.sequential import sweep

    cfg, model, device = ctx.cfg, ctx.model, ctx.device
    runner = ctx.adapter.runner(model)
    if ctx.offload:
        model.to(device)
    media_ids = [i for ids in ctx.adapter.media_token_ids.values() for i in ids]
    nbatches, seen = 0, 0
    for batch in ctx.batches:
        if seen >= cfg.ecoflap_samples:
            break
        nbatches += 1
        seen += int(batch["input_ids"].shape[0])
    batches = [move(b, device) for b in ctx.batches[:nbatches]]
    labels = [lm_labels(b, media_ids) for b in batches]
    index = {name: i for i, name in enumerate(ctx.linears)}
    scores: dict[str, float] = {}
    generator = torch.Generator(device=device)

    def score(name: str, mod: nn.Module, loss_fn) -> None:
        original = mod.weight.data
        total = 0.0
        for b in range(nbatches):
            generator.manual_seed(cfg.seed * 1_000_003 + index[name] * 10_007 + b)
            z = torch.randn(original.shape, generator=generator, device=original.device, dtype=torch.float32)
            step = (cfg.ecoflap_eps * z).to(original.dtype)
            mod.weight.data = original + step
            plus = loss_fn(b)
            mod.weight.data = original - step
            minus = loss_fn(b)
            total += zeroth_order_grad(plus, minus, cfg.ecoflap_eps)
        mod.weight.data = original  # the untouched tensor itself: restored bit-exactly
        scores[name] = total

    on_device = replace(ctx, offload=False, batches=ctx.batches[:nbatches])
    for stack in ctx.stacks:
        if not stack.is_language_model:
            with torch.inference_mode():
                for name, mod in ctx.linears.items():
                    if name.startswith(stack.name + "."):
                        score(name, mod, lambda b: _full_loss(runner, batches[b], labels[b]))
            continue

        def on_block(i: int, layer: nn.Module, items: list[Captured], stack: Stack = stack) -> None:
            with torch.inference_mode():
                for local, mod in prunable_linears(layer).items():
                    score(f"{stack.name}.{i}.{local}", mod,
                          lambda b: _suffix_loss(ctx, stack, i, items[b], labels[b]))
                for item in items:
                    item.hidden = run_block(layer, item, device)

        sweep(on_device, stack, on_block, desc=f"ECoFLaP scores {stack.name}")
    if ctx.offload:
        model.to("cpu")
    groups: dict[str, list[str]] = defaultdict(list)
    for name in ctx.linears:
        groups[_block_of(name, ctx.stacks)].append(name)
    group_names = list(groups)
    numels = [sum(ctx.linears[n].weight.numel() for n in groups[g]) for g in group_names]
    group_scores = [sum(scores[n] for n in groups[g]) for g in group_names]
    total_keep = int(sum(numels) * (1 - cfg.sparsity))
    keep = keep_budget_allocation(group_scores, numels, total_keep, cfg.sparsity + cfg.ecoflap_max_delta,
                                  released_overshoot_bug=cfg.allocation_overshoot_bug)
    sparsity = sparsities_from_keep(keep, numels)
    ctx.result.details["ecoflap_block_scores"] = dict(zip(group_names, group_scores))
    return {n: s for g, s in zip(group_names, sparsity) for n in groups[g]}


def _block_of(name: str, stacks: list[Stack]) -> str:
    """`model.layers.3.self_attn.q_proj` -> `model.layers.3` (the decoder block a matrix belongs to)."""
    for stack in stacks:
        prefix = stack.name + "."
        if name.startswith(prefix):
            return prefix + name[len(prefix):].split(".", 1)[0]
    raise KeyError(name)


# ----------------------------------------------------------------------------------------------- DAS
class _RunningTerms:
    """Per-key running means of similarity terms over the samples in which each term exists.

    Sums stay on the device (no host sync per sample and module); NaN marks a term absent from a sample.
    """

    def __init__(self) -> None:
        self.sums: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
        self.counts: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)

    def add(self, key: str, terms: dict[str, torch.Tensor]) -> None:
        for term, value in terms.items():
            present = ~torch.isnan(value)
            v = torch.where(present, value.double(), torch.zeros((), dtype=torch.float64, device=value.device))
            if term in self.sums[key]:
                self.sums[key][term] += v
                self.counts[key][term] += present
            else:
                self.sums[key][term] = v
                self.counts[key][term] = present.long()

    def means(self, key: str) -> dict[str, float]:
        out = {}
        for term, total in self.sums[key].items():
            count = int(self.counts[key][term])
            if count:
                out[term] = float(total) / count
        return out


def _similarities(out: torch.Tensor, item: Captured, positive_only: bool) -> list[dict[str, torch.Tensor]]:
    from tamp.algorithms.amia import modality_similarities

    terms = []
    for b in range(out.shape[0]):
        x = F.normalize(out[b].float(), dim=-1)
        terms.append(modality_similarities(x, sample_masks(item, b, out.shape[1], out.device),
                                           positive_only=positive_only))
    return terms


def das(ctx: "Context") -> dict[str, float]:
    """Diversity-aware sparsity. released: each linear's output diversity, keep budget spread over matrices
    in proportion to it (floor 1 - (target + delta)); paper: each block's output diversity, sparsity
    inversely proportional to it."""
    from tamp.algorithms.allocations import das_scores
    from tamp.engine.sequential import sweep

    cfg = ctx.cfg
    running = _RunningTerms()
    block_members: dict[str, list[str]] = {}
    for stack in ctx.stacks:
        def observe(i: int, layer: nn.Module, items: list[Captured], stack: Stack = stack) -> None:
            block = f"{stack.name}.{i}"
            block_members[block] = _block_names(stack, i, layer)
            current: dict[str, Captured] = {}
            handles = []
            def hook(key: str, output: torch.Tensor) -> None:
                for terms in _similarities(output, current["item"], cfg.das_positive_only):
                    running.add(key, terms)

            if cfg.das_mode == "released":
                for name, mod in prunable_linears(layer).items():
                    handles.append(mod.register_forward_hook(
                        lambda m, a, o, key=f"{block}.{name}": hook(key, o)))
            with torch.inference_mode():
                for item in items:
                    current["item"] = item
                    item.hidden = run_block(layer, item, ctx.device)
                    if cfg.das_mode == "paper":
                        for t in _similarities(item.hidden, item, cfg.das_positive_only):
                            running.add(block, t)
            for h in handles:
                h.remove()

        sweep(ctx, stack, observe, desc=f"DAS diversity {stack.name}")
    target, max_s = cfg.sparsity, cfg.sparsity + cfg.das_max_delta
    if cfg.das_mode == "released":
        scores = das_scores({name: running.means(name) for name in ctx.linears})
        numels = {name: mod.weight.numel() for name, mod in ctx.linears.items()}
        ctx.result.details["das_scores"] = scores
        return das_allocation(scores, numels, target, max_s, mode="released",
                              released_overshoot_bug=cfg.allocation_overshoot_bug)
    scores = das_scores({block: running.means(block) for block in block_members})
    numels = {block: sum(ctx.linears[n].weight.numel() for n in names) for block, names in block_members.items()}
    ctx.result.details["das_scores"] = scores
    per_block = das_allocation(scores, numels, target, max_s, mode="per-layer-inverse")
    return {n: per_block[block] for block, names in block_members.items() for n in names}

"""ECoFLaP: zeroth-order block importance |(L(w + eps z) - L(w - eps z)) / 2 eps|, then the keep budget spread
over blocks in proportion to it (max sparsity target + delta), Wanda scoring inside each block.

For the language model's matrices the loss is computed from the perturbed block's captured input (one
sequential sweep), so each evaluation skips the unchanged blocks before it; other stacks (a pruned vision
tower) use whole-model forwards. The whole model must fit on the device.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from tamp.algorithms.allocations import keep_budget_allocation, sparsities_from_keep, zeroth_order_grad
from tamp.engine.block_pass import run_blocks
from tamp.engine.capture import Captured, move, run_block
from tamp.engine.context import Context, block_of
from tamp.methods.base import Allocation, Param, WeightMethod
from tamp.models.adapters import Stack, prunable_linears
from tamp.models.internals import final_norm


def lm_labels(batch: dict[str, torch.Tensor], media_ids: list[int]) -> torch.Tensor:
    """Next-token targets for the LM loss: media placeholder tokens and padding are ignored (-100)."""
    labels = batch["input_ids"].clone()
    if media_ids:
        labels[torch.isin(labels, torch.tensor(media_ids, device=labels.device))] = -100
    if "attention_mask" in batch:
        labels[batch["attention_mask"].to(labels.device) == 0] = -100
    return labels


def full_loss(model: nn.Module, batch: dict[str, torch.Tensor], labels: torch.Tensor) -> float:
    return float(model(**batch, labels=labels, use_cache=False).loss)


def _suffix_loss(ctx: Context, stack: Stack, start: int, item: Captured, labels: torch.Tensor) -> float:
    """The model's LM loss computed from block `start`'s captured input: blocks start.., final norm, head.

    Equal to the whole-model loss (the blocks before `start` are not perturbed), at a fraction of the cost.
    """
    hidden = item.hidden
    for layer in stack.layers[start:]:
        hidden = run_block(layer, replace(item, hidden=hidden), ctx.device)
    norm = final_norm(ctx.model, stack.name)
    logits = ctx.adapter.runner(ctx.model).get_output_embeddings()(norm(hidden)).float()
    return float(F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten().to(logits.device),
                                 ignore_index=-100))


def allocate(ctx: Context) -> dict[str, float]:
    cfg, model, device = ctx.cfg, ctx.model, ctx.device
    runner = ctx.adapter.runner(model)
    if ctx.offload:
        model.to(device)
    media_ids = [i for ids in ctx.adapter.media_token_ids.values() for i in ids]
    nbatches, seen = 0, 0
    for batch in ctx.batches:
        if seen >= cfg.param("ecoflap_samples"):
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
            step = (cfg.param("ecoflap_eps") * z).to(original.dtype)
            mod.weight.data = original + step
            plus = loss_fn(b)
            mod.weight.data = original - step
            minus = loss_fn(b)
            total += zeroth_order_grad(plus, minus, cfg.param("ecoflap_eps"))
        mod.weight.data = original  # the untouched tensor itself: restored bit-exactly
        scores[name] = total

    on_device = replace(ctx, offload=False, batches=ctx.batches[:nbatches])
    for stack in ctx.stacks:
        if not stack.is_language_model:
            with torch.inference_mode():
                for name, mod in ctx.linears.items():
                    if name.startswith(stack.name + "."):
                        score(name, mod, lambda b: full_loss(runner, batches[b], labels[b]))
            continue

        def on_block(i: int, layer: nn.Module, items: list[Captured], stack: Stack = stack) -> None:
            with torch.inference_mode():
                for local, mod in prunable_linears(layer).items():
                    score(f"{stack.name}.{i}.{local}", mod,
                          lambda b: _suffix_loss(ctx, stack, i, items[b], labels[b]))
                for item in items:
                    item.hidden = run_block(layer, item, device)

        run_blocks(on_device, stack, on_block, desc=f"ECoFLaP scores {stack.name}")
    if ctx.offload:
        model.to("cpu")
    groups: dict[str, list[str]] = defaultdict(list)
    for name in ctx.linears:
        groups[block_of(name, ctx.stacks)].append(name)
    group_names = list(groups)
    numels = [sum(ctx.linears[n].weight.numel() for n in groups[g]) for g in group_names]
    group_scores = [sum(scores[n] for n in groups[g]) for g in group_names]
    total_keep = int(sum(numels) * (1 - cfg.sparsity))
    keep = keep_budget_allocation(group_scores, numels, total_keep, cfg.sparsity + cfg.param("ecoflap_max_delta"),
                                  released_overshoot_bug=cfg.param("allocation_overshoot_bug"))
    sparsity = sparsities_from_keep(keep, numels)
    ctx.result.details["ecoflap_block_scores"] = dict(zip(group_names, group_scores))
    return {n: s for g, s in zip(group_names, sparsity) for n in groups[g]}


# shared with DAS, whose released code copies this keep-budget fix-up
OVERSHOOT_BUG = Param("allocation_overshoot_bug", bool, False,
                      "True: the released keep-budget fix-up that adds instead of removing")
PARAMS = (
    Param("ecoflap_eps", float, 1e-3, "perturbation size of the zeroth-order estimate"),
    Param("ecoflap_samples", int, 128, "calibration samples the loss differences use (one noise draw per batch)"),
    Param("ecoflap_max_delta", float, 0.1, "no block goes above target + delta sparsity"),
    OVERSHOOT_BUG,
)

METHOD = WeightMethod(
    name="ecoflap", label="ECoFLaP", order=5, summary="zeroth-order block importance -> keep budget, Wanda scoring",
    params=PARAMS, allocation="ecoflap", scoring="wanda", allocate=Allocation(allocate),
)

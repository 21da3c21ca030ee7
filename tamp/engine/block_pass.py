"""The one sequential loop: capture a stack's first-block inputs, then visit its blocks in order.

Pruning and every allocation that observes the dense model (OWL, DAS, ECoFLaP) go through `run_blocks`. In offload
mode only the current block lives on the accelerator; the captured activations stay there (every block needs
them next).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from tamp.engine.capture import Captured, capture_block_inputs
from tamp.engine.context import Context
from tamp.models.adapters import Stack

# (block index, block, captured items) -> None; must leave the block's outputs in item.hidden
BlockFn = Callable[[int, nn.Module, list[Captured]], None]


def _place_for_capture(model: nn.Module, stack: Stack, device: torch.device, offload: bool) -> None:
    """Offload mode: everything but the stack's blocks goes to the device (embeddings, vision tower ...)."""
    if not offload:
        return
    blocks = {id(m) for m in stack.layers}
    for module in model.modules():
        if id(module) in blocks:
            continue
        for p in module.parameters(recurse=False):
            p.data = p.data.to(device)
        for b_name, b in module.named_buffers(recurse=False):
            module._buffers[b_name] = b.to(device)
    for layer in stack.layers:
        layer.to("cpu")


def run_blocks(ctx: Context, stack: Stack, on_block: BlockFn, desc: str) -> None:
    """Capture the stack's inputs, then call `on_block` for each block in order."""
    with ctx.timer("capture"):
        _place_for_capture(ctx.model, stack, ctx.device, ctx.offload)
        masks_fn = (lambda b: ctx.adapter.token_masks(b["input_ids"])) if stack.is_language_model else None
        items = capture_block_inputs(ctx.adapter.runner(ctx.model), stack.layers[0], ctx.batches, ctx.device,
                                     ctx.device, masks_fn,
                                     desc=f"capture {stack.name}")
        if ctx.offload:
            ctx.model.to("cpu")
    for i, layer in enumerate(tqdm(stack.layers, desc=desc, unit="block")):
        if ctx.offload:
            layer.to(ctx.device)
        on_block(i, layer, items)
        if ctx.offload:
            layer.to("cpu")
    del items


def sample_masks(item: Captured, b: int, length: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Modality masks of sample `b` of a captured batch; no input ids (vision stack) -> all text."""
    masks = {m: mask[b].to(device) for m, mask in item.token_masks.items()}
    return masks or {"text": torch.ones(length, dtype=torch.bool, device=device)}

"""Capture what the model feeds its first block, for every calibration batch.

A forward pre-hook on block 0 records the block's positional and keyword arguments exactly as the model
built them (position embeddings, causal mask, 3-D mrope position ids, cu_seqlens ...) and then stops the
forward, so nothing past the embeddings / vision tower runs. Replaying those arguments runs any block.
Where the model adds features between its first blocks (Qwen3-VL's DeepStack: vision features added to the visual
tokens after each of the first blocks), they are captured too and `run_block` adds them after the same blocks.
Where blocks of different attention kinds get different arguments (Gemma 3: sliding-window blocks their windowed
mask and local rotary, global blocks the full mask and global rotary), the forward goes on, every block up to the
first of the last kind passing its input through untouched, and each kind's arguments are kept; `run_block` gives
a block those of its kind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from tamp.models.internals import DeepstackStep


class _StopForward(Exception):
    """Raised by the capture hook once block 0's inputs are recorded."""


@dataclass
class Deepstack:
    """What the text model adds to the visual tokens after its first blocks (block k: `features[k]`)."""

    mask: torch.Tensor  # [B, T] the visual tokens
    features: list[torch.Tensor]  # per block: [visual tokens, D]
    layers: nn.ModuleList  # the blocks, to tell which one ran
    step: DeepstackStep  # the model's own addition


@dataclass
class Captured:
    """One calibration batch's inputs to the current block (replaced by its outputs after each block)."""

    hidden: torch.Tensor
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    token_masks: dict[str, torch.Tensor] = field(default_factory=dict)  # modality -> bool [B, T]
    deepstack: Deepstack | None = None
    # models mixing attention kinds: kind -> the keyword arguments its first block got; `kinds[i]`: block i's kind
    kwargs_by_kind: dict[str, dict[str, Any]] = field(default_factory=dict)
    kinds: list[str] = field(default_factory=list)
    layers: nn.ModuleList | None = None  # the stack the arguments are for (to find a block's index)

    def block_kwargs(self, index: int) -> dict[str, Any]:
        """The keyword arguments block `index` runs on: its kind's where kinds differ, else block 0's."""
        if self.kwargs_by_kind and index < len(self.kinds):
            return self.kwargs_by_kind.get(self.kinds[index], self.kwargs)
        return self.kwargs


def move(obj: Any, device: torch.device | str) -> Any:
    """Move every tensor inside nested tuples / lists / dicts to `device` (other objects unchanged)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, tuple):
        return tuple(move(o, device) for o in obj)
    if isinstance(obj, list):
        return [move(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: move(v, device) for k, v in obj.items()}
    return obj


def capture_block_inputs(
    model: nn.Module,
    first_block: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    device: torch.device,
    store_device: torch.device,
    token_masks: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
    desc: str = "capture",
) -> list[Captured]:
    """Run the model on each batch until `first_block` and keep its inputs on `store_device`."""
    # transformers' internals: only when capturing, not for the engine's types
    from tamp.models.internals import deepstack_inputs, deepstack_step, layer_kinds, replace_forward, restore_forward

    captured: list[Captured] = []
    slot: dict[str, Any] = {}
    owner = next((m for m in model.modules()
                  if isinstance(getattr(m, "layers", None), nn.ModuleList) and any(b is first_block for b in m.layers)),
                 None)
    step = deepstack_step(owner) if owner is not None else None
    kinds = layer_kinds(owner) if owner is not None else None
    blocks = list(owner.layers) if owner is not None else [first_block]
    # the first block of each attention kind, when the stack mixes kinds; else only block 0 is read
    firsts = {} if not kinds or len(set(kinds)) < 2 else {kind: kinds.index(kind) for kind in dict.fromkeys(kinds)}
    last = max(firsts.values(), default=0)

    def on_owner(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        found = deepstack_inputs(kwargs)
        if found is not None and step is not None and owner is not None:
            slot["deepstack"] = Deepstack(move(found[0], store_device), move(found[1], store_device), owner.layers,
                                          step)

    def arguments(kwargs: dict[str, Any]) -> dict[str, Any]:
        kw = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "past_key_value", "hidden_states")}
        if "use_cache" in kw:
            kw["use_cache"] = False
        return move(kw, store_device)

    def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        slot["value"] = Captured(move(hidden, store_device), move(tuple(args[1:]), store_device), arguments(kwargs),
                                 deepstack=slot.get("deepstack"))
        if not firsts:
            raise _StopForward

    def kind_hook(index: int) -> Callable[..., None]:
        def read(_module: nn.Module, _args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            slot.setdefault("kinds", {})[kinds[index]] = arguments(kwargs)
            if index == last:
                raise _StopForward
        return read

    def passthrough(*args: Any, **kwargs: Any) -> Any:
        return args[0] if args else kwargs["hidden_states"]

    handle = first_block.register_forward_pre_hook(hook, with_kwargs=True)
    kind_handles = [blocks[i].register_forward_pre_hook(kind_hook(i), with_kwargs=True) for i in firsts.values()]
    skipped = blocks[:last] if firsts else []  # nothing of theirs runs: only the arguments of later kinds are read
    for block in skipped:
        replace_forward(block, passthrough)
    owner_handle = owner.register_forward_pre_hook(on_owner, with_kwargs=True) if step is not None else None
    try:
        with torch.inference_mode():
            for batch in tqdm(list(batches), desc=desc, leave=False):
                inputs = move(batch, device)
                slot.clear()
                try:
                    model(**inputs, use_cache=False)
                except _StopForward:
                    pass
                if "value" not in slot:
                    raise RuntimeError("the model never reached its first block; is this batch valid for the model?")
                item = slot["value"]
                if firsts:
                    if set(slot.get("kinds", {})) != set(firsts):
                        raise RuntimeError("the model never reached the first block of each attention kind")
                    item.kwargs_by_kind, item.kinds = slot["kinds"], list(kinds or ())
                    item.layers = owner.layers if owner is not None else None
                if token_masks is not None and "input_ids" in batch:
                    item.token_masks = {k: v.to(store_device) for k, v in token_masks(batch).items()}
                captured.append(item)
    finally:
        handle.remove()
        for kind_handle in kind_handles:
            kind_handle.remove()
        for block in skipped:
            restore_forward(block)
        if owner_handle is not None:
            owner_handle.remove()
    return captured


def run_block(block: nn.Module, item: Captured, device: torch.device) -> torch.Tensor:
    """Run one block on one captured batch; returns the block's hidden-state output (with what the model adds
    after this block, DeepStack's features)."""
    index = index_of(block, item)
    kwargs = item.block_kwargs(index) if index is not None else item.kwargs
    out = block(move(item.hidden, device), *move(item.args, device), **move(kwargs, device))
    if isinstance(out, (tuple, list)):
        out = out[0]
    added = item.deepstack
    if added is not None and index is not None and index < len(added.features):
        out = added.step(out, added.mask, added.features[index])
    return out


def index_of(block: nn.Module, item: Captured) -> int | None:
    """The block's position in its stack, where the captured batch needs it (DeepStack, attention kinds)."""
    layers = item.deepstack.layers if item.deepstack is not None else item.layers
    if layers is None:
        return None
    return next((k for k, layer in enumerate(layers) if layer is block), None)

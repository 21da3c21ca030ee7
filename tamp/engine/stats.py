"""Per-linear input statistics, accumulated in fp32 by forward hooks while a block runs.

Without token selection, linears that read the very same input tensor (q/k/v; gate/up) share one
accumulator, detected from tensor identity on the first batch: two thirds less Hessian work on
attention. With token selection (AMIA), hooks only buffer each linear's input and output; the selector
runs once the whole block has run on the batch (it needs the block's attention, which q/k/v precede).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from tamp.engine.capture import Captured


class TokenSelector(Protocol):
    """Chooses, per linear, which input rows (tokens) feed the statistics for one batch."""

    def __call__(self, buffers: dict[str, tuple[torch.Tensor, torch.Tensor]], item: Captured,
                 attention: torch.Tensor | None) -> dict[str, torch.Tensor]: ...

    needs_attention: bool


class InputStats:
    """Running sums over calibration tokens: sum_j x_j^2 (Wanda) and/or X^T X (SparseGPT)."""

    def __init__(self, d_in: int, device: torch.device, need_sq: bool, need_hessian: bool) -> None:
        self.col_sq = torch.zeros(d_in, dtype=torch.float32, device=device) if need_sq else None
        self.hessian = torch.zeros(d_in, d_in, dtype=torch.float32, device=device) if need_hessian else None
        self.ntokens = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        self.ntokens += x.shape[0]
        if self.col_sq is not None:
            self.col_sq += (x * x).sum(0)
        if self.hessian is not None:
            self.hessian.addmm_(x.t(), x)


class StatsCollector:
    """Hooks every linear of one block. Per batch: `next_batch(item)`, run the block, `end_batch(attention)`."""

    def __init__(self, linears: dict[str, nn.Linear], need_sq: bool, need_hessian: bool,
                 selector: TokenSelector | None = None) -> None:
        self.linears = linears
        self.need_sq, self.need_hessian = need_sq, need_hessian
        self.selector = selector
        self.stats: dict[str, InputStats] = {}
        self.batch_index = -1
        self.item: Captured | None = None
        self.selected_tokens = 0
        self.seen_tokens = 0
        self._buffers: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._first_inputs: dict[str, torch.Tensor] = {}  # batch 0 only; kept alive so addresses are not reused
        self._shared: dict[str, str] = {}  # follower -> leader
        self._handles = {name: mod.register_forward_hook(self._hook(name)) for name, mod in linears.items()}

    def _add(self, name: str, x: torch.Tensor) -> None:
        if name not in self.stats:
            self.stats[name] = InputStats(x.shape[-1], x.device, self.need_sq, self.need_hessian)
        self.stats[name].add(x)

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            x = args[0].detach()
            if self.selector is not None:
                self._buffers[name] = (x, output.detach())
                return
            if self.batch_index == 0:
                self._first_inputs[name] = x
            self._add(name, x)

        return hook

    def next_batch(self, item: Captured | None = None) -> None:
        self.batch_index += 1
        self.item = item
        if self.batch_index == 1 and self.selector is None:
            self._share_identical_inputs()

    def end_batch(self, attention: torch.Tensor | None = None) -> None:
        """With a selector: choose tokens per linear now that the whole block has run."""
        if self.selector is None:
            return
        assert self.item is not None
        chosen = self.selector(self._buffers, self.item, attention)
        for name, rows in chosen.items():
            self._add(name, rows)
            self.selected_tokens += rows.shape[0]
            self.seen_tokens += self._buffers[name][0].reshape(-1, rows.shape[-1]).shape[0]
        self._buffers.clear()

    def _share_identical_inputs(self) -> None:
        """After batch 0: linears that saw the same input tensor keep one accumulator (the first's)."""
        leaders: dict[tuple, str] = {}
        for name in self.linears:
            x = self._first_inputs.get(name)
            if x is None:
                continue
            key = (x.data_ptr(), tuple(x.shape), x.stride(), x.dtype)
            if key in leaders:
                self._shared[name] = leaders[key]
                self._handles.pop(name).remove()
            else:
                leaders[key] = name
        self._first_inputs.clear()

    def result(self, name: str) -> InputStats:
        return self.stats[self._shared.get(name, name)]

    def remove(self) -> None:
        for handle in self._handles.values():
            handle.remove()
        self._handles.clear()
        self._buffers.clear()

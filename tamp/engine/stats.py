"""Per-linear input statistics, accumulated in fp32 by forward hooks while a block runs.

Linears that read the very same input tensor (q/k/v; gate/up) share one accumulator: it is detected
from tensor identity on the first batch, which saves two thirds of the Hessian work on attention.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

# (module name, module input [..., d_in], module output, current batch index) -> the rows of x to count
TokenSelector = Callable[[str, torch.Tensor, torch.Tensor, int], torch.Tensor]


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
    """Hooks every linear of one block; call `next_batch()` before running each captured batch."""

    def __init__(
        self,
        linears: dict[str, nn.Linear],
        need_sq: bool,
        need_hessian: bool,
        selector: TokenSelector | None = None,
    ) -> None:
        self.linears = linears
        self.need_sq, self.need_hessian = need_sq, need_hessian
        self.selector = selector
        self.stats: dict[str, InputStats] = {}
        self.batch_index = -1
        self._first_inputs: dict[str, torch.Tensor] = {}  # batch 0 only; kept alive so addresses are not reused
        self._handles: dict[str, torch.utils.hooks.RemovableHandle] = {
            name: mod.register_forward_hook(self._hook(name)) for name, mod in linears.items()
        }
        self._shared: dict[str, str] = {}  # follower -> leader

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            x = args[0]
            if self.batch_index == 0:
                self._first_inputs[name] = x
            if self.selector is not None:
                x = self.selector(name, x, output, self.batch_index)
            if name not in self.stats:
                self.stats[name] = InputStats(x.shape[-1], x.device, self.need_sq, self.need_hessian)
            self.stats[name].add(x.detach())

        return hook

    def next_batch(self) -> None:
        self.batch_index += 1
        if self.batch_index == 1 and self.selector is None:
            self._share_identical_inputs()

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

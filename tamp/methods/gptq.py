"""GPTQ (Frantar et al., ICLR 2023): quantize columns left to right, spreading each one's rounding error over the
columns still to come with the inverse Hessian of the layer's inputs (released code: IST-DASLab/gptq).

Defaults as released and as llm-compressor's W4A16 scheme: 4 bits, groups of 128 columns, symmetric, 1% damping,
128-column lazy blocks, no act-order. After a weight method, the pruned weights take no error and stay zero
(llm-compressor's preserve_zeros); after SparseGPT, pruning and rounding run in SparseGPT's one pass with the same
Hessian (the SparseGPT paper's joint 50% + 4-bit; its blocksize and percdamp then apply). With a token-selecting
weight method (TAMP's AMIA), the Hessian comes from the tokens it selects, as the weight method's statistics do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from tamp.algorithms.quantize import Quantized, gptq_quantize, sparsegpt_quantize
from tamp.engine.stats import InputStats
from tamp.methods.base import GRID_PARAMS, Needs, Param, Quantize, QuantMethod

if TYPE_CHECKING:
    from tamp.config import PruneConfig


def quantize(weight: torch.Tensor, stats: InputStats | None, pruned: torch.Tensor | None,
             params: dict[str, Any]) -> Quantized:
    assert stats is not None and stats.hessian is not None
    return gptq_quantize(weight, stats.hessian, params["quant_bits"], params["quant_group"], params["quant_sym"],
                         params["gptq_act_order"], params["gptq_static_groups"], params["gptq_blocksize"],
                         params["gptq_percdamp"], pruned=pruned)


def with_sparsegpt(weight: torch.Tensor, stats: InputStats | None, sparsity: float, cfg: PruneConfig,
                   params: dict[str, Any]) -> tuple[Quantized, torch.Tensor]:
    """SparseGPT's pass with the grid: pruned and rounded column by column with one Hessian (SparseGPT's own
    blocksize and percdamp)."""
    assert stats is not None and stats.hessian is not None
    n, m = cfg.nm if cfg.nm is not None else (0, 0)
    return sparsegpt_quantize(weight, stats.hessian, sparsity, n, m, params["quant_bits"], params["quant_group"],
                              params["quant_sym"], cfg.param("blocksize"), cfg.param("percdamp"))


PARAMS = (
    *GRID_PARAMS,
    Param("gptq_act_order", bool, False, "quantize columns by decreasing Hessian diagonal (the release's --act-order)"),
    Param("gptq_static_groups", bool, False, "fit every group's grid before any column moves (--static-groups)"),
    Param("gptq_blocksize", int, 128, "columns per lazy-update block",
          check=lambda v: f"gptq_blocksize must be at least 1, got {v}" if v < 1 else None),
    Param("gptq_percdamp", float, 0.01, "dampening, as a fraction of the Hessian's mean diagonal",
          check=lambda v: f"gptq_percdamp must be positive (the release uses 0.01), got {v}" if v <= 0 else None),
)

METHOD = QuantMethod(
    name="gptq", label="GPTQ", order=61, summary="round column by column, the error spread by the inverse Hessian",
    params=PARAMS, quantize=Quantize(quantize, Needs(calibration=True, hessian=True), joint={"sparsegpt": with_sparsegpt}),
)

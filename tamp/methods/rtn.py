"""RTN: round each weight to the nearest point of its row's (and group's) grid; no calibration data.

The baseline every quantization paper starts from (GPTQ's tables call it RTN). Pruned weights are zero, which is on
every grid, so they stay zero. The grid is the released GPTQ's min-max grid (tamp.algorithms.quantize).
"""

from __future__ import annotations

from typing import Any

import torch

from tamp.algorithms.quantize import Quantized, rtn_quantize
from tamp.engine.stats import InputStats
from tamp.methods.base import GRID_PARAMS, Quantize, QuantMethod


def quantize(weight: torch.Tensor, stats: InputStats | None, pruned: torch.Tensor | None,
             params: dict[str, Any]) -> Quantized:
    return rtn_quantize(weight, params["quant_bits"], params["quant_group"], params["quant_sym"])


METHOD = QuantMethod(
    name="rtn", label="RTN", order=60, summary="round every weight to its group's integer grid (no data)",
    params=GRID_PARAMS, quantize=Quantize(quantize),
)

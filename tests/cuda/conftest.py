"""The device of the `cuda`-marked tests: the GPU, or a skip with the reason when none is visible.

`make gpu-check` runs these tests on the GPU machine; its CPU dry run (`make gpu-check DRY=1`, part of `make test`)
sets TAMP_CUDA_TESTS_ON_CPU=1 so that the very same tests run on the CPU there, against themselves."""

from __future__ import annotations

import os

import pytest
import torch

ON_CPU_ENV = "TAMP_CUDA_TESTS_ON_CPU"
NO_CUDA_REASON = ("needs a CUDA device (run on one by `make gpu-check`; `make gpu-check DRY=1` runs them on the CPU "
                  "as part of `make test`)")


@pytest.fixture(scope="session")
def device() -> torch.device:
    """cuda when visible; cpu when the dry run asks for it; else the test is skipped with the reason."""
    if os.environ.get(ON_CPU_ENV) == "1":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        pytest.skip(NO_CUDA_REASON)
    # the comparisons with the CPU are in float32: no TF32 in matmuls or the vision tower's convolutions
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return torch.device("cuda")

"""The one device picker: what cpu, cuda, cuda:N and auto mean, for tamp prune, harness run and the wrappers.

tamp prune, harness run (which checks --device before pruning) and the lmms-eval wrappers each used to decide
"auto" and "is CUDA visible" on their own. They all ask `choose_device` now, so the rule cannot drift apart.
Each still words a refusal after the option its user typed: tamp's and harness's --device here (`pick_device`),
lmms-eval's device= model argument in harness.wrappers.common.
"""

from __future__ import annotations

import os

import torch

from tamp.errors import TampError

# what leaves the choice to us: the CLI's default, and an unset lmms-eval device (None, or "device=")
AUTO: tuple[str | None, ...] = (None, "", "auto")


class NoCudaDevice(TampError):
    """CUDA was asked for and no CUDA device is visible; callers word it for their own option."""

    def __init__(self, device: str) -> None:
        super().__init__(f"device '{device}' requested but no CUDA device is visible")
        self.device = device


def choose_device(device: str | None, per_process: bool = False) -> str:
    """The device to use for `device`: auto -> CUDA when visible, else cpu; an explicit name is returned as given.

    ``per_process``: auto picks this process's GPU, ``cuda:$LOCAL_RANK`` (one GPU per process under
    accelerate/torchrun); otherwise plain ``cuda``, which is what pruning.json records as the device.
    Raises NoCudaDevice when the name asks for CUDA and none is visible.
    """
    if device in AUTO:
        if not torch.cuda.is_available():
            return "cpu"
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if per_process else "cuda"
    device = str(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise NoCudaDevice(device)
    return device


def pick_device(device: str) -> torch.device:
    """`--device` of tamp prune and harness run: cpu, cuda, cuda:N or auto, anything else refused."""
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise TampError(f"unknown --device '{device}'; use cpu, cuda, cuda:N or auto")
    try:
        return torch.device(choose_device(device))
    except NoCudaDevice:
        raise TampError("--device cuda requested but no CUDA device is visible; use --device cpu") from None

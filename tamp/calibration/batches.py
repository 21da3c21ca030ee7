"""Calibration as a list of model-input batches, plus a content fingerprint of exactly what was fed."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Calibration:
    """Batches ready for `model(**batch)`, and what describes them in pruning.json."""

    batches: list[dict[str, torch.Tensor]]
    spec: str
    fingerprint: str
    samples: int
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


def fingerprint(batches: list[dict[str, torch.Tensor]], spec: str) -> str:
    """sha256 over every tensor fed to the model (keys, dtypes, shapes, bytes): equal iff the data is equal."""
    h = hashlib.sha256(spec.encode())
    for batch in batches:
        for key in sorted(batch):
            value = batch[key]
            h.update(key.encode())
            if isinstance(value, torch.Tensor):
                t = value.detach().cpu().contiguous()
                h.update(f"{t.dtype}{tuple(t.shape)}".encode())
                h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            else:
                h.update(repr(value).encode())
    return h.hexdigest()

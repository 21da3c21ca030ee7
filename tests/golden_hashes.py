"""Golden hashes of pruned weights and artifact keys (tests/golden/pruning_hashes.json): shared by the tests that
prune, so that refactors are proven to leave behaviour bit-identical. UPDATE_GOLDEN=1 re-records, which is only
right when a change of behaviour is intended and said so in its commit."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

GOLDEN = Path(__file__).parent / "golden" / "pruning_hashes.json"


def tensors_digest(tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """sha256 over every tensor (name, dtype, shape, bytes) in name order; plus, to say which matrix moved when
    one does, a short hash of each matrix holding exact zeros (the pruned ones: random or trained weights have
    none)."""
    total, per_tensor = hashlib.sha256(), {}
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous()
        h = hashlib.sha256(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        total.update(h.digest())
        if t.dim() == 2 and bool((t == 0).any()):
            per_tensor[name] = h.hexdigest()[:12]
    return {"all": total.hexdigest(), "tensors": per_tensor}


def artifact_digest(artifact: Path) -> dict[str, Any]:
    """tensors_digest of every tensor in the artifact's safetensors files, as stored."""
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(artifact.glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors_digest(tensors)


def check_golden(section: str, case: str, got: Any) -> None:
    """Compare with the recorded value, or record it under UPDATE_GOLDEN=1."""
    data = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
    if os.environ.get("UPDATE_GOLDEN"):
        data.setdefault(section, {})[case] = got
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        tmp = GOLDEN.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, GOLDEN)
        return
    want = data.get(section, {}).get(case)
    assert want is not None, f"{section} {case} has no golden value; record it with UPDATE_GOLDEN=1"
    if isinstance(got, dict) and "tensors" in got and got != want:
        changed = sorted(n for n in set(got["tensors"]) | set(want["tensors"])
                         if got["tensors"].get(n) != want["tensors"].get(n))
        pytest.fail(f"{case}: the weights differ from the golden hashes; pruned matrices that differ: "
                    f"{len(changed)}, e.g. {changed[:5]}")
    assert got == want, f"{section} {case}: {got} != golden {want}"

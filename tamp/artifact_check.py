"""Check that loaded weights carry the sparsity an artifact's pruning.json records.

pruning.json lists every pruned matrix with its exact zero count. Recounting them after loading
catches an artifact whose weights were replaced or edited after pruning, and a loading path that
silently dropped the zeros (e.g. a wrong dtype cast or a different checkpoint). It lives beside the
format it checks (tamp.artifacts); the lmms-eval wrappers call it and turn a SparsityMismatch into
their refusal (harness.errors.ArtifactRefused).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tamp.artifacts import (
    PER_MATRIX,
    PRUNING_JSON,
    PruningJsonError,
    PruningJsonForeign,
    PruningJsonInvalid,
    PruningJsonMissing,
    TransformInvalid,
    read_pruning_json,
)
from tamp.errors import TampError

# extra zeros tolerated per matrix (fraction of its elements): a lower-precision load can flush tiny values
EXTRA_ZEROS_TOLERANCE = 1e-3


class SparsityMismatch(TampError):
    """The weights do not carry the sparsity pruning.json records (or its record cannot be read)."""


@dataclass
class SparsityCheck:
    """Outcome of one check: totals as recounted, and what pruning.json said."""

    artifact: str
    has_pruning_json: bool
    matrices: int = 0
    zeros: int = 0
    numel: int = 0
    recorded_zeros: int = 0
    mismatches: list[str] = field(default_factory=list)

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0

    @property
    def recorded_sparsity(self) -> float:
        return self.recorded_zeros / self.numel if self.numel else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"artifact": self.artifact, "has_pruning_json": self.has_pruning_json, "matrices": self.matrices,
                "zeros": self.zeros, "numel": self.numel, "sparsity": self.sparsity,
                "recorded_sparsity": self.recorded_sparsity, "mismatches": self.mismatches}


def read_pruning_info(artifact: str | Path) -> dict[str, Any] | None:
    """pruning.json of a local artifact directory, None when there is none (a dense checkpoint or an HF id).

    Read before the weights are loaded, so a broken record fails first; raises SparsityMismatch, or TransformInvalid
    for a `transform` section that does not fit its schema (no sparsity check can help there).
    """
    if not Path(artifact).is_dir():
        return None
    try:
        return read_pruning_json(artifact, PER_MATRIX)
    except PruningJsonMissing:
        return None
    except PruningJsonInvalid as exc:
        cause = exc.cause
        detail = f"{cause.msg} at line {cause.lineno}" if isinstance(cause, json.JSONDecodeError) else str(cause)
        raise SparsityMismatch(f"{exc.file} is not valid JSON ({detail})") from None
    except PruningJsonForeign as exc:
        raise SparsityMismatch(f"{exc.file} has no 'per_matrix' table: not a tamp artifact's {PRUNING_JSON}") from None
    except TransformInvalid:
        raise
    except PruningJsonError as exc:
        raise SparsityMismatch(str(exc)) from None


@torch.no_grad()
def verify_sparsity(model: nn.Module, artifact: str | Path, info: dict[str, Any] | None) -> SparsityCheck:
    """Recount the zeros of every matrix pruning.json lists; raise SparsityMismatch on any difference."""
    check = SparsityCheck(str(artifact), info is not None)
    if info is None:
        return check
    params = dict(model.named_parameters())
    for name, rec in info["per_matrix"].items():
        weight = params.get(f"{name}.weight")
        if weight is None:
            check.mismatches.append(f"{name}: listed in {PRUNING_JSON} but not in the loaded model")
            continue
        if list(weight.shape) != list(rec["shape"]):
            check.mismatches.append(f"{name}: shape {list(weight.shape)}, {PRUNING_JSON} records {rec['shape']}")
            continue
        zeros = int((weight == 0).sum())
        recorded = int(rec["zeros"])
        check.matrices += 1
        check.zeros += zeros
        check.numel += weight.numel()
        check.recorded_zeros += recorded
        if zeros < recorded or zeros > recorded + EXTRA_ZEROS_TOLERANCE * weight.numel():
            check.mismatches.append(f"{name} has {zeros} zeros ({zeros / weight.numel():.1%}), {PRUNING_JSON} "
                                    f"records {recorded} ({recorded / weight.numel():.1%})")
    if check.mismatches:
        raise SparsityMismatch(
            f"artifact {artifact}: the weights do not carry the sparsity {PRUNING_JSON} records "
            f"({len(check.mismatches)} of {len(info['per_matrix'])} matrices differ; first: {check.mismatches[0]}). "
            "It was changed after pruning or loaded from another checkpoint")
    return check

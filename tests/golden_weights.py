"""Golden checks of pruned weights that hold on any CPU and still catch a change of behaviour.

Floating-point results of matmuls, Cholesky factorisations and the like differ in their last bits between CPU
kernels (AVX2 / AVX-512, MKL code paths, thread counts), so hashing weight bytes tests the machine, not the code.
What is recorded (tests/golden/pruned_weights.json) and how it is compared:

* **Layout**: tensor names, dtypes and shapes; exact.
* **Untouched values**: every surviving weight of a method that only zeroes weights, and every tensor that holds
  no zero, must equal the dense model's bit for bit (no arithmetic touches them; checked against the dense model
  built in the same run, so this holds on any CPU).
* **Masks** (which weights are zero), per pruned matrix: the rows are dealt into ``BUCKETS`` buckets (row i into
  bucket i mod ``BUCKETS``) and each bucket's packed zero pattern is hashed. A mask entry can flip on a near-tie
  of the selection score (a Wanda / SparseGPT score, or an allocation, equal up to rounding); one flip changes one
  bucket, so a matrix may differ in at most ``FLIPPED_BUCKETS`` buckets, and a case in at most
  ``FLIPPED_MATRICES`` matrices. A real change (another lambda, damping, statistic) moves most rows of most
  matrices. The zero count of each matrix is compared exactly.
* **Cascades** (``flip_share``, SmolLM2): a real model of 30 layers pruned sequentially feeds each layer the
  pruned outputs of the ones before, so one near-tie flip in layer 11 moves the inputs of every later layer and
  their near-ties: measured across AVX-512 and AVX2 kernels, Wanda's masks differ in 2 weights of layer 11 and
  0.45% of layer 29's; SparseGPT's (whose OBS updates amplify rounding through ill-conditioned Hessians) in 8
  weights of layer 0 and up to 3.3% of a later layer's, with values 16-23% apart (relative Frobenius norm) while
  the rows' norms stay within 0.2%. There the mask bits at ``SAMPLE`` fixed positions per matrix are recorded
  and the share of them that differ may not pass the test's ``flip_share`` in any matrix; of changed values,
  the per-bucket norms are compared to ``CASCADE_NORM_RTOL`` of the matrix's norm. This rule catches a changed
  statistic, scope or calibration, not a subtle change of SparseGPT's arithmetic on a deep model: that is the
  tiny cases' job, where the near-tie rule holds.
* **Changed values** (SparseGPT's OBS updates): per bucket, the Frobenius norm and a projection on fixed +-1 signs
  (drawn from integers, so the same everywhere), in float64. In buckets whose mask matches, both must agree with
  the record to ``VALUE_RTOL`` of the bucket's norm: the updates are a triangular solve whose rounding moved
  them by at most 2e-5 (relative, per matrix, across AVX-512 / AVX2 / no vector kernels / one thread on the tiny
  models), while a change of the damping from 1% to 2% moves them by 2e-2 (median over the matrices, rows whose
  mask did not change; tiny LLaVA-NeXT). A row whose mask flipped gets different updates for the rest of the row, so its
  bucket's values are not compared (the flip budget above bounds how many).
* **AMIA's token selection** (TAMP, AMIA) is a kNN graph, a greedy argmax and a continuous stopping rule; on
  the random tiny models the attention scores it ranks are nearly uniform (the top scores lie within ~1e-5 of
  each other) and some tokens nearly coincide, so some selections are decided by rounding, and one token more
  or less moves the Wanda statistic of every weight of the module. Every module's selection is recorded; a live
  selection that differs is replaced by the recorded one (``AmiaReplay``), so the near-tie does not cascade and
  the rest of the pipeline is compared as above, and at most ``AMIA_MAX_DIFFERING`` of a case's selections may
  differ. Measured: with AVX2 kernels on an AVX-512 machine 2-11 of 112 selections differ (LLaVA, LLaVA-NeXT,
  Qwen2-VL); with AMIA's k 3 -> 4, 107 of 112; with its MMD factor 0.1 -> 0.12 (TAMP), 88 of 112.

``UPDATE_GOLDEN=1`` re-records, which is only right when a change of behaviour is intended and said so in its
commit. Artifact keys hash no floats and are compared exactly (``check_golden_value``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

GOLDEN_DIR = Path(__file__).parent / "golden"
WEIGHTS_FILE = GOLDEN_DIR / "pruned_weights.json"
KEYS_FILE = GOLDEN_DIR / "artifact_keys.json"

BUCKETS = 16
FLIPPED_BUCKETS = 2  # per matrix: buckets whose mask may differ (near-tie flips)
FLIPPED_MATRICES = 4  # per case: matrices that may hold a flipped bucket
SAMPLE = 1024  # cascade rule: mask bits recorded at this many fixed positions per matrix
CASCADE_NORM_RTOL = 0.01  # cascade rule: the per-bucket norms of changed values, relative to the matrix's norm
VALUE_RTOL = 1e-3  # changed values: |delta| of a bucket's norm and projection, relative to its norm
AMIA_MAX_DIFFERING = 0.25  # share of a case's AMIA selections that may differ from the record (near-ties)


def updating() -> bool:
    return bool(os.environ.get("UPDATE_GOLDEN"))


# ---------------------------------------------------------------------------------------------------------------
# Reading and writing the golden files (one line per matrix, so a re-record's diff says which moved)
# ---------------------------------------------------------------------------------------------------------------


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _dump(data: dict[str, Any], depth: int, level: int = 0) -> str:
    """JSON with the first ``depth`` levels of objects expanded and everything below on one line."""
    if level >= depth or not isinstance(data, dict) or not data:
        return json.dumps(data, separators=(",", ":"), sort_keys=True)
    pad = " " * (level + 1)
    items = [f"{pad}{json.dumps(k)}: {_dump(data[k], depth, level + 1)}" for k in sorted(data)]
    return "{\n" + ",\n".join(items) + "\n" + " " * level + "}"


def _write(path: Path, data: dict[str, Any], depth: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(_dump(data, depth) + "\n")
    os.replace(tmp, path)


def _record(path: Path, case: str, value: Any, depth: int) -> None:
    data = _read(path)
    data[case] = value
    _write(path, data, depth)


def check_golden_value(case: str, got: str) -> None:
    """A discrete golden value (an artifact key): equal, or recorded under UPDATE_GOLDEN=1."""
    if updating():
        _record(KEYS_FILE, case, got, depth=1)
        return
    want = _read(KEYS_FILE).get(case)
    assert want is not None, f"{case} has no golden value; record it with UPDATE_GOLDEN=1"
    assert got == want, f"{case}: {got} != golden {want}"


# ---------------------------------------------------------------------------------------------------------------
# Digest of one pruned model
# ---------------------------------------------------------------------------------------------------------------


def _signs(cols: int) -> np.ndarray:
    """Fixed +-1 signs per column count: integers from a seeded PCG64, identical on every machine."""
    return np.random.default_rng(cols).integers(0, 2, size=cols).astype(np.float64) * 2.0 - 1.0


def _bucket_rows(rows: int) -> list[np.ndarray]:
    return [np.arange(b, rows, BUCKETS) for b in range(BUCKETS)]


def _mask_hashes(zero: np.ndarray) -> str:
    """16-bit hash of each bucket's packed zero pattern, 4 hex digits per bucket."""
    out = []
    for rows in _bucket_rows(zero.shape[0]):
        out.append(hashlib.sha256(np.packbits(zero[rows], axis=-1).tobytes()).hexdigest()[:4])
    return "".join(out)


def _value_sketch(w: np.ndarray) -> tuple[list[float], list[float]]:
    signs = _signs(w.shape[1])
    norms, projs = [], []
    for rows in _bucket_rows(w.shape[0]):
        block = w[rows]
        norms.append(float(f"{np.sqrt((block * block).sum()):.9g}"))
        projs.append(float(f"{(block @ signs).sum():.9g}"))
    return norms, projs


def _sample_positions(numel: int) -> np.ndarray:
    return np.sort(np.random.default_rng(numel).choice(numel, size=min(SAMPLE, numel), replace=False))


def _sampled_bits(zero: np.ndarray) -> str:
    return base64.b64encode(np.packbits(zero.reshape(-1)[_sample_positions(zero.size)]).tobytes()).decode()


def _is_pruned(t: torch.Tensor) -> bool:
    return t.dim() == 2 and bool((t == 0).any())


def _untouched(t: torch.Tensor, dense: torch.Tensor) -> bool:
    """Every weight equals the dense one or is zero (a method that only zeroes)."""
    return t.shape == dense.shape and torch.equal(t, dense.masked_fill(t == 0, 0))


def model_digest(tensors: Mapping[str, torch.Tensor], dense: Mapping[str, torch.Tensor],
                 sample: bool = False) -> dict[str, Any]:
    """What the golden file holds for one pruned model (``dense``: the same model unpruned, same machine);
    ``sample``: also the mask bits at fixed positions (the cascade rule)."""
    layout = hashlib.sha256()
    matrices: dict[str, Any] = {}
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        layout.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        if not _is_pruned(t):
            continue
        zero = (t == 0).numpy()
        entry: dict[str, Any] = {"zeros": int(zero.sum()), "mask": _mask_hashes(zero)}
        if sample:
            entry["sample"] = _sampled_bits(zero)
        if name not in dense or not _untouched(t, dense[name]):
            entry["norm"], entry["proj"] = _value_sketch(t.double().numpy())
        matrices[name] = entry
    return {"layout": layout.hexdigest()[:16], "matrices": matrices}


def artifact_tensors(artifact: Path) -> dict[str, torch.Tensor]:
    """Every tensor of an artifact's (or a checkpoint's) safetensors files, as stored."""
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(Path(artifact).glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


def _sample_flips(got: str, want: str) -> float:
    a = np.unpackbits(np.frombuffer(base64.b64decode(got), dtype=np.uint8))
    b = np.unpackbits(np.frombuffer(base64.b64decode(want), dtype=np.uint8))
    return float((a != b).mean())


def _compare_cascade(name: str, got: dict[str, Any], want: dict[str, Any], share: float) -> list[str]:
    problems = []
    flips = _sample_flips(got["sample"], want["sample"])
    if flips > share:
        problems.append(f"{name}: {flips:.2%} of the sampled mask bits differ (at most {share:.2%})")
    if abs(got["zeros"] - want["zeros"]) > share * want["zeros"]:
        problems.append(f"{name}: {got['zeros']} zeros, golden {want['zeros']}")
    if ("norm" in want) != ("norm" in got):
        problems.append(f"{name}: surviving values {'changed' if 'norm' in got else 'untouched'}, golden not")
    elif "norm" in want:
        total = float(np.sqrt(np.sum(np.square(want["norm"]))))
        delta = float(np.sqrt(np.sum(np.square(np.subtract(got["norm"], want["norm"])))))
        if delta > CASCADE_NORM_RTOL * total:
            problems.append(f"{name}: the row buckets' norms moved by {delta / total:.2%} of the matrix's norm "
                            f"(at most {CASCADE_NORM_RTOL:.0%})")
    return problems


def _compare_matrix(name: str, got: dict[str, Any], want: dict[str, Any]) -> tuple[int, list[str]]:
    """(buckets whose mask differs, problems)."""
    problems = []
    flipped = [b for b in range(BUCKETS) if got["mask"][4 * b:4 * b + 4] != want["mask"][4 * b:4 * b + 4]]
    if got["zeros"] != want["zeros"]:
        problems.append(f"{name}: {got['zeros']} zeros, golden {want['zeros']}")
    if len(flipped) > FLIPPED_BUCKETS:
        problems.append(f"{name}: the mask differs in {len(flipped)} of {BUCKETS} row buckets "
                        f"(at most {FLIPPED_BUCKETS} may flip on near-ties)")
    if ("proj" in want) != ("proj" in got):
        problems.append(f"{name}: {'changed' if 'proj' in got else 'untouched'} surviving values, golden "
                        f"{'changed' if 'proj' in want else 'untouched'}")
    elif "proj" in want:
        for b in range(BUCKETS):
            if b in flipped:
                continue
            tol = VALUE_RTOL * max(want["norm"][b], 1e-30)
            for what in ("norm", "proj"):
                if abs(got[what][b] - want[what][b]) > tol:
                    problems.append(f"{name}: bucket {b} {what} {got[what][b]:.6g}, golden {want[what][b]:.6g} "
                                    f"(tolerance {tol:.2g})")
    return len(flipped), problems


def check_pruned(case: str, tensors: Mapping[str, torch.Tensor], dense: Mapping[str, torch.Tensor],
                 amia: AmiaReplay | None = None, flip_share: float | None = None,
                 versions: Mapping[str, Any] | None = None) -> None:
    """Compare one pruned model with the golden record of ``case`` (or record it under UPDATE_GOLDEN=1).

    ``flip_share``: the cascade rule (a share of sampled mask bits and of the values' norm) instead of the
    near-tie rule, for deep models pruned sequentially. ``versions``: the code versions the artifact key covers
    (pruning.json's ``code_versions``), recorded with the case; re-recording a case whose weights changed while
    none of them did is refused, since every cached artifact of that recipe would be reused with stale weights."""
    got = model_digest(tensors, dense, sample=flip_share is not None)
    for name, t in tensors.items():  # tensors without zeros are the dense ones, on this machine
        if not _is_pruned(t) and name in dense:
            assert torch.equal(t, dense[name]), f"{case}: {name} holds no zero but differs from the dense model"
    if amia is not None and amia.selections:
        got["amia"] = amia.encoded()
    if versions is not None:
        got["versions"] = dict(versions)
    want = _read(WEIGHTS_FILE).get(case)
    if updating():
        if want is not None and versions is not None and want.get("versions") == got["versions"]:
            problems = _problems(case, got, want, flip_share)
            if problems:
                pytest.fail(f"{case}: the pruned weights changed but no version the artifact key covers did "
                            f"({problems[0]}); bump the `version` of the method (or the VERSION of the "
                            "tamp/algorithms module, the engine, the calibration code) whose output changed, then "
                            "re-record")
        _record(WEIGHTS_FILE, case, got, depth=3)
        return
    assert want is not None, f"{case} has no golden record; record it with UPDATE_GOLDEN=1"
    problems = _problems(case, got, want, flip_share)
    if problems:
        pytest.fail(f"{case}: the pruned weights differ from the golden record ({len(problems)} problems): "
                    + "; ".join(problems[:6]))


def _problems(case: str, got: dict[str, Any], want: dict[str, Any], flip_share: float | None) -> list[str]:
    """What differs between a pruned model's digest and its record beyond what rounding moves."""
    assert got["layout"] == want["layout"], f"{case}: tensor names, dtypes or shapes differ from the golden record"
    assert set(got["matrices"]) == set(want["matrices"]), (
        f"{case}: pruned matrices differ: {sorted(set(got['matrices']) ^ set(want['matrices']))[:5]}")
    problems, flipped_matrices = [], []
    if ("amia" in got) != ("amia" in want):
        problems.append(f"AMIA {'ran' if 'amia' in got else 'did not run'}, the golden record says otherwise")
    for name in sorted(want["matrices"]):
        if flip_share is not None:
            problems += _compare_cascade(name, got["matrices"][name], want["matrices"][name], flip_share)
            continue
        flipped, found = _compare_matrix(name, got["matrices"][name], want["matrices"][name])
        problems += found
        if flipped:
            flipped_matrices.append(name)
    if len(flipped_matrices) > FLIPPED_MATRICES:
        problems.append(f"{len(flipped_matrices)} matrices hold near-tie flips (at most {FLIPPED_MATRICES}): "
                        f"{flipped_matrices[:5]}")
    return problems


# ---------------------------------------------------------------------------------------------------------------
# AMIA: record every module's selection; replay the record where rounding decided a selection differently
# ---------------------------------------------------------------------------------------------------------------


class AmiaDiverged(AssertionError):
    """More AMIA selections differ from the record than rounding moves: a change of behaviour."""


class AmiaReplay:
    """Wraps tamp.algorithms.amia.amia_select_batched (what the AMIA method calls): records every module's
    selection, or replays the record. A live selection that differs is replaced by the recorded one, so one
    near-tie cannot cascade into the later layers; at most ``AMIA_MAX_DIFFERING`` of a case's selections may
    differ."""

    def __init__(self, recorded: str | None) -> None:
        self.recorded = None if recorded is None else [
            [int(i) for i in module.split(",") if i] for module in recorded.split(";")]
        self.selections: list[list[int]] = []
        self.differing = 0

    def encoded(self) -> str:
        return ";".join(",".join(str(i) for i in sel) for sel in self.selections)

    def wrap(self, original: Any) -> Any:
        def select(*args: Any, **kwargs: Any) -> torch.Tensor:
            result = original(*args, **kwargs)
            for m, row in enumerate(result):
                live = row.nonzero().flatten().tolist()
                if self.recorded is not None:
                    call = len(self.selections)
                    if call >= len(self.recorded):
                        raise AmiaDiverged(f"AMIA selected for more modules than recorded ({len(self.recorded)})")
                    want = self.recorded[call]
                    if live != want:
                        self.differing += 1
                        if self.differing > AMIA_MAX_DIFFERING * len(self.recorded):
                            raise AmiaDiverged(
                                f"{self.differing} of {len(self.recorded)} AMIA selections differ from the record "
                                f"(at most {AMIA_MAX_DIFFERING:.0%}), e.g. selection {call}: {live}, recorded {want}")
                        result[m] = False
                        result[m, want] = True
                        live = want
                self.selections.append(live)
            return result

        return select

    def finish(self) -> None:
        if self.recorded is not None and len(self.selections) != len(self.recorded):
            raise AmiaDiverged(f"AMIA selected for {len(self.selections)} modules, the record has "
                               f"{len(self.recorded)}")


@contextlib.contextmanager
def amia_replay(monkeypatch: pytest.MonkeyPatch, case: str) -> Iterator[AmiaReplay]:
    """Record (UPDATE_GOLDEN=1) or replay the AMIA selections of ``case`` while the block runs."""
    import tamp.algorithms.amia as algorithm
    import tamp.methods.amia as method

    recorded = None if updating() else (_read(WEIGHTS_FILE).get(case) or {}).get("amia")
    replay = AmiaReplay(recorded)
    wrapped = replay.wrap(algorithm.amia_select_batched)
    monkeypatch.setattr(algorithm, "amia_select_batched", wrapped)  # undone at teardown
    monkeypatch.setattr(method, "amia_select_batched", wrapped)
    yield replay
    replay.finish()

"""Executor settings: the grid file's `executor:` block, checked, with the command-line flags on top."""

from __future__ import annotations

import importlib.util
import math
import os
import socket
from dataclasses import dataclass, field, fields
from typing import Any

from harness.errors import HarnessError

EXECUTORS = ("local", "ray", "slurm")
CLUSTERS = ("slurm", "local")  # submitit's backends for --executor slurm ("local": jobs as local subprocesses)
NEEDS = {"ray": "ray", "slurm": "submitit"}


@dataclass
class ExecutorOptions:
    """How cells are spread (not part of the experiment: the records do not depend on it)."""

    kind: str = "local"
    address: str | None = None  # Ray: the cluster to join (default RAY_ADDRESS, else a local cluster)
    cpus: int = 1  # per cell: Ray num_cpus, SLURM cpus_per_task
    gpus: int | None = None  # per cell: Ray num_gpus, SLURM GPUs per job (default --gpus; 0 with --device cpu)
    mem_gb: float | None = None  # SLURM: memory per job
    partition: str | None = None  # SLURM
    time: int = 1440  # SLURM: minutes per job before it is requeued (submitit resubmits a timed-out cell)
    array_parallelism: int | None = None  # SLURM: at most this many cells at once (default: submitit's, 256)
    cluster: str = "slurm"  # submitit's backend: slurm, or local (subprocesses of this machine, to try a set-up)
    retries: int = 3  # Ray: times a cell whose worker died (node lost, kill -9) is run again
    # Ray, joining a cluster: seconds to wait for a node that has what a cell asks (an autoscaler may add one) before
    # stopping with one line; without a bound Ray queues such cells forever
    node_wait: int = 600
    slurm: dict[str, Any] = field(default_factory=dict)  # more sbatch options: account, qos, constraint, ...


INT_KEYS = {"cpus": 1, "gpus": 0, "time": 1, "array_parallelism": 1, "retries": 0, "node_wait": 0}  # key -> smallest value
FLAGS = {"cpus": "--cell-cpus", "gpus": "--cell-gpus", "address": "--ray-address"}  # block key -> its flag
BLOCK_KEYS = {f.name for f in fields(ExecutorOptions)} - {"kind"}


def parse_block(block: Any, where: str) -> dict[str, Any]:
    """The grid file's `executor:` block, checked (a typo must not silently submit with defaults)."""
    if block is None:
        return {}
    if not isinstance(block, dict):
        raise HarnessError(f"{where}: 'executor' maps settings ({', '.join(sorted(BLOCK_KEYS))}) to values")
    unknown = sorted(set(block) - BLOCK_KEYS)
    if unknown:
        raise HarnessError(f"{where}: executor: unknown key(s) {', '.join(map(str, unknown))}; allowed: "
                           f"{', '.join(sorted(BLOCK_KEYS))}")
    out = dict(block)
    for key, low in INT_KEYS.items():
        if key in out and (isinstance(out[key], bool) or not isinstance(out[key], int) or out[key] < low):
            raise HarnessError(f"{where}: executor: {key} must be an integer >= {low}, got {out[key]!r}")
    if "mem_gb" in out and (isinstance(out["mem_gb"], bool) or not isinstance(out["mem_gb"], (int, float))
                            or not math.isfinite(out["mem_gb"]) or out["mem_gb"] <= 0):  # .nan passes `<= 0`
        raise HarnessError(f"{where}: executor: mem_gb must be a positive number, got {out['mem_gb']!r}")
    for key in ("address", "partition"):
        if key in out and not isinstance(out[key], str):
            raise HarnessError(f"{where}: executor: {key} must be a string, got {out[key]!r}")
    if "cluster" in out and out["cluster"] not in CLUSTERS:
        raise HarnessError(f"{where}: executor: cluster must be one of {', '.join(CLUSTERS)}, got {out['cluster']!r}")
    if "slurm" in out and not (isinstance(out["slurm"], dict) and all(isinstance(k, str) for k in out["slurm"])):
        raise HarnessError(f"{where}: executor: slurm maps sbatch options to values, e.g. {{account: myproj}}")
    return out


def executor_options(kind: str, block: dict[str, Any], **flags: Any) -> ExecutorOptions:
    """The grid file's block, then the command-line flags that were given (None: not given)."""
    if kind not in EXECUTORS:
        raise HarnessError(f"--executor {kind}: unknown; choose one of {', '.join(EXECUTORS)}")
    for name, value in flags.items():
        low = INT_KEYS.get(name)
        if low is not None and value is not None and value < low:
            raise HarnessError(f"{FLAGS.get(name, '--' + name.replace('_', '-'))} must be at least {low}, got {value}")
    given = {k: v for k, v in flags.items() if v is not None}
    return ExecutorOptions(kind=kind, **{**block, **given})


def check_available(options: ExecutorOptions) -> None:
    """The optional extra is installed, and a Ray address given as host:port answers (Ray itself retries an
    unreachable one for minutes); before anything is validated or run."""
    module = NEEDS.get(options.kind)
    if module is not None and importlib.util.find_spec(module) is None:
        raise HarnessError(f"--executor {options.kind} needs the '{module}' package: pip install "
                           "'tamp-harness[cluster]' (`make install` installs it)")
    address = options.address or os.environ.get("RAY_ADDRESS")
    if options.kind != "ray" or not address:
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():  # "auto", "local": Ray finds the cluster itself
        return
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as exc:
        flag = "--ray-address" if options.address else "RAY_ADDRESS"
        raise HarnessError(f"{flag} {address}: no Ray cluster answers there ({exc.strerror or exc}); start one "
                           "(`ray start --head`) or leave the address out for a local cluster") from None


def cell_gpus(options: ExecutorOptions, gpus: int, device: str) -> int:
    """GPUs a cell asks its scheduler for: as set, else what the cell evaluates on (none on the CPU)."""
    if options.gpus is not None:
        return options.gpus
    return 0 if device == "cpu" else gpus

"""Which tasks exist (lmms-eval's own + ours in tasks/), and whether their datasets can be reached."""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from harness.errors import HarnessError

# dataset_path values that name a local builder, not a Hub dataset
LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "pandas", "arrow", "imagefolder", "audiofolder", "videofolder"}


def tasks_dir() -> Path:
    """The repository's tasks/ folder (our smoke tasks and any task lmms-eval lacks)."""
    env = os.environ.get("HARNESS_TASKS_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "tasks"


@functools.lru_cache(maxsize=4)
def task_manager(model_name: str | None = None) -> Any:
    """lmms-eval's TaskManager over its own tasks plus tasks/ (built once per process: it indexes ~2000 YAMLs)."""
    from lmms_eval.tasks import TaskManager

    return TaskManager(verbosity="WARNING", include_path=str(tasks_dir()), model_name=model_name)


def validate_tasks(tasks: list[str], tm: Any) -> None:
    unknown = [t for t in tasks if t not in tm.all_tasks]
    if unknown:
        raise HarnessError(f"unknown task{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                           "`harness tasks` lists ours, `python -m lmms_eval tasks list` all of lmms-eval's")


def _config(tm: Any, name: str) -> dict[str, Any]:
    from lmms_eval.utils import load_yaml_config

    path = tm.task_index[name]["yaml_path"]
    return {} if path == -1 else load_yaml_config(path, mode="simple")


def dataset_paths(task: str, tm: Any) -> dict[str, str]:
    """leaf task -> dataset_path, through groups and tags (YAMLs read without importing their code)."""
    out: dict[str, str] = {}
    entry = tm.task_index.get(task)
    if entry is None:
        return out
    if entry["type"] == "tag":
        for sub in entry["task"]:
            out.update(dataset_paths(sub, tm))
        return out
    config = _config(tm, task)
    if entry["type"] == "group":
        for sub in config.get("task", []):
            if isinstance(sub, str):
                out.update(dataset_paths(sub, tm))
            elif isinstance(sub, dict) and sub.get("dataset_path"):
                out[str(sub.get("task", task))] = sub["dataset_path"]
        return out
    if config.get("dataset_path"):
        out[task] = str(config["dataset_path"])
    return out


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face endpoint accepts a TCP connection (not tried when offline mode is set)."""
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def in_local_cache(dataset_id: str) -> bool:
    """A dataset downloaded with `hf download --repo-type dataset ID` or already prepared by `datasets`."""
    from huggingface_hub import constants

    hub = Path(constants.HF_HUB_CACHE) / ("datasets--" + dataset_id.replace("/", "--")) / "snapshots"
    if hub.is_dir() and any(hub.iterdir()):
        return True
    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE", Path(constants.HF_HOME) / "datasets"))
    for name in {dataset_id.replace("/", "___"), dataset_id.replace("/", "___").lower()}:
        if (datasets_cache / name).is_dir():
            return True
    return False


def offline_reason() -> str | None:
    """Why nothing missing from the local Hugging Face cache can be fetched now; None when the Hub is reachable."""
    if _truthy("HF_HUB_OFFLINE") or _truthy("HF_DATASETS_OFFLINE"):
        return "offline mode is set"
    return None if hub_reachable() else "the Hugging Face Hub cannot be reached"


def dataset_problems(tasks: list[str], tm: Any, why_offline: str | None) -> list[str]:
    """Offline (``why_offline`` says why), every Hub dataset of the tasks must be in the local cache: one line each."""
    if why_offline is None:
        return []
    needed: dict[str, list[str]] = {}  # dataset -> the tasks that read it (a group's subtasks often share one)
    for task in tasks:
        for leaf, path in dataset_paths(task, tm).items():
            if not (path in LOCAL_BUILDERS or Path(path).exists() or in_local_cache(path)):
                needed.setdefault(path, []).append(leaf)
    return [f"task '{leaves[0]}'" + (f" (and {len(leaves) - 1} more)" if len(leaves) > 1 else "") +
            f" needs the dataset '{path}', which is not in the local Hugging Face cache and {why_offline}; "
            f"fetch it first with `hf download --repo-type dataset {path}`" for path, leaves in needed.items()]


def output_type(task: str, tm: Any) -> str | None:
    entry = tm.task_index.get(task)
    if entry is None or entry["type"] != "task":
        return None
    return _config(tm, task).get("output_type")

"""Which number of an lmms-eval result stands for each benchmark in tables, plots and the leaderboard.

lmms-eval reports its tasks on different scales (exact_match in [0, 1], MMBench and VideoMME already
in percent, MME as a score out of 2000) and MVBench's group has no aggregate of its own. Each
benchmark here names its headline metric key, how to show it (``display_scale``) and how to put it on
a 0-100 scale for averages (``percent_scale``). The keys and scales were read from lmms-eval 0.7.3's
task YAMLs and aggregation functions; a task not listed falls back to its first metric, unscaled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from tamp.plugins import Registry


@dataclass(frozen=True)
class Benchmark:
    task: str
    label: str  # column header
    metric: str  # "<metric>,<filter>" key in lmms-eval's results
    display_scale: float = 100.0  # shown value = raw * display_scale
    percent_scale: float = 100.0  # value in [0, 100] for averages = raw * percent_scale
    subtask_mean: bool = False  # a group without its own aggregate: mean of its subtasks' metric
    note: str = ""
    input: str | None = None  # the media it needs (image, video, audio): a model that cannot take it is refused
    source: str = ""  # the file that registers it (filled in by the registry)


# The paper's order: image, multi-image, video, then audio; our smoke tasks last.
CATALOG: tuple[Benchmark, ...] = (
    Benchmark("vizwiz_vqa_val", "VizWiz", "exact_match,none", input="image"),
    Benchmark("pope", "POPE", "pope_accuracy,none", note="accuracy (the F1 is in the leaderboard CSV)", input="image"),
    Benchmark("textvqa_val", "TextVQA", "exact_match,none", input="image"),
    Benchmark("mme", "MME", "mme_perception_score,none", 1.0, 0.05,
              note="perception score out of 2000; /20 in averages", input="image"),
    Benchmark("mmbench_en_dev_static", "MMBench", "gpt_eval_score,none", 1.0, 1.0, input="image"),
    Benchmark("mmbench_en_dev", "MMBench", "gpt_eval_score,none", 1.0, 1.0, input="image"),
    Benchmark("scienceqa_img", "ScienceQA-IMG", "exact_match,none", input="image"),
    Benchmark("gqa", "GQA", "exact_match,none", input="image"),
    Benchmark("muirbench", "MuirBench", "muirbench_score_overall,flexible-extract", input="image"),
    Benchmark("mvbench", "MVBench", "mvbench_accuracy,none", 1.0, 1.0, subtask_mean=True,
              note="mean of the 20 subtasks (the group has no aggregate)", input="video"),
    Benchmark("videomme", "VideoMME", "videomme_perception_score,none", 1.0, 1.0, input="video"),
    Benchmark("nextqa_mc_test", "NExT-QA", "exact_match,none", input="video"),
    Benchmark("egoschema_subset", "EgoSchema", "score,none", input="video"),
    Benchmark("clotho_aqa_test", "ClothoAQA", "exact_match,none", input="audio"),
    Benchmark("vocalsound_test", "VocalSound", "accuracy,none", input="audio"),
    Benchmark("tamp_smoke_vqa", "Smoke VQA", "exact_match,none", input="image"),
    Benchmark("tamp_smoke_mc", "Smoke MC", "acc,none", input="image"),
    Benchmark("tamp_smoke_audio", "Smoke audio", "exact_match,none", input="audio"),
    Benchmark("tamp_smoke_video", "Smoke video", "exact_match,none", input="video"),
    Benchmark("tamp_smoke_video_mc", "Smoke video MC", "acc,none", input="video"),
    Benchmark("tamp_heldout_vqa", "Held-out VQA", "exact_match,none", input="image"),
    Benchmark("tamp_heldout_mc", "Held-out MC", "acc,none", input="image"),
)
# The catalog is the built-in part of the task registry; a plugin registers its own tasks' rows through the
# entry-point group `tamp.tasks` (a Benchmark or a list of them), as methods and families are registered.
TASKS: Registry[Benchmark] = Registry(
    kind="task", package=__name__, attribute="", group="tamp.tasks", entry_type=Benchmark,
    name_of=lambda b: b.task, with_source=lambda b, source: replace(b, source=source), builtins=lambda: list(CATALOG),
)


def registered_tasks() -> dict[str, Benchmark]:
    """Every registered task row: the catalog, then plugins' (in registration order)."""
    return TASKS.all()


def benchmark(task: str, metrics: dict[str, Any] | None = None) -> Benchmark:
    """The catalog entry, or one made from the task's first real metric (shown as lmms-eval reports it)."""
    known = registered_tasks()
    if task in known:
        return known[task]
    key = next((k for k, v in (metrics or {}).items()
                if "," in k and "_stderr" not in k and isinstance(v, (int, float))), "")
    return Benchmark(task, task, key, 1.0, float("nan"))


def order(tasks: list[str]) -> list[str]:
    """Catalog order first (the paper's), then any other task alphabetically."""
    rank = {name: i for i, name in enumerate(registered_tasks())}
    return sorted(dict.fromkeys(tasks), key=lambda t: (rank.get(t, len(rank)), t))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def raw_value(record: dict[str, Any]) -> tuple[str, float | None]:
    """(metric key, raw value) of a run record's headline metric; None when the record lacks it."""
    task = record.get("task", "")
    metrics = record.get("metrics") or {}
    bench = benchmark(task, metrics)
    value = _number(metrics.get(bench.metric))
    if value is None and bench.subtask_mean:
        subs = [_number(m.get(bench.metric)) for name, m in (record.get("results") or {}).items()
                if name != task and isinstance(m, dict)]
        subs = [v for v in subs if v is not None]
        value = sum(subs) / len(subs) if subs else None
    return bench.metric, value

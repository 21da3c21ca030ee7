"""Tasks are registered as methods and families are: the benchmark catalog is the task registry's built-in part
(tamp.plugins.Registry), and a plugin adds a task's row (label, headline metric, scales, input) through the
entry-point group `tamp.tasks`."""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint

import pytest

from harness import benchmarks
from harness.benchmarks import CATALOG, TASKS, Benchmark, benchmark, order, registered_tasks
from harness.model_specs import input_problems, resolve_model
from tamp import plugins
from tamp.methods.registry import REGISTRY as METHODS

PLUGIN_TASK = Benchmark("birdsong_qa", "Birdsong QA", "accuracy,none", input="audio")
CLASH = Benchmark("pope", "Not POPE", "acc,none", input="image")


@pytest.fixture
def plugin_tasks(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "PLUGIN_TASK", PLUGIN_TASK, raising=False)
    eps = [EntryPoint("birds", f"{__name__}:PLUGIN_TASK", "tamp.tasks"),
           EntryPoint("clash", f"{__name__}:CLASH", "tamp.tasks")]
    monkeypatch.setattr(plugins, "entry_points", lambda group: eps if group == "tamp.tasks" else [])
    TASKS.clear()
    yield
    TASKS.clear()


def test_the_task_registry_is_the_methods_registry_type() -> None:
    assert type(TASKS) is type(METHODS)
    assert [b.task for b in registered_tasks().values()] == [b.task for b in CATALOG]
    assert all(b.input in ("image", "video", "audio") for b in CATALOG)
    assert registered_tasks()["pope"].source == benchmarks.__file__


def test_a_plugin_task_is_labelled_ordered_and_checked(plugin_tasks, capsys) -> None:
    assert benchmark("birdsong_qa").label == "Birdsong QA"
    assert registered_tasks()["pope"].label == "POPE"  # a clashing plugin row is skipped, the catalog's stays
    assert "task plugin 'clash'" in capsys.readouterr().err
    assert order(["zzz_other", "birdsong_qa", "pope"]) == ["pope", "birdsong_qa", "zzz_other"]
    spec = resolve_model("tiny-llava-next")
    problems = input_problems(spec, ["birdsong_qa", "tamp_smoke_vqa"])
    assert len(problems) == 1 and "task 'birdsong_qa' needs audio input" in problems[0]

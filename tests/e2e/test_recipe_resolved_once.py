"""One `harness run` parses its settings into a recipe once and resolves the composition to engine hooks once;
the pipeline, the engine and the cache key take that recipe (they neither parse a method name nor ask the
registry for hooks again)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import tamp.recipe
from harness.run import RunOptions, run
from tamp.methods import registry


def test_a_harness_run_builds_one_recipe_and_resolves_its_parts_once(tmp_path: Path, monkeypatch) -> None:
    calls: Counter[str] = Counter()

    def counted(name: str, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(registry, "compose_parts", counted("compose_parts", registry.compose_parts))
    monkeypatch.setattr(tamp.recipe, "build_recipe", counted("build_recipe", tamp.recipe.build_recipe))
    monkeypatch.setattr(tamp.recipe, "compose", counted("compose", tamp.recipe.compose))
    opts = RunOptions(model="tiny-llava-next", sparsity=0.5, method="tamp+fastv", tasks=["tamp_smoke_vqa"],
                      limit=1, output=tmp_path / "runs", artifacts=tmp_path / "artifacts", device="cpu",
                      max_empty_fraction=1.0)
    rows = run(opts)
    assert [r["status"] for r in rows] == ["ran"]
    assert calls == Counter({"build_recipe": 1, "compose": 1, "compose_parts": 1})

"""No import cycle in tamp/ or harness/, at module level or inside functions; an import inside a function only
where it keeps a heavy dependency (torch, transformers, lmms-eval, ...) from loading with the importing module,
in the two command-line modules (so `--help` stays instant), or for the tiny-model builders in tamp.testing."""

from __future__ import annotations

from tests.import_graph import Edge, cycles, edges, heavy_at_import, modules

CLI_MODULES = ("tamp.cli", "harness.cli")


def test_cycle_finder_finds_a_cycle() -> None:
    """The finder itself, on the circle the old tree had (allocation -> allocators -> sequential -> allocation)."""
    old = [Edge("tamp.allocation", "tamp.allocators", 1, True), Edge("tamp.allocators", "tamp.engine.sequential", 1, True),
           Edge("tamp.engine.sequential", "tamp.allocation", 1, True), Edge("tamp.engine.sequential", "tamp.config", 1, False)]
    assert cycles(old) == [["tamp.allocation", "tamp.allocators", "tamp.engine.sequential"]]
    assert cycles(old[:2]) == []


def test_the_graph_sees_the_tree() -> None:
    known = modules()
    assert {"tamp.engine.sequential", "tamp.methods.registry", "harness.run", "harness.wrappers"} <= set(known)
    assert any(e.source == "tamp.pipeline" and e.target == "tamp.recipe" and not e.in_function for e in edges())
    # an import under `if TYPE_CHECKING:` never runs: an edge only when type-only imports are asked for
    assert not any(e.source == "tamp.engine.context" and e.target == "tamp.config" for e in edges())
    assert any(e.source == "tamp.engine.context" and e.target == "tamp.config" and e.type_only
               for e in edges(type_checking=True))


def test_no_import_cycles_counting_type_only_imports() -> None:
    found = cycles(edges(type_checking=True))
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_engine_imports_no_method() -> None:
    """The engine receives a composition's hooks (tamp.engine.parts); it names and imports no method, not even for
    types. The methods build on the engine, never the reverse."""
    wrong = [f"{e.source}:{e.line} imports {e.target}" for e in edges(type_checking=True)
             if e.source.startswith("tamp.engine") and e.target.startswith("tamp.methods")]
    assert not wrong, "; ".join(wrong)


def test_function_level_imports_are_justified() -> None:
    graph = edges(external=True)
    heavy = heavy_at_import(graph)
    unjustified = [f"{e.source}:{e.line} imports {e.target}" for e in graph
                   if e.in_function and e.target in heavy and e.source not in CLI_MODULES
                   and not e.target.startswith("tamp.testing") and not heavy[e.target] - heavy[e.source]]
    assert not unjustified, "move these imports to module level: " + "; ".join(unjustified)


def test_the_weight_config_is_torch_free() -> None:
    """PruneConfig (the recipe's weight part, what pruning.json's config holds) reads and checks without torch:
    a grid planner or a report can hold one without loading the ML stack."""
    heavy = heavy_at_import(edges(external=True))
    assert not heavy.get("tamp.config", set()) and not heavy.get("tamp.params", set())

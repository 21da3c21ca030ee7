"""Smoke test of the benchmark suite (bench/): the scaled-down paths of every section that needs no SmolLM2.

AMIA at toy sizes (fast == reference), the engine comparison on tamp's tiny llama, and the 8b code path with
the scaled-down shape on the CPU; each run must write one JSON with the documented schema.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # bench/ is not an installed package; `pytest` alone does not add the root
    sys.path.insert(0, str(REPO_ROOT))

from bench import run as bench_run  # noqa: E402

TOP_KEYS = {"schema", "created", "size", "argv", "device", "versions", "git_commit", "sizes", "sections",
            "total_wall_s", "phases", "summary"}
PHASE_KEYS = {"section", "name", "status", "wall_s", "times_s", "peak_cpu_rss_mb", "peak_gpu_mb", "ratio",
              "ratio_to", "target", "met", "reason", "details"}


def _only_json(folder: Path) -> dict:
    files = sorted(folder.glob("*.json"))
    assert len(files) == 1, files
    assert not list(folder.glob(".*.tmp")), "temporary file left behind"
    return json.loads(files[0].read_text())


def _check_schema(record: dict, size: str) -> None:
    assert TOP_KEYS <= set(record), TOP_KEYS - set(record)
    assert record["schema"] == "tamp-bench/1" and record["size"] == size
    assert record["device"]["name"] and record["device"]["type"] in ("cpu", "cuda")
    for key in ("torch", "transformers", "tamp"):
        assert record["versions"][key], key
    assert record["phases"], "no phase recorded"
    for phase in record["phases"]:
        assert PHASE_KEYS <= set(phase), PHASE_KEYS - set(phase)
        assert phase["status"] in ("ok", "skipped", "error", "partial")
        if phase["status"] == "ok":
            assert phase["wall_s"] is not None and phase["wall_s"] >= 0
            assert phase["peak_cpu_rss_mb"] > 0
    assert record["summary"]["errors"] == [], record["summary"]["errors"]


def test_amia_and_engine_sections(tmp_path: Path) -> None:
    out = tmp_path / "out"
    rc = bench_run.main(["--size", "cpu", "--device", "cpu", "--sections", "amia,engine", "--no-naive-smollm2",
                         "--amia-tokens", "96,200", "--amia-dim", "32", "--repeats", "2", "--ref-limit", "30",
                         "--tiny-samples", "8", "--tiny-seqlen", "32", "--tiny-root", str(tmp_path / "tiny"),
                         "--out", str(out)])
    assert rc == 0
    record = _only_json(out)
    _check_schema(record, "cpu")
    fast = [p for p in record["phases"] if p["section"] == "amia" and p["name"].startswith("amia_select")]
    assert len(fast) == 3  # two sizes + the greedy-loop stress case
    for p in fast:
        assert p["details"]["identical"] is True, p["name"]
        assert 0 < p["details"]["selected_tokens"] <= p["details"]["tokens"]
        assert p["ratio_to"] == "floor" and p["ratio"] > 0 and p["target"] == 2.0
    stage = [p for p in record["phases"] if p["section"] == "amia" and p["name"].startswith("stage amia")]
    assert len(stage) == 2  # one sample's 7 llama3-8b linears at each token count
    for p in stage:
        assert p["details"]["identical"] is True and p["details"]["modules_compared"] == 7, p["name"]
        assert set(p["details"]["selected_per_module"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                            "up_proj", "down_proj"}
        assert p["ratio_to"] == "floor" and p["ratio"] > 0 and p["target"] == 2.0
    assert record["sizes"]["amia"][-1]["stage_widths"]["gate_proj"] == 14336
    assert record["summary"]["amia_identical"] is True
    engine = [p for p in record["phases"] if p["section"] == "engine-vs-naive"]
    assert len(engine) == 2 and all(p["details"]["masks_identical"] for p in engine)
    assert engine[0]["details"]["engine_timings"]["statistics"] > 0


def test_amia_fast_equals_reference_on_bench_inputs() -> None:
    from bench.amia_bench import AmiaCase, make_inputs
    from tamp.algorithms.amia import amia_select, amia_select_reference

    for seed, case in enumerate((AmiaCase(120, 12, 16), AmiaCase(300, 20, 24, mmd_factor=0.01))):
        out, scores, masks = make_inputs(case, seed)
        kw = {"mmd_factor": case.mmd_factor}
        assert torch.equal(amia_select(out, scores, masks, **kw), amia_select_reference(out, scores, masks, **kw))


def test_stage_matches_per_module_selection() -> None:
    # select_per_module (what the engine runs: equal widths in one lock-step batch) == AMIA module by module
    from bench.amia_bench import StageCase, make_stage_inputs
    from tamp.algorithms.amia import amia_select, amia_select_reference
    from tamp.methods.amia import select_per_module

    case = StageCase(150, 14, widths=(("q", 24), ("k", 8), ("v", 8), ("o", 24), ("gate", 40), ("up", 40)))
    outs, scores, masks = make_stage_inputs(case, seed=3)
    for factor in (0.1, 0.01):
        chosen = select_per_module(outs, scores, masks, mmd_factor=factor)
        assert list(chosen) == ["q", "o", "k", "v", "gate", "up"]  # grouped by width, first appearance order
        for name, out in outs.items():
            alone = amia_select(out, scores, masks, mmd_factor=factor)
            assert torch.equal(chosen[name], alone), name
            assert torch.equal(alone, amia_select_reference(out, scores, masks, mmd_factor=factor)), name


def test_8b_code_path_scaled_down_on_cpu(tmp_path: Path) -> None:
    from bench.synthetic_8b import DRY

    out = tmp_path / "out"
    rc = bench_run.main(["--size", "8b", "--dry", "--device", "cpu", "--sections", "8b", "--out", str(out)])
    assert rc == 0
    record = _only_json(out)
    _check_schema(record, "8b")
    build, prune = record["phases"]
    assert build["details"]["image_tokens_recognised"] == DRY.n_image
    assert prune["status"] == "ok" and prune["details"]["offload"] is True
    assert prune["details"]["token_counts"] == {"image": DRY.samples * DRY.n_image, "text": DRY.samples * DRY.n_text}
    assert 0 < prune["details"]["selected_tokens"] < prune["details"]["candidate_tokens"]
    assert abs(prune["details"]["sparsity"] - 0.5) < 0.01
    assert {"allocation", "capture", "statistics", "masks", "rerun"} <= set(prune["details"]["engine_timings"])
    assert prune["target"] is None  # the 180 s / 20 GB targets only apply to the full shape on a GPU


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_8b_without_gpu_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = bench_run.main(["--size", "8b", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "CUDA" in err
    assert not (tmp_path / "out").exists()


def test_peers_skip_cleanly_without_llmcompressor() -> None:
    import importlib.util

    from bench import peers

    if importlib.util.find_spec("llmcompressor") is not None:
        pytest.skip("llmcompressor is installed here")
    version, why = peers.peer_version(sys.executable)
    assert version is None and "transformers" in why
    (phase,) = peers.run(None, None)
    assert phase.status == "skipped" and phase.reason


def test_tokens_section_smoke() -> None:
    """The token section on a scaled-down shape (576 visual tokens): every token method planned; dense, then token
    methods that map the common budget at the three budgets (FLOPs falling with the budget; the random baseline
    keeping round(576 x 0.111) = 64), AIM and YOPO once at their bench settings; the FLOPs are the language model's
    from the tokens each layer ran on plus the vision side; a case's target is 1.15 x its FLOP ratio; the profile
    names operators."""
    from bench import token_bench
    from tamp.inference.flops import ModelShape
    from tamp.models.adapters import get_adapter

    shape = token_bench.TokenShape(hidden=64, intermediate=128, heads=4, kv_heads=2, layers=4, visual=576, text=16,
                                   dtype="float32")
    planned = token_bench.cases(576)  # every registered token method is planned
    assert {method for _, method, _ in planned[1:]} == set(token_bench.token_methods()) and planned[0][1] is None
    measured = ["fastv", "random", "pool", "aim", "yopo"]  # run: a drop inside the LLM, before it, both own settings
    phases = token_bench.run("cpu", torch.device("cpu"), repeats=1, shape=shape, methods=measured,
                             profile_misses=False)
    assert all(p.status == "ok" for p in phases) and phases[0].details["method"] == "dense"
    assert phases[0].details["flop_ratio"] == 1.0 and phases[0].target is None
    by = {}
    for p in phases[1:]:
        by.setdefault(p.details["method"], []).append(p)
    assert list(by) == measured
    for method, runs in by.items():
        if method in token_bench.OWN_SETTINGS:
            assert len(runs) == 1 and runs[0].details["budget"] is None
            continue
        assert [p.details["budget"] for p in runs] == list(token_bench.BUDGETS), method
        ratios = [p.details["flop_ratio"] for p in runs]
        assert ratios == sorted(ratios, reverse=True) and ratios[0] < 1.0, (method, ratios)
        assert all(p.target == pytest.approx(token_bench.SLACK * p.details["flop_ratio"]) for p in runs)
    assert by["random"][-1].details["visual_per_layer"] == [64] * 4
    (yopo,) = by["yopo"]
    assert yopo.details["visual_per_layer"][-1] == 0 and yopo.details["vision_tflops"] > 0
    model, inputs = token_bench.build(shape, torch.device("cpu"))
    layers = ModelShape.of(model, get_adapter(model)).prefill(yopo.details["tokens_per_layer"], 1)["dense"]
    skipped = yopo.details["skipped_tflops"] * 1e12  # the MLP channels YOPO's visual rows skipped are not counted
    assert skipped > 0 and yopo.details["prefill_tflops"] * 1e12 == pytest.approx(
        layers - skipped + yopo.details["vision_tflops"] * 1e12, rel=1e-9)
    ops = token_bench.top_ops(model, inputs, n=3)
    assert len(ops) == 3 and all(op["self_ms"] > 0 and 0 < op["share"] <= 1 for op in ops)


def test_tokens_section_names_a_method_for_other_models() -> None:
    """A token method the bench's LLaVA-1.5 shape cannot run (HoliTom takes video) is listed as skipped with the
    one-line reason, not timed and not a crash of the whole section."""
    from bench import token_bench

    shape = token_bench.TokenShape(hidden=64, intermediate=128, heads=4, kv_heads=2, layers=4, visual=576, text=16,
                                   dtype="float32")
    phases = token_bench.run("cpu", torch.device("cpu"), repeats=1, shape=shape, methods=["holitom"],
                             profile_misses=False)
    assert phases[0].status == "ok" and phases[0].details["method"] == "dense"
    assert [p.status for p in phases[1:]] == ["skipped"] * len(token_bench.BUDGETS)
    assert all("holitom merges video frames" in p.reason for p in phases[1:])

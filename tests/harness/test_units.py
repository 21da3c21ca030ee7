"""Pieces of the harness that need no model: registry, cache keys, records, accelerate command, smoke data."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from harness.errors import HarnessError

ROOT = Path(__file__).resolve().parents[2]


def test_registry_resolves_names_and_local_dirs(tiny_model) -> None:
    from harness.model_specs import MODELS, resolve_model

    spec = resolve_model("llava-next")
    assert spec.source == "llava-hf/llama3-llava-next-8b-hf" and spec.wrapper == "tamp_llava_hf"
    assert spec.tasks[:2] == ("textvqa_val", "vizwiz_vqa_val") and "egoschema_subset" in spec.tasks
    assert MODELS["qwen2-audio"].tasks == ("clotho_aqa_test", "vocalsound_test")
    local = resolve_model(str(tiny_model("qwen2-vl")))
    assert local.family == "qwen2-vl" and local.wrapper == "tamp_qwen2_vl"
    with pytest.raises(HarnessError, match="no lmms-eval wrapper"):
        resolve_model(str(tiny_model("llama")))


def test_family_table_has_one_owner_per_fact() -> None:
    """The harness adds a wrapper and tasks to families of tamp's table; every wrapper id it names is registered,
    every family it evaluates is a multimodal row with a default HF model, and tiny names come from the table."""
    from harness.model_specs import EVALUATIONS, MODELS
    from harness.wrappers import WRAPPER_CLASSES
    from tamp.families.registry import families, tiny_families, trained_families
    from tamp.models.sources import HF_MODELS, TRAINED_PREFIX, source_names

    for family, evaluation in EVALUATIONS.items():
        assert evaluation.wrapper in WRAPPER_CLASSES
        row = families()[family]
        assert row.multimodal and HF_MODELS[row.registry_name] == row.hf_id == MODELS[row.registry_name].source
    tiny = [n for n in MODELS if n.startswith("tiny-") and not n.startswith(TRAINED_PREFIX)]
    assert tiny == [f"tiny-{f}" for f in tiny_families() if f in EVALUATIONS]
    assert [n for n in MODELS if n.startswith(TRAINED_PREFIX)] == [TRAINED_PREFIX + f for f in trained_families()]
    assert {f"tiny-{f}" for f in tiny_families()} | {TRAINED_PREFIX + f for f in trained_families()} <= set(source_names())


def test_save_path_does_not_import_the_tiny_builders() -> None:
    """tamp.testing (the tiny-model builders) is test scaffolding: the save path and the wrappers never load it."""
    import subprocess

    code = ("import sys, tamp.artifacts, tamp.models.loading, tamp.models.qwen_image_only, harness.model_specs, "
            "harness.wrappers; print([m for m in sys.modules if m.startswith('tamp.testing')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_entry_point_lists_our_wrappers() -> None:
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="lmms_eval.models") if e.name == "tamp"]
    ids = {m.model_id for m in ep.load()()}
    assert ids == {"tamp_llava_hf", "tamp_qwen2_vl", "tamp_qwen2_5_vl", "tamp_qwen2_audio", "tamp_qwen2_5_omni",
                   "tamp_qwen3_vl", "tamp_internvl3", "tamp_gemma3", "tamp_smolvlm"}


def test_accelerate_command() -> None:
    from harness.evaluate import accelerate_command

    cmd = accelerate_command(4, "tamp_llava_hf", "pretrained=/a/b,max_empty_fraction=0.5", "mme", 10, Path("/o"))
    tail = cmd[cmd.index("--num_processes"):]
    assert tail == ["--num_processes", "4", "-m", "lmms_eval", "--model", "tamp_llava_hf", "--model_args",
                    "pretrained=/a/b,max_empty_fraction=0.5", "--tasks", "mme", "--include_path",
                    str(ROOT / "tasks"), "--batch_size", "1", "--output_path", "/o", "--log_samples", "--limit", "10"]
    assert cmd[:2] == [str(Path(sys.executable).with_name("accelerate")), "launch"] or "accelerate.commands.launch" in cmd
    assert "--limit" not in accelerate_command(2, "tamp_qwen2_vl", "pretrained=/x", "pope", None, Path("/o"))


def test_gpus_needs_cuda_devices(tmp_path: Path) -> None:
    from harness.run import RunOptions, plan_run

    with pytest.raises(HarnessError, match="--gpus 2 needs 2 CUDA devices"):
        plan_run(RunOptions(model="tiny-llava-next", sparsity=0.5, gpus=2, output=tmp_path))


def test_artifact_key_tracks_config_and_calibration(tmp_path: Path) -> None:
    from harness.cache import artifact_key, calibration_fingerprint
    from harness.model_specs import MODELS
    from tamp.recipe import build_recipe

    spec = MODELS["tiny-llava-next"]
    text = tmp_path / "calib.txt"
    text.write_text("some words")
    fp = calibration_fingerprint(f"text:{text}", 8, 64, 42)
    recipe = build_recipe("wanda", 0.5)
    key, inputs = artifact_key(spec, recipe, fp)
    assert key == artifact_key(spec, build_recipe("wanda", 0.5), fp)[0]
    assert inputs["code"]["methods"] == {"wanda": 1} and "engine" in inputs["code"]
    assert key != artifact_key(spec, build_recipe("wanda", 0.6), fp)[0]
    assert key != artifact_key(spec, build_recipe("wanda", 0.5, dtype="float32"), fp)[0]
    text.write_text("other words")
    assert key != artifact_key(spec, recipe, calibration_fingerprint(f"text:{text}", 8, 64, 42))[0]


def test_trained_model_artifacts_are_keyed_by_the_shipped_weights(tmp_path: Path, monkeypatch) -> None:
    """The trained tiny model's artifacts follow the weights it loads (the shipped build's hash), not the recipe
    code or the torch version; its run records name the build."""
    import shutil

    from harness.cache import artifact_key, model_fingerprint
    from harness.model_specs import MODELS
    from harness.records import model_build
    from tamp.models import shipped

    spec = MODELS["tiny-trained-llava-next"]
    sha = shipped.weights_sha256("llava-next")
    assert model_fingerprint(spec, None) == {"tiny": "tiny-trained-llava-next", "weights_sha256": sha}
    assert model_build(model_fingerprint(spec, None)) == sha[:12]
    from tamp.recipe import build_recipe

    recipe = build_recipe("wanda", 0.5)
    key = artifact_key(spec, recipe, None)[0]
    # a refreshed build (another manifest hash) keys other artifacts
    root = tmp_path / "trained"
    shutil.copytree(shipped.ROOT, root)
    manifest = json.loads((root / "llava-next.json").read_text())
    (root / "llava-next.json").write_text(json.dumps({**manifest, "weights_sha256": "0" * 64}))
    monkeypatch.setattr(shipped, "ROOT", root)
    assert artifact_key(spec, recipe, None)[0] != key
    assert model_build(model_fingerprint(spec, None)) == "0" * 12
    (root / "llava-next.json").write_text("{")
    with pytest.raises(HarnessError, match="shipped trained tiny llava-next model is damaged"):
        model_fingerprint(spec, None)


def test_empty_answer_count_and_records(tmp_path: Path) -> None:
    from harness.records import empty_answers, load_record, record_path, write_json

    samples = {"a": [{"resps": [["x"]]}, {"resps": [["  "]]}, {"resps": [[""]]}], "b": [{"resps": [[(1.0, True)]]}]}
    assert empty_answers(samples, {"a": "generate_until", "b": "multiple_choice"}) == {"empty": 2, "total": 3}
    assert empty_answers({"b": samples["b"]}, {"b": "multiple_choice"}) is None
    path = record_path(tmp_path, "m/x", "wanda", 0.5, "2:4", "mme", 8)
    assert path == tmp_path / "m__x" / "wanda_s0.50_2of4" / "mme_limit8.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"schema": 1, "half')  # an interrupted writer's leftover is not a finished record
    assert load_record(path) is None
    write_json(path, {"schema": 1, "value": __import__("numpy").float64(0.25)})
    assert load_record(path) == {"schema": 1, "value": 0.25}
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_smoke_data_is_what_the_generator_writes(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "tasks" / "tamp_smoke"))
    try:
        import generate
        import utils
    finally:
        sys.path.pop(0)
    generate.write(tmp_path)
    for name in ("vqa.jsonl", "mc.jsonl"):
        assert (tmp_path / name).read_bytes() == (ROOT / "tasks" / "tamp_smoke" / "data" / name).read_bytes()
    row = json.loads((tmp_path / "vqa.jsonl").read_text().splitlines()[0])
    img = utils.render(row)
    assert img.size == (64, 64) and img.getpixel((32, 20)) == utils.RGB[row["colour"]]
    assert utils.process_results(row, [f" {row['answer'].upper()}."]) == {"exact_match": 1.0}
    assert utils.process_results(row, [""]) == {"exact_match": 0.0}


def test_qwen_image_resize_rule() -> None:
    from lmms_eval.models import get_model

    from harness.wrappers.qwen_vl import smart_resize  # imported before lmms_eval.models: no import cycle

    assert get_model("tamp_qwen2_vl").__name__ == "TampQwen2VL"

    assert smart_resize(64, 64, 56 * 56, 28 * 28 * 64) == (56, 56)
    h, w = smart_resize(1000, 2000, 56 * 56, 28 * 28 * 64)
    assert h % 28 == 0 and w % 28 == 0 and h * w <= 28 * 28 * 64
    assert smart_resize(10, 10, 56 * 56, 28 * 28 * 64) == (56, 56)


def test_accelerate_results_are_read_back(tmp_path: Path, monkeypatch) -> None:
    """lmms-eval's CLI output (results JSON + samples JSONL) becomes the same dict simple_evaluate returns."""
    import harness.evaluate as ev
    from harness.errors import EvaluationError

    def fake_call(cmd: list[str]) -> int:
        out = Path(cmd[cmd.index("--output_path") + 1]) / "some__model"
        out.mkdir(parents=True)
        (out / "20260101_000000_results.json").write_text(json.dumps({"results": {"mme": {"acc,none": 0.5}}}))
        (out / "20260101_000000_samples_mme.jsonl").write_text(json.dumps({"doc_id": 0, "resps": [["a"]]}) + "\n")
        return 0

    monkeypatch.setattr(ev.subprocess, "call", lambda cmd, env=None: fake_call(cmd))
    result = ev.evaluate_with_accelerate(2, "tamp_llava_hf", "pretrained=/a", "mme", None, tmp_path / "work")
    assert result["results"]["mme"]["acc,none"] == 0.5 and result["samples"]["mme"] == [{"doc_id": 0, "resps": [["a"]]}]
    assert result["cost"] is None  # no process measured anything
    monkeypatch.setattr(ev.subprocess, "call", lambda cmd, env=None: 0)  # exit 0 but nothing written: lmms-eval failed
    with pytest.raises(EvaluationError, match="lmms-eval wrote no results for task 'mme'"):
        ev.evaluate_with_accelerate(2, "tamp_llava_hf", "pretrained=/a", "mme", None, tmp_path / "work")


def _share(prefills: list[tuple[float, float, int]], steps: int, seconds: float, peak: float) -> dict:
    rows = [{"seconds": t, "dense": f, "nonzero": f / 2, "tokens": n, "visual_in": 8, "visual_kept": 4,
             "tokens_per_layer": [n, n - 4], "visual_per_layer": [8, 4]} for t, f, n in prefills]
    return {"prefills": rows, "decode_steps": steps, "decode_s": seconds, "peak_memory_mb": peak, "device": "cuda:0",
            "layers": 2}


def test_each_process_cost_is_merged(tmp_path: Path, monkeypatch) -> None:
    """Data-parallel runs: every process's wrapper writes its measured share to $TAMP_COST_DIR/rank<N>.json (the
    harness sets it for the launch); the record gets one summary over all of them."""
    import harness.evaluate as ev

    def fake_call(cmd: list[str], env: dict) -> int:
        out = Path(cmd[cmd.index("--output_path") + 1]) / "some__model"
        out.mkdir(parents=True)
        (out / "20260101_000000_results.json").write_text(json.dumps({"results": {"mme": {"acc,none": 0.5}}}))
        cost = Path(env[ev.COST_DIR_ENV])
        cost.mkdir(parents=True)
        (cost / "rank0.json").write_text(json.dumps(_share([(1.0, 4e12, 20), (3.0, 2e12, 10)], 10, 1.0, 900.0)))
        (cost / "rank1.json").write_text(json.dumps(_share([(2.0, 6e12, 30)], 30, 2.0, 1200.0)))
        return 0

    monkeypatch.setattr(ev.subprocess, "call", fake_call)
    cost = ev.evaluate_with_accelerate(2, "tamp_llava_hf", "pretrained=/a", "mme", None, tmp_path / "work")["cost"]
    assert cost["prefills"] == 3 and cost["processes"] == 2
    assert cost["prefill_tflops"] == pytest.approx(4.0) and cost["prefill_tflops_nonzero"] == pytest.approx(2.0)
    assert cost["prefill_latency_s"] == 2.0 and cost["prompt_tokens"] == pytest.approx(20)
    assert cost["tokens_per_layer"] == pytest.approx([20, 16]) and cost["visual_tokens_per_layer"] == [8, 4]
    assert cost["decode_tokens_per_s"] == pytest.approx(40 / 3) and cost["peak_memory_mb"] == 1200.0
    assert not (tmp_path / "work").exists()


def test_the_cost_axis_unit_keeps_values_readable() -> None:
    from harness.plots import flop_unit

    assert flop_unit(3.2) == ("TFLOPs", 1.0) and flop_unit(0.02) == ("GFLOPs", 1e3)
    assert flop_unit(0.000193) == ("MFLOPs", 1e6) and flop_unit(1e-8)[0] == "kFLOPs"

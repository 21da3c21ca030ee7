"""Weight pruning, token reduction and both on one table and one cost axis: `harness sweep` over tamp, fastv,
tamp+fastv, aim, tamp+aim and yopo on a tiny LLaVA-NeXT, through lmms-eval, then the table with --cost, the
accuracy-vs-TFLOPs plot and the leaderboard's cost columns; plus the one-line errors for compositions that cannot
work."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from harness.cli import main
from tamp.cli import main as tamp_main


def _args(root: Path) -> list[str]:
    return ["--limit", "2", "--device", "cpu", "--output", str(root / "runs"), "--artifacts", str(root / "artifacts"),
            "--nsamples", "4"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory, tiny_root: Path) -> Path:
    root = tmp_path_factory.mktemp("tokens")
    assert main(["sweep", "--model", "tiny-llava-next", "--methods", "tamp,fastv,tamp+fastv,aim,tamp+aim,yopo",
                 "--sparsities", "0.5",
                 "--tasks", "tamp_smoke_vqa,tamp_smoke_mc", "--out-dir", str(root / "out"), "--csv",
                 str(root / "board.csv"), "--set", "fastv_keep=0.25", "--set", "aim_prune_start=1",
                 # our reading, which merges images too (the release merges video frames only)
                 "--set", "aim_semantics=removal", "--set", "aim_merge_schedule=share", *_args(root)]) == 0
    return root


def test_one_table_with_the_cost_column(swept: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["table", "--runs", str(swept / "runs"), "--cost", "flops"]) == 0
    table = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in table.splitlines() if line.startswith("| ") and "Method" not in line}
    assert set(rows) == {"Dense", "TAMP", "TAMP + FastV", "FastV", "AIM", "TAMP + AIM", "YOPO"}
    tflops = {name: float(cells[-1]) for name, cells in rows.items()}
    assert tflops["FastV"] < tflops["Dense"] and tflops["TAMP + FastV"] < tflops["TAMP"]
    assert tflops["AIM"] < tflops["FastV"] and tflops["TAMP + AIM"] < tflops["TAMP + FastV"]
    assert tflops["YOPO"] < tflops["Dense"]
    assert tflops["TAMP"] == pytest.approx(tflops["Dense"])  # dense kernels: weight sparsity saves no FLOPs here


def test_records_and_leaderboard_carry_the_cost(swept: Path) -> None:
    with (swept / "board.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["headline"] == "True"]
    assert {r["method"] for r in rows} == {"dense", "tamp", "fastv", "tamp+fastv", "aim", "tamp+aim", "yopo"}
    assert len(rows) == 14
    for r in rows:
        assert float(r["prefill_tflops"]) > 0 and float(r["prefill_latency_s"]) > 0 and r["device"] == "cpu"
        assert float(r["prefill_tflops_nonzero"]) <= float(r["prefill_tflops"])
        kept, came = float(r["visual_tokens_kept"]), float(r["visual_tokens_in"])
        if "fastv" in r["method"]:
            assert kept == pytest.approx(came * 0.25)
        elif "aim" in r["method"]:  # merged to a quarter, then pruned after layers 1 and 2 of 4
            assert kept < came * 0.25
        elif r["method"] == "yopo":  # release semantics: masked after the softmax, the visual tokens stay
            assert kept == came
        else:
            assert kept == came
    sparse = [r for r in rows if r["method"] == "tamp"]
    assert all(float(r["prefill_tflops_nonzero"]) < float(r["prefill_tflops"]) for r in sparse)
    record = json.loads(next((swept / "runs" / "tiny-llava-next" / "tamp+fastv_s0.50_unstructured")
                             .glob("tamp_smoke_vqa_*.json")).read_text())
    assert record["transform"] == {"method": "fastv", "params": {"fastv_k": 2, "fastv_keep": 0.25}}
    assert record["pruning"]["transform"] == record["transform"] and record["pruning"]["config"]["method"] == "tamp"
    assert record["cost"]["decode_tokens_per_s"] > 0 and len(record["cost"]["tokens_per_layer"]) == 4
    assert record["cost"]["tokens_per_layer"][2] < record["cost"]["tokens_per_layer"][1]
    aim = json.loads(next((swept / "runs" / "tiny-llava-next" / "tamp+aim_s0.50_unstructured")
                          .glob("tamp_smoke_vqa_*.json")).read_text())
    assert aim["transform"]["method"] == "aim" and aim["transform"]["params"]["aim_prune_start"] == 1
    visual = aim["cost"]["visual_tokens_per_layer"]
    assert visual[0] < aim["cost"]["visual_tokens_in"] and visual[1] > visual[2] > visual[3]


def test_accuracy_against_tflops_plot(swept: Path) -> None:
    out = swept / "cost.png"
    assert main(["plot", "--runs", str(swept / "runs"), "--x", "tflops", "--out", str(out)]) == 0
    assert out.stat().st_size > 10_000 and out.with_suffix(".svg").is_file()


def test_the_wrapper_reapplies_the_transform(swept: Path) -> None:
    """Any evaluation of the artifact (our wrappers, so lmms-eval's own CLI too) runs the recorded token method."""
    from harness.evaluate import load_wrapper

    record = json.loads(next((swept / "runs" / "tiny-llava-next" / "fastv_s0.00_unstructured")
                             .glob("tamp_smoke_vqa_*.json")).read_text())
    lm = load_wrapper("tamp_llava_hf", f"pretrained={record['artifact']['path']}", "cpu")
    assert lm.token_dropper is not None and lm.token_dropper.plan.drops.keys() == {2}
    assert record["pruning"]["sparsity"]["sparsity"] == 0.0


def test_tamp_prune_records_a_token_method(tiny_model, tmp_path: Path) -> None:
    out = tmp_path / "fastv"
    assert tamp_main(["prune", "--model", str(tiny_model("llava")), "--method", "fastv", "--set", "fastv_k=1",
                      "--device", "cpu", "--out", str(out)]) == 0
    info = json.loads((out / "pruning.json").read_text())
    assert info["transform"] == {"method": "fastv", "params": {"fastv_k": 1, "fastv_keep": 0.5}}
    assert info["config"]["method"] == "dense" and info["sparsity"]["sparsity"] == 0.0


@pytest.mark.parametrize("argv,message", [
    (["--method", "fastv", "--sparsity", "0.5"], "--method fastv keeps every weight; it takes --sparsity 0"),
    (["--method", "fastv+fastv", "--sparsity", "0"], "at most one weight method, one quantizer and one token method"),
    (["--method", "tamp+wanda", "--sparsity", "0.5"], "at most one weight method, one quantizer and one token method"),
    (["--method", "tamp+", "--sparsity", "0.5"], "empty part"),
    (["--method", "tamp+fastv", "--sparsity", "0.5", "--set", "fastv_keep=2"], "fastv_keep must be in [0, 1]"),
    (["--method", "tamp", "--sparsity", "0.5", "--set", "fastv_k=3"], "parameters of a token method"),
])
def test_bad_compositions_are_one_line(argv: list[str], message: str, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--model", "tiny-llava-next", *argv, "--output", str(tmp_path / "r"),
                 "--artifacts", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_drop_layer_the_model_lacks_is_refused_at_prune_time(tiny_model, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    code = tamp_main(["prune", "--model", str(tiny_model("llava")), "--method", "fastv", "--set", "fastv_k=9",
                      "--device", "cpu", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    # refused from the config before the model loads (tamp prune's preflight asks the depth)
    assert code == 2 and "fastv_k 9 is beyond this model's 4 decoder layers" in err and not (tmp_path / "x").exists()


def test_a_sweep_refuses_a_token_parameter_no_method_of_it_takes(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["sweep", "--model", "tiny-llava-next", "--methods", "tamp,tamp+fastv", "--sparsities", "0.5",
                 "--set", "aim_tau=0.2", "--dry-run", "--out-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "--set aim_tau: a parameter of aim, which no method of this grid uses; add it, e.g. tamp+aim" \
        in err and len(err.strip().splitlines()) == 1


def test_a_process_shares_its_cost_for_data_parallel_runs(swept: Path, monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    """Under `accelerate launch` (harness --gpus N) each process's wrapper writes what it measured to
    $TAMP_COST_DIR/rank<RANK>.json after every lmms-eval call; merged, it is what the process's meter holds."""
    from harness.evaluate import COST_DIR_ENV, evaluate_in_process, load_wrapper, merged_cost
    from harness.tasks_catalog import task_manager
    from tamp.inference.cost import summarize

    record = json.loads(next((swept / "runs" / "tiny-llava-next" / "aim_s0.00_unstructured")
                             .glob("tamp_smoke_vqa_*.json")).read_text())
    monkeypatch.setenv(COST_DIR_ENV, str(tmp_path / "cost"))
    monkeypatch.setenv("RANK", "0")  # lmms-eval shards the documents by RANK too
    lm = load_wrapper("tamp_llava_hf", f"pretrained={record['artifact']['path']}", "cpu")
    evaluate_in_process(lm, "tamp_smoke_vqa", 2, task_manager("tamp_llava_hf"))
    share = json.loads((tmp_path / "cost" / "rank0.json").read_text())
    merged = merged_cost(tmp_path / "cost")
    own = summarize([lm.cost_meter.export()])
    assert merged is not None and merged["prefills"] == 2 == own["prefills"] and share["layers"] == 4
    for key in ("prefill_tflops", "tokens_per_layer", "visual_tokens_per_layer", "visual_tokens_in"):
        assert merged[key] == own[key]
    assert merged["visual_tokens_kept"] < merged["visual_tokens_in"]


def test_yopo_records_its_resolved_plan_and_skipped_compute(swept: Path) -> None:
    record = json.loads(next((swept / "runs" / "tiny-llava-next" / "yopo_s0.00_unstructured")
                             .glob("tamp_smoke_vqa_*.json")).read_text())
    assert record["transform"] == {"method": "yopo", "params": {
        "yopo_strategies": "layers+ffn+heads+attn", "yopo_budget": 0.25, "yopo_layer": -1, "yopo_ffn_keep": 0.5,
        "yopo_heads_keep": 0.5, "yopo_window": 5, "yopo_semantics": "release", "yopo_window_causal": False}}
    # the default is the paper's whole method: the heads were chosen on the model's default calibration data
    fitted = record["pruning"]["transform"]["fitted"]
    assert record["pruning"]["calibration"]["samples"] > 0 and len(fitted["yopo_head_stat"]) == 4
    assert sum(map(len, fitted["yopo_pruned_heads"])) == 8  # half of 4 layers x 4 heads
    visual = record["cost"]["visual_tokens_per_layer"]
    # release semantics: the cut masks the visual keys, the visual tokens run through every layer
    assert visual[0] == record["cost"]["visual_tokens_in"] == visual[-1]


def test_yopo_heads_are_chosen_at_prune_time_and_reapplied_at_load(tiny_model, tmp_path: Path) -> None:
    """`tamp prune --method yopo` with the heads strategy runs the calibration data, records the heads with the
    statistic that chose them under the transform's `fitted`, and the lmms-eval wrapper installs exactly those."""
    from harness.evaluate import load_wrapper
    from tamp.methods import yopo

    out = tmp_path / "yopo"
    assert tamp_main(["prune", "--model", str(tiny_model("llava")), "--method", "yopo", "--set",
                      "yopo_strategies=layers+heads", "--set", "yopo_layer=3", "--nsamples", "2", "--device", "cpu",
                      "--out", str(out)]) == 0
    info = json.loads((out / "pruning.json").read_text())
    fitted = info["transform"]["fitted"]
    assert info["calibration"]["samples"] == 2 and len(fitted[yopo.HEAD_STAT]) == 4
    assert sum(len(p) for p in fitted[yopo.PRUNED_HEADS]) == 8  # half of 4 layers x 4 heads
    lm = load_wrapper("tamp_llava_hf", f"pretrained={out}", "cpu")
    want = {i: tuple(p) for i, p in enumerate(fitted[yopo.PRUNED_HEADS]) if p}  # release: every layer
    from tamp.inference.visual_attention import VisualAttentionPatch

    patch = lm.token_dropper.plan.part(VisualAttentionPatch)
    assert patch.heads == want and patch.cut_from == 3 and patch.zeroed == {i: h for i, h in want.items() if i < 3}


def test_tamp_plus_yopo_fits_the_heads_on_the_pruned_weights(tiny_model, tmp_path: Path) -> None:
    """`--method tamp+yopo`: the weights are pruned with tamp, then the heads are chosen on the pruned model from
    the same calibration batches; every strategy switched on, the window's causal switch through --set."""
    from tamp.methods import yopo
    from tamp.token_transform import TokenTransform

    out = tmp_path / "tamp-yopo"
    assert tamp_main(["prune", "--model", str(tiny_model("llava-next")), "--method", "tamp+yopo", "--sparsity", "0.5",
                      "--set", "yopo_strategies=layers+ffn+heads+attn", "--set", "yopo_window_causal=true",
                      "--nsamples", "2", "--device", "cpu", "--out", str(out)]) == 0
    info = json.loads((out / "pruning.json").read_text())
    assert info["config"]["method"] == "tamp" and info["sparsity"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    transform = TokenTransform.from_dict(info["transform"])
    assert transform.params["yopo_window_causal"] is True and transform.fitted[yopo.VISUAL_TOKENS] > 0
    assert "token_fit" in info["timings"]

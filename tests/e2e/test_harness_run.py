"""End-to-end `harness run` on tiny models, offline, through the registered lmms-eval wrappers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness.cli import main

SMOKE = "tamp_smoke_vqa,tamp_smoke_mc"


def run_cli(*args: str) -> int:
    return main(["run", *args])


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory, tiny_root: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("harness")
    return {"runs": root / "runs", "artifacts": root / "artifacts"}


def common(dirs: dict[str, Path]) -> list[str]:
    return ["--output", str(dirs["runs"]), "--artifacts", str(dirs["artifacts"]), "--limit", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def pruned(dirs: dict[str, Path]) -> Path:
    """tiny-llava-next, Wanda 50%, both smoke tasks: the run every other test builds on."""
    assert run_cli("--model", "tiny-llava-next", "--method", "wanda", "--sparsity", "0.5", "--tasks", SMOKE,
                   "--nsamples", "4", *common(dirs)) == 0
    return dirs["runs"] / "tiny-llava-next" / "wanda_s0.50_unstructured"


def test_pruned_run_writes_complete_records(pruned: Path) -> None:
    rec = json.loads((pruned / "tamp_smoke_vqa_limit4.json").read_text())
    assert "exact_match,none" in rec["metrics"] and rec["results"]["tamp_smoke_vqa"] == rec["metrics"]
    assert rec["method"] == "wanda" and rec["sparsity"] == 0.5 and rec["pattern"] == "unstructured"
    assert rec["pruning"]["sparsity"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert rec["pruning"]["config"]["method"] == "wanda"
    assert rec["empty_answers"] == {"empty": 0, "total": 4}
    assert set(rec["versions"]) >= {"tamp", "torch", "transformers", "lmms-eval"}
    assert rec["versions"]["lmms-eval"] == "0.7.3"
    assert rec["timings"]["prune_s"] > 0 and rec["timings"]["eval_s"] > 0
    assert rec["date"] and "git_commit" in rec and rec["model"]["wrapper"] == "tamp_llava_hf"
    assert Path(rec["artifact"]["path"], "pruning.json").is_file()
    samples = (pruned / rec["samples_file"]).read_text().splitlines()
    assert len(samples) == 4 and {"doc_id", "resps", "target", "exact_match"} <= set(json.loads(samples[0]))
    mc = json.loads((pruned / "tamp_smoke_mc_limit4.json").read_text())
    assert "acc,none" in mc["metrics"] and mc["empty_answers"] is None  # loglikelihood: no answers to count
    assert len((pruned / mc["samples_file"]).read_text().splitlines()) == 4


def test_rerun_skips_force_reruns_and_resume(pruned: Path, dirs: dict[str, Path], capsys) -> None:
    vqa, mc = pruned / "tamp_smoke_vqa_limit4.json", pruned / "tamp_smoke_mc_limit4.json"
    before = {p: p.stat().st_mtime_ns for p in (vqa, mc)}
    args = ["--model", "tiny-llava-next", "--method", "wanda", "--sparsity", "0.5", "--nsamples", "4", *common(dirs)]
    capsys.readouterr()
    assert run_cli(*args, "--tasks", SMOKE) == 0
    out = capsys.readouterr().out
    assert out.count("skip ") == 2 and "cached" in out and "wrote artifact" not in out
    assert {p: p.stat().st_mtime_ns for p in (vqa, mc)} == before
    # --force re-evaluates, reusing the cached artifact
    assert run_cli(*args, "--tasks", "tamp_smoke_vqa", "--force") == 0
    out = capsys.readouterr().out
    assert "reusing artifact" in out and vqa.stat().st_mtime_ns != before[vqa]
    assert json.loads(vqa.read_text())["artifact"]["reused"] is True
    # an interrupted run: the record of one task is missing -> only that one runs again
    mc.unlink()
    assert run_cli(*args, "--tasks", SMOKE) == 0
    out = capsys.readouterr().out
    assert "skip tamp_smoke_vqa" in out and "done tamp_smoke_mc" in out and mc.is_file()


def test_dense_through_the_same_path(dirs: dict[str, Path]) -> None:
    assert run_cli("--model", "tiny-llava-next", "--sparsity", "0", "--tasks", "tamp_smoke_vqa", *common(dirs)) == 0
    rec = json.loads((dirs["runs"] / "tiny-llava-next" / "dense_s0.00_unstructured" / "tamp_smoke_vqa_limit4.json")
                     .read_text())
    assert rec["method"] == "dense" and rec["pruning"]["sparsity"]["zeros"] == 0
    assert (Path(rec["artifact"]["path"]) / "pruning.json").is_file()


def test_qwen2_vl_without_torchvision(dirs: dict[str, Path]) -> None:
    """The Qwen-VL wrapper builds its processor and image inputs without torchvision; MC works too."""
    assert run_cli("--model", "tiny-qwen2-vl", "--method", "dense", "--tasks", SMOKE, *common(dirs)[:-4],
                   "--limit", "2", "--device", "cpu") == 0
    run = dirs["runs"] / "tiny-qwen2-vl" / "dense_s0.00_unstructured"
    assert json.loads((run / "tamp_smoke_vqa_limit2.json").read_text())["empty_answers"]["total"] == 2
    assert "acc,none" in json.loads((run / "tamp_smoke_mc_limit2.json").read_text())["metrics"]


def _biased_tiny(tiny_model, out: Path, word: str | None) -> Path:
    """tiny LLaVA-NeXT that always answers `word` (None: always an empty answer), via its generation config."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    src = tiny_model("llava-next")
    shutil.copytree(src, out)
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForImageTextToText.from_pretrained(out)
    with torch.no_grad():
        model.model.language_model.norm.weight.zero_()  # every logit 0: the biases alone decide
    ids = (tok.encode(word, add_special_tokens=False) if word else []) + [tok.eos_token_id]
    model.generation_config.sequence_bias = [[[ids[0]], 100.0]] + [[[a, b], 300.0] for a, b in zip(ids, ids[1:])]
    model.save_pretrained(out)
    return out


def test_control_model_scores_exactly(tiny_model, tmp_path: Path, dirs: dict[str, Path]) -> None:
    """A model that always gives one answer scores that answer's share: decode -> filter -> metric is sound."""
    data = Path(__file__).resolve().parents[2] / "tasks" / "tamp_smoke" / "data" / "vqa.jsonl"
    answers = [json.loads(line)["answer"] for line in data.read_text().splitlines()[:8]]
    word = max(set(answers), key=answers.count)
    assert 0 < answers.count(word) < 8
    model = _biased_tiny(tiny_model, tmp_path / "always-one-word", word)
    assert run_cli("--model", str(model), "--sparsity", "0", "--tasks", "tamp_smoke_vqa", "--limit", "8",
                   "--output", str(tmp_path / "runs"), "--artifacts", str(dirs["artifacts"]), "--device", "cpu") == 0
    rec = json.loads((tmp_path / "runs" / "always-one-word" / "dense_s0.00_unstructured" / "tamp_smoke_vqa_limit8.json")
                     .read_text())
    assert rec["metrics"]["exact_match,none"] == pytest.approx(answers.count(word) / 8)


def test_mostly_empty_answers_fail_loudly(tiny_model, tmp_path: Path, dirs: dict[str, Path], capsys) -> None:
    model = _biased_tiny(tiny_model, tmp_path / "mute", None)
    args = ["--model", str(model), "--sparsity", "0", "--tasks", "tamp_smoke_vqa", "--limit", "4",
            "--output", str(tmp_path / "runs"), "--artifacts", str(dirs["artifacts"]), "--device", "cpu"]
    assert run_cli(*args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: 4 of 4 answers to task 'tamp_smoke_vqa' are empty")
    assert not list((tmp_path / "runs").rglob("*.json"))  # nothing recorded: a re-run tries again
    assert run_cli(*args, "--max-empty-fraction", "1") == 0  # accepted on request, and counted
    rec = next((tmp_path / "runs").rglob("tamp_smoke_vqa_limit4.json"))
    assert json.loads(rec.read_text())["empty_answers"] == {"empty": 4, "total": 4}


def test_tampered_artifact_is_refused(pruned: Path, tiny_model, tmp_path: Path) -> None:
    from harness.errors import ArtifactRefused
    from harness.evaluate import load_wrapper

    rec = json.loads((pruned / "tamp_smoke_vqa_limit4.json").read_text())
    tampered = tmp_path / "tampered"
    shutil.copytree(rec["artifact"]["path"], tampered)
    shutil.copy(tiny_model("llava-next") / "model.safetensors", tampered / "model.safetensors")  # dense weights
    with pytest.raises(ArtifactRefused, match="do not carry the sparsity pruning.json records"):
        load_wrapper("tamp_llava_hf", f"pretrained={tampered}", "cpu")
    lm = load_wrapper("tamp_llava_hf", f"pretrained={tampered},verify_sparsity=false", "cpu")
    assert lm.sparsity_check is None
    dense = load_wrapper("tamp_llava_hf", f"pretrained={tiny_model('llava-next')}", "cpu")  # no pruning.json
    assert dense.tamp_info is None and str(dense.device) == "cpu"

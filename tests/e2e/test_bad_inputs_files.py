"""Files that are read back and must hold what their format says, and environments a run cannot work in: one line
saying what is wrong and what to do, never a traceback or a silent default.

One row per bad input, as in tests/e2e/test_bad_inputs.py: the command, its arguments (`{name}` stands for a file or
folder the fixture below makes), a fragment of the one line, and the exit code (0 where the bad file is skipped with
a warning and the command goes on). The readers: pruning.json's `transform` section (tamp.artifacts.TransformSection,
then the method's parameters and `fitted_schema`), run records (harness.records.RunRecord), published CSVs
(harness.collect.PublishedRow).
"""

from __future__ import annotations

import copy
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import harness.cli
import tamp.cli

ROOT = Path(__file__).resolve().parents[2]


ROOT_USER = os.geteuid() == 0


def row(id: str, cli: str, args: str, fragment: str, code: int = 2, env: dict[str, str] | None = None,
        marks: Any = ()) -> Any:
    return pytest.param(cli, args, fragment, code, env or {}, id=id, marks=marks)


NOT_ROOT = pytest.mark.skipif(ROOT_USER, reason="root writes into a read-only-mode folder; the /proc rows cover it")
RUN = "run --model tiny-llava-next --sparsity 0.5 --method magnitude --tasks tamp_smoke_vqa --output {tmp}/runs " \
      "--artifacts {tmp}/art --device cpu"
PRUNE = "prune --model tiny-llava-next --method magnitude --out {tmp}/out --device cpu"


RUNS = "--runs {runs_ok}"
ROWS = [
    # ---- pruning.json's transform section, through `tamp inspect`
    row("inspect-transform-not-a-table", "tamp", "inspect {art_not_table}",
        "{art_not_table}/pruning.json: its transform section: it is \"fastv\", expected a table of method, params"),
    row("inspect-transform-no-method", "tamp", "inspect {art_no_method}",
        "its transform section: field 'method' is missing (a string)"),
    row("inspect-transform-param-type", "tamp", "inspect {art_param_type}",
        "its transform section: field 'params.fastv_k' is \"two\", expected a whole number; the artifact is damaged"),
    row("inspect-transform-param-list", "tamp", "inspect {art_param_list}",
        "its transform section: field 'params.fastv_keep' is [0.5], expected a string, a number, true or false or null"),
    row("inspect-transform-param-range", "tamp", "inspect {art_param_range}",
        "its transform section: fastv_keep must be in [0, 1], got 1.5"),
    row("inspect-transform-unknown-method", "tamp", "inspect {art_unknown_method}",
        "its transform section: unknown method 'nope'"),
    row("inspect-transform-weight-method", "tamp", "inspect {art_weight_method}",
        "its transform section: 'wanda' is a weight method, not a token method"),
    row("inspect-transform-budget", "tamp", "inspect {art_budget}",
        "its transform section: field 'budget' is \"half\", expected a number or null"),
    row("inspect-yopo-heads-not-ints", "tamp", "inspect {art_yopo_heads}",
        "field 'fitted.yopo_pruned_heads[1][0]' is 0.5, expected a whole number"),
    row("inspect-yopo-fitted-missing-field", "tamp", "inspect {art_yopo_no_tokens}",
        "field 'fitted.yopo_tokens' is missing (a number)"),
    row("inspect-yopo-not-fitted", "tamp", "inspect {art_yopo_unfitted}",
        "field 'fitted' is missing (what yopo chooses at prune time)"),
    row("plot-allocation-transform-not-a-table", "harness", "plot --allocation {art_not_table} --out {tmp}/a.png",
        "{art_not_table}/pruning.json: its transform section: it is \"fastv\", expected a table of method, params"),
    row("plot-allocation-transform-no-method", "harness", "plot --allocation {art_no_method} --out {tmp}/a.png",
        "its transform section: field 'method' is missing (a string)"),
    # ---- run records of the wrong shape: skipped with one warning naming the file, the field and the type
    *[row(f"{cmd}-record-{name}", "harness", f"{cmd} --runs {{{runs}}} {extra}", fragment, code=0)
      for cmd, extra in (("table", ""), ("export", "--csv {tmp}/l.csv"), ("plot", "--out {tmp}/c.png"))
      for name, runs, fragment in (
          ("sparsity-text", "runs_sparsity", "a run record whose field 'sparsity' is \"half\", expected a number"),
          ("model-text", "runs_model", "a run record whose field 'model' is \"m\", expected a table of name, build"),
          ("cost-text", "runs_cost", "a run record whose field 'cost.prefill_tflops' is \"fast\", expected a number "
                                     "or null"),
          ("limit-float", "runs_limit", "a run record whose field 'limit' is 0.5, expected a whole number or null"))],
    # ---- published CSVs with a cell of the wrong type (`harness export` writes our records only)
    *[row(f"{cmd}-published-{name}", "harness", f"{cmd} {RUNS} --published {{{pub}}} {extra}", fragment)
      for cmd, extra in (("table", ""), ("plot", "--out {tmp}/c.png"))
      for name, pub, fragment in (
          ("sparsity", "pub_sparsity", "{pub_sparsity}: its row 1 (llava-next, wanda, pope): field 'sparsity' is "
                                       "\"half\", expected a number; correct it or remove the row"),
          ("value", "pub_value", "{pub_value}: its row 2 (llava-next, wanda, mme): field 'value' is \"n/a\", "
                                 "expected a number"),
          ("value-inf", "pub_inf", "{pub_inf}: its row 1 (llava-next, wanda, pope): field 'value' is \"inf\", "
                                   "expected a number"))],
]


# ---- caches named by the environment that cannot take files: refused before anything is loaded
for _cli, _args, _what in (("tamp", PRUNE, "prune"), ("harness", RUN, "run")):
    ROWS += [
        row(f"{_what}-tamp-cache-file", _cli, _args, "TAMP_CACHE={afile}: it is a file, not a folder; point TAMP_CACHE "
            "at a folder you can write to, or unset it (default ~/.cache/tamp)", env={"TAMP_CACHE": "{afile}"}),
        row(f"{_what}-tamp-cache-under-file", _cli, _args, "TAMP_CACHE={afile}/cache: {afile} is a file, not a folder",
            env={"TAMP_CACHE": "{afile}/cache"}),
        row(f"{_what}-tamp-cache-read-only", _cli, _args, "TAMP_CACHE=/proc/tamp-cache: cannot create files in /proc",
            env={"TAMP_CACHE": "/proc/tamp-cache"}),
        row(f"{_what}-tamp-cache-unwritable", _cli, _args, "TAMP_CACHE={readonly}: cannot create files in {readonly}",
            env={"TAMP_CACHE": "{readonly}"}, marks=NOT_ROOT),
    ]
ROWS += [
    row("run-hf-home-file", "harness", RUN, "HF_HOME={afile}: it is a file, not a folder; point HF_HOME at a folder "
        "you can write to, or unset it (default ~/.cache/huggingface)", env={"HF_HOME": "{afile}"}),
    row("run-hf-home-read-only", "harness", RUN, "HF_HOME=/proc/hf (/proc/hf/datasets under it): cannot create files "
        "in /proc", env={"HF_HOME": "/proc/hf"}),
    row("run-hf-home-unwritable", "harness", RUN, "HF_HOME={readonly} ({readonly}/datasets under it): cannot create "
        "files in {readonly}", env={"HF_HOME": "{readonly}"}, marks=NOT_ROOT),
    row("run-hf-datasets-cache-file", "harness", RUN, "HF_DATASETS_CACHE={afile}: it is a file, not a folder",
        env={"HF_DATASETS_CACHE": "{afile}"}),
    row("prune-hf-home-file", "tamp", "prune --model someone/some-model --out {tmp}/out", "HF_HOME={afile}: it is a "
        "file, not a folder", env={"HF_HOME": "{afile}", "HF_HUB_OFFLINE": "1"}),
]


def _record(**fields: Any) -> dict[str, Any]:
    return {"schema": 1, "model": {"name": "m"}, "method": "wanda", "sparsity": 0.5, "pattern": "unstructured",
            "task": "tamp_smoke_vqa", "limit": None, "metrics": {"exact_match,none": 0.5}, "artifact_key": "k",
            **fields}


def _write_record(runs: Path, record: dict[str, Any], task: str = "tamp_smoke_vqa") -> None:
    path = runs / "m" / "wanda_s0.50_unstructured" / f"{task}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def _with_transform(source: Path, target: Path, edit: Any) -> Path:
    """A copy of the artifact ``source`` whose pruning.json's transform section ``edit`` rewrote."""
    shutil.copytree(source, target)
    info = json.loads((target / "pruning.json").read_text())
    info["transform"] = edit(copy.deepcopy(info["transform"]))
    (target / "pruning.json").write_text(json.dumps(info))
    return target


def _set(section: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    *parents, last = path.split(".")
    node = section
    for part in parents:
        node = node[part]
    node[last] = value
    return section


# a YOPO transform as `tamp prune --method yopo` records it for tiny-llava-next (4 layers of 4 heads), its fit
# written by hand: the reader never runs the fit, so none is needed to test it
YOPO = {"method": "yopo", "params": {"yopo_strategies": "layers+ffn+heads+attn", "yopo_budget": 0.25, "yopo_layer": -1,
                                     "yopo_ffn_keep": 0.5, "yopo_heads_keep": 0.5, "yopo_window": 5,
                                     "yopo_semantics": "release", "yopo_window_causal": False},
        "fitted": {"yopo_tokens": 159.0, "yopo_visual_tokens": 88.0,
                   "yopo_head_stat": [[0.78, 0.77, 0.79, 0.78]] * 4, "yopo_pruned_heads": [[2], [0, 2], [1, 2], [0, 2]]}}


@pytest.fixture(scope="module")
def fastv(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-llava-next with FastV (no weights pruned, no fit: a couple of seconds)."""
    out = tmp_path_factory.mktemp("fastv") / "artifact"
    assert tamp.cli.main(["prune", "--model", str(tiny_model("llava-next")), "--method", "fastv", "--out", str(out),
                          "--device", "cpu"]) == 0
    return out


TRANSFORM_EDITS: dict[str, Any] = {
    "art_not_table": lambda t: "fastv",
    "art_no_method": lambda t: {"params": t["params"]},
    "art_param_type": lambda t: _set(t, "params.fastv_k", "two"),
    "art_param_list": lambda t: _set(t, "params.fastv_keep", [0.5]),
    "art_param_range": lambda t: _set(t, "params.fastv_keep", 1.5),
    "art_unknown_method": lambda t: _set(t, "method", "nope"),
    "art_weight_method": lambda t: _set(t, "method", "wanda"),
    "art_budget": lambda t: _set(t, "budget", "half"),
    "art_yopo": lambda t: copy.deepcopy(YOPO),
    "art_yopo_heads": lambda t: _set(copy.deepcopy(YOPO), "fitted.yopo_pruned_heads", [[2], [0.5], [1], [0]]),
    "art_yopo_no_tokens": lambda t: {**YOPO, "fitted": {k: v for k, v in YOPO["fitted"].items() if k != "yopo_tokens"}},
    "art_yopo_unfitted": lambda t: {k: v for k, v in YOPO.items() if k != "fitted"},
}


@pytest.fixture(scope="module")
def paths(fastv: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Every file and folder the rows name, made once."""
    root = tmp_path_factory.mktemp("bad-files")
    p: dict[str, Path] = {"tmp": root, "fastv": fastv, "afile": root / "afile", "readonly": root / "readonly"}
    p["afile"].write_text("a file, not a folder\n")
    p["readonly"].mkdir()
    p["readonly"].chmod(0o555)
    for name, edit in TRANSFORM_EDITS.items():
        p[name] = _with_transform(fastv, root / name, edit)
    p["runs_ok"] = root / "runs_ok"
    _write_record(p["runs_ok"], _record())
    for name, bad in (("runs_sparsity", {"sparsity": "half"}), ("runs_model", {"model": "m"}),
                      ("runs_cost", {"cost": {"prefill_tflops": "fast"}}), ("runs_limit", {"limit": 0.5})):
        p[name] = root / name
        _write_record(p[name], _record())
        _write_record(p[name], _record(task="pope", metrics={"pope_accuracy,none": 0.8}, **bad), task="pope")
    header = "model,method,sparsity,pattern,task,value,source\n"
    for name, body in (("pub_sparsity", "llava-next,wanda,half,unstructured,pope,80,paper\n"),
                       ("pub_value", "llava-next,wanda,0.5,unstructured,pope,80,paper\n"
                                     "llava-next,wanda,0.5,unstructured,mme,n/a,paper\n"),
                       ("pub_inf", "llava-next,wanda,0.5,unstructured,pope,inf,paper\n")):
        p[name] = root / f"{name}.csv"
        p[name].write_text(header + body)
    return {k: str(v) for k, v in p.items()}


def _forbid(what: str) -> Any:
    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"{what} although the input is bad and checkable before")

    return fail


@pytest.mark.parametrize("cli, args, fragment, code, env", ROWS)
def test_bad_file(cli: str, args: str, fragment: str, code: int, env: dict[str, str], paths: dict[str, str],
                  tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    values = {**paths, "tmp": str(tmp_path)}
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(**values))
    monkeypatch.setattr("tamp.pipeline.load_model", _forbid("a model was loaded"))
    monkeypatch.setattr("harness.cache.ensure_artifact", _forbid("a model was pruned"))
    main = tamp.cli.main if cli == "tamp" else harness.cli.main
    got = main(shlex.split(args.format(**values)))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert got == code, err
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: " if code else "warning: "), err
    assert fragment.format(**values) in lines[0], lines[0]


# ---- the transform section through every other reader -------------------------------------------------------------


def test_inspect_shows_the_token_transform(paths: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    """A token-method artifact says which method runs at inference and with what, not "method: dense"."""
    assert tamp.cli.main(["inspect", paths["fastv"], "--summary"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "method:   fastv (a token method: the weights are not pruned)"
    assert lines[2] == "transform: fastv (fastv_k=2, fastv_keep=0.5)"
    assert tamp.cli.main(["inspect", paths["art_yopo"], "--summary"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "method:   yopo (a token method: the weights are not pruned)"
    assert lines[2].startswith("transform: yopo (yopo_strategies=layers+ffn+heads+attn, yopo_budget=0.25, ")
    assert lines[3] == ("fitted:   yopo_tokens=159, yopo_visual_tokens=88, yopo_head_stat=[4 layers], "
                        "yopo_pruned_heads=[4 layers]")


@pytest.mark.parametrize("name, fragment", [
    ("art_param_type", "field 'params.fastv_k' is \"two\", expected a whole number"),
    ("art_not_table", "its transform section: it is \"fastv\", expected a table"),
    ("art_yopo_heads", "field 'fitted.yopo_pruned_heads[1][0]' is 0.5, expected a whole number"),
    ("art_unknown_method", "its transform section: unknown method 'nope'"),
])
def test_wrapper_refuses_a_malformed_transform_before_loading(name: str, fragment: str, paths: dict[str, str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Our lmms-eval wrappers read the section through the same schema, before any weight is loaded; the refusal
    is a SystemExit (lmms-eval's CLI cannot swallow it) whose one line says to prune again, not to skip the
    sparsity check (which would not help)."""
    from harness.errors import ArtifactRefused
    from harness.evaluate import load_wrapper

    def no_load(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("weights were loaded although pruning.json's transform is malformed")

    monkeypatch.setattr("transformers.LlavaNextForConditionalGeneration.from_pretrained", no_load)
    with pytest.raises(ArtifactRefused) as refused:
        load_wrapper("tamp_llava_hf", f"pretrained={paths[name]}", "cpu")
    message = str(refused.value.code)
    assert message.startswith(f"error: {paths[name]}/pruning.json: ") and "\n" not in message
    assert fragment in message and message.endswith("; prune it again") and "verify_sparsity" not in message


def test_cached_artifact_with_a_malformed_transform_is_pruned_again(tiny_root: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """`harness run` reaching a cached artifact whose transform was edited (cached before file manifests, so only
    the schema can tell) prunes it again with a warning naming what is wrong, for a wrong type and a bad value."""
    from harness.cache import KEY_FILE, ensure_artifact
    from harness.run import RunOptions, plan_run

    p = plan_run(RunOptions(model="tiny-llava-next", sparsity=0.0, method="fastv", tasks=["tamp_smoke_vqa"],
                            output=tmp_path / "runs", artifacts=tmp_path / "art", device="cpu"))
    build = lambda: ensure_artifact(tmp_path / "art", p.key, p.key_inputs, p.spec, p.recipe, "cpu")  # noqa: E731
    artifact, reused, _ = build()
    assert not reused
    for value, said in (("two", "field 'params.fastv_k' is \"two\", expected a whole number"),
                        (-1, "fastv_k must be at least")):
        info = json.loads((artifact / "pruning.json").read_text())
        info["transform"]["params"]["fastv_k"] = value
        (artifact / "pruning.json").write_text(json.dumps(info))
        key = json.loads((artifact / KEY_FILE).read_text())
        key.pop("files", None)
        (artifact / KEY_FILE).write_text(json.dumps(key))
        capsys.readouterr()
        artifact, reused, _ = build()
        assert not reused, value
        warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
        assert len(warnings) == 1 and warnings[0].startswith(f"warning: cached artifact {artifact} is damaged (")
        assert said in warnings[0] and warnings[0].endswith("; pruning it again")
        assert json.loads((artifact / "pruning.json").read_text())["transform"]["params"]["fastv_k"] == 2


@pytest.mark.parametrize("name, fragment", [
    ("art_param_type", "field 'params.fastv_k' is \"two\", expected a whole number"),
    ("art_yopo_heads", "field 'fitted.yopo_pruned_heads[1][0]' is 0.5, expected a whole number"),
])
def test_lmms_eval_cli_exits_non_zero_on_a_malformed_transform(name: str, fragment: str, paths: dict[str, str],
                                                               tiny_root: Path, tmp_path: Path) -> None:
    """lmms-eval's CLI catches every Exception a model raises, prints its traceback and exits 0; our wrapper's
    refusal is a SystemExit, so the CLI ends with our one line and exit code 1."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TAMP_CACHE": str(tiny_root),
           "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "tamp_llava_hf", "--model_args", f"pretrained={paths[name]}",
           "--tasks", "tamp_smoke_vqa", "--include_path", str(ROOT / "tasks"), "--batch_size", "1", "--limit", "1",
           "--output_path", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], proc.stderr[-3000:]
    assert fragment in lines[-1] and lines[-1].endswith("; prune it again")


# ---- a full disk under --out / --artifacts / --output / TAMP_CACHE: one line, exit 1, nothing half-written ----------


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """size -> a folder on a tmpfs of that size, unmounted after the test (needs root and a working mount)."""
    if not ROOT_USER:
        pytest.skip("mounting a small tmpfs needs root (tests/tamp/test_disk_full_and_cache_entries.py fakes ENOSPC)")
    mounted: list[Path] = []

    def make(size: str) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield make
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=False)


def _left(folder: Path) -> list[str]:
    """The files a failed write left in ``folder``, but the cache's key locks (flock files, empty)."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and not p.name.endswith(".lock"))


@pytest.mark.parametrize("where", ["prune-out", "prune-tamp-cache", "run-artifacts", "run-output"])
def test_a_full_disk_is_one_line_and_leaves_nothing(where: str, small_disk: Any, tiny_model, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny model's weights (about 1 MB) do not fit a 200 kB disk; a run record with its samples does not fit
    8 kB."""
    tiny_model("llava-next")  # built in the session's cache first (but not for prune-tamp-cache)
    disk = small_disk("8k" if where == "run-output" else "200k")
    out = {"prune-out": disk / "out", "prune-tamp-cache": tmp_path / "out", "run-artifacts": disk / "art",
           "run-output": disk / "runs"}[where]
    if where.startswith("prune"):
        if where == "prune-tamp-cache":
            monkeypatch.setenv("TAMP_CACHE", str(disk))
        got = tamp.cli.main(shlex.split(PRUNE.format(tmp=tmp_path).replace(f"{tmp_path}/out", str(out))))
    else:
        other = {"run-artifacts": ["--output", str(tmp_path / "runs")], "run-output": ["--artifacts", str(tmp_path / "art")]}
        flag = "--artifacts" if where == "run-artifacts" else "--output"
        got = harness.cli.main(["run", "--model", "tiny-llava-next", "--sparsity", "0.5", "--method", "magnitude",
                                "--tasks", "tamp_smoke_vqa", "--limit", "1", "--device", "cpu", flag, str(out), *other[where]])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert got == 1, err[-3000:]
    assert "Traceback" not in err and len(lines) == 1 and lines[0] == err.strip().splitlines()[-1], err[-3000:]
    assert lines[0].startswith("error: no space left on the device under ") and "nothing half-written is left" in lines[0]
    if where == "prune-tamp-cache":
        assert "(TAMP_CACHE, where tiny models are built)" in lines[0]
    # harness run writes a record's samples first (complete, atomically), so a record never lacks them: on a full
    # --output they stay, without their record, and the next run writes both again
    samples = ["runs/tiny-llava-next/magnitude_s0.50_unstructured/tamp_smoke_vqa_limit1.samples.jsonl"]
    assert _left(disk) == (samples if where == "run-output" else [])

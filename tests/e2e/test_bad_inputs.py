"""Every bad input we know of, as a user types it: one `error: ...` line on stderr, exit code 2, no traceback.

One row per input: the command (`tamp` or `harness`), its arguments (`{name}` stands for a file or folder the
fixture below makes), a fragment of the message, and fragments it must not contain (a misleading hint). Unless a
row says it loads a model, loading one fails the test: those inputs must be refused before any model is loaded
(`tamp prune`) or pruned (`harness run`). The commands run in this process; tests/e2e/test_bad_inputs_process.py holds
what needs a process of its own (Ctrl-C, a closed pipe, lmms-eval's CLI).
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

import harness.cli
import tamp.cli
from tests.helpers import tamper_zeros

CUDA = torch.cuda.is_available()


def row(id: str, cli: str, args: str, fragment: str, absent: tuple[str, ...] = (), loads: bool = False,
        code: int = 2, marks: Any = ()) -> Any:
    return pytest.param(cli, args, fragment, absent, loads, code, id=id, marks=marks)


def grid_yaml(body: str) -> str:
    return "models: [tiny-llava-next]\nmethods: [magnitude]\nsparsities: [0.5]\ntasks: [tamp_smoke_vqa]\n" + body


ROWS = [
    # ---- tamp build-tiny / inspect
    row("build-tiny-family", "tamp", "build-tiny --family gpt5 --out {tmp}/t", "unknown tiny family 'gpt5'"),
    row("build-tiny-out-file", "tamp", "build-tiny --family llama --out {afile}", "it is a file; give a folder path"),
    row("inspect-not-artifact", "tamp", "inspect {emptydir}", "no pruning.json"),
    row("inspect-pruning-json-corrupt", "tamp", "inspect {corrupt_pruning}", "is not valid JSON"),
    row("inspect-pruning-json-foreign", "tamp", "inspect {foreign_pruning}", "is not a tamp pruning.json"),
    # ---- tamp prune: flags
    row("prune-method", "tamp", "prune --model {tiny} --out {out} --method nope", "unknown method 'nope'"),
    row("prune-sparsity-high", "tamp", "prune --model {tiny} --out {out} --sparsity 1.5",
        "--sparsity must be in [0, 1), got 1.5"),
    row("prune-sparsity-negative", "tamp", "prune --model {tiny} --out {out} --sparsity -0.1",
        "--sparsity must be in [0, 1), got -0.1"),
    row("prune-pattern-nm-order", "tamp", "prune --model {tiny} --out {out} --pattern 3:2", "N:M"),
    row("prune-pattern-unknown", "tamp", "prune --model {tiny} --out {out} --pattern dense", "bad sparsity pattern"),
    row("prune-pattern-sparsity", "tamp", "prune --model {tiny} --out {out} --pattern 2:4 --sparsity 0.6",
        "fixes the sparsity at 0.5"),
    row("prune-nsamples", "tamp", "prune --model {tiny} --out {out} --nsamples 0", "--nsamples must be at least 1"),
    row("prune-seqlen", "tamp", "prune --model {tiny} --out {out} --seqlen 1", "--seqlen must be at least 2"),
    row("prune-device", "tamp", "prune --model {tiny} --out {out} --device tpu", "unknown --device 'tpu'"),
    row("prune-device-cuda", "tamp", "prune --model {tiny} --out {out} --device cuda", "no CUDA device is visible",
        marks=pytest.mark.skipif(CUDA, reason="a CUDA device is visible")),
    row("prune-dtype", "tamp", "prune --model {tiny} --out {out} --dtype float8", "unknown dtype 'float8'"),
    row("prune-blocksize-0", "tamp", "prune --model {tiny} --out {out} --method sparsegpt --blocksize 0",
        "--blocksize must be at least 1, got 0"),
    row("prune-percdamp-negative", "tamp", "prune --model {tiny} --out {out} --method sparsegpt --percdamp -1",
        "--percdamp must be positive"),
    row("prune-percdamp-0", "tamp", "prune --model {tiny} --out {out} --method sparsegpt --percdamp 0",
        "--percdamp must be positive"),
    row("prune-blocksize-nm", "tamp", "prune --model {tiny} --out {out} --method sparsegpt --pattern 2:4 "
        "--blocksize 6", "--blocksize 6 must be a multiple of 4"),
    row("prune-dense-sparsity", "tamp", "prune --model {tiny} --out {out} --method dense --sparsity 0.5",
        "--method dense keeps every weight (the unpruned model); it takes --sparsity 0, not 0.5"),
    row("prune-set-syntax", "tamp", "prune --model {tiny} --out {out} --set owl_m", "--set expects FIELD=VALUE"),
    row("prune-set-field", "tamp", "prune --model {tiny} --out {out} --set nope=1", "unknown config field 'nope'"),
    row("prune-set-int", "tamp", "prune --model {tiny} --out {out} --set amia_k=x", "--set amia_k: 'x' is not a valid int"),
    row("prune-set-bool", "tamp", "prune --model {tiny} --out {out} --set prune_vision=maybe", "is not a valid bool"),
    row("prune-set-amia-k", "tamp", "prune --model {tiny} --out {out} --method tamp --set amia_k=0", "amia_k must be at least 1"),
    row("prune-set-amia-sigma", "tamp", "prune --model {tiny} --out {out} --method tamp --set amia_sigma=0",
        "amia_sigma must be positive"),
    row("prune-set-das-mode", "tamp", "prune --model {tiny} --out {out} --method tamp --set das_mode=x", "unknown das_mode 'x'"),
    row("prune-set-amia-scope", "tamp", "prune --model {tiny} --out {out} --method tamp --set amia_scope=x",
        "unknown amia_scope"),
    row("prune-set-unused-param", "tamp", "prune --model {tiny} --out {out} --method wanda --set das_mode=paper",
        "--set das_mode: a parameter of das, which --method wanda does not use"),
    row("prune-token-pattern", "tamp", "prune --model {tiny} --out {out} --method fastv --pattern 2:4",
        "--pattern 2:4 prunes weights, but --method fastv keeps every weight"),
    row("run-zero-sparsity-pattern", "harness", "run --model tiny-llava-next --sparsity 0 --pattern 2:4",
        "--pattern 2:4 prunes weights, but --sparsity 0 keeps every weight"),
    row("prune-set-allocation", "tamp", "prune --model {tiny} --out {out} --set allocation=x", "unknown allocation"),
    row("prune-set-tokens", "tamp", "prune --model {tiny} --out {out} --set token_selection=x",
        "unknown token selection"),
    row("prune-set-scoring", "tamp", "prune --model {tiny} --out {out} --set scoring=x", "unknown scoring"),
    # ---- tamp prune: the model
    row("prune-model-unknown", "tamp", "prune --model no-such-model --out {out}", "unknown model 'no-such-model'"),
    row("prune-model-tiny-family", "tamp", "prune --model tiny-gpt5 --out {out}", "unknown tiny family 'gpt5'"),
    row("prune-gguf-missing", "tamp", "prune --model {tmp}/none.gguf --out {out}", "GGUF file not found"),
    row("prune-gguf-corrupt", "tamp", "prune --model {fakegguf} --out {out}", "is not a valid GGUF file"),
    row("prune-safetensors-truncated", "tamp", "prune --model {truncated} --out {out}",
        "model.safetensors is truncated or corrupt"),
    row("prune-safetensors-shard-missing", "tamp", "prune --model {noshard} --out {out}",
        "lacks model-00002-of-00002.safetensors"),
    row("prune-config-corrupt", "tamp", "prune --model {badconfig} --out {out}", "config.json is not valid JSON",
        absent=("hf download",)),
    row("prune-config-missing", "tamp", "prune --model {emptydir} --out {out}", "has no config.json"),
    row("prune-model-is-file", "tamp", "prune --model {afile} --out {out}", "is a file; give a checkpoint folder"),
    row("prune-hf-id-offline", "tamp", "prune --model nobody/nothing --out {out}",
        "model nobody/nothing is not in the local Hugging Face cache and offline mode is set"),
    row("prune-registry-offline", "tamp", "prune --model llava-next --out {out}",
        "`hf download llava-hf/llama3-llava-next-8b-hf`"),
    # ---- tamp prune: --out
    row("prune-out-file", "tamp", "prune --model {tiny} --out {afile}", "--out {afile}: it is a file"),
    row("prune-out-unwritable", "tamp", "prune --model {tiny} --out /proc/nope", "cannot create files in /proc"),
    row("prune-out-under-file", "tamp", "prune --model {tiny} --out {afile}/sub", "{afile} is a file, not a folder"),
    row("prune-out-not-empty", "tamp", "prune --model {tiny} --out {fulldir}", "exists and is not empty; pass --overwrite"),
    # ---- tamp prune: calibration (found before loading)
    row("calib-json-missing", "tamp", "prune --model {tiny} --out {out} --calib {tmp}/missing.json",
        "calibration file not found: {tmp}/missing.json"),
    row("calib-text-missing", "tamp", "prune --model {tiny} --out {out} --calib text:/nonexistent/file.txt",
        "calibration text file not found: /nonexistent/file.txt"),
    row("calib-text-none", "tamp", "prune --model {tiny} --out {out} --calib text:", "names no file"),
    row("calib-unknown", "tamp", "prune --model {tiny} --out {out} --calib mystery", "unknown --calib 'mystery'"),
    row("calib-not-an-image", "tamp", "prune --model {tiny} --out {out} --calib {calib}/notimage.json --nsamples 1",
        "image 'a.jpg' of calibration sample s1 is not a readable image"),
    row("calib-image-missing", "tamp", "prune --model {tiny} --out {out} --calib {calib}/noimage.json",
        "image 'gone.png' of calibration sample s2 not found under {calib}"),
    row("calib-json-invalid", "tamp", "prune --model {tiny} --out {out} --calib {calib}/invalid.json",
        "is not valid JSON"),
    row("calib-json-empty", "tamp", "prune --model {tiny} --out {out} --calib {calib}/empty.json", "holds no samples"),
    row("calib-json-no-conversations", "tamp", "prune --model {tiny} --out {out} --calib {calib}/noconv.json",
        "has no 'conversations' list"),
    row("calib-media-dir-missing", "tamp", "prune --model {tiny} --out {out} --calib {calib}/good.json:{tmp}/nodir",
        "calibration media folder not found: {tmp}/nodir"),
    row("all-problems-at-once", "tamp", "prune --model {truncated} --out {afile} --calib {calib}/noimage.json",
        "3 problems: (1) --out {afile}: it is a file"),
    # ---- tamp prune: what only the loaded model can tell
    row("calib-audio-for-image-model", "tamp", "prune --model {tiny} --out {out} --calib {calib}/audio.json",
        "has audio but this model takes image", loads=True),
    row("prune-vision-text-model", "tamp", "prune --model {llama} --out {out} --method magnitude --prune-vision",
        "has no vision tower", loads=True),
    row("calib-text-empty", "tamp", "prune --model {llama} --out {out} --calib text:{emptytext}", "no text in",
        loads=True),
    row("calib-text-too-short", "tamp", "prune --model {llama} --out {out} --calib text:{shorttext} --seqlen 64",
        "segments of 64 tokens available, 128 requested", loads=True),
    # ---- harness run: flags
    row("run-model-unknown", "harness", "run --model no-such-model --sparsity 0.5", "unknown model 'no-such-model'"),
    row("run-method", "harness", "run --model tiny-llava-next --sparsity 0.5 --method nope", "unknown method 'nope'"),
    row("run-sparsity-high", "harness", "run --model tiny-llava-next --sparsity 1.0",
        "--sparsity must be in [0, 1), got 1.0"),
    row("run-sparsity-negative", "harness", "run --model tiny-llava-next --sparsity -0.1",
        "--sparsity must be in [0, 1), got -0.1"),
    row("run-sparsity-required", "harness", "run --model tiny-llava-next", "--sparsity is required"),
    row("run-dense-sparsity", "harness", "run --model tiny-llava-next --method dense --sparsity 0.5",
        "--method dense keeps every weight"),
    row("run-pattern-sparsity", "harness", "run --model tiny-llava-next --sparsity 0.6 --pattern 2:4",
        "pattern 2:4 fixes the sparsity"),
    row("run-pattern", "harness", "run --model tiny-llava-next --sparsity 0.5 --pattern 3:2", "N:M"),
    row("run-set-field", "harness", "run --model tiny-llava-next --sparsity 0.5 --set nope=1",
        "unknown config field 'nope'"),
    row("run-limit", "harness", "run --model tiny-llava-next --sparsity 0.5 --limit 0", "--limit must be at least 1"),
    row("run-gpus-0", "harness", "run --model tiny-llava-next --sparsity 0.5 --gpus 0", "--gpus must be at least 1"),
    row("run-gpus-2", "harness", "run --model tiny-llava-next --sparsity 0.5 --gpus 2", "--gpus 2 needs 2 CUDA devices",
        marks=pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="two CUDA devices are visible")),
    row("run-max-empty", "harness", "run --model tiny-llava-next --sparsity 0.5 --max-empty-fraction 1.5",
        "--max-empty-fraction must be in [0, 1]"),
    row("run-device", "harness", "run --model tiny-llava-next --sparsity 0.5 --device tpu", "unknown --device 'tpu'"),
    row("run-dtype", "harness", "run --model tiny-llava-next --sparsity 0.5 --dtype float8", "unknown dtype 'float8'"),
    row("run-tasks-empty", "harness", "run --model tiny-llava-next --sparsity 0.5 --tasks ''", "--tasks is empty"),
    row("run-task-unknown", "harness", "run --model tiny-llava-next --sparsity 0.5 --tasks tamp_smoke_vqa,not_a_task",
        "unknown task not_a_task; `harness tasks` lists ours"),
    row("run-task-audio-on-image-model", "harness", "run --model tiny-llava-next --sparsity 0.5 --tasks tamp_smoke_audio",
        "task 'tamp_smoke_audio' needs audio input, which tiny-llava-next (llava-next) cannot take (it takes image, "
        "video)"),
    row("run-task-image-on-audio-model", "harness", "run --model tiny-qwen2-audio --sparsity 0.5 --tasks tamp_smoke_vqa",
        "task 'tamp_smoke_vqa' needs image input"),
    row("run-no-default-calib", "harness", "run --model qwen2-audio --sparsity 0.5", "has no default calibration data"),
    # ---- harness run: the model
    row("run-smollm2", "harness", "run --model smollm2 --sparsity 0.5", "smollm2 is a text-only LM",
        absent=("unknown model",)),
    row("run-tiny-text-lm", "harness", "run --model tiny-llama --sparsity 0.5", "tiny-llama is a text-only LM"),
    row("run-gguf-corrupt", "harness", "run --model {fakegguf} --sparsity 0.5", "is not a valid GGUF file",
        absent=("unknown model",)),
    row("run-safetensors-truncated", "harness", "run --model {truncated} --sparsity 0.5",
        "model.safetensors is truncated or corrupt"),
    row("run-config-corrupt", "harness", "run --model {badconfig} --sparsity 0.5", "config.json is not valid JSON",
        absent=("hf download",)),
    row("run-model-is-file", "harness", "run --model {afile} --sparsity 0.5", "is a file; give a checkpoint folder"),
    row("run-text-model-dir", "harness", "run --model {llama} --sparsity 0.5",
        "has model_type 'llama', which has no lmms-eval wrapper"),
    row("run-hf-id-not-cached", "harness", "run --model nobody/nothing --sparsity 0.5",
        "cannot read the config of 'nobody/nothing'"),
    # ---- harness run: outputs
    row("run-output-file", "harness", "run --model tiny-llava-next --sparsity 0.5 --output {afile}",
        "--output {afile}: it is a file"),
    row("run-output-unwritable", "harness", "run --model tiny-llava-next --sparsity 0.5 --output /proc/nope",
        "--output /proc/nope: cannot create files in /proc"),
    row("run-artifacts-file", "harness", "run --model tiny-llava-next --sparsity 0.5 --artifacts {afile}",
        "--artifacts {afile}: it is a file"),
    row("run-stale-record", "harness", "run --model tiny-llava-next --method magnitude --sparsity 0.5 --tasks "
        "tamp_smoke_vqa --output {stale}", "exists but was made from a different artifact"),
    # ---- harness run: data (all of it in one message)
    row("run-calib-json-missing", "harness", "run --model tiny-llava-next --sparsity 0.5 --calib /no/such/calib.json",
        "calibration file not found: /no/such/calib.json"),
    row("run-calib-text-missing", "harness", "run --model tiny-llava-next --sparsity 0.5 --calib text:/no/such.txt",
        "calibration text file not found: /no/such.txt"),
    row("run-calib-unknown", "harness", "run --model tiny-llava-next --sparsity 0.5 --calib mystery",
        "unknown --calib 'mystery'"),
    row("run-calib-not-an-image", "harness", "run --model tiny-llava-next --sparsity 0.5 --calib {calib}/notimage.json",
        "image 'a.jpg' of calibration sample s1 is not a readable image"),
    row("run-calib-media-dir", "harness", "run --model tiny-llava-next --sparsity 0.5 --calib {calib}/good.json:/no/dir",
        "calibration media folder not found: /no/dir"),
    row("run-dataset-offline", "harness", "run --model llava-next --method magnitude --sparsity 0.5 --tasks textvqa_val",
        "task 'textvqa_val' needs the dataset 'lmms-lab-encoder/textvqa', which is not in the local Hugging Face cache"
        " and offline mode is set; fetch it first with `hf download --repo-type dataset lmms-lab-encoder/textvqa`"),
    row("run-group-dataset-offline", "harness", "run --model llava-next --method magnitude --sparsity 0.5 --tasks "
        "mvbench", "task 'mvbench_"),
    row("run-everything-missing", "harness", "run --model llava-next --sparsity 0.5 --calib {tmp}/none.json "
        "--tasks textvqa_val,pope",
        "4 problems: (1) calibration file not found: {tmp}/none.json (pass --calib FILE.json[:MEDIA_DIR]); (2) model "
        "llava-hf/llama3-llava-next-8b-hf is not in the local Hugging Face cache and offline mode is set"),
    # ---- harness run: a cached artifact edited after it was written (cached before file manifests existed)
    row("run-tampered-cached-artifact", "harness", "run --model tiny-llava-next --method magnitude --sparsity 0.5 "
        "--tasks tamp_smoke_vqa --limit 1 --device cpu --artifacts {tampered_cache}",
        "do not carry the sparsity pruning.json records", absent=("verify_sparsity",), loads=True),
    # ---- harness table / plot / export
    row("table-runs-missing", "harness", "table --runs {tmp}/noruns", "{tmp}/noruns is not a directory"),
    row("table-runs-empty", "harness", "table --runs {emptydir}", "no finished run records under"),
    row("table-filter", "harness", "table --runs {runs} --model nope", "no run records match"),
    row("table-published-unparsable", "harness", "table --runs {runs} --published {pub_bad}",
        "cannot read published numbers"),
    row("table-published-columns", "harness", "table --runs {runs} --published {pub_cols}", "lacks the column(s)"),
    row("table-published-source", "harness", "table --runs {runs} --published {pub_source}", "needs its source"),
    row("table-out-folder", "harness", "table --runs {runs} --out {emptydir}", "it is a folder; give a file name"),
    row("table-out-unwritable", "harness", "table --runs {runs} --out /proc/nope/t.md", "cannot create files in /proc"),
    row("plot-out-suffix", "harness", "plot --runs {runs} --out {tmp}/x.txt", "give a .png or .svg file name"),
    row("plot-out-unwritable", "harness", "plot --runs {runs} --out /proc/nope/x.png", "cannot create files in /proc"),
    row("plot-no-scores", "harness", "plot --runs {runs_unscored} --out {tmp}/x.png", "nothing to plot"),
    row("plot-allocation-missing", "harness", "plot --allocation {tmp}/none --out {tmp}/a.png", "not found"),
    row("plot-allocation-invalid", "harness", "plot --allocation {corrupt_pruning} --out {tmp}/a.png", "cannot read"),
    row("plot-allocation-foreign", "harness", "plot --allocation {foreign_pruning} --out {tmp}/a.png",
        "is not a tamp pruning.json"),
    row("plot-allocation-no-layers", "harness", "plot --allocation {nolayers_pruning} --out {tmp}/a.png",
        "no decoder-layer matrices"),
    row("export-csv-folder", "harness", "export --runs {runs} --csv {emptydir}", "--csv {emptydir}: it is a folder"),
    row("export-csv-unwritable", "harness", "export --runs {runs} --csv /proc/nope/l.csv", "cannot create files in /proc"),
    row("export-csv-foreign", "harness", "export --runs {runs} --csv {pub_cols}", "is not a leaderboard"),
    row("export-csv-unreadable", "harness", "export --runs {runs} --csv {binary}", "cannot read the existing leaderboard"),
    # ---- harness grid / sweep
    row("grid-missing", "harness", "grid {tmp}/none.yaml", "grid file not found"),
    row("grid-yaml", "harness", "grid {grids}/invalid.yaml", "is not valid YAML"),
    row("grid-mapping", "harness", "grid {grids}/list.yaml", "a grid is a YAML mapping"),
    row("grid-key", "harness", "grid {grids}/key.yaml", "unknown key(s) sparsity"),
    row("grid-required", "harness", "grid {grids}/required.yaml", "'sparsities' is required"),
    row("grid-outputs", "harness", "grid {grids}/outputs.yaml", "'outputs' maps"),
    row("grid-sparsity-text", "harness", "grid {grids}/text.yaml", "sparsities must be a non-empty list of numbers in "
        "[0, 1), got 'half'"),
    row("grid-sparsity-range", "harness", "grid {grids}/range.yaml", "each of sparsities must be in [0, 1), got 1.5"),
    row("grid-empty-list", "harness", "grid {grids}/empty.yaml", "'methods' must be a non-empty list"),
    row("grid-empty-tasks", "harness", "grid {grids}/notasks.yaml", "'tasks' must be a non-empty list"),
    row("grid-model", "harness", "grid {grids}/model.yaml", "unknown model 'nope'"),
    row("grid-task", "harness", "grid {grids}/task.yaml", "unknown task nope"),
    row("grid-output-unwritable", "harness", "grid {grids}/unwritable.yaml", "the grid's table output /proc/nope/t.md"),
    # ---- a value the model bounds (its layers), checked against the model before anything is pruned
    row("run-aim-start-beyond", "harness", "run --model {tiny} --tasks tamp_smoke_vqa --method aim --sparsity 0 "
        "--set aim_prune_start=99", "--method aim: aim_prune_start 99 leaves no layer to prune after: this model has 4 "
        "decoder layers, so it must be at most 2"),
    row("run-aim-start-last-layer", "harness", "run --model {tiny} --tasks tamp_smoke_vqa --method wanda+aim "
        "--sparsity 0.5 --set aim_prune_start=3", "aim_prune_start 3 leaves no layer to prune after"),
    row("run-fastv-k-beyond", "harness", "run --model {tiny} --tasks tamp_smoke_vqa --method fastv --sparsity 0 "
        "--set fastv_k=4", "--method fastv: fastv_k 4 is beyond this model's 4 decoder layers; set it to at most 3"),
    row("prune-aim-start-beyond", "tamp", "prune --model {tiny} --out {out} --method aim --set aim_prune_start=99",
        "--method aim: aim_prune_start 99 leaves no layer to prune after", loads=True),
    # ---- a float that is not finite (NaN passes bound checks, inf turns PageRank to NaN)
    row("run-aim-tau-inf", "harness", "run --model tiny-llava-next --method aim --sparsity 0 --set aim_tau=inf",
        "aim_tau must be a finite number, got inf"),
    row("run-aim-tau-nan", "harness", "run --model tiny-llava-next --method aim --sparsity 0 --set aim_tau=nan",
        "aim_tau must be a finite number, got nan"),
    row("prune-yopo-budget-inf", "tamp", "prune --model {tiny} --out {out} --method yopo --set yopo_budget=inf",
        "yopo_budget must be a finite number, got inf"),
    row("prune-amia-sigma-inf", "tamp", "prune --model {tiny} --out {out} --method tamp --set amia_sigma=inf",
        "amia_sigma must be a finite number, got inf"),
    # ---- a value the user gave is never replaced by a default
    row("run-nsamples-0", "harness", "run --model tiny-llava-next --sparsity 0.5 --nsamples 0",
        "--nsamples must be at least 1, got 0"),
    row("run-seqlen-0", "harness", "run --model tiny-llava-next --sparsity 0.5 --seqlen 0",
        "--seqlen must be at least 2, got 0"),
    row("run-nsamples-0-no-calibration", "harness", "run --model tiny-llava-next --method fastv --sparsity 0 "
        "--nsamples 0", "--nsamples must be at least 1, got 0"),
    row("grid-nsamples-0", "harness", "grid {grids}/nsamples0.yaml --dry-run", "nsamples must be at least 1, got 0"),
    row("grid-seqlen-1", "harness", "grid {grids}/seqlen1.yaml --dry-run", "seqlen must be at least 2, got 1"),
    # ---- a visual-token method on a model without visual input
    row("run-fastv-audio-model", "harness", "run --model tiny-qwen2-audio --method fastv --sparsity 0 --tasks "
        "tamp_smoke_audio", "--method fastv: fastv removes visual tokens, but a qwen2-audio model takes audio and text "
        "(no image or video input)"),
    row("run-wanda-aim-audio-model", "harness", "run --model tiny-qwen2-audio --method wanda+aim --sparsity 0.5 "
        "--tasks tamp_smoke_audio", "--method aim: aim removes visual tokens, but a qwen2-audio model"),
    row("prune-fastv-text-lm", "tamp", "prune --model {llama} --out {out} --method fastv",
        "--method fastv: fastv removes visual tokens, but a llama model takes text only", loads=True),
    row("prune-yopo-text-lm", "tamp", "prune --model {llama} --out {out} --method yopo --nsamples 2 --seqlen 16",
        "--method yopo: yopo removes visual tokens, but a llama model takes text only", loads=True),
    # ---- the executor block
    row("grid-executor-mem-nan", "harness", "grid {grids}/memnan.yaml --dry-run",
        "executor: mem_gb must be a positive number, got nan"),
    row("grid-executor-mem-inf", "harness", "grid {grids}/meminf.yaml --dry-run",
        "executor: mem_gb must be a positive number, got inf"),
    # ---- grid values of the wrong type (the schema, GRID_SCHEMA)
    row("grid-seed-text", "harness", "grid {grids}/seedtext.yaml", "seed must be an integer, got 'abc'"),
    row("grid-nsamples-text", "harness", "grid {grids}/nsamplestext.yaml", "nsamples must be an integer, got 'many'"),
    row("grid-calib-number", "harness", "grid {grids}/calibnumber.yaml", "calib must be a string, got 5; quote it"),
    row("grid-overrides-number", "harness", "grid {grids}/overridesnumber.yaml",
        "overrides must be a non-empty list of strings, got 3"),
    row("grid-methods-mapping", "harness", "grid {grids}/methodsmap.yaml",
        "methods must be a non-empty list of strings, got {{'wanda': 1}}"),
    row("grid-path-folder", "harness", "grid {emptydir}", "{emptydir} is a folder; give a grid YAML file"),
    row("grid-pattern-base60", "harness", "grid {grids}/pattern24.yaml", "pattern 124 is a number: YAML reads an "
        "unquoted N:M such as 2:4 as a base-60 number; quote it, e.g. pattern: '2:4'"),
    row("grid-pattern-base60-48", "harness", "grid {grids}/pattern48.yaml", "pattern 248 is a number"),
    # ---- a grid whose cells or tasks repeat (planned twice, run once)
    row("grid-task-repeated", "harness", "grid {grids}/reptask.yaml --dry-run",
        "tasks lists 'tamp_smoke_vqa' more than once; each is run once, remove the repeat"),
    row("grid-model-repeated", "harness", "grid {grids}/repmodel.yaml --dry-run",
        "models lists 'tiny-llava-next' more than once"),
    row("grid-sparsity-repeated", "harness", "grid {grids}/repsparsity.yaml --dry-run",
        "sparsities lists 0.5 more than once"),
    row("sweep-sparsities-text", "harness", "sweep --model tiny-llava-next --sparsities a,b",
        "--sparsities takes comma-separated numbers"),
    row("sweep-sparsities-empty", "harness", "sweep --model tiny-llava-next --sparsities ''", "--sparsities is empty"),
    row("sweep-sparsity-zero", "harness", "sweep --model tiny-llava-next --sparsities 0,1.2 --dry-run",
        "--sparsities: each must be in (0, 1) (the dense model is always included), got 0.0", absent=("--sparsity ",)),
    row("sweep-sparsity-high", "harness", "sweep --model tiny-llava-next --sparsities 0.5,1.2 --dry-run",
        "--sparsities: each must be in (0, 1) (the dense model is always included), got 1.2"),
    row("sweep-methods-empty", "harness", "sweep --model tiny-llava-next --methods ''", "--methods is empty"),
    row("sweep-tasks-empty", "harness", "sweep --model tiny-llava-next --tasks ''", "--tasks is empty"),
    row("sweep-method", "harness", "sweep --model tiny-llava-next --methods nope --tasks tamp_smoke_vqa",
        "unknown method 'nope'"),
    row("sweep-csv-folder", "harness", "sweep --model tiny-llava-next --tasks tamp_smoke_vqa --csv {emptydir}",
        "the grid's csv output {emptydir}: it is a folder"),
]


def _record(task: str, metrics: dict[str, Any]) -> dict[str, Any]:
    return {"schema": 1, "model": {"name": "m"}, "method": "wanda", "sparsity": 0.5, "pattern": "unstructured",
            "task": task, "limit": None, "metrics": metrics, "artifact_key": "k"}


def _conversation(sample_id: str, **media: Any) -> dict[str, Any]:
    return {"id": sample_id, **media, "conversations": [{"from": "human", "value": "<image>\nWhat is it?"},
                                                        {"from": "gpt", "value": "A square."}]}


@pytest.fixture(scope="module")
def paths(tiny_model, tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Every file and folder the rows name, made once."""
    root = tmp_path_factory.mktemp("bad-inputs")
    tiny, llama = tiny_model("llava-next"), tiny_model("llama")
    p: dict[str, Path] = {"tmp": root, "tiny": tiny, "llama": llama}
    p["afile"] = root / "afile"
    p["afile"].write_text("a file\n")
    p["emptydir"] = root / "empty"
    p["emptydir"].mkdir()
    p["fulldir"] = root / "full"
    p["fulldir"].mkdir()
    (p["fulldir"] / "x").write_text("x")
    p["fakegguf"] = root / "fake.gguf"
    p["fakegguf"].write_bytes(b"not a gguf file at all\n")
    for name, damage in (("truncated", "truncate"), ("badconfig", "config"), ("noshard", "index")):
        copy = root / name
        shutil.copytree(tiny, copy)
        if damage == "truncate":
            data = (copy / "model.safetensors").read_bytes()
            (copy / "model.safetensors").write_bytes(data[: len(data) - 1000])
        elif damage == "config":
            (copy / "config.json").write_text('{"model_type": "llava_next", ')
        else:
            index = {"metadata": {}, "weight_map": {"a": "model.safetensors", "b": "model-00002-of-00002.safetensors"}}
            (copy / "model.safetensors.index.json").write_text(json.dumps(index))
        p[name] = copy
    # calibration data
    calib = p["calib"] = root / "calib"
    calib.mkdir()
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 30, 30)).save(calib / "red.png")
    (calib / "a.jpg").write_text("this is text, not a JPEG\n")
    (calib / "good.json").write_text(json.dumps([_conversation("s0", image="red.png")]))
    (calib / "notimage.json").write_text(json.dumps([_conversation("s1", image="a.jpg")]))
    (calib / "noimage.json").write_text(json.dumps([_conversation("s2", image="gone.png")]))
    (calib / "audio.json").write_text(json.dumps([_conversation("s3", audio="red.png")]))
    (calib / "invalid.json").write_text('[{"id": 1,')
    (calib / "empty.json").write_text("[]")
    (calib / "noconv.json").write_text('[{"id": 1}]')
    p["emptytext"] = root / "empty.txt"
    p["emptytext"].write_text("   \n")
    p["shorttext"] = root / "short.txt"
    p["shorttext"].write_text("only a few words here\n")
    # artifacts and pruning.json files
    p["corrupt_pruning"] = root / "corrupt_artifact"
    p["corrupt_pruning"].mkdir()
    (p["corrupt_pruning"] / "pruning.json").write_text('{"format_version": 1, "per_ma')
    p["foreign_pruning"] = root / "foreign.json"
    p["foreign_pruning"].write_text('{"hello": "world"}')
    p["nolayers_pruning"] = root / "nolayers.json"
    p["nolayers_pruning"].write_text(json.dumps({"per_matrix": {"lm_head": {"numel": 4, "sparsity": 0.5}}}))
    # run records, published numbers, leaderboards
    p["runs"] = root / "runs"
    record = p["runs"] / "m" / "wanda_s0.50_unstructured" / "tamp_smoke_vqa.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps(_record("tamp_smoke_vqa", {"exact_match,none": 0.5})))
    p["runs_unscored"] = root / "runs_unscored"
    record = p["runs_unscored"] / "m" / "wanda_s0.50_unstructured" / "tamp_smoke_vqa.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps(_record("tamp_smoke_vqa", {})))
    p["pub_bad"] = root / "pub_bad.csv"
    p["pub_bad"].write_text("model,method\nm,wanda\nm,wanda,0.5\n")
    p["pub_cols"] = root / "pub_cols.csv"
    p["pub_cols"].write_text("a,b\n1,2\n")
    p["pub_source"] = root / "pub_source.csv"
    p["pub_source"].write_text("model,method,sparsity,pattern,task,value,source\nm,wanda,0.5,unstructured,pope,80,\n")
    p["binary"] = root / "binary.csv"
    p["binary"].write_bytes(b"\xff\xfe\xfa\x00\x81\n")
    # a record made from another artifact
    from harness.records import record_path

    p["stale"] = root / "stale"
    stale = record_path(p["stale"], "tiny-llava-next", "magnitude", 0.5, "unstructured", "tamp_smoke_vqa", None)
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({**_record("tamp_smoke_vqa", {}), "artifact_key": "from-another-artifact"}))
    # grid files
    grids = p["grids"] = root / "grids"
    grids.mkdir()
    for name, text in {
        "invalid": "models: [a\n", "list": "- a\n- b\n", "key": grid_yaml("sparsity: 0.5\n"),
        "required": "models: [a]\nmethods: [wanda]\n", "outputs": grid_yaml("outputs: {pdf: x.pdf}\n"),
        "text": "models: [a]\nmethods: [w]\nsparsities: [half]\n", "range": "models: [a]\nmethods: [w]\nsparsities: [1.5]\n",
        "empty": "models: [a]\nmethods: []\nsparsities: [0.5]\n",
        "notasks": "models: [a]\nmethods: [w]\nsparsities: [0.5]\ntasks: []\n",
        "model": grid_yaml("").replace("tiny-llava-next", "nope"), "task": grid_yaml("").replace("tamp_smoke_vqa", "nope"),
        "unwritable": grid_yaml("outputs: {table: /proc/nope/t.md}\n"),
        "nsamples0": grid_yaml("nsamples: 0\n"), "seqlen1": grid_yaml("seqlen: 1\n"),
        "memnan": grid_yaml("executor: {mem_gb: .nan}\n"), "meminf": grid_yaml("executor: {mem_gb: .inf}\n"),
        "seedtext": grid_yaml("seed: abc\n"), "nsamplestext": grid_yaml("nsamples: many\n"),
        "calibnumber": grid_yaml("calib: 5\n"), "overridesnumber": grid_yaml("overrides: 3\n"),
        "methodsmap": grid_yaml("").replace("[magnitude]", "{wanda: 1}"),
        "pattern24": grid_yaml("pattern: 2:4\n"), "pattern48": grid_yaml("pattern: 4:8\n"),
        "reptask": grid_yaml("").replace("[tamp_smoke_vqa]", "[tamp_smoke_vqa, tamp_smoke_vqa]"),
        "repmodel": grid_yaml("").replace("[tiny-llava-next]", "[tiny-llava-next, tiny-llava-next]"),
        "repsparsity": grid_yaml("").replace("[0.5]", "[0.5, 0.50]"),
    }.items():
        (grids / f"{name}.yaml").write_text(text)
    # a cached artifact edited after pruning, from before the cache recorded file manifests
    from harness.cache import KEY_FILE, ensure_artifact
    from harness.run import RunOptions, plan_run

    cache = p["tampered_cache"] = root / "tampered_cache"
    plan_ = plan_run(RunOptions(model="tiny-llava-next", sparsity=0.5, method="magnitude", tasks=["tamp_smoke_vqa"],
                            limit=1, output=root / "tampered_runs", artifacts=cache, device="cpu"))
    artifact, _, _ = ensure_artifact(cache, plan_.key, plan_.key_inputs, plan_.spec, plan_.recipe, "cpu")
    tamper_zeros(artifact)
    key_file = json.loads((artifact / KEY_FILE).read_text())
    del key_file["files"]
    (artifact / KEY_FILE).write_text(json.dumps(key_file))
    return {k: str(v) for k, v in p.items()}


def _forbid(what: str) -> Any:
    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"{what} although the input is bad and checkable before")

    return fail


@pytest.mark.parametrize("cli, args, fragment, absent, loads, code", ROWS)
def test_bad_input(cli: str, args: str, fragment: str, absent: tuple[str, ...], loads: bool, code: int,
                   paths: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                   monkeypatch: pytest.MonkeyPatch) -> None:
    if not loads:
        monkeypatch.setattr("tamp.pipeline.load_model", _forbid("a model was loaded"))
        monkeypatch.setattr("harness.cache.ensure_artifact", _forbid("a model was pruned"))
    values = {**paths, "out": str(tmp_path / "out")}
    argv = shlex.split(args.format(**values))
    if cli == "harness" and argv[0] == "run":  # every run writes into this test's folders unless it names its own
        argv = ["run", "--output", str(tmp_path / "runs"), "--artifacts", str(tmp_path / "art"), *argv[1:]]
    main = tamp.cli.main if cli == "tamp" else harness.cli.main
    got = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert got == code, err
    assert "Traceback" not in err, err
    if loads:  # loading may log; the error is still one line, and the last
        assert [line for line in lines if line.startswith("error:")] == lines[-1:], err
    else:
        assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment.format(**values) in lines[-1], lines[-1]
    for text in absent:
        assert text not in lines[-1], lines[-1]
    assert not (tmp_path / "out").exists() and not (tmp_path / "art").exists()  # nothing written


# ---- silent failures that now speak -------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["table", "export", "plot"])
def test_unreadable_run_records_are_named(command: str, paths: dict[str, str], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(paths["runs"], runs)
    run = runs / "m" / "wanda_s0.50_unstructured"
    (run / "pope.json").write_text(json.dumps(_record("pope", {"pope_accuracy,none": 0.8}))[:40])  # truncated
    (run / "mme.json").write_text(json.dumps({"schema": 99}))  # not a record this harness writes
    out = {"table": [], "export": ["--csv", str(tmp_path / "l.csv")], "plot": ["--out", str(tmp_path / "c.png")]}
    assert harness.cli.main([command, "--runs", str(runs), *out[command]]) == 0
    captured = capsys.readouterr()
    warnings = captured.err.strip().splitlines()
    assert len(warnings) == 2 and all(w.startswith("warning: skipping ") for w in warnings), captured.err
    assert f"{run / 'mme.json'}: not a run record of schema 1" in warnings[0]
    assert f"{run / 'pope.json'}: not valid JSON" in warnings[1] and "truncated?" in warnings[1]
    if command == "table":
        assert "Smoke VQA" in captured.out and "POPE" not in captured.out  # the good record is still shown


@pytest.mark.parametrize("score, shown", [("N/A", "'N/A'"), (float("nan"), "nan"), ([0.5], "[0.5]"),
                                          ({"acc": 0.5}, "{'acc': 0.5}")], ids=["text", "nan", "list", "mapping"])
@pytest.mark.parametrize("command", ["table", "export"])
def test_a_score_that_is_not_a_number_is_named(command: str, score: Any, shown: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A record whose headline score is there but no number still shows as "–", and a warning says which and why."""
    record = tmp_path / "runs" / "m" / "wanda_s0.50_unstructured" / "tamp_smoke_vqa.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps(_record("tamp_smoke_vqa", {"exact_match,none": score})))
    out = {"table": [], "export": ["--csv", str(tmp_path / "l.csv")]}
    assert harness.cli.main([command, "--runs", str(tmp_path / "runs"), *out[command]]) == 0
    warnings = [w for w in capsys.readouterr().err.splitlines() if w.strip()]
    assert warnings == [f"warning: {record}: its exact_match,none is {shown}, not a number; it shows as – (no score); "
                        "run its task again with --force, or delete it"]


def test_damaged_cached_artifact_is_pruned_again(tiny_root: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from harness.cache import KEY_FILE, damage, ensure_artifact
    from harness.run import RunOptions, plan_run

    p = plan_run(RunOptions(model="tiny-llava-next", sparsity=0.5, method="magnitude", tasks=["tamp_smoke_vqa"],
                        output=tmp_path / "runs", artifacts=tmp_path / "art", device="cpu"))
    build = lambda: ensure_artifact(tmp_path / "art", p.key, p.key_inputs, p.spec, p.recipe, "cpu")  # noqa: E731
    artifact, reused, _ = build()
    manifest = json.loads((artifact / KEY_FILE).read_text())["files"]
    assert not reused and {"model.safetensors", "config.json", "pruning.json"} <= set(manifest)
    assert build()[1] and damage(artifact) is None  # intact: reused
    weights = artifact / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])  # a truncated copy
    capsys.readouterr()
    assert damage(artifact) == (f"model.safetensors has {manifest['model.safetensors']['bytes'] - 1000:,} bytes, "
                                f"{manifest['model.safetensors']['bytes']:,} when it was written")
    artifact, reused, _ = build()
    assert not reused and damage(artifact) is None
    assert capsys.readouterr().err.startswith(f"warning: cached artifact {artifact} is damaged (model.safetensors has")
    tamper_zeros(artifact)  # same size, other bytes
    assert damage(artifact) == "model.safetensors changed after it was written (its sha256 differs)"
    # cached before manifests were recorded: unverified, but every file must still open
    build()
    key = json.loads((artifact / KEY_FILE).read_text())
    del key["files"]
    (artifact / KEY_FILE).write_text(json.dumps(key))
    assert damage(artifact) is None and build()[1]
    weights.write_bytes(weights.read_bytes()[:-1000])
    assert "model.safetensors is truncated or corrupt" in damage(artifact)
    assert not build()[1]


@pytest.fixture(scope="module")
def pruned(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-llava-next, magnitude 50%: an artifact to damage."""
    out = tmp_path_factory.mktemp("pruned") / "magnitude"
    assert tamp.cli.main(["prune", "--model", str(tiny_model("llava-next")), "--method", "magnitude", "--out",
                          str(out), "--device", "cpu"]) == 0
    return out


def _truncate(artifact: Path) -> None:
    data = (artifact / "model.safetensors").read_bytes()
    (artifact / "model.safetensors").write_bytes(data[:-1000])


def _edit_pruning_json(artifact: Path) -> None:
    info = json.loads((artifact / "pruning.json").read_text())
    name = next(iter(info["per_matrix"]))
    info["per_matrix"][name]["zeros"] = 0
    (artifact / "pruning.json").write_text(json.dumps(info))


def _break_pruning_json(artifact: Path) -> None:
    (artifact / "pruning.json").write_text('{"per_matrix": ')


@pytest.mark.parametrize("damage_it, reason, hint", [
    (tamper_zeros, "do not carry the sparsity pruning.json records", "verify_sparsity=false"),
    (_edit_pruning_json, "do not carry the sparsity pruning.json records", "verify_sparsity=false"),
    (_truncate, "model.safetensors is truncated or corrupt", "prune it again"),
    (_break_pruning_json, "pruning.json is not valid JSON", "verify_sparsity=false"),
], ids=["zeros-made-non-zero", "pruning-json-edited", "safetensors-truncated", "pruning-json-broken"])
def test_wrapper_refuses_a_damaged_artifact(pruned: Path, tmp_path: Path, damage_it: Any, reason: str,
                                            hint: str) -> None:
    """The refusal is a SystemExit, so lmms-eval's CLI cannot swallow it (its exit code: test_bad_inputs_process)."""
    from harness.errors import ArtifactRefused
    from harness.evaluate import load_wrapper

    artifact = tmp_path / "artifact"
    shutil.copytree(pruned, artifact)
    damage_it(artifact)
    with pytest.raises(ArtifactRefused) as refused:
        load_wrapper("tamp_llava_hf", f"pretrained={artifact}", "cpu")
    assert isinstance(refused.value, SystemExit) and reason in refused.value.reason
    message = str(refused.value.code)
    assert message.startswith("error: ") and "\n" not in message and hint in message


def test_inspect_says_why_the_total_is_below_target(tiny_model, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "wanda55"
    assert tamp.cli.main(["prune", "--model", str(tiny_model("llava-next")), "--method", "wanda", "--sparsity", "0.55",
                          "--calib", "synthetic", "--nsamples", "2", "--device", "cpu", "--out", str(out)]) == 0
    capsys.readouterr()
    assert tamp.cli.main(["inspect", str(out), "--summary"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("target:"))
    # rows of 64 and 128 inputs prune int(64 x 0.55) = 35 and int(128 x 0.55) = 70: 54.69%
    assert line.startswith("target:   55.00%   achieved over pruned matrices: 54.69% (")
    assert line.endswith("(below target: each row prunes int(n x target) of its n weights, rounded down as the "
                         "reference implementations do: up to one weight per row short on narrow matrices)")


def test_synthetic_text_calibration_stays_within_the_tokenizer(tiny_model, caplog: pytest.LogCaptureFixture) -> None:
    """tiny-llama's tokenizer takes 4,096 tokens; 2,048 synthetic tokens no longer tokenize ~4,700 first."""
    import transformers
    from transformers import AutoTokenizer

    from tamp.calibration.synthetic import synthetic_batches

    tok = AutoTokenizer.from_pretrained(tiny_model("llama"))
    assert tok.model_max_length == 4096
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_warning()
    transformers.logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            batches = synthetic_batches(tok, tok, False, 2, 2048, 0)
    finally:
        transformers.logging.disable_propagation()
        transformers.logging.set_verbosity(verbosity)
    assert [b["input_ids"].shape for b in batches] == [(1, 2048), (1, 2048)]
    assert not [r for r in caplog.records if "sequence length is longer" in r.getMessage()], caplog.text

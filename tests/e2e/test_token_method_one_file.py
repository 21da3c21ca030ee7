"""A token method is one file: a random-keep baseline dropped into the methods folder of a copy of the package is
registered, planned on the sequence-editing core and evaluated by `harness run`, with nothing else edited."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import tamp

RANDKEEP = '''
"""randkeep: before layer K, keep a seeded random share of each image's (or video frame's) visual tokens."""
import torch

from tamp.inference.sequence_edit import Drop, DropInput, Kept, TokenPlan
from tamp.methods.base import Param, TokenMethod


def plan(params, num_layers):
    keep, seed = float(params["randkeep_keep"]), int(params["randkeep_seed"])

    def choose(seen: DropInput) -> Kept:
        generator = torch.Generator().manual_seed(seed)
        groups = seen.groups.cpu()
        kept = ~seen.visual.cpu()
        for group in torch.unique(groups[groups >= 0]).tolist():
            members = torch.nonzero(groups == group).flatten()
            count = round(members.numel() * keep)
            kept[members[torch.randperm(members.numel(), generator=generator)[:count]]] = True
        return Kept(torch.nonzero(kept).flatten().to(seen.hidden.device))  # picking costs no matmul: flops 0

    return TokenPlan({int(params["randkeep_k"]): Drop(choose)})


METHOD = TokenMethod(
    name="randkeep", label="RandKeep", order=30, summary="keep a seeded random share of the visual tokens at layer K",
    params=(Param("randkeep_k", int, 2, "tokens are dropped before this layer (0-based)"),
            Param("randkeep_keep", float, 0.5, "share of each image's visual tokens kept"),
            Param("randkeep_seed", int, 0, "seed of the random choice")),
    plan=plan,
)
'''


def test_a_new_token_method_is_one_file(tiny_root: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    package = site / "tamp"
    shutil.copytree(Path(tamp.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    (package / "methods" / "randkeep.py").write_text(RANDKEEP)
    runs, artifacts = tmp_path / "runs", tmp_path / "artifacts"
    script = textwrap.dedent(f"""
        import sys
        import tamp
        assert tamp.__file__.startswith({str(package)!r}), tamp.__file__  # the copy, not the checkout
        from harness.cli import main
        sys.exit(main(["run", "--model", "tiny-llava-next", "--method", "randkeep", "--sparsity", "0",
                       "--set", "randkeep_keep=0.25", "--tasks", "tamp_smoke_vqa", "--limit", "2", "--device", "cpu",
                       "--output", {str(runs)!r}, "--artifacts", {str(artifacts)!r}]))
    """)
    env = {**os.environ, "PYTHONPATH": str(site), "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((runs / "tiny-llava-next" / "randkeep_s0.00_unstructured" / "tamp_smoke_vqa_limit2.json")
                        .read_text())
    assert record["transform"] == {"method": "randkeep",
                                   "params": {"randkeep_k": 2, "randkeep_keep": 0.25, "randkeep_seed": 0}}
    cost = record["cost"]
    tokens, visual = cost["tokens_per_layer"], cost["visual_tokens_per_layer"]
    assert len(tokens) == 4 and tokens[0] == tokens[1] > tokens[2] == tokens[3]  # layers from K = 2 ran on fewer
    assert visual[:2] == [cost["visual_tokens_in"]] * 2 and 0 < visual[2] < cost["visual_tokens_in"] * 0.3
    assert tokens[0] - tokens[2] == visual[0] - visual[2]  # only visual tokens left

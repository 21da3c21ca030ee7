"""Section 4: llm-compressor's Wanda, SparseGPT and GPTQ (oneshot) on the same SmolLM2 and calibration tokens.

GPTQ is llm-compressor's W4A16 scheme (4-bit symmetric int weights, lm_head left out) with groups of 64 columns,
the peer of tamp's `gptq-w4g64`: SmolLM2's 576-column matrices take no group of 128 (llm-compressor refuses a
group size that does not divide the columns).

Every peer run happens in a fresh subprocess (``python -m bench.peers --method ...``): llm-compressor attaches
session state and hooks to the model, and it may live in another virtual environment. llmcompressor 0.14.x pins
``transformers<=5.17.0``, so it does not install into this project's venv (transformers 5.23) without a
downgrade; pass ``--peer-python /path/to/other/venv/bin/python`` (see bench/README.md). When no interpreter
with llmcompressor is available the section is skipped with the reason recorded.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, Phase

SECTION = "peers"
PEER_SPEC = "llmcompressor==0.14.0.1"
INSTALL_NOTE = (
    "llmcompressor is not importable here. Its newest release, 0.14.0.1 (0.14.0 likewise), requires "
    "transformers<=5.17.0 (0.13.0: <=5.14.1), so installing it into this venv would downgrade transformers "
    "5.23.0 -> 5.17.0 (and huggingface_hub 2.4.0 -> 1.33.0); run it from a separate venv with "
    "--peer-python (bench/README.md)"
)
MODIFIERS = {"wanda": "WandaPruningModifier", "sparsegpt": "SparseGPTModifier", "gptq": "GPTQModifier"}
GPTQ_GROUP = 64  # divides SmolLM2's 576 and 1536 input columns
TAMP_NAME = {"gptq": f"gptq-w4g{GPTQ_GROUP}"}  # the tamp run each peer run sits beside


def peer_version(python: str) -> tuple[str | None, str]:
    """(llmcompressor version, '') if `python` can import it, else (None, why not)."""
    if python == sys.executable and importlib.util.find_spec("llmcompressor") is None:
        return None, INSTALL_NOTE
    try:
        out = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('llmcompressor'))"],
                             capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"cannot run {python}: {exc}"
    if out.returncode != 0:
        return None, f"{python} cannot import llmcompressor" + ("" if python != sys.executable else f"; {INSTALL_NOTE}")
    return out.stdout.strip(), ""


def run(ctx: Any, peer_python: str | None, methods: tuple[str, ...] = ("wanda", "sparsegpt", "gptq"),
        threads: int | None = None, timeout_s: float = 3600.0) -> list[Phase]:
    """One phase per llm-compressor method, side by side with tamp's (ratios use the same dense-forward unit)."""
    from bench.engine_bench import LLMCOMPRESSOR_REFERENCE, TARGETS

    python = peer_python or sys.executable
    if ctx is None:
        return [Phase(SECTION, "llm-compressor", status="skipped", reason="SmolLM2 is not available")]
    version, why = peer_version(python)
    if version is None:
        return [Phase(SECTION, "llm-compressor", status="skipped", reason=why,
                      details={"published_reference": LLMCOMPRESSOR_REFERENCE, "peer_spec": PEER_SPEC})]
    from tamp.models.gguf import find_smollm2_gguf

    gguf = str(find_smollm2_gguf())
    phases = []
    for method in methods:
        phase = Phase(SECTION, f"llm-compressor {method}" + ("" if method == "gptq" else " 50%"),
                      details={"llmcompressor": version, "python": python, "modifier": MODIFIERS[method],
                               **({"beside": TAMP_NAME[method]} if method in TAMP_NAME else {})})
        phase.details["load_avg_1m_at_start"] = round(os.getloadavg()[0], 2)
        with tempfile.TemporaryDirectory(prefix="tamp-bench-peer-") as tmp:
            out_json = Path(tmp) / "peer.json"
            cmd = [python, "-m", "bench.peers", "--method", method, "--gguf", gguf, "--json", str(out_json)]
            if threads:
                cmd += ["--threads", str(threads)]
            if not ctx.eval_ppl:
                cmd.append("--no-ppl")
            env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   "TQDM_DISABLE": "1", "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1",
                   "HF_DATASETS_OFFLINE": "1"}
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=REPO_ROOT, env=env)
            except subprocess.TimeoutExpired:
                phase.status, phase.reason = "error", f"timed out after {timeout_s:g} s"
                phases.append(phase)
                continue
            if proc.returncode != 0 or not out_json.exists():
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                phase.status, phase.reason = "error", f"exit {proc.returncode}: " + " | ".join(tail)[-500:]
                phases.append(phase)
                continue
            res = json.loads(out_json.read_text())
        phase.wall_s, phase.times_s = res["wall_s"], [res["wall_s"]]
        phase.peak_cpu_rss_mb = res["peak_cpu_rss_mb"]
        phase.details.update({k: v for k, v in res.items() if k not in ("wall_s", "peak_cpu_rss_mb")})
        phase.set_ratio(ctx.dense_forward_s, "dense forward", TARGETS.get(method))
        phase.target = phase.met = None  # the targets are tamp's; the peer's ratio is for comparison
        phases.append(phase)
    return phases


# ---------------------------------------------------------------------------------------------------------------------
# The subprocess: one llm-compressor oneshot run
# ---------------------------------------------------------------------------------------------------------------------


def _worker(method: str, gguf: str, out: Path, eval_ppl: bool) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
    from llmcompressor.modifiers.quantization import GPTQModifier
    from transformers import AutoModelForCausalLM

    from bench.common import peak_vm_hwm_mb, reset_peak_memory
    from bench.engine_bench import BATCH_SIZE, CALIB_FILES, EVAL_FILES, dense_forward, text_batches
    from tamp.calibration.text import text_segments
    from tamp.eval.perplexity import perplexity
    from tamp.models.gguf import load_gguf

    gguf_model, tok = load_gguf(gguf, dtype=torch.float32)
    # oneshot re-reads the config from model.config.name_or_path: give it a plain checkpoint folder
    folder = out.parent / "smollm2-fp32"
    gguf_model.save_pretrained(folder)
    tok.save_pretrained(folder)
    del gguf_model
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = text_segments(tok, CALIB_FILES, 32, 256)
    # a dense forward in this very process, right before oneshot: the peer's own unit (machine load drifts)
    start = time.perf_counter()
    dense_forward(model, text_batches(ids), torch.device("cpu"))
    dense_s = time.perf_counter() - start
    data = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    # "re:.*lm_head": a plain "lm_head" does not match (llmcompressor names it "lm_head." and would prune it,
    # and with SmolLM2's tied embeddings the embedding table with it)
    if method == "gptq":
        weights = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": GPTQ_GROUP}
        recipe = GPTQModifier(config_groups={"group_0": {"targets": ["Linear"], "weights": weights}},
                              ignore=["re:.*lm_head"])
    else:
        cls = {"wanda": WandaPruningModifier, "sparsegpt": SparseGPTModifier}[method]
        recipe = cls(sparsity=0.5, targets=["Linear"], ignore=["re:.*lm_head"])
    reset_peak_memory()
    start = time.perf_counter()
    oneshot(model=model, processor=tok, dataset=data, recipe=recipe, num_calibration_samples=int(ids.shape[0]),
            max_seq_length=int(ids.shape[1]), batch_size=BATCH_SIZE, shuffle_calibration_samples=False,
            pipeline="sequential")
    wall = time.perf_counter() - start
    rss = peak_vm_hwm_mb()
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "layers." in n}
    zeros = sum(int((m.weight == 0).sum()) for m in linears.values())
    result: dict[str, Any] = {"wall_s": wall, "peak_cpu_rss_mb": rss, "matrices": len(linears),
                              "dense_forward_local_s": dense_s, "ratio_local": wall / dense_s,
                              "sparsity": zeros / max(1, sum(m.weight.numel() for m in linears.values())),
                              "torch_threads": torch.get_num_threads(),
                              "lm_head_zeros": int((model.get_output_embeddings().weight == 0).sum())}
    import importlib.metadata as md

    result["versions"] = {d: md.version(d) for d in ("llmcompressor", "transformers", "torch", "compressed-tensors")}
    if eval_ppl:
        start = time.perf_counter()
        result["ppl"] = perplexity(model, tok, EVAL_FILES, seqlen=256, batch_size=BATCH_SIZE)
        result["ppl_s"] = time.perf_counter() - start
    out.write_text(json.dumps(result))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one llm-compressor oneshot run on SmolLM2 (used by bench.run)")
    parser.add_argument("--method", choices=sorted(MODIFIERS), required=True)
    parser.add_argument("--gguf", required=True, help="path of the SmolLM2 GGUF file")
    parser.add_argument("--json", required=True, type=Path)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--no-ppl", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    _worker(args.method, args.gguf, args.json, not args.no_ppl)
    return 0


if __name__ == "__main__":
    sys.exit(main())

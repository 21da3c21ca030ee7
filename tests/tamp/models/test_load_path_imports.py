"""tamp.testing (tiny builders, the training recipe, --ship) is test scaffolding: loading a model, pruning it, keying
its artifact and loading that artifact in an lmms-eval wrapper import none of it (the shipped trained model's
manifest check is tamp.models.shipped)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

SCRIPT = """
import sys
from pathlib import Path
from harness.cache import artifact_key, model_fingerprint
from harness.model_specs import resolve_model
from harness.wrappers.llava_hf import TampLlavaHf
from tamp.pipeline import prune
from tamp.recipe import build_recipe

out = Path(sys.argv[1])
spec = resolve_model("tiny-trained-llava-next")
assert model_fingerprint(spec, None)["weights_sha256"]
recipe = build_recipe("magnitude", 0.5)
assert artifact_key(spec, recipe, None)[0]
prune(spec.source, recipe, out, device="cpu")
wrapper = TampLlavaHf(pretrained=str(out), device="cpu")
assert wrapper.model is not None
print(sorted(m for m in sys.modules if m.startswith("tamp.testing")))
"""


def test_load_prune_and_evaluate_paths_import_no_test_scaffolding(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "artifact")], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "artifact" / "pruning.json").is_file()

"""Real-weights checks on SmolLM2-135M-Instruct (dense): loading, calibration text, perplexity, saving."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from tamp.calibration.text import parse_text_spec, read_text_files, text_segments
from tamp.eval.perplexity import perplexity
from tamp.models.gguf import find_smollm2_gguf, load_gguf

pytestmark = pytest.mark.slow

LICENSES = Path("/usr/share/common-licenses")
CALIB_FILES = [LICENSES / n for n in ("GPL-2", "LGPL-2.1", "MPL-2.0", "Apache-2.0")]
EVAL_FILES = [LICENSES / n for n in ("GPL-3", "GFDL-1.3")]
DENSE_REFERENCE_PPL = 26.02


def _need(paths: list[Path]) -> None:
    missing = [str(p) for p in paths if not p.is_file()]
    assert not missing, f"license texts missing (Debian's base-files provides them): {missing}"


@pytest.fixture(scope="module")
def smollm2():
    """(model, tokenizer), loaded once for the module."""
    try:
        path = find_smollm2_gguf()
    except FileNotFoundError as e:
        pytest.fail(str(e))
    return load_gguf(path)


def _decoder_linears(model: torch.nn.Module) -> list[str]:
    return [n for n, m in model.model.layers.named_modules() if isinstance(m, torch.nn.Linear)]


def test_structure(smollm2):
    model, _ = smollm2
    assert not model.training
    assert len(model.model.layers) == 30
    assert len(_decoder_linears(model)) == 210
    assert getattr(model, "hf_quantizer", None) is None
    assert next(model.parameters()).dtype == torch.float32


def test_dense_perplexity_matches_reference(smollm2):
    _need(EVAL_FILES)
    model, tok = smollm2
    t0 = time.perf_counter()
    ppl = perplexity(model, tok, EVAL_FILES, seqlen=256, batch_size=8)
    print(f"dense perplexity {ppl:.4f} in {time.perf_counter() - t0:.1f} s")
    assert ppl == pytest.approx(DENSE_REFERENCE_PPL, rel=0.01)


def test_calibration_segments(smollm2):
    _need(CALIB_FILES)
    _, tok = smollm2
    seg = text_segments(tok, CALIB_FILES, nsamples=32, seqlen=256)
    assert seg.shape == (32, 256) and seg.dtype == torch.long
    # consecutive: the segments are the head of the same token stream
    flat = tok(read_text_files(CALIB_FILES), add_special_tokens=False)["input_ids"][: 32 * 256]
    assert seg.flatten().tolist() == flat
    with pytest.raises(ValueError, match="segments of 256 tokens available"):
        text_segments(tok, CALIB_FILES, nsamples=100_000, seqlen=256)


def test_save_pretrained_roundtrip(smollm2, tmp_path):
    from transformers import AutoModelForCausalLM

    model, tok = smollm2
    x = tok("The GNU General Public License is a free, copyleft license.", return_tensors="pt")["input_ids"]
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.inference_mode():
        a = model(x).logits
        b = reloaded(x).logits
    assert torch.equal(a, b)


def test_missing_files(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_text_files([missing])
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError):
        read_text_files([empty])
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_gguf(missing)


def test_parse_text_spec():
    assert parse_text_spec("text:a.txt, b/c.txt") == [Path("a.txt"), Path("b/c.txt")]
    with pytest.raises(ValueError):
        parse_text_spec("a.txt")
    with pytest.raises(ValueError):
        parse_text_spec("text:")


def test_find_gguf_missing_package(monkeypatch):
    import importlib.metadata

    import tamp.models.gguf as g

    def fake(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(g.importlib.metadata, "distribution", fake)
    with pytest.raises(FileNotFoundError, match="make install"):
        g.find_smollm2_gguf()

"""Every method on the tiny audio, video and audio-visual models: exact sparsity of the language model only,
untouched encoders, an artifact that loads and generates, and DAS/AMIA seeing every modality present."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tamp.pipeline import prune
from tamp.recipe import recipe_for, weight_config

FAMILIES = ("qwen2-audio", "llava-onevision", "qwen2.5-omni")
METHODS = ("magnitude", "wanda", "sparsegpt", "owl", "ecoflap", "das", "amia", "tamp")
UNIFORM = ("magnitude", "wanda", "sparsegpt", "amia")
# ECoFLaP's zeroth-order scores take 20-40 s per tiny model on a contended CPU
METHOD_PARAMS = [pytest.param(m, marks=pytest.mark.slow) if m == "ecoflap" else m for m in METHODS]


def _weights(path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForMultimodalLM

    model = AutoModelForMultimodalLM.from_pretrained(path)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _generate(path, family: str) -> None:
    """Plain transformers loading of the artifact, then a few greedy tokens with the family's media."""
    from transformers import AutoModelForMultimodalLM

    from tamp.processors import load_processor

    model = AutoModelForMultimodalLM.from_pretrained(path).eval()
    runner = model.thinker if family == "qwen2.5-omni" else model
    proc = load_processor(path)
    t = np.arange(8000) / 16_000
    content, kwargs = [], {}
    if family != "llava-onevision":
        content.append({"type": "audio"})
        kwargs.update(audio=[(0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)], sampling_rate=16_000)
    if family != "qwen2-audio":
        content.append({"type": "video"})
        kwargs["videos"] = [np.random.default_rng(0).integers(0, 256, (4, 48, 48, 3), dtype=np.uint8)]
    messages = [{"role": "user", "content": [*content, {"type": "text", "text": "What is it?"}]}]
    inputs = proc(text=[proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)],
                  return_tensors="pt", **kwargs)
    out = runner.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert inputs["input_ids"].shape[1] < out.shape[1] <= inputs["input_ids"].shape[1] + 3


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", METHOD_PARAMS)
def test_method_on_av_family(tiny_model, tmp_path, family: str, method: str) -> None:
    cfg = weight_config(method, sparsity=0.5, calib="synthetic", nsamples=3, seqlen=32, seed=42)
    out = tmp_path / f"{family}-{method}"
    info = prune(str(tiny_model(family)), recipe_for(cfg), out, device="cpu")
    per = info["per_matrix"]
    assert len(per) == 4 * 7 and all(".language_model.layers." in name for name in per)
    before, after = _weights(tiny_model(family)), _weights(out)
    assert set(before) == set(after)
    for key, tensor in after.items():
        if key.removesuffix(".weight") not in per:  # audio / vision encoders, projectors, embeddings, head
            assert torch.equal(tensor, before[key]), f"{key} changed but is not a pruned matrix"
    for name, m in per.items():
        w = after[name + ".weight"]
        assert int((w == 0).sum()) == m["zeros"], name
        if method == "magnitude":
            assert m["zeros"] == int(w.numel() * 0.5), name
        elif method in ("wanda", "amia"):
            assert bool(((w == 0).sum(1) == int(w.shape[1] * 0.5)).all()), name
        elif method != "sparsegpt":  # allocations: each row at the matrix's own target
            assert m["zeros"] == w.shape[0] * int(w.shape[1] * m["target"]), name
    total = sum(m["numel"] for m in per.values())
    planned = sum(m["numel"] * m["target"] for m in per.values())
    assert abs(planned - 0.5 * total) <= len(per)
    if method not in UNIFORM:
        assert len({round(m["target"], 9) for m in per.values()}) > 1, "the allocation is not uniform"
    if method in ("amia", "tamp"):
        assert 0 < info["engine"]["selected_tokens"] <= info["engine"]["candidate_tokens"]
    if method != "magnitude":
        assert set(info["calibration"]["token_counts"]) >= {"text"} | ({"audio"} if family != "llava-onevision"
                                                                      else {"image", "video"})
    json.loads((out / "pruning.json").read_text())
    _generate(out, family)


def test_das_sees_six_terms_on_the_audio_visual_model(tiny_model, tmp_path, monkeypatch) -> None:
    """Video + audio + text: every linear's diversity has 3 within- and 3 cross-modality terms."""
    import tamp.methods.das as das

    seen: dict[str, set[str]] = {}
    original = das.RunningTerms.add

    def spy(self, key: str, terms: dict[str, torch.Tensor]) -> None:
        seen.setdefault(key, set()).update(k for k, v in terms.items() if not bool(torch.isnan(v)))
        original(self, key, terms)

    monkeypatch.setattr(das.RunningTerms, "add", spy)
    cfg = weight_config("das", sparsity=0.5, calib="synthetic", nsamples=2, seqlen=32, seed=0)
    info = prune(str(tiny_model("qwen2.5-omni")), recipe_for(cfg), tmp_path / "out", device="cpu")
    assert set(seen) == set(info["per_matrix"])
    for key, terms in seen.items():
        assert {t for t in terms if "|" not in t} == {"video", "audio", "text"}, key
        assert {frozenset(t.split("|")) for t in terms if "|" in t} == {
            frozenset(p) for p in (("video", "audio"), ("video", "text"), ("audio", "text"))}, key

"""Token methods in a batch: each sample keeps its own count (mixed image sizes, left padding), and greedy answers at
batch size 8 equal batch size 1 token for token, every family x every token method; cached batched generation
equals a no-cache recompute of each sample with the tokens each layer kept masked out (the released code's way)."""

from __future__ import annotations

import pytest
import torch

from tamp.models.adapters import get_adapter
from tamp.token_transform import TokenTransform
from tests.tamp.inference.conftest import BATCH_ITEMS, FAMILIES, YOPO_FAMILIES, attn
from tests.tamp.inference.methods import METHODS
from tests.tamp.inference.methods import install as install_method
from tests.tamp.inference.test_cls_methods_release import CLS_FAMILIES
from tests.tamp.inference.test_cls_methods_release import SETTINGS as CLS_SETTINGS
from tests.tamp.inference.test_token_drop import _masked_recompute

STEPS = 3
TOL = 1e-4  # logits of a padded batch against one sample: equal up to summation order in the matmuls


def _generate(model, inputs: dict, media: list[int]):
    return model.generate(**inputs, max_new_tokens=STEPS, do_sample=False, suppress_tokens=media,
                          output_scores=True, return_dict_in_generate=True)


def _answer(sequence: torch.Tensor, eos: list[int]) -> list[int]:
    """The generated tokens up to and including the first end of sequence (a batch pads after it)."""
    tokens = sequence.tolist()
    ends = [k for k, t in enumerate(tokens) if t in eos]
    return tokens[:ends[0] + 1] if ends else tokens


class _OneSample:
    """Sample b of a batched editor as `_masked_recompute` reads an editor: each layer's kept prompt positions in
    the sample's own (unpadded) coordinates, and the states layer 0 ran on when a drop before it rewrote them."""

    def __init__(self, editor, b: int, lead: int, first: torch.Tensor | None) -> None:
        self.plan, self.installed = editor.plan, editor.installed
        self.kept_by_layer = {}
        for i, index in editor.kept_by_layer.items():
            pad = editor.pad_by_layer.get(i)
            own = index[b] if pad is None else index[b][~pad[b]]
            self.kept_by_layer[i] = (own[own >= lead] - lead)[None]
        self.first_states = None
        if first is not None:
            pad = editor.pad_by_layer.get(0)
            self.first_states = first[b] if pad is None else first[b][~pad[b]]


# every family x every token method the family takes (Gemma 3 refuses YOPO, docs/models.md; VisionZip and VisPruner
# need a CLIP tower's [CLS])
# SparseVLM recycles dropped tokens into cluster means inside the LLM, which the masked recompute below cannot put
# back (test_sparsevlm_release.py checks its cached generation against a recompute that does): its batch answers are
# checked against single runs only
# (likewise HoliTom's inner merge, on the image prompts of its video families: its outer step leaves images as they are)
OWN_SETTINGS = {"sparsevlm": {"sparsevlm_cluster_size": 2, "sparsevlm_keep": 0.222}, "holitom": {}}
HOLITOM_FAMILIES = ("llava-onevision", "qwen2-vl", "qwen2.5-vl", "qwen3-vl")
CASES = [(f, m) for f in FAMILIES for m in METHODS if m != "yopo" or f in YOPO_FAMILIES] + \
    [(f, m) for f in CLS_FAMILIES for m in CLS_SETTINGS] + [(f, "sparsevlm") for f in FAMILIES] + \
    [(f, "holitom") for f in HOLITOM_FAMILIES]


def install(model, method: str):
    """A fresh install of the method with the inference tests' settings."""
    if method in CLS_SETTINGS:
        return TokenTransform.build(method, CLS_SETTINGS[method]).install(model)
    if method in OWN_SETTINGS:
        return TokenTransform.build(method, OWN_SETTINGS[method]).install(model)
    return install_method(model, method)


@pytest.mark.parametrize(("family", "method"), CASES)
def test_batch_of_eight_answers_as_batch_of_one(loaded_batch, family: str, method: str) -> None:
    model, batch, singles, media = loaded_batch(family)
    attn(model, "sdpa")
    eos = model.generation_config.eos_token_id
    eos = list(eos) if isinstance(eos, (list, tuple)) else [eos]
    seen: dict = {}

    def record(module, args, kwargs) -> None:  # the states layer 0 ran on in the prefill (after any merge)
        seen.setdefault("h", (args[0] if args else kwargs["hidden_states"]).clone())

    editor = install(model, method)  # a fresh install: a seeded method draws in the same order as below
    # after the editor's own hook: the probe sees what layer 0 ran on
    probe = get_adapter(model).language_stack(model).layers[0].register_forward_pre_hook(record, with_kwargs=True)
    try:
        with torch.no_grad():
            out = _generate(model, batch, media)
    finally:
        editor.remove()
        probe.remove()
    length = batch["input_ids"].shape[1]
    counts = {int((~editor.pad_by_layer[i][b]).sum()) if i in editor.pad_by_layer else None
              for i in editor.kept_by_layer for b in range(len(singles))}
    assert len(counts) > 1  # the samples really kept different numbers of tokens
    single_editor = install(model, method)
    try:
        for b, inputs in enumerate(singles):
            with torch.no_grad():
                one = _generate(model, inputs, media)
            mine = one.sequences[0, inputs["input_ids"].shape[1]:]
            assert _answer(out.sequences[b, length:], eos) == _answer(mine, eos), f"sample {b}"
            for got, want in zip(out.scores, one.scores):
                finite = torch.isfinite(want[0])
                torch.testing.assert_close(got[b][finite], want[0][finite], rtol=TOL, atol=TOL)
    finally:
        single_editor.remove()
    if method in OWN_SETTINGS:
        return
    real = batch["attention_mask"].bool()
    first = seen["h"] if 0 in editor.plan.drops else None
    for b, inputs in enumerate(singles[:len(BATCH_ITEMS)]):  # one sample of each image size and prompt
        lead = int((~real[b]).sum())
        tokens, _ = _masked_recompute(model, inputs, media, _OneSample(editor, b, lead, first), STEPS)
        assert _answer(out.sequences[b, length:], eos) == _answer(tokens, eos), f"sample {b} against its recompute"


@pytest.mark.parametrize("family", ["llava", "gemma3"])
def test_uneven_drops_in_an_unpadded_batch(loaded_batch, family: str) -> None:
    """Two equal prompts (no padding) whose chooser keeps a different number of tokens each: the batch is re-laid
    with left padding, and each sample's logits equal its own run with the same drop (Gemma 3: its windows and
    image blocks kept in the re-laid layout), in the prefill and in cached decoding (the padding slot of the sample
    that kept fewer stays hidden, though its index is a real token's)."""
    from tamp.engine.attention import LAST_ROW
    from tamp.inference.sequence_edit import Drop, Kept, SequenceEditor, TokenPlan

    model, _, singles, media = loaded_batch(family, 2)
    attn(model, "sdpa")
    inputs = singles[0]
    batch = {k: torch.cat([v, v]) for k, v in inputs.items()}
    cut = {"n": 0}

    def uneven(seen) -> Kept:
        cut["n"] += 1
        return Kept(torch.arange(seen.hidden.shape[0])[cut["n"]:])  # sample b drops its first b + 1 tokens

    dropper = SequenceEditor(model, get_adapter(model), TokenPlan({2: Drop(uneven, LAST_ROW)}))
    try:
        with torch.no_grad():
            both = model(**batch).logits
            cut["n"] = 0
            first = model(**inputs).logits
            cut["n"] = 1
            second = model(**inputs).logits
            decoded = []
            for start, run in ((0, batch), (0, inputs), (1, inputs)):
                cut["n"] = start
                decoded.append(_generate(model, run, media).scores)
    finally:
        dropper.remove()
    assert dropper.pad_by_layer == {}  # the last single run kept one count: no re-laid layout left behind
    torch.testing.assert_close(both[0, -1], first[0, -1], rtol=TOL, atol=TOL)
    torch.testing.assert_close(both[1, -1], second[0, -1], rtol=TOL, atol=TOL)
    for b, own in ((0, decoded[1]), (1, decoded[2])):
        for got, want in zip(decoded[0], own):
            finite = torch.isfinite(want[0])
            torch.testing.assert_close(got[b][finite], want[0][finite], rtol=TOL, atol=TOL)

"""`tamp methods` lists what each token method needs, derived from its declaration (its fit, its drops'
attention scores), as it does for weight methods: not "-" for YOPO, FastV and AIM."""

from __future__ import annotations

import json

from tamp.engine.attention import LAST_ROW
from tamp.inference.sequence_edit import Drop, Kept, TokenPlan
from tamp.methods.base import Param, TokenMethod
from tamp.methods.listing import render, token_needs


def _keep_all(seen) -> Kept:  # never run: the listing only reads the plan
    raise AssertionError


def test_builtin_token_methods_list_their_needs() -> None:
    rows = {r["name"]: r for r in json.loads(render(as_json=True))}
    assert rows["yopo"]["needs"] == ["calibration"]  # its inactive heads are fitted on calibration data
    assert rows["fastv"]["needs"] == ["attention"]  # the last row's attention ranks the visual tokens
    assert rows["aim"]["needs"] == ["attention"]  # PageRank over each pruning layer's attention
    assert rows["gptq"]["needs"] == ["calibration", "hessian"] and rows["rtn"]["needs"] == []  # quantizers too
    text = render()
    line = next(row for row in text.splitlines() if row.startswith("yopo "))
    assert "calibration" in line


def test_needs_follow_the_declaration() -> None:
    """A method's fit (as its needs_fit rules at the defaults) and its drops' scores, nothing listed by hand."""
    fit = lambda params, model, adapter, batches, device: {}  # noqa: E731

    def plan(params: dict, num_layers: int) -> TokenPlan:
        return TokenPlan({2: Drop(_keep_all, LAST_ROW if params["scored"] else None)})

    scored = Param("scored", bool, True, "whether the drop is scored")
    method = TokenMethod(name="x", label="X", order=99, summary="s", params=(scored,), plan=plan, fit=fit)
    assert token_needs(method) == ["calibration", "attention"]
    unscored = TokenMethod(name="x", label="X", order=99, summary="s", plan=plan, fit=fit,
                           params=(Param("scored", bool, False, "whether the drop is scored"),))
    assert token_needs(unscored) == ["calibration"]
    no_fit_at_defaults = TokenMethod(name="x", label="X", order=99, summary="s", params=(scored,), plan=plan,
                                     fit=fit, needs_fit=lambda params: False)
    assert token_needs(no_fit_at_defaults) == ["attention"]


def test_attention_readers_say_how_they_get_it_under_sdpa() -> None:
    """Each token method reading attention states which and how (issue 25, item 4); the [CLS] methods list the
    vision encoder's attention as a need, read from their install."""
    rows = {r["name"]: r for r in json.loads(render(as_json=True))}
    assert rows["visionzip"]["needs"] == rows["vispruner"]["needs"] == ["vision attention"]
    for name in ("fastv", "pdrop", "dart", "aim", "visionzip", "vispruner"):
        assert "query and key" in rows[name]["attention"] or "keys" in rows[name]["attention"], name
    assert rows["divprune"]["attention"] == ""  # reads no attention
    text = render()
    assert "Attention the token methods read" in text and "\n  visionzip: the vision encoder's [CLS] row" in text

"""One bar per cell: inside `cell_progress` the bars tamp's engine and lmms-eval open are phases of the cell's one
bar (its label and the phase on one line), transformers' bars are off, and all of it is put back afterwards."""

from __future__ import annotations

import io
import sys

import lmms_eval.evaluator

import tamp.engine.block_pass
import tamp.engine.sequential
from harness.executors.progress import BAR_MODULES, cell_progress


def _bars() -> dict[str, object]:
    return {name: sys.modules[name].tqdm for name in BAR_MODULES if name in sys.modules}


def test_the_phases_of_a_cell_share_one_bar() -> None:
    from transformers.utils import logging as hf_logging

    originals = _bars()
    hf_on = hf_logging.is_progress_bar_enabled()
    out = io.StringIO()
    with cell_progress("tiny wanda 50%", file=out, disable=False) as cell:
        assert hf_logging.is_progress_bar_enabled() == hf_on and _bars() == originals  # planning: nothing swapped
        cell.start()
        assert not hf_logging.is_progress_bar_enabled()
        for _ in tamp.engine.block_pass.tqdm(range(4), desc="prune layers", unit="block"):
            for _ in tamp.engine.sequential.tqdm({"q": 1, "k": 2}.items(), desc="prune (wanda)", leave=False):
                pass
        assert cell.bar.n == 4 and cell.bar.total == 4  # the outer phase counts, the inner one is only named
        bar = lmms_eval.evaluator.tqdm(total=3, desc="Postprocessing", disable=False)
        bar.update(2)
        assert cell.bar.n == 2 and cell.bar.total == 3
        bar.close()
    assert _bars() == originals
    assert hf_logging.is_progress_bar_enabled() == hf_on
    states = [s.strip() for s in out.getvalue().replace("\n", "\r").split("\r") if s.strip()]
    assert states and all(s.startswith("tiny wanda 50%") for s in states), states  # one bar: every state is its
    text = " ".join(states)
    assert "tiny wanda 50%: prune layers" in text and "> prune (wanda) 1/2" in text
    assert "tiny wanda 50%: Postprocessing" in text
    assert states[-1].startswith("tiny wanda 50%: finished")


def test_a_failing_cell_puts_everything_back() -> None:
    originals = _bars()
    out = io.StringIO()
    try:
        with cell_progress("tiny wanda 50%", file=out, disable=False) as cell:
            cell.start()
            for _ in tamp.engine.block_pass.tqdm(range(4), desc="prune layers"):
                raise RuntimeError("a cell fails")
    except RuntimeError:
        pass
    assert _bars() == originals
    assert out.getvalue().replace("\n", "\r").split("\r")[-2].startswith("tiny wanda 50%: stopped")


def test_a_run_refused_before_its_first_phase_draws_no_bar() -> None:
    out = io.StringIO()
    try:
        with cell_progress("tiny wanda 50%", file=out, disable=False):
            raise RuntimeError("refused while planning")  # before start()
    except RuntimeError:
        pass
    assert out.getvalue() == ""  # the run's one error line stays alone

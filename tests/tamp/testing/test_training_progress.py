"""`tamp build-tiny --trained` shows how far the training is: one bar per stage on stderr, the loss beside it,
nothing on stdout; a build that is not asked to log draws nothing."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

import tamp.testing.tiny_training as training
from tamp.testing.tiny_training import Recipe, build_trained_tiny

QUICK = Recipe(hidden=32, intermediate=64, layers=2, heads=2, kv_heads=1, vision_hidden=32, vision_intermediate=64,
               vision_layers=2, vision_steps=3, vision_batch=4, steps=3, batch=2, warmup=1)


def test_training_shows_one_bar_per_stage_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(training, "tqdm", functools.partial(training.tqdm, disable=False))  # the suite sets TQDM_DISABLE
    build_trained_tiny("llava-next", tmp_path / "a", recipe=QUICK, log=True)
    captured = capsys.readouterr()
    assert "loss" not in captured.out and "step" not in captured.out, captured.out
    states = [s.strip() for s in captured.err.replace("\n", "\r").split("\r") if s.strip()]
    vision = [s for s in states if s.startswith("train the vision tower (1/2)")]
    answers = [s for s in states if s.startswith("train the answers (2/2)")]
    assert vision and answers and len(vision) + len(answers) == len(states), states  # nothing else drawn
    assert "3/3" in vision[-1] and "3/3" in answers[-1] and "loss" in answers[-1]
    build_trained_tiny("llava-next", tmp_path / "b", recipe=QUICK)
    assert capsys.readouterr().err == ""

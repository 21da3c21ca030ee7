"""The wrappers take the `tamp_key` model argument `harness run` passes: kept when it is the artifact's key (even
one lmms-eval parses as a number), refused in one line before any weight is loaded when the artifact's key file
names another, kept as given where the artifact has no key file; without it lmms-eval's own CLI works as before
(tests/e2e/test_harness_lmms_cli.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness.cache import KEY_FILE
from harness.errors import ArtifactRefused
from harness.evaluate import load_wrapper, model_args

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "artifact-format-2026-12"  # tiny LLaVA-NeXT


@pytest.fixture()
def artifact(tmp_path: Path) -> Path:
    out = tmp_path / "artifact"
    shutil.copytree(FIXTURE, out)
    return out


def _keyed(artifact: Path, key: str) -> Path:
    (artifact / KEY_FILE).write_text(json.dumps({"key": key, "inputs": {}}))
    return artifact


@pytest.mark.parametrize("key", ["3f2a9c0d1e5b7a8c6d4e", "01234567890123456789"])
def test_the_artifacts_own_key_is_accepted_and_kept(artifact: Path, key: str) -> None:
    lm = load_wrapper("tamp_llava_hf", model_args(_keyed(artifact, key), key, 0.5), "cpu")
    assert lm.tamp_key == key and lm.max_empty_fraction == 0.5


def test_another_key_is_refused_before_loading(artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lmms_eval.models.simple.llava_hf import LlavaHf

    loads: list[str] = []
    monkeypatch.setattr(LlavaHf, "__init__", lambda self, **kwargs: loads.append(kwargs["pretrained"]))
    _keyed(artifact, "3f2a9c0d1e5b7a8c6d4e")
    with pytest.raises(ArtifactRefused) as refused:
        load_wrapper("tamp_llava_hf", model_args(artifact, "aaaaaaaaaaaaaaaaaaaa", 0.5), "cpu")
    assert loads == []  # the stock wrapper, which loads the weights, was never reached
    message = str(refused.value.code)
    assert message.count("\n") == 0 and "tamp_key=aaaaaaaaaaaaaaaaaaaa" in message
    assert "is the artifact of key 3f2a9c0d1e5b7a8c6d4e" in message


def test_without_a_key_file_the_key_is_kept_and_without_the_argument_none(artifact: Path) -> None:
    lm = load_wrapper("tamp_llava_hf", model_args(artifact, "3f2a9c0d1e5b7a8c6d4e", 1.0), "cpu")
    assert lm.tamp_key == "3f2a9c0d1e5b7a8c6d4e"
    assert load_wrapper("tamp_llava_hf", f"pretrained={artifact}", "cpu").tamp_key is None

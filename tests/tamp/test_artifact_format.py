"""The artifact format has one owner (tamp.artifacts, tamp.artifact_check) and there is one device picker
(tamp.devices): these tests break if the moved rules break or if harness starts deciding them again.

No model is loaded: a two-layer nn.Module stands in for a pruned model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from tamp.artifact_check import SparsityMismatch, read_pruning_info, verify_sparsity
from tamp.artifacts import (
    PER_MATRIX,
    PRUNING_JSON,
    PruningJsonForeign,
    PruningJsonInvalid,
    PruningJsonMissing,
    read_pruning_json,
    sparsity_report,
    write_pruning_json,
)
from tamp.errors import TampError

ROOT = Path(__file__).resolve().parents[2]


class TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList([nn.Linear(16, 8), nn.Linear(8, 16)])
        with torch.no_grad():
            for layer in self.layers:
                layer.weight[:, ::2] = 0  # half the weights pruned


def _artifact(tmp_path: Path) -> tuple[nn.Module, Path]:
    """A model and a directory whose pruning.json records its exact zeros, written by tamp's writer."""
    model = TwoLayers()
    report = sparsity_report({f"layers.{i}": m for i, m in enumerate(model.layers)}, {})
    info = {"model": {"id": "two-layers"}, "config": {}, "sparsity": report["totals"], "per_matrix": report["per_matrix"]}
    write_pruning_json(tmp_path, info)
    return model, tmp_path


def test_written_pruning_json_reads_back(tmp_path: Path) -> None:
    _, art = _artifact(tmp_path)
    assert (art / PRUNING_JSON).is_file()
    info = read_pruning_json(art)
    assert read_pruning_json(art / PRUNING_JSON) == info  # a directory or the file itself
    assert info["per_matrix"]["layers.0"]["zeros"] == 64 and info["sparsity"]["matrices"] == 2


@pytest.mark.parametrize("content, error, words", [
    (json.dumps({"model": {}, "config": {}, "sparsity": {}}), PruningJsonForeign, "is not a tamp pruning.json"),
    (json.dumps([1, 2]), PruningJsonForeign, "is not a tamp pruning.json"),
    ('{"per_matrix": ', PruningJsonInvalid, "is not valid JSON"),
    (None, PruningJsonMissing, "no pruning.json in"),
], ids=["no-per-matrix", "not-a-mapping", "truncated", "missing"])
def test_reader_refuses_with_one_line(tmp_path: Path, content: str | None, error: type, words: str) -> None:
    if content is not None:
        (tmp_path / PRUNING_JSON).write_text(content)
    with pytest.raises(error) as refused:
        read_pruning_json(tmp_path)
    assert isinstance(refused.value, TampError) and words in str(refused.value) and "\n" not in str(refused.value)


def test_reader_checks_only_the_sections_asked_for(tmp_path: Path) -> None:
    (tmp_path / PRUNING_JSON).write_text(json.dumps({"per_matrix": {}}))
    assert read_pruning_json(tmp_path, PER_MATRIX) == {"per_matrix": {}}
    with pytest.raises(PruningJsonForeign, match=r"needs the sections model, config, sparsity, per_matrix"):
        read_pruning_json(tmp_path)


def test_recount_passes_an_untouched_artifact(tmp_path: Path) -> None:
    model, art = _artifact(tmp_path)
    check = verify_sparsity(model, art, read_pruning_info(art))
    assert (check.matrices, check.zeros, check.numel) == (2, 128, 256) and check.sparsity == 0.5


def test_recount_catches_weights_edited_after_writing(tmp_path: Path) -> None:
    model, art = _artifact(tmp_path)
    with torch.no_grad():
        model.layers[1].weight[0, 0] = 1.0  # one pruned weight made non-zero
    with pytest.raises(SparsityMismatch, match="do not carry the sparsity pruning.json records") as refused:
        verify_sparsity(model, art, read_pruning_info(art))
    assert "1 of 2 matrices differ; first: layers.1 has 63 zeros" in str(refused.value)


def test_recount_tolerates_a_few_flushed_values_only(tmp_path: Path) -> None:
    model, art = _artifact(tmp_path)
    info = read_pruning_info(art)
    with torch.no_grad():
        model.layers[0].weight[0, 1] = 0.0  # one extra zero in 128 weights: above the 0.1% tolerance
    with pytest.raises(SparsityMismatch, match="layers.0 has 65 zeros"):
        verify_sparsity(model, art, info)


def test_recount_catches_missing_and_reshaped_matrices(tmp_path: Path) -> None:
    model, art = _artifact(tmp_path)
    info = read_pruning_info(art)
    info["per_matrix"]["layers.0"]["shape"] = [16, 8]
    info["per_matrix"]["layers.7"] = info["per_matrix"]["layers.1"]
    with pytest.raises(SparsityMismatch, match=r"2 of 3 matrices differ; first: layers.0: shape \[8, 16\]"):
        verify_sparsity(model, art, info)


def test_wrapper_reading_words_its_refusals(tmp_path: Path) -> None:
    assert read_pruning_info(tmp_path) is None  # a dense checkpoint
    assert read_pruning_info("some-org/some-model") is None  # a Hub id
    (tmp_path / PRUNING_JSON).write_text(json.dumps({"model": {}}))
    with pytest.raises(SparsityMismatch, match="has no 'per_matrix' table: not a tamp artifact's pruning.json"):
        read_pruning_info(tmp_path)
    (tmp_path / PRUNING_JSON).write_text('{"per_matrix": ')
    with pytest.raises(SparsityMismatch, match=r"pruning.json is not valid JSON \(Expecting value at line 1\)"):
        read_pruning_info(tmp_path)


def test_cache_and_plot_read_through_tamp(tmp_path: Path) -> None:
    from harness.cache import KEY_FILE, valid_artifact
    from harness.errors import HarnessError
    from harness.plots import read_pruning

    _, art = _artifact(tmp_path)
    (art / "config.json").write_text("{}")
    (art / "model.safetensors").write_bytes(b"")
    (art / KEY_FILE).write_text(json.dumps({"key": "k"}))
    assert valid_artifact(art, "k") and not valid_artifact(art, "other")
    assert read_pruning(art)["per_matrix"]
    (art / PRUNING_JSON).write_text(json.dumps({"config": {}}))
    assert not valid_artifact(art, "k")
    with pytest.raises(HarnessError, match=r"pruning.json is not a tamp pruning.json \(no per_matrix section\)$"):
        read_pruning(art)
    (art / PRUNING_JSON).write_text("[")
    assert not valid_artifact(art, "k")
    with pytest.raises(HarnessError, match="cannot read .*pruning.json: Expecting value"):
        read_pruning(art)
    (art / PRUNING_JSON).unlink()
    assert not valid_artifact(art, "k")
    with pytest.raises(HarnessError, match="pruning.json not found: give a pruned artifact directory"):
        read_pruning(art)


def test_no_other_module_spells_the_file_name() -> None:
    """The name is tamp.artifacts.PRUNING_JSON; a second literal would be a second owner of the format."""
    literal = re.compile(r"""(["'])pruning\.json\1""")
    spelled = [str(p.relative_to(ROOT)) for d in ("tamp", "harness", "bench") for p in (ROOT / d).rglob("*.py")
               if literal.search(p.read_text())]
    assert spelled == ["tamp/artifacts.py"]


# ---- one device picker ------------------------------------------------------------------------------------------
@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def with_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_auto_means_cuda_when_visible(with_cuda: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.wrappers.common import pick_device as wrapper_device
    from tamp.devices import choose_device, pick_device

    monkeypatch.setenv("LOCAL_RANK", "3")
    assert pick_device("auto") == torch.device("cuda")  # what pruning.json records as the device
    assert choose_device("auto") == "cuda" and choose_device(None, per_process=True) == "cuda:3"
    assert wrapper_device(None) == wrapper_device("auto") == wrapper_device("") == "cuda:3"
    assert wrapper_device("cuda:1") == "cuda:1"


def test_auto_means_cpu_without_cuda_and_cuda_is_refused(no_cuda: None) -> None:
    from harness.wrappers.common import pick_device as wrapper_device
    from tamp.devices import NoCudaDevice, choose_device, pick_device

    assert pick_device("auto") == torch.device("cpu") and wrapper_device(None) == "cpu"
    with pytest.raises(NoCudaDevice):
        choose_device("cuda:0")
    with pytest.raises(TampError, match=r"^--device cuda requested but no CUDA device is visible; use --device cpu$"):
        pick_device("cuda:1")
    with pytest.raises(ValueError, match=r"^device 'cuda' requested but no CUDA device is visible; use device=cpu or "
                                         r"leave it unset$"):
        wrapper_device("cuda")


def test_unknown_device_names(no_cuda: None) -> None:
    from harness.wrappers.common import pick_device as wrapper_device
    from tamp.devices import pick_device

    for name in ("tpu", ""):
        with pytest.raises(TampError, match=rf"^unknown --device '{name}'; use cpu, cuda, cuda:N or auto$"):
            pick_device(name)
    assert wrapper_device("mps") == "mps"  # lmms-eval's own names pass through to the stock wrapper


def test_harness_run_checks_the_device_with_tamps_picker(no_cuda: None, tmp_path: Path) -> None:
    from harness.errors import HarnessError
    from harness.run import RunOptions, plan_run

    with pytest.raises(HarnessError, match="--device cuda requested but no CUDA device is visible"):
        plan_run(RunOptions(model="tiny-llava-next", sparsity=0.5, device="cuda", output=tmp_path))

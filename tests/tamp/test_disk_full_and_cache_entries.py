"""A full disk during an atomic write (one line, exit 1, no temp left), the typed-schema validator (tamp.schema), and
a cache entry of a built model whose config.json is there but whose weights are truncated (found and built again)."""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tamp.atomic_write import DiskFull, atomic_dir, is_disk_full, write_text_atomic
from tamp.schema import SchemaError, check, from_text, problem

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _FullFile:
    """A file object whose writes fail as on a full disk, after the temp file was created."""

    def __init__(self, fh: Any) -> None:
        self._fh = fh

    def write(self, text: str) -> int:
        raise ENOSPC

    def __enter__(self) -> _FullFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()


def test_a_full_disk_is_one_line_and_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.fdopen
    monkeypatch.setattr("tamp.atomic_write.os.fdopen", lambda *a, **k: _FullFile(real(*a, **k)))
    target = tmp_path / "records" / "task.json"
    with pytest.raises(DiskFull) as full:
        write_text_atomic(target, "{}\n")
    message = str(full.value)
    assert message == (f"no space left on the device under {target.parent}: {target} was not written, and nothing "
                       "half-written is left; free some space there or write somewhere else, then run the same "
                       "command again")
    assert full.value.exit_code == 1 and list(target.parent.iterdir()) == []


def test_a_full_disk_inside_a_folder_write_leaves_no_temp_folder(tmp_path: Path) -> None:
    """safetensors reports a full disk as its own error carrying "os error 28"; the temp folder goes too."""

    class SafetensorError(Exception):
        pass

    target = tmp_path / "artifact"
    with pytest.raises(DiskFull, match=rf"^no space left on the device under {tmp_path}: {target} was not written"):
        with atomic_dir(target) as tmp:
            (tmp / "config.json").write_text("{}")
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("exc, full", [
    (ENOSPC, True), (OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)), True),
    (RuntimeError("I/O error: No space left on device (os error 28)"), True),
    (OSError(errno.EACCES, os.strerror(errno.EACCES)), False), (ValueError("os error 280)"), False),
])
def test_what_counts_as_a_full_disk(exc: BaseException, full: bool) -> None:
    assert is_disk_full(exc) is full


def test_a_record_write_on_a_full_disk_fails_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """harness writes run records through the same writer: its error is a failed run (exit 1), one line."""
    from harness.errors import EvaluationError
    from harness.records import write_json, write_jsonl

    real = os.fdopen
    monkeypatch.setattr("tamp.atomic_write.os.fdopen", lambda *a, **k: _FullFile(real(*a, **k)))
    for write, data in ((write_json, {"schema": 1}), (write_jsonl, [{"task": "t"}])):
        with pytest.raises(EvaluationError, match="^no space left on the device under ") as failed:
            write(tmp_path / "runs" / "r.json", data)
        assert failed.value.exit_code == 1 and "\n" not in str(failed.value)
    assert list((tmp_path / "runs").iterdir()) == []


@pytest.mark.parametrize("command", ["table", "export"])
def test_harness_report_writes_on_a_full_disk_are_one_line(command: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """`harness table --out` and `harness export --csv` write through the same writer: one line, exit 1."""
    from harness.cli import main
    from harness.records import write_json

    record = {"schema": 1, "model": {"name": "m"}, "method": "wanda", "sparsity": 0.5, "pattern": "unstructured",
              "task": "t", "limit": None, "metrics": {"acc,none": 0.5}, "primary_metric": "acc,none"}
    runs = tmp_path / "runs"
    write_json(runs / "m" / "wanda_s0.50_unstructured" / "t.json", record)
    real = os.fdopen
    monkeypatch.setattr("tamp.atomic_write.os.fdopen", lambda *a, **k: _FullFile(real(*a, **k)))
    out = tmp_path / "out"
    out.mkdir()
    flag = ["--out", str(out / "table.md")] if command == "table" else ["--csv", str(out / "board.csv")]
    code = main([command, "--runs", str(runs), *flag])
    err = capsys.readouterr().err.strip().splitlines()
    assert code in (1, 2) and err and err[-1].startswith("error: no space left on the device under "), err
    assert "Traceback" not in "\n".join(err) and list(out.iterdir()) == []


# ---- tamp.schema -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Inner:
    name: str
    heads: list[list[int]] | None = None


@dataclass(frozen=True)
class Outer:
    method: str
    inner: Inner
    share: float = 0.5
    flag: bool = False
    table: dict[str, int | str] | None = None


@pytest.mark.parametrize("data, said", [
    ({"method": "m", "inner": {"name": "n"}}, None),
    ({"method": "m", "inner": {"name": "n", "heads": [[0, 1], []]}, "share": 1, "table": {"a": 1, "b": "x"}}, None),
    ("text", 'it is "text", expected a table of method, inner, share, flag, table'),
    ({"inner": {"name": "n"}}, "field 'method' is missing (a string)"),
    ({"method": "m", "inner": "n"}, "field 'inner' is \"n\", expected a table of name, heads"),
    ({"method": "m", "inner": {}}, "field 'inner.name' is missing (a string)"),
    ({"method": "m", "inner": {"name": "n", "heads": [[0], [1.5]]}},
     "field 'inner.heads[1][0]' is 1.5, expected a whole number"),
    ({"method": "m", "inner": {"name": "n", "heads": [0]}}, "field 'inner.heads[0]' is 0, expected a list of whole numbers"),
    ({"method": "m", "inner": {"name": "n"}, "share": True}, "field 'share' is true, expected a number"),
    ({"method": "m", "inner": {"name": "n"}, "share": float("nan")}, "field 'share' is NaN, expected a number"),
    ({"method": "m", "inner": {"name": "n"}, "flag": 1}, "field 'flag' is 1, expected true or false"),
    ({"method": "m", "inner": {"name": "n"}, "table": {"a": [1]}},
     "field 'table.a' is [1], expected a whole number or a string"),
])
def test_schema_names_the_field_its_value_and_the_type(data: Any, said: str | None) -> None:
    assert problem(Outer, data) == said
    if said is None:
        check(Outer, data, "f.json")
    else:
        with pytest.raises(SchemaError) as wrong:
            check(Outer, data, "f.json", "fix it")
        assert str(wrong.value) == f"f.json: {said}; fix it"


@dataclass(frozen=True)
class Row:
    name: str
    value: float
    count: int


@pytest.mark.parametrize("cells, said", [
    ({"name": "a", "value": " 1.5", "count": "3"}, None),
    ({"name": "a", "value": "x", "count": "3"}, "field 'value' is \"x\", expected a number"),
    ({"name": "a", "value": "nan", "count": "3"}, "field 'value' is \"nan\", expected a number"),
    ({"name": "a", "value": "1", "count": "3.5"}, "field 'count' is \"3.5\", expected a whole number"),
])
def test_text_cells_are_read_as_their_schema_types(cells: dict[str, str], said: str | None) -> None:
    values, wrong = from_text(Row, cells)
    assert wrong == said
    if said is None:
        assert values == {"name": "a", "value": 1.5, "count": 3}


# ---- a cache entry of a built model with truncated weights ------------------------------------------------------


def _truncate(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])


def _empty(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(b"")


@pytest.mark.parametrize("damage", [_truncate, _empty], ids=["truncated", "emptied"])
def test_a_damaged_trained_build_in_the_cache_is_found(damage: Any, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The tests keep a build of the trained tiny model's recipe in the user's cache (tests/conftest.py); its
    config.json alone made a truncated entry look finished. A fake entry (the shipped build, damaged) stands in:
    retraining takes minutes."""
    from tamp.models import shipped
    from tamp.models.loading import reusable_build

    entry = tmp_path / "tiny" / "trained-llava-next-seed0-0123456789ab"
    assert not reusable_build(entry, "trained tiny model") and capsys.readouterr().err == ""  # not built: no note
    shutil.copytree(shipped.folder("llava-next"), entry)
    assert reusable_build(entry, "trained tiny model") and capsys.readouterr().err == ""
    damage(entry)
    assert not reusable_build(entry, "trained tiny model")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"warning: the cached trained tiny model {entry} is damaged (")
    assert "model.safetensors is truncated or corrupt" in lines[0] and lines[0].endswith("; building it again")


@pytest.mark.parametrize("damage", [_truncate, _empty], ids=["truncated", "emptied"])
def test_a_damaged_tiny_model_in_the_cache_is_built_again(damage: Any, tiny_model, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from tamp.models.loading import load_model, weights_problem

    monkeypatch.setenv("TAMP_CACHE", str(tmp_path))
    entry = tmp_path / "tiny" / "llava-next-seed0"
    shutil.copytree(tiny_model("llava-next"), entry)
    size = (entry / "model.safetensors").stat().st_size
    damage(entry)
    capsys.readouterr()
    loaded = load_model("tiny-llava-next")
    assert loaded.model_id == str(entry) and weights_problem(entry) is None
    assert (entry / "model.safetensors").stat().st_size == size
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: the cached tiny model {entry} is damaged (")

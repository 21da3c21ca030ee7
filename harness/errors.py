"""User-facing failures: the CLI prints the message as one line and exits with the error's code; and
ArtifactRefused, how an lmms-eval wrapper refuses an artifact (the check itself is tamp.artifact_check)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tamp.errors import TampError
from tamp.paths import output_problem


class HarnessError(Exception):
    """Bad input or an unmet precondition (unknown model/task/method, missing data): exit code 2."""

    exit_code = 2


class EvaluationError(HarnessError):
    """The evaluation itself failed (mostly empty answers, lmms-eval wrote no results): exit code 1."""

    exit_code = 1


class ArtifactRefused(SystemExit):
    """A wrapper refuses to evaluate an artifact (its sparsity differs from pruning.json, its files are corrupt).

    A SystemExit on purpose: lmms-eval's CLI logs every Exception a model raises and then exits 0, which scripts
    and CI read as success. This one passes through, and `python -m lmms_eval` ends with `error: REASON; HINT`
    on stderr and exit code 1. harness catches it by type and words its own hint from ``reason``.
    """

    def __init__(self, reason: str, hint: str) -> None:
        super().__init__(f"error: {reason}; {hint}")
        self.reason = reason


@contextmanager
def tamp_errors() -> Iterator[None]:
    """tamp owns the rules it checks (sparsity range, presets, calibration specs): its errors become ours."""

    try:
        yield
    except TampError as exc:
        raise HarnessError(str(exc)) from None


def check_output(path: Path, flag: str, directory: bool) -> None:
    """Refuse an output path that cannot be written (a file for a folder, a folder for a file, no permission)
    before any work starts."""

    problem = output_problem(path, directory)
    if problem is not None:
        raise HarnessError(f"{flag} {path}: {problem}")

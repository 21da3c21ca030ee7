"""User-facing failures: the CLI prints the message as one line and exits with the error's code."""

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

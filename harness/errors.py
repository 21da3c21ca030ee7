"""User-facing failures: the CLI prints the message as one line and exits with the error's code."""

from __future__ import annotations


class HarnessError(Exception):
    """Bad input or an unmet precondition (unknown model/task/method, missing data): exit code 2."""

    exit_code = 2


class EvaluationError(HarnessError):
    """The evaluation itself failed (mostly empty answers, lmms-eval wrote no results): exit code 1."""

    exit_code = 1

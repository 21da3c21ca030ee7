"""One exception type for user-facing problems: the CLI prints its message as a single line."""

from __future__ import annotations


class TampError(Exception):
    """Bad input or an unmet precondition; the message says what to do."""


def join_problems(problems: list[str]) -> str:
    """Several problems found in one check as one line, so a user fixes them all before the next try."""
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} problems: " + "; ".join(f"({i}) {p}" for i, p in enumerate(problems, 1))

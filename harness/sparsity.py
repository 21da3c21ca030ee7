"""How an lmms-eval wrapper refuses an artifact it must not evaluate.

The check itself (reading pruning.json, recounting zeros after loading) is tamp's: tamp.artifact_check.
What stays here is lmms-eval-facing: the exception type that gets through lmms-eval's CLI.
"""

from __future__ import annotations


class ArtifactRefused(SystemExit):
    """A wrapper refuses to evaluate an artifact (its sparsity differs from pruning.json, its files are corrupt).

    A SystemExit on purpose: lmms-eval's CLI logs every Exception a model raises and then exits 0, which scripts
    and CI read as success. This one passes through, and `python -m lmms_eval` ends with `error: REASON; HINT`
    on stderr and exit code 1. harness catches it by type and words its own hint from ``reason``.
    """

    def __init__(self, reason: str, hint: str) -> None:
        super().__init__(f"error: {reason}; {hint}")
        self.reason = reason

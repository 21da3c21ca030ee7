"""The driver's progress line for cells running elsewhere: done / running / failed, printed when it changes."""

from __future__ import annotations

from harness.executors.cells import CellOutcome


def one_line(exc: BaseException, limit: int = 300) -> str:
    """A worker's failure as one line: the last line of its message (a remote traceback ends with the error)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[-1] if lines else type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


class Progress:
    """Counts of the grid's submitted cells; `running` is what the scheduler reports as started."""

    def __init__(self, total: int, running_word: str = "running") -> None:
        self.total, self.done, self.failed, self.running = total, 0, 0, 0
        self.running_word = running_word
        self._last = ""

    def _line(self) -> str:
        return f"[cells: {self.done}/{self.total} done, {self.running} {self.running_word}, {self.failed} failed]"

    def ended(self, outcome: CellOutcome, running: int) -> None:
        self.done += outcome.error is None
        self.failed += outcome.error is not None
        self.running = running
        what = "done" if outcome.error is None else f"FAILED: {outcome.error}"
        self._last = self._line()
        print(f"{self._last} {outcome.label}: {what}", flush=True)

    def update(self, running: int) -> None:
        self.running = running
        line = self._line()
        if line != self._last:
            self._last = line
            print(line, flush=True)

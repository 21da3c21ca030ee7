"""Progress: the driver's line for cells running elsewhere (done / running / failed, printed when it changes), and
one bar per cell where a cell runs (`cell_progress`: the cell's phases on that one line, no bar of their own)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TextIO


class Ended(Protocol):
    """What the driver's line reads of a cell's outcome (harness.executors.cells.CellOutcome, which runs cells
    inside `cell_progress`: a protocol here, not an import, keeps the two modules out of a cycle)."""

    label: str
    error: str | None


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

    def ended(self, outcome: Ended, running: int) -> None:
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


# ---------------------------------------------------------------- one bar per cell

# the modules that open their own tqdm bars during a cell (a `tqdm` global each): tamp's engine, lmms-eval's
# request building and postprocessing, the stock wrappers ours build on, and ours. Once the cell's work starts
# (`CellBar.start`, after its plan) their bars become phases of the cell's one bar: those loaded by then at once,
# a wrapper loaded later as the next phase opens (lmms-eval's request building always comes before its bars).
# transformers', datasets' and the Hub's bars (loading and writing weights, building a split) are switched off
# through their own switches for the cell.
BAR_MODULES = ("tamp.engine.capture", "tamp.engine.block_pass", "tamp.engine.sequential", "lmms_eval.api.task",
               "lmms_eval.evaluator", "lmms_eval.models.simple.llava_hf", "lmms_eval.models.simple.qwen2_vl",
               "lmms_eval.models.simple.qwen2_5_vl", "lmms_eval.models.simple.qwen2_audio", "harness.wrappers.common",
               "harness.wrappers.qwen2_5_omni")


class _Swaps:
    """The `tqdm` globals replaced by a stand-in, and how to put them back."""

    def __init__(self, stand_in: type) -> None:
        self.stand_in = stand_in
        self.originals: dict[str, Any] = {}

    def apply(self, names: Iterable[str]) -> None:
        for name in names:
            module = sys.modules.get(name)
            if module is not None and name not in self.originals and hasattr(module, "tqdm"):
                self.originals[name] = module.tqdm
                module.tqdm = self.stand_in

    def restore(self) -> None:
        for name, original in self.originals.items():
            sys.modules[name].tqdm = original
        self.originals.clear()


class CellBar:
    """A cell's one progress bar on stderr: `label: phase` on one line, the phase's steps as its count. Phases
    nest (the blocks of a pass, the matrices of a block): the outermost one counts, the inner ones are named. The
    bar appears with the first phase: a run refused while it is planned prints its one error line and no bar."""

    def __init__(self, label: str, file: TextIO | None = None, disable: bool | None = None) -> None:
        self.label = label
        self._bar_args = {"desc": label, "file": file or sys.stderr, "leave": True, "dynamic_ncols": True,
                          "unit": "step", **({} if disable is None else {"disable": disable})}  # None: TQDM_DISABLE
        self.bar: Any = None
        self._phases: list[list[Any]] = []  # [name, done, total] of each open phase, outermost first
        self._swaps: _Swaps | None = None
        self._switches: list[Callable[[], None]] = []

    def start(self) -> None:
        """The cell's work begins (its plan is done, nothing refused): the libraries' bars go quiet or become
        phases of this one."""
        if self._swaps is not None:
            return
        self._switches = _quiet_libraries()
        self._swaps = _Swaps(phase_steps(self))
        self._swaps.apply(BAR_MODULES)

    def open(self, name: str, total: int | None) -> list[Any]:
        if self._swaps is not None:
            self._swaps.apply(BAR_MODULES)  # a wrapper loaded since the last phase
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, **self._bar_args)
        phase = [name, 0, total]
        self._phases.append(phase)
        self._describe(refresh=len(self._phases) > 1)
        if len(self._phases) == 1:
            self.bar.reset(total=total)
        return phase

    def advance(self, phase: list[Any], n: float = 1) -> None:
        phase[1] += n
        if self._phases and phase is self._phases[0]:
            self.bar.update(n)
        elif phase in self._phases:
            self._describe()

    def close(self, phase: list[Any]) -> None:
        if phase in self._phases:
            self._phases.remove(phase)
            self._describe()

    def _describe(self, refresh: bool = True) -> None:
        inner = [f"{name} {done:g}/{total}" if total else str(name) for name, done, total in self._phases[1:]]
        names = [str(self._phases[0][0]), *inner] if self._phases else []
        if names:
            self.bar.set_description_str(f"{self.label}: {' > '.join(names)}", refresh=refresh)

    def finish(self, how: str) -> None:
        """Everything put back; the bar's last state: the cell's label and how it ended."""
        if self._swaps is not None:
            self._swaps.restore()
            self._swaps = None
        while self._switches:
            self._switches.pop()()
        self._phases.clear()
        if self.bar is None:
            return
        self.bar.set_description_str(f"{self.label}: {how}")
        self.bar.close()


def phase_steps(cell: CellBar) -> type:
    """A stand-in for the `tqdm` class a library calls, that reports to `cell` instead of drawing a bar (the parts
    of tqdm's interface these modules use: an iterable or a total, a description, update, close, a context)."""

    class PhaseSteps:
        def __init__(self, iterable: Iterable[Any] | None = None, desc: str | None = None,
                     total: float | None = None, **_: Any) -> None:
            self.iterable = iterable
            if total is None and iterable is not None and hasattr(iterable, "__len__"):
                total = len(iterable)  # type: ignore[arg-type]
            self.n = 0
            self.disable = False
            self._phase = cell.open(desc or "preparing", total)

        def __iter__(self) -> Iterator[Any]:
            try:
                for item in self.iterable or ():
                    yield item
                    self.update()
            finally:
                self.close()

        def __len__(self) -> int:
            return int(self._phase[2] or 0)

        def update(self, n: float = 1) -> None:
            self.n += n
            cell.advance(self._phase, n)

        def close(self) -> None:
            cell.close(self._phase)

        def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
            self._phase[0] = desc or self._phase[0]

        set_description_str = set_description

        def set_postfix(self, *args: Any, **kwargs: Any) -> None:
            """Postfixes (a loss, a rate) stay off the cell's one line."""

        set_postfix_str = set_postfix

        def refresh(self, *args: Any, **kwargs: Any) -> None:
            """Nothing of its own to draw."""

        def __enter__(self) -> PhaseSteps:
            return self

        def __exit__(self, *exc: object) -> None:
            self.close()

        @staticmethod
        def write(text: str, *args: Any, **kwargs: Any) -> None:
            print(text, file=sys.stderr)

    return PhaseSteps


@contextmanager
def cell_progress(label: str, file: TextIO | None = None, disable: bool | None = None) -> Iterator[CellBar]:
    """One bar for the cell within the block: from `start()` on, every bar the bar modules open is a phase of it
    and the libraries whose bars have a switch are quiet. Everything is put back afterwards."""
    cell, how = CellBar(label, file, disable), "stopped"
    try:
        yield cell
        how = "finished"
    finally:
        cell.finish(how)


def _quiet_libraries() -> list[Callable[[], None]]:
    """transformers', datasets' and the Hub's progress bars off; the calls that turn back on those that were on."""
    restore: list[Callable[[], None]] = []
    from transformers.utils import logging as hf_logging

    if hf_logging.is_progress_bar_enabled():
        hf_logging.disable_progress_bar()
        restore.append(hf_logging.enable_progress_bar)
    import datasets
    import huggingface_hub.utils as hub_utils

    if not datasets.are_progress_bars_disabled():
        datasets.disable_progress_bars()
        restore.append(datasets.enable_progress_bars)
    if not hub_utils.are_progress_bars_disabled():
        hub_utils.disable_progress_bars()
        restore.append(hub_utils.enable_progress_bars)
    return restore

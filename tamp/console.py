"""How both command-line tools end: one `error: ...` line and an exit code, never a traceback for the user's input.

`tamp` and `harness` run their commands through `run_command`, so a user-facing error, Ctrl-C, SIGTERM (what
SLURM, Ray and `kill` send first) and a reader that closes the pipe early (`harness table | head`) end the same
way in both.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C
TERMINATED = 128 + signal.SIGTERM  # 143: what a shell reports for a command ended by SIGTERM, told apart from Ctrl-C


class Terminated(BaseException):
    """SIGTERM arrived. A BaseException, as KeyboardInterrupt is: no `except Exception` swallows it, and every
    `finally` / `except BaseException` on the way out (the atomic writers' temp removal) runs."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    # a second SIGTERM (a scheduler repeating itself) must not cut short the cleanup the first one started
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Within the block SIGTERM raises Terminated (only the main thread may set handlers); restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_command(command: Callable[[], int], user_errors: tuple[type[Exception], ...], on_interrupt: str) -> int:
    """Run `command`; a user error -> `error: MESSAGE` and its `exit_code` (default 2); Ctrl-C -> one line, 130;
    SIGTERM -> one line, 143 (after the same unwinding as Ctrl-C, so no temp output is left).

    ``on_interrupt`` says what an interrupted run leaves behind (e.g. that nothing half-written remains).
    """
    try:
        with _sigterm_raises():
            code = command()
            sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at interpreter exit
        return code
    except user_errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:
        print(f"error: interrupted (Ctrl-C); {on_interrupt}", file=sys.stderr)
        return INTERRUPTED
    except Terminated:
        print(f"error: terminated (SIGTERM); {on_interrupt}", file=sys.stderr)
        return TERMINATED
    except BrokenPipeError:
        # the reader (`| head`) has what it wanted: stop quietly, and keep Python from
        # failing again when it flushes stdout at exit (the recipe of Python's signal docs)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1

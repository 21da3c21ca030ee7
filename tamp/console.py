"""How both command-line tools end: one `error: ...` line and an exit code, never a traceback for the user's input.

`tamp` and `harness` run their commands through `run_command`, so a user-facing error, Ctrl-C and a reader that
closes the pipe early (`harness table | head`) end the same way in both.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C


def run_command(command: Callable[[], int], user_errors: tuple[type[Exception], ...], on_interrupt: str) -> int:
    """Run `command`; a user error -> `error: MESSAGE` and its `exit_code` (default 2); Ctrl-C -> one line, 130.

    ``on_interrupt`` says what an interrupted run leaves behind (e.g. that nothing half-written remains).
    """
    try:
        code = command()
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at interpreter exit
        return code
    except user_errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:
        print(f"error: interrupted (Ctrl-C); {on_interrupt}", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:
        # the reader (`| head`) has what it wanted: stop quietly, and keep Python from
        # failing again when it flushes stdout at exit (the recipe of Python's signal docs)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1

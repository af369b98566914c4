"""Ctrl-C and the termination signals: each ends pss-dup through its cleanup paths, never in the middle of one.

By default SIGTERM and SIGHUP kill Python outright: a `timeout` or a closed terminal during a dump left the VA
clone as a zombie in the process being dumped. The command line installs `install()`'s handler instead, which turns
SIGINT, SIGTERM, SIGHUP and SIGPIPE into an exception (KeyboardInterrupt, or `Terminated` for the others), so that
every `finally` that restores a process runs. Code that must not be cut short (letting go of a stopped thread,
ending a clone) runs under `held()`: a signal that arrives there is remembered and raised once the outermost
`held()` ends. Library users who keep Python's own handlers get KeyboardInterrupt as before.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType, TracebackType
from typing import Final

#: What ends pss-dup through its cleanup paths. SIGPIPE is ignored by Python at start-up (writes get EPIPE);
#: a SIGPIPE sent on purpose (`kill -PIPE`, `timeout -s PIPE`) is a request to stop like the others.
if sys.platform == "win32":  # Windows has no SIGHUP or SIGPIPE
    HANDLED: Final[tuple[int, ...]] = (signal.SIGINT, signal.SIGTERM)
else:
    HANDLED: Final[tuple[int, ...]] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE)


class Terminated(KeyboardInterrupt):
    """SIGTERM, SIGHUP or SIGPIPE, raised like Ctrl-C so that the same cleanup runs; exit status 128 + signo."""

    def __init__(self, signo: int) -> None:
        super().__init__(signal.Signals(signo).name)
        self.signo = signo


_depth = 0
_pending: int | None = None


def _handler(signo: int, frame: FrameType | None) -> None:
    global _pending
    if _depth:
        if _pending is None:
            _pending = signo
        return
    raise _exception(signo)


def _exception(signo: int) -> KeyboardInterrupt:
    return KeyboardInterrupt() if signo == signal.SIGINT else Terminated(signo)


def install() -> None:
    """Route HANDLED signals through pss-dup's handler (the command line does this once, at start)."""
    for signo in HANDLED:
        signal.signal(signo, _handler)


class held:
    """A region no handled signal cuts short: one that arrives is raised when the outermost region ends (unless
    that region already ends with an exception of its own, which then goes up instead)."""

    def __enter__(self) -> None:
        global _depth
        _depth += 1

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        global _depth, _pending
        _depth -= 1
        if _depth == 0 and _pending is not None:
            signo, _pending = _pending, None
            if exc_type is None:
                raise _exception(signo)

"""The library API behind `pss_cli`: capture, duplicate, free and open process snapshots.

Nothing here is platform-specific; each call goes to the backend chosen once for this machine. A process that
was handed a snapshot reads it with `open_snapshot(handle)` and gets the same model objects the CLI reports.
"""

from __future__ import annotations

from pss_cli.errors import ExitCode, PssError, UsageError
from pss_cli.model import DEFAULT_CAPTURE, CaptureFlags, DuplicateResult, FreeResult, Snapshot, timeout_problem
from pss_cli.platform import LocalSnapshot, backend

__all__ = [
    "DEFAULT_CAPTURE",
    "CaptureFlags",
    "DuplicateResult",
    "ExitCode",
    "FreeResult",
    "LocalSnapshot",
    "PssError",
    "Snapshot",
    "capture",
    "capture_snapshot",
    "duplicate",
    "free",
    "inspect",
    "open_snapshot",
]


def checked(timeout: float) -> float:
    """`timeout`, or UsageError: a NaN deadline never passes, and every wait on a process would hang on it."""
    problem = timeout_problem(timeout)
    if problem is not None:
        raise UsageError(problem)
    return timeout


def capture_snapshot(pid: int, flags: CaptureFlags = DEFAULT_CAPTURE, *, timeout: float = 10.0) -> LocalSnapshot:
    """Capture `pid` and keep the snapshot's OS handle, to duplicate it; close it when done (or use `with`)."""
    return backend().capture(pid, flags, timeout=checked(timeout))


def capture(pid: int, flags: CaptureFlags = DEFAULT_CAPTURE, *, timeout: float = 10.0) -> Snapshot:
    """Capture `pid` and return the model only."""
    local = capture_snapshot(pid, flags, timeout=timeout)
    try:
        return local.model
    finally:
        local.close()


def duplicate(
    snapshot: LocalSnapshot,
    source_pid: int,
    target_pid: int,
    *,
    inherit: bool = False,
    force: bool = False,
    timeout: float = 10.0,
) -> DuplicateResult:
    """Give `target_pid` its own handle to a snapshot this process holds (PssDuplicateSnapshot)."""
    return backend().duplicate(
        snapshot,
        source_pid,
        None,
        target_pid,
        close_source=False,
        inherit=inherit,
        dry_run=False,
        force=force,
        timeout=checked(timeout),
    )


def free(pid: int, handle: int, *, force: bool = False, timeout: float = 10.0) -> FreeResult:
    """Close the snapshot handle that process `pid` holds; any handle that is not a pss-dup snapshot is refused."""
    return backend().free(pid, handle, dry_run=False, force=force, timeout=checked(timeout))


def inspect(pid: int, handle: int, *, timeout: float = 10.0) -> Snapshot:
    """Read the snapshot that process `pid` holds as `handle`."""
    return backend().inspect(pid, handle, timeout=checked(timeout))


def open_snapshot(handle: int) -> Snapshot:
    """The receiver side: read a snapshot this process was handed (an fd on Linux, an HPSS on Windows)."""
    return backend().open_snapshot(handle)

"""The library API behind `pss_cli`: capture, duplicate, free, inspect and dump process snapshots, and find processes.

This is the one interface the CLI uses (pss_cli/cli calls nothing else below it), as psutil's command-line users
and its own scripts share one public module: whatever a command can do, a script can do with these functions, and
the per-platform Backend Protocol behind them (pss_cli.platform) stays free to change. Nothing here is
platform-specific; each call goes to the backend chosen once for this machine. A process that was handed a
snapshot reads it with `open_snapshot(handle)` and gets the same model objects the CLI reports.

Heavy modules (psutil, the backend's injection and core-file code, doctor) load on the first call that needs
them, so that importing this module costs little.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from pss_cli.errors import ExitCode, PssError, UsageError
from pss_cli.model import (
    DEFAULT_CAPTURE,
    KERNEL_DUMP,
    CaptureFlags,
    CapturePlan,
    DumpOutput,
    DumpSelection,
    DuplicateResult,
    FreeResult,
    ProcessLocation,
    Snapshot,
    selection_problem,
    timeout_problem,
)
from pss_cli.platform import LiveProcess, LocalSnapshot, ProgressCallback, backend

if TYPE_CHECKING:
    from pss_cli.doctor import Check
    from pss_cli.lookup import ProcessRow
    from pss_cli.watch import Action, LimitSettings, Triggers
    from pss_cli.watcher import Reporter, Watcher

__all__ = [
    "DEFAULT_CAPTURE",
    "KERNEL_DUMP",
    "CaptureFlags",
    "CapturePlan",
    "DumpSelection",
    "DuplicateResult",
    "ExitCode",
    "FreeResult",
    "LiveProcess",
    "LocalSnapshot",
    "PssError",
    "Snapshot",
    "capture",
    "capture_snapshot",
    "check_host",
    "dump",
    "dump_held",
    "duplicate",
    "duplicate_held",
    "enable_debug_privilege",
    "free",
    "handle_size",
    "held_snapshots",
    "host_exit_code",
    "inspect",
    "list_processes",
    "live_processes",
    "locate",
    "named_snapshots",
    "open_snapshot",
    "path_in_root",
    "plan_capture",
    "process_name",
    "resolve",
]


def checked(timeout: float) -> float:
    """`timeout`, or UsageError: a NaN deadline never passes, and every wait on a process would hang on it."""
    problem = timeout_problem(timeout)
    if problem is not None:
        raise UsageError(problem)
    return timeout


# ---- snapshots --------------------------------------------------------------------------------------------------


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


def plan_capture(pid: int, flags: CaptureFlags = DEFAULT_CAPTURE) -> CapturePlan:
    """What `capture` would do, after every check it can make without stopping `pid`: refused the same way,
    nothing stopped, traced or changed. It stands for the snapshot in a dry run of `duplicate`."""
    return backend().plan_capture(pid, flags)


def duplicate(
    snapshot: LocalSnapshot | CapturePlan,
    source_pid: int,
    target_pid: int,
    *,
    inherit: bool = False,
    force: bool = False,
    dry_run: bool = False,
    timeout: float = 10.0,
) -> DuplicateResult:
    """Give `target_pid` its own handle to a snapshot this process holds (PssDuplicateSnapshot).

    With `dry_run` (and a snapshot, or a plan_capture for one not taken yet), nothing is stopped or changed: the
    checks the real call makes before it stops anything are made, and what it would do is listed.
    """
    return backend().duplicate(
        snapshot,
        source_pid,
        None,
        target_pid,
        close_source=False,
        inherit=inherit,
        dry_run=dry_run,
        force=force,
        timeout=checked(timeout),
    )


def duplicate_held(
    source_pid: int,
    source_handle: int,
    target_pid: int,
    *,
    close_source: bool = False,
    inherit: bool = False,
    force: bool = False,
    dry_run: bool = False,
    timeout: float = 10.0,
) -> DuplicateResult:
    """Give `target_pid` its own handle to the snapshot `source_pid` holds as `source_handle`, which is checked first.

    `close_source` then closes it in `source_pid` (PSS_DUPLICATE_CLOSE_SOURCE).
    """
    return backend().duplicate(
        None,
        source_pid,
        source_handle,
        target_pid,
        close_source=close_source,
        inherit=inherit,
        dry_run=dry_run,
        force=force,
        timeout=checked(timeout),
    )


def free(pid: int, handle: int, *, force: bool = False, dry_run: bool = False, timeout: float = 10.0) -> FreeResult:
    """Close the snapshot handle that process `pid` holds; any handle that is not a pss-dup snapshot is refused."""
    return backend().free(pid, handle, dry_run=dry_run, force=force, timeout=checked(timeout))


def inspect(pid: int, handle: int, *, timeout: float = 10.0) -> Snapshot:
    """Read the snapshot that process `pid` holds as `handle`."""
    return backend().inspect(pid, handle, timeout=checked(timeout))


def open_snapshot(handle: int) -> Snapshot:
    """The receiver side: read a snapshot this process was handed (an fd on Linux, an HPSS on Windows)."""
    return backend().open_snapshot(handle)


def dump(
    pid: int,
    path: str | os.PathLike[str] | int,
    *,
    force: bool = False,
    timeout: float = 10.0,
    clone_method: str | None = None,
    progress: ProgressCallback | None = None,
    compress: str | None = None,
    written: Callable[[DumpOutput], None] | None = None,
    selection: DumpSelection = KERNEL_DUMP,
    into_container: bool = False,
) -> Snapshot:
    """Write a dump of `pid` that a debugger opens (Linux: an ELF core for gdb; Windows: a minidump).

    The process is stopped only while a copy-on-write clone is made ("copy": while its memory is copied; the
    default for a mini core). The file is created mode 0600 and an existing one is replaced only with `force`; a
    failed dump leaves none. Zero pages are holes of the file. `path` an int is an open fd (a pipe, a socket) the
    core is streamed into, front to back; `compress` ("zstd") writes one compressed frame instead, into the file or
    fd. `written` is told the sizes written and the time taken. `selection` says what memory goes in: by default
    what the kernel would dump (the process's coredump_filter and MADV_DONTDUMP), or a mask, everything, or a mini
    core (Linux). With `into_container`, `path` is a path inside the process's own root directory (its container's
    filesystem, resolved there so that no symlink in it leads out) and the file belongs to the process's user and
    group; a stream (`path` an fd) has no place there and is refused.
    """
    problem = selection_problem(selection)
    if problem is not None:
        raise UsageError(problem)
    if into_container and isinstance(path, int):
        raise UsageError("--into-container writes a file inside the container, not a stream")
    return backend().dump(
        pid,
        path,
        force=force,
        timeout=checked(timeout),
        clone_method=clone_method,
        progress=progress,
        compress=compress,
        written=written,
        selection=selection,
        into_container=into_container,
    )


def container_label(pid: int) -> str | None:
    """What a --name template's {container} shows for `pid` (dump and watch): its container's short ID (a
    machine's name), its runtime where only the environment names one, None outside a container."""
    found = backend().container_of(pid)
    if found is None:
        return None
    return found.short_id if found.id is not None else found.runtime


def path_in_root(pid: int, path: str) -> str:
    """Where `path` in the root directory of `pid` (its container's filesystem) is, seen from here (Linux)."""
    return backend().path_in_root(pid, path)


def dump_held(
    pid: int, handle: int, path: str | os.PathLike[str], *, force: bool = False, timeout: float = 10.0
) -> Snapshot:
    """Write out the snapshot that process `pid` holds as `handle`, as `dump` writes its files; nothing is stopped."""
    return backend().dump_held(pid, handle, path, force=force, timeout=checked(timeout))


def enable_debug_privilege() -> bool:
    """Windows: enable SeDebugPrivilege for this process and say whether it could; elsewhere NotSupported."""
    return backend().enable_debug_privilege()


# ---- finding processes --------------------------------------------------------------------------------------


def resolve(target: str, *, all_matches: bool = False) -> list[int]:
    """The PIDs a PID, a process name or `container:ID[:PID]` stands for; a name several processes share is
    AmbiguousTarget unless `all_matches`; `container:ID` is the container's main process (every one of its
    processes with `all_matches`), `container:ID:PID` the process with PID in its PID namespace."""
    from pss_cli import lookup

    return lookup.resolve(target, all_matches=all_matches)


def locate(pid: int) -> ProcessLocation | None:
    """Where `pid` lives: its PIDs in nested PID namespaces, namespaces, cgroup and container (None on Windows,
    and once it is gone)."""
    return backend().locate(pid)


def process_exists(pid: int) -> bool:
    """Whether a process with this PID exists (and is one: not a thread ID)."""
    return backend().process_exists(pid)


def process_name(pid: int) -> str:
    """The name of process `pid` ("process" once it is gone)."""
    from pss_cli import lookup

    return lookup.process_name(pid)


def list_processes(
    pattern: str | None = None, user: str | None = None, parent: int | None = None, container: str | None = None
) -> list[ProcessRow]:
    """The processes `pss-dup ps` shows: a name glob, a user (name or uid), a parent PID and a container ID prefix
    filter them."""
    from pss_cli import lookup

    return lookup.list_processes(pattern, user, parent, container)


def live_processes() -> Iterator[LiveProcess]:
    """(pid, name) of every process pss-dup could act on, quickly and by looking only: what shell completion offers."""
    return backend().live_processes()


def held_snapshots(pid: int) -> tuple[int, ...] | None:
    """The handles `pid` holds that are pss-dup snapshots, checked as `free` checks them; None where that cannot be
    told from outside."""
    return backend().held_snapshots(pid)


def named_snapshots(pid: int) -> tuple[int, ...] | None:
    """The handles `pid` holds under a pss-dup snapshot's name, by looking only (quick, unchecked: what shell
    completion offers); None where that cannot be told from outside."""
    return backend().named_snapshots(pid)


def handle_size(pid: int, handle: int) -> int | None:
    """The size of what `handle` of `pid` refers to, looked up without opening it; None when unknown."""
    return backend().handle_size(pid, handle)


# ---- the host ---------------------------------------------------------------------------------------------------


def check_host(timeout: float = 10.0, report: Callable[[Check], None] | None = None) -> list[Check]:
    """`pss-dup doctor`: what this host supports, proven with a round trip between two processes of its own.

    `report` is called with each check as soon as it is known.
    """
    from pss_cli.doctor import run_doctor

    return run_doctor(checked(timeout), report)


def host_exit_code(checks: list[Check]) -> ExitCode:
    """The exit code a doctor run stands for: 0, or what the worst failure needs (NOT_SUPPORTED, ACCESS_DENIED)."""
    from pss_cli.doctor import exit_code

    return exit_code(checks)


def watch(
    targets: list[str],
    *,
    all_matches: bool,
    wait: bool,
    triggers: Triggers,
    limits: LimitSettings,
    action: Action,
    reporter: Reporter,
    verbose: bool = False,
    timeout: float = 10.0,
) -> Watcher:
    """A `pss-dup watch` run, ready to `run()`: samples the targets, fires the triggers, takes the action, and tells
    `reporter` every event (see docs/watch-events.md)."""
    from pss_cli.watcher import Watcher

    return Watcher(targets, all_matches, wait, triggers, limits, action, reporter, verbose, checked(timeout))

"""The one interface every platform backend implements, and the choice of backend, made once.

Only the library API (pss_cli.api, and pss_cli.lookup beneath it) calls `backend()`; the CLI calls the API. Neither
branches on the platform. Backends are imported lazily, and keep their own heavy modules (injection, the ELF core
writer) for the operations that need them, so that a command imports only what it uses.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from pss_cli.errors import NotSupported
from pss_cli.model import (
    KERNEL_DUMP,
    AttachSpec,
    CaptureFlags,
    CapturePlan,
    Container,
    DumpOutput,
    DumpSelection,
    DuplicateResult,
    FreeResult,
    ListedProcess,
    ProcessLocation,
    ResourceSample,
    Snapshot,
    WatchStop,
)
from pss_cli.record import record

#: Called while memory is copied: (bytes done, bytes in total). Plain numbers: the CLI draws the progress bar.
ProgressCallback = Callable[[int, int], None]


@record
class LiveProcess:
    """A process pss-dup could act on, as shell completion offers it: its PID and its short name (Linux `comm`)."""

    pid: int
    name: str


class LocalSnapshot(Protocol):
    """A snapshot held by this process: the model, and the OS handle behind it (a sealed memfd, or an HPSS)."""

    @property
    def model(self) -> Snapshot: ...

    def handle(self) -> int:
        """The OS handle; on Linux the sealed memfd is built on first use."""
        ...

    def close(self) -> None: ...


class WatchedProcess(Protocol):
    """A process `watch` samples: opened once, read without stopping or tracing it."""

    def sample(self, *, fds: bool, thread_states: bool) -> ResourceSample:
        """ProcessGone once it has exited."""
        ...

    def wait_places(self) -> dict[int, dict[str, Any]]:
        """Where each thread waits (syscall, wchan), for a hang report; empty when that cannot be read."""
        ...

    def stops(self) -> list[WatchStop]:
        """Threads an attached watch (--on-signal/--on-crash/--on-exit) newly holds in a stop, each once; every one
        is released with `release` once acted on."""
        ...

    def release(self, stop: WatchStop) -> None: ...

    def signal_counts(self) -> dict[int, int]:
        """Signals an attached watch passed on, by number."""
        ...

    def exit_status(self) -> tuple[int | None, int | None] | None:
        """(exit code, None) or (None, the signal that ended it), where the watcher could learn how the process
        ended (attached); else None."""
        ...

    def close(self) -> None: ...


class Backend(Protocol):
    """What a platform provides. Every method restores every process it touched before it returns or raises."""

    name: str

    def capture(self, pid: int, flags: CaptureFlags, *, timeout: float) -> LocalSnapshot:
        """PssCaptureSnapshot."""
        ...

    def plan_capture(self, pid: int, flags: CaptureFlags) -> CapturePlan:
        """What `capture` would do, after every check it makes that needs no stop: refused the same way, nothing
        stopped, traced or changed (the dry run of `dup`)."""
        ...

    def duplicate(
        self,
        snapshot: LocalSnapshot | CapturePlan | None,
        source_pid: int,
        source_handle: int | None,
        target_pid: int,
        *,
        close_source: bool,
        inherit: bool,
        dry_run: bool,
        force: bool,
        timeout: float,
    ) -> DuplicateResult:
        """PssDuplicateSnapshot: a snapshot we hold (`snapshot`), or one that source_pid holds as source_handle.

        A CapturePlan stands for a snapshot not taken yet, in a dry run only."""
        ...

    def free(self, pid: int, handle: int, *, dry_run: bool, force: bool, timeout: float) -> FreeResult:
        """PssFreeSnapshot on a snapshot that another process holds; anything that is not one is refused."""
        ...

    def inspect(self, pid: int, handle: int, *, timeout: float) -> Snapshot:
        """Read a snapshot that another process holds."""
        ...

    def process_exists(self, pid: int) -> bool:
        """Whether `pid` is a process now (a zombie counts; a thread's ID does not). Reads one small file at most."""
        ...

    def live_processes(self) -> Iterator[LiveProcess]:
        """Processes pss-dup could act on, this one excluded: no kernel threads, no zombies. Never raises.

        Shell completion calls this on every TAB: no command line is read, and nothing slower than a name.
        """
        ...

    def list_processes(self, *, kernel_threads: bool = False) -> Iterator[ListedProcess]:
        """Every process, this one excluded, by PID, with psutil's values (what `ps` shows, what a TARGET's name is
        matched against); one that exits meanwhile is left out. Kernel threads have no user space to capture: they
        come only if asked (Windows: the System Idle Process, PID 0)."""
        ...

    def describe_process(self, pid: int) -> ListedProcess | None:
        """`pid` as list_processes reads it; None once it is gone."""
        ...

    def locate(self, pid: int) -> ProcessLocation | None:
        """Where `pid` lives (its PIDs in nested PID namespaces, namespaces, cgroup, container), read without
        stopping it; None once it is gone, or where the platform has no such thing (Windows)."""
        ...

    def container_of(self, pid: int) -> Container | None:
        """Only the container of `pid`, as locate would say it, read more cheaply (`ps` asks it of every process)."""
        ...

    def path_in_root(self, pid: int, path: str) -> str:
        """Where `path` in the root directory of `pid` (its container's filesystem) is, seen from here: what
        `dump --into-container` reports. NotSupported where there is no such view (Windows)."""
        ...

    def held_snapshots(self, pid: int) -> tuple[int, ...] | None:
        """The handles `pid` holds that are pss-dup snapshots, checked as `free` checks them; None where that
        cannot be told from outside (an fd table we may not read; Windows, where an HPSS is an address)."""
        ...

    def named_snapshots(self, pid: int) -> tuple[int, ...] | None:
        """The handles `pid` holds under a pss-dup snapshot's name, by looking only (nothing is opened, nothing
        checked: quick enough for every TAB of shell completion); None where that cannot be told from outside."""
        ...

    def handle_size(self, pid: int, handle: int) -> int | None:
        """The size of what `handle` of `pid` refers to, by looking only; None when it cannot be told."""
        ...

    def enable_debug_privilege(self) -> bool:
        """Windows: enable SeDebugPrivilege for this run and say whether it could; elsewhere NotSupported."""
        ...

    def open_snapshot(self, handle: int) -> Snapshot:
        """Read a snapshot that this process holds (the receiver side)."""
        ...

    def dump(
        self,
        pid: int,
        path: str | os.PathLike[str] | int,
        *,
        force: bool,
        timeout: float,
        clone_method: str | None = None,
        progress: ProgressCallback | None = None,
        compress: str | None = None,
        written: Callable[[DumpOutput], None] | None = None,
        selection: DumpSelection = KERNEL_DUMP,
        into_container: bool = False,
    ) -> Snapshot:
        """Write a dump of `pid` (Linux: an ELF core; Windows: a minidump) from a VA-clone snapshot.

        The file is created mode 0600 and never replaces an existing one unless `force`; a failed dump leaves none.
        `clone_method` "copy" copies memory while the process is frozen instead of making a clone (Linux only);
        None lets the backend choose. `selection` says what memory the dump takes (Linux only, beyond the default).
        `into_container`: `path` is a path in the process's own root directory (its container's filesystem),
        resolved inside it, and the file belongs to the process's user and group (Linux only).
        `path` an int is an fd the dump is streamed into; `compress` ("zstd") compresses the file or stream (Linux
        only, as streams are); `written` is told what went out.
        """
        ...

    def watch(
        self, pid: int, attach: AttachSpec | None = None, wake: Callable[[], None] | None = None
    ) -> WatchedProcess:
        """Open `pid` for sampling by `pss-dup watch` (NoSuchProcess if it does not exist); with `attach`, also keep
        it seized for those triggers, calling `wake` (from another thread) when a stop is held."""
        ...

    def dump_held(
        self, pid: int, handle: int, path: str | os.PathLike[str], *, force: bool, timeout: float
    ) -> Snapshot:
        """Write out the snapshot that process `pid` already holds as `handle`, as `dump` writes its files."""
        ...


@functools.cache
def backend() -> Backend:
    """The backend for this machine; NotSupported elsewhere."""
    if sys.platform == "linux":
        from pss_cli.platform.linux.backend import LinuxBackend

        return LinuxBackend()
    if sys.platform == "win32":
        from pss_cli.platform.windows.backend import WindowsBackend

        return WindowsBackend()
    import platform

    raise NotSupported(f"pss-dup does not support {sys.platform} ({platform.machine()}): it runs on Linux and Windows")

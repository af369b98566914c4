"""`pss-dup dump TARGET [FILE]`: a core file (Linux) or minidump (Windows) written from a VA-clone snapshot.

As in ProcDump the file is positional and `-o` stays the report format. The process is stopped only while the clone
is made; its memory is copied afterwards, with a progress bar on stderr when a person is watching.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import click

from pss_cli.cli.common import Ui, output_options
from pss_cli.cli.params import PID, TARGET, SnapshotHandle
from pss_cli.errors import UsageError
from pss_cli.model import CLONE_METHODS

if TYPE_CHECKING:
    from pss_cli.model import Snapshot

#: Characters kept from a process name in the default file name; anything else becomes "_".
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def default_name(name: str, pid: int, when: float, suffix: str) -> str:
    """NAME_PID_YYMMDD_HHMMSS.core (local time), with the name reduced to characters safe in any shell."""
    safe = _UNSAFE.sub("_", name).strip("._") or "process"
    return f"{safe[:64]}_{pid}_{time.strftime('%y%m%d_%H%M%S', time.localtime(when))}{suffix}"


def dump_suffix() -> str:
    return ".dmp" if os.name == "nt" else ".core"


@click.command()
@click.argument("target", type=TARGET, required=False)
@click.argument("file", type=click.Path(dir_okay=False, writable=True), required=False)
@click.option("--from", "holder", type=PID, metavar="PID",
              help="Write out the snapshot that PID already holds (see --handle) instead of capturing.")  # fmt: skip
@click.option("--handle", "handle", type=SnapshotHandle("holder"), metavar="H",
              help="The snapshot handle (fd) that the --from process holds.")  # fmt: skip
@click.option("--clone-method", type=click.Choice(CLONE_METHODS), default="clone", show_default=True,
              help="clone: stop TARGET only while a copy-on-write clone is made and copy its memory while TARGET "
                   "runs. copy: copy the memory while TARGET stays frozen (where injecting is refused).")  # fmt: skip
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
@output_options
def dump(
    ui: Ui,
    target: str | None,
    file: str | None,
    holder: int | None,
    handle: int | None,
    clone_method: str,
    force: bool,
) -> int:
    """Write a core file of TARGET (a PID or a process name) that gdb can open.

    FILE defaults to NAME_PID_YYMMDD_HHMMSS.core in the current directory; it is created with mode 0600 and an
    existing file is never replaced without --force. With --from PID --handle H, the snapshot that PID already
    holds is written out instead (FILE is then the only argument).
    """
    from pss_cli.platform import backend

    impl = backend()
    if holder is not None or handle is not None:
        if holder is None or handle is None:
            raise UsageError("--from and --handle go together: the process that holds the snapshot, and its handle")
        if file is not None:
            raise UsageError("with --from there is no TARGET: give only FILE")
        file = target
        started = time.perf_counter()
        path = file or _default_for_held(impl, holder, handle, ui)
        snap = impl.dump_held(holder, handle, path, force=force, timeout=ui.timeout)
        report(ui, snap, path, holder, handle, time.perf_counter() - started)
        return 0
    if target is None:
        raise UsageError("give TARGET (a PID or a process name), or --from PID --handle H")
    from pss_cli.lookup import resolve

    (pid,) = resolve(target)
    path = file or default_name(_process_name(pid), pid, time.time(), dump_suffix())
    started = time.perf_counter()
    with progress_bar(ui) as progress:
        snap = impl.dump(pid, path, force=force, timeout=ui.timeout, clone_method=clone_method, progress=progress)
    report(ui, snap, path, None, None, time.perf_counter() - started)
    return 0


def _process_name(pid: int) -> str:
    import psutil

    try:
        return psutil.Process(pid).name()
    except psutil.Error:
        return "process"


def _default_for_held(impl: Any, holder: int, handle: int, ui: Ui) -> str:
    snap = impl.inspect(holder, handle, timeout=ui.timeout)
    return default_name(snap.process.name, snap.process.pid, snap.captured_at, dump_suffix())


@contextlib.contextmanager
def progress_bar(ui: Ui) -> Iterator[Callable[[int, int], None] | None]:
    """A rich progress bar on stderr while memory is copied, only for a person watching (ui.interactive)."""
    if not ui.interactive:
        yield None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("copying memory"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=ui.err, transient=True) as bar:
        task = bar.add_task("memory", total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def report(ui: Ui, snap: Snapshot, path: str, holder: int | None, handle: int | None, seconds: float) -> None:
    """One record: the file, how much memory it holds and how it got it, and how long the process was stopped."""
    try:
        size: int | None = os.stat(path).st_size
    except OSError:
        size = None
    if ui.machine:
        from pss_cli.render.jsonout import emit
        from pss_cli.serial import to_dict

        memory = snap.memory
        record = {
            "status": "ok",
            "pid": snap.process.pid,
            "file": os.path.abspath(path),
            "size": size,
            "source": {"pid": holder, "handle": handle} if holder is not None else None,
            "memory": to_dict(memory) if memory is not None else None,
            "timings": {
                "total_ms": seconds * 1000,
                "capture_ms": snap.performance.capture_ms,
                "stopped_ms": snap.performance.stopped_ms,
                "wait_ms": snap.performance.wait_ms,
                "reap_stopped_ms": memory.reap_stopped_ms if memory is not None else None,
                "va_clone_ms": snap.performance.va_clone_ms,
            },
            "warnings": list(snap.warnings),
            "snapshot": to_dict(snap),
        }
        emit(ui, [record])
        return
    from rich.table import Table
    from rich.text import Text

    from pss_cli.render.tables import ms, summary
    from pss_cli.render.tables import size as size_text

    if not ui.quiet:
        ui.out.print(summary(snap))
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    grid.add_row("file", Text(os.path.abspath(path)))
    grid.add_row("size", size_text(size))
    memory = snap.memory
    if memory is not None:
        how = {"va-clone": "VA clone (copy-on-write clone, copied while the process ran)",
               "frozen-copy": "copied while the process was frozen"}.get(memory.method, memory.method)  # fmt: skip
        grid.add_row("memory", Text.assemble(size_text(memory.bytes_captured), f" in {memory.regions} regions"))
        grid.add_row("method", Text(how))
        if memory.copy_ms:
            rate = memory.bytes_captured / (memory.copy_ms / 1000) / 1e9
            grid.add_row("copied in", f"{memory.copy_ms / 1000:.2f} s ({rate:.2f} GB/s)")
        if memory.failed_pages:
            grid.add_row("unreadable pages", f"{memory.failed_pages} (zero in the core)")
    if holder is not None:
        grid.add_row("from", Text(f"fd {handle} of process {holder}"))
    else:
        reap = snap.memory.reap_stopped_ms if snap.memory is not None else None
        stopped = ms(snap.performance.stopped_ms) + (f" (and {ms(reap)} to reap the clone)" if reap else "")
        if snap.performance.wait_ms:
            grid.add_row("waited first", f"{ms(snap.performance.wait_ms)} for a thread in D state (nothing stopped)")
        grid.add_row("process stopped", stopped)
        if snap.performance.va_clone_ms is not None:
            grid.add_row("clone made in", ms(snap.performance.va_clone_ms))
    grid.add_row("total", f"{seconds:.2f} s")
    ui.out.print(grid)
    for warning in snap.warnings:
        ui.warn(warning)

"""`pss-dup dump TARGET [FILE]`: a core file (Linux) or minidump (Windows) written from a VA-clone snapshot.

As in ProcDump the file is positional and `-o` stays the report format. The process is stopped only while the clone
is made; its memory is copied afterwards, with a progress bar on stderr when a person is watching.
"""

from __future__ import annotations

import os
import re
import time

import click

from pss_cli.cli.common import memory_options, output_options
from pss_cli.cli.params import PID, TARGET, SnapshotHandle
from pss_cli.errors import UsageError
from pss_cli.model import CLONE_METHODS, DumpSelection
from pss_cli.render.console import Ui

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
@click.option("--clone-method", type=click.Choice(CLONE_METHODS), default=None,
              help="clone: stop TARGET only while a copy-on-write clone is made and copy its memory while TARGET "
                   "runs (the default). copy: copy the memory while TARGET stays frozen (where injecting is refused; "
                   "the default with --mini, whose few pages take less than a clone).")  # fmt: skip
@click.option("--into-container", is_flag=True,
              help="Write FILE into TARGET's own filesystem (its container's: /proc/PID/root), owned by TARGET's "
                   "user and group; FILE is a path there (default: /tmp/NAME_PID_YYMMDD_HHMMSS.core).")  # fmt: skip
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
@memory_options
@output_options
def dump(
    ui: Ui,
    target: str | None,
    file: str | None,
    holder: int | None,
    handle: int | None,
    clone_method: str | None,
    into_container: bool,
    selection: DumpSelection | None,
    force: bool,
) -> int:
    """Write a core file of TARGET (a PID, a process name, or container:ID) that gdb can open.

    FILE defaults to NAME_PID_YYMMDD_HHMMSS.core in the current directory; it is created with mode 0600 and an
    existing file is never replaced without --force. With --into-container it goes into TARGET's own filesystem
    instead (FILE a path there, resolved inside it: no symlink there leads out), owned by TARGET's user.
    With --from PID --handle H, the snapshot that PID already holds is written out instead (FILE is then the only
    argument).

    By default the core holds what the kernel would dump for TARGET: its /proc/PID/coredump_filter, less
    MADV_DONTDUMP regions; --filter, --all-memory and --mini choose otherwise.
    """
    from pss_cli import api
    from pss_cli.render import report
    from pss_cli.render.console import progress_bar

    if holder is not None or handle is not None:
        if into_container:
            raise UsageError("--into-container writes a dump of TARGET: it does not go with --from")
        if selection is not None:
            raise UsageError("--from writes the snapshot as it is held: --mini, --filter and --all-memory need TARGET")
        if holder is None or handle is None:
            raise UsageError("--from and --handle go together: the process that holds the snapshot, and its handle")
        if file is not None:
            raise UsageError("with --from there is no TARGET: give only FILE")
        file = target
        started = time.perf_counter()
        if not file:
            held = api.inspect(holder, handle, timeout=ui.timeout)
            file = default_name(held.process.name, held.process.pid, held.captured_at, dump_suffix())
        snap = api.dump_held(holder, handle, file, force=force, timeout=ui.timeout)
        report.dumped(ui, snap, file, holder, handle, time.perf_counter() - started)
        return 0
    if target is None:
        raise UsageError("give TARGET (a PID or a process name), or --from PID --handle H")
    (pid,) = api.resolve(target)
    path = file or default_name(api.process_name(pid), pid, time.time(), dump_suffix())
    if into_container and not file:
        path = f"/tmp/{path}"
    started = time.perf_counter()
    with progress_bar(ui, "copying memory") as progress:
        snap = api.dump(
            pid,
            path,
            force=force,
            timeout=ui.timeout,
            clone_method=clone_method,
            progress=progress,
            selection=selection or api.KERNEL_DUMP,
            into_container=into_container,
        )
    shown = api.path_in_root(pid, path) if into_container else path  # the same file, as seen from here
    report.dumped(ui, snap, shown, None, None, time.perf_counter() - started)
    return 0

"""`pss-dup dump TARGET [FILE]`: a core file (Linux) or minidump (Windows) written from a VA-clone snapshot.

As in ProcDump the file is positional and `-o` stays the report format. The process is stopped only while the clone
is made; its memory is copied afterwards, with a progress bar on stderr when a person is watching.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator

import click

from pss_cli.cli.common import memory_options, output_options
from pss_cli.cli.params import PID, TARGET, SnapshotHandle
from pss_cli.compress import COMPRESSIONS, SUFFIXES
from pss_cli.errors import UsageError
from pss_cli.model import CLONE_METHODS, DumpOutput, DumpSelection
from pss_cli.naming import STDOUT, default_name, file_name, template_problem
from pss_cli.render.console import Ui

#: The {trigger} of a dump asked for on the command line (watch fills in what fired).
TRIGGER = "manual"


def dump_suffix() -> str:
    return ".dmp" if os.name == "nt" else ".core"


@click.command()
@click.argument("target", type=TARGET, required=False)
@click.argument("file", type=click.Path(writable=True), required=False)
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
                   "user and group; FILE is a path there (default: /tmp/NAME_PID_YYMMDD_HHMMSS.core; with --name, "
                   "the directory there). Not with - (stdout).")  # fmt: skip
@click.option("--name", "template", metavar="TEMPLATE",
              help="FILE's name from {name} {pid} {time} {host} {trigger} (manual) {container} (a short container "
                   "ID, or 'host'); FILE, if given, is its directory. - is stdout.")  # fmt: skip
@click.option("--compress", type=click.Choice(COMPRESSIONS),
              help="Compress the core into FILE.zst: one standard zstd frame (zstd -d reads it).")  # fmt: skip
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
    template: str | None,
    compress: str | None,
    selection: DumpSelection | None,
    force: bool,
) -> int:
    """Write a core file of TARGET (a PID, a process name, or container:ID) that gdb can open.

    FILE defaults to NAME_PID_YYMMDD_HHMMSS.core in the current directory; it is created with mode 0600 and an
    existing file is never replaced without --force. All-zero pages are left as holes (a sparse file). FILE -
    streams the core to stdout (never to a terminal): front to back, zero pages written. With --into-container it
    goes into TARGET's own filesystem instead (FILE a path there, resolved inside it: no symlink there leads out),
    owned by TARGET's user; --name and --compress work there too, - does not. With --from PID --handle H, the
    snapshot that PID already holds is written out instead (FILE is then the only argument).

    By default the core holds what the kernel would dump for TARGET: its /proc/PID/coredump_filter, less
    MADV_DONTDUMP regions; --filter, --all-memory and --mini choose otherwise (with --compress and - too).
    """
    from pss_cli import api
    from pss_cli.render import report
    from pss_cli.render.console import progress_bar

    problem = template_problem(template) if template is not None else None
    if problem is not None:
        raise UsageError(problem)
    if holder is not None or handle is not None:
        if template is not None or compress is not None or into_container:
            raise UsageError(
                "--name, --compress and --into-container are for a dump of TARGET, not of a held snapshot (--from)"
            )
        if selection is not None:
            raise UsageError("--from writes the snapshot as it is held: --mini, --filter and --all-memory need TARGET")
        if holder is None or handle is None:
            raise UsageError("--from and --handle go together: the process that holds the snapshot, and its handle")
        if file is not None:
            raise UsageError("with --from there is no TARGET: give only FILE")
        file = target
        if file == STDOUT:
            raise UsageError("a held snapshot (--from) is written to a file, not to stdout")
        started = time.perf_counter()
        if not file:
            held = api.inspect(holder, handle, timeout=ui.timeout)
            file = default_name(held.process.name, held.process.pid, held.captured_at, dump_suffix())
        snap = api.dump_held(holder, handle, file, force=force, timeout=ui.timeout)
        report.dumped(ui, snap, file, holder, handle, time.perf_counter() - started)
        return 0
    if target is None:
        raise UsageError("give TARGET (a PID or a process name), or --from PID --handle H")
    if into_container and STDOUT in (file, template):
        raise UsageError("--into-container writes a file inside the container: it does not stream to stdout (-)")
    if template is not None and file == STDOUT:
        raise UsageError(f"with --name, FILE is the directory the file goes into, and {file!r} is not one")
    if not into_container:  # a path in the container is looked at there, by the backend
        if template is not None and file is not None and not os.path.isdir(file):
            raise UsageError(f"with --name, FILE is the directory the file goes into, and {file!r} is not one")
        if template is None and file is not None and os.path.isdir(file):
            raise UsageError(f"FILE {file!r} is a directory: give a file in it, or name the file with --name")
    if STDOUT in (file, template) and sys.stdout.isatty():
        raise UsageError("stdout is a terminal: redirect it (> FILE, | ...) to stream a core there, or give FILE")
    (pid,) = api.resolve(target)
    name = api.process_name(pid)
    if template is not None:
        container = api.container_label(pid) if "{container}" in template else None
        made = file_name(template, name=name, pid=pid, trigger=TRIGGER, when=time.time(), container=container)
        directory = file if file is not None else ("/tmp" if into_container else None)
        path = made if directory is None or made == STDOUT else os.path.join(directory, made)
    else:
        path = file or default_name(name, pid, time.time(), dump_suffix())
        if into_container and not file:
            path = f"/tmp/{path}"
    if path != STDOUT and compress is not None and not path.endswith(SUFFIXES[compress]):
        path += SUFFIXES[compress]
    outputs: list[DumpOutput] = []
    started = time.perf_counter()
    with progress_bar(ui, "copying memory") as progress, _destination(path) as where:
        snap = api.dump(
            pid,
            where,
            force=force,
            timeout=ui.timeout,
            clone_method=clone_method,
            progress=progress,
            compress=compress,
            written=outputs.append,
            selection=selection or api.KERNEL_DUMP,
            into_container=into_container,
        )
    shown: str | None = None if path == STDOUT else path
    if shown is not None and into_container:
        shown = api.path_in_root(pid, shown)  # the same file, as seen from here
    report.dumped(ui, snap, shown, None, None, time.perf_counter() - started, outputs[0] if outputs else None)
    return 0


@contextlib.contextmanager
def _destination(path: str) -> Iterator[str | int]:
    """`path`, or for - an fd of stdout for the core alone: fd 1 itself then points at stderr while the dump runs
    and is reported, so that nothing else (the report, a warning, JSON) can land in the middle of the core."""
    if path != STDOUT:
        yield path
        return
    sys.stdout.flush()
    core = os.dup(1)
    try:
        os.dup2(2, 1)
        yield core
    finally:
        os.close(core)

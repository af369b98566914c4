"""`pss-dup ps [PATTERN]`: find processes, with what an administrator needs before a capture or a dup.

JSON record, one per process (`-o json` puts them in "results", `-o jsonl` prints one per line):

    {"status": "ok", "pid": 4242, "ppid": 1, "user": "root", "name": "python3", "threads": 4,
     "handles": 12, "rss": 10485760, "cmdline": ["python3", "app.py"], "create_time": 1764300000.5,
     "snapshots": [5]}

"handles" is the fd count on Linux and the handle count on Windows. "snapshots" lists the fds that hold a pss-dup
snapshot (pass one to `inspect` or `free`), each checked as `free` checks it (a sealed memfd in pss-dup's format,
not merely a memfd of that name), or is null when the fd table cannot be read (another user's process without
root, or Windows, where snapshot handles cannot be told apart from outside). A field the OS refuses to give is null.
"""

from __future__ import annotations

import fnmatch
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from pss_cli.cli.common import Ui, output_options
from pss_cli.cli.params import PF_KTHREAD, PID, read_stat
from pss_cli.errors import NoSuchProcess
from pss_cli.render import printable

if TYPE_CHECKING:
    from rich.table import Table

#: Only what a row shows: process_iter reads these under one oneshot() per process, and nothing slow.
PSUTIL_ATTRS = ["ppid", "username", "name", "num_threads", "memory_info", "cmdline", "create_time"]
HANDLE_ATTR = "num_handles" if sys.platform == "win32" else "num_fds"


@dataclass(frozen=True, slots=True)
class ProcessRow:
    """One process as `ps` reports it; None where the OS would not say."""

    pid: int
    ppid: int | None
    user: str | None
    name: str | None
    threads: int | None
    handles: int | None
    rss: int | None
    cmdline: tuple[str, ...] | None
    create_time: float | None
    snapshots: tuple[int, ...] | None

    def record(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "pid": self.pid,
            "ppid": self.ppid,
            "user": self.user,
            "name": self.name,
            "threads": self.threads,
            "handles": self.handles,
            "rss": self.rss,
            "cmdline": None if self.cmdline is None else list(self.cmdline),
            "create_time": self.create_time,
            "snapshots": None if self.snapshots is None else list(self.snapshots),
        }


def name_glob_matches(pattern: str, name: str | None, cmdline: tuple[str, ...] | None) -> bool:
    """The glob against the name, or argv[0]'s basename (Linux cuts names at 15 characters); Windows ignores case."""
    candidates = [name or ""]
    if cmdline:
        candidates.append(os.path.basename(cmdline[0]))
    if sys.platform == "win32":
        folded = pattern.casefold()
        return any(fnmatch.fnmatchcase(c.casefold(), folded) for c in candidates if c)
    return any(fnmatch.fnmatchcase(c, pattern) for c in candidates if c)


def is_uid(text: str) -> bool:
    """A numeric uid (ASCII digits that fit in a uid_t), rather than a user name."""
    return text.isascii() and text.isdigit() and len(text) <= 10


def user_matches(wanted: str, username: str | None, uid: int | None) -> bool:
    if is_uid(wanted):
        return uid == int(wanted)
    if username is None:
        return False
    if sys.platform == "win32":  # DOMAIN\user: either form
        return wanted.casefold() in (username.casefold(), username.rpartition("\\")[2].casefold())
    return username == wanted


def is_kernel_thread(pid: int) -> bool:
    """Kernel threads have no user space to capture; `ps` leaves them out."""
    if sys.platform != "linux":
        return False
    stat = read_stat(pid)
    return stat is not None and bool(stat[2] & PF_KTHREAD)


def list_processes(pattern: str | None, user: str | None, parent: int | None) -> list[ProcessRow]:
    """The processes that pass every filter given, this one excluded, by PID."""
    import psutil

    from pss_cli.platform import backend

    attrs = [*PSUTIL_ATTRS, HANDLE_ATTR]
    if user is not None and is_uid(user) and sys.platform != "win32":
        attrs.append("uids")
    own = os.getpid()
    rows = []
    for proc in psutil.process_iter(attrs, ad_value=None):
        info = proc.info
        cmdline = tuple(info["cmdline"]) if info["cmdline"] is not None else None
        if proc.pid == own or (sys.platform == "win32" and proc.pid == 0):
            continue
        if parent is not None and info["ppid"] != parent:
            continue
        if pattern is not None and not name_glob_matches(pattern, info["name"], cmdline):
            continue
        uids = info.get("uids")
        if user is not None and not user_matches(user, info["username"], uids.real if uids else None):
            continue
        if is_kernel_thread(proc.pid):
            continue
        memory = info["memory_info"]
        snaps = backend().held_snapshots(proc.pid)
        rows.append(
            ProcessRow(
                pid=proc.pid,
                ppid=info["ppid"],
                user=info["username"],
                name=info["name"],
                threads=info["num_threads"],
                handles=info[HANDLE_ATTR],
                rss=memory.rss if memory is not None else None,
                cmdline=cmdline,
                create_time=info["create_time"],
                snapshots=snaps,
            )
        )
    return sorted(rows, key=lambda r: r.pid)


def process_table(rows: list[ProcessRow]) -> Table:
    """Every process-controlled string (name, user, command line) goes in as Text: never read as markup."""
    from rich.table import Table
    from rich.text import Text

    from pss_cli.render.tables import size

    table = Table(box=None, pad_edge=False, header_style="bold")
    handles = "handles" if sys.platform == "win32" else "fds"
    for column in ("pid", "ppid", "user", "name", "threads", handles, "rss", "snap"):
        table.add_column(column, justify="right" if column not in ("user", "name") else "left", no_wrap=True)
    # The one column rich may narrow on a terminal; each cell stays one line, cut with an ellipsis there.
    table.add_column("command", overflow="ellipsis")
    for row in rows:
        if row.snapshots is None:
            marker = Text("?", style="dim")
        elif row.snapshots:
            marker = Text(f"*{len(row.snapshots)}", style="bold magenta")
        else:
            marker = Text("")
        command = " ".join(row.cmdline) if row.cmdline else (f"[{row.name}]" if row.name else "-")
        table.add_row(
            str(row.pid),
            "-" if row.ppid is None else str(row.ppid),
            Text(printable(row.user or "-")),
            Text(printable(row.name or "-")),
            "-" if row.threads is None else str(row.threads),
            "-" if row.handles is None else str(row.handles),
            size(row.rss),
            marker,
            Text(printable(command), no_wrap=True, overflow="ellipsis"),
        )
    return table


@click.command()
@click.argument("pattern", required=False)
@click.option("--user", "-u", metavar="USER", help="Only processes of USER (a name, or a numeric uid).")
@click.option("--parent", "-P", type=PID, metavar="PID", help="Only children of PID.")
@output_options
def ps(ui: Ui, pattern: str | None, user: str | None, parent: int | None) -> int:
    """List processes, optionally those whose name matches PATTERN (a glob: 'python*', 'nginx').

    \b
    Columns: pid, ppid, user, name, threads, fds (handles on Windows), resident memory, snap, command line.
    snap marks processes that hold pss-dup snapshots: *N for N snapshot fds (each checked to be a sealed memfd
    in pss-dup's format, as `free` checks it), ? where the fd table is not readable (another user's process
    without root). Kernel threads and pss-dup itself are left out.
    Exits 3 when filters match no process. -o json gives one record per process (see the README).
    """
    rows = list_processes(pattern, user, parent)
    if not rows:
        given = [f"name {pattern!r}" if pattern else "", f"user {user!r}" if user else "",
                 f"parent {parent}" if parent else ""]  # fmt: skip
        raise NoSuchProcess(f"no process matches {' and '.join(g for g in given if g)}")
    if ui.machine:
        from pss_cli.render.jsonout import emit

        emit(ui, [row.record() for row in rows])
        return 0
    print_trimmed(ui, process_table(rows))
    return 0


def print_trimmed(ui: Ui, table: Table) -> None:
    """The table without the padding rich adds after the last column, so piped lines end where the text ends."""
    with ui.out.capture() as captured:
        ui.out.print(table)
    ui.out.file.write("\n".join(line.rstrip(" ") for line in captured.get().split("\n")))
    ui.out.file.flush()

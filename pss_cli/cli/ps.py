"""`pss-dup ps [PATTERN]`: find processes, with what an administrator needs before a capture or a dup.

JSON record, one per process (`-o json` puts them in "results", `-o jsonl` prints one per line):

    {"status": "ok", "pid": 4242, "ppid": 1, "user": "root", "name": "python3", "threads": 4,
     "handles": 12, "rss": 10485760, "cmdline": ["python3", "app.py"], "create_time": 1764300000.5,
     "snapshots": [5], "container": {"runtime": "docker", "id": "4f3c...", "source": "cgroup"}}

"handles" is the fd count on Linux and the handle count on Windows. "snapshots" lists the fds that hold a pss-dup
snapshot (pass one to `inspect` or `free`), each checked as `free` checks it (a sealed memfd in pss-dup's format,
not merely a memfd of that name), or is null when the fd table cannot be read (another user's process without
root, or Windows, where snapshot handles cannot be told apart from outside). "container" is null outside a container
(always on Windows); its fields are those of the snapshot's (docs/snapshot-format.md). A field the OS refuses to
give is null.
"""

from __future__ import annotations

from pss_cli.cli.declare import PID, argument, command, option, output_options
from pss_cli.errors import NoSuchProcess
from pss_cli.render.console import Ui


@command
@argument("pattern", required=False)
@option("--user", "-u", metavar="USER", help="Only processes of USER (a name, or a numeric uid).")
@option("--parent", "-P", type=PID, metavar="PID", help="Only children of PID.")
@option("--container", "-C", metavar="ID", help="Only processes of the container whose ID starts with ID.")
@output_options
def ps(ui: Ui, pattern: str | None, user: str | None, parent: int | None, container: str | None) -> int:
    """List processes, optionally those whose name matches PATTERN (a glob: 'python*', 'nginx').

    \b
    Columns: pid, ppid, user, name, threads, fds (handles on Windows), resident memory, snap, container,
    command line. container is the container's short ID (12 hex digits; a systemd-nspawn machine's name), or its
    runtime alone where only the environment (container=) shows one.
    snap marks processes that hold pss-dup snapshots: *N for N snapshot fds (each checked to be a sealed memfd
    in pss-dup's format, as `free` checks it), ? where the fd table is not readable (another user's process
    without root). Kernel threads and pss-dup itself are left out.
    Exits 3 when filters match no process. -o json gives one record per process (see the README).
    """
    from pss_cli import api
    from pss_cli.render import report

    rows = api.list_processes(pattern, user, parent, container)
    if not rows:
        given = [f"name {pattern!r}" if pattern else "", f"user {user!r}" if user else "",
                 f"parent {parent}" if parent else "", f"container {container!r}" if container else ""]  # fmt: skip
        raise NoSuchProcess(f"no process matches {' and '.join(g for g in given if g)}")
    report.processes(ui, rows)
    return 0

"""Finding processes: by PID (the backend answers), by name and for `ps` (psutil, which knows every platform).

psutil is imported only where a name or a listing needs it: a command given a PID never loads it.
"""

from __future__ import annotations

import fnmatch
import os
import sys

from pss_cli.errors import AmbiguousTarget, NoSuchProcess
from pss_cli.model import MAX_PID
from pss_cli.platform import backend
from pss_cli.record import record

#: Only what a `ps` row shows: as_dict reads these under one oneshot() per process, and nothing slow.
PSUTIL_ATTRS = ["ppid", "username", "name", "num_threads", "memory_info", "cmdline", "create_time"]
HANDLE_ATTR = "num_handles" if sys.platform == "win32" else "num_fds"


@record
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


def name_matches(wanted: str, name: str | None, exe: str | None, cmdline: list[str] | None) -> bool:
    """psutil's recipe: the name, the executable's basename, or argv[0]'s basename (Windows: `.exe` optional).

    Linux truncates `comm` to 15 characters, so a longer wanted name also matches its truncation.
    """
    candidates = {name or "", os.path.basename(exe or ""), os.path.basename(cmdline[0]) if cmdline else ""}
    candidates.discard("")
    if sys.platform == "win32":
        folded = {c.casefold().removesuffix(".exe") for c in candidates}
        return wanted.casefold().removesuffix(".exe") in folded
    return wanted in candidates or (len(wanted) > 15 and wanted[:15] == (name or ""))


def find_by_name(wanted: str) -> list[tuple[int, str]]:
    """(pid, command line) of every process that matches, this process excluded."""
    import psutil

    own = os.getpid()
    found = []
    for proc in psutil.process_iter(["name", "exe", "cmdline"], ad_value=None):
        info = proc.info
        if proc.pid != own and name_matches(wanted, info["name"], info["exe"], info["cmdline"]):
            found.append((proc.pid, " ".join(info["cmdline"] or []) or info["name"] or "?"))
    return sorted(found)


def resolve(target: str, *, all_matches: bool = False) -> list[int]:
    """The PIDs that TARGET names: a PID, or a process name that must match exactly one process unless all_matches."""
    if target.isascii() and target.isdigit():  # not str.isdigit alone: '²' is a digit that int() refuses
        pid = int(target) if len(target) <= len(str(MAX_PID)) else MAX_PID + 1
        if not 0 < pid <= MAX_PID or not backend().process_exists(pid):
            if pid > MAX_PID:
                raise NoSuchProcess(f"no process with PID {target}; list processes with `pss-dup ps`")
            raise NoSuchProcess(f"no process with PID {pid}; list processes with `pss-dup ps`", pid=pid)
        return [pid]
    matches = find_by_name(target)
    if not matches:
        raise NoSuchProcess(f"no process named {target!r}; list processes with `pss-dup ps`")
    if len(matches) > 1 and not all_matches:
        raise AmbiguousTarget(target, matches)
    return [pid for pid, _ in matches]


def process_name(pid: int) -> str:
    """The name of `pid` as psutil gives it (the whole name on Linux where `comm` was cut at 15); "process" if gone."""
    import psutil

    try:
        return psutil.Process(pid).name()
    except psutil.Error:
        return "process"


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


def list_processes(pattern: str | None = None, user: str | None = None, parent: int | None = None) -> list[ProcessRow]:
    """The processes that pass every filter given, this one and kernel threads excluded, by PID."""
    import psutil

    platform = backend()
    attrs = [*PSUTIL_ATTRS, HANDLE_ATTR]
    if user is not None and is_uid(user) and sys.platform != "win32":
        attrs.append("uids")
    own = os.getpid()
    rows = []
    for pid in psutil.pids():
        if pid == own or (sys.platform == "win32" and pid == 0) or platform.is_kernel_thread(pid):
            continue  # most of a Linux host's PIDs are kernel threads: ruled out before psutil reads anything
        try:
            proc = psutil.Process(pid)
            info = proc.as_dict(attrs, ad_value=None)
        except psutil.NoSuchProcess:
            continue
        cmdline = tuple(info["cmdline"]) if info["cmdline"] is not None else None
        if parent is not None and info["ppid"] != parent:
            continue
        if pattern is not None and not name_glob_matches(pattern, info["name"], cmdline):
            continue
        uids = info.get("uids")
        if user is not None and not user_matches(user, info["username"], uids.real if uids else None):
            continue
        memory = info["memory_info"]
        rows.append(
            ProcessRow(
                pid=pid,
                ppid=info["ppid"],
                user=info["username"],
                name=info["name"],
                threads=info["num_threads"],
                handles=info[HANDLE_ATTR],
                rss=memory.rss if memory is not None else None,
                cmdline=cmdline,
                create_time=info["create_time"],
                snapshots=platform.held_snapshots(pid),
            )
        )
    return sorted(rows, key=lambda r: r.pid)

"""Finding processes: by PID (the backend answers), by name and for `ps` (psutil, which knows every platform).

psutil is imported only where a name or a listing needs it: a command given a PID never loads it.
"""

from __future__ import annotations

import fnmatch
import os
import sys

from pss_cli.errors import AmbiguousTarget, NoSuchProcess, UsageError
from pss_cli.model import MAX_PID, Container, ProcessLocation, pid_number
from pss_cli.platform import backend
from pss_cli.record import record

#: TARGET `container:ID` (a unique prefix of a container ID, as docker takes it), or `container:ID:PID` (the
#: process with PID in that container's PID namespace).
CONTAINER_PREFIX = "container:"

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
    container: Container | None = None


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
    """The PIDs that TARGET names: a PID, `container:ID[:PID]`, or a process name that must match exactly one
    process unless all_matches."""
    if target.startswith(CONTAINER_PREFIX):
        return resolve_container(target.removeprefix(CONTAINER_PREFIX), all_matches=all_matches)
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


@record
class Member:
    """A process of a container, with where it lives."""

    pid: int
    location: ProcessLocation


def containers() -> dict[str, list[Member]]:
    """Every container pss-dup sees a process of, by container ID, each with its processes by PID: read from
    each live process's cgroup path (a container known only from the environment has no ID to target)."""
    platform = backend()
    found: dict[str, list[Member]] = {}
    for live in platform.live_processes():
        where = platform.locate(live.pid)
        if where is not None and where.container is not None and where.container.id is not None:
            found.setdefault(where.container.id, []).append(Member(live.pid, where))
    return found


def main_process(members: list[Member]) -> Member:
    """The container's main process: PID 1 of its own PID namespace, else the one whose parent is outside it
    (the earliest started of those)."""
    for member in members:
        if member.location.inner_pid == 1:
            return member
    import psutil

    pids = {m.pid for m in members}
    tops = []
    for member in members:
        try:
            proc = psutil.Process(member.pid)
            if proc.ppid() not in pids:
                tops.append((proc.create_time(), member.pid, member))
        except psutil.Error:
            continue
    return min(tops, key=lambda t: (t[0], t[1]))[2] if tops else members[0]


def describe_container(ident: str, members: list[Member]) -> str:
    """One candidate as an error lists it: short ID, runtime, main process."""
    container = members[0].location.container
    runtime = container.runtime if container is not None else "?"
    short = container.short_id if container is not None else ident
    return f"{short} ({runtime}, main PID {main_process(members).pid}, {len(members)} processes)"


def resolve_container(spec: str, *, all_matches: bool = False) -> list[int]:
    """`ID` or `ID:PID` of TARGET `container:...`: the container's main process (every one with all_matches), or
    the process with PID in its PID namespace (the NSpid mapping, from the namespace's PID to ours)."""
    ident, _, inner = spec.partition(":")
    if not ident or (inner and pid_number(inner) is None):
        raise UsageError(f"container:{spec} is not a container target: give container:ID or container:ID:PID")
    known = containers()
    matches = [i for i in known if i == ident] or sorted(i for i in known if i.startswith(ident))
    if len(matches) != 1:
        listed = "; ".join(describe_container(i, known[i]) for i in (matches or sorted(known))[:10]) or "none"
        what = "matches several containers" if matches else "matches no container"
        raise UsageError(f"container ID {ident!r} {what}; containers seen: {listed}")
    members = known[matches[0]]
    if inner:
        return [in_namespace_of(main_process(members), int(inner), spec)]
    if all_matches:
        return sorted(m.pid for m in members)
    return [main_process(members).pid]


def in_namespace_of(main: Member, inner_pid: int, spec: str) -> int:
    """Our PID for the process whose PID is `inner_pid` in `main`'s PID namespace."""
    namespace = main.location.namespaces.pid if main.location.namespaces is not None else None
    platform = backend()
    for live in platform.live_processes():
        where = platform.locate(live.pid)
        if (
            where is not None
            and where.inner_pid == inner_pid
            and where.namespaces is not None
            and where.namespaces.pid == namespace
        ):
            return live.pid
    raise NoSuchProcess(f"no process with PID {inner_pid} in the PID namespace of container:{spec.partition(':')[0]}")


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


def list_processes(
    pattern: str | None = None, user: str | None = None, parent: int | None = None, container: str | None = None
) -> list[ProcessRow]:
    """The processes that pass every filter given, this one and kernel threads excluded, by PID. `container` is
    a prefix of a container ID (or a whole systemd-nspawn machine name)."""
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
        found = platform.container_of(pid)
        if container is not None and (found is None or found.id is None or not found.id.startswith(container)):
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
                container=found,
            )
        )
    return sorted(rows, key=lambda r: r.pid)

"""Readers for /proc: process information, threads, the fd table and the memory map, as model records.

Every reader works relative to a directory fd of /proc/PID opened once (`ProcDir`), so a PID that is reused while
we read can never mix two processes: once the process is gone, every read fails instead. OS errors stay inside this
module as OSError; the backend translates them once.
"""

from __future__ import annotations

import sys

# Linux only: this lets mypy --platform win32 skip the module instead of flagging Linux-only calls.
assert sys.platform == "linux"

import contextlib
import functools
import itertools
import os
import re
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple, TypeVar

from pss_cli.model import (
    Container,
    HandleEntry,
    HandleFlags,
    HandleType,
    ListedProcess,
    MemoryProtection,
    MemoryState,
    MemoryType,
    Namespaces,
    ProcessFlags,
    ProcessInfo,
    ProcessLocation,
    ResourceSample,
    SyscallState,
    ThreadEntry,
    ThreadFlags,
    ThreadState,
    VaRegion,
)
from pss_cli.platform.linux.syscall_names import X86_64_SYSCALLS
from pss_cli.record import record, replace

T = TypeVar("T")

CLK_TCK = os.sysconf("SC_CLK_TCK")
O_CLOEXEC = 0o2000000


def boot_time() -> float:
    """System boot time as a Unix timestamp, from /proc/stat `btime`. Read afresh for each capture or listing, never
    kept: the kernel derives it from the wall clock, so it moves when the clock is stepped (seen on CI machines, by
    45 s), and psutil reads it afresh too."""
    with open("/proc/stat", "rb") as f:
        for line in f:
            if line.startswith(b"btime "):
                return float(line.split()[1])
    raise OSError("no btime in /proc/stat")


class ProcDir:
    """An open /proc/PID directory; reads through it fail once the process is gone, even if the PID is reused."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.fd = os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> ProcDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, name: str) -> bytes:
        return read_file(self.fd, name)

    def read_text(self, name: str) -> str:
        return self.read(name).decode("utf-8", "surrogateescape")

    def readlink(self, name: str) -> str:
        return os.readlink(name, dir_fd=self.fd)

    def listdir(self, name: str) -> list[str]:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.fd)
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)


def read_file(dir_fd: int | None, name: str) -> bytes:
    """A whole file; `name` is relative to `dir_fd`, or a whole path when `dir_fd` is None.

    Read to the end: a large /proc file (maps, smaps) comes in pieces that end at a line, not at a buffer's size.
    """
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_small(dir_fd: int | None, name: str) -> bytes:
    """A file of one record (stat, status, fdinfo): one read instead of a loop, then a loop if it filled the buffer.

    `name` is relative to `dir_fd`, or a whole path when `dir_fd` is None.
    """
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        data = os.read(fd, 8192)
        if len(data) == 8192:
            chunks = [data]
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            data = b"".join(chunks)
        return data
    finally:
        os.close(fd)


def decode(raw: bytes) -> str:
    """Untrusted bytes from the process as text; undecodable bytes survive as escapes, never as an error."""
    return raw.decode("utf-8", "backslashreplace")


def task_path(pid: int | str, tid: int | None, name: str) -> str:
    """/proc/PID/NAME, or /proc/PID/task/TID/NAME for one thread."""
    return f"/proc/{pid}/{name}" if tid is None else f"/proc/{pid}/task/{tid}/{name}"


# ---- stat, status, syscall: the one parser of each -----------------------------------------------------------


class Stat(NamedTuple):
    """The fields of /proc/PID/stat (or of a thread's) that pss-dup reads, under their proc(5) names.

    Times are in clock ticks (CLK_TCK), as the kernel writes them. `flags` holds the PF_* bits (PF_KTHREAD).
    A NamedTuple rather than a frozen dataclass: one is made per thread per capture, and a frozen dataclass's
    __init__ alone costs more than reading the fields.
    """

    comm: str
    state: str
    ppid: int
    flags: int
    minflt: int
    majflt: int
    utime: int
    stime: int
    priority: int
    nice: int
    num_threads: int
    starttime: int
    #: Resident set size in pages (of the whole process, in a thread's stat too).
    rss: int
    #: The CPU it last ran on; None if the kernel's line is too short to hold it.
    processor: int | None

    @property
    def exited(self) -> bool:
        """Zombie or dead: the task has exited and only waits to be reaped (a group leader that called pthread_exit
        is one while its other threads still run)."""
        return self.state in ("Z", "X")


def parse_stat(raw: bytes, decode_comm: Callable[[bytes], str] = decode) -> Stat:
    """/proc/PID/stat as a Stat; ValueError if `raw` is not a stat line.

    `comm` may hold spaces, parentheses and bytes that are not UTF-8 (any process can name itself so), so it runs
    from the first '(' to the LAST ')'; its undecodable bytes survive as escapes (`decode_comm`: a listing decodes
    them as psutil does, os.fsdecode).
    """
    try:
        close = raw.rindex(b")")
        f = raw[close + 2 :].split()  # f[n] is field n + 3 of proc(5)
        return Stat(  # positionally, in the order of Stat's fields: keywords cost a microsecond per thread
            decode_comm(raw[raw.index(b"(") + 1 : close]),  # comm, field 2
            f[0].decode("ascii", "replace"),  # state, 3
            int(f[1]),  # ppid, 4
            int(f[6]),  # flags, 9
            int(f[7]),  # minflt, 10
            int(f[9]),  # majflt, 12
            int(f[11]),  # utime, 14
            int(f[12]),  # stime, 15
            int(f[15]),  # priority, 18
            int(f[16]),  # nice, 19
            int(f[17]),  # num_threads, 20
            int(f[19]),  # starttime, 22
            int(f[21]),  # rss, 24
            int(f[36]) if len(f) > 36 else None,  # processor, 39
        )
    except IndexError:
        raise ValueError(f"not a /proc/PID/stat line: {raw[:80]!r}") from None


def read_stat(pid: int, tid: int | None = None) -> Stat:
    """/proc/PID/stat, or a thread's, by path: for callers that hold no ProcDir (the freeze, the access checks).

    OSError when the process is gone or unreadable.
    """
    return parse_stat(read_small(None, task_path(pid, tid, "stat")))


def parent_of(pid: int) -> int:
    """The parent's PID, 0 once the process is gone: callers compare it with their own PID."""
    try:
        return read_stat(pid).ppid
    except (OSError, ValueError):
        return 0


def parse_status(raw: bytes) -> dict[str, str]:
    """/proc/PID/status as `key: value` pairs, values stripped; undecodable bytes (in Name) survive as escapes."""
    result = {}
    for line in raw.decode("utf-8", "backslashreplace").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            result[key] = value.strip()
    return result


def read_status(pid: int | str, tid: int | None = None) -> dict[str, str]:
    """/proc/PID/status, or a thread's, by path (`pid` may be "self"). OSError when gone or unreadable."""
    return parse_status(read_small(None, task_path(pid, tid, "status")))


def status_kib(status: dict[str, str], key: str) -> int | None:
    value = status.get(key)
    return int(value.split()[0]) * 1024 if value else None


def status_hex(status: dict[str, str], key: str) -> int | None:
    value = status.get(key)
    return int(value, 16) if value else None


def status_ids(status: dict[str, str], key: str) -> tuple[int, ...] | None:
    value = status.get(key)
    return tuple(int(v) for v in value.split()) if value else None


def parse_syscall(raw: bytes) -> SyscallState | None:
    """/proc/PID/task/TID/syscall: "nr a0..a5 sp pc" while blocked; "running" or "-1 sp pc" otherwise (None)."""
    parts = raw.split()
    if len(parts) < 9:
        return None
    try:
        number = int(parts[0])
        if number < 0:
            return None
        return SyscallState(
            number=number,
            name=X86_64_SYSCALLS.get(number),
            args=tuple(int(a, 16) for a in parts[1:7]),
            stack_pointer=int(parts[7], 16),
            program_counter=int(parts[8], 16),
        )
    except ValueError:
        return None


def read_syscall(pid: int, tid: int) -> SyscallState | None:
    """The system call thread `tid` is blocked in; None while it runs, or once it is gone or unreadable."""
    try:
        return parse_syscall(read_small(None, task_path(pid, tid, "syscall")))
    except OSError:
        return None


def ticks(value: int) -> float:
    return value / CLK_TCK


def affinity(pid: int) -> tuple[int, ...] | None:
    try:
        return tuple(sorted(os.sched_getaffinity(pid)))
    except OSError:
        return None


def read_process_info(
    proc: ProcDir, *, with_environ: bool = True, count_handles: bool = True, boot: float | None = None
) -> ProcessInfo:
    """PSS_PROCESS_INFORMATION for a Linux process (`boot` as read_thread takes it). OSError when /proc says no."""
    st = parse_stat(proc.read("stat"))
    status = parse_status(proc.read("status"))
    state = ThreadState.from_code(st.state)
    cmdline_raw = proc.read("cmdline")
    cmdline = tuple(decode(a) for a in cmdline_raw.split(b"\0")[:-1]) if cmdline_raw else ()
    exe = optional_link(proc, "exe")
    cwd = optional_link(proc, "cwd")
    environ = read_environ(proc) if with_environ else None
    flags = ProcessFlags.FROZEN if state in (ThreadState.STOPPED, ThreadState.TRACING_STOP) else ProcessFlags.NONE
    rss_anon = status_kib(status, "RssAnon")
    swap = status_kib(status, "VmSwap")
    return ProcessInfo(
        pid=proc.pid,
        ppid=st.ppid,
        name=status.get("Name", st.comm) or st.comm,
        exe=exe,
        cmdline=cmdline,
        cwd=cwd,
        state=state,
        start_time=(boot_time() if boot is None else boot) + ticks(st.starttime),
        user_time=ticks(st.utime),
        system_time=ticks(st.stime),
        base_priority=st.priority,
        nice=st.nice,
        flags=flags,
        exit_status=None,
        affinity=affinity(proc.pid),
        thread_count=st.num_threads,
        handle_count=count_fds(proc) if count_handles else None,
        virtual_size=status_kib(status, "VmSize"),
        peak_virtual_size=status_kib(status, "VmPeak"),
        working_set_size=status_kib(status, "VmRSS"),
        peak_working_set_size=status_kib(status, "VmHWM"),
        private_usage=(rss_anon or 0) + (swap or 0) if rss_anon is not None else None,
        page_fault_count=st.minflt + st.majflt,
        uids=status_ids(status, "Uid"),
        gids=status_ids(status, "Gid"),
        environ=environ,
        sig_pending=(status_hex(status, "SigPnd") or 0) | (status_hex(status, "ShdPnd") or 0),
        sig_blocked=status_hex(status, "SigBlk"),
        sig_ignored=status_hex(status, "SigIgn"),
        sig_caught=status_hex(status, "SigCgt"),
        seccomp_mode=int(status["Seccomp"]) if "Seccomp" in status else None,
        no_new_privs=status["NoNewPrivs"] == "1" if "NoNewPrivs" in status else None,
        dumpable=read_dumpable(proc, status),
        location=read_location(proc, status, environ),
    )


# ---- where a process lives: PID namespaces, namespaces, cgroup, container --------------------------------------

#: The namespaces ProcessLocation names, as /proc/PID/ns/NAME calls them.
NAMESPACE_NAMES = ("pid", "mnt", "net", "user", "cgroup")
_NS_LINK = re.compile(r"^[a-z_]+:\[(\d+)\]$")
_HEX64 = r"[0-9a-f]{64}"
#: Cgroup path components that name a container, tried from the deepest component up (a container's processes
#: may sit in a sub-cgroup of its scope, as podman's `libpod-ID.scope/container` under systemd). The runtime, the
#: pattern, and whether the match is the ID itself (hex) or a name.
_CGROUP_SHAPES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("docker", re.compile(rf"^docker-({_HEX64})\.scope$")),  # systemd driver: /system.slice/docker-ID.scope
    ("containerd", re.compile(rf"^cri-containerd-({_HEX64})\.scope$")),  # CRI, systemd driver
    ("cri-o", re.compile(rf"^crio-({_HEX64})\.scope$")),
    ("podman", re.compile(rf"^libpod-({_HEX64})\.scope$")),  # libpod-conmon-ID.scope is the monitor, outside
    ("podman", re.compile(rf"^libpod-({_HEX64})$")),  # cgroupfs driver: /libpod_parent/libpod-ID
    ("systemd-nspawn", re.compile(r"^machine-(.+)\.scope$")),  # /machine.slice/machine-NAME.scope
)
#: Bare hex components below a `docker` or `kubepods*` one: /docker/ID and /kubepods/QOS/podUID/ID (cgroupfs driver).
_BARE_ID = re.compile(rf"^{_HEX64}$")


def parse_nspid(status: dict[str, str]) -> tuple[int, ...] | None:
    """NSpid from /proc/PID/status: the PID in each PID namespace, the reader's first (a 4.1+ kernel)."""
    return status_ids(status, "NSpid")


def read_namespaces(proc: ProcDir) -> Namespaces | None:
    """The namespace inodes from the /proc/PID/ns links; None when none could be read (another user's process)."""
    found: dict[str, int | None] = {}
    for name in NAMESPACE_NAMES:
        try:
            match = _NS_LINK.match(proc.readlink(f"ns/{name}"))
        except OSError:
            match = None
        found[name] = int(match[1]) if match else None
    return Namespaces(**found) if any(v is not None for v in found.values()) else None


def parse_cgroup(raw: bytes) -> str | None:
    """The cgroup path from /proc/PID/cgroup (cgroups(7): "ID:CONTROLLERS:PATH" per hierarchy): the v2 line ("0::"),
    else the v1 name=systemd one, else the first line's. A v2 path of "/" on a hybrid host (v2 mounted but unused,
    as here with v1 controllers) gives way to the v1 systemd path, which then says more."""
    paths: dict[str, str] = {}
    for line in decode(raw).splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            paths.setdefault(parts[1], parts[2])
    v2, systemd = paths.get(""), paths.get("name=systemd")
    if v2 is not None and (v2 != "/" or systemd is None):
        return v2
    if systemd is not None:
        return systemd
    return next(iter(paths.values()), None)


def container_from_cgroup(raw: bytes) -> Container | None:
    """The container that /proc/PID/cgroup names, from any hierarchy's path (a v1 host's docker puts
    /docker/ID in every controller's line), deepest component first."""
    for line in decode(raw).splitlines():
        path = line.split(":", 2)[-1]
        components = [c for c in path.split("/") if c]
        for depth in range(len(components) - 1, -1, -1):
            found = _container_component(components, depth)
            if found is not None:
                return found
    return None


def _container_component(components: list[str], depth: int) -> Container | None:
    component = components[depth]
    for runtime, shape in _CGROUP_SHAPES:
        match = shape.match(component)
        if match:
            ident = match[1] if runtime != "systemd-nspawn" else unescape_systemd(match[1])
            return Container(runtime, ident, "cgroup")
    if _BARE_ID.match(component):
        above = components[:depth]
        if "docker" in above:
            return Container("docker", component, "cgroup")
        if any(c.startswith("kubepods") for c in above):
            return Container("kubernetes", component, "cgroup")
    return None


def unescape_systemd(name: str) -> str:
    """A unit name's escapes back to the characters (systemd.unit(5): `\\x2d` is "-")."""
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m[1], 16)), name)


def container_from_environ(environ: tuple[tuple[str, str], ...] | None) -> Container | None:
    """The `container=` variable that podman, systemd-nspawn and LXC set for a container's init: a runtime, no ID."""
    for key, value in environ or ():
        if key == "container" and value and value.isprintable() and len(value) <= 64:
            return Container(value, None, "environ")
    return None


def read_location(
    proc: ProcDir, status: dict[str, str], environ: tuple[tuple[str, str], ...] | None
) -> ProcessLocation:
    """Where the process lives; a part /proc will not give is None (another user's ns links, an old kernel)."""
    raw = read_cgroup(proc)
    container = container_from_cgroup(raw) if raw else None
    if container is None:
        container = container_from_environ(environ)
    return ProcessLocation(
        ns_pids=parse_nspid(status),
        namespaces=read_namespaces(proc),
        cgroup=parse_cgroup(raw) if raw else None,
        container=container,
    )


def read_cgroup(proc: ProcDir) -> bytes | None:
    try:
        return proc.read("cgroup")
    except OSError:
        return None


def container_of(pid: int) -> Container | None:
    """Only the container `pid` runs in (its cgroup path, else its environment): what `ps` shows of each process,
    at a third of locate's reads (no status, no ns links). None outside one, or once it is gone."""
    try:
        with ProcDir(pid) as proc:
            raw = read_cgroup(proc)
            found = container_from_cgroup(raw) if raw else None
            return found if found is not None else container_from_environ(read_environ(proc))
    except OSError:
        return None


def locate(pid: int) -> ProcessLocation | None:
    """Where `pid` lives, read without stopping it (status, cgroup, the ns links, the environment if readable);
    None once it is gone."""
    try:
        with ProcDir(pid) as proc:
            status = parse_status(read_small(proc.fd, "status"))
            where = read_location(proc, status, None)
            if where.container is None:  # the environment only where the cgroup path says nothing (`ps` is quicker)
                where = replace(where, container=container_from_environ(read_environ(proc)))
            return where
    except OSError:
        return None


def read_dumpable(proc: ProcDir, status: dict[str, str]) -> bool | None:
    """Whether the process is dumpable: the kernel makes /proc/PID root-owned when it is not.

    For a process whose effective uid is root that ownership says nothing, so the answer is None there.
    """
    uids = status_ids(status, "Uid")
    if not uids or uids[1] == 0:
        return None
    return os.stat("status", dir_fd=proc.fd).st_uid == uids[1]


def optional_link(proc: ProcDir, name: str) -> str | None:
    """A /proc symlink that may legitimately be unreadable (kernel threads, other users' processes)."""
    try:
        return decode(os.fsencode(proc.readlink(name)))
    except (PermissionError, FileNotFoundError):
        return None


def read_environ(proc: ProcDir) -> tuple[tuple[str, str], ...] | None:
    try:
        raw = proc.read("environ")
    except PermissionError:
        return None
    pairs = []
    for item in raw.split(b"\0"):
        if not item:
            continue
        key, _, value = item.partition(b"=")
        pairs.append((decode(key), decode(value)))
    return tuple(pairs)


def read_auxv(proc: ProcDir) -> bytes | None:
    try:
        return proc.read("auxv")
    except PermissionError:
        return None


PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def read_usage(proc: ProcDir, *, fds: bool, thread_states: bool) -> ResourceSample:
    """What `watch` samples, as cheaply as /proc allows: one read of stat, and the fd table or each thread's stat
    only when a trigger needs them. OSError once the process is gone (ProcDir: never a reused PID)."""
    st = parse_stat(read_small(proc.fd, "stat"))
    if st.exited:
        raise ProcessLookupError(f"process {proc.pid} has exited")
    states: tuple[tuple[int, str], ...] = ()
    if thread_states:
        found = []
        for tid in proc.listdir("task"):
            try:
                found.append((int(tid), parse_stat(read_small(proc.fd, f"task/{tid}/stat")).state))
            except (OSError, ValueError):
                continue  # the thread ended between the listing and the read
        states = tuple(found)
    return ResourceSample(
        at=time.monotonic(),
        cpu_seconds=(st.utime + st.stime) / CLK_TCK,
        rss=st.rss * PAGE_SIZE,
        threads=st.num_threads,
        fds=count_fds(proc) if fds else None,
        thread_states=states,
    )


def read_wait_places(proc: ProcDir) -> dict[int, dict[str, str | None]]:
    """Where each thread waits (its syscall and kernel wait channel), for the `hang` event."""
    places: dict[int, dict[str, str | None]] = {}
    for tid in proc.listdir("task"):
        try:
            wchan = proc.read_text(f"task/{tid}/wchan").strip() or None
        except OSError:
            wchan = None
        try:
            call = parse_syscall(proc.read(f"task/{tid}/syscall"))
        except OSError:
            call = None
        places[int(tid)] = {
            "syscall": call.name if call is not None else None,
            "wchan": wchan if wchan != "0" else None,
        }
    return places


def count_fds(proc: ProcDir) -> int | None:
    try:
        return len(proc.listdir("fd"))
    except PermissionError:
        return None


def list_tids(proc: ProcDir) -> list[int]:
    return sorted(int(t) for t in proc.listdir("task"))


def read_thread(proc: ProcDir, tid: int, boot: float | None = None) -> ThreadEntry:
    """The scheduler's view of one thread, without registers (those need the thread stopped). `boot` is boot_time(),
    read once by a caller that reads many threads."""
    base = f"task/{tid}/"
    st = parse_stat(proc.read(base + "stat"))
    status = parse_status(proc.read(base + "status"))
    try:
        syscall = parse_syscall(proc.read(base + "syscall"))
    except OSError:
        syscall = None
    return ThreadEntry(
        tid=tid,
        name=st.comm,
        state=ThreadState.from_code(st.state),
        flags=ThreadFlags.NONE,
        user_time=ticks(st.utime),
        system_time=ticks(st.stime),
        start_time=(boot_time() if boot is None else boot) + ticks(st.starttime),
        priority=st.priority,
        base_priority=st.priority,  # the one kernel priority a Linux thread has, as ProcessInfo.base_priority
        affinity=affinity(tid),
        processor=st.processor,
        syscall=syscall,
        sig_blocked=status_hex(status, "SigBlk"),
        sig_pending=status_hex(status, "SigPnd"),
        context=None,
        nice=st.nice,
    )


# ---- the fd table -------------------------------------------------------------------------------------------

ANON_TYPES = {
    "[eventfd]": HandleType.EVENTFD,
    "[eventpoll]": HandleType.EPOLL,
    "[timerfd]": HandleType.TIMERFD,
    "[signalfd]": HandleType.SIGNALFD,
    "inotify": HandleType.INOTIFY,
    "[fanotify]": HandleType.FANOTIFY,
    "[pidfd]": HandleType.PIDFD,
    "[io_uring]": HandleType.IO_URING,
}

SEAL_NAMES = ((0x1, "SEAL"), (0x2, "SHRINK"), (0x4, "GROW"), (0x8, "WRITE"), (0x10, "FUTURE_WRITE"), (0x20, "EXEC"))


def classify_link(target: str, mode: int | None) -> tuple[HandleType, str | None, int | None]:
    """(type, name, inode) for a /proc/PID/fd link target such as `socket:[123]` or `/memfd:x (deleted)`."""
    if target.startswith("/"):
        return classify_path(target, mode)
    for prefix, kind in (("socket:[", HandleType.SOCKET), ("pipe:[", HandleType.PIPE)):
        if target.startswith(prefix) and target.endswith("]"):
            return kind, target, int(target[len(prefix) : -1])
    if target.startswith("anon_inode:"):
        kind = ANON_TYPES.get(target[len("anon_inode:") :], HandleType.ANON_INODE)
        return kind, target, None
    if target.startswith("pidfd:"):
        return HandleType.PIDFD, target, None
    return HandleType.UNKNOWN, target, None


def classify_path(target: str, mode: int | None) -> tuple[HandleType, str | None, int | None]:
    if mode is not None and stat.S_ISREG(mode):
        return (HandleType.MEMFD if target.startswith("/memfd:") else HandleType.FILE), target, None
    if mode is None:
        return HandleType.UNKNOWN, target, None
    if stat.S_ISDIR(mode):
        return HandleType.DIRECTORY, target, None
    if stat.S_ISFIFO(mode):
        return HandleType.FIFO, target, None
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return HandleType.DEVICE, target, None
    if stat.S_ISSOCK(mode):
        return HandleType.SOCKET, target, None
    return HandleType.FILE, target, None


FILE_FDINFO = re.compile(rb"pos:\s+(\d+)\nflags:\s+([0-7]+)\nmnt_id:\s+(\d+)\n")
FDINFO_LINE = re.compile(r"^([^:\n]+):[ \t]*(.*)$", re.M)
REPEATED_FDINFO = ("tfd", "inotify ", "fanotify ")


def parse_fdinfo(raw: bytes) -> tuple[dict[str, str], list[str]]:
    """fdinfo's `key: value` lines, plus the repeated per-target lines (epoll `tfd:`, inotify `inotify wd:`).

    One regex pass in C: this runs once per fd, and a process may hold hundreds of thousands.
    """
    text = raw.decode("utf-8", "backslashreplace")
    pairs = FDINFO_LINE.findall(text)
    if not any(marker in text for marker in REPEATED_FDINFO):
        return dict(pairs), []
    fields: dict[str, str] = {}
    repeated: list[str] = []
    for key, value in pairs:
        if key.startswith(REPEATED_FDINFO):
            repeated.append(f"{key}:{value}")
        else:
            fields[key] = value
    return fields, repeated


def memfd_seals(proc: ProcDir, fd: int) -> int | None:
    """The seals of a memfd the process holds, through a fresh read-only open of its /proc fd link.

    Only called for a regular file whose link names a memfd, so the open can have no side effect.
    """
    import fcntl

    try:
        local = os.open(f"fd/{fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK, dir_fd=proc.fd)
    except OSError:
        return None
    try:
        return fcntl.fcntl(local, fcntl.F_GET_SEALS)
    except OSError:
        return None
    finally:
        os.close(local)


def seal_names(seals: int) -> str:
    return "|".join(name for bit, name in SEAL_NAMES if seals & bit) or "none"


@record
class SocketInfo:
    family: str
    detail: tuple[tuple[str, str | int], ...]


TCP_STATES = {
    1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
    7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING",
}  # fmt: skip
UNIX_TYPES = {1: "STREAM", 2: "DGRAM", 5: "SEQPACKET"}


def read_sockets(proc: ProcDir) -> dict[int, SocketInfo]:
    """Socket inode → family and endpoints, from the process's own network namespace tables."""
    table: dict[int, SocketInfo] = {}
    try:
        unix = proc.read_text("net/unix").splitlines()[1:]
    except OSError:
        unix = []
    for line in unix:
        parts = line.split()
        if len(parts) < 7:
            continue
        detail: list[tuple[str, str | int]] = [("socket_type", UNIX_TYPES.get(int(parts[4], 16), parts[4]))]
        if len(parts) > 7:
            detail.append(("path", parts[7]))
        table[int(parts[6])] = SocketInfo("unix", tuple(detail))
    for name, family in (("tcp", "tcp"), ("tcp6", "tcp6"), ("udp", "udp"), ("udp6", "udp6")):
        try:
            lines = proc.read_text(f"net/{name}").splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 10:
                continue
            state = int(parts[3], 16)
            table[int(parts[9])] = SocketInfo(
                family,
                (
                    ("local", format_inet(parts[1])),
                    ("remote", format_inet(parts[2])),
                    ("state", TCP_STATES.get(state, str(state)) if family.startswith("tcp") else str(state)),
                ),
            )
    return table


def format_inet(field: str) -> str:
    """`0100007F:1F90` (host-order hex words) → `127.0.0.1:8080`; IPv6 as bracketed hex groups."""
    address, _, port = field.partition(":")
    raw = bytes.fromhex(address)
    words = [raw[i : i + 4][::-1] for i in range(0, len(raw), 4)]
    host = b"".join(words)
    if len(host) == 4:
        text = ".".join(str(b) for b in host)
    else:
        import ipaddress

        text = f"[{ipaddress.IPv6Address(host).compressed}]"
    return f"{text}:{int(port, 16)}"


@record(frozen=False)
class HandleReader:
    """Reads fd table entries; `names`, `basic` and `type_specific` follow PSS_CAPTURE_HANDLE_*_INFORMATION."""

    proc: ProcDir
    names: bool
    basic: bool
    type_specific: bool
    sockets: dict[int, SocketInfo] | None = None
    flags: HandleFlags = HandleFlags.HAVE_TYPE
    fd_dir: int = -1
    fdinfo_dir: int = -1

    def __post_init__(self) -> None:
        if self.names:
            self.flags |= HandleFlags.HAVE_NAME
        if self.basic:
            self.flags |= HandleFlags.HAVE_BASIC_INFORMATION
        if self.type_specific:
            self.flags |= HandleFlags.HAVE_TYPE_SPECIFIC_INFORMATION

    def read_all(self) -> dict[int, HandleEntry]:
        entries = {}
        with self.opened():
            for name in os.listdir(self.fd_dir):
                entry = self.read(int(name))
                if entry is not None:
                    entries[entry.handle] = entry
        return entries

    @contextlib.contextmanager
    def opened(self) -> Iterator[None]:
        """Hold /proc/PID/fd and /proc/PID/fdinfo open, so each per-fd call resolves one path component only."""
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
        self.fd_dir = os.open("fd", flags, dir_fd=self.proc.fd)
        try:
            self.fdinfo_dir = os.open("fdinfo", flags, dir_fd=self.proc.fd)
            try:
                yield
            finally:
                os.close(self.fdinfo_dir)
        finally:
            os.close(self.fd_dir)

    def refresh(self, before: dict[int, HandleEntry]) -> tuple[HandleEntry, ...]:
        """The table now, reusing entries read earlier for fd numbers that are still open.

        Called while the process is frozen, after a full read while it ran: only fds opened in between are read
        again, so the frozen part costs one directory listing. An fd closed and reopened under the same number in
        between keeps its earlier entry; that window is the capture's own duration.
        """
        entries = []
        with self.opened():
            for name in os.listdir(self.fd_dir):
                fd = int(name)
                entry = before.get(fd) or self.read(fd)
                if entry is not None:
                    entries.append(entry)
        entries.sort(key=lambda e: e.handle)
        return tuple(entries)

    def read(self, fd: int) -> HandleEntry | None:
        """One entry, or None when the fd was closed while we read it. Runs once per fd: kept lean."""
        dir_fd = self.fd_dir
        link = str(fd)
        try:
            target = os.readlink(link, dir_fd=dir_fd)
            is_path = target.startswith("/")
            st = None
            if is_path:  # only a path needs stat to tell a file from a directory, FIFO or device
                try:
                    st = os.stat(link, dir_fd=dir_fd)
                except OSError:
                    st = None
                if st is not None and stat.S_ISREG(st.st_mode) and not target.startswith("/memfd:"):
                    return self.read_file(fd, link, target, st)
            if self.basic or self.type_specific:
                info, repeated = parse_fdinfo(read_small(self.fdinfo_dir, link))
            else:
                info, repeated = {}, []
        except FileNotFoundError:
            return None
        kind: HandleType
        link_name: str | None
        inode: int | None
        if st is not None and stat.S_ISREG(st.st_mode) and not target.startswith("/memfd:"):
            kind, link_name, inode = HandleType.FILE, target, None  # the common case, without the full ladder
        else:
            kind, link_name, inode = classify_link(target, st.st_mode if st else None)
        open_flags = int(info["flags"], 8) if "flags" in info else None
        extra: tuple[tuple[str, str | int], ...] = ()
        if self.type_specific and kind is not HandleType.FILE:
            extra = tuple(self.type_specific_info(fd, kind, inode, info, repeated))
        if inode is None and "ino" in info:
            inode = int(info["ino"])
        name = None
        if self.names and link_name is not None:
            name = link_name if link_name.isascii() else decode(os.fsencode(link_name))
        basic = self.basic
        return HandleEntry(
            handle=fd,
            type=kind,
            type_name=kind.value if is_path or ":" not in target else target.split(":", 1)[0],
            name=name,
            flags=self.flags,
            close_on_exec=bool(open_flags & O_CLOEXEC) if open_flags is not None else None,
            open_flags=open_flags if basic else None,
            position=int(info["pos"]) if basic and "pos" in info else None,
            inode=inode if inode is not None else (st.st_ino if st else None),
            device=st.st_dev if st else None,
            mount_id=int(info["mnt_id"]) if basic and "mnt_id" in info else None,
            type_specific=extra,
        )

    def read_file(self, fd: int, link: str, target: str, st: os.stat_result) -> HandleEntry:
        """A regular file, by far the most common entry: fdinfo's fixed first lines matched in one step."""
        pos = flags = mount = None
        if self.basic or self.type_specific:
            head = FILE_FDINFO.match(read_small(self.fdinfo_dir, link))
            if head is not None:
                pos, flags, mount = int(head[1]), int(head[2], 8), int(head[3])
        name = None
        if self.names:
            name = target if target.isascii() else decode(os.fsencode(target))
        basic = self.basic
        return HandleEntry(
            fd, HandleType.FILE, "file", name, self.flags,
            None if flags is None else bool(flags & O_CLOEXEC),
            flags if basic else None, pos if basic else None, st.st_ino, st.st_dev, mount if basic else None,
        )  # fmt: skip

    def type_specific_info(
        self, fd: int, kind: HandleType, inode: int | None, info: dict[str, str], repeated: list[str]
    ) -> Iterator[tuple[str, str | int]]:
        if kind is HandleType.SOCKET and inode is not None:
            if self.sockets is None:
                self.sockets = read_sockets(self.proc)
            sock = self.sockets.get(inode)
            if sock:
                yield "family", sock.family
                yield from sock.detail
        elif kind is HandleType.MEMFD:
            seals = memfd_seals(self.proc, fd)
            if seals is not None:
                yield "seals", seal_names(seals)
        yield from type_specific_fields(kind, info, repeated)


def type_specific_fields(
    kind: HandleType, info: dict[str, str], repeated: list[str]
) -> Iterator[tuple[str, str | int]]:
    if kind is HandleType.EVENTFD and "eventfd-count" in info:
        yield "count", int(info["eventfd-count"], 16)
        if "eventfd-semaphore" in info:
            yield "semaphore", int(info["eventfd-semaphore"])
    elif kind is HandleType.PIDFD and "Pid" in info:
        yield "pid", int(info["Pid"])
    elif kind is HandleType.TIMERFD:
        for key in ("clockid", "ticks", "it_value", "it_interval"):
            if key in info:
                yield key, info[key]
    elif kind is HandleType.SIGNALFD and "sigmask" in info:
        yield "sigmask", info["sigmask"]
    elif kind in (HandleType.EPOLL, HandleType.INOTIFY, HandleType.FANOTIFY):
        yield "watches", len(repeated)


# ---- the memory map -----------------------------------------------------------------------------------------

SPECIAL_IMAGES = ("[vdso]",)


#: One /proc/PID/maps line: (start, end, perms, offset, dev, inode, path); path is None for anonymous memory.
MapsLine = tuple[int, int, str, int, str, int, str | None]


def parse_maps_line(line: str) -> MapsLine:
    """One /proc/PID/maps line; the path may hold spaces. A plain tuple: a large process has many thousands."""
    parts = line.split(maxsplit=5)
    start, _, end = parts[0].partition("-")
    path = parts[5] if len(parts) > 5 else None
    return int(start, 16), int(end, 16), parts[1], int(parts[2], 16), parts[3], int(parts[4]), path


def read_maps(pid: int, tid: int | None = None) -> list[MapsLine]:
    """/proc/PID/maps by path, or through one thread (a group leader that has exited shows an empty map)."""
    text = read_file(None, task_path(pid, tid, "maps")).decode("utf-8", "surrogateescape")
    return [parse_maps_line(line) for line in text.splitlines()]


@functools.cache
def protection_of(perms: str, file_backed: bool) -> MemoryProtection:
    """Linux `rwxp` as a PAGE_* value; a private writable file mapping is copy-on-write, as on Windows."""
    r, w, x, private = perms[0] == "r", perms[1] == "w", perms[2] == "x", perms[3] == "p"
    cow = private and file_backed
    if x:
        if w:
            return MemoryProtection.EXECUTE_WRITECOPY if cow else MemoryProtection.EXECUTE_READWRITE
        return MemoryProtection.EXECUTE_READ if r else MemoryProtection.EXECUTE
    if w:
        return MemoryProtection.WRITECOPY if cow else MemoryProtection.READWRITE
    return MemoryProtection.READONLY if r else MemoryProtection.NOACCESS


def map_keys(proc: ProcDir) -> list[tuple[int, int, str, str | None]]:
    """(start, end, perms, path) of every mapping, from /proc/PID/maps: cheap, no page-table walk."""
    keys = []
    for line in proc.read_text("maps").splitlines():
        start, end, perms, _, _, _, path = parse_maps_line(line)
        keys.append((start, end, perms, path))
    return keys


def region_keys(regions: Iterable[VaRegion]) -> list[tuple[int, int, str, str | None]]:
    return [(r.base, r.end, r.perms, r.mapped_file) for r in regions]


#: The smaps lines a VaRegion keeps, each a size in kB.
SMAPS_SIZES = frozenset({"Rss", "Pss", "Anonymous", "Swap", "Locked"})
SMAPS_HEADER = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ", re.M)


def read_va_space(proc: ProcDir, *, section_info: bool) -> tuple[VaRegion, ...]:
    """The VA space from maps, or from smaps (Rss, Pss, Anonymous, Swap, Locked, VmFlags) with section info.

    smaps of a large process is megabytes of text; only the lines a region keeps are looked at twice.
    """
    text = proc.read_text("smaps" if section_info else "maps")
    raw: list[tuple[MapsLine, dict[str, int], str | None]] = []
    if not section_info:
        raw = [(parse_maps_line(line), {}, None) for line in text.splitlines()]
    else:
        starts = [m.start() for m in SMAPS_HEADER.finditer(text)]
        starts.append(len(text))
        for begin, end in itertools.pairwise(starts):
            lines = text[begin:end].split("\n")
            sizes: dict[str, int] = {}
            vm_flags = None
            for line in lines[1:]:
                key, _, value = line.partition(":")
                if key in SMAPS_SIZES:
                    sizes[key] = int(value.split(None, 1)[0]) * 1024
                elif key == "VmFlags":
                    vm_flags = value
            raw.append((parse_maps_line(lines[0]), sizes, vm_flags))
    images = {path for (_, _, perms, _, _, inode, path), _, _ in raw if path and inode and perms[2] == "x"}
    return tuple(make_region(fields, sizes, vm_flags, images) for fields, sizes, vm_flags in raw)


def make_region(
    fields: MapsLine,
    sizes: dict[str, int],
    vm_flags: str | None,
    images: Iterable[str],
) -> VaRegion:
    start, end, perms, offset, dev, inode, path = fields
    file_backed = bool(inode)
    if path is not None and (path in SPECIAL_IMAGES or (file_backed and path in images)):
        kind = MemoryType.IMAGE
    elif file_backed or perms[3] == "s":
        kind = MemoryType.MAPPED
    else:
        kind = MemoryType.PRIVATE
    return VaRegion(
        base=start,
        size=end - start,
        perms=perms,
        protection=protection_of(perms, file_backed),
        state=MemoryState.RESERVE if perms[:3] == "---" else MemoryState.COMMIT,
        type=kind,
        mapped_file=path,
        offset=offset if file_backed else None,
        device=dev if file_backed else None,
        inode=inode if file_backed else None,
        rss=sizes.get("Rss"),
        pss=sizes.get("Pss"),
        anonymous=sizes.get("Anonymous"),
        swap=sizes.get("Swap"),
        locked=sizes.get("Locked"),
        vm_flags=tuple(vm_flags.split()) if vm_flags is not None else None,
        allocation_base=start,
    )


# ---- the process list, for `ps` and shell completion ----------------------------------------------------------

#: `flags` in /proc/PID/stat (include/linux/sched.h): the task is a kernel thread, with no user space to capture.
PF_KTHREAD = 0x00200000
#: The name every pss-dup snapshot memfd is created with (memfd_create); readlink shows "/memfd:NAME (deleted)".
SNAPSHOT_MEMFD_NAME = "pss-snapshot"
SNAPSHOT_LINK = f"/memfd:{SNAPSHOT_MEMFD_NAME} (deleted)"


def process_exists(pid: int) -> bool:
    """Whether `pid` is a process (a zombie counts): /proc/TID answers for any thread too, so Tgid must be `pid`."""
    try:
        return read_status(pid).get("Tgid") == str(pid)
    except OSError:
        return False


def list_pids() -> list[int]:
    """Every PID /proc shows, in order (threads live under /proc/PID/task, not here); empty if /proc is unreadable."""
    try:
        return sorted(int(e.name) for e in os.scandir("/proc") if e.name.isdigit())
    except OSError:
        return []


def live_processes() -> Iterator[tuple[int, str]]:
    """(pid, comm) of every process pss-dup could act on, this one excluded: no kernel threads, no zombies.

    Only /proc/PID/stat is read, never a command line: shell completion calls this on every TAB.
    """
    own = os.getpid()
    for pid in list_pids():
        if pid == own:
            continue
        try:
            st = read_stat(pid)
        except (OSError, ValueError):
            continue
        if not st.exited and not st.flags & PF_KTHREAD:
            yield pid, st.comm


def list_processes(*, kernel_threads: bool) -> Iterator[ListedProcess]:
    """Every process, this one excluded (kernel threads only if asked: for those only their stat is read), as psutil
    would list them: one that exits while it is read is left out."""
    own = os.getpid()
    users: dict[int, str] = {}
    boot = boot_time()
    for pid in list_pids():
        found = read_listed(pid, kernel_threads=kernel_threads, users=users, boot=boot) if pid != own else None
        if found is not None:
            yield found


def read_listed(
    pid: int, *, kernel_threads: bool = True, users: dict[int, str] | None = None, boot: float | None = None
) -> ListedProcess | None:
    """`pid` as psutil's Process.as_dict gives it (field for field); None once it is gone, or if it is a kernel
    thread and those are not wanted. `users` caches user names by uid, `boot` the boot time, across one listing."""
    try:
        with ProcDir(pid) as proc:
            users = {} if users is None else users
            return read_listed_in(proc, kernel_threads, users, boot_time() if boot is None else boot)
    except PermissionError:  # a /proc that hides other users' processes (hidepid): psutil gives every field None
        return ListedProcess(pid, None, None, None, None, None, None, None, None, None, None)
    except (FileNotFoundError, ProcessLookupError, ValueError):  # gone before or while it was read
        return None


def read_listed_in(proc: ProcDir, kernel_threads: bool, users: dict[int, str], boot: float) -> ListedProcess | None:
    """What read_listed says of an open /proc/PID. A file /proc refuses leaves its fields None (psutil's
    AccessDenied); FileNotFoundError or ProcessLookupError once the process is gone."""
    st = allowed(lambda: parse_stat(read_small(proc.fd, "stat"), os.fsdecode))
    if st is not None and st.flags & PF_KTHREAD and not kernel_threads:
        return None
    status = allowed(lambda: parse_status(read_small(proc.fd, "status")))
    zombie = st is not None and st.state == "Z"
    cmdline = allowed(lambda: read_cmdline(proc))
    if zombie and not cmdline:  # a zombie's command line is gone: psutil's ZombieProcess, hence None
        cmdline = None
    uids = status_ids(status, "Uid") if status is not None else None
    uid = uids[0] if uids else None
    # rss: status VmRSS is statm's exact count (psutil reads statm; none for a zombie or a kernel thread: 0), where
    # stat's rss field is only the per-CPU counters' estimate on recent kernels, pages off.
    return ListedProcess(
        pid=proc.pid,
        ppid=st.ppid if st is not None else None,
        name=long_name(st.comm, cmdline) if st is not None else None,
        exe=allowed(lambda: read_exe(proc, zombie)),
        cmdline=cmdline,
        user=user_name(uid, users) if uid is not None else None,
        uid=uid,
        threads=int(status["Threads"]) if status is not None else None,
        handles=allowed(lambda: len(proc.listdir("fd"))),
        rss=(status_kib(status, "VmRSS") or 0) if status is not None else None,
        create_time=boot + ticks(st.starttime) if st is not None else None,
    )


def allowed(read: Callable[[], T]) -> T | None:
    """What `read` gives, None where /proc refuses it (another user's process): that field is unknown, the process
    is not gone."""
    try:
        return read()
    except PermissionError:
        return None


def read_cmdline(proc: ProcDir) -> tuple[str, ...]:
    """The command line as psutil splits it; empty for a kernel thread (or a zombie).

    psutil reads it as text in universal-newline mode (a CR or CRLF in an argument reads as LF), then splits at NUL,
    or at spaces where a process rewrote its command line with spaces (setproctitle: then no NUL ends it, or one
    NUL ends a single string that holds spaces).
    """
    text = os.fsdecode(read_file(proc.fd, "cmdline")).replace("\r\n", "\n").replace("\r", "\n")
    if not text:
        return ()
    separator = "\0" if text.endswith("\0") else " "
    text = text.removesuffix(separator)
    args = text.split(separator)
    if separator == "\0" and len(args) == 1 and " " in text:
        args = text.split(" ")
    return tuple(args)


#: Linux keeps 15 characters of a name (TASK_COMM_LEN - 1).
COMM_LENGTH = 15


def long_name(comm: str, cmdline: tuple[str, ...] | None) -> str:
    """psutil's name: `comm`, or argv[0]'s basename where `comm` was cut at 15 characters and that starts with it."""
    if len(comm) >= COMM_LENGTH and cmdline:
        whole = os.path.basename(cmdline[0])
        if whole.startswith(comm):
            return whole
    return comm


def read_exe(proc: ProcDir, zombie: bool) -> str | None:
    """The executable's path as psutil reads it: "" where there is none (a kernel thread), None for a zombie that
    lost it; " (deleted)" dropped where no file has that path any more."""
    try:
        path = proc.readlink("exe").split("\0")[0]
    except FileNotFoundError:
        return None if zombie else ""
    if path.endswith(" (deleted)"):
        try:
            os.stat(path)
        except OSError:
            path = path.removesuffix(" (deleted)")
    return path


def user_name(uid: int, users: dict[int, str]) -> str:
    """The name of `uid` (its number where it has none), from `users` once looked up."""
    name = users.get(uid)
    if name is None:
        import pwd

        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        users[uid] = name
    return name


def snapshot_fds(pid: int) -> tuple[int, ...] | None:
    """The fds of `pid` named like pss-dup snapshots, or None when its fd table cannot be read.

    Only readlink, never open: looking must not disturb the process or its files. Any memfd may carry the name,
    so this nominates; memfd.held_snapshots checks the nominees.
    """
    found = []
    try:
        with os.scandir(f"/proc/{pid}/fd") as entries:
            for entry in entries:
                try:
                    if os.readlink(entry.path) == SNAPSHOT_LINK:
                        found.append(int(entry.name))
                except (OSError, ValueError):
                    continue
    except OSError:
        return None
    return tuple(sorted(found))


def fd_size(pid: int, fd: int) -> int | None:
    """The size of the file behind fd `fd` of `pid` (stat through /proc, which opens nothing); None if unknown."""
    try:
        return os.stat(f"/proc/{pid}/fd/{fd}").st_size
    except OSError:
        return None

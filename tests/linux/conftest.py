"""Fixtures for the tracing tests: targets that the tests start themselves, always reaped, and /proc probes.

Targets report over a pipe, read here with select() and no helper thread: a thread in the test process that does
not block SIGCHLD would take the ptrace-stop notifications the tracer waits for.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import need_tools

TARGETS = Path(__file__).parent / "targets"
BLOCKER = TARGETS / "blocker.py"
REPO = Path(__file__).resolve().parents[2]
#: The system interpreter: readable by `nobody` (the venv's may live under /root), stdlib only is needed.
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
F_ADD_SEALS = 1033
ALL_SEALS = 0x1 | 0x2 | 0x4 | 0x8  # F_SEAL_SEAL | SHRINK | GROW | WRITE
PAYLOAD = b"pss-dup test payload 0123456789"


class Target:
    """A running test target: its process, its stdout as lines or JSON events, its stdin for commands."""

    def __init__(self, argv: list[str], **popen: Any) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, **popen)
        assert self.proc.stdout is not None
        self._out = self.proc.stdout.fileno()
        self._buffer = b""
        self.seen: list[Any] = []

    @property
    def pid(self) -> int:
        return self.proc.pid

    def line(self, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"target {self.pid} said nothing for {timeout} s (seen: {self.seen})")
            ready, _, _ = select.select([self._out], [], [], remaining)
            if ready:
                chunk = os.read(self._out, 65536)
                if not chunk:
                    raise AssertionError(f"target {self.pid} closed its output (seen: {self.seen})")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def event(self, name: str, timeout: float = 10) -> dict[str, Any]:
        """The next JSON event called `name`; the ones before it are kept in `seen`."""
        while True:
            record = json.loads(self.line(timeout))
            self.seen.append(record)
            if record.get("event") == name:
                return dict(record)

    def expect(self, prefix: str, timeout: float = 10) -> str:
        while True:
            line = self.line(timeout)
            self.seen.append(line)
            if line.startswith(prefix):
                return line

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")

    def reap(self) -> None:
        if self.proc.poll() is None:
            for signo in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(self.pid, signo)
                except ProcessLookupError:
                    break
        self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
def spawn() -> Iterator[Callable[..., Target]]:
    """Start targets; every one is killed (after SIGCONT) and reaped at the end of the test, whatever happened."""
    started: list[Target] = []

    def start(argv: list[str], **popen: Any) -> Target:
        target = Target(argv, **popen)
        started.append(target)
        return target

    try:
        yield start
    finally:
        for target in started:
            target.reap()


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mount a tmpfs of a given size ("4m", as mount(8) takes it) under tmp_path, for a filesystem that fills up for
    real; every one is unmounted at the end, lazily if a test left something open on it."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        where = tmp_path / f"tmpfs{len(mounted)}"
        where.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
                                capture_output=True, text=True, timeout=30)  # fmt: skip
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(where)
        return where

    try:
        yield mount
    finally:
        for where in reversed(mounted):
            subprocess.run(["umount", "--lazy", str(where)], capture_output=True, timeout=30)


@pytest.fixture
def blocker(spawn: Callable[..., Target]) -> Callable[..., Target]:
    """Start tests/linux/targets/blocker.py in a mode; returns once it has reported "ready"."""

    def start(*args: str, **popen: Any) -> Target:
        target = spawn([SYSTEM_PYTHON, str(BLOCKER), *args], **popen)
        target.ready = target.event("ready")  # type: ignore[attr-defined]
        return target

    return start


@pytest.fixture(scope="session")
def threads_exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/linux/targets/threads.c, compiled once per run."""
    need_tools("gcc")
    out = tmp_path_factory.mktemp("ctargets") / "threads"
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-pthread", "-o", str(out), str(TARGETS / "threads.c")], check=True, timeout=120
    )
    return out


@pytest.fixture
def c_target(spawn: Callable[..., Target], threads_exe: Path) -> Callable[..., Target]:
    """Start the C target in a mode; returns once it has printed "ready"."""

    def start(*args: str) -> Target:
        target = spawn([str(threads_exe), *args])
        target.expect("ready")
        return target

    return start


# ---- probes -------------------------------------------------------------------------------------------------


def status_field(pid: int, key: str, tid: int | None = None) -> str:
    path = f"/proc/{pid}/status" if tid is None else f"/proc/{pid}/task/{tid}/status"
    with open(path, errors="backslashreplace") as f:  # Name may be any bytes
        for line in f:
            if line.startswith(key + ":"):
                return line.split(":", 1)[1].strip()
    raise KeyError(key)


def state(pid: int, tid: int | None = None) -> str:
    return status_field(pid, "State", tid)[0]


def tids(pid: int) -> set[int]:
    return {int(t) for t in os.listdir(f"/proc/{pid}/task")}


def tracer_pids(pid: int) -> dict[int, int]:
    """TracerPid of every thread of `pid` (threads that vanish meanwhile are skipped)."""
    result = {}
    for tid in tids(pid):
        try:
            result[tid] = int(status_field(pid, "TracerPid", tid))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return result


def wait_until(predicate: Callable[[], bool], timeout: float = 10, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def blocked_in(pid: int, numbers: set[int], tid: int | None = None) -> bool:
    """Is the thread blocked in one of these system calls (per /proc/PID/task/TID/syscall)?"""
    try:
        with open(f"/proc/{pid}/task/{tid or pid}/syscall") as f:
            first = f.read().split()[0]
    except (OSError, IndexError):
        return False
    return first.lstrip("-").isdigit() and int(first) in numbers and state(pid, tid or pid) in "SD"


def wait_blocked(pid: int, numbers: set[int], tid: int | None = None, timeout: float = 10) -> None:
    wait_until(lambda: blocked_in(pid, numbers, tid), timeout, f"thread {tid or pid} to block in {numbers}")


def sealed_memfd(data: bytes = PAYLOAD) -> int:
    """A sealed memfd holding `data`: what a snapshot looks like from the outside, for now."""
    fd = os.memfd_create("pss-test", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.write(fd, data)
    fcntl.fcntl(fd, F_ADD_SEALS, ALL_SEALS)
    return fd


def children_of(pid: int) -> list[int]:
    """PIDs whose parent is `pid`, from every /proc/PID/stat (a VA clone must never be left behind)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    if int(f.read().rsplit(b")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return found


def drain_terminal(leader: int) -> bytes:
    """Everything written to a pty until its last writer closed it (Linux then reports EIO, not an empty read)."""
    drawn = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        drawn += chunk
    return drawn


def own_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def own_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def own_rss_kib() -> int:
    return int(status_field(os.getpid(), "VmRSS").split()[0])


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def run_tool(code: str, *, uid: int | None = None, drop_caps: str | None = None, timeout: float = 60) -> Any:
    """Run Python `code` in a fresh interpreter with pss_cli importable, optionally as another user or without
    a capability (setpriv), the way a user would run the tool."""
    command = [SYSTEM_PYTHON if uid is not None else sys.executable, "-c", code]
    if uid is not None:
        command = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *command]
    if drop_caps is not None:
        command = ["setpriv", f"--inh-caps=-{drop_caps}", f"--bounding-set=-{drop_caps}", *command]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)}
    )


@contextlib.contextmanager
def big_process(mib: int) -> Iterator[subprocess.Popen[bytes]]:
    """A Python process with `mib` MiB of written memory, whose dump copies long enough to be interrupted at many
    points; killed and reaped on exit."""
    code = f"import sys\ndata = bytearray(b'\\x01') * ({mib} << 20)\nprint('ready', flush=True)\nsys.stdin.read()\n"
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        yield proc
    finally:
        proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


def compile_c(factory: pytest.TempPathFactory, name: str, source: str, *flags: str) -> Path:
    """A C program written by a test, compiled once into a temporary directory of its own."""
    need_tools("gcc")
    work = factory.mktemp(name)
    (work / f"{name}.c").write_text(source)
    subprocess.run(["gcc", *flags, "-o", str(work / name), str(work / f"{name}.c")], check=True, timeout=120)
    return work / name

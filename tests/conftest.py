"""Fixtures that start real target processes and always reap them, and run the installed `pss-dup`."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest
from hypothesis import settings

PF_KTHREAD = 0x00200000
TARGETS = Path(__file__).parent / "targets"
PSS_DUP = str(Path(sys.executable).with_name("pss-dup"))
#: CI=true (GitHub Actions sets it, and so does .ci/run): every tool the tests use must be there.
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

# Property tests that do not set max_examples themselves: the full count in CI, a tenth of it locally (the parser
# fuzz test alone took 73 s at the full count on two cores).
settings.register_profile("ci", max_examples=300)
settings.register_profile("local", max_examples=30)
settings.load_profile("ci" if IN_CI else "local")


def missing_tool(reason: str) -> NoReturn:
    """Skip a test that cannot run for want of a tool; under CI fail it instead, since a proof that skips in CI
    proves nothing and .ci/run installs every tool the tests use."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: install it in .ci/run)", pytrace=False)
    pytest.skip(reason)


def need_tools(*names: str) -> None:
    """The test runs these programs: each must be on PATH (see missing_tool)."""
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        missing_tool(f"needs {' and '.join(missing)}")


@dataclass
class Target:
    proc: subprocess.Popen[str]
    info: dict[str, Any]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def echo(self, line: str) -> str:
        """Proves the target still runs and answers: it echoes a line back."""
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()


def reap(proc: subprocess.Popen[Any]) -> None:
    """Kill and wait for a child, then close its pipes. SIGCONT first, so that a stopped child dies at once (Windows
    has no SIGCONT and no stopped processes)."""
    if proc.poll() is None:
        try:
            if sys.platform != "win32":  # Windows has no SIGCONT (nor stopped processes)
                os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
        except ProcessLookupError:
            pass
    proc.wait(timeout=10)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def start_target(*args: str, env: dict[str, str] | None = None) -> Target:
    proc = subprocess.Popen(
        [sys.executable, str(TARGETS / "busy_target.py"), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout
    line = proc.stdout.readline()
    if not line:
        reap(proc)
        raise RuntimeError("target did not start")
    return Target(proc, json.loads(line))


@pytest.fixture
def target() -> Iterator[Target]:
    t = start_target("3", env={"PSS_TEST_MARKER": "marker-value-42"})
    try:
        yield t
    finally:
        reap(t.proc)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "300"])
    try:
        yield proc
    finally:
        reap(proc)


def run_cli(*args: str, uid: int | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The installed console script, as a user would run it (optionally as another user, via setpriv)."""
    command = [PSS_DUP, *args]
    if uid is not None:
        command = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *command]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env={**os.environ, "COLUMNS": "200"}
    )


def proc_status(pid: int) -> dict[str, str]:
    result = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            result[key] = value.strip()
    return result


#: A process with a chosen name that holds one pss-dup snapshot (of itself, process information only) and one other
#: memfd, then waits for EOF. With "decoys" it also holds two memfds named like snapshots that are not: one unsealed,
#: one sealed whose content is not a pss-dup core.
HOLDER = r"""
import ctypes, fcntl, os, sys
import pss_cli
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)
local = pss_cli.capture_snapshot(os.getpid(), pss_cli.CaptureFlags.NONE)
fds = [local.handle(), os.memfd_create("not-a-snapshot", 0)]
if sys.argv[2:] == ["decoys"]:
    for seals in (0, fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE):
        decoy = os.memfd_create("pss-snapshot", os.MFD_ALLOW_SEALING)
        os.write(decoy, b"x" * 3000)
        fcntl.fcntl(decoy, fcntl.F_ADD_SEALS, seals)
        fds.append(decoy)
print(*fds, flush=True)
sys.stdin.read()
"""


@dataclass
class Holder:
    proc: subprocess.Popen[str]
    name: str
    snapshot_fd: int
    other_fd: int
    decoy_fds: tuple[int, ...]

    @property
    def pid(self) -> int:
        return self.proc.pid


def start_holder(name: str, *, decoys: bool = False) -> Holder:
    """A HOLDER process named `name`; the caller reaps it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, name, *(["decoys"] if decoys else [])],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout
    fds = [int(word) for word in proc.stdout.readline().split()]
    if len(fds) != (4 if decoys else 2):
        reap(proc)
        raise RuntimeError("holder did not start")
    return Holder(proc, name, fds[0], fds[1], tuple(fds[2:]))


#: A Python child that names itself argv[1] (prctl PR_SET_NAME), says so with an empty line, and waits on stdin.
NAMED = "import ctypes, sys; ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0); print(flush=True); input()"


@contextlib.contextmanager
def named_process(name: str) -> Iterator[subprocess.Popen[bytes]]:
    """A NAMED child called `name`, running and named once this yields; reaped after."""
    proc = subprocess.Popen([sys.executable, "-c", NAMED, name], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        yield proc
    finally:
        reap(proc)


def stat_fields(pid: int) -> list[str]:
    """The fields after `comm` in /proc/PID/stat, read as bytes: any process on the host may have a comm that is
    not UTF-8. A process that is gone reads as state X."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return ["X"] + ["0"] * 10
    return raw.rpartition(b")")[2].decode("ascii").split()


def kernel_thread_pids() -> set[int]:
    """Every kernel thread on the host (PF_KTHREAD in /proc/PID/stat)."""
    pids = (int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit())
    return {pid for pid in pids if int(stat_fields(pid)[6]) & PF_KTHREAD}


def a_kernel_thread() -> int:
    """A kernel thread that /proc shows here. PID 2 is kthreadd only in the initial PID namespace; in a container
    no kernel thread may be visible, and then the test skips."""
    pids = kernel_thread_pids()
    if not pids:
        pytest.skip("no kernel thread is visible in this PID namespace")
    return min(pids)

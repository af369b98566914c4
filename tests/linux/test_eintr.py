"""No stray EINTR: a call that pss-dup's own stop ends with EINTR is issued again unseen, and only that one.

tests/linux/targets/eintr.c blocks again and again in one call through a raw syscall() and aborts on an EINTR
it did not expect, so a leaked one kills it; it prints how long each call with a finite timeout took.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pss_cli.errors import Refused
from pss_cli.model import CaptureFlags, Interruption
from pss_cli.platform.linux import backend, inject, restart
from pss_cli.platform.linux.freeze import FrozenProcess
from tests.linux.conftest import TARGETS, Target, sealed_memfd, status_field

ROUNDS = 20
TIMEOUT_MS = 300
#: A call with a finite timeout must end about when the program asked. Late: this VM's timer wake-ups overshoot by
#: up to ~170 ms with no tracing at all (design notes). Early: pss-dup reads how long the call had waited from the
#: scheduler's per-CPU task clock, placed on CLOCK_MONOTONIC by an offset measured at the stop; time stolen from
#: that CPU by the host while the thread waited counts as waited (measured here: up to ~5% of the wait on a busy
#: 2-vCPU VM; nothing on bare metal).
LATE_MS = 250
EARLY_MS = TIMEOUT_MS * 0.05 + 10
INFINITE = ("epoll_wait", "epoll_pwait", "epoll_pwait2", "semop", "semtimedop", "sigtimedwait", "io_getevents")
BY_VALUE = ("epoll_wait", "epoll_pwait")
TIMESPEC = ("epoll_pwait2", "semtimedop", "sigtimedwait", "io_getevents", "recv_timeout")
SYSCALLS = {"epoll_wait": 232, "epoll_pwait": 281, "epoll_pwait2": 441, "semop": 65, "semtimedop": 220,
            "sigtimedwait": 128, "io_getevents": 208, "recv_timeout": 45}  # fmt: skip


@pytest.fixture(scope="session")
def eintr_exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eintr") / "eintr"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(out), str(TARGETS / "eintr.c")], check=True, timeout=120)
    return out


@pytest.fixture
def memfd() -> Iterator[int]:
    fd = sealed_memfd()
    try:
        yield fd
    finally:
        os.close(fd)


@pytest.fixture
def blocked(spawn: Callable[..., Target], eintr_exe: Path) -> Callable[..., Target]:
    def start(call: str, timeout_ms: int, *extra: str) -> Target:
        target = spawn([str(eintr_exe), call, str(timeout_ms), *extra])
        target.expect("ready")
        deadline = time.monotonic() + 5
        while not _in_call(target.pid, SYSCALLS[call]):
            assert time.monotonic() < deadline, f"{call} never blocked"
            time.sleep(0.005)
        return target

    return start


def _in_call(pid: int, nr: int) -> bool:
    try:
        with open(f"/proc/{pid}/syscall") as f:
            return f.read().split()[0] == str(nr)
    except (OSError, IndexError):
        return False


def _stop_it_every_way(target: Target, memfd: int, tmp_path: Path, *, force: bool) -> list[Interruption]:
    """capture, dump, dup and free, ROUNDS times each, in turn; every interruption they report."""
    seen: list[Interruption] = []
    flags = CaptureFlags.THREADS | CaptureFlags.THREAD_CONTEXT | CaptureFlags.HANDLES
    impl = backend.LinuxBackend()
    for n in range(ROUNDS):
        with backend.capture(target.pid, flags, timeout=5) as snap:
            seen.extend(snap.model.interruptions or ())
        model = impl.dump(target.pid, tmp_path / f"{n}.core", force=False, timeout=5)
        seen.extend(model.interruptions or ())
        os.unlink(tmp_path / f"{n}.core")
        pushed = inject.push_fd(target.pid, memfd, cloexec=True, force=force, timeout=5)
        seen.extend(pushed.interruptions)
        closed = inject.close_remote_fd(target.pid, pushed.fd, verify=lambda _fd: None, force=force, timeout=5)
        seen.extend(closed.interruptions)
        assert target.proc.poll() is None, f"the target died (round {n}): {target.seen}"
    return seen


def _lines(target: Target, settle: float) -> list[str]:
    """What the target printed so far (after `settle` seconds for a last call to end)."""
    time.sleep(settle)
    out = []
    while True:
        try:
            out.append(target.line(timeout=0.05))
        except AssertionError:
            return out


@pytest.mark.parametrize("call", INFINITE)
def test_a_call_that_waits_for_ever_never_sees_the_eintr_of_any_stop(
    call: str, blocked: Callable[..., Target], memfd: int, tmp_path: Path
) -> None:
    target = blocked(call, -1)
    seen = _stop_it_every_way(target, memfd, tmp_path, force=False)
    # A stop that lands while the thread is on its way back into the call finds nothing to undo: hence "most".
    assert len(seen) > 2 * ROUNDS and all(i.restarted and i.timeout_ms is None for i in seen), seen[:3]
    assert _lines(target, 0.1) == []  # no "eintr", no abort: the call never came back
    assert _in_call(target.pid, SYSCALLS[call]) and status_field(target.pid, "TracerPid") == "0"


@pytest.mark.parametrize("call", BY_VALUE)
def test_an_epoll_timeout_given_by_value_ends_when_the_program_expected(
    call: str, blocked: Callable[..., Target], memfd: int, tmp_path: Path
) -> None:
    target = blocked(call, TIMEOUT_MS)
    seen = _stop_it_every_way(target, memfd, tmp_path, force=False)
    assert seen and all(i.restarted for i in seen), [i for i in seen if not i.restarted][:3]
    assert any(i.timeout_ms is not None and i.timeout_ms < TIMEOUT_MS for i in seen)
    lines = _lines(target, TIMEOUT_MS / 1000 + 0.3)
    took = [float(line.split()[1]) for line in lines if line.startswith("done")]
    assert len(took) == len(lines) and len(took) >= 2, lines  # nothing but timeouts: no eintr
    assert all(TIMEOUT_MS - EARLY_MS <= ms <= TIMEOUT_MS + LATE_MS for ms in took), took


@pytest.mark.parametrize("call", TIMESPEC)
def test_a_timeout_pss_dup_cannot_keep_shows_its_eintr_and_says_so(
    call: str, blocked: Callable[..., Target], memfd: int
) -> None:
    """The choice for timespec and socket-option timeouts: the EINTR stays (issued again, the call would wait
    longer than the program asked), every one is reported, and dup/free refuse without --force, naming why."""
    target = blocked(call, TIMEOUT_MS * 10, "allow")
    with pytest.raises(Refused, match="EINTR"):
        inject.push_fd(target.pid, memfd, cloexec=True, force=False, timeout=5)
    reported: list[Interruption] = []
    for _ in range(5):
        with backend.capture(target.pid, CaptureFlags.THREADS, timeout=5) as snap:
            reported.extend(snap.model.interruptions or ())
        time.sleep(0.05)
    assert len(reported) == 5 and not any(i.restarted for i in reported), reported
    assert all("wait longer" in i.note or "whole timeout anew" in i.note for i in reported), reported
    assert _lines(target, 0.1).count("eintr") == 5


def test_a_real_signal_during_the_stop_still_interrupts_the_call_once(
    blocked: Callable[..., Target],
) -> None:
    """SIGUSR1 with a handler without SA_RESTART, sent while pss-dup holds the thread: the program sees what it
    would have seen without pss-dup, one EINTR and its handler run once, and is not killed by an unexpected one."""
    target = blocked("epoll_wait", -1)
    with FrozenProcess(target.pid, timeout=5, want_regs=True, want_fp=False, want_xstate=False) as frozen:
        os.kill(target.pid, signal.SIGUSR1)
        time.sleep(0.05)
    assert [(i.restarted, i.note) for i in frozen.interruptions] == [(False, restart.SIGNAL_MEANWHILE)]
    assert _lines(target, 0.2) == ["eintr", "handler 1"]
    assert target.proc.poll() is None
    assert _in_call(target.pid, SYSCALLS["epoll_wait"])  # and it waits again, as the program does

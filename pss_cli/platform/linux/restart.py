"""Undoing the EINTR that pss-dup's own stop causes, so that a stopped process never sees it.

Any ptrace stop (PTRACE_INTERRUPT) wakes a thread blocked in a system call. Most calls then return a restart code
and the kernel re-issues them by itself; a few return plain -EINTR (signal(7): epoll_wait, semop, sigtimedwait,
io_getevents, sockets with a timeout, ...), which the program would see. At our stop such a thread sits with
`rax = -EINTR`, `orig_rax` = the call and `rip` just past its `syscall` instruction, and x86_64's `syscall`
preserves the argument registers. Setting `rax = -ERESTARTNOHAND` before letting it go turns the EINTR into the
restart code the kernel applies on that very exit path (it reads rax after the stop): with no signal to handle it
re-issues the call (rip -= 2, rax = orig_rax); with a signal whose handler runs at that moment it returns EINTR,
as the call would have without pss-dup. So a real signal that arrived meanwhile still interrupts the call, with no
window in which pss-dup could get that wrong.

Only calls known to do nothing before they fail with EINTR are turned back (never `close`, whose fd is already
gone; sendfile, splice, tty and FUSE calls are left alone; kernel return paths checked in the 6.12 source).

Timeouts. A call re-issued with a finite timeout would wait its whole timeout again. epoll_wait and epoll_pwait
take theirs by value (r10, milliseconds): the call is re-issued with what is left of it. When the wait began is
read just before the stop: the thread's /proc/PID/task/TID/sched `se.exec_start` (when it last ran), placed on
CLOCK_MONOTONIC by a per-CPU offset measured at that moment (started_waiting). On bare metal that is within a few
ms (a wake-up inside the call that found nothing moves it later, so the call ends that much late). On a VM, the
time the host stole from that CPU while the thread waited is missing from its task clock and counts as waited: the
call may end early by that much (measured on this project's 2-vCPU VM under load: up to ~5% of the wait).
r10 is a caller-saved register in the SysV ABI, and the raw-syscall users we know (glibc, Go) do not reuse it after
the call, so the changed value is not seen. Where that time cannot be known (no CONFIG_SCHED_DEBUG, the thread ran
between our look and our stop), and for the calls whose timeout is a pointer to a timespec (epoll_pwait2,
semtimedop, rt_sigtimedwait, io_getevents, an io_uring wait) or a socket option (SO_RCVTIMEO/SO_SNDTIMEO), the
EINTR is left: re-issuing would stretch the program's own deadline by up to the time already waited, and
rewriting the program's timespec would change its memory. The process sees one EINTR it must handle anyway (any
signal can cause it), the report says so, and dup/free refuse such a thread unless --force.
"""

from __future__ import annotations

import sys

# Linux only: this lets mypy --platform win32 skip the module instead of flagging Linux-only calls.
assert sys.platform == "linux"

import contextlib
import os
import struct
import threading
import time
from typing import Final

from pss_cli import record
from pss_cli.model import Interruption
from pss_cli.platform.linux import access, procfs, ptrace

EINTR: Final = 4
ERESTARTNOHAND: Final = 514
MASK64: Final = (1 << 64) - 1
SYS_io_uring_enter: Final = 426
IORING_ENTER_GETEVENTS, IORING_ENTER_EXT_ARG = 0x1, 0x8

#: How a call takes its timeout: not at all, by value in milliseconds, or as a pointer to a timespec.
NO_TIMEOUT, BY_VALUE, TIMESPEC, SOCKET_OPTION = "none", "value", "timespec", "socket"


@record.record
class Rule:
    """A call that fails with plain -EINTR when a ptrace stop interrupts it, having done nothing: safe to re-issue."""

    name: str
    timeout: str = NO_TIMEOUT
    #: Which of the six arguments carries the timeout (BY_VALUE, TIMESPEC).
    timeout_arg: int = 0


#: By x86_64 number, from the kernel's return paths (6.12): epoll_wait and its siblings, SysV semaphores,
#: rt_sigtimedwait and io_getevents return -EINTR whenever they are woken with nothing to report; io_uring_enter
#: when it waits for completions having submitted nothing; socket calls (recvmmsg too: its timeout argument is no
#: blocking timeout) only when the socket has SO_RCVTIMEO/SO_SNDTIMEO (sock_intr_errno). Each did nothing before.
#: Left out: close (its fd is already gone), connect, sendfile and splice from non-seekable files, tty ioctls,
#: anything on FUSE; they keep their EINTR.
RULES: Final[dict[int, Rule]] = {
    232: Rule("epoll_wait", BY_VALUE, 3),
    281: Rule("epoll_pwait", BY_VALUE, 3),
    441: Rule("epoll_pwait2", TIMESPEC, 3),
    65: Rule("semop"),
    220: Rule("semtimedop", TIMESPEC, 3),
    128: Rule("rt_sigtimedwait", TIMESPEC, 2),
    208: Rule("io_getevents", TIMESPEC, 4),
    426: Rule("io_uring_enter"),
}
#: Socket calls that fail with EINTR instead of restarting when the socket has a receive (or send) timeout.
SOCKET_RECEIVE_SYSCALLS: Final[dict[int, str]] = {
    0: "read",
    19: "readv",
    45: "recvfrom",
    47: "recvmsg",
    299: "recvmmsg",
    43: "accept",
    288: "accept4",
}
SOCKET_SEND_SYSCALLS: Final[dict[int, str]] = {1: "write", 20: "writev", 44: "sendto", 46: "sendmsg", 307: "sendmmsg"}
SIGNAL_MEANWHILE: Final = "a signal with a handler arrived meanwhile: it interrupts the call, as it would have anyway"
UNKNOWN_WAIT: Final = (
    "how long it had waited is unknown (no /proc/PID/task/TID/sched), so what is left of its timeout is too"
)
#: How long started_waiting sleeps on the thread's CPU to be switched out once: the shortest sleep that blocks.
CALIBRATION_SLEEP: Final = 1e-5
#: Signals whose default action is to do nothing: pending with SIG_DFL, they interrupt no call.
DEFAULT_IGNORED: Final = frozenset({17, 18, 23, 28})  # SIGCHLD, SIGCONT, SIGURG, SIGWINCH


def rule_for(nr: int) -> Rule | None:
    if nr in RULES:
        return RULES[nr]
    name = SOCKET_RECEIVE_SYSCALLS.get(nr) or SOCKET_SEND_SYSCALLS.get(nr)
    return Rule(name, SOCKET_OPTION) if name else None


@record.record
class Blocked:
    """A thread seen blocked in a system call just before pss-dup stopped it."""

    nr: int
    args: tuple[int, ...]
    pc: int
    #: When it last ran before our look, on CLOCK_MONOTONIC (s): the start of its wait. With a finite by-value
    #: timeout only, and only where the scheduler clock could be read and placed (see started_waiting).
    waiting_since: float | None = None
    #: How often it had been switched out, at our look and once it sat in our stop.
    switches: int | None = None
    stop_switches: int | None = None

    @property
    def timed(self) -> bool:
        """Its by-value timeout can be kept: the start of its wait is known."""
        return self.waiting_since is not None and self.switches is not None


def at_stop(pid: int, tid: int, blocked: Blocked | None) -> Blocked | None:
    """`blocked` with the thread's switch count read at pss-dup's stop: if it grew by more than the one switch our
    stop made, the thread ran in between and its call may have started anew. Read right at the stop: injected
    calls that follow make the thread run too."""
    if blocked is None or not blocked.timed:
        return blocked
    # The tracer hears of a ptrace stop before the thread has switched out into it; any ptrace request waits until
    # it has (wait_task_inactive), so that the count read next includes the stop's own switch.
    with contextlib.suppress(OSError):
        ptrace.get_event_msg(tid)
    return record.replace(blocked, stop_switches=read_sched(pid, tid)[1])


def has_finite_value_timeout(nr: int, args: tuple[int, ...]) -> bool:
    rule = RULES.get(nr)
    return rule is not None and rule.timeout == BY_VALUE and _signed32(args[rule.timeout_arg]) > 0


def observe(pid: int, tid: int) -> Blocked | None:
    """What `tid` is blocked in (before the stop), with its scheduler clock when a remaining timeout will be needed."""
    blocked = procfs.read_syscall(pid, tid)
    if blocked is None or blocked.program_counter is None:
        return None
    nr, args, pc = blocked.number, blocked.args, blocked.program_counter
    if not has_finite_value_timeout(nr, args):
        return Blocked(nr, args, pc)
    exec_start, switches = read_sched(pid, tid)
    since = started_waiting(pid, tid, exec_start)
    if since is not None and read_sched(pid, tid)[1] != switches:
        return None  # it woke while being looked at: its next call begins after this look
    return Blocked(nr, args, pc, since, switches)


def started_waiting(pid: int, tid: int, exec_start_ms: float | None) -> float | None:
    """A blocked thread's `se.exec_start` (when it last ran, on the scheduler's task clock of the CPU it ran on)
    placed on CLOCK_MONOTONIC. Each CPU's task clock leaves out that CPU's own interrupt and steal time, so the
    clocks of two CPUs drift apart by seconds on a VM: the offset is measured on that very CPU, now, by moving
    this thread there for a moment and reading its own exec_start (set when it was switched in) beside
    time.monotonic(). Measured here (a 2-vCPU VM): within 0.3-14 ms of the true start of the wait, plus the CPU's
    steal time since, which makes it look earlier."""
    if exec_start_ms is None:
        return None
    try:
        cpu = procfs.read_stat(pid, tid).processor
        mine = os.sched_getaffinity(0)
    except (OSError, ValueError):
        return None
    if cpu is None or cpu not in mine:
        return None  # that CPU is not ours to run on (our affinity, a cpuset)
    try:
        os.sched_setaffinity(0, {cpu})
        try:
            time.sleep(CALIBRATION_SLEEP)  # one switch: our own exec_start becomes the moment `cpu` took us back
            here, _ = read_sched(os.getpid(), threading.get_native_id())
            now = time.monotonic()
        finally:
            os.sched_setaffinity(0, mine)
    except OSError:
        return None
    if here is None:
        return None
    return (exec_start_ms + (now * 1000 - here)) / 1000


def read_sched(pid: int, tid: int) -> tuple[float | None, int | None]:
    """(se.exec_start in ms, nr_switches) from /proc/PID/task/TID/sched (CONFIG_SCHED_DEBUG); Nones without it."""
    exec_start: float | None = None
    switches: int | None = None
    try:
        with open(f"/proc/{pid}/task/{tid}/sched", "rb") as f:
            for line in f:
                if line.startswith(b"se.exec_start"):
                    exec_start = float(line.split(b":", 1)[1])
                elif line.startswith(b"nr_switches"):
                    switches = int(line.split(b":", 1)[1])
                    break
    except (OSError, ValueError):
        return None, None
    return exec_start, switches


def signal_would_interrupt(pid: int, tid: int) -> bool:
    """Is a signal pending for `tid` that would have interrupted its call without us (not blocked, not ignored)?"""
    try:
        status = procfs.read_status(pid, tid)
        pending = int(status.get("SigPnd", "0"), 16) | int(status.get("ShdPnd", "0"), 16)
        blocked = int(status.get("SigBlk", "0"), 16)
        ignored = int(status.get("SigIgn", "0"), 16)
        caught = int(status.get("SigCgt", "0"), 16)
    except (OSError, ValueError):
        return True  # cannot tell: leave the EINTR, as the kernel would have with a signal
    default_ignored = sum(1 << (signo - 1) for signo in DEFAULT_IGNORED) & ~caught
    return bool(pending & ~blocked & ~ignored & ~default_ignored)


def may_show_eintr(gpr: bytes) -> bool:
    """From NT_PRSTATUS bytes: rax is -EINTR and orig_rax a system call (the state `decide` looks at)."""
    rax, orig_rax = struct.unpack_from("<q", gpr, 80)[0], struct.unpack_from("<q", gpr, 120)[0]
    return bool(rax == -EINTR and orig_rax >= 0)


def decide(
    pid: int,
    tid: int,
    regs: ptrace.user_regs_struct,
    blocked: Blocked | None,
    *,
    real_signal: bool,
    stopped_at: float | None = None,
) -> Interruption | None:
    """Whether our stop interrupted `tid` out of a call with EINTR, and if so undo it in `regs` (set them back
    yourself) where that is invisible; None when the thread was not interrupted that way.

    The undoing is `rax = -ERESTARTNOHAND`, not a rewind of our own: the kernel reads rax after the stop, in the
    same exit path, and then re-issues the call itself when no handler runs, or turns it into EINTR when a signal
    with a handler is delivered at that moment (`real_signal`, a stashed one, or one that comes in the last
    microseconds): exactly what the program would have seen without pss-dup, with no race.
    """
    if _signed64(regs.rax) != -EINTR or _signed64(regs.orig_rax) < 0:
        return None
    nr = regs.orig_rax
    args = (regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9)
    if blocked is not None and (blocked.nr != nr or blocked.pc != regs.rip or blocked.args != args):
        blocked = None  # not the call seen before the stop (a call keeps its arguments): it began after our look
    rule = rule_for(nr)
    name = rule.name if rule else _name(nr)
    if rule is None:
        return Interruption(tid, name, restarted=False, note="pss-dup does not know this call to be safe to re-issue")
    why = _why_visible(nr, rule, args)
    if why is not None:
        return Interruption(tid, name, restarted=False, note=why)
    timeout_ms: int | None = None
    if has_finite_value_timeout(nr, args):
        timeout_ms = _remaining_ms(blocked, _signed32(args[rule.timeout_arg]), stopped_at)
        if timeout_ms is None:
            return Interruption(tid, name, restarted=False, note=UNKNOWN_WAIT)
        regs.r10 = timeout_ms
    regs.rax = -ERESTARTNOHAND & MASK64
    if real_signal or signal_would_interrupt(pid, tid):
        return Interruption(tid, name, restarted=False, note=SIGNAL_MEANWHILE)
    return Interruption(tid, name, restarted=True, timeout_ms=timeout_ms)


def _remaining_ms(blocked: Blocked | None, timeout: int, stopped_at: float | None) -> int | None:
    """What is left of a by-value timeout, now; None where the start of the wait cannot be known.

    Seen blocked in it just before the stop, and run since only to reach the stop: its wait began when it last
    ran (`waiting_since`). Otherwise the call began between our look and our stop (`stopped_at`, the stop's
    time): counting from the stop makes it end at most that window late.
    """
    if blocked is not None and blocked.timed and blocked.stop_switches == (blocked.switches or 0) + 1:
        assert blocked.waiting_since is not None
        since = blocked.waiting_since
    elif stopped_at is not None and (blocked is None or blocked.timed):
        since = stopped_at
    else:
        return None
    return max(0, int(timeout - (time.monotonic() - since) * 1000))


def _why_visible(nr: int, rule: Rule, args: tuple[int, ...]) -> str | None:
    """Why issuing this call again would not go unseen (it would wait longer than the program asked), or None."""
    if rule.timeout == TIMESPEC and args[rule.timeout_arg]:
        return "its timeout is a timespec of the program's: issued again, it would wait longer than asked"
    if nr == SYS_io_uring_enter and args[3] & IORING_ENTER_EXT_ARG and args[4]:
        return "it may wait with a timeout of the program's: issued again, it would wait longer than asked"
    if rule.timeout == SOCKET_OPTION:
        option = "SO_RCVTIMEO" if nr in SOCKET_RECEIVE_SYSCALLS else "SO_SNDTIMEO"
        return f"its socket has a timeout ({option}): issued again, the call would wait that whole timeout anew"
    return None


def plan(pid: int, tid: int, pidfd: int | None) -> tuple[Blocked | None, str | None]:
    """Before stopping `tid`: what it is blocked in, and why pss-dup's stop would show the process an EINTR (None
    when it would not: no such call, or one pss-dup issues again unseen)."""
    blocked = observe(pid, tid)
    if blocked is None:
        return None, None
    nr, args = blocked.nr, blocked.args
    rule = rule_for(nr)
    if rule is None or (nr == SYS_io_uring_enter and not args[3] & IORING_ENTER_GETEVENTS):
        return blocked, None
    if rule.timeout == SOCKET_OPTION:
        import socket  # only for a thread blocked in a socket call: most captures never need the module

        option = socket.SO_RCVTIMEO if nr in SOCKET_RECEIVE_SYSCALLS else socket.SO_SNDTIMEO
        if not access.socket_timeout(pid, args[0], option, pidfd):
            return blocked, None  # no timeout: the kernel restarts it by itself
    why = _why_visible(nr, rule, args)
    if why is None and has_finite_value_timeout(nr, args) and not blocked.timed:
        why = UNKNOWN_WAIT
    if why is None:
        return blocked, None
    return blocked, (
        f"thread {tid} ({access.process_name(pid, tid)}) of process {pid} is blocked in {rule.name}, which a ptrace "
        f"stop ends with EINTR, and pss-dup cannot issue it again unseen: {why}"
    )


def _name(nr: int) -> str:
    from pss_cli.platform.linux.freeze import syscall_name

    return syscall_name(nr)


def _signed64(value: int) -> int:
    return value - (1 << 64) if value & (1 << 63) else value


def _signed32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & (1 << 31) else value

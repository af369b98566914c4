"""Undoing the EINTR that pss-dup's own stop causes, so that a stopped process never sees it.

Any ptrace stop (PTRACE_INTERRUPT) wakes a thread blocked in a system call. Most calls then return a restart code
and the kernel re-issues them by itself; a few return plain -EINTR (signal(7): epoll_wait, semop, sigtimedwait,
io_getevents, sockets with a timeout, ...), which the program would see. At our stop such a thread sits with
`rax = -EINTR`, `orig_rax` = the call and `rip` just past its `syscall` instruction, and x86_64's `syscall`
preserves the argument registers. Setting `rip -= 2; rax = orig_rax` before letting it go re-issues the same call,
as the kernel itself does for -ERESTARTNOINTR.

Only our interruption is undone: when a real signal arrived (it would have interrupted the call anyway), the EINTR
stays and the signal is delivered as it would have been. Only calls known to do nothing before failing with EINTR
are re-issued (never `close`, or a `connect` that would then say EALREADY).

Timeouts. A call re-issued with a finite timeout would wait its whole timeout again. epoll_wait and epoll_pwait
take theirs by value (r10, milliseconds): the call is re-issued with what is left of it, computed from the time the
thread last ran before our stop (/proc/PID/task/TID/sched `se.exec_start`, read just before the stop) to its
release; the elapsed time comes out slightly short (the scheduler's task clock leaves out interrupt and steal
time, and a wake-up inside the call that found nothing moves the start later), so the call ends at most that much
late, never early. r10 is a caller-saved register in the SysV ABI, and the raw-syscall users we know (glibc, Go)
do not reuse it after the call, so the changed value is not seen. Where that time cannot be known (no
CONFIG_SCHED_DEBUG, the thread ran in between), and for the calls whose timeout is a pointer to a timespec
(epoll_pwait2, semtimedop, rt_sigtimedwait, io_getevents, io_pgetevents, recvmmsg) or a socket option
(SO_RCVTIMEO/SO_SNDTIMEO), the EINTR is left: re-issuing would stretch the program's own deadline by up to the
time already waited, and rewriting the program's timespec would change its memory. The process sees one EINTR it
must handle anyway (any signal can cause it), and the report says so.
"""

from __future__ import annotations

import sys

# Linux only: this lets mypy --platform win32 skip the module instead of flagging Linux-only calls.
assert sys.platform == "linux"

import socket
import struct
import time
from dataclasses import dataclass
from typing import Final

from pss_cli.model import Interruption
from pss_cli.platform.linux import access, ptrace

EINTR: Final = 4
SYS_io_uring_enter: Final = 426
IORING_ENTER_GETEVENTS, IORING_ENTER_EXT_ARG = 0x1, 0x8

#: How a call takes its timeout: not at all, by value in milliseconds, or as a pointer to a timespec.
NO_TIMEOUT, BY_VALUE, TIMESPEC, SOCKET_OPTION = "none", "value", "timespec", "socket"


@dataclass(frozen=True, slots=True)
class Rule:
    """A call that fails with plain -EINTR when a ptrace stop interrupts it, having done nothing: safe to re-issue."""

    name: str
    timeout: str = NO_TIMEOUT
    #: Which of the six arguments carries the timeout (BY_VALUE, TIMESPEC).
    timeout_arg: int = 0


#: By x86_64 number. epoll_wait and its siblings, SysV semaphores, sigtimedwait and AIO waits return -EINTR
#: outright (signal(7), and their kernel return paths); io_uring_enter when it waits for completions; socket calls
#: when the socket has SO_RCVTIMEO/SO_SNDTIMEO (sock_intr_errno), recvmmsg with a timeout argument. `connect` is
#: left out on purpose: issued again it fails with EALREADY.
RULES: Final[dict[int, Rule]] = {
    232: Rule("epoll_wait", BY_VALUE, 3),
    281: Rule("epoll_pwait", BY_VALUE, 3),
    441: Rule("epoll_pwait2", TIMESPEC, 3),
    65: Rule("semop"),
    220: Rule("semtimedop", TIMESPEC, 3),
    128: Rule("rt_sigtimedwait", TIMESPEC, 2),
    208: Rule("io_getevents", TIMESPEC, 4),
    333: Rule("io_pgetevents", TIMESPEC, 4),
    426: Rule("io_uring_enter"),
    299: Rule("recvmmsg", TIMESPEC, 4),
}
#: Socket calls that fail with EINTR instead of restarting when the socket has a receive (or send) timeout.
SOCKET_RECEIVE_SYSCALLS: Final[dict[int, str]] = {
    0: "read",
    19: "readv",
    45: "recvfrom",
    47: "recvmsg",
    43: "accept",
    288: "accept4",
}
SOCKET_SEND_SYSCALLS: Final[dict[int, str]] = {1: "write", 20: "writev", 44: "sendto", 46: "sendmsg", 307: "sendmmsg"}
#: Signals whose default action is to do nothing: pending with SIG_DFL, they interrupt no call.
DEFAULT_IGNORED: Final = frozenset({17, 18, 23, 28})  # SIGCHLD, SIGCONT, SIGURG, SIGWINCH


def rule_for(nr: int) -> Rule | None:
    if nr in RULES:
        return RULES[nr]
    name = SOCKET_RECEIVE_SYSCALLS.get(nr) or SOCKET_SEND_SYSCALLS.get(nr)
    return Rule(name, SOCKET_OPTION) if name else None


@dataclass(frozen=True, slots=True)
class Blocked:
    """A thread seen blocked in a system call just before pss-dup stopped it."""

    nr: int
    args: tuple[int, ...]
    pc: int
    #: /proc/PID/task/TID/sched: when it last ran (ms, scheduler clock) and how often it has been switched out.
    exec_start_ms: float | None = None
    switches: int | None = None


def has_finite_value_timeout(nr: int, args: tuple[int, ...]) -> bool:
    rule = RULES.get(nr)
    return rule is not None and rule.timeout == BY_VALUE and _signed32(args[rule.timeout_arg]) > 0


def observe(pid: int, tid: int) -> Blocked | None:
    """What `tid` is blocked in (before the stop), with its scheduler clock when a remaining timeout will be needed."""
    blocked = access.blocked_syscall(pid, tid)
    if blocked is None:
        return None
    nr, args, _sp, pc = blocked
    if not has_finite_value_timeout(nr, args):
        return Blocked(nr, args, pc)
    exec_start, switches = read_sched(pid, tid)
    return Blocked(nr, args, pc, exec_start, switches)


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
        status = access.read_status(pid, tid)
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
    stopped_at: float,
) -> Interruption | None:
    """Whether our stop interrupted `tid` out of a call with EINTR, and if so undo it in `regs` (set them back
    yourself) where that is invisible; None when the thread was not interrupted that way."""
    if _signed64(regs.rax) != -EINTR or _signed64(regs.orig_rax) < 0:
        return None
    nr = regs.orig_rax
    if blocked is not None and (blocked.nr != nr or blocked.pc != regs.rip):
        blocked = None  # a different call than the one seen before the stop: nothing is known of its start
    rule = rule_for(nr)
    name = rule.name if rule else _name(nr)
    if rule is None:
        return Interruption(tid, name, restarted=False, note="pss-dup does not know this call to be safe to re-issue")
    if real_signal or signal_would_interrupt(pid, tid):
        return Interruption(tid, name, restarted=False, note="a signal arrived meanwhile and interrupts it anyway")
    args = (regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9)
    why = _why_visible(nr, rule, args, blocked)
    if why is not None:
        return Interruption(tid, name, restarted=False, note=why)
    timeout_ms: int | None = None
    if has_finite_value_timeout(nr, args):
        assert blocked is not None
        timeout_ms = _remaining_ms(pid, tid, blocked, _signed32(args[rule.timeout_arg]), stopped_at)
        if timeout_ms is None:
            return Interruption(tid, name, restarted=False, note="it ran between pss-dup's look and its stop")
        regs.r10 = timeout_ms
    regs.rip -= 2
    regs.rax = nr
    return Interruption(tid, name, restarted=True, timeout_ms=timeout_ms)


def _remaining_ms(pid: int, tid: int, blocked: Blocked | None, timeout: int, stopped_at: float) -> int | None:
    if blocked is None or blocked.exec_start_ms is None or blocked.switches is None:
        return None
    exec_start, switches = read_sched(pid, tid)
    if exec_start is None or switches is None or switches != blocked.switches + 1:
        return None  # it ran in between (not only to reach our stop): its call may have started anew
    waited = (exec_start - blocked.exec_start_ms) + (time.monotonic() - stopped_at) * 1000
    return max(0, int(timeout - waited))


def _why_visible(nr: int, rule: Rule, args: tuple[int, ...], blocked: Blocked | None) -> str | None:
    """Why issuing this call again would not go unseen (it would wait longer than the program asked), or None."""
    if rule.timeout == TIMESPEC and args[rule.timeout_arg]:
        return "its timeout is a timespec of the program's: issued again, it would wait longer than asked"
    if nr == SYS_io_uring_enter and args[3] & IORING_ENTER_EXT_ARG and args[4]:
        return "it may wait with a timeout of the program's: issued again, it would wait longer than asked"
    unknown_start = blocked is None or blocked.exec_start_ms is None or blocked.switches is None
    if has_finite_value_timeout(nr, args) and unknown_start:
        return "how long it had waited is unknown (no /proc/PID/task/TID/sched), so what is left of its timeout is"
    if rule.timeout == SOCKET_OPTION:
        return "a receive or send timeout on its socket ends it with EINTR: issued again, it would wait longer"
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
        option = socket.SO_RCVTIMEO if nr in SOCKET_RECEIVE_SYSCALLS else socket.SO_SNDTIMEO
        if not access.socket_timeout(pid, args[0], option, pidfd):
            return blocked, None  # no timeout: the kernel restarts it by itself
    why = _why_visible(nr, rule, args, blocked)
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

"""Running system calls inside another process's thread, and the fd operations built on that (x86_64).

The primitive follows CRIU's compel in spirit: hold one thread in a ptrace-stop, point it at a `syscall`
instruction that already exists in the process, set the registers for the call, single-step once, read the result,
and finally put every register back. Nothing is ever written into the process's code (other threads keep running
it), scratch memory is the unused stack below the thread's red zone (saved and restored) or a page mmapped for the
occasion, and `orig_rax = -1` keeps the kernel's restart logic away from the injected contexts. The original
registers are restored while the thread sits in a signal-path stop, so the kernel itself then applies the restart
rules to the interrupted system call (a sleep keeps its original deadline; see the design notes, section 5.2).

On top of it: `push_fd` (give a process a copy of one of our fds), `close_remote_fd`, `get_remote_fd`, and dry runs
that check everything those would need without stopping anything.
"""

from __future__ import annotations

import sys

# Linux only: this lets mypy --platform win32 skip the module instead of flagging Linux-only calls.
assert sys.platform == "linux"

import ctypes
import errno
import math
import os
import signal
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final, TypeVar

from pss_cli.errors import (
    Interrupted,
    NoSuchHandle,
    NoSuchProcess,
    NotSupported,
    OperationFailed,
    ProcessGone,
    PssError,
    Refused,
    own_error,
)
from pss_cli.model import MAX_HANDLE, MAX_PID, Interruption
from pss_cli.platform.linux import access, procfs, ptrace, restart
from pss_cli.platform.linux.freeze import SeizedThread, TracerSession, seized_thread, wait_stop

T = TypeVar("T")

MASK64: Final = (1 << 64) - 1
#: The SysV x86_64 red zone: 128 bytes below rsp that leaf code may use without moving rsp.
RED_ZONE: Final = 128
SCRATCH_SIZE: Final = 512
PAGE_SIZE: Final = 4096
SYSCALL_INSN: Final = b"\x0f\x05"
#: How many threads to consider when the group leader is not a good place to inject.
MAX_CANDIDATE_THREADS: Final = 64
#: How long to wait for a thread that runs an injected system call: for ever. Every call we inject returns at once
#: (MSG_DONTWAIT, WNOHANG); letting go of the thread before it stops again would leave it running with our
#: registers, or take a single-step SIGTRAP that kills it. Neither Ctrl-C nor --timeout may cut this wait short;
#: only the thread's exit ends it otherwise.
NO_DEADLINE: Final = math.inf
#: Return values of a system call that a signal interrupted before it did anything (it is simply run again).
RESTART_CODES: Final = frozenset({-512, -513, -514, -516})

PROT_READ, PROT_WRITE = 0x1, 0x2
MAP_PRIVATE, MAP_ANONYMOUS = 0x02, 0x20
SOCK_DGRAM, SOCK_CLOEXEC = 2, 0o2000000
MSG_CTRUNC, MSG_DONTWAIT, MSG_CMSG_CLOEXEC = 0x8, 0x40, 0x40000000
SOL_SOCKET, SCM_RIGHTS = 1, 1

# Scratch layout for push_fd (offsets from the scratch base).
MSGHDR_OFFSET: Final = 0  # struct msghdr, 56 bytes
IOVEC_OFFSET: Final = 64  # struct iovec, 16 bytes
BYTE_OFFSET: Final = 80  # the one data byte
CONTROL_OFFSET: Final = 96  # CMSG_SPACE(sizeof(int)) = 24 bytes
CONTROL_SIZE: Final = 24
SV_OFFSET: Final = 128  # int sv[2] from socketpair
MSG_FLAGS_OFFSET: Final = 48  # msghdr.msg_flags
PUSH_BLOCK_SIZE: Final = 136


def check(result: int, what: str) -> int:
    """An injected system call's raw result, or OSError for the -errno range (-4095..-1)."""
    if -4095 <= result < 0:
        raise OSError(-result, f"{what}: {os.strerror(-result)}")
    return result


def signed64(value: int) -> int:
    return value - (1 << 64) if value & (1 << 63) else value


# ---- what we learn before stopping anything ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mapping:
    start: int
    end: int
    perms: str
    path: str


@dataclass(slots=True)
class InjectionPlan:
    """Everything about the target that can be read before it is stopped, so that the stop stays short."""

    pid: int
    tid: int
    thread_name: str
    thread_state: str
    pidfd: int
    warnings: tuple[str, ...]
    suspend_seccomp: bool
    maps: tuple[Mapping, ...]
    #: Address just after a `syscall` instruction the thread is blocked behind (from /proc/PID/task/TID/syscall).
    blocked_pc: int | None
    blocked_name: str | None
    vdso_insn: int | None
    libc_insn: int | None
    go_runtime: bool
    #: What the thread is blocked in, seen just before the stop (for undoing an EINTR our stop causes).
    blocked: restart.Blocked | None = None
    closed: bool = field(default=False)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.pidfd)

    def syscall_site(self) -> tuple[int | None, str]:
        """The instruction a dry run would name (the real run prefers the blocked thread's own)."""
        if self.blocked_pc is not None:
            return self.blocked_pc - 2, f"the thread's own, behind its {self.blocked_name}"
        if self.vdso_insn is not None:
            return self.vdso_insn, "[vdso]"
        return self.libc_insn, "libc"

    def stack_scratch_ok(self, start: int, rsp: int) -> bool:
        """May [start, rsp) serve as scratch? Only inside the thread's own stack mapping, never in a Go heap."""
        if self.go_runtime:
            return False
        for m in self.maps:
            if m.start <= start and rsp <= m.end:
                if not m.perms.startswith("rw") or m.perms[3] != "p":
                    return False
                if m.path == "[stack]":
                    return True
                # a pthread stack: anonymous, with its PROT_NONE guard mapping right below
                return m.path == "" and any(g.end == m.start and g.perms.startswith("---") for g in self.maps)
        return False


def plan_injection(pid: int, *, force: bool, tid: int | None = None) -> InjectionPlan:
    """Read what the injection needs and refuse what it must not do, all before the target is touched."""
    access.check_traceable(pid)
    try:
        pidfd = ptrace.pidfd_open(pid)
    except ProcessLookupError:
        raise NoSuchProcess(f"no process with PID {pid}", pid=pid) from None
    try:
        chosen, name, state, warnings, blocked = choose_thread(pid, pidfd, force=force, tid=tid)
        if chosen != pid:
            pidfd = swap_for_thread_pidfd(pidfd, chosen)
        suspend = needs_seccomp_suspended(pid)
        maps = read_maps(pid, chosen)
        blocked_pc, blocked_name = blocked_site(pid, chosen)
        vdso = find_syscall_insn(chosen, maps, "[vdso]")
        libc = None if vdso is not None else find_syscall_insn(chosen, maps, "libc")
        return InjectionPlan(
            pid=pid,
            tid=chosen,
            thread_name=name,
            thread_state=state,
            pidfd=pidfd,
            warnings=warnings,
            suspend_seccomp=suspend,
            maps=maps,
            blocked_pc=blocked_pc,
            blocked_name=blocked_name,
            vdso_insn=vdso,
            libc_insn=libc,
            go_runtime=is_go_program(pid, chosen),
            blocked=blocked,
        )
    except FileNotFoundError:
        os.close(pidfd)
        raise ProcessGone(f"process {pid} exited", pid=pid) from None
    except PermissionError:
        os.close(pidfd)
        raise access.explain_denied(pid, "inspect") from None
    except BaseException:
        os.close(pidfd)
        raise


def needs_seccomp_suspended(pid: int) -> bool:
    """Whether injected system calls need PTRACE_O_SUSPEND_SECCOMP, refusing when they would but cannot have it.

    Strict mode (1) SIGKILLs the process on any call but read, write, exit and rt_sigreturn; a filter (2) may kill
    it, fail the call, or raise SIGSYS in it. The kernel skips both modes for a task traced with the option (it
    checks PT_SUSPEND_SECCOMP before the mode in __secure_computing), which needs CAP_SYS_ADMIN and a tracer that
    is not itself under seccomp.
    """
    mode = access.seccomp_mode(pid)
    if mode == access.SECCOMP_MODE_DISABLED:
        return False
    if not access.has_capability(access.CAP_SYS_ADMIN) or access.seccomp_mode(os.getpid()) != 0:
        raise Refused(
            f"process {pid} runs under {access.SECCOMP_MODE_NAMES.get(mode, f'seccomp mode {mode}')} (Seccomp: "
            f"{mode}), which would see the injected system calls and might kill it; suspending it "
            "(PTRACE_O_SUSPEND_SECCOMP) needs CAP_SYS_ADMIN and a pss-dup that is not itself under seccomp: run "
            "pss-dup as root outside a container",
            pid=pid,
        )
    return True


def choose_thread(
    pid: int, pidfd: int, *, force: bool, tid: int | None
) -> tuple[int, str, str, tuple[str, ...], restart.Blocked | None]:
    """(tid, name, state, warnings, what it is blocked in): the thread to inject into.

    The group leader, unless it is a zombie (it called pthread_exit), an io_uring worker (ptrace refuses those), in
    an uninterruptible wait, or blocked in a system call that a ptrace stop would fail with EINTR; then another thread
    that shares the leader's fd table (kcmp). If every thread is in such a call: Refused, or with `force` the leader
    and a warning.
    """
    if tid is not None:
        candidates = [tid]
    else:
        others = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)
        candidates = [pid, *others[: MAX_CANDIDATE_THREADS - 1]]
    fallback: tuple[int, str, str] | None = None
    hazards: list[str] = []
    #: What each candidate was seen blocked in (restart.plan's look, which for a timed wait is not cheap: once).
    seen: dict[int, restart.Blocked | None] = {}
    for candidate in candidates:
        try:
            st = procfs.read_stat(pid, candidate)
        except (OSError, ValueError):
            continue
        name, state = st.comm, st.state
        if st.exited or name.startswith("iou-"):
            continue
        if fallback is None:
            fallback = (candidate, name, state)
        if state == "D" and tid is None:
            continue
        seen[candidate], hazard = restart.plan(pid, candidate, pidfd)
        if hazard is not None:
            hazards.append(hazard)
            continue
        if candidate != pid and not shares_fd_table(pid, candidate):
            continue
        return candidate, name, state, (), seen[candidate]
    if fallback is None:
        raise ProcessGone(f"process {pid} has no thread left that pss-dup could stop", pid=pid)
    if not hazards:
        return (*fallback, (), seen.get(fallback[0]))
    if not force:
        raise Refused(f"{hazards[0]}; pss-dup will not stop it (use --force to proceed anyway)", pid=pid)
    return (*fallback, (hazards[0],), seen.get(fallback[0]))


def swap_for_thread_pidfd(pidfd: int, tid: int) -> int:
    """A pidfd for thread `tid` instead of the process: once the leader has exited, only a live thread's pidfd
    reaches the fd table (PIDFD_THREAD, 6.9+; older kernels keep the process pidfd)."""
    try:
        thread_pidfd = ptrace.pidfd_open(tid, ptrace.PIDFD_THREAD)
    except OSError:
        return pidfd
    os.close(pidfd)
    return thread_pidfd


def open_fd_table(pid: int) -> int:
    """A pidfd through which pidfd_getfd reaches the process's fds, even when its group leader has exited."""
    pidfd = ptrace.pidfd_open(pid)
    try:
        if not procfs.read_stat(pid).exited:
            return pidfd
        for name in os.listdir(f"/proc/{pid}/task"):
            if int(name) != pid and not procfs.read_stat(pid, int(name)).exited:
                return swap_for_thread_pidfd(pidfd, int(name))
    except (OSError, ValueError):
        pass
    return pidfd


def shares_fd_table(pid: int, tid: int) -> bool:
    try:
        return ptrace.kcmp_files(pid, tid)
    except OSError:
        return False


def read_maps(pid: int, tid: int) -> tuple[Mapping, ...]:
    """The memory map, through the chosen thread (a group leader that has exited shows an empty one)."""
    return tuple(Mapping(start, end, perms, path or "") for start, end, perms, *_, path in procfs.read_maps(pid, tid))


def blocked_site(pid: int, tid: int) -> tuple[int | None, str | None]:
    """If the thread is blocked in a system call: the pc after its `syscall` instruction (checked) and its name."""
    blocked = procfs.read_syscall(pid, tid)
    if blocked is None or blocked.program_counter is None:
        return None, None
    nr, pc = blocked.number, blocked.program_counter
    try:
        if ptrace.process_vm_readv(tid, pc - 2, 2) != SYSCALL_INSN:
            return None, None
    except OSError:
        return None, None
    from pss_cli.platform.linux.freeze import syscall_name

    return pc, syscall_name(nr)


def find_syscall_insn(tid: int, maps: tuple[Mapping, ...], which: str) -> int | None:
    """The address of a `0f 05` byte pair in the [vdso] (or libc's code): the CPU decodes it as `syscall` when rip
    points there, whatever instruction it belongs to. Memory is read through the thread (`tid`): a group leader
    that has exited has no memory of its own any more."""
    for m in maps:
        if "x" not in m.perms or not m.perms.startswith("r"):
            continue
        if which == "[vdso]" and m.path != "[vdso]":
            continue
        if which == "libc" and not os.path.basename(m.path).startswith(("libc.so", "libc-")):
            continue
        offset = m.start
        while offset < m.end:
            size = min(64 * 1024, m.end - offset)
            try:
                chunk = ptrace.process_vm_readv(tid, offset, size)
            except OSError:
                break
            found = chunk.find(SYSCALL_INSN)
            if found >= 0:
                return offset + found
            offset += size - 1
    return None


def is_go_program(pid: int, tid: int) -> bool:
    """Go runs goroutines on small heap-allocated stacks: the memory below rsp may belong to someone else."""
    try:
        with open(f"/proc/{pid}/task/{tid}/exe", "rb") as f:
            header = f.read(64)
            if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2:
                return False
            (section_offset,) = struct.unpack_from("<Q", header, 0x28)
            entry_size, count, names_index = struct.unpack_from("<HHH", header, 0x3A)
            if not section_offset or entry_size != 64 or not 0 < count <= 4096 or names_index >= count:
                return False
            f.seek(section_offset)
            sections = f.read(count * 64)
            names_offset, names_size = struct.unpack_from("<QQ", sections, names_index * 64 + 0x18)
            if names_size > 1 << 20:
                return False
            f.seek(names_offset)
            names = f.read(names_size)
    except (OSError, struct.error):
        return False
    return b".go.buildinfo\0" in names or b".gopclntab\0" in names


# ---- the primitive -------------------------------------------------------------------------------------------


#: The ptrace stops that report a task created by the traced thread (PTRACE_O_TRACECLONE/FORK/VFORK).
NEW_TASK_EVENTS = frozenset((ptrace.PTRACE_EVENT_CLONE, ptrace.PTRACE_EVENT_FORK, ptrace.PTRACE_EVENT_VFORK))


class RemoteCalls:
    """System calls run in one thread that the calling tracer thread holds in a ptrace-stop: the one primitive every
    injection is built on (push_fd, close, the VA clone and its reaping).

    Each call copies the saved registers, points rip at `syscall_ip` (a `syscall` instruction the process already
    has), sets rax and the six argument registers, sets orig_rax = -1 (no restart logic for this context), clears
    TF/DF, and single-steps once; the result is read at the single-step SIGTRAP right after the instruction. Signals
    that arrive meanwhile are stashed with their siginfo (`stashed`) for the owner to hand back; event stops
    (PTRACE_EVENT_CLONE, a group-stop) are stepped over. `restore` puts the saved registers back while the thread
    still sits in its (signal-path) stop, so the kernel applies its own restart rules to what was interrupted.
    """

    def __init__(self, pid: int, tid: int, *, syscall_ip: int = 0, peek_exit: bool = False) -> None:
        self.pid = pid
        self.tid = tid
        self.syscall_ip = syscall_ip
        self.peek_exit = peek_exit
        self.saved = ptrace.user_regs_struct()
        self._work = ptrace.user_regs_struct()
        self._out = ptrace.user_regs_struct()
        self.stashed: list[ptrace.siginfo_t] = []
        #: The thread sits in a signal-delivery-stop (where PTRACE_DETACH can hand a signal back).
        self.in_signal_stop = False
        #: The last task an injected clone/fork made, by the PID this process sees (PTRACE_GETEVENTMSG at its
        #: PTRACE_EVENT_CLONE/FORK/VFORK stop); the call's own result is its PID in the target's PID namespace.
        self.new_task: int | None = None
        ptrace.get_regs(tid, self.saved)

    def syscall(self, nr: int, *args: int) -> int:
        """Run system call `nr` with up to six arguments; its raw result (use `check` for -errno)."""
        if len(args) > 6:
            raise ValueError("a system call takes at most six arguments")
        work = self._work
        ctypes.memmove(ctypes.addressof(work), ctypes.addressof(self.saved), ptrace.USER_REGS_SIZE)
        padded = (*args, 0, 0, 0, 0, 0, 0)
        work.rip, work.rax, work.orig_rax = self.syscall_ip, nr, MASK64  # orig_rax -1: no restart logic
        work.rdi, work.rsi, work.rdx = padded[0] & MASK64, padded[1] & MASK64, padded[2] & MASK64
        work.r10, work.r8, work.r9 = padded[3] & MASK64, padded[4] & MASK64, padded[5] & MASK64
        work.eflags &= ~(ptrace.X86_EFLAGS_TF | ptrace.X86_EFLAGS_DF)
        result = 0
        for _attempt in range(5):  # a signal that interrupted the call itself makes it report a restart code
            ptrace.set_regs(self.tid, work)
            ptrace.singlestep(self.tid, 0)
            result = self._result()
            if result not in RESTART_CODES:
                break
        return result

    def _result(self) -> int:
        """Wait for the single-step SIGTRAP after our `syscall`; stash any other signal and keep stepping."""
        tid, ip, out = self.tid, self.syscall_ip, self._out
        while True:
            status = wait_stop(self.pid, tid, NO_DEADLINE, peek_exit=self.peek_exit, interruptible=False)
            event = ptrace.stop_event(status)
            self.in_signal_stop = event == 0
            if event == 0 and os.WSTOPSIG(status) == signal.SIGTRAP:
                ptrace.get_regs(tid, out)
                if out.rip == ip + 2:
                    return signed64(out.rax)
                if out.rip != ip:
                    raise OperationFailed(
                        f"thread {tid} of process {self.pid} stopped at {out.rip:#x} instead of after the injected "
                        f"system call at {ip:#x}",
                        pid=self.pid,
                    )
            if event in NEW_TASK_EVENTS:
                self.new_task = ptrace.get_event_msg(tid)
            if event == 0:  # a real signal (a SIGTRAP too, if the step did not run): suppressed now, handed back
                info = ptrace.siginfo_t()
                ptrace.get_siginfo(tid, info)
                self.stashed.append(info)
            ptrace.singlestep(tid, 0)

    def restore(self) -> None:
        """Put the original registers back; the thread stays in its stop."""
        ptrace.set_regs(self.tid, self.saved)


class Injector:
    """Context manager: one thread of `pid` held still, ready to run system calls for us; restored on exit.

    Use `syscall(nr, *args)` for one call, `call(fn)` to run a whole sequence on the tracer thread (no thread hop
    per call: that is what keeps the target's stop short). `scratch` is SCRATCH_SIZE bytes of target memory that
    the sequence may use; `read`/`write` move bytes in and out of the target.
    """

    def __init__(
        self,
        pid: int,
        *,
        timeout: float,
        force: bool = False,
        tid: int | None = None,
        plan: InjectionPlan | None = None,
        interruptible: bool = True,
    ) -> None:
        self.pid = pid
        self.timeout = timeout
        self.force = force
        self.interruptible = interruptible
        self._wanted_tid = tid
        self._plan = plan
        self._owns_plan = plan is None
        self._context: seized_thread | None = None
        self._held: SeizedThread | None = None
        self._calls: RemoteCalls | None = None
        self._scratch_saved: bytes | None = None
        self._scratch_mapped = False
        self.scratch = 0
        self.warnings: tuple[str, ...] = ()
        self.stopped_ms: float | None = None
        #: What the stop did to a blocked call of the thread (set on exit; see restart.py).
        self.interruptions: tuple[Interruption, ...] = ()

    @property
    def tid(self) -> int:
        assert self._plan is not None
        return self._plan.tid

    @property
    def plan(self) -> InjectionPlan:
        assert self._plan is not None
        return self._plan

    def __enter__(self) -> Injector:
        if self._plan is None:
            self._plan = plan_injection(self.pid, force=self.force, tid=self._wanted_tid)
        plan = self._plan
        self.warnings = plan.warnings
        options = ptrace.PTRACE_O_SUSPEND_SECCOMP if plan.suspend_seccomp else 0
        self._context = seized_thread(
            self.pid, plan.tid, self.timeout, options=options, interruptible=self.interruptible
        )
        self._context.held.blocked = plan.blocked
        try:
            self._held = self._context.__enter__()
            try:
                self.call(lambda inj: inj._prepare())
            except BaseException as exc:
                self._hand_back()
                self._context.__exit__(type(exc), exc, exc.__traceback__)
                raise
        except OSError as exc:
            self._close_plan()
            raise typed_error(self.pid, exc, "prepare the injection") from None
        except BaseException:
            self._close_plan()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._context is not None and self._held is not None
        try:
            try:
                self.call(lambda inj: inj._restore_memory())
            except OSError as error:
                raise typed_error(self.pid, error, "restore the thread's memory") from None
            finally:
                self._hand_back()
        finally:
            try:
                self._context.__exit__(exc_type, exc, tb)
            finally:
                self.stopped_ms = self._held.stopped_ms
                interruption = self._held.interruption
                self.interruptions = (interruption,) if interruption is not None else ()
                self._close_plan()

    def _hand_back(self) -> None:
        """What the held thread's release must restore: the saved registers, and the signals stashed meanwhile."""
        held, calls = self._held, self._calls
        if held is None or calls is None:
            return
        held.restore_regs = calls.saved
        held.stashed.extend(calls.stashed)
        calls.stashed.clear()
        held.in_signal_stop = held.in_signal_stop or calls.in_signal_stop

    @property
    def syscall_ip(self) -> int:
        return self._calls.syscall_ip if self._calls is not None else 0

    def _close_plan(self) -> None:
        if self._owns_plan and self._plan is not None:
            self._plan.close()

    def call(self, fn: Callable[[Injector], T]) -> T:
        """Run `fn(self)` on the tracer thread, where ptrace requests for the held thread must be made."""
        assert self._held is not None and self._held.session is not None
        return self._held.session.call(lambda: fn(self))

    # -- runs on the tracer thread --

    def _prepare(self) -> None:
        tid = self.tid
        held = self._held
        assert held is not None
        calls = self._calls = RemoteCalls(self.pid, tid, peek_exit=held.peek_exit)
        calls.in_signal_stop = held.in_signal_stop
        if calls.saved.cs != ptrace.USER_CS_64:
            raise NotSupported(
                f"thread {tid} of process {self.pid} runs 32-bit code (cs={calls.saved.cs:#x}); only 64-bit "
                "x86_64 code is supported",
                pid=self.pid,
            )
        calls.syscall_ip = self._find_syscall_ip(calls.saved)
        self._setup_scratch(calls.saved.rsp)

    def _find_syscall_ip(self, saved: ptrace.user_regs_struct) -> int:
        plan = self.plan
        rip = saved.rip
        if signed64(saved.orig_rax) >= 0:
            if plan.blocked_pc == rip:
                return rip - 2
            try:
                if ptrace.process_vm_readv(self.tid, rip - 2, 2) == SYSCALL_INSN:
                    return rip - 2
            except OSError:
                pass
        if plan.vdso_insn is not None:
            return plan.vdso_insn
        if plan.libc_insn is None:
            plan.libc_insn = find_syscall_insn(self.tid, plan.maps, "libc")
        if plan.libc_insn is not None:
            return plan.libc_insn
        raise NotSupported(
            f"process {self.pid} has no `syscall` instruction pss-dup could borrow (no [vdso], no libc)", pid=self.pid
        )

    def _setup_scratch(self, rsp: int) -> None:
        start = (rsp - RED_ZONE - SCRATCH_SIZE) & ~15
        if self.plan.stack_scratch_ok(start, rsp):
            try:
                self._scratch_saved = ptrace.process_vm_readv(self.tid, start, SCRATCH_SIZE)
            except OSError:
                pass
            else:
                self.scratch = start
                return
        address = check(
            self.syscall(ptrace.SYS_mmap, 0, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
            "mmap",
        )
        self.scratch = address
        self._scratch_mapped = True

    def _restore_memory(self) -> None:
        if self._scratch_saved is not None:
            saved, self._scratch_saved = self._scratch_saved, None
            ptrace.process_vm_writev(self.tid, self.scratch, saved)
        if self._scratch_mapped:
            self._scratch_mapped = False
            check(self.syscall(ptrace.SYS_munmap, self.scratch, PAGE_SIZE), "munmap")

    def syscall(self, nr: int, *args: int) -> int:
        """Run system call `nr` in the held thread; the raw result (use `check` for -errno)."""
        calls = self._calls
        assert self._held is not None and self._held.session is not None and calls is not None
        return self._held.session.call(lambda: calls.syscall(nr, *args))

    # -- memory and fds of the target --

    def read(self, address: int, size: int) -> bytes:
        return ptrace.process_vm_readv(self.tid, address, size)

    def write(self, address: int, data: bytes) -> None:
        ptrace.process_vm_writev(self.tid, address, data)

    def getfd(self, remote_fd: int) -> int:
        """A local copy of the target's fd `remote_fd` (pidfd_getfd, O_CLOEXEC); EBADF if it has none."""
        return local_copy(self.plan.pidfd, remote_fd)


def local_copy(pidfd: int, remote_fd: int) -> int:
    """pidfd_getfd; our own full fd table is said as such, not taken for the target's (see typed_error)."""
    try:
        return ptrace.pidfd_getfd(pidfd, remote_fd)
    except OSError as exc:
        own = own_error(exc)
        if own is not None:
            raise own from None
        raise


def typed_error(pid: int, exc: OSError, what: str) -> PssError:
    """One OSError from the injection machinery as pss-dup's typed error."""
    if exc.errno in (errno.ESRCH, errno.ECHILD):
        return ProcessGone(f"process {pid} exited while pss-dup was working on it ({what})", pid=pid)
    if exc.errno in (errno.EPERM, errno.EACCES):
        return access.explain_denied(pid, what)
    if exc.errno == errno.EMFILE:
        return OperationFailed(
            f"process {pid} has no free file descriptor (RLIMIT_NOFILE reached); it was left unchanged", pid=pid
        )
    return OperationFailed(f"could not {what} in process {pid}: {exc.strerror or exc}", pid=pid)


# ---- operations ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PushResult:
    """What push_fd did: the fd number the target now holds, and how long its thread was stopped."""

    fd: int
    stopped_ms: float
    warnings: tuple[str, ...] = ()
    interruptions: tuple[Interruption, ...] = ()


def _run_injected(
    pid: int, *, force: bool, timeout: float, what: str, steps: Callable[[Injector], T], done: Callable[[T], str]
) -> tuple[T, Injector]:
    """Plan (before stopping anything), then seize, run `steps` on the tracer thread, restore; typed errors out.

    A Ctrl-C that came while the target was held is raised once it is restored; if `steps` had finished by then,
    its effect stays, and the Interrupted error says what it was (`done`), so that nothing is left unreported.
    """
    plan = plan_injection(pid, force=force)
    try:
        injector = Injector(pid, timeout=timeout, force=force, plan=plan)

        def whole() -> T:
            with injector:
                return steps(injector)

        finished: list[T] = []
        try:
            with TracerSession() as session:
                try:
                    finished.append(session.call(whole))
                except OSError as exc:
                    raise typed_error(pid, exc, what) from None
        except KeyboardInterrupt:
            if finished:
                raise Interrupted(f"interrupted after {done(finished[0])}", pid=pid) from None
            raise
        return finished[0], injector
    finally:
        plan.close()


def push_fd(target_pid: int, local_fd: int, *, cloexec: bool, force: bool, timeout: float) -> PushResult:
    """Give process `target_pid` its own copy of our fd `local_fd` (the same open file description).

    Injected socketpair; we pull one end with pidfd_getfd and send the fd over it with SCM_RIGHTS; injected
    recvmsg (MSG_DONTWAIT, MSG_CMSG_CLOEXEC unless inheritable) takes it in; both ends are closed in the target.
    Works whatever the target's credentials: it never has to open or trace anything of ours.
    """
    new_fd, injector = _run_injected(
        target_pid,
        force=force,
        timeout=timeout,
        what="push a file descriptor",
        steps=lambda inj: _push_steps(inj, local_fd, cloexec),
        done=lambda fd: f"process {target_pid} received it as fd {fd}, which it keeps (pss-dup free closes it)",
    )
    assert injector.stopped_ms is not None
    return PushResult(
        fd=new_fd, stopped_ms=injector.stopped_ms, warnings=injector.warnings, interruptions=injector.interruptions
    )


def _push_steps(inj: Injector, local_fd: int, cloexec: bool) -> int:
    base = inj.scratch
    inj.write(base, push_block(base))
    check(
        inj.syscall(ptrace.SYS_socketpair, socket.AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, base + SV_OFFSET), "socketpair"
    )
    sv0, sv1 = struct.unpack("<ii", inj.read(base + SV_OFFSET, 8))
    try:
        send_fd(inj.getfd(sv1), local_fd)
        flags = MSG_DONTWAIT | (MSG_CMSG_CLOEXEC if cloexec else 0)
        check(inj.syscall(ptrace.SYS_recvmsg, sv0, base + MSGHDR_OFFSET, flags), "recvmsg")
        return parse_rights(inj.read(base, CONTROL_OFFSET + CONTROL_SIZE))
    finally:
        close_results = [inj.syscall(ptrace.SYS_close, sv0), inj.syscall(ptrace.SYS_close, sv1)]
        for result in close_results:
            check(result, "close")


def send_fd(sock_fd: int, local_fd: int) -> None:
    """Send `local_fd` over our end of the target's socketpair (SCM_RIGHTS), then close that end, whatever happens."""
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM, 0, fileno=sock_fd)
    except BaseException:
        os.close(sock_fd)
        raise
    with sock:
        sock.sendmsg([b"P"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", local_fd))])


def push_block(base: int) -> bytes:
    """msghdr + iovec + data byte + control buffer + room for sv[2], laid out at `base` in the target."""
    msghdr = struct.pack(
        "<QI4xQQQQi4x",
        0,  # msg_name
        0,  # msg_namelen
        base + IOVEC_OFFSET,  # msg_iov
        1,  # msg_iovlen
        base + CONTROL_OFFSET,  # msg_control
        CONTROL_SIZE,  # msg_controllen
        0,  # msg_flags
    )
    iov = struct.pack("<QQ", base + BYTE_OFFSET, 1)
    block = bytearray(PUSH_BLOCK_SIZE)
    block[MSGHDR_OFFSET : MSGHDR_OFFSET + len(msghdr)] = msghdr
    block[IOVEC_OFFSET : IOVEC_OFFSET + len(iov)] = iov
    block[SV_OFFSET : SV_OFFSET + 8] = b"\xff" * 8
    return bytes(block)


def parse_rights(head: bytes) -> int:
    """The fd from the SCM_RIGHTS message recvmsg left in scratch (`head` = the first 120 scratch bytes)."""
    (msg_flags,) = struct.unpack_from("<i", head, MSG_FLAGS_OFFSET)
    length, level, kind, fd = struct.unpack_from("<QiiI", head, CONTROL_OFFSET)
    if msg_flags & MSG_CTRUNC or length != 20 or level != SOL_SOCKET or kind != SCM_RIGHTS:
        raise OperationFailed(
            f"the target's recvmsg returned no file descriptor (cmsg len {length}, level {level}, type {kind}, "
            f"flags {msg_flags:#x})"
        )
    return int(fd)


@dataclass(frozen=True, slots=True)
class CloseResult:
    """What close_remote_fd did to the process: how long its thread was stopped, and any blocked call it woke."""

    stopped_ms: float
    interruptions: tuple[Interruption, ...] = ()


def close_remote_fd(pid: int, fd: int, *, verify: Callable[[int], None], force: bool, timeout: float) -> CloseResult:
    """Close fd `fd` in process `pid`, but only after `verify` accepted it.

    The thread is held while the fd is checked, so no other thread of *this* thread's making can swap it; other
    threads keep running, so a program that closes and reuses the number at that instant can still race (see the
    design notes, section 5.4).
    """
    require_fd_number(pid, fd)

    def steps(inj: Injector) -> None:
        try:
            local = inj.getfd(fd)
        except OSError as exc:
            if exc.errno == errno.EBADF:
                raise no_such_fd(pid, fd) from None
            raise
        try:
            verify(local)
        finally:
            os.close(local)
        check(inj.syscall(ptrace.SYS_close, fd), f"close({fd})")

    _, injector = _run_injected(
        pid, force=force, timeout=timeout, what=f"close fd {fd}", steps=steps, done=lambda _: f"fd {fd} was closed"
    )
    assert injector.stopped_ms is not None
    return CloseResult(injector.stopped_ms, injector.interruptions)


def get_remote_fd(pid: int, fd: int) -> int:
    """A local copy (O_CLOEXEC) of fd `fd` of process `pid`, to read another process's snapshot; nothing stops."""
    require_fd_number(pid, fd)
    try:
        pidfd = open_fd_table(pid)
    except ProcessLookupError:
        raise NoSuchProcess(f"no process with PID {pid}", pid=pid) from None
    try:
        return local_copy(pidfd, fd)
    except OSError as exc:
        if exc.errno == errno.EBADF:
            raise no_such_fd(pid, fd) from None
        raise typed_error(pid, exc, f"read fd {fd} of") from None
    finally:
        os.close(pidfd)


def no_such_fd(pid: int, fd: int) -> NoSuchHandle:
    """A missing fd is its own error (exit 10), never "not a snapshot": the fd may have been freed already."""
    return NoSuchHandle(f"process {pid} has no fd {fd}", pid=pid)


def require_fd_number(pid: int, fd: int) -> None:
    """Refuse numbers no fd or process can have: the kernel would truncate them to some other, live one."""
    if not 0 < pid <= MAX_PID:
        raise NoSuchProcess(f"no process with PID {pid}", pid=pid)
    if not 0 <= fd <= MAX_HANDLE:
        raise no_such_fd(pid, fd)


# ---- dry runs ------------------------------------------------------------------------------------------------


def _dry_plan(pid: int, force: bool) -> InjectionPlan:
    plan = plan_injection(pid, force=force)
    if not access.probe_attach(pid):
        plan.close()
        raise access.explain_denied(pid, "stop (PTRACE_SEIZE)")
    return plan


def _stop_action(plan: InjectionPlan) -> str:
    site, where = plan.syscall_site()
    at = f"{site:#x}, {where}" if site is not None else "none found yet"
    doing = f"blocked in {plan.blocked_name}" if plan.blocked_name else f"state {plan.thread_state}"
    return (
        f"stop thread {plan.tid} ({plan.thread_name}, {doing}) of process {plan.pid} with PTRACE_SEIZE + "
        f"PTRACE_INTERRUPT{' and PTRACE_O_SUSPEND_SECCOMP' if plan.suspend_seccomp else ''}; borrow its `syscall` "
        f"instruction ({at}); scratch below the stack's red zone (or one mmapped page)"
    )


def dry_run_push(target_pid: int, *, force: bool) -> list[str]:
    """Everything push_fd would check, checked; nothing stopped or changed. Returns the steps it would take."""
    plan = _dry_plan(target_pid, force)
    try:
        return [
            *[f"warning: {w}" for w in plan.warnings],
            _stop_action(plan),
            f"inject socketpair(AF_UNIX, SOCK_DGRAM|SOCK_CLOEXEC) into process {target_pid}",
            "take one end with pidfd_getfd and send the snapshot fd over it (SCM_RIGHTS)",
            f"inject recvmsg(MSG_DONTWAIT|MSG_CMSG_CLOEXEC): process {target_pid} receives it as its lowest free fd",
            "inject close() on both socket ends, put back the stack bytes and registers, detach",
        ]
    finally:
        plan.close()


def dry_run_close(pid: int, fd: int, *, force: bool) -> list[str]:
    """Everything close_remote_fd would check (the fd exists, the process may be stopped), checked; nothing done."""
    plan = _dry_plan(pid, force)
    try:
        try:
            os.stat(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            raise no_such_fd(pid, fd) from None
        return [
            *[f"warning: {w}" for w in plan.warnings],
            _stop_action(plan),
            f"check while it is held that fd {fd} is a pss-dup snapshot (pidfd_getfd)",
            f"inject close({fd}), put back the registers, detach",
        ]
    finally:
        plan.close()

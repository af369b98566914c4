"""ctypes bindings for ptrace and its companions (waitpid, pidfds, process_vm_*, tgkill) on x86_64 Linux.

ptrace is called through `syscall(SYS_ptrace, ...)`, never glibc's `ptrace()` wrapper: the wrapper returns the
*data* for PEEK requests and reports errors only through errno, which makes -1 ambiguous. Every request made here
returns 0 or a count, so a -1 from the raw syscall always means failure.

Failures come back as OSError with the errno set; nothing in this module knows pss-dup's typed errors (the callers
translate them once, at the boundary). All buffers live in ctypes objects the caller may preallocate, so the hot
paths (freezing a thousand threads, injecting a syscall) allocate nothing per call.
"""

from __future__ import annotations

import sys

# Linux only: this lets mypy --platform win32 skip the module instead of flagging Linux-only calls.
assert sys.platform == "linux"

import ctypes
import errno
import os
from typing import Final

# ---- system call numbers (x86_64, asm/unistd_64.h) ----------------------------------------------------------

SYS_read: Final = 0
SYS_close: Final = 3
SYS_mmap: Final = 9
SYS_munmap: Final = 11
SYS_socketpair: Final = 53
SYS_recvmsg: Final = 47
SYS_ptrace: Final = 101
SYS_tgkill: Final = 234
SYS_process_vm_readv: Final = 310
SYS_process_vm_writev: Final = 311
SYS_kcmp: Final = 312
SYS_pidfd_open: Final = 434
SYS_pidfd_getfd: Final = 438

# ---- ptrace requests (linux/ptrace.h, asm/ptrace-abi.h) -----------------------------------------------------

PTRACE_PEEKUSER: Final = 3
PTRACE_CONT: Final = 7
PTRACE_KILL: Final = 8
PTRACE_SINGLESTEP: Final = 9
PTRACE_GETREGS: Final = 12
PTRACE_SETREGS: Final = 13
PTRACE_GETFPREGS: Final = 14
PTRACE_ATTACH: Final = 16
PTRACE_DETACH: Final = 17
PTRACE_SETOPTIONS: Final = 0x4200
PTRACE_GETEVENTMSG: Final = 0x4201
PTRACE_GETSIGINFO: Final = 0x4202
PTRACE_SETSIGINFO: Final = 0x4203
PTRACE_GETREGSET: Final = 0x4204
PTRACE_SETREGSET: Final = 0x4205
PTRACE_SEIZE: Final = 0x4206
PTRACE_INTERRUPT: Final = 0x4207
PTRACE_LISTEN: Final = 0x4208
PTRACE_PEEKSIGINFO: Final = 0x4209
PTRACE_GETSIGMASK: Final = 0x420A
PTRACE_SETSIGMASK: Final = 0x420B
PTRACE_GET_SYSCALL_INFO: Final = 0x420E  # 5.3

# ---- ptrace options and events ------------------------------------------------------------------------------

PTRACE_O_TRACESYSGOOD: Final = 0x00000001
PTRACE_O_TRACEFORK: Final = 0x00000002
PTRACE_O_TRACEVFORK: Final = 0x00000004
PTRACE_O_TRACECLONE: Final = 0x00000008
PTRACE_O_TRACEEXEC: Final = 0x00000010
PTRACE_O_TRACEVFORKDONE: Final = 0x00000020
PTRACE_O_TRACEEXIT: Final = 0x00000040
PTRACE_O_TRACESECCOMP: Final = 0x00000080
PTRACE_O_EXITKILL: Final = 0x00100000
PTRACE_O_SUSPEND_SECCOMP: Final = 0x00200000

PTRACE_EVENT_FORK: Final = 1
PTRACE_EVENT_VFORK: Final = 2
PTRACE_EVENT_CLONE: Final = 3
PTRACE_EVENT_EXEC: Final = 4
PTRACE_EVENT_VFORK_DONE: Final = 5
PTRACE_EVENT_EXIT: Final = 6
PTRACE_EVENT_SECCOMP: Final = 7
PTRACE_EVENT_STOP: Final = 128

# ---- regsets (linux/elf.h) -----------------------------------------------------------------------------------

NT_PRSTATUS: Final = 1
NT_PRFPREG: Final = 2
NT_X86_XSTATE: Final = 0x202

USER_REGS_SIZE: Final = 216
#: Where rax sits in struct user (it starts with user_regs_struct; rax is its eleventh word), for PTRACE_PEEKUSER.
USER_RAX_OFFSET: Final = 80
USER_FPREGS_SIZE: Final = 512
#: The kernel shrinks iov_len to the real XSAVE size (11008 bytes with AMX); 64 KiB leaves room for growth.
XSTATE_BUFFER_SIZE: Final = 64 * 1024

# ---- wait ----------------------------------------------------------------------------------------------------

WNOHANG: Final = 1
WSTOPPED: Final = 2
WEXITED: Final = 4
WNOWAIT: Final = 0x01000000
__WALL: Final = 0x40000000
P_PID: Final = 1

# ---- x86_64 segment selectors --------------------------------------------------------------------------------

USER_CS_64: Final = 0x33
USER_CS_32: Final = 0x23

#: eflags bits the injector clears: trap flag (single-step) and direction flag (string ops go up, per the ABI).
X86_EFLAGS_TF: Final = 0x100
X86_EFLAGS_DF: Final = 0x400

#: struct ptrace_syscall_info's `arch` on x86_64 (linux/audit.h).
AUDIT_ARCH_X86_64: Final = 0xC000003E

#: Size of a `siginfo_t` on every Linux ABI.
SIGINFO_SIZE: Final = 128
#: The kernel's sigset for rt_sig*/PTRACE_*SIGMASK: 64 signals, 8 bytes.
KERNEL_SIGSET_SIZE: Final = 8


#: x86_64 `struct user_regs_struct` (asm/user_64.h), in the kernel's order.
USER_REGS_NAMES: Final = (
    "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx", "rsi", "rdi",
    "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs",
)  # fmt: skip


class user_regs_struct(ctypes.Structure):
    """x86_64 `struct user_regs_struct`: 27 x u64, the NT_PRSTATUS regset (PTRACE_GETREGS/SETREGS)."""

    _fields_ = [(name, ctypes.c_uint64) for name in USER_REGS_NAMES]

    rax: int
    rip: int
    rsp: int
    orig_rax: int
    cs: int
    eflags: int
    rdi: int
    rsi: int
    rdx: int
    r10: int
    r8: int
    r9: int


class iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class siginfo_t(ctypes.Structure):
    """The 128-byte siginfo; only the common head is named, the union stays raw bytes (it is put back as is)."""

    _fields_ = [
        ("si_signo", ctypes.c_int32),
        ("si_errno", ctypes.c_int32),
        ("si_code", ctypes.c_int32),
        ("_pad", ctypes.c_int32),
        ("_union", ctypes.c_uint8 * (SIGINFO_SIZE - 16)),
    ]


class ptrace_syscall_info(ctypes.Structure):
    """struct ptrace_syscall_info (linux/ptrace.h): the head every stop fills; the per-`op` union stays raw bytes."""

    _fields_ = [
        ("op", ctypes.c_uint8),
        ("_reserved", ctypes.c_uint8 * 3),
        ("arch", ctypes.c_uint32),
        ("instruction_pointer", ctypes.c_uint64),
        ("stack_pointer", ctypes.c_uint64),
        ("_union", ctypes.c_uint8 * 64),
    ]

    op: int
    arch: int
    instruction_pointer: int
    stack_pointer: int


assert ctypes.sizeof(user_regs_struct) == USER_REGS_SIZE
assert ctypes.sizeof(siginfo_t) == SIGINFO_SIZE

_libc = ctypes.CDLL(None, use_errno=True)
#: `long syscall(long nr, ...)` with six long arguments, for calls that pass addresses or 64-bit values.
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_syscall.argtypes = [ctypes.c_long] * 7
#: The same function without argtypes, for ptrace: ctypes' per-argument conversion costs about 0.4 us each, three
#: times the system call itself when a thousand threads are frozen. Arguments must then be small ints (passed as C
#: int, which libffi sign-extends to the full register) or ctypes.byref() pointers; anything else raises.
_syscall_fast = ctypes.CDLL(None, use_errno=True).syscall
_syscall_fast.restype = ctypes.c_long

#: A ptrace argument: a small int (request data, option bits, a signal) or a ctypes.byref() pointer.
Arg = object


def _fail(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def ptrace(request: int, tid: int, addr: Arg = 0, data: Arg = 0) -> int:
    """The raw ptrace system call; OSError on failure. Pointers are passed with ctypes.byref()."""
    result: int = _syscall_fast(SYS_ptrace, request, tid, addr, data)
    if result == -1:
        raise _fail(f"ptrace({request:#x}, {tid})")
    return result


def seize(tid: int, options: int) -> None:
    """PTRACE_SEIZE: attach without stopping the thread and without SIGSTOP (3.4+)."""
    ptrace(PTRACE_SEIZE, tid, 0, options)


def interrupt(tid: int) -> None:
    """PTRACE_INTERRUPT: ask a seized thread to enter PTRACE_EVENT_STOP."""
    ptrace(PTRACE_INTERRUPT, tid, 0, 0)


def detach(tid: int, signo: int = 0) -> None:
    """PTRACE_DETACH from a ptrace-stop; `signo` is delivered if the thread sits in a signal-delivery-stop."""
    ptrace(PTRACE_DETACH, tid, 0, signo)


def cont(tid: int, signo: int = 0) -> None:
    """PTRACE_CONT: resume a ptrace-stopped thread; from a signal-delivery-stop, `signo` is the signal delivered."""
    ptrace(PTRACE_CONT, tid, 0, signo)


def listen(tid: int) -> None:
    """PTRACE_LISTEN: a seized thread in a group-stop stays stopped as if untraced, yet reports the next event."""
    ptrace(PTRACE_LISTEN, tid, 0, 0)


def singlestep(tid: int, signo: int = 0) -> None:
    ptrace(PTRACE_SINGLESTEP, tid, 0, signo)


def get_regs(tid: int, regs: user_regs_struct) -> None:
    ptrace(PTRACE_GETREGS, tid, 0, ctypes.byref(regs))


def set_regs(tid: int, regs: user_regs_struct) -> None:
    ptrace(PTRACE_SETREGS, tid, 0, ctypes.byref(regs))


def get_siginfo(tid: int, out: siginfo_t) -> None:
    """PTRACE_GETSIGINFO; EINVAL in a PTRACE_EVENT_STOP (a group-stop or interrupt carries no siginfo)."""
    ptrace(PTRACE_GETSIGINFO, tid, 0, ctypes.byref(out))


def set_siginfo(tid: int, info: siginfo_t) -> None:
    ptrace(PTRACE_SETSIGINFO, tid, 0, ctypes.byref(info))


def get_syscall_info(tid: int, out: ptrace_syscall_info) -> int:
    """PTRACE_GET_SYSCALL_INFO (5.3+) of a stopped thread into `out`; the size of the kernel's whole answer."""
    return ptrace(PTRACE_GET_SYSCALL_INFO, tid, ctypes.sizeof(out), ctypes.byref(out))


def get_event_msg(tid: int) -> int:
    """PTRACE_GETEVENTMSG: the new tid after PTRACE_EVENT_CLONE/FORK/VFORK."""
    out = ctypes.c_ulong()
    ptrace(PTRACE_GETEVENTMSG, tid, 0, ctypes.byref(out))
    return int(out.value)


class RaxReader:
    """rax of stopped threads (PTRACE_PEEKUSER into one word, prebuilt byref()): the one register a thaw looks at in
    every thread of a freeze that read no registers, since a thread that the stop ended a call for shows its result
    there (see restart.py); a whole PTRACE_GETREGS per thread made that thaw a quarter slower at 1,000 threads."""

    def __init__(self) -> None:
        self._word = ctypes.c_long()
        self._ref = ctypes.byref(self._word)

    def read(self, tid: int) -> int:
        """The signed value of rax; OSError on failure (ESRCH: the thread is gone)."""
        if _syscall_fast(SYS_ptrace, PTRACE_PEEKUSER, tid, USER_RAX_OFFSET, self._ref) == -1:
            raise _fail(f"PTRACE_PEEKUSER(rax, {tid})")
        return self._word.value


class RegsetReader:
    """Reads the register sets of stopped threads into buffers allocated once: the inner loop of a freeze.

    Each call is the bare ctypes call with prebuilt byref() arguments; at a thousand threads the Python around
    the system calls, not the kernel (about 1.5 us per GETREGSET here), is what the target's stop time pays for.
    """

    def __init__(self, *, fp: bool, xstate: bool) -> None:
        self._gpr = ctypes.create_string_buffer(USER_REGS_SIZE)
        self._fp = ctypes.create_string_buffer(USER_FPREGS_SIZE if fp else 0)
        self._xstate = ctypes.create_string_buffer(XSTATE_BUFFER_SIZE if xstate else 0)
        self._gpr_iov = iovec(ctypes.addressof(self._gpr), USER_REGS_SIZE)
        self._fp_iov = iovec(ctypes.addressof(self._fp), USER_FPREGS_SIZE)
        self._xstate_iov = iovec(ctypes.addressof(self._xstate), XSTATE_BUFFER_SIZE)
        self._mask = ctypes.c_uint64()
        self._refs = (
            ctypes.byref(self._gpr_iov),
            ctypes.byref(self._fp_iov),
            ctypes.byref(self._xstate_iov),
            ctypes.byref(self._mask),
        )
        self.fp = fp
        self.xstate = xstate

    def read(self, tid: int) -> tuple[bytes, bytes | None, bytes | None, int]:
        """(NT_PRSTATUS, NT_PRFPREG or None, NT_X86_XSTATE or None, signal mask) of stopped thread `tid`.

        OSError on failure (ESRCH: the thread is gone); an XSTATE the CPU does not have comes back as None.
        """
        call = _syscall_fast
        gpr_ref, fp_ref, xstate_ref, mask_ref = self._refs
        self._gpr_iov.iov_len = USER_REGS_SIZE
        if call(SYS_ptrace, PTRACE_GETREGSET, tid, NT_PRSTATUS, gpr_ref) == -1:
            raise _fail(f"PTRACE_GETREGSET(NT_PRSTATUS, {tid})")
        gpr = self._gpr.raw[: self._gpr_iov.iov_len]
        fp = xstate = None
        if self.fp:
            self._fp_iov.iov_len = USER_FPREGS_SIZE
            if call(SYS_ptrace, PTRACE_GETREGSET, tid, NT_PRFPREG, fp_ref) == -1:
                raise _fail(f"PTRACE_GETREGSET(NT_PRFPREG, {tid})")
            fp = self._fp.raw
        if self.xstate:
            self._xstate_iov.iov_len = XSTATE_BUFFER_SIZE
            if call(SYS_ptrace, PTRACE_GETREGSET, tid, NT_X86_XSTATE, xstate_ref) != -1:
                xstate = ctypes.string_at(self._xstate, self._xstate_iov.iov_len)
            elif ctypes.get_errno() not in (errno.ENODEV, errno.EINVAL, errno.EIO):
                raise _fail(f"PTRACE_GETREGSET(NT_X86_XSTATE, {tid})")
        if call(SYS_ptrace, PTRACE_GETSIGMASK, tid, KERNEL_SIGSET_SIZE, mask_ref) == -1:
            raise _fail(f"PTRACE_GETSIGMASK({tid})")
        return gpr, fp, xstate, self._mask.value


# ---- wait status decoding ------------------------------------------------------------------------------------


def stop_event(status: int) -> int:
    """The PTRACE_EVENT_* of a ptrace-stop (status >> 16); 0 for a signal-delivery-stop."""
    return (status >> 16) & 0xFFFF


#: peek_exit_status's answer for a task that is gone with no status left to look at.
GONE_UNSEEN: Final = -1


def peek_exit_status(tid: int) -> int | None:
    """How `tid` ended, as a waitpid() status, or None while it lives. Looks without reaping (WNOWAIT), so a
    tracer that is also the parent leaves the status to the parent's own wait(); GONE_UNSEEN if nothing is left."""
    try:
        result = os.waitid(P_PID, tid, WEXITED | WSTOPPED | WNOHANG | WNOWAIT | __WALL)
    except ChildProcessError:
        return GONE_UNSEEN
    if result is None:
        return None
    if result.si_code == os.CLD_EXITED:
        return (result.si_status & 0xFF) << 8
    if result.si_code in (os.CLD_KILLED, os.CLD_DUMPED):
        return result.si_status | (0x80 if result.si_code == os.CLD_DUMPED else 0)
    return None


# ---- pidfds, other processes' memory, signals ----------------------------------------------------------------


#: pidfd_open flag (6.9+): a pidfd for one thread, whose fd table pidfd_getfd then reads.
PIDFD_THREAD: Final = os.O_EXCL


def pidfd_open(pid: int, flags: int = 0) -> int:
    """pidfd_open (5.3+); no access check beyond seeing the pid."""
    return os.pidfd_open(pid, flags)


def pidfd_getfd(pidfd: int, target_fd: int) -> int:
    """pidfd_getfd (5.6+): a copy of another process's fd; needs PTRACE_MODE_ATTACH_REALCREDS. Always O_CLOEXEC."""
    result: int = _syscall(SYS_pidfd_getfd, pidfd, target_fd, 0, 0, 0, 0)
    if result == -1:
        raise _fail(f"pidfd_getfd(fd {target_fd})")
    return result


def _vm_rw(number: int, pid: int, local: iovec, remote: iovec, what: str) -> int:
    result: int = _syscall(number, pid, ctypes.addressof(local), 1, ctypes.addressof(remote), 1, 0)
    if result == -1:
        raise _fail(what)
    return result


def process_vm_readv(pid: int, address: int, size: int) -> bytes:
    """Read `size` bytes at `address` of process `pid`; OSError (EFAULT, EIO) or a short read raises."""
    buffer = ctypes.create_string_buffer(size)
    local = iovec(ctypes.addressof(buffer), size)
    remote = iovec(address, size)
    got = _vm_rw(SYS_process_vm_readv, pid, local, remote, f"process_vm_readv({pid}, {address:#x})")
    if got != size:
        raise OSError(5, f"process_vm_readv({pid}, {address:#x}): short read, {got} of {size} bytes")
    return buffer.raw


def process_vm_writev(pid: int, address: int, data: bytes) -> None:
    """Write `data` at `address` of process `pid`; needs the page writable (no FOLL_FORCE, unlike /proc/PID/mem)."""
    buffer = ctypes.create_string_buffer(data, len(data))
    local = iovec(ctypes.addressof(buffer), len(data))
    remote = iovec(address, len(data))
    got = _vm_rw(SYS_process_vm_writev, pid, local, remote, f"process_vm_writev({pid}, {address:#x})")
    if got != len(data):
        raise OSError(5, f"process_vm_writev({pid}, {address:#x}): short write, {got} of {len(data)} bytes")


def tgkill(tgid: int, tid: int, signo: int) -> None:
    result: int = _syscall(SYS_tgkill, tgid, tid, signo, 0, 0, 0)
    if result == -1:
        raise _fail(f"tgkill({tgid}, {tid}, {signo})")


KCMP_FILES: Final = 2


def kcmp_files(pid1: int, pid2: int) -> bool:
    """Do two tasks share one fd table (kcmp KCMP_FILES == 0)? Needs PTRACE_MODE_READ_REALCREDS on both."""
    result: int = _syscall(SYS_kcmp, pid1, pid2, KCMP_FILES, 0, 0, 0)
    if result == -1:
        raise _fail(f"kcmp({pid1}, {pid2}, KCMP_FILES)")
    return result == 0

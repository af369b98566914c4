"""Preflight checks before pss-dup stops a process, and the explanation when the kernel says no.

The kernel answers every refused attach with a bare EPERM. Which rule said no (credentials, Yama, dumpability,
another tracer, an LSM) is not in the error, so `explain_denied` works it out again from /proc, in the order the
kernel applies the rules (ptrace(2), "Ptrace access mode checking"), and names the rule and what to do.

`check_traceable` refuses, before anything is seized, what pss-dup must not or cannot stop: zombies, kernel threads,
processes someone else already traces, 32-bit tasks. (Whether a stop would show a process an EINTR, and how that
is undone, is restart.py's.)
"""

from __future__ import annotations

import sys

# Linux only: this lets mypy --platform win32 skip the module instead of flagging Linux-only calls.
assert sys.platform == "linux"

import errno
import os
import platform
import pwd
import struct

from pss_cli.errors import AccessDenied, NoSuchProcess, NotSupported, Refused, ZombieProcess
from pss_cli.platform.linux import procfs, ptrace

CAP_SYS_PTRACE = 19
CAP_SYS_ADMIN = 21
#: The capabilities by number (linux/capability.h), as the runtimes' --cap-add flags name them without CAP_.
CAPABILITY_NAMES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
    "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
    "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
    "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF",
    "CHECKPOINT_RESTORE",
)  # fmt: skip
#: How to give a container's pss-dup CAP_SYS_PTRACE, per runtime. The runtimes' default seccomp profiles (docker's
#: profiles/seccomp/default.json, podman's containers-common) allow ptrace, process_vm_readv and pidfd_getfd only to
#: a container that has the capability, so the one flag lifts both refusals.
CONTAINER_PTRACE_FIX = (
    "give the container CAP_SYS_PTRACE: docker run --cap-add SYS_PTRACE (a debug container beside it: docker run "
    "--pid container:NAME --cap-add SYS_PTRACE ...); podman run --cap-add SYS_PTRACE; Kubernetes: "
    'securityContext.capabilities.add: ["SYS_PTRACE"] (kubectl debug --profile=general adds it)'
)
#: When a custom seccomp profile, not the capability, blocks the calls.
CONTAINER_SECCOMP_FIX = (
    "use a seccomp profile that allows ptrace, process_vm_readv and pidfd_getfd: the runtime's default one with "
    "CAP_SYS_PTRACE added, or docker/podman run --security-opt seccomp=PROFILE.json (seccomp=unconfined to test); "
    "Kubernetes: securityContext.seccompProfile (type RuntimeDefault with the capability, or Localhost)"
)
YAMA_PTRACE_SCOPE = "/proc/sys/kernel/yama/ptrace_scope"

ELFCLASS32 = 1
ELFCLASS64 = 2
EM_X86_64 = 62

SECCOMP_MODE_DISABLED, SECCOMP_MODE_STRICT, SECCOMP_MODE_FILTER = 0, 1, 2
#: How /proc/PID/status's `Seccomp:` values read in a message.
SECCOMP_MODE_NAMES = {SECCOMP_MODE_STRICT: "seccomp strict mode", SECCOMP_MODE_FILTER: "a seccomp filter"}


def require_supported_arch() -> None:
    """Injection and register layouts are x86_64-only for now."""
    machine = platform.machine()
    if machine != "x86_64":
        name = "aarch64" if machine in ("aarch64", "arm64") else machine
        raise NotSupported(f"stopping and injecting into processes is not supported yet on {name}")


# ---- small facts from /proc (procfs parses; OSError passes through) ------------------------------------------


def thread_state(pid: int, tid: int) -> str:
    """The state letter of one thread ('X' once it is gone): a freeze reads it for every thread first."""
    try:
        return procfs.read_stat(pid, tid).state
    except (OSError, ValueError):
        return "X"


def process_name(pid: int, tid: int | None = None) -> str:
    """`comm` of the process (or of one of its threads), '?' once it is gone."""
    path = f"/proc/{pid}/comm" if tid is None else f"/proc/{pid}/task/{tid}/comm"
    try:
        with open(path, "rb") as f:
            return f.read().strip().decode("utf-8", "backslashreplace")
    except OSError:
        return "?"


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def own_capabilities() -> int:
    return int(procfs.read_status(os.getpid()).get("CapEff", "0"), 16)


def has_capability(cap: int) -> bool:
    return bool(own_capabilities() >> cap & 1)


def capability_names(mask: int) -> list[str]:
    """The CAP_ names of the bits set in `mask` (a capability set from /proc/PID/status)."""
    return [
        f"CAP_{CAPABILITY_NAMES[bit]}" if bit < len(CAPABILITY_NAMES) else f"capability {bit}"
        for bit in range(mask.bit_length())
        if mask >> bit & 1
    ]


def caps_beyond_ours(status: dict[str, str]) -> int:
    """The permitted capabilities of a process that this one lacks: with any, the kernel lets only a tracer with
    CAP_SYS_PTRACE attach, even one of the same user (security/commoncap.c, cap_ptrace_access_check)."""
    own = int(procfs.read_status(os.getpid()).get("CapPrm", "0"), 16)
    return int(status.get("CapPrm", "0"), 16) & ~own


def yama_scope() -> int | None:
    """kernel.yama.ptrace_scope, or None when Yama is not built in or not active."""
    try:
        with open(YAMA_PTRACE_SCOPE) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def tracer_of(pid: int, tid: int | None = None) -> int:
    """The tracer's *process* id (TracerPid names the tracing thread), 0 when untraced."""
    tracer_tid = int(procfs.read_status(pid, tid).get("TracerPid", "0"))
    if tracer_tid == 0:
        return 0
    try:
        return int(procfs.read_status(tracer_tid).get("Tgid", tracer_tid))
    except OSError:
        return tracer_tid


def seccomp_mode(pid: int) -> int:
    return int(procfs.read_status(pid).get("Seccomp", "0"))


def is_descendant(pid: int, ancestor: int) -> bool:
    current = pid
    for _ in range(4096):
        if current <= 1:
            return False
        try:
            current = procfs.read_stat(current).ppid
        except (OSError, ValueError):
            return False
        if current == ancestor:
            return True
    return False


def exe_elf_class(pid: int) -> tuple[int, int] | None:
    """(EI_CLASS, e_machine) of the running program, or None if /proc/PID/exe cannot be read."""
    try:
        with open(f"/proc/{pid}/exe", "rb") as f:
            head = f.read(20)
    except OSError:
        return None
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    return head[4], struct.unpack_from("<H", head, 18)[0]


# ---- explaining EPERM ---------------------------------------------------------------------------------------


def explain_denied(pid: int, what: str) -> AccessDenied:
    """Why the kernel refused `what` on `pid`, as one line naming the rule and the fix.

    Works the rules in the kernel's order (__ptrace_may_access, then the LSMs); the first rule that explains the
    refusal wins, and a Linux security module is the answer when none of the classic rules does.
    """
    prefix = f"permission denied to {what} process {pid} ({process_name(pid)})"
    try:
        status = procfs.read_status(pid)
    except FileNotFoundError:
        return AccessDenied(f"{prefix}, and it has exited since", pid=pid)
    except PermissionError:
        return AccessDenied(f"{prefix}: /proc/{pid} is not readable (hidepid mount option?); run as root", pid=pid)
    cap_ptrace = has_capability(CAP_SYS_PTRACE)
    tracer = int(status.get("TracerPid", "0"))
    if tracer and tracer not in (os.getpid(), *_own_tids()):
        owner = tracer_of(pid)
        return AccessDenied(
            f"{prefix}: it is already traced by PID {owner} ({process_name(owner)}); a process has one tracer at a "
            "time: detach that debugger or tracer (gdb, strace) first",
            pid=pid,
        )
    target_uids = [int(v) for v in status.get("Uid", "").split()[:3]]
    target_gids = [int(v) for v in status.get("Gid", "").split()[:3]]
    my_uid, my_gid = os.getuid(), os.getgid()
    if not cap_ptrace and (any(u != my_uid for u in target_uids) or any(g != my_gid for g in target_gids)):
        owner_uid = target_uids[0] if target_uids else -1
        return AccessDenied(
            f"{prefix}: it runs as user {user_name(owner_uid)} (uid {owner_uid}) and pss-dup as "
            f"{user_name(my_uid)} (uid {my_uid}); only the same user or a tracer with CAP_SYS_PTRACE may do this: "
            "run pss-dup as root (sudo)",
            pid=pid,
        )
    if not cap_ptrace and not _dumpable(pid, target_uids):
        return AccessDenied(
            f"{prefix}: it is not dumpable (prctl(PR_SET_DUMPABLE, 0), or a setuid/setgid or file-capability "
            "program), so only a tracer with CAP_SYS_PTRACE may attach: run pss-dup as root (sudo)",
            pid=pid,
        )
    beyond = caps_beyond_ours(status) if not cap_ptrace else 0
    if beyond:
        names = capability_names(beyond)
        listed = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        return AccessDenied(
            f"{prefix}: it holds capabilities pss-dup lacks ({listed}), so only a tracer with CAP_SYS_PTRACE may "
            f"attach, and pss-dup has not got it: run it as root on the host, or {CONTAINER_PTRACE_FIX}",
            pid=pid,
        )
    user_ns = _namespace("user", os.getpid()), _namespace("user", pid)
    if cap_ptrace and user_ns[0] and user_ns[1] and user_ns[0] != user_ns[1] and not _own_ns_is_initial():
        return AccessDenied(
            f"{prefix}: it lives in another user namespace ({user_ns[1]}) where pss-dup's CAP_SYS_PTRACE does not "
            "count: run pss-dup in the namespace that owns it, or from the host",
            pid=pid,
        )
    scope = yama_scope()
    if scope == 3:
        return AccessDenied(
            f"{prefix}: Yama kernel.yama.ptrace_scope=3 forbids attaching to any process until reboot", pid=pid
        )
    if scope == 2 and not cap_ptrace:
        return AccessDenied(
            f"{prefix}: Yama kernel.yama.ptrace_scope=2 lets only CAP_SYS_PTRACE attach: run pss-dup as root (sudo)",
            pid=pid,
        )
    if scope == 1 and not cap_ptrace and not is_descendant(pid, os.getpid()):
        return AccessDenied(
            f"{prefix}: Yama kernel.yama.ptrace_scope=1 lets a non-root tracer attach only to its own descendants: "
            "run pss-dup as root (sudo), or set `sysctl kernel.yama.ptrace_scope=0`",
            pid=pid,
        )
    own_seccomp = seccomp_mode(os.getpid())
    lsms = active_lsms()
    hint = "check the kernel/audit log (SELinux process:ptrace, AppArmor ptrace (trace) rules)"
    if own_seccomp:
        hint = "pss-dup itself runs under a seccomp filter that may block ptrace (containers: --cap-add SYS_PTRACE)"
    return AccessDenied(
        f"{prefix}: the classic ptrace rules allow it, so a Linux security module ({lsms or 'none listed'}) or a "
        f"seccomp filter denied it: {hint}",
        pid=pid,
    )


def _own_tids() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return []


def _dumpable(pid: int, target_uids: list[int]) -> bool:
    """A non-dumpable process's /proc files belong to root (task_dump_owner), whatever user it runs as."""
    try:
        owner = os.stat(f"/proc/{pid}/status").st_uid  # the /proc/PID directory itself keeps the real owner
    except OSError:
        return True
    return not (owner == 0 and target_uids and target_uids[1] != 0)


def _namespace(kind: str, pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None


def _own_ns_is_initial() -> bool:
    """The initial user namespace maps the whole uid range: "0 0 4294967295"."""
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() == ["0", "0", "4294967295"]
    except OSError:
        return True


def active_lsms() -> str:
    """The Linux security modules in force, as securityfs lists them ("" when it is not mounted)."""
    try:
        with open("/sys/kernel/security/lsm") as f:
            return f.read().strip().replace(",", ", ")
    except OSError:
        return ""


# ---- refusing before we start ------------------------------------------------------------------------------


def check_traceable(pid: int) -> None:
    """Raise the typed error for a process pss-dup must not (or cannot) stop; return if it may try.

    Zombie -> ZombieProcess; kernel thread or 32-bit task -> NotSupported; traced by another process -> Refused.
    Only the main thread's tracer is checked here; a tracer on another thread shows up as EPERM when seizing it.
    """
    require_supported_arch()
    try:
        st = procfs.read_stat(pid)
    except FileNotFoundError:
        raise NoSuchProcess(f"no process with PID {pid}", pid=pid) from None
    except PermissionError:
        raise explain_denied(pid, "read /proc of") from None
    comm = st.comm
    if st.flags & procfs.PF_KTHREAD:
        raise NotSupported(
            f"process {pid} ({comm}) is a kernel thread: it has no user registers, memory or fds to work on", pid=pid
        )
    if st.exited and not has_live_thread(pid):
        raise ZombieProcess(f"process {pid} ({comm}) is a zombie: it has exited and waits for its parent", pid=pid)
    try:
        tracer = tracer_of(pid)
    except FileNotFoundError:
        raise NoSuchProcess(f"process {pid} exited", pid=pid) from None
    if tracer and tracer != os.getpid():
        raise Refused(
            f"process {pid} ({comm}) is already traced by PID {tracer} ({process_name(tracer)}); a process has "
            "one tracer at a time: detach that debugger or tracer first",
            pid=pid,
        )
    elf = exe_elf_class(pid)
    if elf is not None and (elf[0] != ELFCLASS64 or elf[1] != EM_X86_64):
        kind = "32-bit" if elf[0] == ELFCLASS32 else f"ELF class {elf[0]}, machine {elf[1]}"
        raise NotSupported(
            f"process {pid} ({comm}) runs a {kind} program; only 64-bit x86_64 processes are supported", pid=pid
        )


def traced_elsewhere(pid: int, tid: int) -> Refused | None:
    """Refused when thread `tid` is traced by another process: PTRACE_SEIZE of it would fail with EPERM."""
    try:
        tracer = tracer_of(pid, tid)
    except OSError:
        return None
    if tracer and tracer != os.getpid():
        return Refused(
            f"thread {tid} of process {pid} is already traced by PID {tracer} ({process_name(tracer)}); "
            "a thread has one tracer at a time: detach that debugger or tracer first",
            pid=pid,
        )
    return None


def has_live_thread(pid: int) -> bool:
    """A group leader that called pthread_exit is a zombie while its other threads still run."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for tid in tids:
        try:
            if not procfs.read_stat(pid, int(tid)).exited:
                return True
        except (OSError, ValueError):
            continue
    return False


def probe_attach(pid: int) -> bool:
    """Would PTRACE_MODE_ATTACH_REALCREDS be granted? Answered by reading one byte with process_vm_readv.

    process_vm_readv makes the same access check as PTRACE_SEIZE (Yama included) and changes nothing, which makes
    it the check a dry run can afford. Any answer other than EPERM/EACCES counts as granted.
    """
    try:
        maps = procfs.read_maps(pid)
    except PermissionError:
        return False
    except OSError:
        return True
    for start, _end, perms, *_ in maps:
        if perms.startswith("r"):
            try:
                ptrace.process_vm_readv(pid, start, 1)
            except PermissionError:
                return False
            except OSError:
                continue
            return True
    return True


# ---- EINTR hazards -------------------------------------------------------------------------------------------


def socket_timeout(pid: int, fd: int, option: int, pidfd: int | None) -> bool:
    """Whether fd `fd` of `pid` is a socket with SO_RCVTIMEO/SO_SNDTIMEO set (read through a pidfd_getfd copy);
    True when it cannot be told (the caller then assumes the worst)."""
    if fd > 0x7FFFFFFF:
        return False
    try:
        link = os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return False
    if not link.startswith("socket:") or pidfd is None:
        return False
    try:
        local = ptrace.pidfd_getfd(pidfd, fd)
    except OSError:
        return True  # cannot look: assume the worst, the user can --force
    import socket  # only for a thread blocked in a socket call: most captures never need the module

    try:
        sock = socket.socket(fileno=local)
    except OSError as exc:
        os.close(local)
        return exc.errno != errno.ENOTSOCK
    try:
        sec, usec = struct.unpack("@qq", sock.getsockopt(socket.SOL_SOCKET, option, 16))
        return bool(sec or usec)
    except OSError:
        return True
    finally:
        sock.close()

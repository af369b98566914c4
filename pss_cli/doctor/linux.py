"""Doctor on Linux: the privileges pss-dup runs with, then each kernel feature it needs, probed on doctor's own child.

The probes call the features for real (memfd_create with seals, pidfd_open, pidfd_getfd, process_vm_readv,
PTRACE_SEIZE/INTERRUPT/GET_SYSCALL_INFO/DETACH), through the same bindings and constants as pss-dup
(platform/linux: ptrace, memfd, access, procfs). They make the raw requests rather than pss-dup's operations on
purpose: a failure then names the request the kernel refused.
"""

from __future__ import annotations

import sys

# Linux only: this lets mypy --platform win32 skip the module instead of flagging Linux-only calls.
assert sys.platform == "linux"

import errno
import fcntl
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pss_cli.doctor.checks import Checklist, Status, describe
from pss_cli.doctor.child import Child
from pss_cli.errors import ExitCode
from pss_cli.platform.linux import access, memfd, procfs, ptrace


def named(request: str, exc: OSError) -> OSError:
    """`exc` under the request's kernel name and its errno's symbol, which a reader can look up."""
    code = exc.errno or errno.EIO
    return OSError(code, f"{request}: {os.strerror(code)} ({errno.errorcode.get(code, code)})")


def request(name: str, call: Callable[..., object], *args: int) -> None:
    try:
        call(*args)
    except OSError as exc:
        raise named(name, exc) from None


def read_sysctl(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def kernel_version(release: str) -> tuple[int, int]:
    numbers = release.split("-")[0].split(".")
    try:
        return int(numbers[0]), int(numbers[1]) if len(numbers) > 1 else 0
    except ValueError:
        return 0, 0


# ---- privileges ------------------------------------------------------------------------------------------------


def own_container() -> str | None:
    """What shows that pss-dup runs in a container, or None: its own or its PID 1's cgroup path or environment
    (PID 1 of a container's PID namespace is the container's main process), or a runtime's marker file."""
    for pid in (os.getpid(), 1):
        where = procfs.locate(pid)
        if where is not None and where.container is not None:
            found = where.container
            named = f" {found.short_id}" if found.id else ""
            return f"a {found.runtime} container{named} (from the {found.source} of PID {pid})"
    for marker, runtime in (("/.dockerenv", "docker"), ("/run/.containerenv", "podman")):
        if os.path.exists(marker):
            return f"a {runtime} container ({marker} exists)"
    if "KUBERNETES_SERVICE_HOST" in os.environ:
        return "a Kubernetes pod (KUBERNETES_SERVICE_HOST is set)"
    return None


def check_privileges(checks: Checklist) -> None:
    status = procfs.read_status("self")
    cap_eff = int(status.get("CapEff", "0"), 16)
    has_ptrace = bool(cap_eff >> access.CAP_SYS_PTRACE & 1)
    container = own_container()
    if container is None:
        checks.passed("container", "none that /proc shows: pss-dup runs on the host")
    else:
        checks.passed("container", f"pss-dup runs in {container}; PIDs are this PID namespace's")
    euid = os.geteuid()
    who = "root" if euid == 0 else f"euid {euid}"
    if has_ptrace:
        checks.passed("root or CAP_SYS_PTRACE", f"{who}, CAP_SYS_PTRACE in CapEff ({cap_eff:#x})")
    else:
        bounded = int(status.get("CapBnd", "0"), 16) >> access.CAP_SYS_PTRACE & 1
        checks.add(
            "root or CAP_SYS_PTRACE",
            Status.FAIL,
            f"{who} without CAP_SYS_PTRACE"
            + ("" if bounded else " (not in the bounding set either: nothing run here can gain it)")
            + ": only this user's own, dumpable processes that hold no capability it lacks can be captured",
            ptrace_fix(euid, in_container=container is not None),
            code=ExitCode.ACCESS_DENIED,
        )
        if container is not None:
            check_namespace_init(checks)
    check_yama(checks, has_ptrace)
    seccomp = status.get("Seccomp", "?")
    filters = status.get("Seccomp_filters", "0")
    if seccomp == "0":
        checks.passed("seccomp (pss-dup itself)", "not filtered")
    else:
        checks.add(
            "seccomp (pss-dup itself)",
            Status.WARN,
            f"mode {seccomp} with {filters} filter(s): ptrace, process_vm_readv or pidfd_getfd may be denied (see "
            "the probes; a container runtime's default profile denies them without CAP_SYS_PTRACE), and "
            "PTRACE_O_SUSPEND_SECCOMP is impossible",
            (access.CONTAINER_PTRACE_FIX if not has_ptrace else access.CONTAINER_SECCOMP_FIX)
            if container is not None
            else "run pss-dup outside the sandbox, or with a seccomp profile that allows ptrace, process_vm_readv "
            "and pidfd_getfd",
        )
    nnp = status.get("NoNewPrivs", "?")
    checks.passed("no_new_privs", f"{nnp} (does not limit ptrace)")
    checks.passed("security modules", access.active_lsms() or "unknown (securityfs not mounted)")


def ptrace_fix(euid: int, *, in_container: bool) -> str:
    """sudo helps a user whose root has CAP_SYS_PTRACE; root in a container without it needs the runtime's flag."""
    fixes = [] if euid == 0 else ["run as root (sudo pss-dup ...), or grant CAP_SYS_PTRACE to the user running it"]
    if in_container:
        fixes.append(access.CONTAINER_PTRACE_FIX)
    return "; or ".join(fixes) or "grant CAP_SYS_PTRACE to this process"


def check_namespace_init(checks: Checklist) -> None:
    """Without CAP_SYS_PTRACE, a process holding a capability pss-dup lacks cannot be traced, whoever owns it:
    the container's main process (PID 1 here) usually holds the runtime's default set. Looked at only."""
    try:
        beyond = access.caps_beyond_ours(procfs.read_status(1))
    except OSError:
        return
    if beyond:
        names = access.capability_names(beyond)
        checks.add(
            "tracing PID 1",
            Status.FAIL,
            f"PID 1 holds capabilities pss-dup lacks ({', '.join(names[:4])}"
            + (f" and {len(names) - 4} more" if len(names) > 4 else "")
            + "): the kernel lets only a tracer with CAP_SYS_PTRACE capture it",
            access.CONTAINER_PTRACE_FIX,
            code=ExitCode.ACCESS_DENIED,
        )
    else:
        checks.passed("tracing PID 1", "PID 1 holds no capability pss-dup lacks")


def check_yama(checks: Checklist, has_ptrace: bool) -> None:
    scope = access.yama_scope()
    if scope is None:
        checks.passed("Yama ptrace_scope", "Yama is not active: classic ptrace permissions")
    elif scope == 0 or (scope in (1, 2) and has_ptrace):
        checks.passed("Yama ptrace_scope", f"{scope}" + (" (CAP_SYS_PTRACE overrides it)" if scope else ""))
    elif scope == 1:
        checks.add(
            "Yama ptrace_scope",
            Status.FAIL,
            "1: without CAP_SYS_PTRACE only descendants can be traced",
            "run as root, or (as root) sysctl kernel.yama.ptrace_scope=0",
            code=ExitCode.ACCESS_DENIED,
        )
    elif scope == 2:
        checks.add(
            "Yama ptrace_scope", Status.FAIL, "2: only CAP_SYS_PTRACE may trace", "run as root",
            code=ExitCode.ACCESS_DENIED,
        )  # fmt: skip
    else:
        checks.add(
            "Yama ptrace_scope",
            Status.FAIL,
            f"{scope}: no process may trace another until reboot",
            "reboot, and keep kernel.yama.ptrace_scope below 3",
            code=ExitCode.ACCESS_DENIED,
        )


# ---- kernel features, probed on doctor's own child -------------------------------------------------------------


def check_kernel(checks: Checklist, child: Child, timeout: float) -> None:
    release = platform.release()
    if kernel_version(release) >= (5, 6):
        checks.passed("kernel version", f"{release} (pss-dup needs 5.6+ for pidfd_getfd)")
    else:
        checks.add(
            "kernel version",
            Status.FAIL,
            f"{release}: pidfd_getfd needs 5.6 or later",
            "upgrade the kernel to 5.6 or later",
            code=ExitCode.NOT_SUPPORTED,
        )
    probe_memfd(checks)
    pidfd = -1
    with checks.probe("pidfd_open", "a 5.3+ kernel; a seccomp profile that allows pidfd_open") as detail:
        pidfd = ptrace.pidfd_open(child.pid)
        detail.append(f"pidfd {pidfd} for PID {child.pid}")
    try:
        with checks.probe(
            "pidfd_getfd", "a 5.6+ kernel; root or CAP_SYS_PTRACE; Yama and LSMs allowing ptrace"
        ) as detail:
            if pidfd < 0:
                raise OSError(errno.EBADF, "no pidfd (pidfd_open failed)")
            detail.append(probe_pidfd_getfd(pidfd, child))
    finally:
        if pidfd >= 0:
            os.close(pidfd)
    with checks.probe("process_vm_readv", "root or CAP_SYS_PTRACE; Yama and LSMs allowing ptrace") as detail:
        detail.append(probe_process_vm_readv(child.pid))
    with checks.probe(
        "ptrace",
        "root or CAP_SYS_PTRACE; Yama ptrace_scope below 3; an LSM/seccomp policy allowing ptrace",
    ) as detail:
        detail.append(PtraceProbe(child.pid, timeout, options=0).run())
    started = time.perf_counter()
    try:
        PtraceProbe(child.pid, timeout, options=ptrace.PTRACE_O_SUSPEND_SECCOMP).run()
        checks.passed(
            "PTRACE_O_SUSPEND_SECCOMP",
            "available: seccomp-filtered processes can be injected into",
            ms=(time.perf_counter() - started) * 1000,
        )
    except OSError as exc:
        checks.add(
            "PTRACE_O_SUSPEND_SECCOMP",
            Status.WARN,
            f"unavailable ({describe(exc)}): processes under a seccomp filter are refused unless --force",
            "needs CAP_SYS_ADMIN, no seccomp on pss-dup, and CONFIG_CHECKPOINT_RESTORE",
            ms=(time.perf_counter() - started) * 1000,
        )


def probe_memfd(checks: Checklist) -> None:
    noexec = True
    with checks.probe("memfd_create with seals", "a 3.17+ kernel (memfd_create, F_ADD_SEALS)") as detail:
        flags = memfd.MFD_CLOEXEC | memfd.MFD_ALLOW_SEALING
        try:
            fd = os.memfd_create("pss-doctor-probe", flags | memfd.MFD_NOEXEC_SEAL)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            noexec = False
            fd = os.memfd_create("pss-doctor-probe", flags)
        try:
            os.write(fd, b"pss-doctor" * 100)
            fcntl.fcntl(fd, memfd.F_ADD_SEALS, memfd.SNAPSHOT_SEALS)
            seals = fcntl.fcntl(fd, memfd.F_GET_SEALS)
            if seals & memfd.SNAPSHOT_SEALS != memfd.SNAPSHOT_SEALS:
                raise OSError(errno.EINVAL, f"F_GET_SEALS says {seals:#x} after sealing")
            try:
                os.write(fd, b"x")
                raise OSError(errno.EINVAL, "a write to the sealed memfd succeeded")
            except PermissionError:
                pass
            detail.append(f"sealed (F_GET_SEALS {seals:#x}); a write after sealing fails with EPERM")
        finally:
            os.close(fd)
    sysctl = read_sysctl("/proc/sys/vm/memfd_noexec")
    if noexec:
        checks.passed("MFD_NOEXEC_SEAL", "accepted (6.3+)" + (f"; vm.memfd_noexec={sysctl}" if sysctl else ""))
    elif sysctl == "2":
        checks.add(
            "MFD_NOEXEC_SEAL",
            Status.FAIL,
            "refused while vm.memfd_noexec=2 requires it",
            "sysctl vm.memfd_noexec=1",
            code=ExitCode.NOT_SUPPORTED,
        )
    else:
        checks.add(
            "MFD_NOEXEC_SEAL",
            Status.WARN,
            "not known to this kernel (before 6.3): snapshots are created without it, which is fine",
        )


def probe_pidfd_getfd(pidfd: int, child: Child) -> str:
    """Take a copy of the child's stdin and check it is the pipe doctor writes to."""
    try:
        fd = ptrace.pidfd_getfd(pidfd, 0)
    except OSError as exc:
        raise named("pidfd_getfd", exc) from None
    try:
        assert child.proc.stdin is not None
        ours = os.fstat(child.proc.stdin.fileno())
        theirs = os.fstat(fd)
        if (ours.st_dev, ours.st_ino) != (theirs.st_dev, theirs.st_ino):
            raise OSError(errno.EIO, "the fd obtained is not the child's stdin pipe")
    finally:
        os.close(fd)
    return "copied the child's fd 0: the same pipe inode doctor writes to"


def probe_process_vm_readv(pid: int) -> str:
    """Read the first 4 bytes of a file mapped at offset 0 in the child: an ELF image starts with \\x7fELF."""
    address, path = first_mapped_file(pid)
    try:
        head = ptrace.process_vm_readv(pid, address, 4)
    except OSError as exc:
        raise named("process_vm_readv", exc) from None
    if head != b"\x7fELF":
        raise OSError(errno.EIO, f"read {head!r} at {address:#x} ({path}), expected an ELF header")
    return f"read the ELF header of {Path(path).name} at {address:#x}"


def first_mapped_file(pid: int) -> tuple[int, str]:
    """(address, path) of the first readable file mapping at offset 0: the start of an ELF image."""
    for start, _end, perms, offset, _dev, _inode, path in procfs.read_maps(pid):
        if perms.startswith("r") and offset == 0 and path is not None and path.startswith("/"):
            return start, path
    raise OSError(errno.ENOENT, f"no file mapped at offset 0 in /proc/{pid}/maps")


@dataclass
class PtraceProbe:
    """Seize the child, interrupt it, read the stop with PTRACE_GET_SYSCALL_INFO, detach: it runs on untouched.

    The requests run on a tracer thread of their own, as pss-dup's do. A child that never stops cannot be
    detached (PTRACE_DETACH needs a ptrace-stop), nor one whose PTRACE_DETACH failed; ending that thread lets go
    of it. So no failure leaves the child traced by doctor, where the next probe of it would be refused as
    "already traced"; the failure says what happened and how the child was left.
    """

    pid: int
    timeout: float
    options: int
    seized: bool = False
    detached: bool = False

    def run(self) -> str:
        from pss_cli.platform.linux.freeze import TracerSession

        try:
            with TracerSession() as session:
                summary = session.call(self.stop_and_inspect)
        except OSError as exc:
            if not self.seized:
                raise
            text = f"{exc.strerror or exc}; {self.how_left()}"
            failure = type(exc)(text) if exc.errno is None else OSError(exc.errno, text)  # a TimeoutError stays one
            raise failure from exc
        tracer = tracer_pid(self.pid)
        if tracer is None:
            raise OSError(errno.ESRCH, f"PID {self.pid} exited after PTRACE_DETACH")
        if tracer:
            raise OSError(errno.EIO, f"PID {self.pid} still has TracerPid {tracer} after PTRACE_DETACH")
        return f"{summary}; detached (TracerPid 0)"

    def stop_and_inspect(self) -> str:
        """On the tracer thread: the requests in order; what the stop looked like."""
        request("PTRACE_SEIZE", ptrace.seize, self.pid, self.options)
        self.seized = True
        request("PTRACE_INTERRUPT", ptrace.interrupt, self.pid)
        status = wait_for_stop(self.pid, self.timeout)
        try:
            summary = describe_stop(self.pid, status)
        except OSError as exc:
            self.detach(after=exc)
            raise
        self.detach()
        return summary

    def detach(self, after: OSError | None = None) -> None:
        try:
            ptrace.detach(self.pid, 0)
        except OSError as exc:
            failure = named("PTRACE_DETACH", exc)
            if after is not None:
                failure = OSError(failure.errno, f"{failure.strerror}, after {after.strerror or after}")
            raise failure from after
        self.detached = True

    def how_left(self) -> str:
        """How a failed probe left the child, once the tracer thread has ended."""
        tracer = tracer_pid(self.pid)
        if tracer is None:
            return f"PID {self.pid} has exited"
        if tracer:
            return f"PID {self.pid} is still traced (TracerPid {tracer})"
        if self.detached:
            return "detached (TracerPid 0)"
        return "not detachable, so doctor ended its tracer thread, which let go of it (TracerPid 0)"


def wait_for_stop(pid: int, timeout: float) -> int:
    """The wait status of the child's ptrace-stop (a module function: in a class, `ptrace.__WALL` is mangled)."""
    deadline = time.monotonic() + timeout
    while True:
        waited, status = os.waitpid(pid, os.WNOHANG | ptrace.__WALL)
        if waited == pid:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"PID {pid} did not stop within {timeout:g} s of PTRACE_INTERRUPT")
        time.sleep(0.001)
    if not os.WIFSTOPPED(status):
        raise OSError(errno.ESRCH, f"the child did not stop (wait status {status:#x})")
    return status


def describe_stop(pid: int, status: int) -> str:
    info = ptrace.ptrace_syscall_info()
    try:
        ptrace.get_syscall_info(pid, info)
    except OSError as exc:
        raise named("PTRACE_GET_SYSCALL_INFO", exc) from None
    if info.arch != ptrace.AUDIT_ARCH_X86_64:
        raise OSError(errno.EIO, f"PTRACE_GET_SYSCALL_INFO reports arch {info.arch:#x}, not x86_64")
    event = ptrace.stop_event(status)
    kind = "PTRACE_EVENT_STOP" if event == ptrace.PTRACE_EVENT_STOP else f"stop event {event}"
    return f"PTRACE_SEIZE, PTRACE_INTERRUPT: {kind} at rip {info.instruction_pointer:#x}; PTRACE_GET_SYSCALL_INFO"


def tracer_pid(pid: int) -> int | None:
    """TracerPid of the process, None once it is gone."""
    try:
        return int(procfs.read_status(pid).get("TracerPid", "0"))
    except (OSError, ValueError):
        return None

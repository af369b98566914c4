"""`pss-dup doctor`: can this host do what pss-dup does? Each answer is a check with a reason and, if it fails, a fix.

The kernel features are probed by calling them for real, on processes doctor starts itself (never on anyone
else's): memfd_create with seals, pidfd_open, pidfd_getfd, process_vm_readv, PTRACE_SEIZE/INTERRUPT and
PTRACE_GET_SYSCALL_INFO. Then a live round trip through the public API between two of its own children:
capture one, dup the snapshot into the other, have that child read it from inside with open_snapshot, inspect it
from outside, free it, and check both children still run, are untraced, and exit cleanly when told to.
Every child is killed and reaped on every path (errors, Ctrl-C), and asks the kernel to kill it if doctor dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import errno
import json
import os
import platform
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pss_cli.errors import ExitCode, PssError


class Status(enum.Enum):
    PASS = "pass"
    WARN = "warn"  # works, with a caveat worth knowing; does not change the exit code
    FAIL = "fail"
    SKIP = "skip"  # not applicable here, optional, or not run because an earlier step failed


@dataclass(frozen=True, slots=True)
class Check:
    """One answer. `code` is the exit code a failure stands for: FAILED, ACCESS_DENIED or NOT_SUPPORTED."""

    section: str
    name: str
    status: Status
    detail: str
    fix: str | None = None
    code: ExitCode = ExitCode.OK
    ms: float | None = None


def exit_code(checks: list[Check]) -> ExitCode:
    """0 when nothing failed; else 5 if the host cannot do it at all, 4 if privileges are missing, otherwise 1."""
    codes = {c.code for c in checks if c.status is Status.FAIL}
    if not codes:
        return ExitCode.OK
    for code in (ExitCode.NOT_SUPPORTED, ExitCode.ACCESS_DENIED):
        if code in codes:
            return code
    return ExitCode.FAILED


# -- Linux constants, under their kernel names ---------------------------------------------------------------

MFD_CLOEXEC = 0x0001
MFD_ALLOW_SEALING = 0x0002
MFD_NOEXEC_SEAL = 0x0008  # 6.3
F_ADD_SEALS = 1033
F_GET_SEALS = 1034
F_SEAL_SEAL = 0x0001
F_SEAL_SHRINK = 0x0002
F_SEAL_GROW = 0x0004
F_SEAL_WRITE = 0x0008
SNAPSHOT_SEALS = F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE

SYS_pidfd_getfd = 438  # the same number on every architecture (5.6)
PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_GET_SYSCALL_INFO = 0x420E  # 5.3
PTRACE_O_SUSPEND_SECCOMP = 0x00200000
PTRACE_EVENT_STOP = 128
AUDIT_ARCH_X86_64 = 0xC000003E
WALL = 0x40000000  # __WALL
CAP_SYS_PTRACE = 19
CAP_SYS_ADMIN = 21
PR_SET_PDEATHSIG = 1

#: The child both round-trip processes run: it answers one JSON line per command on stdin, and exits at EOF.
#: It asks for SIGKILL if doctor dies, so it never outlives the run.
CHILD_SCRIPT = r"""
import json, os, sys
if sys.platform == "linux":
    import ctypes, signal
    ctypes.CDLL(None).prctl(1, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != int(sys.argv[1]):
        sys.exit(0)
def answer(**fields):
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()
answer(ready=os.getpid())
for line in sys.stdin:
    command, _, argument = line.strip().partition(" ")
    try:
        if command == "ping":
            answer(ok=True, pid=os.getpid())
        elif command == "read":
            fd = int(argument)
            link = os.readlink(f"/proc/self/fd/{fd}") if sys.platform == "linux" else None
            import pss_cli
            snapshot = pss_cli.open_snapshot(fd)
            answer(ok=True, link=link, source_pid=snapshot.process.pid,
                   threads=None if snapshot.threads is None else len(snapshot.threads))
        elif command == "closed":
            try:
                os.fstat(int(argument))
                answer(ok=False, error="the fd is still open")
            except OSError as exc:
                answer(ok=exc.errno == 9, error=exc.strerror)
        else:
            answer(ok=False, error=f"unknown command {command!r}")
    except Exception as exc:
        answer(ok=False, error=f"{type(exc).__name__}: {exc}")
"""


class Child:
    """A process doctor started itself; talks JSON lines over pipes. Killed and reaped by `close`, always."""

    def __init__(self, role: str) -> None:
        self.role = role
        package_root = str(Path(__file__).resolve().parent.parent)
        path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD_SCRIPT, str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": path},
        )
        self.replies: queue.Queue[dict[str, Any] | None] = queue.Queue()
        assert self.proc.stdout is not None
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self, stream: IO[bytes]) -> None:
        for line in stream:
            try:
                self.replies.put(json.loads(line))
            except ValueError:
                continue
        self.replies.put(None)

    def reply(self, timeout: float) -> dict[str, Any]:
        try:
            answer = self.replies.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(
                f"the {self.role} process (PID {self.pid}) did not answer within {timeout:g} s"
            ) from None
        if answer is None:
            raise ChildGone(f"the {self.role} process (PID {self.pid}) exited: {self.stderr_tail()}")
        return answer

    def ask(self, command: str, timeout: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()
        return self.reply(timeout)

    def stderr_tail(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return "still running"
        text = self.proc.stderr.read().decode("utf-8", "replace").strip().splitlines()
        return text[-1] if text else f"exit status {self.proc.returncode}"

    def finish(self, timeout: float) -> int | None:
        """Ask the child to exit (EOF on stdin) and reap it; None if it had to be killed."""
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.close()
            return None

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


class ChildGone(Exception):
    pass


# -- small readers -----------------------------------------------------------------------------------------------


def read_text(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def proc_status(pid: int | str) -> dict[str, str]:
    text = read_text(f"/proc/{pid}/status") or ""
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def kernel_version(release: str) -> tuple[int, int]:
    numbers = release.split("-")[0].split(".")
    try:
        return int(numbers[0]), int(numbers[1]) if len(numbers) > 1 else 0
    except ValueError:
        return 0, 0


def libc() -> ctypes.CDLL:
    lib = ctypes.CDLL(None, use_errno=True)
    lib.ptrace.restype = ctypes.c_long
    lib.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    lib.syscall.restype = ctypes.c_long
    return lib


def os_error(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)} ({errno.errorcode.get(err, err)})")


def error_code(exc: BaseException) -> ExitCode:
    """Doctor's vocabulary: a denied probe is a privilege failure, a missing feature is 'not supported'."""
    if isinstance(exc, PssError):
        return exc.exit_code if exc.exit_code in (ExitCode.ACCESS_DENIED, ExitCode.NOT_SUPPORTED) else ExitCode.FAILED
    if isinstance(exc, OSError) and exc.errno in (errno.EPERM, errno.EACCES):
        return ExitCode.ACCESS_DENIED
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSYS, errno.EINVAL, errno.EIO):
        return ExitCode.NOT_SUPPORTED
    return ExitCode.FAILED


def describe(exc: BaseException) -> str:
    if isinstance(exc, PssError | ChildGone | TimeoutError):
        return str(exc)
    if isinstance(exc, ImportError):
        return f"pss-dup is incomplete on this platform: {exc}"
    return f"{type(exc).__name__}: {exc}"


class Doctor:
    """Runs the checks in order, handing each to `report` as soon as it is known."""

    def __init__(self, timeout: float, report: Callable[[Check], None] | None = None) -> None:
        self.timeout = timeout
        self.report = report
        self.checks: list[Check] = []
        self.section = ""

    def add(
        self,
        name: str,
        status: Status,
        detail: str,
        fix: str | None = None,
        *,
        code: ExitCode = ExitCode.FAILED,
        ms: float | None = None,
    ) -> Check:
        check = Check(self.section, name, status, detail, fix, code if status is Status.FAIL else ExitCode.OK, ms)
        self.checks.append(check)
        if self.report is not None:
            self.report(check)
        return check

    def passed(self, name: str, detail: str, *, ms: float | None = None) -> Check:
        return self.add(name, Status.PASS, detail, ms=ms)

    @contextlib.contextmanager
    def probe(self, name: str, fix: str) -> Iterator[list[str]]:
        """Run a probe; it puts its success detail in the list. Any exception is its failure, with the fix."""
        detail: list[str] = []
        started = time.perf_counter()
        try:
            yield detail
        except Exception as exc:
            if isinstance(exc, ImportError):
                fix = "reinstall pss-dup: part of its backend is missing"
            self.add(
                name, Status.FAIL, describe(exc), fix, code=error_code(exc), ms=(time.perf_counter() - started) * 1000
            )
        else:
            self.passed(name, "; ".join(detail) or "ok", ms=(time.perf_counter() - started) * 1000)

    # -- the run ----------------------------------------------------------------------------------------------

    def run(self) -> list[Check]:
        self.section = "platform"
        supported = self.check_platform()
        if sys.platform == "linux":
            self.section = "privileges"
            self.check_linux_privileges()
        elif sys.platform == "win32":
            self.section = "privileges"
            self.check_windows_privileges()
        self.section = "tools"
        self.check_tools()
        if not supported:
            self.section = "round trip"
            self.add("round trip", Status.SKIP, "not run: this platform is not supported")
            return self.checks
        children: list[Child] = []
        try:
            self.section = "setup"
            source = receiver = None
            with self.probe("start two processes", "check that this Python can start subprocesses") as detail:
                source = Child("source")
                children.append(source)
                receiver = Child("receiver")
                children.append(receiver)
                for child in children:
                    child.reply(self.timeout)
                detail.append(f"source PID {source.pid}, receiver PID {receiver.pid} ({Path(sys.executable).name})")
            if source is None or receiver is None or self.checks[-1].status is Status.FAIL:
                self.add("round trip", Status.SKIP, "not run: the two processes did not start")
                return self.checks
            if sys.platform == "linux":
                self.section = "kernel"
                self.check_linux_kernel(source)
            self.section = "round trip"
            self.round_trip(source, receiver)
        finally:
            for child in children:
                child.close()
        return self.checks

    # -- platform ---------------------------------------------------------------------------------------------

    def check_platform(self) -> bool:
        machine = platform.machine()
        if sys.platform == "linux":
            self.passed("operating system", f"Linux {platform.release()}")
            if machine != "x86_64":
                self.add(
                    "architecture",
                    Status.FAIL,
                    f"{machine}: the Linux backend supports x86_64 only",
                    "run pss-dup on an x86_64 Linux host",
                    code=ExitCode.NOT_SUPPORTED,
                )
                return False
            self.passed("architecture", machine)
        elif sys.platform == "win32":
            self.passed("operating system", f"Windows {platform.version()}")
            if machine.upper() not in ("AMD64", "X86_64"):
                self.add(
                    "architecture",
                    Status.FAIL,
                    f"{machine}: pss-dup supports x64 Windows only",
                    "run pss-dup with a 64-bit Python on x64 Windows",
                    code=ExitCode.NOT_SUPPORTED,
                )
                return False
            self.passed("architecture", machine)
        else:
            self.add(
                "operating system",
                Status.FAIL,
                f"{sys.platform} ({machine}): pss-dup runs on Linux and Windows",
                "run pss-dup on Linux (x86_64) or Windows (x64)",
                code=ExitCode.NOT_SUPPORTED,
            )
            return False
        self.passed("python", f"{platform.python_version()} ({sys.executable})")
        return True

    # -- privileges -------------------------------------------------------------------------------------------

    def check_linux_privileges(self) -> None:
        if sys.platform != "linux":  # mypy --platform win32 skips what follows
            raise OSError(errno.ENOSYS, "Linux only")
        status = proc_status("self")
        cap_eff = int(status.get("CapEff", "0"), 16)
        has_ptrace = bool(cap_eff >> CAP_SYS_PTRACE & 1)
        euid = os.geteuid()
        who = "root" if euid == 0 else f"euid {euid}"
        if has_ptrace:
            self.passed("root or CAP_SYS_PTRACE", f"{who}, CAP_SYS_PTRACE in CapEff ({cap_eff:#x})")
        else:
            self.add(
                "root or CAP_SYS_PTRACE",
                Status.FAIL,
                f"{who} without CAP_SYS_PTRACE: only this user's own, dumpable processes can be captured",
                "run as root (sudo pss-dup ...), or grant CAP_SYS_PTRACE to the user running it",
                code=ExitCode.ACCESS_DENIED,
            )
        scope = read_text("/proc/sys/kernel/yama/ptrace_scope")
        if scope is None:
            self.passed("Yama ptrace_scope", "Yama is not active: classic ptrace permissions")
        elif scope == "0" or (scope in ("1", "2") and has_ptrace):
            self.passed("Yama ptrace_scope", f"{scope}" + (" (CAP_SYS_PTRACE overrides it)" if scope != "0" else ""))
        elif scope == "1":
            self.add(
                "Yama ptrace_scope",
                Status.FAIL,
                "1: without CAP_SYS_PTRACE only descendants can be traced",
                "run as root, or (as root) sysctl kernel.yama.ptrace_scope=0",
                code=ExitCode.ACCESS_DENIED,
            )
        elif scope == "2":
            self.add(
                "Yama ptrace_scope",
                Status.FAIL,
                "2: only CAP_SYS_PTRACE may trace",
                "run as root",
                code=ExitCode.ACCESS_DENIED,
            )
        else:
            self.add(
                "Yama ptrace_scope",
                Status.FAIL,
                f"{scope}: no process may trace another until reboot",
                "reboot, and keep kernel.yama.ptrace_scope below 3",
                code=ExitCode.ACCESS_DENIED,
            )
        seccomp = status.get("Seccomp", "?")
        filters = status.get("Seccomp_filters", "0")
        if seccomp == "0":
            self.passed("seccomp (pss-dup itself)", "not filtered")
        else:
            self.add(
                "seccomp (pss-dup itself)",
                Status.WARN,
                f"mode {seccomp} with {filters} filter(s): ptrace or pidfd calls may be blocked (see the probes), "
                "and PTRACE_O_SUSPEND_SECCOMP is impossible",
                "run pss-dup outside the sandbox, or with a seccomp profile that allows ptrace and pidfd_getfd",
            )
        nnp = status.get("NoNewPrivs", "?")
        self.passed("no_new_privs", f"{nnp} (does not limit ptrace)")
        lsm = read_text("/sys/kernel/security/lsm")
        self.passed("security modules", lsm or "unknown (securityfs not mounted)")

    def check_windows_privileges(self) -> None:
        try:
            from pss_cli.platform import backend

            impl: Any = backend()
            enable = getattr(impl, "enable_debug_privilege", None)
            if enable is None:
                self.add("SeDebugPrivilege", Status.SKIP, "not checked: this backend does not report it")
            elif enable():
                self.passed("SeDebugPrivilege", "present and enabled: other users' and service processes are reachable")
            else:
                self.add(
                    "SeDebugPrivilege",
                    Status.FAIL,
                    "not in this token: only this user's own, unprotected processes can be captured",
                    "run from an elevated prompt (Run as administrator)",
                    code=ExitCode.ACCESS_DENIED,
                )
        except Exception as exc:
            self.add("SeDebugPrivilege", Status.SKIP, f"not checked: {describe(exc)}")

    def check_tools(self) -> None:
        gdb = shutil.which("gdb")
        if gdb:
            self.passed("gdb (optional)", f"{gdb}: reads snapshot cores (pss-dup dump)")
        else:
            self.add(
                "gdb (optional)",
                Status.SKIP,
                "not installed: only needed to read snapshot cores with gdb",
                "apt install gdb (or dnf install gdb)",
            )

    # -- kernel probes on our own child -----------------------------------------------------------------------

    def check_linux_kernel(self, child: Child) -> None:
        if sys.platform != "linux":  # mypy --platform win32 skips what follows
            raise OSError(errno.ENOSYS, "Linux only")
        release = platform.release()
        major, minor = kernel_version(release)
        if (major, minor) >= (5, 6):
            self.passed("kernel version", f"{release} (pss-dup needs 5.6+ for pidfd_getfd)")
        else:
            self.add(
                "kernel version",
                Status.FAIL,
                f"{release}: pidfd_getfd needs 5.6 or later",
                "upgrade the kernel to 5.6 or later",
                code=ExitCode.NOT_SUPPORTED,
            )
        self.probe_memfd()
        lib = libc()
        pidfd = -1
        with self.probe("pidfd_open", "a 5.3+ kernel; a seccomp profile that allows pidfd_open") as detail:
            pidfd = os.pidfd_open(child.pid)
            detail.append(f"pidfd {pidfd} for PID {child.pid}")
        try:
            with self.probe(
                "pidfd_getfd", "a 5.6+ kernel; root or CAP_SYS_PTRACE; Yama and LSMs allowing ptrace"
            ) as detail:
                if pidfd < 0:
                    raise OSError(errno.EBADF, "no pidfd (pidfd_open failed)")
                detail.append(self.probe_pidfd_getfd(lib, pidfd, child))
        finally:
            if pidfd >= 0:
                os.close(pidfd)
        with self.probe("process_vm_readv", "root or CAP_SYS_PTRACE; Yama and LSMs allowing ptrace") as detail:
            detail.append(self.probe_process_vm_readv(lib, child.pid))
        with self.probe(
            "ptrace",
            "root or CAP_SYS_PTRACE; Yama ptrace_scope below 3; an LSM/seccomp policy allowing ptrace",
        ) as detail:
            detail.append(self.probe_ptrace(lib, child.pid, options=0))
        started = time.perf_counter()
        try:
            self.probe_ptrace(lib, child.pid, options=PTRACE_O_SUSPEND_SECCOMP)
            self.passed(
                "PTRACE_O_SUSPEND_SECCOMP",
                "available: seccomp-filtered processes can be injected into",
                ms=(time.perf_counter() - started) * 1000,
            )
        except OSError as exc:
            self.add(
                "PTRACE_O_SUSPEND_SECCOMP",
                Status.WARN,
                f"unavailable ({describe(exc)}): processes under a seccomp filter are refused unless --force",
                "needs CAP_SYS_ADMIN, no seccomp on pss-dup, and CONFIG_CHECKPOINT_RESTORE",
                ms=(time.perf_counter() - started) * 1000,
            )

    def probe_memfd(self) -> None:
        if sys.platform != "linux":  # mypy --platform win32 skips what follows
            raise OSError(errno.ENOSYS, "Linux only")
        noexec = True
        with self.probe("memfd_create with seals", "a 3.17+ kernel (memfd_create, F_ADD_SEALS)") as detail:
            try:
                fd = os.memfd_create("pss-doctor-probe", MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_NOEXEC_SEAL)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                noexec = False
                fd = os.memfd_create("pss-doctor-probe", MFD_CLOEXEC | MFD_ALLOW_SEALING)
            import fcntl

            try:
                os.write(fd, b"pss-doctor" * 100)
                fcntl.fcntl(fd, F_ADD_SEALS, SNAPSHOT_SEALS)
                seals = fcntl.fcntl(fd, F_GET_SEALS)
                if seals & SNAPSHOT_SEALS != SNAPSHOT_SEALS:
                    raise OSError(errno.EINVAL, f"F_GET_SEALS says {seals:#x} after sealing")
                try:
                    os.write(fd, b"x")
                    raise OSError(errno.EINVAL, "a write to the sealed memfd succeeded")
                except PermissionError:
                    pass
                detail.append(f"sealed (F_GET_SEALS {seals:#x}); a write after sealing fails with EPERM")
            finally:
                os.close(fd)
        sysctl = read_text("/proc/sys/vm/memfd_noexec")
        if noexec:
            self.passed("MFD_NOEXEC_SEAL", "accepted (6.3+)" + (f"; vm.memfd_noexec={sysctl}" if sysctl else ""))
        elif sysctl == "2":
            self.add(
                "MFD_NOEXEC_SEAL",
                Status.FAIL,
                "refused while vm.memfd_noexec=2 requires it",
                "sysctl vm.memfd_noexec=1",
                code=ExitCode.NOT_SUPPORTED,
            )
        else:
            self.add(
                "MFD_NOEXEC_SEAL",
                Status.WARN,
                "not known to this kernel (before 6.3): snapshots are created without it, which is fine",
            )

    @staticmethod
    def probe_pidfd_getfd(lib: ctypes.CDLL, pidfd: int, child: Child) -> str:
        """Take a copy of the child's stdin and check it is the pipe doctor writes to."""
        fd = lib.syscall(SYS_pidfd_getfd, ctypes.c_int(pidfd), ctypes.c_int(0), ctypes.c_uint(0))
        if fd < 0:
            raise os_error("pidfd_getfd")
        try:
            assert child.proc.stdin is not None
            ours = os.fstat(child.proc.stdin.fileno())
            theirs = os.fstat(fd)
            if (ours.st_dev, ours.st_ino) != (theirs.st_dev, theirs.st_ino):
                raise OSError(errno.EIO, "the fd obtained is not the child's stdin pipe")
        finally:
            os.close(fd)
        return "copied the child's fd 0: the same pipe inode doctor writes to"

    @staticmethod
    def probe_process_vm_readv(lib: ctypes.CDLL, pid: int) -> str:
        """Read the first 4 bytes of a file mapped at offset 0 in the child: an ELF image starts with \\x7fELF."""
        maps = read_text(f"/proc/{pid}/maps") or ""
        for line in maps.splitlines():
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[1].startswith("r") and int(fields[2], 16) == 0 and fields[5][0] == "/":
                address = int(fields[0].split("-")[0], 16)
                path = fields[5]
                break
        else:
            raise OSError(errno.ENOENT, f"no file mapped at offset 0 in /proc/{pid}/maps")

        class Iovec(ctypes.Structure):
            _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))

        buffer = ctypes.create_string_buffer(4)
        local = Iovec(ctypes.cast(buffer, ctypes.c_void_p), 4)
        remote = Iovec(address, 4)
        lib.process_vm_readv.restype = ctypes.c_ssize_t
        got = lib.process_vm_readv(
            ctypes.c_int(pid),
            ctypes.byref(local),
            ctypes.c_ulong(1),
            ctypes.byref(remote),
            ctypes.c_ulong(1),
            ctypes.c_ulong(0),
        )
        if got < 0:
            raise os_error("process_vm_readv")
        if buffer.raw != b"\x7fELF":
            raise OSError(errno.EIO, f"read {buffer.raw!r} at {address:#x} ({path}), expected an ELF header")
        return f"read the ELF header of {Path(path).name} at {address:#x}"

    def probe_ptrace(self, lib: ctypes.CDLL, pid: int, *, options: int) -> str:
        """Seize, interrupt, read the stop with PTRACE_GET_SYSCALL_INFO, detach. The child runs on untouched."""
        if sys.platform != "linux":  # mypy --platform win32 skips what follows
            raise OSError(errno.ENOSYS, "Linux only")
        if lib.ptrace(PTRACE_SEIZE, pid, None, ctypes.c_void_p(options)) != 0:
            raise os_error("PTRACE_SEIZE")
        stopped = False
        try:
            if lib.ptrace(PTRACE_INTERRUPT, pid, None, None) != 0:
                raise os_error("PTRACE_INTERRUPT")
            deadline = time.monotonic() + self.timeout
            while True:
                waited, status = os.waitpid(pid, os.WNOHANG | WALL)
                if waited == pid:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"PID {pid} did not stop within {self.timeout:g} s")
                time.sleep(0.001)
            if not os.WIFSTOPPED(status):
                raise OSError(errno.ESRCH, f"the child did not stop (wait status {status:#x})")
            stopped = True
            event = status >> 16
            info = ctypes.create_string_buffer(88)
            size = lib.ptrace(PTRACE_GET_SYSCALL_INFO, pid, ctypes.c_void_p(len(info)), info)
            if size < 0:
                raise os_error("PTRACE_GET_SYSCALL_INFO")
            arch = int.from_bytes(info.raw[4:8], "little")
            if arch != AUDIT_ARCH_X86_64:
                raise OSError(errno.EIO, f"PTRACE_GET_SYSCALL_INFO reports arch {arch:#x}, not x86_64")
            rip = int.from_bytes(info.raw[8:16], "little")
            kind = "PTRACE_EVENT_STOP" if event == PTRACE_EVENT_STOP else f"stop event {event}"
        finally:
            if stopped:
                if lib.ptrace(PTRACE_DETACH, pid, None, None) != 0:
                    raise os_error("PTRACE_DETACH")
            else:
                lib.ptrace(PTRACE_DETACH, pid, None, None)
        tracer = proc_status(pid).get("TracerPid")
        if tracer != "0":
            raise OSError(errno.EIO, f"PID {pid} still has TracerPid {tracer} after PTRACE_DETACH")
        return (
            f"PTRACE_SEIZE, PTRACE_INTERRUPT: {kind} at rip {rip:#x}; PTRACE_GET_SYSCALL_INFO; detached (TracerPid 0)"
        )

    # -- the round trip through the public API ----------------------------------------------------------------

    def round_trip(self, source: Child, receiver: Child) -> None:
        """The steps in order; whatever happened, both children are then checked and reaped."""
        self.exchange(source, receiver)
        self.check_children(source, receiver)

    def exchange(self, source: Child, receiver: Child) -> None:
        import pss_cli

        steps = ("capture", "dup", "receiver reads it", "inspect from outside", "free", "receiver's handle is closed")
        remaining = list(steps)

        def skip_rest(reason: str) -> None:
            for name in remaining:
                self.add(name, Status.SKIP, f"not run: {reason}")

        def step(name: str) -> Any:
            remaining.remove(name)
            return self.probe(name, FIXES[name])

        local = None
        handle: int | None = None
        try:
            with step("capture") as detail:
                local = pss_cli.capture_snapshot(source.pid, timeout=self.timeout)
                snap = local.model
                threads = "-" if snap.threads is None else len(snap.threads)
                handles = "-" if snap.handles is None else len(snap.handles)
                detail.append(
                    f"PID {source.pid}: {threads} thread(s), {handles} handle(s); stopped "
                    f"{fmt_ms(snap.performance.stopped_ms)}"
                )
            if local is None:
                skip_rest("the capture failed")
                return
            with step("dup") as detail:
                result = pss_cli.duplicate(local, source.pid, receiver.pid, timeout=self.timeout)
                handle = result.target_handle
                if handle is None:
                    raise OSError(errno.EIO, "the duplicate reported no handle in the target")
                detail.append(
                    f"PID {receiver.pid} now holds handle {handle}; stopped {fmt_ms(result.target_stopped_ms)}"
                )
        finally:
            if local is not None:
                local.close()
        if handle is None:
            skip_rest("the dup failed")
            return
        with step("receiver reads it") as detail:
            answer = receiver.ask(f"read {handle}", self.timeout)
            if not answer.get("ok"):
                raise OSError(errno.EIO, f"the receiver could not read handle {handle}: {answer.get('error')}")
            if answer.get("source_pid") != source.pid:
                raise OSError(
                    errno.EIO, f"the receiver read a snapshot of PID {answer.get('source_pid')}, not {source.pid}"
                )
            where = f" ({answer['link']})" if answer.get("link") else ""
            detail.append(f"open_snapshot({handle}) inside PID {receiver.pid}{where}: a snapshot of PID {source.pid}")
        with step("inspect from outside") as detail:
            seen = pss_cli.inspect(receiver.pid, handle, timeout=self.timeout)
            if seen.process.pid != source.pid:
                raise OSError(errno.EIO, f"inspect read a snapshot of PID {seen.process.pid}, not {source.pid}")
            detail.append(f"handle {handle} of PID {receiver.pid} holds PID {source.pid} ({seen.process.name})")
        freed = False
        with step("free") as detail:
            result_free = pss_cli.free(receiver.pid, handle, timeout=self.timeout)
            freed = True
            detail.append(f"closed handle {handle} in PID {receiver.pid}; stopped {fmt_ms(result_free.stopped_ms)}")
        if not freed:
            skip_rest("the free failed")
        elif sys.platform != "linux":  # an HPSS cannot be probed with fstat
            skip_rest("checked on Linux only")
        else:
            with step("receiver's handle is closed") as detail:
                answer = receiver.ask(f"closed {handle}", self.timeout)
                if not answer.get("ok"):
                    raise OSError(errno.EIO, f"handle {handle} is still usable in the receiver ({answer.get('error')})")
                detail.append(f"the receiver gets EBADF for fd {handle}")

    def check_children(self, source: Child, receiver: Child) -> None:
        with self.probe("both processes alive and untraced", FIXES["alive"]) as detail:
            for child in (source, receiver):
                answer = child.ask("ping", self.timeout)
                if answer.get("pid") != child.pid:
                    raise OSError(errno.EIO, f"the {child.role} process answered {answer}")
                if sys.platform == "linux":
                    status = proc_status(child.pid)
                    if status.get("TracerPid") != "0" or status.get("State", "")[:1] in ("T", "t"):
                        raise OSError(
                            errno.EIO,
                            f"the {child.role} process is left {status.get('State')} with "
                            f"TracerPid {status.get('TracerPid')}",
                        )
            detail.append("both answer" + (", TracerPid 0, not stopped" if sys.platform == "linux" else ""))
        with self.probe("both processes exit and are reaped", FIXES["reaped"]) as detail:
            codes = [child.finish(self.timeout) for child in (source, receiver)]
            if codes != [0, 0]:
                raise OSError(errno.EIO, f"exit statuses {codes} (None: had to be killed)")
            detail.append("both exited with status 0 at end of input and were reaped")


FIXES = {
    "capture": "see the privilege and ptrace checks above; `pss-dup capture PID` shows the full error",
    "dup": "see the pidfd_getfd and ptrace checks above; the target must allow ptrace (Yama, LSM, seccomp)",
    "receiver reads it": "the receiver must import pss_cli (same Python and install) to read its handle",
    "inspect from outside": "see the pidfd_getfd check above",
    "free": "see the ptrace check above",
    "receiver's handle is closed": "report a bug: free said it closed the handle",
    "alive": "report a bug: a process pss-dup touched was left stopped, traced or dead",
    "reaped": "report a bug: a process pss-dup touched did not run on normally",
}


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def run_doctor(timeout: float = 10.0, report: Callable[[Check], None] | None = None) -> list[Check]:
    """Every check, in order; `report` sees each one as soon as it is known (for streaming output)."""
    return Doctor(timeout, report).run()

"""Typed errors and their exit codes: the one place where a failure gets its number.

Everything below the CLI raises one of these; the CLI prints `str(error)` as a single line and exits with
`error.exit_code`. Messages say what happened, why, and what to do.
"""

from __future__ import annotations

import enum
import errno
import sys


class ExitCode(enum.IntEnum):
    """The documented exit codes (README, `pss-dup --help`)."""

    OK = 0
    FAILED = 1
    USAGE = 2
    NO_PROCESS = 3
    ACCESS_DENIED = 4
    NOT_SUPPORTED = 5
    PARTIAL = 6
    REFUSED = 7
    BAD_SNAPSHOT = 8
    FILE_EXISTS = 9
    NO_HANDLE = 10
    TIMEOUT = 124
    HANGUP = 129
    INTERRUPTED = 130
    BROKEN_PIPE = 141
    TERMINATED = 143


#: One line per code, for README and `--help`.
EXIT_CODE_HELP: dict[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.FAILED: "the operation failed (a system call the tool depends on returned an error); watch: an action "
    "or its --exec failed",
    ExitCode.USAGE: "usage error: bad option or argument, a name that matches several processes",
    ExitCode.NO_PROCESS: "no such process, or it exited or became a zombie during the operation",
    ExitCode.ACCESS_DENIED: "permission denied: not root, another user's process, Yama, non-dumpable, LSM",
    ExitCode.NOT_SUPPORTED: "not supported: platform, kernel, architecture, kernel thread, 32-bit task",
    ExitCode.PARTIAL: "partial success: with --all, some processes failed (see each report)",
    ExitCode.REFUSED: (
        "refused as unsafe for the process (seccomp, already traced by another tracer, an EINTR it would see); "
        "see --force"
    ),
    ExitCode.BAD_SNAPSHOT: "not a pss-dup snapshot, or a corrupt or unknown snapshot format",
    ExitCode.FILE_EXISTS: "the output file exists (use --force) or cannot be written",
    ExitCode.NO_HANDLE: "the process has no such handle (fd): nothing was done",
    ExitCode.TIMEOUT: "a process did not stop or answer within --timeout; watch: --duration ran out and no trigger "
    "fired",
    ExitCode.HANGUP: "ended by SIGHUP (the terminal closed); every process was restored first",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C); every process was restored first",
    ExitCode.BROKEN_PIPE: "ended by SIGPIPE; every process was restored first",
    ExitCode.TERMINATED: "ended by SIGTERM (kill, timeout, a service manager); every process was restored first",
}


class PssError(Exception):
    """Base of every error pss-dup reports; carries its exit code and, where known, the process."""

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str, *, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


class OperationFailed(PssError):
    exit_code = ExitCode.FAILED


class OutOfDescriptors(OperationFailed):
    """pss-dup's own fd table is full (EMFILE/ENFILE): said as such, never blamed on the process worked on."""

    def __init__(self) -> None:
        limit = ""
        if sys.platform != "win32":
            import resource

            limit = f" (its limit is {resource.getrlimit(resource.RLIMIT_NOFILE)[0]})"
        super().__init__(f"pss-dup itself has no free file descriptor{limit}; raise it with `ulimit -n` and retry")


def own_error(exc: BaseException) -> PssError | None:
    """The typed error for an OSError that is about pss-dup itself wherever it came from (its fd table is full)."""
    if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
        return OutOfDescriptors()
    return None


class UsageError(PssError):
    exit_code = ExitCode.USAGE


class AmbiguousTarget(UsageError):
    """A process name matched more than one process."""

    def __init__(self, name: str, matches: list[tuple[int, str]]) -> None:
        listed = ", ".join(f"{pid} ({cmd})" for pid, cmd in matches[:10])
        more = f" and {len(matches) - 10} more" if len(matches) > 10 else ""
        super().__init__(
            f"{len(matches)} processes match {name!r}: {listed}{more}; pass a PID, or --all for every match"
        )
        self.matches = matches


class NoSuchProcess(PssError):
    exit_code = ExitCode.NO_PROCESS


class ProcessGone(NoSuchProcess):
    """The process exited while pss-dup was working on it."""


class ZombieProcess(NoSuchProcess):
    """The process has exited but was not reaped yet: nothing is left to capture."""


class AccessDenied(PssError):
    exit_code = ExitCode.ACCESS_DENIED


class NotSupported(PssError):
    exit_code = ExitCode.NOT_SUPPORTED


class Refused(PssError):
    """Doing it would risk harm to a process; `--force` overrides where that is safe to allow."""

    exit_code = ExitCode.REFUSED


class BadSnapshot(PssError):
    """The bytes are not a pss-dup snapshot, or are corrupt, or of a format this version cannot read."""

    exit_code = ExitCode.BAD_SNAPSHOT


class NoSuchHandle(PssError):
    """The process holds no handle (fd) with that number: distinct from one that exists but is not a snapshot."""

    exit_code = ExitCode.NO_HANDLE


class OutputExists(PssError):
    exit_code = ExitCode.FILE_EXISTS


class OutputFull(OutputExists):
    """The output file cannot be written whole: its filesystem is full (ENOSPC), a quota is reached (EDQUOT), or it
    would outgrow a file size limit (EFBIG)."""


class Timeout(PssError):
    exit_code = ExitCode.TIMEOUT


class Interrupted(PssError):
    """Ctrl-C, or with `signo` SIGTERM/SIGHUP/SIGPIPE (exit 128 + signo), after every process was restored."""

    exit_code = ExitCode.INTERRUPTED

    def __init__(self, message: str, *, pid: int | None = None, signo: int = 2) -> None:
        super().__init__(message, pid=pid)
        self.signo = signo
        if signo != 2:
            self.exit_code = ExitCode(128 + signo)

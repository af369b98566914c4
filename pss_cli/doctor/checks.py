"""Doctor's check model: one answer per check, the list they are collected in, and the exit code they add up to."""

from __future__ import annotations

import contextlib
import enum
import errno
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

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


class ChildGone(Exception):
    """One of doctor's own processes exited when it should have answered."""


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


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


class Checklist:
    """The checks so far, in order, each handed to `report` as soon as it is known; `section` labels new ones."""

    def __init__(self, report: Callable[[Check], None] | None = None) -> None:
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

    @property
    def last_failed(self) -> bool:
        return bool(self.checks) and self.checks[-1].status is Status.FAIL

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

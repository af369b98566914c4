"""The watcher's view of one process: /proc/PID opened once and sampled without stopping or tracing anything."""

from __future__ import annotations

import sys

assert sys.platform == "linux"

import errno
from typing import Any

from pss_cli.errors import AccessDenied, ProcessGone
from pss_cli.model import ResourceSample
from pss_cli.platform.linux import procfs


class ProcWatch:
    """A process being watched; every read goes through its /proc directory fd, so a reused PID is never sampled."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        try:
            self.proc = procfs.ProcDir(pid)
        except OSError as exc:
            raise self._translate(exc) from None

    def sample(self, *, fds: bool, thread_states: bool) -> ResourceSample:
        """ProcessGone once the process has exited (a zombie counts as gone)."""
        try:
            return procfs.read_usage(self.proc, fds=fds, thread_states=thread_states)
        except (OSError, ValueError) as exc:
            raise self._translate(exc) from None

    def wait_places(self) -> dict[int, dict[str, Any]]:
        try:
            return dict(procfs.read_wait_places(self.proc))
        except OSError:
            return {}

    def close(self) -> None:
        self.proc.close()

    def _translate(self, exc: Exception) -> Exception:
        if isinstance(exc, PermissionError) or getattr(exc, "errno", None) == errno.EACCES:
            return AccessDenied(f"cannot read /proc/{self.pid}: {exc}", pid=self.pid)
        return ProcessGone(f"process {self.pid} has exited", pid=self.pid)

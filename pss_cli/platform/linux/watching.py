"""The watcher's view of one process: /proc/PID opened once and sampled without stopping or tracing anything."""

from __future__ import annotations

import sys

assert sys.platform == "linux"

import errno
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pss_cli.errors import AccessDenied, ProcessGone
from pss_cli.model import AttachSpec, ResourceSample, WatchStop
from pss_cli.platform.linux import procfs

if TYPE_CHECKING:
    from pss_cli.platform.linux.attach import Attachment

#: Longest wait for the tracer thread to take the exit status of a process the sample found gone.
EXIT_STATUS_WAIT = 0.2


class ProcWatch:
    """A process being watched; every read goes through its /proc directory fd, so a reused PID is never sampled."""

    def __init__(self, pid: int, attach: AttachSpec | None = None, wake: Callable[[], None] | None = None) -> None:
        self.pid = pid
        self.attachment: Attachment | None = None
        #: The signal counts as they stood when the attachment ended (the final event still reports them).
        self._counts: dict[int, int] = {}
        try:
            self.proc = procfs.ProcDir(pid)
        except OSError as exc:
            raise self._translate(exc) from None
        if attach is not None and attach.any:
            from pss_cli.platform.linux import attach as attaching

            try:
                self.attachment = attaching.attach(pid, attach, wake or (lambda: None))
            except BaseException:
                self.proc.close()
                raise

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

    def stops(self) -> list[WatchStop]:
        """Threads newly held for the watcher to act on (an attached watch only); release each afterwards."""
        return self.attachment.take() if self.attachment is not None else []

    def release(self, stop: WatchStop) -> None:
        if self.attachment is not None:
            self.attachment.release(stop)

    def signal_counts(self) -> dict[int, int]:
        """Signals passed on so far, by number (an attached watch sees each)."""
        return dict(self.attachment.counts) if self.attachment is not None else dict(self._counts)

    def exit_status(self) -> tuple[int | None, int | None] | None:
        """(exit code, None) or (None, the signal that ended it), when the watch was attached as it ended. The sample
        can see the zombie a moment before the tracer thread has taken the status: that moment is waited for."""
        if self.attachment is None:
            return None
        deadline = time.monotonic() + EXIT_STATUS_WAIT
        while self.attachment.ended is None and time.monotonic() < deadline:
            time.sleep(0.002)
        status = self.attachment.ended
        if status is None:
            return None
        if os.WIFSIGNALED(status):
            return None, os.WTERMSIG(status)
        return os.WEXITSTATUS(status), None

    def close(self) -> None:
        try:
            if self.attachment is not None:
                from pss_cli.platform.linux import attach as attaching

                attachment, self.attachment = self.attachment, None
                try:
                    attaching.detach(attachment)
                finally:
                    self._counts = dict(attachment.counts)
        finally:
            self.proc.close()

    def _translate(self, exc: Exception) -> Exception:
        if isinstance(exc, PermissionError) or getattr(exc, "errno", None) == errno.EACCES:
            return AccessDenied(f"cannot read /proc/{self.pid}: {exc}", pid=self.pid)
        return ProcessGone(f"process {self.pid} has exited", pid=self.pid)

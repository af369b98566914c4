"""Doctor's own processes: a small Python child that answers JSON lines, always killed and reaped by `close`."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

from pss_cli.doctor.checks import ChildGone

#: The child both round-trip processes run: it answers one JSON line per command on stdin, and exits at EOF.
#: It asks for SIGKILL if doctor dies (prctl 1 is PR_SET_PDEATHSIG), so it never outlives the run.
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
        package_root = str(Path(__file__).resolve().parents[2])
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

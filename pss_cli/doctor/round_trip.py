"""Doctor's live round trip through the public API, between two processes doctor started itself.

Capture one, dup the snapshot into the other, have that one read it from inside with open_snapshot, inspect it
from outside, free it; then both must still run, untraced, and exit cleanly when told to.
"""

from __future__ import annotations

import contextlib
import errno
import sys

from pss_cli.doctor.checks import Checklist, Status, fmt_ms
from pss_cli.doctor.child import Child

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

STEPS = ("capture", "dup", "receiver reads it", "inspect from outside", "free", "receiver's handle is closed")


def round_trip(checks: Checklist, source: Child, receiver: Child, timeout: float) -> None:
    """The steps in order; whatever happened, both children are then checked and reaped."""
    exchange(checks, source, receiver, timeout)
    check_children(checks, source, receiver, timeout)


def exchange(checks: Checklist, source: Child, receiver: Child, timeout: float) -> None:
    import pss_cli

    remaining = list(STEPS)

    def skip_rest(reason: str) -> None:
        for name in remaining:
            checks.add(name, Status.SKIP, f"not run: {reason}")

    def step(name: str) -> contextlib.AbstractContextManager[list[str]]:
        remaining.remove(name)
        return checks.probe(name, FIXES[name])

    local = None
    handle: int | None = None
    try:
        with step("capture") as detail:
            local = pss_cli.capture_snapshot(source.pid, timeout=timeout)
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
            result = pss_cli.duplicate(local, source.pid, receiver.pid, timeout=timeout)
            handle = result.target_handle
            if handle is None:
                raise OSError(errno.EIO, "the duplicate reported no handle in the target")
            detail.append(f"PID {receiver.pid} now holds handle {handle}; stopped {fmt_ms(result.target_stopped_ms)}")
    finally:
        if local is not None:
            local.close()
    if handle is None:
        skip_rest("the dup failed")
        return
    with step("receiver reads it") as detail:
        answer = receiver.ask(f"read {handle}", timeout)
        if not answer.get("ok"):
            raise OSError(errno.EIO, f"the receiver could not read handle {handle}: {answer.get('error')}")
        if answer.get("source_pid") != source.pid:
            raise OSError(
                errno.EIO, f"the receiver read a snapshot of PID {answer.get('source_pid')}, not {source.pid}"
            )
        where = f" ({answer['link']})" if answer.get("link") else ""
        detail.append(f"open_snapshot({handle}) inside PID {receiver.pid}{where}: a snapshot of PID {source.pid}")
    with step("inspect from outside") as detail:
        seen = pss_cli.inspect(receiver.pid, handle, timeout=timeout)
        if seen.process.pid != source.pid:
            raise OSError(errno.EIO, f"inspect read a snapshot of PID {seen.process.pid}, not {source.pid}")
        detail.append(f"handle {handle} of PID {receiver.pid} holds PID {source.pid} ({seen.process.name})")
    freed = False
    with step("free") as detail:
        result_free = pss_cli.free(receiver.pid, handle, timeout=timeout)
        freed = True
        detail.append(f"closed handle {handle} in PID {receiver.pid}; stopped {fmt_ms(result_free.stopped_ms)}")
    if not freed:
        skip_rest("the free failed")
    elif sys.platform != "linux":  # an HPSS cannot be probed with fstat
        skip_rest("checked on Linux only")
    else:
        with step("receiver's handle is closed") as detail:
            answer = receiver.ask(f"closed {handle}", timeout)
            if not answer.get("ok"):
                raise OSError(errno.EIO, f"handle {handle} is still usable in the receiver ({answer.get('error')})")
            detail.append(f"the receiver gets EBADF for fd {handle}")


def check_children(checks: Checklist, source: Child, receiver: Child, timeout: float) -> None:
    with checks.probe("both processes alive and untraced", FIXES["alive"]) as detail:
        for child in (source, receiver):
            answer = child.ask("ping", timeout)
            if answer.get("pid") != child.pid:
                raise OSError(errno.EIO, f"the {child.role} process answered {answer}")
            if sys.platform == "linux":
                from pss_cli.platform.linux import procfs

                status = procfs.read_status(child.pid)
                if status.get("TracerPid") != "0" or status.get("State", "")[:1] in ("T", "t"):
                    raise OSError(
                        errno.EIO,
                        f"the {child.role} process is left {status.get('State')} with "
                        f"TracerPid {status.get('TracerPid')}",
                    )
        detail.append("both answer" + (", TracerPid 0, not stopped" if sys.platform == "linux" else ""))
    with checks.probe("both processes exit and are reaped", FIXES["reaped"]) as detail:
        codes = [child.finish(timeout) for child in (source, receiver)]
        if codes != [0, 0]:
            raise OSError(errno.EIO, f"exit statuses {codes} (None: had to be killed)")
        detail.append("both exited with status 0 at end of input and were reaped")

"""`pss-dup doctor`: can this host do what pss-dup does? Each answer is a check with a reason and, if it fails, a fix.

The kernel features are probed by calling them for real, on processes doctor starts itself (never on anyone
else's). Then a live round trip through the public API between two of its own children. Every child is killed and
reaped on every path (errors, Ctrl-C), and asks the kernel to kill it if doctor dies.

One module per job: `checks` (the check model and exit code), `child` (doctor's own processes), `host` (platform
and tools), `linux` (privileges and kernel probes), `windows` (SeDebugPrivilege), `round_trip` (the live round trip);
`run_doctor` runs them in order.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from pss_cli.doctor import host
from pss_cli.doctor.checks import Check, Checklist, Status, describe, exit_code
from pss_cli.doctor.child import Child
from pss_cli.doctor.round_trip import round_trip

__all__ = ["Check", "Status", "exit_code", "run_doctor"]

REINSTALL = "reinstall pss-dup: part of its backend is missing"


def run_doctor(timeout: float = 10.0, report: Callable[[Check], None] | None = None) -> list[Check]:
    """Every check, in order; `report` sees each one as soon as it is known (for streaming output)."""
    checks = Checklist(report)
    checks.section = "platform"
    supported = host.check_platform(checks)
    if sys.platform == "linux":
        checks.section = "privileges"
        try:
            from pss_cli.doctor import linux
        except ImportError as exc:
            checks.add("pss-dup's Linux backend", Status.FAIL, describe(exc), REINSTALL)
            return checks.checks
        linux.check_privileges(checks)
    elif sys.platform == "win32":
        from pss_cli.doctor import windows

        checks.section = "privileges"
        windows.check_privileges(checks)
    checks.section = "tools"
    host.check_tools(checks)
    if not supported:
        checks.section = "round trip"
        checks.add("round trip", Status.SKIP, "not run: this platform is not supported")
        return checks.checks
    children: list[Child] = []
    try:
        checks.section = "setup"
        source = receiver = None
        with checks.probe("start two processes", "check that this Python can start subprocesses") as detail:
            source = Child("source")
            children.append(source)
            receiver = Child("receiver")
            children.append(receiver)
            for child in children:
                child.reply(timeout)
            detail.append(f"source PID {source.pid}, receiver PID {receiver.pid} ({Path(sys.executable).name})")
        if source is None or receiver is None or checks.last_failed:
            checks.add("round trip", Status.SKIP, "not run: the two processes did not start")
            return checks.checks
        if sys.platform == "linux":
            checks.section = "kernel"
            linux.check_kernel(checks, source, timeout)
        checks.section = "round trip"
        round_trip(checks, source, receiver, timeout)
    finally:
        for child in children:
            child.close()
    return checks.checks

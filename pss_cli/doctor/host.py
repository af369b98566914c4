"""Doctor's host checks that need no privilege: the operating system, the architecture, Python, and gdb."""

from __future__ import annotations

import platform
import shutil
import sys

from pss_cli.doctor.checks import Checklist, Status
from pss_cli.errors import ExitCode

#: Per supported OS: the machines it runs on (platform.machine(), upper case), the problem elsewhere, the fix.
ARCHITECTURES = {
    "linux": ({"X86_64"}, "the Linux backend supports x86_64 only", "run pss-dup on an x86_64 Linux host"),
    "win32": (
        {"AMD64", "X86_64"},
        "pss-dup supports x64 Windows only",
        "run pss-dup with a 64-bit Python on x64 Windows",
    ),
}


def check_platform(checks: Checklist) -> bool:
    """Is this a platform pss-dup supports? False ends doctor before anything is started."""
    machine = platform.machine()
    if sys.platform == "linux":
        checks.passed("operating system", f"Linux {platform.release()}")
    elif sys.platform == "win32":
        checks.passed("operating system", f"Windows {platform.version()}")
    else:
        checks.add(
            "operating system",
            Status.FAIL,
            f"{sys.platform} ({machine}): pss-dup runs on Linux and Windows",
            "run pss-dup on Linux (x86_64) or Windows (x64)",
            code=ExitCode.NOT_SUPPORTED,
        )
        return False
    machines, problem, fix = ARCHITECTURES[sys.platform]
    if machine.upper() not in machines:
        checks.add("architecture", Status.FAIL, f"{machine}: {problem}", fix, code=ExitCode.NOT_SUPPORTED)
        return False
    checks.passed("architecture", machine)
    checks.passed("python", f"{platform.python_version()} ({sys.executable})")
    return True


def check_tools(checks: Checklist) -> None:
    gdb = shutil.which("gdb")
    if gdb:
        checks.passed("gdb (optional)", f"{gdb}: reads snapshot cores (pss-dup dump)")
    else:
        checks.add(
            "gdb (optional)",
            Status.SKIP,
            "not installed: only needed to read snapshot cores with gdb",
            "apt install gdb (or dnf install gdb)",
        )

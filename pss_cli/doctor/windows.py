"""Doctor's Windows privilege check: SeDebugPrivilege, which other users' and service processes need."""

from __future__ import annotations

from typing import Any

from pss_cli.doctor.checks import Checklist, Status, describe
from pss_cli.errors import ExitCode


def check_privileges(checks: Checklist) -> None:
    try:
        from pss_cli.platform import backend

        impl: Any = backend()
        enable = getattr(impl, "enable_debug_privilege", None)
        if enable is None:
            checks.add("SeDebugPrivilege", Status.SKIP, "not checked: this backend does not report it")
        elif enable():
            checks.passed("SeDebugPrivilege", "present and enabled: other users' and service processes are reachable")
        else:
            checks.add(
                "SeDebugPrivilege",
                Status.FAIL,
                "not in this token: only this user's own, unprotected processes can be captured",
                "run from an elevated prompt (Run as administrator)",
                code=ExitCode.ACCESS_DENIED,
            )
    except Exception as exc:
        checks.add("SeDebugPrivilege", Status.SKIP, f"not checked: {describe(exc)}")

"""`pss-dup doctor`: run pss_cli.doctor's checks and show them as a pass/fail table, or as JSON."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from pss_cli.cli.common import Ui, output_options
from pss_cli.cli.ps import print_trimmed

if TYPE_CHECKING:
    from rich.table import Table

    from pss_cli.doctor import Check

STYLES = {"pass": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def check_record(check: Check) -> dict[str, Any]:
    """One check as JSON: "status" is "error" only for a failure; "result" is pass, warn, fail or skip."""
    from pss_cli.doctor import Status

    record: dict[str, Any] = {
        "status": "error" if check.status is Status.FAIL else "ok",
        "section": check.section,
        "check": check.name,
        "result": check.status.value,
        "detail": check.detail,
        "fix": check.fix,
        "ms": None if check.ms is None else round(check.ms, 3),
    }
    if check.status is Status.FAIL:
        record["error"] = {"code": int(check.code), "type": "CheckFailed", "message": check.detail}
    return record


def checks_table(checks: list[Check]) -> Table:
    from rich.table import Table
    from rich.text import Text

    table = Table(title="pss-dup doctor", title_justify="left", header_style="bold")
    table.add_column("section", style="bold")
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    table.add_column("fix", overflow="fold")
    section = None
    for check in checks:
        if section is not None and check.section != section:
            table.add_section()
        table.add_row(
            check.section if check.section != section else "",
            Text(check.name),
            Text(check.status.value.upper(), style=STYLES[check.status.value]),
            Text(check.detail),
            Text(check.fix or "") if check.status.value in ("fail", "warn") else "",
        )
        section = check.section
    return table


@click.command()
@output_options
def doctor(ui: Ui) -> int:
    """Check that this host can do what pss-dup does, then prove it with a live round trip.

    \b
    Checks the platform and architecture; privileges (root or CAP_SYS_PTRACE, Yama ptrace_scope, pss-dup's own
    seccomp and no_new_privs; SeDebugPrivilege on Windows); the kernel features, each probed for real
    (memfd_create with seals and MFD_NOEXEC_SEAL, pidfd_open, pidfd_getfd, process_vm_readv, PTRACE_SEIZE with
    PTRACE_GET_SYSCALL_INFO); and gdb (optional). Then it starts two processes of its own, captures one, dups
    the snapshot into the other, has that one read it from inside, inspects it from outside, frees it, and checks
    that both run on untraced and exit cleanly. Doctor touches no process but the ones it starts.

    Exits 0 when every check passes; 4 when privileges are missing, 5 when the host cannot support pss-dup,
    1 for any other failure. Each failure comes with its fix.
    """
    from pss_cli.doctor import exit_code, run_doctor

    if ui.output == "jsonl":
        from pss_cli.render.jsonout import emit

        checks = run_doctor(ui.timeout, lambda check: emit(ui, [check_record(check)]))
    elif ui.machine:
        from pss_cli.render.jsonout import emit

        checks = run_doctor(ui.timeout)
        emit(ui, [check_record(c) for c in checks])
    else:
        if ui.interactive:
            with ui.err.status("pss-dup doctor: probing this host..."):
                checks = run_doctor(ui.timeout)
        else:
            checks = run_doctor(ui.timeout)
        print_trimmed(ui, checks_table(checks))
        failed = [c for c in checks if c.status.value == "fail"]
        if not ui.quiet:
            from rich.text import Text

            if failed:
                ui.out.print(Text(f"{len(failed)} of {len(checks)} checks failed", style="bold red"))
            else:
                ui.out.print(Text(f"all {len(checks)} checks passed: pss-dup works on this host", style="green"))
    return int(exit_code(checks))

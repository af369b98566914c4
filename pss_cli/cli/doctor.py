"""`pss-dup doctor`: run pss_cli.doctor's checks and show them as a pass/fail table, or as JSON."""

from __future__ import annotations

import click

from pss_cli.cli.common import output_options
from pss_cli.render.console import Ui


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
    from pss_cli import api
    from pss_cli.render import report

    checks = report.checks(ui, lambda on_check: api.check_host(ui.timeout, on_check))
    return int(api.host_exit_code(checks))

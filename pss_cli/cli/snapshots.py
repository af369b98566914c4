"""`dup`, `free` and `inspect`: handing snapshots between processes (PssDuplicateSnapshot, PssFreeSnapshot)."""

from __future__ import annotations

import click

from pss_cli.cli.capture import CAPTURE_OPTIONS, flags_from
from pss_cli.cli.common import click_params, output_options
from pss_cli.cli.params import PID, TARGET, SnapshotHandle
from pss_cli.errors import UsageError
from pss_cli.render.console import Ui


@click.command()
@click.argument("source", type=TARGET)
@click.argument("target", type=TARGET)
@click.option("--handle", "source_handle", type=SnapshotHandle("source"), metavar="H",
              help="Hand on the snapshot SOURCE already holds as fd H instead of capturing a new one.")  # fmt: skip
@click.option("--close-source", is_flag=True,
              help="Then close H in SOURCE (PSS_DUPLICATE_CLOSE_SOURCE); needs --handle.")  # fmt: skip
@click.option("--inherit", is_flag=True, help="Leave the new fd inheritable across exec (no close-on-exec).")
@click.option("--force", is_flag=True, help="Proceed where a blocked call in TARGET would see EINTR.")
@click.option("--dry-run", is_flag=True,
              help="Stop no process and change nothing: make the checks the real run makes before it stops anything, "
                   "refuse what it would refuse, and list what it would do.")  # fmt: skip
@click_params(CAPTURE_OPTIONS)
@output_options
def dup(
    ui: Ui,
    source: str,
    target: str,
    source_handle: int | None,
    close_source: bool,
    inherit: bool,
    force: bool,
    dry_run: bool,
    selected: tuple[int, ...],
    everything: bool,
    mask: str | None,
) -> int:
    """Capture SOURCE and give TARGET its own handle to the snapshot.

    SOURCE and TARGET are PIDs or process names. TARGET ends up with a new file descriptor (Linux) holding the
    sealed snapshot, and carries on exactly as before; read it there with pss_cli.open_snapshot(fd).
    """
    from pss_cli import api
    from pss_cli.render import report

    if close_source and source_handle is None:
        raise UsageError("--close-source needs --handle: only a snapshot SOURCE already holds can be closed there")
    (source_pid,) = api.resolve(source)
    (target_pid,) = api.resolve(target)
    if source_handle is not None:
        result = api.duplicate_held(
            source_pid, source_handle, target_pid, close_source=close_source, inherit=inherit, force=force,
            dry_run=dry_run, timeout=ui.timeout,
        )  # fmt: skip
        report.duplicated(ui, result, None, source_handle)
        return 0
    flags = flags_from(selected, everything, mask)
    if dry_run:  # a capture stops SOURCE: a dry run only plans it
        plan = api.plan_capture(source_pid, flags)
        result = api.duplicate(
            plan, source_pid, target_pid, inherit=inherit, force=force, dry_run=True, timeout=ui.timeout
        )
        report.duplicated(ui, result, None, None)
        return 0
    local = api.capture_snapshot(source_pid, flags, timeout=ui.timeout)
    try:
        result = api.duplicate(local, source_pid, target_pid, inherit=inherit, force=force, timeout=ui.timeout)
    finally:
        local.close()
    report.duplicated(ui, result, local.model, None)
    return 0


@click.command()
@click.argument("pid", type=PID)
@click.argument("handle", type=SnapshotHandle("pid"))
@click.option("--force", is_flag=True, help="Proceed where a blocked call in PID would see EINTR.")
@click.option("--dry-run", is_flag=True, help="Check that HANDLE is a pss-dup snapshot and that it can be closed.")
@output_options
def free(ui: Ui, pid: int, handle: int, force: bool, dry_run: bool) -> int:
    """Close the snapshot that process PID holds as HANDLE (PssFreeSnapshot).

    The handle is checked first (a sealed memfd in pss-dup's format); any other handle is refused untouched.
    """
    from pss_cli import api
    from pss_cli.render import report

    result = api.free(pid, handle, force=force, dry_run=dry_run, timeout=ui.timeout)
    report.freed(ui, result)
    return 0


@click.command()
@click.argument("pid", type=PID)
@click.argument("handle", type=SnapshotHandle("pid"))
@output_options
def inspect(ui: Ui, pid: int, handle: int) -> int:
    """Read the snapshot that process PID holds as HANDLE, and report it like `capture`."""
    from pss_cli import api
    from pss_cli.render import report

    snap = api.inspect(pid, handle, timeout=ui.timeout)
    report.captures(ui, [(pid, snap)])
    return 0

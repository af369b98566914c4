"""One entry point per command's report, choosing tables or JSON by the run's output format."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pss_cli.errors import PssError
from pss_cli.model import DuplicateResult, FreeResult, Snapshot
from pss_cli.render import printable
from pss_cli.render.jsonout import emit, error_record
from pss_cli.serial import to_dict, to_json

if TYPE_CHECKING:
    from pss_cli.cli.common import Ui


def captures(ui: Ui, outcomes: list[tuple[int, Snapshot | PssError]]) -> None:
    """capture/inspect: one snapshot (or one error, with --all) per process."""
    if ui.machine:
        emit(ui, [snapshot_record(pid, o) if isinstance(o, Snapshot) else error_record(o) for pid, o in outcomes])
        return
    from rich.text import Text

    from pss_cli.render.tables import snapshot_view

    for pid, outcome in outcomes:
        if isinstance(outcome, Snapshot):
            ui.out.print(snapshot_view(outcome))
        else:
            ui.err.print(Text(printable(f"pss-dup: {pid}: {outcome}"), style="red"))


def snapshot_record(pid: int, snap: Snapshot) -> dict[str, Any]:
    return {"status": "ok", "pid": pid, "snapshot": to_dict(snap)}


def duplicated(ui: Ui, result: DuplicateResult, snap: Snapshot | None, source_handle: int | None) -> None:
    capture_ms = snap.performance.capture_ms if snap else None
    source_stopped = snap.performance.stopped_ms if snap else None
    if ui.machine:
        record = {
            "status": "ok",
            "dry_run": result.dry_run,
            "source": {
                "pid": result.source_pid,
                "handle": source_handle,
                "closed": result.source_closed,
                "access": [to_dict(a) for a in result.access if a.role == "source"],
            },
            "target": {
                "pid": result.target_pid,
                "handle": result.target_handle,
                "inherit": result.inherit,
                "access": [to_dict(a) for a in result.access if a.role == "target"],
            },
            "captured": to_json(snap.flags) if snap else None,
            "timings": {
                "capture_ms": capture_ms,
                "source_stopped_ms": source_stopped,
                "target_stopped_ms": result.target_stopped_ms,
            },
            "actions": list(result.actions),
            "warnings": list(result.warnings),
        }
        emit(ui, [record])
        return
    from pss_cli.render.tables import result_view, summary

    if snap is not None and not ui.quiet:
        ui.out.print(summary(snap))
    ui.out.print(result_view(result, capture_ms, source_stopped))


def freed(ui: Ui, result: FreeResult) -> None:
    if ui.machine:
        emit(ui, [{"status": "ok", **to_dict(result)}])
        return
    from pss_cli.render.tables import result_view

    ui.out.print(result_view(result))

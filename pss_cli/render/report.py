"""One entry point per command's report, choosing tables or JSON by the run's output format.

rich (through tables) and the model's serialiser load only in the reports that use them: `ps -o json` needs neither.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pss_cli.errors import PssError
from pss_cli.model import Container, DumpOutput, DuplicateResult, FreeResult, Snapshot
from pss_cli.render import printable
from pss_cli.render.console import Ui, print_trimmed, status
from pss_cli.render.jsonout import emit, error_record

if TYPE_CHECKING:
    from pss_cli.doctor import Check
    from pss_cli.lookup import ProcessRow


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
    from pss_cli.serial import to_dict

    return {"status": "ok", "pid": pid, "snapshot": to_dict(snap)}


def duplicated(ui: Ui, result: DuplicateResult, snap: Snapshot | None, source_handle: int | None) -> None:
    capture_ms = snap.performance.capture_ms if snap else None
    source_stopped = snap.performance.stopped_ms if snap else None
    if ui.machine:
        from pss_cli.serial import to_dict, to_json

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
            # what the stops woke, in the source (its capture) and in the target (the injection)
            "interruptions": {
                "source": to_json(snap.interruptions) if snap and snap.interruptions is not None else None,
                "target": to_json(result.interruptions) if result.interruptions is not None else None,
            },
        }
        emit(ui, [record])
        return
    from pss_cli.render.tables import result_view, summary

    if snap is not None and not ui.quiet:
        ui.out.print(summary(snap))
    ui.out.print(result_view(result, capture_ms, source_stopped))


def freed(ui: Ui, result: FreeResult) -> None:
    if ui.machine:
        from pss_cli.serial import to_dict

        emit(ui, [{"status": "ok", **to_dict(result)}])
        return
    from pss_cli.render.tables import result_view

    ui.out.print(result_view(result))


def process_record(row: ProcessRow) -> dict[str, Any]:
    """`ps -o json`: one record per process (the README documents it)."""
    return {
        "status": "ok",
        "pid": row.pid,
        "ppid": row.ppid,
        "user": row.user,
        "name": row.name,
        "threads": row.threads,
        "handles": row.handles,
        "rss": row.rss,
        "cmdline": None if row.cmdline is None else list(row.cmdline),
        "create_time": row.create_time,
        "snapshots": None if row.snapshots is None else list(row.snapshots),
        "container": None if row.container is None else container_record(row.container),
    }


def container_record(container: Container) -> dict[str, Any]:
    """The container as the snapshot's JSON has it; the serialiser loads only for a process in one."""
    from pss_cli.serial import to_dict

    return to_dict(container)


def processes(ui: Ui, rows: Sequence[ProcessRow]) -> None:
    """`ps`: a table, or one record per process."""
    if ui.machine:
        emit(ui, [process_record(row) for row in rows])
        return
    from pss_cli.render.tables import process_table

    print_trimmed(ui, process_table(rows))


def check_record(check: Check) -> dict[str, Any]:
    """One doctor check as JSON: "status" is "error" only for a failure; "result" is pass, warn, fail or skip."""
    failed = check.status.value == "fail"
    record: dict[str, Any] = {
        "status": "error" if failed else "ok",
        "section": check.section,
        "check": check.name,
        "result": check.status.value,
        "detail": check.detail,
        "fix": check.fix,
        "ms": None if check.ms is None else round(check.ms, 3),
    }
    if failed:
        record["error"] = {"code": int(check.code), "type": "CheckFailed", "message": check.detail}
    return record


def checks(ui: Ui, run: Callable[[Callable[[Check], None] | None], list[Check]]) -> list[Check]:
    """`doctor`: `run(on_check)` runs the checks; JSON Lines prints each as it is known, the rest when all are in."""
    if ui.output == "jsonl":
        return run(lambda check: emit(ui, [check_record(check)]))
    if ui.machine:
        done = run(None)
        emit(ui, [check_record(c) for c in done])
        return done
    with status(ui, "pss-dup doctor: probing this host..."):
        done = run(None)
    from rich.text import Text

    from pss_cli.render.tables import checks_table

    print_trimmed(ui, checks_table(done))
    failed = [c for c in done if c.status.value == "fail"]
    if not ui.quiet:
        if failed:
            ui.out.print(Text(f"{len(failed)} of {len(done)} checks failed", style="bold red"))
        else:
            ui.out.print(Text(f"all {len(done)} checks passed: pss-dup works on this host", style="green"))
    return done


def dumped(
    ui: Ui,
    snap: Snapshot,
    path: str | None,
    holder: int | None,
    handle: int | None,
    seconds: float,
    output: DumpOutput | None = None,
) -> None:
    """`dump`: the file (None: stdout), how much memory it holds and how it got it, how long the process was
    stopped, and what went out (`output`: sizes on disk, compression)."""
    size: int | None = output.written_bytes if output is not None else None
    if path is not None and size is None:
        try:
            size = os.stat(path).st_size
        except OSError:
            size = None
    memory = snap.memory
    if ui.machine:
        from pss_cli.serial import to_dict

        record = {
            "status": "ok",
            "pid": snap.process.pid,
            "file": os.path.abspath(path) if path is not None else None,
            "size": size,
            "output": {**to_dict(output), "ratio": output.ratio} if output is not None else None,
            "source": {"pid": holder, "handle": handle} if holder is not None else None,
            "memory": to_dict(memory) if memory is not None else None,
            "timings": {
                "total_ms": seconds * 1000,
                "capture_ms": snap.performance.capture_ms,
                "stopped_ms": snap.performance.stopped_ms,
                "wait_ms": snap.performance.wait_ms,
                "reap_stopped_ms": memory.reap_stopped_ms if memory is not None else None,
                "va_clone_ms": snap.performance.va_clone_ms,
            },
            "warnings": list(snap.warnings),
            "snapshot": to_dict(snap),
        }
        emit(ui, [record])
        return
    from pss_cli.render.tables import dump_view, summary

    if not ui.quiet:
        ui.out.print(summary(snap))
    where = os.path.abspath(path) if path is not None else "standard output"
    ui.out.print(dump_view(snap, where, size, holder, handle, seconds, output))
    for warning in snap.warnings:
        ui.warn(warning)

"""How `pss-dup watch` reports: JSON Lines events for scripts, one plain line per event otherwise, and for a person at
a terminal a live status line per process (rich) above which the event lines scroll."""

from __future__ import annotations

import json
from typing import IO, TYPE_CHECKING, Any

from pss_cli.model import SCHEMA_VERSION
from pss_cli.render import printable
from pss_cli.render.jsonout import write_line
from pss_cli.watch import ActionEvent, Event, Finished, SampleEvent, Started, TargetAppeared, TargetExited, Triggered
from pss_cli.watch import size_text as threshold_size

if TYPE_CHECKING:
    from rich.live import Live

    from pss_cli.watcher import StatusRow


def mib(size: float | None) -> str:
    return "?" if size is None else f"{size / (1 << 20):.1f} MiB"


def value_text(trigger: str, value: float | None) -> str:
    if value is None:
        return "?"
    if trigger in ("memory", "memory-below"):
        return mib(value)
    if trigger in ("cpu", "cpu-below"):
        return f"{value:.1f}%"
    if trigger in ("hang", "idle_seconds"):
        return f"{value:.1f} s"
    return f"{value:g}"


def threshold_text(trigger: str, threshold: float) -> str:
    if trigger in ("memory", "memory-below"):
        return threshold_size(int(threshold))
    if trigger in ("cpu", "cpu-below"):
        return f"{threshold:g}%"
    if trigger == "hang":
        return f"{threshold:g} s"
    return f"{threshold:g}"


def attached_detail(detail: dict[str, Any]) -> str:
    """What an attached trigger saw: the signal and where it came from, or the exit status; in thread TID."""
    parts = []
    if "status" in detail:
        parts.append(f"status {detail['status']}")
    if "signal" in detail:
        parts.append(str(detail["signal"]))
    if "si_addr" in detail:
        parts.append(f"at {detail['si_addr']}")
    if "sender_pid" in detail:
        parts.append(f"from PID {detail['sender_pid']}")
    if "si_code" in detail:
        parts.append(f"(si_code {detail['si_code']})")
    parts.append(f"in thread {detail.get('tid')}")
    return " ".join(parts)


def event_line(event: Event) -> str:
    """One line for a person; names a process chose are made printable."""
    if isinstance(event, Started):
        who = ", ".join(f"{t['pid']} ({t['name']})" for t in event.targets) or "nothing yet (waiting)"
        what = ", ".join(f"{k}={v}" for k, v in event.triggers.items() if k != "for_seconds") or "none: acting now"
        attached = f"\nnote: {event.attached}" if event.attached else ""
        return printable(f"watching {who}; triggers: {what}; action: {event.action}") + attached
    if isinstance(event, Triggered):
        where = f" (thread {event.detail['tid']})" if "tid" in event.detail else ""
        compare = "<" if event.trigger.endswith("-below") else "≥"
        if event.trigger == "now":
            return printable(f"{event.pid} {event.name}: acting now (no trigger given)")
        if event.trigger in ("signal", "crash", "exit"):
            return printable(f"{event.pid} {event.name}: {event.trigger} " + attached_detail(event.detail))
        return printable(
            f"{event.pid} {event.name}: {event.trigger} {value_text(event.trigger, event.value)} "
            f"{compare} {threshold_text(event.trigger, event.threshold)}{where}"
        )
    if isinstance(event, ActionEvent):
        if not event.ok:
            why = event.error or f"--exec exited {event.exec_status}"
            return printable(f"{event.pid} {event.name}: {event.action} failed: {why}")
        parts = [f"{event.pid} {event.name}: {event.action}"]
        if event.file:
            parts.append(f"-> {event.file} ({mib(event.bytes)})")
        if event.handle is not None:
            parts.append(f"-> handle {event.handle}")
        if event.stopped_ms is not None:
            parts.append(f"stopped {event.stopped_ms:.1f} ms")
        if event.exec_status is not None:
            parts.append(f"exec exit {event.exec_status}")
        return printable(" ".join(parts))
    if isinstance(event, TargetAppeared):
        return printable(f"{event.pid} {event.name}: appeared, watching it")
    if isinstance(event, TargetExited):
        how = f" with status {event.status}" if event.status is not None else ""
        how = f" (killed by {event.signal})" if event.signal else how
        return printable(f"{event.pid} {event.name}: exited{how}")
    if isinstance(event, SampleEvent):
        return printable(f"{event.pid}: " + ", ".join(f"{k} {value_text(k, v)}" for k, v in event.values.items()))
    if isinstance(event, Finished):
        return (
            f"finished ({event.reason}): {event.actions} action(s), {event.failed} failed, "
            f"{mib(event.bytes_written)} written"
        )
    return printable(json.dumps(event.record()))


class JsonlReporter:
    """-o jsonl: one event per line on stdout, flushed as it happens."""

    def event(self, event: Event) -> None:
        write_line(json.dumps({"schema_version": SCHEMA_VERSION, "command": "watch", **event.record()}))

    def status(self, rows: list[StatusRow]) -> None:
        pass

    def snapshot(self, record: dict[str, Any]) -> None:
        write_line(json.dumps({"schema_version": SCHEMA_VERSION, "command": "watch", **record}))


class LineReporter:
    """Not a terminal: one plain line per event on `stream` (stderr when --capture keeps stdout for snapshots)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def event(self, event: Event) -> None:
        self.stream.write(event_line(event) + "\n")
        self.stream.flush()

    def status(self, rows: list[StatusRow]) -> None:
        pass

    def snapshot(self, record: dict[str, Any]) -> None:
        write_line(json.dumps(record))


class LiveReporter(LineReporter):
    """A person at a terminal: a live status line per process on stderr, the event lines printed above it."""

    def __init__(self, stream: IO[str], live: Live) -> None:
        super().__init__(stream)
        self.live = live

    def event(self, event: Event) -> None:
        from rich.text import Text

        self.live.console.print(Text(event_line(event)))

    def status(self, rows: list[StatusRow]) -> None:
        from rich.table import Table
        from rich.text import Text

        grid = Table.grid(padding=(0, 2))
        for row in rows:
            values = "  ".join(f"{k} {value_text(k, v)}" for k, v in row.values.items())
            grid.add_row(
                Text(printable(f"{row.pid} {row.name}"), style="bold"), Text(values), Text(f"{row.actions} action(s)")
            )
        if not rows:
            grid.add_row(Text("waiting for a matching process", style="dim"))
        self.live.update(grid, refresh=True)

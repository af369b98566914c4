"""rich renderables for people. Every string that comes from a process (names, command lines, paths, environment)
is wrapped in Text, so it is never read as markup, and passed through `printable`, so it cannot reach the terminal
as a control sequence."""

from __future__ import annotations

import datetime
import enum
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from pss_cli.model import (
    AccessUse,
    Container,
    DumpOutput,
    DuplicateResult,
    FreeResult,
    HandleEntry,
    Interruption,
    MemoryCapture,
    Performance,
    ProcessLocation,
    Snapshot,
    ThreadEntry,
    VaRegion,
)
from pss_cli.render import human_size, printable

if TYPE_CHECKING:
    from pss_cli.doctor import Check
    from pss_cli.lookup import ProcessRow

#: The colour of each doctor result.
CHECK_STYLES = {"pass": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def text(value: object) -> Text:
    """Untrusted or arbitrary text as a renderable that is never parsed as markup nor sent as a control code."""
    return Text("-" if value is None else printable(str(value)))


def size(value: int | None) -> Text:
    return Text("-" if value is None else human_size(value))


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def timing(perf: Performance) -> str:
    """The capture's timings; the wait for threads in D state only when there was one."""
    waited = f"  waited {ms(perf.wait_ms)} for a thread in D state first" if perf.wait_ms else ""
    return f"capture {ms(perf.capture_ms)}{waited}  process stopped {ms(perf.stopped_ms)}"


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def flag_names(flags: int, enum_type: type[enum.IntFlag]) -> str:
    names = [m.name for m in enum_type if m.value and m.value & (m.value - 1) == 0 and flags & m.value]
    return "|".join(str(n) for n in names) or "NONE"


def summary(snap: Snapshot) -> Panel:
    from pss_cli.model import CaptureFlags

    p = snap.process
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    rows: list[tuple[str, Text | str]] = [
        ("process", Text.assemble(text(p.name), f"  pid {p.pid}  ppid {p.ppid if p.ppid is not None else '-'}")),
        ("executable", text(p.exe)),
        ("command line", text(" ".join(p.cmdline) if p.cmdline is not None else None)),
        ("working dir", text(p.cwd)),
        ("state", f"{p.state.name.lower()} ({p.state.value})" + ("  FROZEN" if p.flags & 0x10 else "")),
        ("user", f"uids {p.uids}  gids {p.gids}" if p.uids else "-"),
        ("started", when(p.start_time)),
        ("cpu time", f"user {p.user_time:.2f} s  system {p.system_time:.2f} s" if p.user_time is not None else "-"),
        ("memory", Text.assemble("virtual ", size(p.virtual_size), "  resident ", size(p.working_set_size),
                                 "  peak resident ", size(p.peak_working_set_size), "  private ",
                                 size(p.private_usage))),
        ("threads / handles", f"{p.thread_count} / {p.handle_count if p.handle_count is not None else '-'}"),
        ("signals", f"pending {p.sig_pending or 0:#x}  blocked {p.sig_blocked or 0:#x}  ignored "
                    f"{p.sig_ignored or 0:#x}  caught {p.sig_caught or 0:#x}" if p.sig_blocked is not None else "-"),
        ("security", f"seccomp {p.seccomp_mode}  no_new_privs {p.no_new_privs}  dumpable "
                     f"{'-' if p.dumpable is None else p.dumpable}"),
        ("captured", f"{flag_names(snap.flags, CaptureFlags)}  at {when(snap.captured_at)}"),
        ("timing", timing(snap.performance)),
    ]  # fmt: skip
    rows.extend(location_rows(p.location))
    if snap.memory is not None:
        m = snap.memory
        rows.append(("memory captured", Text.assemble(size(m.bytes_captured), f" in {m.regions} regions ({m.method})")))
    for name, value in rows:
        grid.add_row(name, value)
    return Panel(grid, title=Text(printable(f"snapshot of {p.name} ({p.pid})")), title_align="left", expand=False)


def location_rows(where: ProcessLocation | None) -> list[tuple[str, Text | str]]:
    """Where the process lives: its PIDs from pss-dup's PID namespace inwards, its container, cgroup, namespaces."""
    if where is None:
        return []
    rows: list[tuple[str, Text | str]] = []
    if where.ns_pids and len(where.ns_pids) > 1:
        chain = " → ".join(map(str, where.ns_pids))
        rows.append(("pid namespaces", f"{chain}  (as pss-dup sees it → in its own PID namespace)"))
    if where.container is not None:
        c = where.container
        ident = f"  id {c.id}" if c.id else ""
        rows.append(("container", Text(printable(f"{c.runtime}{ident}  (from its {c.source})"))))
    if where.cgroup is not None:
        rows.append(("cgroup", text(where.cgroup)))
    if where.namespaces is not None:
        ns = where.namespaces
        rows.append(("namespaces", "  ".join(f"{name} {getattr(ns, name) or '-'}"
                                             for name in ("pid", "mnt", "net", "user", "cgroup"))))  # fmt: skip
    return rows


def thread_table(threads: Sequence[ThreadEntry]) -> Table:
    table = Table(title=f"Threads ({len(threads)})", title_justify="left")
    for column in ("tid", "name", "state", "blocked in", "user s", "sys s", "prio", "cpu", "rip", "rsp"):
        table.add_column(column, justify="right" if column in ("tid", "user s", "sys s", "prio", "cpu") else "left")
    for t in threads:
        rip = t.context.register("rip") if t.context else None
        rsp = t.context.register("rsp") if t.context else None
        table.add_row(
            str(t.tid),
            text(t.name),
            t.state.name.lower(),
            text(t.syscall.name or t.syscall.number) if t.syscall else "-",
            "-" if t.user_time is None else f"{t.user_time:.2f}",
            "-" if t.system_time is None else f"{t.system_time:.2f}",
            "-" if t.priority is None else str(t.priority),
            "-" if t.processor is None else str(t.processor),
            "-" if rip is None else f"{rip:#x}",
            "-" if rsp is None else f"{rsp:#x}",
        )
    return table


def handle_table(handles: Sequence[HandleEntry]) -> Table:
    table = Table(title=f"Handles ({len(handles)})", title_justify="left")
    table.add_column("fd", justify="right")
    table.add_column("type")
    table.add_column("name", overflow="fold")
    table.add_column("flags")
    table.add_column("pos", justify="right")
    table.add_column("details", overflow="fold")
    for h in handles:
        flags = "-" if h.open_flags is None else f"{h.open_flags:o}"
        if h.close_on_exec is not None:
            flags += " cloexec" if h.close_on_exec else " inherit"
        details = ", ".join(f"{k}={v}" for k, v in h.type_specific)
        table.add_row(str(h.handle), h.type.value, text(h.name), flags, text(h.position), text(details or None))
    return table


def va_table(regions: Sequence[VaRegion]) -> Table:
    table = Table(title=f"Memory map ({len(regions)} regions)", title_justify="left")
    for column in ("start", "end", "perms", "type", "state", "rss", "anon", "swap", "file"):
        table.add_column(column, justify="right" if column in ("rss", "anon", "swap") else "left",
                         overflow="fold" if column == "file" else "ellipsis")  # fmt: skip
    for r in regions:
        table.add_row(
            f"{r.base:#014x}", f"{r.end:#014x}", r.perms, r.type.name.lower(), r.state.name.lower(),
            size(r.rss), size(r.anonymous), size(r.swap), text(r.mapped_file),
        )  # fmt: skip
    return table


def interruption_lines(interruptions: Iterable[Interruption] | None) -> list[Text]:
    """One line per blocked call a stop woke: issued again unseen (dim), or the EINTR the process saw, and why."""
    lines = []
    for i in interruptions or ():
        if i.restarted:
            left = f", {i.timeout_ms} ms of its timeout left" if i.timeout_ms is not None else ""
            lines.append(Text(f"thread {i.tid}: {i.call} woken by the stop, issued again{left}", style="dim"))
        else:
            lines.append(Text(printable(f"thread {i.tid}: {i.call} returned EINTR to the process: {i.note}"),
                              style="yellow"))  # fmt: skip
    return lines


def snapshot_view(snap: Snapshot) -> Group:
    parts: list[RenderableType] = [summary(snap)]
    if snap.threads is not None:
        parts.append(thread_table(snap.threads))
    if snap.handles is not None:
        parts.append(handle_table(snap.handles))
    if snap.va_space is not None:
        parts.append(va_table(snap.va_space))
    parts.extend(interruption_lines(snap.interruptions))
    for warning in snap.warnings:
        parts.append(Text(printable(f"warning: {warning}"), style="yellow"))
    return Group(*parts)


def access_table(uses: Iterable[AccessUse]) -> Table:
    table = Table(title="Access used", title_justify="left")
    for column in ("pid", "role", "mask", "rights"):
        table.add_column(column)
    for use in uses:
        table.add_row(str(use.pid), use.role, "-" if use.mask is None else f"{use.mask:#x}", " | ".join(use.names))
    return table


def result_view(result: DuplicateResult | FreeResult, capture_ms: float | None = None,
                source_stopped_ms: float | None = None) -> Group:  # fmt: skip
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    if isinstance(result, DuplicateResult):
        title = "dry run: duplicate" if result.dry_run else "duplicated"
        grid.add_row("source", f"pid {result.source_pid}")
        handle = "-" if result.target_handle is None else f"fd {result.target_handle}"
        grid.add_row("target", f"pid {result.target_pid}  now holds {handle}"
                     f"{'  (inheritable)' if result.inherit else '  (close-on-exec)'}")  # fmt: skip
        grid.add_row("source closed", "yes" if result.source_closed else "no")
        grid.add_row("timing", f"capture {ms(capture_ms)}  source stopped {ms(source_stopped_ms)}  "
                               f"target stopped {ms(result.target_stopped_ms)}")  # fmt: skip
    else:
        title = "dry run: free" if result.dry_run else "freed"
        grid.add_row("process", f"pid {result.pid}  handle fd {result.handle}")
        grid.add_row("timing", f"process stopped {ms(result.stopped_ms)}")
    for action in result.actions:
        grid.add_row("did" if not result.dry_run else "would", text(action))
    parts: list[RenderableType] = [Panel(grid, title=title, title_align="left", expand=False),
                                   access_table(result.access)]  # fmt: skip
    parts.extend(interruption_lines(result.interruptions))
    parts.extend(Text(printable(f"warning: {w}"), style="yellow") for w in result.warnings)
    return Group(*parts)


def process_table(rows: Sequence[ProcessRow]) -> Table:
    """`ps`: every process-controlled string (name, user, command line) goes in as Text, never read as markup."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    handles = "handles" if sys.platform == "win32" else "fds"
    for column in ("pid", "ppid", "user", "name", "threads", handles, "rss", "snap", "container"):
        table.add_column(column, justify="left" if column in ("user", "name", "container") else "right", no_wrap=True)
    # The one column rich may narrow on a terminal; each cell stays one line, cut with an ellipsis there.
    table.add_column("command", overflow="ellipsis")
    for row in rows:
        if row.snapshots is None:
            marker = Text("?", style="dim")
        elif row.snapshots:
            marker = Text(f"*{len(row.snapshots)}", style="bold magenta")
        else:
            marker = Text("")
        command = " ".join(row.cmdline) if row.cmdline else (f"[{row.name}]" if row.name else "-")
        table.add_row(
            str(row.pid),
            "-" if row.ppid is None else str(row.ppid),
            Text(printable(row.user or "-")),
            Text(printable(row.name or "-")),
            "-" if row.threads is None else str(row.threads),
            "-" if row.handles is None else str(row.handles),
            size(row.rss),
            marker,
            Text(printable(container_cell(row.container))),
            Text(printable(command), no_wrap=True, overflow="ellipsis"),
        )
    return table


def container_cell(container: Container | None) -> str:
    """`ps`'s container column: the short ID, or the runtime alone where only the environment names one."""
    if container is None:
        return ""
    return container.short_id if container.id is not None else f"({container.runtime})"


def checks_table(checks: Sequence[Check]) -> Table:
    """`doctor`: one row per check, grouped by section; a fix is shown only where something failed or warned."""
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
            Text(check.status.value.upper(), style=CHECK_STYLES[check.status.value]),
            Text(check.detail),
            Text(check.fix or "") if check.status.value in ("fail", "warn") else "",
        )
        section = check.section
    return table


def chosen_by(memory: MemoryCapture) -> str:
    """Which rules chose a dump's memory, and where its coredump_filter mask came from."""
    if memory.selection == "mini":
        limit = f", up to {human_size(memory.stack_limit)} of stack per thread" if memory.stack_limit else ""
        return f"mini core (stacks, ELF headers, loader data{limit})"
    if memory.selection == "all":
        return "--all-memory (every readable mapping, MADV_DONTDUMP ones too)"
    if memory.filter is None:
        return "the kernel's rules"
    source = {"process": "the process's /proc/PID/coredump_filter", "--filter": "--filter"}.get(
        memory.filter_source or "", memory.filter_source or "unknown"
    )
    return f"coredump_filter {memory.filter:#x} ({source}), less MADV_DONTDUMP"


def dump_view(snap: Snapshot, path: str, file_size: int | None, holder: int | None, handle: int | None,
              seconds: float, output: DumpOutput | None = None) -> Table:  # fmt: skip
    """`dump`: the file, how much memory it holds and how it got it, and how long the process was stopped."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    grid.add_row("file", Text(path))
    grid.add_row("size", size(file_size))
    if output is not None:
        if output.allocated_bytes is not None and not output.compression:
            grid.add_row("on disk", Text.assemble(size(output.allocated_bytes), " (zero pages are holes)"))
        rate = output.core_bytes / output.seconds / 1e9 if output.seconds > 0 else 0.0
        if output.ratio is not None:
            grid.add_row(output.compression or "", Text.assemble(
                size(output.core_bytes), f" core, {output.ratio:.1f}x smaller, at {rate:.2f} GB/s"))  # fmt: skip
    memory = snap.memory
    if memory is not None:
        how = {"va-clone": "VA clone (copy-on-write clone, copied while the process ran)",
               "frozen-copy": "copied while the process was frozen"}.get(memory.method, memory.method)  # fmt: skip
        grid.add_row("memory", Text.assemble(size(memory.bytes_captured), f" in {memory.regions} regions"))
        grid.add_row("chosen by", Text(chosen_by(memory)))
        grid.add_row("method", Text(how))
        if memory.copy_ms:
            rate = memory.bytes_captured / (memory.copy_ms / 1000) / 1e9
            grid.add_row("copied in", f"{memory.copy_ms / 1000:.2f} s ({rate:.2f} GB/s)")
        if memory.failed_pages:
            grid.add_row("unreadable pages", f"{memory.failed_pages} (zero in the core)")
    if holder is not None:
        grid.add_row("from", Text(f"fd {handle} of process {holder}"))
    else:
        reap = memory.reap_stopped_ms if memory is not None else None
        stopped = ms(snap.performance.stopped_ms) + (f" (and {ms(reap)} to reap the clone)" if reap else "")
        if snap.performance.wait_ms:
            grid.add_row("waited first", f"{ms(snap.performance.wait_ms)} for a thread in D state (nothing stopped)")
        grid.add_row("process stopped", stopped)
        if snap.performance.va_clone_ms is not None:
            grid.add_row("clone made in", ms(snap.performance.va_clone_ms))
    grid.add_row("total", f"{seconds:.2f} s")
    return grid

"""click parameter types for processes and snapshot handles, with shell completion.

Completion runs the whole program on every TAB, so it must be quick and must never fail: every lookup here is
wrapped, results are capped, and no command line is read. On Linux the process list comes straight from
/proc/PID/stat, because psutil's `name()` reads /proc/PID/cmdline whenever `comm` is 15 characters long.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ParamSpec

import click
from click.shell_completion import CompletionItem

from pss_cli.model import MAX_HANDLE, MAX_PID, timeout_problem
from pss_cli.render import printable

#: What readlink(/proc/PID/fd/N) says for a pss-dup snapshot: memfd_create("pss-snapshot", ...).
SNAPSHOT_LINK = "/memfd:pss-snapshot (deleted)"
#: More completions than this help nobody at a prompt, and each one costs time.
MAX_COMPLETIONS = 200
#: `flags` in /proc/PID/stat: the task is a kernel thread, which pss-dup cannot capture.
PF_KTHREAD = 0x00200000

P = ParamSpec("P")


@dataclass(frozen=True, slots=True)
class LiveProcess:
    """A process seen while completing: its PID and its short name (Linux `comm`, at most 15 characters)."""

    pid: int
    name: str


def read_stat(pid: int) -> tuple[str, str, int] | None:
    """(comm, state, flags) from /proc/PID/stat; comm may contain spaces and parentheses, so split at the last ')'."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    head, _, tail = raw.rpartition(b")")
    fields = tail.split()
    if b"(" not in head or len(fields) < 7:
        return None
    comm = head.partition(b"(")[2].decode("utf-8", "replace")
    return comm, fields[0].decode("ascii", "replace"), int(fields[6])


def live_processes() -> Iterator[LiveProcess]:
    """Processes pss-dup could act on, this one excluded: no kernel threads, no zombies. Never raises."""
    own = os.getpid()
    if sys.platform == "linux":
        try:
            entries = [int(e.name) for e in os.scandir("/proc") if e.name.isdigit()]
        except OSError:
            return
        for pid in sorted(entries):
            stat = read_stat(pid)
            if pid == own or stat is None:
                continue
            comm, state, flags = stat
            if state in ("Z", "X") or flags & PF_KTHREAD:
                continue
            yield LiveProcess(pid, comm)
        return
    try:
        import psutil

        for proc in psutil.process_iter(["name"], ad_value=None):
            if proc.pid not in (own, 0):
                yield LiveProcess(proc.pid, proc.info["name"] or "")
    except Exception:
        return


def snapshot_fds(pid: int) -> list[int] | None:
    """The fds of `pid` named like pss-dup snapshots (Linux), or None when its fd table cannot be read.

    Only readlink: a TAB must stay quick, so the name nominates and the completed command checks the format
    (`ps` checks it up front, through the backend).
    """
    if sys.platform != "linux":
        return None
    found = []
    try:
        with os.scandir(f"/proc/{pid}/fd") as entries:
            for entry in entries:
                try:
                    if os.readlink(entry.path) == SNAPSHOT_LINK:
                        found.append(int(entry.name))
                except (OSError, ValueError):
                    continue
    except OSError:
        return None
    return sorted(found)


def usable_word(name: str) -> bool:
    return name.isprintable() and "," not in name and not any(c.isspace() for c in name)


def pid_items(incomplete: str) -> list[CompletionItem[str]]:
    """Live PIDs that start with `incomplete`, each with the process name as its description."""
    items = []
    for proc in live_processes():
        if str(proc.pid).startswith(incomplete):
            # A name is chosen by whoever started the process: no control codes into the shell's protocol.
            items.append(CompletionItem(str(proc.pid), help=printable(proc.name) or None))
            if len(items) >= MAX_COMPLETIONS:
                break
    return items


def name_items(incomplete: str) -> list[CompletionItem[str]]:
    """Process names that start with `incomplete`, each with its PID(s) as the description.

    Names with whitespace, commas or control characters are left out: a shell would split or mangle them (fish
    splits each reply at its first comma). Descriptions here carry no commas for the same reason.
    """
    pids: dict[str, list[int]] = {}
    for proc in live_processes():
        if proc.name.startswith(incomplete) and usable_word(proc.name):
            pids.setdefault(proc.name, []).append(proc.pid)
    items = []
    for name in sorted(pids)[:MAX_COMPLETIONS]:
        found = pids[name]
        listed = " ".join(map(str, found[:5])) + (" ..." if len(found) > 5 else "")
        help_text = f"PID {found[0]}" if len(found) == 1 else f"{len(found)} processes: PIDs {listed}"
        items.append(CompletionItem(name, help=help_text))
    return items


def guarded(complete: Callable[P, list[CompletionItem[str]]]) -> Callable[P, list[CompletionItem[str]]]:
    """Completion must never raise into the shell: any failure means no suggestions."""

    @functools.wraps(complete)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> list[CompletionItem[str]]:
        try:
            return complete(*args, **kwargs)
        except Exception:
            return []

    return wrapper


class ProcessTarget(click.ParamType[str, Any]):
    """A PID or a process name; resolved by the command (pss_cli.lookup.resolve), so errors keep their exit codes.

    Completes live PIDs (name shown beside each where the shell supports descriptions) and, once a non-digit is
    typed, process names.
    """

    name = "pid|name"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip()
        if not text:
            self.fail("a PID or a process name is needed, not an empty string", param, ctx)
        return text

    @guarded
    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem[str]]:
        if incomplete == "" or incomplete.isdigit():
            return pid_items(incomplete)
        return name_items(incomplete)


def pid_number(text: str) -> int | None:
    """`text` as a PID, or None: ASCII digits only ('²' is a digit to str.isdigit, not to int), within MAX_PID."""
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(MAX_PID)):
        return None
    number = int(text)
    return number if 0 < number <= MAX_PID else None


class ProcessId(click.ParamType[int, Any]):
    """A PID (a positive integer); completes live PIDs with their names."""

    name = "pid"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_PID:
            return value
        number = pid_number(str(value).strip())
        if number is None:
            self.fail(f"{value!r} is not a PID (a positive integer); find one with `pss-dup ps`", param, ctx)
        return number

    @guarded
    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem[str]]:
        return pid_items(incomplete) if incomplete == "" or incomplete.isdigit() else []


class SnapshotHandle(click.ParamType[int, Any]):
    """A snapshot handle held by another process: an fd number on Linux, an HPSS value on Windows.

    Completes the fds that the process named by the already-parsed parameter `process_param` holds as pss-dup
    snapshots.
    """

    name = "handle"

    def __init__(self, process_param: str) -> None:
        self.process_param = process_param

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_HANDLE:
            return value
        text = str(value).strip()
        try:
            number = int(text, 10 if text.isascii() and text.isdigit() else 0) if len(text) <= 24 else -1
        except ValueError:
            number = -1
        if not 0 <= number <= MAX_HANDLE:  # a larger fd would reach the kernel truncated: some other fd
            self.fail(f"{value!r} is not a handle (an fd number, or a hex HPSS value)", param, ctx)
        return number

    @guarded
    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem[str]]:
        pid = holder_pid(self.process_value(ctx))
        if pid is None:
            return []
        items = []
        for fd in snapshot_fds(pid) or []:
            if str(fd).startswith(incomplete):
                items.append(CompletionItem(str(fd), help=f"pss-dup snapshot ({describe_size(pid, fd)})"))
        return items[:MAX_COMPLETIONS]

    def process_value(self, ctx: click.Context) -> object:
        """The holder as parsed; when click gave up parsing at an option that still waits for its value
        (`dup 12 34 --handle <TAB>`), the arguments are left in ctx.args, in order."""
        value = ctx.params.get(self.process_param)
        if value is None:
            positional = [p.name for p in ctx.command.params if isinstance(p, click.Argument)]
            if self.process_param in positional:
                index = positional.index(self.process_param)
                value = ctx.args[index] if index < len(ctx.args) else None
        return value


def holder_pid(value: object) -> int | None:
    """The PID a parsed PID/TARGET parameter names: a number, or a name that exactly one process has."""
    if isinstance(value, int):
        return value
    if not isinstance(value, str) or not value:
        return None
    if value.isdigit():
        return pid_number(value)
    matches = [p.pid for p in live_processes() if p.name == value]
    return matches[0] if len(matches) == 1 else None


def describe_size(pid: int, fd: int) -> str:
    try:
        size = float(os.stat(f"/proc/{pid}/fd/{fd}").st_size)
    except OSError:
        return "size unknown"
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


class Seconds(click.ParamType[float, Any]):
    """--timeout: a finite number of seconds within the model's bounds (click's FloatRange lets NaN through)."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        problem = timeout_problem(seconds)
        if problem is not None:
            self.fail(problem, param, ctx)
        return seconds


#: The shared instances commands declare their arguments with.
TARGET = ProcessTarget()
PID = ProcessId()

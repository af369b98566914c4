"""click parameter types for processes and snapshot handles, with shell completion.

Completion runs the whole program on every TAB, so it must be quick and must never fail: every lookup here is
wrapped, results are capped, and no command line is read. Processes and handles come from the API's quick,
look-only listings (pss_cli.api.live_processes, named_snapshots), never from /proc read here: a TAB must stay
quick, so a handle is offered by its name and the completed command checks it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ParamSpec

import click
from click.shell_completion import CompletionItem

from pss_cli.cli import declare
from pss_cli.cli.declare import BadValue, Checked
from pss_cli.model import MAX_HANDLE, filter_problem, pid_number
from pss_cli.render import human_size, printable

#: More completions than this help nobody at a prompt, and each one costs time.
MAX_COMPLETIONS = 200

P = ParamSpec("P")


def usable_word(name: str) -> bool:
    return name.isprintable() and "," not in name and not any(c.isspace() for c in name)


def pid_items(incomplete: str) -> list[CompletionItem[str]]:
    """Live PIDs that start with `incomplete`, each with the process name as its description."""
    from pss_cli import api

    items = []
    for proc in api.live_processes():
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
    from pss_cli import api

    pids: dict[str, list[int]] = {}
    for proc in api.live_processes():
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


class CheckedType(click.ParamType[Any, Any]):
    """click's type for a declared one (pss_cli.cli.declare): its rule, its name, and shell completion of what it
    names (live PIDs with their names as descriptions, and process names once a non-digit is typed)."""

    def __init__(self, kind: Checked) -> None:
        self.kind = kind
        self.name = kind.name

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return self.kind.convert(value)
        except BadValue as exc:
            self.fail(str(exc), param, ctx)

    @guarded
    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem[str]]:
        if self.kind.completes is None:
            return []
        if incomplete == "" or incomplete.isdigit():
            return pid_items(incomplete)
        return name_items(incomplete) if self.kind.completes == "pids and names" else []


@functools.cache
def checked_type(kind: Checked) -> CheckedType:
    """One click type per declared type, as the commands share one instance of each."""
    return CheckedType(kind)


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
        from pss_cli import api

        pid = holder_pid(self.process_value(ctx))
        if pid is None:
            return []
        items = []
        for fd in api.named_snapshots(pid) or ():
            if str(fd).startswith(incomplete):
                size = api.handle_size(pid, fd)
                described = "size unknown" if size is None else human_size(size)
                items.append(CompletionItem(str(fd), help=f"pss-dup snapshot ({described})"))
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
    from pss_cli import api

    matches = [p.pid for p in api.live_processes() if p.name == value]
    return matches[0] if len(matches) == 1 else None


class Size(click.ParamType[int, Any]):
    """A size in bytes: 4096, 512K, 512M, 2G (binary units)."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        from pss_cli.watch import parse_size

        if isinstance(value, int):
            return value
        try:
            return parse_size(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class FilterMask(click.ParamType[int, Any]):
    """A coredump_filter mask, hex (0x33) or decimal (51), as /proc/PID/coredump_filter takes it."""

    name = "mask"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            mask = value
        else:
            text = str(value).strip()
            try:
                mask = int(text, 16) if text.lower().startswith("0x") else int(text, 10)
            except ValueError:
                self.fail(f"{value!r} is not a mask: give hex (0x33) or decimal (51)", param, ctx)
        problem = filter_problem(mask)
        if problem is not None:
            self.fail(problem, param, ctx)
        return mask


#: The shared instances commands declare their arguments with.
TARGET = checked_type(declare.TARGET)
PID = checked_type(declare.PID)
SIZE = Size()
MASK = FilterMask()

"""What every command shares: the output options, which build the run's Ui, and error reporting.

Ui and the consoles live in pss_cli.render.console; rich is imported only when a command actually renders, so
`--version`, `--help`, shell completion and JSON output never load it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

from pss_cli.cli.params import MASK, SIZE, Seconds
from pss_cli.errors import PssError, UsageError, own_error
from pss_cli.model import DEFAULT_STACK_LIMIT, DumpSelection
from pss_cli.render.console import OUTPUT_FORMATS, Ui

F = TypeVar("F", bound=Callable[..., Any])


def output_options(func: F) -> F:
    """-o/--output, --json, -q, --timeout and --color on every command, after the subcommand where people type them."""

    @click.option(
        "-o",
        "--output",
        type=click.Choice(OUTPUT_FORMATS),
        default="table",
        show_default=True,
        envvar="PSS_DUP_OUTPUT",
        help="Report format: tables for people, JSON (one document) or JSON Lines (one record per line) for scripts.",
    )
    @click.option("--json", "json_alias", is_flag=True, help="Same as -o json.")
    @click.option("-q", "--quiet", is_flag=True, help="No warnings or progress on stderr; errors still print.")
    @click.option(
        "--timeout",
        type=Seconds(),
        metavar="SECONDS",
        default=10.0,
        show_default=True,
        envvar="PSS_DUP_TIMEOUT",
        help="Seconds (0.1 to 3600) to wait for any process to stop or answer; every process is restored when it "
        "runs out.",
    )
    @click.option(
        "--color",
        type=click.Choice(["auto", "always", "never"]),
        default="auto",
        show_default=True,
        help="Colour: auto follows NO_COLOR, FORCE_COLOR and whether the output is a terminal.",
    )
    @click.option(
        "--debug-privilege",
        is_flag=True,
        help="Windows: enable SeDebugPrivilege for this run (needs an elevated prompt) and say whether it could.",
    )
    @functools.wraps(func)
    def wrapper(
        *args: Any,
        output: str,
        json_alias: bool,
        quiet: bool,
        timeout: float,
        color: str,
        debug_privilege: bool,
        **kwargs: Any,
    ) -> Any:
        ctx = click.get_current_context()
        ui = Ui(
            output="json" if json_alias else output,
            quiet=quiet,
            color=color,
            timeout=timeout,
            command=ctx.info_name or "",
        )
        ctx.obj = ui
        try:
            if debug_privilege:
                from pss_cli import api

                if not api.enable_debug_privilege():
                    ui.warn("SeDebugPrivilege could not be enabled: run from an elevated prompt")
            return func(ui, *args, **kwargs)
        except (PssError, OSError) as exc:
            error = exc if isinstance(exc, PssError) else own_error(exc)
            if error is None:
                raise
            if ui.machine:
                from pss_cli.render.jsonout import emit_error

                emit_error(ui, error)
            if error is exc:
                raise
            raise error from None

    return wrapper  # type: ignore[return-value]


def memory_options(func: F) -> F:
    """--mini, --stack-limit, --filter and --all-memory: what memory a core takes (`dump` and `watch --dump`). The
    command gets them as one `selection` (a DumpSelection, or None when none was given)."""

    @click.option("--mini", is_flag=True,
                  help="A small core for backtraces: each thread's registers and stack, ELF headers, the loader's list "
                       "of libraries; `thread apply all bt` works in gdb.")  # fmt: skip
    @click.option("--stack-limit", type=SIZE, default=None, metavar="SIZE",
                  help=f"With --mini, the most stack taken per thread, from its stack pointer up "
                       f"[default: {DEFAULT_STACK_LIMIT >> 20}M].")  # fmt: skip
    @click.option("--filter", "mask", type=MASK, default=None, metavar="MASK",
                  help="Take what the kernel would dump with this coredump_filter (hex or decimal) instead of the "
                       "process's own /proc/PID/coredump_filter.")  # fmt: skip
    @click.option(
        "--all-memory",
        is_flag=True,
        help="Take every readable mapping, file-backed and MADV_DONTDUMP ones included (as gcore -a).",
    )
    @functools.wraps(func)
    def wrapper(
        *args: Any, mini: bool, stack_limit: int | None, mask: int | None, all_memory: bool, **kwargs: Any
    ) -> Any:
        return func(*args, selection=dump_selection(mini, stack_limit, mask, all_memory), **kwargs)

    return wrapper  # type: ignore[return-value]


def dump_selection(mini: bool, stack_limit: int | None, mask: int | None, all_memory: bool) -> DumpSelection | None:
    """What memory the options choose; None when none was given."""
    if stack_limit is not None and not mini:
        raise UsageError("--stack-limit sizes the stacks of a --mini core: add --mini")
    if not (mini or mask is not None or all_memory):
        return None
    return DumpSelection(
        mini=mini,
        stack_limit=DEFAULT_STACK_LIMIT if stack_limit is None else stack_limit,
        filter=mask,
        all_memory=all_memory,
    )

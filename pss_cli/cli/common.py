"""click's side of the declarations (pss_cli.cli.declare): each declared param becomes click's own argument or
option, and a declared command click's command; the output options on every command, click-decorated or declared,
come from the one list (declare.OUTPUT_OPTIONS) and make the run's Ui in pss_cli.cli.runner.

Ui and the consoles live in pss_cli.render.console; rich is imported only when a command actually renders, so
`--version`, `--help`, shell completion and JSON output never load it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import click

from pss_cli.cli import runner
from pss_cli.cli.declare import OUTPUT_OPTIONS, Checked, Choice, Command, Param
from pss_cli.cli.params import MASK, SIZE, checked_type
from pss_cli.errors import UsageError
from pss_cli.model import DEFAULT_STACK_LIMIT, DumpSelection

F = TypeVar("F", bound=Callable[..., Any])


def click_param(param: Param) -> Callable[[F], F]:
    """click.argument or click.option with the declaration's words; a declared type becomes click's."""
    attrs = dict(param.attrs)
    kind = attrs.get("type")
    if isinstance(kind, Choice):
        attrs["type"] = click.Choice(kind.choices)
    elif isinstance(kind, Checked):
        attrs["type"] = checked_type(kind)
    make = click.argument if param.kind == "argument" else click.option
    return make(*param.decls, **attrs)


def click_params(params: Iterable[Param]) -> Callable[[F], F]:
    """Decorate with `params`, first one on top (as they would be written above a click command)."""

    def decorate(func: F) -> F:
        for param in reversed(tuple(params)):
            func = click_param(param)(func)
        return func

    return decorate


def output_options(func: F) -> F:
    """-o/--output, --json, -q, --timeout and --color on every command, after the subcommand where people type them."""

    @click_params(OUTPUT_OPTIONS)
    @functools.wraps(func)
    def wrapper(**params: Any) -> Any:
        return runner.run(func, click.get_current_context().info_name or "", params)

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


def click_command(declared: Command) -> click.Command:
    """click's command for a declaration: the same params, help and callback (through runner.run)."""

    def callback(**params: Any) -> Any:
        return runner.run(declared.callback, click.get_current_context().info_name or "", params)

    callback.__doc__ = declared.callback.__doc__
    return click.command(declared.name)(click_params(declared.params)(callback))

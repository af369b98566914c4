"""What every command shares: output options, the per-run console state, and error reporting.

rich is imported only when a command actually renders, so `--version`, `--help` and shell completion stay fast.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import click

from pss_cli.cli.params import Seconds
from pss_cli.errors import PssError, own_error

if TYPE_CHECKING:
    from rich.console import Console

F = TypeVar("F", bound=Callable[..., Any])

OUTPUT_FORMATS = ("table", "json", "jsonl")


@dataclass
class Ui:
    """How this run reports: format, verbosity, colour, and the two consoles (data on stdout, the rest on stderr)."""

    output: str
    quiet: bool
    color: str
    timeout: float
    command: str
    _out: Console | None = None
    _err: Console | None = None

    @property
    def machine(self) -> bool:
        return self.output in ("json", "jsonl")

    @property
    def out(self) -> Console:
        if self._out is None:
            self._out = make_console(self.color, stderr=False)
        return self._out

    @property
    def err(self) -> Console:
        if self._err is None:
            self._err = make_console(self.color, stderr=True)
        return self._err

    @property
    def interactive(self) -> bool:
        """Animate only for a person watching: a real terminal on stderr, not CI, not quiet, not FORCE_COLOR's fake."""
        return (
            sys.stderr.isatty()
            and not self.quiet
            and not os.environ.get("CI")
            and os.environ.get("TTY_INTERACTIVE") != "0"
        )

    def warn(self, message: str) -> None:
        if not self.quiet:
            from rich.text import Text

            from pss_cli.render import printable

            self.err.print(Text(printable(f"pss-dup: warning: {message}"), style="yellow"))


def make_console(color: str, *, stderr: bool) -> Console:
    """A console per run (NO_COLOR is read when one is built).

    Piped output is never cut to fit a width: COLUMNS describes a terminal, and a pipe has none (some libraries
    export COLUMNS=80 into every child process, which would otherwise fold every path in the report).
    """
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else 100_000
    return Console(
        stderr=stderr,
        highlight=False,
        no_color=True if color == "never" else None,
        force_terminal={"always": True, "never": False}.get(color),
        width=width,
        soft_wrap=False,
    )


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
                from pss_cli.platform import backend

                if not backend().enable_debug_privilege():
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

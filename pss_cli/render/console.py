"""The per-run output state: format, verbosity, colour, and the two rich consoles (data on stdout, the rest on stderr).

The CLI builds one `Ui` from its options and hands it to the views here; nothing in this module knows click.
rich is imported only when something is drawn for a person, so JSON output never loads it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from pss_cli.record import record
from pss_cli.render import printable

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

OUTPUT_FORMATS = ("table", "json", "jsonl")


@record(frozen=False)
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


def print_trimmed(ui: Ui, renderable: RenderableType) -> None:
    """A table without the padding rich adds after the last column, so piped lines end where the text ends."""
    with ui.out.capture() as captured:
        ui.out.print(renderable)
    ui.out.file.write("\n".join(line.rstrip(" ") for line in captured.get().split("\n")))
    ui.out.file.flush()


@contextlib.contextmanager
def progress_bar(ui: Ui, label: str) -> Iterator[Callable[[int, int], None] | None]:
    """A rich progress bar on stderr, only for a person watching (ui.interactive); yields the update callback."""
    if not ui.interactive:
        yield None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn(label),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=ui.err, transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


@contextlib.contextmanager
def status(ui: Ui, message: str) -> Iterator[None]:
    """A spinner with `message` on stderr while something slow runs, only for a person watching."""
    if not ui.interactive:
        yield
        return
    with ui.err.status(message):
        yield

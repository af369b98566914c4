"""The click application: a thin layer that parses, calls the API (pss_cli.api, and nothing else below it), and
renders (pss_cli.render).

`main()` runs click without its standalone mode so that every failure gets exactly one line on stderr and a
documented exit code (errors.ExitCode), and Ctrl-C exits 130 after the lower layers restored every process. Ending a
run is pss_cli.cli.runner's job, shared with the quick path (pss_cli.cli.quick), which runs a command without click
when it understands the whole command line.

Each command's module is imported only when that command runs, or when help lists every command: scripts call
pss-dup in loops, and a `capture` should not pay for `doctor`'s or `dump`'s imports.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, MutableMapping
from typing import NoReturn

import click

from pss_cli import interrupts
from pss_cli._version import __version__
from pss_cli.cli import COMMANDS, runner
from pss_cli.cli.common import click_command
from pss_cli.cli.declare import Command
from pss_cli.errors import EXIT_CODE_HELP, ExitCode

EXIT_CODES_EPILOG = "\b\nExit codes:\n" + "\n".join(
    f"  {int(code):>3}  {text}" for code, text in EXIT_CODE_HELP.items()
)


class _Stopped(BaseException):
    """Carries a KeyboardInterrupt (or interrupts.Terminated) past click, which would print an empty line for it."""

    def __init__(self, cause: KeyboardInterrupt) -> None:
        super().__init__()
        self.cause = cause


class LazyCommands(MutableMapping[str, click.Command]):
    """A group's commands by name, each imported on first access; listing the names imports nothing.

    click reads a group's commands only through this mapping (`get_command`, `list_commands`), so parsing,
    completion and help work unchanged while a run loads just the module of the command it runs.
    """

    def __init__(self, where: dict[str, str]) -> None:
        self._where = dict(where)
        self._loaded: dict[str, click.Command] = {}

    def __getitem__(self, name: str) -> click.Command:
        if name not in self._loaded:
            module, _, attribute = self._where[name].partition(":")
            # `from module import attribute`, through the import statement's machinery (which -X importtime
            # reports; importlib.import_module would hide the module from that measurement).
            command = getattr(__import__(module, fromlist=[attribute]), attribute)
            if isinstance(command, Command):  # declared without click (pss_cli.cli.declare): click's is built here
                command = click_command(command)
            assert isinstance(command, click.Command), self._where[name]
            self._loaded[name] = command
        return self._loaded[name]

    def __setitem__(self, name: str, command: click.Command) -> None:
        self._where.pop(name, None)
        self._loaded[name] = command

    def __delitem__(self, name: str) -> None:
        if name not in self._where and name not in self._loaded:
            raise KeyError(name)
        self._where.pop(name, None)
        self._loaded.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted({*self._where, *self._loaded}))

    def __len__(self) -> int:
        return len({*self._where, *self._loaded})

    def __contains__(self, name: object) -> bool:
        return name in self._where or name in self._loaded


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            raise _Stopped(exc) from None


@click.group(
    cls=_Group,
    commands=LazyCommands(COMMANDS),
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
    epilog=EXIT_CODES_EPILOG,
)
@click.version_option(__version__, prog_name="pss-dup")
def cli() -> None:
    """Capture a snapshot of a running process, hand it to another process, and report what happened.

    On Linux this needs root or CAP_SYS_PTRACE over the processes involved (see `pss-dup doctor`).
    """


def requested_format(argv: list[str]) -> str:
    """The output format the command line asked for, read without click (for errors click raises itself)."""
    wanted = "table"
    for i, word in enumerate(argv):
        if word == "--json":
            wanted = "json"
        elif word in ("-o", "--output") and i + 1 < len(argv):
            wanted = argv[i + 1]
        elif word.startswith(("--output=", "-o")) and word not in ("-o",):
            wanted = word.split("=", 1)[1] if word.startswith("--output=") else word[2:]
    return wanted


def usage_error(exc: click.UsageError, argv: list[str]) -> NoReturn:
    """One line (what is wrong, and where the help is), plus a JSON document when the run asked for JSON."""
    command = exc.ctx.command_path if exc.ctx else "pss-dup"
    message = " ".join(exc.format_message().split()).rstrip(".")
    wanted = requested_format(argv)
    if wanted in ("json", "jsonl"):
        from pss_cli.errors import UsageError
        from pss_cli.render.console import Ui
        from pss_cli.render.jsonout import emit_error

        ui = Ui(output=wanted, quiet=True, color="never", timeout=0, command=command.removeprefix("pss-dup").strip())
        emit_error(ui, UsageError(message))
    runner.fail(f"{message}; see '{command} --help'", ExitCode.USAGE)


def main(argv: list[str] | None = None) -> NoReturn:
    """The console script. Maps every outcome to the exit-code table, never to a traceback."""
    interrupts.install()
    try:
        result = cli.main(args=argv, prog_name="pss-dup", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        usage_error(exc, sys.argv[1:] if argv is None else argv)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (_Stopped, KeyboardInterrupt, click.Abort) as exc:
        cause = exc.cause if isinstance(exc, _Stopped) else exc.__cause__ if isinstance(exc, click.Abort) else exc
        runner.stopped(cause)
    except Exception as exc:
        runner.failed(exc)
    runner.finish(result)

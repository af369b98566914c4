"""Commands declared without click: the one definition of a command's arguments and options.

click builds its command from a declaration (pss_cli.cli.common.click_command), and the quick path
(pss_cli.cli.quick) parses the same declaration without importing click, so a script's `capture PID -o json` does not
pay ~45 ms for click's import. The decorators take click's own keyword arguments, handed to click unchanged; value
types are click-free (their rule is here, and click reports a refused value as its usage error, in its words).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pss_cli.model import MAX_PID, pid_number, timeout_problem
from pss_cli.render.console import OUTPUT_FORMATS


class BadValue(ValueError):
    """A value its type refuses: click turns the message into its usage error."""


class Choice:
    """One of `choices`, spelled exactly (click.Choice on the click side)."""

    def __init__(self, choices: tuple[str, ...]) -> None:
        self.choices = choices


class Checked:
    """A value type with its own rule: `name` shows in help, `completes` says what shell completion offers."""

    name = ""
    completes: str | None = None

    def convert(self, value: object) -> Any:
        raise NotImplementedError


class ProcessTarget(Checked):
    """A PID, a process name, or container:ID[:PID]; resolved by the command (pss_cli.api.resolve), so errors keep
    their exit codes."""

    name = "pid|name|container:ID"
    completes = "pids and names"

    def convert(self, value: object) -> str:
        text = str(value).strip()
        if not text:
            raise BadValue("a PID or a process name is needed, not an empty string")
        return text


class ProcessId(Checked):
    """A PID (a positive integer)."""

    name = "pid"
    completes = "pids"

    def convert(self, value: object) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_PID:
            return value
        number = pid_number(str(value).strip())
        if number is None:
            raise BadValue(f"{value!r} is not a PID (a positive integer); find one with `pss-dup ps`")
        return number


class Seconds(Checked):
    """--timeout: a finite number of seconds within the model's bounds (click's FloatRange lets NaN through)."""

    name = "seconds"

    def convert(self, value: object) -> float:
        try:
            seconds = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise BadValue(f"{value!r} is not a number of seconds") from None
        problem = timeout_problem(seconds)
        if problem is not None:
            raise BadValue(problem)
        return seconds


#: The shared instances commands declare their arguments with.
TARGET = ProcessTarget()
PID = ProcessId()
SECONDS = Seconds()


class Param:
    """One argument or option: click's declarations and keyword arguments, as click.argument/click.option take them."""

    def __init__(self, kind: str, decls: tuple[str, ...], attrs: dict[str, Any]) -> None:
        self.kind = kind
        self.decls = decls
        self.attrs = attrs

    @property
    def name(self) -> str:
        """The keyword the callback gets, named as click names it: the bare word, else the first long option."""
        bare = [d for d in self.decls if d.isidentifier()]
        if bare:
            return bare[0]
        long = [d for d in self.decls if d.startswith("--")] or list(self.decls)
        return long[0].lstrip("-").replace("-", "_").lower()


F = Callable[..., Any]


def declared(func: F) -> list[Param]:
    """The params declared on `func` so far, in the order the decorators ran (bottom up, as click's)."""
    params: list[Param] = func.__dict__.setdefault("__declared_params__", [])
    return params


def argument(*decls: str, **attrs: Any) -> Callable[[F], F]:
    def add(func: F) -> F:
        declared(func).append(Param("argument", decls, attrs))
        return func

    return add


def option(*decls: str, **attrs: Any) -> Callable[[F], F]:
    def add(func: F) -> F:
        declared(func).append(Param("option", decls, attrs))
        return func

    return add


#: -o/--output, --json, -q, --timeout, --color and --debug-privilege: every command has them, after the subcommand
#: where people type them; they make the run's Ui (pss_cli.cli.runner.run), which the callback gets first.
OUTPUT_OPTIONS = (
    Param("option", ("-o", "--output"), {
        "type": Choice(OUTPUT_FORMATS), "default": "table", "show_default": True, "envvar": "PSS_DUP_OUTPUT",
        "help": "Report format: tables for people, JSON (one document) or JSON Lines (one record per line) for "
                "scripts."}),
    Param("option", ("--json", "json_alias"), {"is_flag": True, "help": "Same as -o json."}),
    Param("option", ("-q", "--quiet"), {
        "is_flag": True, "help": "No warnings or progress on stderr; errors still print."}),
    Param("option", ("--timeout",), {
        "type": SECONDS, "metavar": "SECONDS", "default": 10.0, "show_default": True, "envvar": "PSS_DUP_TIMEOUT",
        "help": "Seconds (0.1 to 3600) to wait for any process to stop or answer; every process is restored when "
                "it runs out."}),
    Param("option", ("--color",), {
        "type": Choice(("auto", "always", "never")), "default": "auto", "show_default": True,
        "help": "Colour: auto follows NO_COLOR, FORCE_COLOR and whether the output is a terminal."}),
    Param("option", ("--debug-privilege",), {
        "is_flag": True,
        "help": "Windows: enable SeDebugPrivilege for this run (needs an elevated prompt) and say whether it could."}),
)  # fmt: skip
#: The keywords of OUTPUT_OPTIONS, which the runner takes before the callback sees the rest.
OUTPUT_NAMES = tuple(p.name for p in OUTPUT_OPTIONS)


def output_options(func: F) -> F:
    """Declare OUTPUT_OPTIONS on a command (the callback's first argument is then the run's Ui)."""
    declared(func).extend(reversed(OUTPUT_OPTIONS))
    return func


class Command:
    """A declared command: its name, its params in the order of the source (top down), and the callback that
    takes the run's Ui and one keyword per param (the output options excepted). Its docstring is the help."""

    def __init__(self, callback: F) -> None:
        if hasattr(callback, "__click_params__"):  # click's decorators on a declared command would be lost
            raise TypeError(f"{callback.__name__}: declare its params with pss_cli.cli.declare, not click")
        self.name = callback.__name__.lower().replace("_", "-")
        self.callback = callback
        self.params = tuple(reversed(declared(callback)))


def command(func: F) -> Command:
    """Declare a command whose callback is `func` (as click.command(), without click)."""
    return Command(func)

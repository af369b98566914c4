"""The quick path: a declared command (pss_cli.cli.declare) run without importing click, when its command line
holds nothing but what the declaration says and the parse is unambiguous.

Scripts call pss-dup in loops, and click's import alone costs more than the work of a `capture PID -o json`.
This reads the same declarations click builds its commands from, converts values with the same types, and calls the
same callback through the same runner (pss_cli.cli.runner), so a run ends alike on either path. Anything it does not
fully understand (help, a bad or unknown option, a value its type refuses, `--`, completion, an option value that
looks like an option) it leaves to click, which then reports it in its own words: `parse` returns None and the
caller runs click. tests/test_quick.py holds both paths to the same output and exit code.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any

from pss_cli.cli import COMMANDS, runner
from pss_cli.cli.declare import BadValue, Checked, Choice, Command, Param

#: The keyword arguments of a declared param that this parser reads; a param with any other goes to click.
UNDERSTOOD = frozenset({"type", "default", "show_default", "envvar", "help", "metavar", "is_flag", "flag_value",
                        "multiple", "required"})  # fmt: skip
#: click's shell completion variable for the prog name "pss-dup": a completion request goes to click.
COMPLETE_VAR = "_PSS_DUP_COMPLETE"


def declared_command(name: str) -> Command | None:
    """The declaration of command `name`, or None where the command is click's own (or unknown)."""
    where = COMMANDS.get(name)
    if where is None:
        return None
    module, _, attribute = where.partition(":")
    command = getattr(__import__(module, fromlist=[attribute]), attribute)
    return command if isinstance(command, Command) else None


def understood(command: Command) -> bool:
    return all(UNDERSTOOD.issuperset(p.attrs) for p in command.params)


def converted(param: Param, value: object) -> object:
    """`value` through the param's type, as click converts it; BadValue where click would refuse it."""
    kind = param.attrs.get("type")
    if isinstance(kind, Choice):
        if value not in kind.choices:
            raise BadValue(value)
        return value
    if isinstance(kind, Checked):
        return kind.convert(value)
    if kind is not None or not isinstance(value, str):
        raise BadValue(value)  # a type this parser does not know
    return value


def takes_value(param: Param) -> bool:
    return not param.attrs.get("is_flag") and "flag_value" not in param.attrs


def parse(argv: list[str]) -> tuple[str, Command, dict[str, Any]] | None:
    """(command name, declaration, the callback's keywords) as click would pass them, or None: leave it to click."""
    if not argv or sys.platform == "win32" or COMPLETE_VAR in os.environ or not runner.plain_stream(sys.stderr):
        return None
    command = declared_command(argv[0])
    if command is None or not understood(command):
        return None
    options = {decl: p for p in command.params if p.kind == "option" for decl in p.decls if decl.startswith("-")}
    arguments = [p for p in command.params if p.kind == "argument"]
    given: dict[str, list[object]] = {}
    positional: list[str] = []
    words = iter(argv[1:])
    try:
        for word in words:
            if not word.startswith("-"):
                positional.append(word)
                continue
            if word.startswith("--"):
                decl, equals, after = word.partition("=")
                attached = after if equals else None
            else:
                decl, attached = word[:2], word[2:] or None
            param = options.get(decl)
            if param is None:
                return None
            if not takes_value(param):
                if attached is not None:
                    return None
                given.setdefault(param.name, []).append(param.attrs.get("flag_value", True))
                continue
            text = attached if attached is not None else next(words, None)
            if text is None or (attached is None and text.startswith("-")):
                return None
            given.setdefault(param.name, []).append(converted(param, text))
        if len(positional) > len(arguments):
            return None
        params: dict[str, Any] = {}
        for param, word in zip(arguments, positional, strict=False):
            params[param.name] = converted(param, word)
        for param in arguments[len(positional) :]:
            if param.attrs.get("required", True):
                return None
            params[param.name] = None
        for param in command.params:
            if param.kind == "option":
                params[param.name] = option_value(param, given.get(param.name))
    except BadValue:
        return None
    return argv[0], command, params


def option_value(param: Param, given: list[object] | None) -> object:
    """An option's value: the last one given (every one, in command-line order, for `multiple`: options that share
    one keyword, as the capture flags do, share the list, as in click's parser), else its environment variable,
    else its default."""
    attrs = param.attrs
    if attrs.get("multiple"):
        return tuple(given or ())
    if given:
        return given[-1]
    if attrs.get("is_flag"):
        return False
    envvar = attrs.get("envvar")
    if envvar and os.environ.get(envvar):
        return converted(param, os.environ[envvar])
    default = attrs.get("default")
    return None if default is None else converted(param, default)


def main(argv: list[str]) -> None:
    """Run `argv` on the quick path and exit, or return (having changed nothing) for click to run it."""
    parsed = parse(argv)
    if parsed is None:
        return
    name, command, params = parsed
    try:
        result = runner.run(command.callback, name, params)
    except KeyboardInterrupt as exc:
        runner.stopped(exc)
    except EOFError as exc:  # click prints an empty line, then treats it as Ctrl-C (Abort)
        runner.echo_error("")
        runner.stopped(exc)
    except OSError as exc:
        if exc.errno == errno.EPIPE:  # click quietens the streams and exits 1 (Command.main)
            sys.stdout = None
            sys.exit(1)
        runner.failed(exc)
    except Exception as exc:
        runner.failed(exc)
    runner.finish(result)

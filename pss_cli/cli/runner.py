"""Running one command, whichever parser read its command line (click, or the quick path): its Ui, the JSON
document a failure still gets, and the one line and exit code every outcome ends with. Nothing here imports click,
so both paths share it and end alike.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from pss_cli import interrupts
from pss_cli.errors import ExitCode, PssError, own_error
from pss_cli.render.console import Ui


def echo_error(line: str) -> None:
    """`line` on stderr as click.echo(err=True) writes it; click does it wherever click is loaded anyway, or where
    stderr is one it would re-wrap (an ASCII one); the quick path runs only where the two write the same bytes."""
    if "click" in sys.modules or not plain_stream(sys.stderr):
        import click

        click.echo(line, err=True)
        return
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def plain_stream(stream: object) -> bool:
    """A text stream that click.echo writes to as it is (it re-wraps an ASCII or encoding-less one)."""
    encoding = getattr(stream, "encoding", None)
    if not encoding:
        return False
    import codecs

    return codecs.lookup(encoding).name != "ascii"


def fail(message: str, code: int) -> NoReturn:
    """The one line an error gets; a process's name or arguments in it cannot add lines or terminal escapes."""
    from pss_cli.render import printable

    echo_error(printable(f"pss-dup: {message}"))
    sys.exit(code)


def run(callback: Callable[..., Any], command: str, params: dict[str, Any]) -> Any:
    """Call a command's callback with the Ui its output options make (`params` holds them and the callback's own
    keywords); a failure still prints a JSON document when the run asked for JSON, then goes up."""
    output = params.pop("output")
    json_alias = params.pop("json_alias")
    debug_privilege = params.pop("debug_privilege")
    ui = Ui(
        output="json" if json_alias else output,
        quiet=params.pop("quiet"),
        color=params.pop("color"),
        timeout=params.pop("timeout"),
        command=command,
    )
    try:
        if debug_privilege:
            from pss_cli import api

            if not api.enable_debug_privilege():
                ui.warn("SeDebugPrivilege could not be enabled: run from an elevated prompt")
        return callback(ui, **params)
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


def stopped(cause: BaseException | None) -> NoReturn:
    """Ctrl-C or a termination signal ended the run, after every process was restored."""
    if isinstance(cause, interrupts.Terminated):
        fail(f"ended by {cause}; every process was restored", 128 + cause.signo)
    fail("interrupted; every process was restored", ExitCode.INTERRUPTED)


def finish(result: object) -> NoReturn:
    """Exit with the callback's result: its exit code, or OK."""
    sys.exit(result if isinstance(result, int) else ExitCode.OK)


def failed(exc: Exception) -> NoReturn:
    """Every failure that is not click's own: its one line and documented exit code, never a traceback."""
    if isinstance(exc, PssError):
        fail(str(exc), exc.exit_code)
    if isinstance(exc, BrokenPipeError):
        # The reader went away (`| head`): quiet exit, and no second error when Python flushes stdout at exit.
        sys.stdout = None
        sys.exit(ExitCode.OK)
    own = own_error(exc)
    if own is not None:
        fail(str(own), own.exit_code)
    # A bug of ours, not the user's input: still one line and a documented code; PSS_DUP_DEBUG shows where.
    if os.environ.get("PSS_DUP_DEBUG"):
        raise exc
    fail(f"internal error: {type(exc).__name__}: {exc} (set PSS_DUP_DEBUG=1 for details, and please report it)",
         ExitCode.FAILED)  # fmt: skip

"""The command line: pss_cli.cli.app is the click application, pss_cli.cli.quick runs the commands it fully
understands without importing click (scripts call pss-dup in loops), and both end through pss_cli.cli.runner.

This package's own module imports nothing, so that the quick path does not pay for click.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pss_cli.cli.app import cli, main

#: Every command: its name, and the module and attribute that define it (click's "lazy group" pattern): a
#: click.Command, or a declaration (pss_cli.cli.declare.Command) that both click and the quick path read.
COMMANDS = {
    "capture": "pss_cli.cli.capture:capture",
    "completion": "pss_cli.cli.completion:completion",
    "doctor": "pss_cli.cli.doctor:doctor",
    "dump": "pss_cli.cli.dump:dump",
    "dup": "pss_cli.cli.snapshots:dup",
    "free": "pss_cli.cli.snapshots:free",
    "inspect": "pss_cli.cli.snapshots:inspect",
    "ps": "pss_cli.cli.ps:ps",
    "watch": "pss_cli.cli.watch:watch",
}

__all__ = ["COMMANDS", "cli", "main"]


def __getattr__(name: str) -> Any:
    if name in ("cli", "main"):
        from pss_cli.cli import app

        return getattr(app, name)
    raise AttributeError(f"module 'pss_cli.cli' has no attribute {name!r}")

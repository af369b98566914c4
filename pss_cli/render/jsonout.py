"""The JSON contract: one versioned document (`-o json`) or one record per line (`-o jsonl`), ASCII-only.

Document: {"schema_version", "tool", "version", "command", "ok", "results": [record, ...]}.
Each record carries "status" ("ok" or "error") and, for errors, "error": {"code", "type", "message"}.
With jsonl every line is one record plus "schema_version" and "command", flushed as soon as it is known.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from pss_cli._version import __version__
from pss_cli.errors import PssError
from pss_cli.model import SCHEMA_VERSION

if TYPE_CHECKING:
    from pss_cli.render.console import Ui


def error_record(exc: PssError) -> dict[str, Any]:
    record: dict[str, Any] = {"status": "error"}
    if exc.pid is not None:
        record["pid"] = exc.pid
    record["error"] = {"code": int(exc.exit_code), "type": type(exc).__name__, "message": str(exc)}
    return record


def write_line(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def emit(ui: Ui, records: list[dict[str, Any]]) -> None:
    """Print the records in the run's machine format."""
    if ui.output == "jsonl":
        for record in records:
            write_line(json.dumps({"schema_version": SCHEMA_VERSION, "command": ui.command, **record}))
        return
    document = {
        "schema_version": SCHEMA_VERSION,
        "tool": "pss-dup",
        "version": __version__,
        "command": ui.command,
        "ok": all(r.get("status") == "ok" for r in records),
        "results": records,
    }
    write_line(json.dumps(document, indent=2))


def emit_error(ui: Ui, exc: PssError) -> None:
    """A failure before any record: scripts still get a document that says what went wrong."""
    emit(ui, [error_record(exc)])

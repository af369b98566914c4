"""pss-dup's library API: capture, duplicate, free, inspect and dump process snapshots, on any supported platform.

The names are loaded on first use (PEP 562), so that `import pss_cli` — and with it `pss-dup --version` and
shell completion — costs almost nothing. See pss_cli.api for the functions themselves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pss_cli._version import __version__

if TYPE_CHECKING:
    from pss_cli.api import (
        DEFAULT_CAPTURE,
        CaptureFlags,
        CapturePlan,
        DuplicateResult,
        ExitCode,
        FreeResult,
        LiveProcess,
        LocalSnapshot,
        PssError,
        Snapshot,
        capture,
        capture_snapshot,
        check_host,
        dump,
        dump_held,
        duplicate,
        duplicate_held,
        enable_debug_privilege,
        free,
        handle_size,
        held_snapshots,
        host_exit_code,
        inspect,
        list_processes,
        live_processes,
        named_snapshots,
        open_snapshot,
        plan_capture,
        process_name,
        resolve,
    )

__all__ = [
    "DEFAULT_CAPTURE",
    "CaptureFlags",
    "CapturePlan",
    "DuplicateResult",
    "ExitCode",
    "FreeResult",
    "LiveProcess",
    "LocalSnapshot",
    "PssError",
    "Snapshot",
    "__version__",
    "capture",
    "capture_snapshot",
    "check_host",
    "dump",
    "dump_held",
    "duplicate",
    "duplicate_held",
    "enable_debug_privilege",
    "free",
    "handle_size",
    "held_snapshots",
    "host_exit_code",
    "inspect",
    "list_processes",
    "live_processes",
    "named_snapshots",
    "open_snapshot",
    "plan_capture",
    "process_name",
    "resolve",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from pss_cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'pss_cli' has no attribute {name!r}")

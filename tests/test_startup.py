"""Start-up: each command imports only what it needs (scripts call pss-dup in loops; bench/bench_startup.py times it).

What a run imports is read from `python -X importtime` of the installed script, the real program end to end.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import PSS_DUP

#: The heavy parts of a Linux capture that a plain one (no memory) never needs: injection and the core writer.
INJECTION_AND_CORE = tuple(
    f"pss_cli.platform.linux.{name}"
    for name in ("inject", "elfcore", "memfd", "copyengine", "dumprules", "pagescan", "vaclone")
)
#: Every command's module: a run loads its own only.
COMMAND_MODULES = tuple(
    f"pss_cli.cli.{name}" for name in ("capture", "completion", "doctor", "dump", "ps", "snapshots")
)


def imports_of(*args: str) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    """The modules a run of `pss-dup ARGS` imports, and the run itself (its stdout is the command's)."""
    result = subprocess.run([sys.executable, "-X", "importtime", PSS_DUP, *args], capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    found = set()
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "package":  # the header line
                found.add(name)
    return found, result


def loaded(found: set[str], *prefixes: str) -> set[str]:
    return {m for m in found if any(m == p or m.startswith(p + ".") for p in prefixes)}


def test_the_import_probe_sees_what_a_table_needs(sleeper: subprocess.Popen[bytes]) -> None:
    """The probe itself: a table report does load rich, and help loads click, so their absence below means
    something."""
    found, result = imports_of("capture", str(sleeper.pid), "--flags", "0")
    assert result.returncode == 0, result.stderr[-2000:]
    assert loaded(found, "rich") and "pss_cli.cli.capture" in found
    found, result = imports_of("capture", "--help")
    assert result.returncode == 0 and loaded(found, "click")


def test_capture_with_a_pid_as_json_loads_no_click_rich_psutil_injection_dataclasses_or_other_command(
    sleeper: subprocess.Popen[bytes],
) -> None:
    """The quick path runs it (no click), and the model's records need neither dataclasses nor inspect."""
    found, result = imports_of("capture", str(sleeper.pid), "--handles", "-o", "json")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["results"][0]["snapshot"]["handles"]
    assert loaded(found, "click", "rich", "psutil", *INJECTION_AND_CORE, "pss_cli.doctor") == set()
    assert loaded(found, "dataclasses", "inspect") == set()
    assert loaded(found, *COMMAND_MODULES) == {"pss_cli.cli.capture"}


def test_ps_as_json_loads_no_click_rich_or_dataclasses_and_no_tracing_or_injection_code() -> None:
    """(The snapshot reader, memfd and elfcore, loads only if some process holds an fd named like a snapshot; the
    serialiser only if some process is in a container.)"""
    found, result = imports_of("ps", "-o", "json")
    assert result.returncode == 0, result.stderr[-2000:]
    document = json.loads(result.stdout)
    assert document["ok"] is True
    if all(record["container"] is None for record in document["results"]):
        assert "pss_cli.serial" not in found  # the serialiser loads for a container record only
    tracing = ("pss_cli.platform.linux.access", "pss_cli.platform.linux.freeze", "pss_cli.platform.linux.ptrace")
    injection = tuple(
        f"pss_cli.platform.linux.{name}" for name in ("inject", "vaclone", "copyengine", "dumprules", "pagescan")
    )
    assert loaded(found, "click", "rich", "dataclasses", "inspect", *tracing, *injection) == set()
    assert loaded(found, *COMMAND_MODULES) == {"pss_cli.cli.ps"}


@pytest.mark.parametrize("command", ["free", "inspect", "dump"])
def test_help_of_a_command_loads_that_command_only(command: str) -> None:
    found, result = imports_of(command, "--help")
    assert result.returncode == 0 and result.stdout.startswith(f"Usage: pss-dup {command} ")
    module = "pss_cli.cli.snapshots" if command in ("free", "inspect") else f"pss_cli.cli.{command}"
    assert module in found
    # dup/free/inspect share capture's selection options, so they load it; nothing else of the CLI loads.
    assert loaded(found, *COMMAND_MODULES) <= {module, "pss_cli.cli.capture"}
    assert loaded(found, "rich", "psutil", "pss_cli.platform") == set()

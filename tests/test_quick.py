"""The quick path (pss_cli.cli.quick) and click run a command line alike: same values for the callback, same output,
same exit code; whatever the quick path does not fully understand, it leaves to click.

The parse is compared in-process with click's own (the click command built from the same declaration), over listed
and generated command lines; the end-to-end runs compare the installed script (quick path first) with the click
application run directly (pss_cli.cli.app.main, no quick path).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import click
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pss_cli.cli import quick
from pss_cli.cli.app import cli
from tests.conftest import PSS_DUP

#: Command lines the quick path must take itself (a script's everyday calls).
TAKEN = [
    ["capture", "123", "--handles", "-o", "json"],
    ["capture", "123", "--threads", "--handles", "--threads", "--json"],
    ["capture", "python3", "--all", "-q", "--color", "never", "--timeout=5", "-ojsonl"],
    ["capture", "--flags", "THREADS|HANDLES", "123", "--everything", "--output=json"],
    ["capture", " 42 ", "--va-space", "--va-section-info", "--timeout", "0.1", "--debug-privilege"],
    ["ps", "-o", "json"],
    ["ps"],
    ["ps", "py*", "-u", "root", "-P", "1", "--json"],
    ["ps", "--user=0", "--parent=7", "-o", "jsonl", "nginx"],
    ["ps", "-P1", "-o", "json", "-uroot"],
    ["ps", "-o", "json", "--output", "jsonl", "-u", "a", "--user=b", "-P", "2", "-P3"],  # the last one counts
    ["capture", "1", "--timeout=2", "--timeout", "3", "--color", "always", "--color=never", "--flags", "0"],
    ["ps", "-C", "4f3c", "-o", "json"],
    ["ps", "--container=4f3c2a", "-P1", "-Cab"],
    ["capture", "container:4f3c", "--all", "-o", "json"],
    ["capture", "container:4f3c:7", "-o", "jsonl"],
]
#: Command lines the quick path must leave to click (help, errors, anything unusual).
LEFT = [
    [],
    ["--version"],
    ["--help"],
    ["capture"],
    ["capture", "--help"],
    ["capture", "-h"],
    ["capture", ""],
    ["capture", "1", "2"],
    ["capture", "1", "--bogus"],
    ["capture", "1", "-o", "xml"],
    ["capture", "1", "-o"],
    ["capture", "1", "--timeout", "nan"],
    ["capture", "1", "--timeout", "0"],
    ["capture", "1", "--json=1"],
    ["capture", "1", "--", "-o"],
    ["capture", "-", "-o", "json"],
    ["capture", "1", "-qo", "json"],
    ["capture", "1", "--flags", "-1"],
    ["ps", "a", "b"],
    ["ps", "--parent", "abc"],
    ["ps", "--parent", "0"],
    ["ps", "--user"],
    ["ps", "-Pu", "-o", "json"],  # -P's value is "u", as click reads it, which is no PID
    ["ps", "--container"],
    ["dump", "1", "core"],
    ["doctor", "-o", "json"],
    ["nosuchcommand"],
]


def click_params(argv: list[str]) -> dict[str, Any] | None:
    """The values click's command gives the callback for `argv` (a subcommand and its words), or None where
    click refuses the command line (or answers it itself, as --help)."""
    group = click.Context(cli, info_name="pss-dup", **cli.context_settings)
    command = cli.get_command(group, argv[0]) if argv else None
    if command is None:
        return None
    try:
        with command.make_context(argv[0], argv[1:], parent=group) as ctx:
            return dict(ctx.params)
    except (click.ClickException, click.exceptions.Exit):
        return None


def assert_parsed_alike(argv: list[str]) -> bool:
    """The quick parse equals click's, or the quick path declined; whether it took the command line."""
    parsed = quick.parse(argv)
    expected = click_params(argv)
    if parsed is None:
        return False
    assert expected is not None, f"the quick path took {argv}, which click refuses"
    name, _, params = parsed
    assert name == argv[0]
    assert params == expected, argv
    return True


@pytest.fixture(params=[{}, {"PSS_DUP_OUTPUT": "json"}, {"PSS_DUP_OUTPUT": "bad", "PSS_DUP_TIMEOUT": "nan"},
                        {"PSS_DUP_OUTPUT": "", "PSS_DUP_TIMEOUT": "3"}])  # fmt: skip
def environment(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The environment variables the output options read, set (or empty) as a script's environment might."""
    for name in ("PSS_DUP_OUTPUT", "PSS_DUP_TIMEOUT", "_PSS_DUP_COMPLETE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in request.param.items():
        monkeypatch.setenv(name, value)
    yield request.param


@pytest.mark.parametrize("argv", TAKEN + LEFT, ids=" ".join)
def test_the_quick_path_reads_a_command_line_as_click_does_or_leaves_it(
    argv: list[str], environment: dict[str, str]
) -> None:
    taken = assert_parsed_alike(argv)
    if argv in LEFT:
        assert not taken
    elif "bad" not in environment.values() and "nan" not in environment.values():
        assert taken


def test_a_click_decorator_on_a_declared_command_is_refused_not_lost() -> None:
    from pss_cli.cli import declare

    def probe(ui: object, flag: bool) -> None:
        """A command that mixes click's decorators into a declaration."""

    with pytest.raises(TypeError, match="not click"):
        declare.command(click.option("--flag", is_flag=True)(probe))


def test_a_completion_request_goes_to_click(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("_PSS_DUP_COMPLETE", "bash_complete")
    assert quick.parse(["capture", "1", "-o", "json"]) is None


WORDS = ["capture", "ps", "123", "0", "-1", "", " ", "py*", "root", "json", "jsonl", "table", "xml", "5", "nan",
         "-o", "--output", "--output=json", "-ojson", "-o=json", "--json", "--json=x", "-q", "--quiet", "-qo",
         "--timeout", "--timeout=2", "--timeout=", "--color", "never", "--all", "--threads", "--handles",
         "--va-clone", "--everything", "--flags", "THREADS", "0x4", "-u", "--user", "-P", "-P12", "--parent", "--",
         "-", "--help", "-h", "--debug-privilege", "--bogus", "-C", "--container", "container:ab",
         "container:"]  # fmt: skip


@given(st.lists(st.sampled_from(WORDS), max_size=7), st.sampled_from(["capture", "ps"]))
def test_generated_command_lines_parse_alike(words: list[str], command: str) -> None:
    assert_parsed_alike([command, *words])


# ------------------------------------------------------------------------------------------------ end to end


def run_both(argv: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], ...]:
    """`argv` through the installed script (quick path first) and through the click application alone."""
    environ = {**os.environ, **(env or {})}
    runs = (
        [PSS_DUP, *argv],
        [sys.executable, "-c", "from pss_cli.cli.app import main; main()", *argv],
    )
    return tuple(subprocess.run(command, capture_output=True, text=True, env=environ, timeout=60) for command in runs)


def steady(value: Any) -> Any:
    """A JSON report without what differs between two captures of an idle process (times and durations)."""
    if isinstance(value, dict):
        return {k: steady(v) for k, v in value.items() if k != "captured_at" and not k.endswith("_ms")}
    if isinstance(value, list):
        return [steady(v) for v in value]
    return value


@pytest.mark.parametrize(
    "words",
    [
        ["capture", "{pid}", "--handles", "-o", "json"],
        ["capture", "{pid}", "--flags", "0", "-o", "jsonl"],
        ["capture", "{pid}", "--va-space", "--json", "-q"],
        ["ps", "--parent", "{parent}", "-o", "json"],
        ["ps", "--parent", "{parent}", "-o", "jsonl"],
        ["ps", "nosuchprocess_quick", "-o", "json"],
        ["ps", "nosuchprocess_quick"],
        ["ps", "-C", "nosuchcontainer0", "-o", "json"],
        ["capture", "container:nosuchcontainer0", "-o", "json"],
        ["capture", "0", "-o", "json"],
        ["capture", "99999999", "--json"],
        ["capture", "nosuchprocess_quick", "-o", "json"],
        ["capture", "{pid}", "--flags", "BOGUS", "-o", "json"],
        ["capture", ""],
        ["capture", "{pid}", "--bogus", "-o", "json"],
        ["capture", "{pid}", "-o", "xml"],
        ["capture", "{pid}", "--timeout", "nan", "-o", "json"],
        ["capture", "{pid}", "--json=1"],
        ["capture", "--help"],
        ["ps", "-h"],
        ["ps", "--parent", "abc", "-o", "json"],
        ["ps", "a", "b"],
        ["ps", "-o"],
    ],
    ids=" ".join,
)
def test_both_paths_print_the_same_and_exit_alike(words: list[str], sleeper: subprocess.Popen[bytes]) -> None:
    argv = [w.format(pid=sleeper.pid, parent=os.getpid()) for w in words]
    fast, slow = run_both(argv)
    assert (fast.returncode, fast.stderr) == (slow.returncode, slow.stderr)
    if fast.returncode == 0 and "json" in " ".join(argv):
        lines = [json.loads(line) for line in (fast.stdout, slow.stdout)] if "jsonl" not in argv else [
            [json.loads(line) for line in out.splitlines()] for out in (fast.stdout, slow.stdout)
        ]  # fmt: skip
        assert steady(lines[0]) == steady(lines[1])
    else:
        assert fast.stdout == slow.stdout


@pytest.mark.parametrize("env", [{"PSS_DUP_OUTPUT": "json"}, {"PSS_DUP_TIMEOUT": "nan"}, {"PSS_DUP_OUTPUT": "x"}])
def test_both_paths_read_the_environment_alike(env: dict[str, str]) -> None:
    fast, slow = run_both(["capture", "99999999"], env)
    assert (fast.returncode, fast.stdout, fast.stderr) == (slow.returncode, slow.stdout, slow.stderr)

"""Help, version, usage errors, colour and JSON errors of every command, through the installed `pss-dup`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from importlib.metadata import version

import click
import pytest

from pss_cli.cli import cli
from pss_cli.errors import EXIT_CODE_HELP
from tests.conftest import PSS_DUP, Holder, reap, run_cli, start_holder

COMMANDS = sorted(cli.commands)
SGR = re.compile(r"\x1b\[([0-9;]*)m")


def run_env(*args: str, **env: str | None) -> subprocess.CompletedProcess[str]:
    """The installed script with environment variables set (a value of None removes the variable)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "COLUMNS")}
    environ.update({k: v for k, v in env.items() if v is not None})
    return subprocess.run([PSS_DUP, *args], capture_output=True, text=True, env=environ, timeout=60)


def colour_codes(text: str) -> list[int]:
    """The SGR parameters that set a colour (foreground, background, 256/true colour), not bold or reset."""
    codes = []
    for params in SGR.findall(text):
        for number in (int(p) for p in params.split(";") if p):
            if 30 <= number <= 49 or 90 <= number <= 107:
                codes.append(number)
    return codes


def test_every_expected_command_is_registered() -> None:
    assert {"capture", "dup", "free", "inspect", "ps", "completion", "doctor"} <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_help_of_every_command_exits_0_and_names_its_arguments_and_options(name: str) -> None:
    result = run_cli(name, "--help")
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith(f"Usage: pss-dup {name} ")
    command = cli.commands[name]
    ctx = click.Context(command, info_name=name)
    for param in command.params:
        if isinstance(param, click.Argument):
            assert param.make_metavar(ctx) in result.stdout.splitlines()[0], param.name
        else:
            assert isinstance(param, click.Option)
            assert any(opt in result.stdout for opt in param.opts), param.opts
    for shared in ("-o, --output", "--json", "-q, --quiet", "--timeout", "--color"):
        assert shared in result.stdout


def test_short_help_option_works_too() -> None:
    assert run_cli("ps", "-h").stdout == run_cli("ps", "--help").stdout


def test_top_level_help_lists_every_command_and_the_exit_code_table() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for name in COMMANDS:
        assert re.search(rf"^  {name}\b", result.stdout, re.M), name
    assert "Exit codes:" in result.stdout
    for code, text in EXIT_CODE_HELP.items():
        assert f"{int(code):>3}  {text}" in result.stdout


def test_version_prints_the_installed_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout == f"pss-dup, version {version('pss-dup')}\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("frobnicate",), "No such command 'frobnicate'"),
        (("ps", "--frobnicate"), "No such option '--frobnicate'"),
        (("capture",), "Missing argument 'TARGET'"),
        (("ps", "-o", "yaml"), "'yaml' is not one of"),
        (("completion",), "Missing argument"),
        # NaN passes any range check (every comparison with it is false) and used to crash inside the freeze.
        (("capture", "1", "--timeout", "nan"), "nan is not a timeout"),
        (("capture", "1", "--timeout", "-nan"), "nan is not a timeout"),
        (("capture", "1", "--timeout", "inf"), "inf is not a timeout"),
        (("capture", "1", "--timeout", "-1"), "-1.0 is not a timeout"),
        (("capture", "1", "--timeout", "0"), "0.0 is not a timeout"),
        (("capture", "1", "--timeout", "3601"), "3601.0 is not a timeout"),
        (("dump", "1", "--timeout", "NaN"), "nan is not a timeout"),
        (("capture", "1", "--timeout", "soon"), "'soon' is not a number of seconds"),
    ],
)
def test_usage_errors_exit_2_with_one_line_and_no_traceback(args: tuple[str, ...], message: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and message in result.stderr and "--help" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("capture", "\u00b2"), 3, "no process named"),  # a Unicode digit: str.isdigit says yes, int() says no
        (("capture", "1" * 30), 3, "no process with PID"),  # beyond any pid_t
        (("capture", "1" * 5000), 3, "no process with PID"),  # beyond int()'s digit limit
        (("free", "\u00b2", "3"), 2, "is not a PID"),
        (("free", str(2**32 + 1), "3"), 2, "is not a PID"),  # beyond a pid_t: os.pidfd_open raised OverflowError
        (("inspect", "1", str(2**32 + 3)), 2, "is not a handle"),  # pidfd_getfd would truncate it to fd 3
        (("ps", "--user", "\u00b2"), 3, "no process matches"),
    ],
)
def test_numbers_no_process_or_fd_can_have_are_typed_errors_not_internal_ones(
    args: tuple[str, ...], code: int, message: str
) -> None:
    result = run_cli(*args)
    assert result.returncode == code, result.stderr
    assert message in result.stderr and "internal error" not in result.stderr


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("capture", "999999999"), 3),
        (("capture", "--json", "999999999"), 3),
        (("ps", "no-such-process-" + uuid.uuid4().hex[:8]), 3),
        (("dup", "1", "2", "--close-source"), 2),
    ],
)
def test_json_errors_still_print_a_json_document_with_the_exit_code(args: tuple[str, ...], code: int) -> None:
    result = run_cli(*args, "-o", "json")
    assert result.returncode == code
    document = json.loads(result.stdout)
    assert document["ok"] is False and document["command"] == args[0]
    (record,) = document["results"]
    assert record["status"] == "error" and record["error"]["code"] == code and record["error"]["message"]
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("pss-dup: ")


def test_json_output_is_ascii_only() -> None:
    h = start_holder("psj-\u00e9\u4e2d")  # a name with non-ASCII characters
    try:
        result = run_cli("ps", "--parent", str(os.getpid()), "-o", "json")
        assert result.returncode == 0
        assert result.stdout.isascii()
        assert json.loads(result.stdout)["results"][0]["name"] == "psj-\u00e9\u4e2d"
    finally:
        reap(h.proc)


class TestColour:
    """NO_COLOR (no-color.org) wins over FORCE_COLOR under --color auto; --color never and always are explicit."""

    @pytest.fixture(autouse=True)
    def holder(self) -> Iterator[Holder]:
        h = start_holder(f"psc-{uuid.uuid4().hex[:8]}")  # a snapshot holder: its marker is coloured
        self.args = ("ps", "--parent", str(os.getpid()))
        yield h
        reap(h.proc)

    def test_piped_output_has_no_escapes_by_default(self) -> None:
        result = run_env(*self.args)
        assert result.returncode == 0 and "\x1b[" not in result.stdout

    def test_force_color_turns_colour_on_when_piped(self) -> None:
        assert colour_codes(run_env(*self.args, FORCE_COLOR="1").stdout)

    def test_no_color_wins_over_force_color(self) -> None:
        result = run_env(*self.args, FORCE_COLOR="1", NO_COLOR="1")
        assert result.returncode == 0 and colour_codes(result.stdout) == []

    def test_color_never_prints_no_escape_at_all_even_with_force_color(self) -> None:
        result = run_env(*self.args, "--color", "never", FORCE_COLOR="1")
        assert "\x1b[" not in result.stdout

    def test_color_always_colours_a_pipe(self) -> None:
        assert colour_codes(run_env(*self.args, "--color", "always").stdout)


def test_version_imports_neither_rich_nor_psutil_nor_a_backend() -> None:
    """`--version`, `--help` and completion stay fast: the heavy modules load only when a command renders or works."""
    probe = (
        "import json, sys\n"
        "sys.argv = ['pss-dup', '--version']\n"
        "from pss_cli.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    modules = set(json.loads(result.stdout.splitlines()[-1]))
    assert "pss_cli.cli" in modules
    heavy = {m for m in modules if m.split(".")[0] in ("rich", "psutil")}
    backends = {m for m in modules if m.startswith(("pss_cli.platform.linux", "pss_cli.platform.windows"))}
    assert heavy == set() and backends == set()
    assert "pss_cli.doctor" not in modules and "pss_cli.render.tables" not in modules

"""Shell completion: the committed scripts match the command, and the completion protocol of the installed
`pss-dup` offers live PIDs, process names and the snapshot fds a process holds."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PSS_DUP, Holder, kernel_thread_pids, need_tools, reap, run_cli, start_holder, stat_fields

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {"bash": "pss-dup.bash", "zsh": "_pss-dup", "fish": "pss-dup.fish", "powershell": "pss-dup.ps1"}


@pytest.fixture
def holder() -> Iterator[Holder]:
    h = start_holder(f"pssc-{uuid.uuid4().hex[:8]}")
    try:
        yield h
    finally:
        reap(h.proc)


def complete(shell: str, words: str, cword: int) -> subprocess.CompletedProcess[str]:
    """One TAB press, as the shell script does it: the installed pss-dup with _PSS_DUP_COMPLETE set."""
    env = {**os.environ, "_PSS_DUP_COMPLETE": f"{shell}_complete", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
    return subprocess.run([PSS_DUP], capture_output=True, text=True, env=env, timeout=30)


def zsh_items(words: str, cword: int) -> list[tuple[str, str]]:
    """(value, description) pairs from the zsh protocol: three lines per item, type, value, help ("_": none)."""
    result = complete("zsh", words, cword)
    assert result.returncode == 0 and result.stderr == ""
    lines = result.stdout.split("\n")
    while lines and lines[-1] == "":
        lines.pop()
    assert len(lines) % 3 == 0, lines
    return [(lines[i + 1], lines[i + 2]) for i in range(0, len(lines), 3)]


def bash_values(words: str, cword: int) -> list[str]:
    result = complete("bash", words, cword)
    assert result.returncode == 0 and result.stderr == ""
    return [line.partition(",")[2] for line in result.stdout.splitlines() if line]


@pytest.mark.parametrize("shell", SCRIPTS)
def test_committed_script_is_what_the_completion_command_prints(shell: str) -> None:
    result = run_cli("completion", shell)
    assert result.returncode == 0, result.stderr
    committed = (ROOT / "completions" / SCRIPTS[shell]).read_text()
    assert result.stdout == committed, f"completions/{SCRIPTS[shell]} drifted: pss-dup completion {shell} > it"
    assert "_PSS_DUP_COMPLETE" in committed and "pss-dup" in committed


def test_zsh_script_autoloads_from_fpath() -> None:
    assert (ROOT / "completions" / "_pss-dup").read_text().startswith("#compdef pss-dup\n")


def test_completion_command_json_carries_the_script_and_how_to_install_it() -> None:
    import json

    result = run_cli("completion", "fish", "-o", "json")
    assert result.returncode == 0
    record = json.loads(result.stdout)["results"][0]
    assert record["shell"] == "fish" and record["script"] == (ROOT / "completions" / "pss-dup.fish").read_text()
    assert "~/.config/fish/completions/pss-dup.fish" in record["install"]


def test_unknown_shell_is_a_usage_error() -> None:
    result = run_cli("completion", "tcsh")
    assert result.returncode == 2 and "tcsh" in result.stderr and result.stdout == ""


def test_pid_completion_offers_a_live_child_with_its_name_as_description(holder: Holder) -> None:
    items = zsh_items(f"pss-dup capture {holder.pid}", 2)
    assert (str(holder.pid), holder.name) in items
    assert all(value.startswith(str(holder.pid)) for value, _ in items)


def test_bash_protocol_offers_the_pid_for_every_pid_argument(holder: Holder) -> None:
    for words, cword in (
        (f"pss-dup capture {holder.pid}", 2),
        (f"pss-dup dup 1 {holder.pid}", 3),
        (f"pss-dup free {holder.pid}", 2),
        (f"pss-dup inspect {holder.pid}", 2),
        (f"pss-dup ps --parent {holder.pid}", 3),
        (f"pss-dup watch {holder.pid}", 2),
        (f"pss-dup watch 1 {holder.pid}", 3),
        (f"pss-dup watch 1 --dup {holder.pid}", 4),
    ):
        assert str(holder.pid) in bash_values(words, cword), words


def test_name_completion_offers_the_name_with_its_pid(holder: Holder) -> None:
    items = zsh_items(f"pss-dup capture {holder.name[:7]}", 2)
    assert (holder.name, f"PID {holder.pid}") in items


def test_a_name_several_processes_share_is_offered_once_with_every_pid() -> None:
    name = f"pssd-{uuid.uuid4().hex[:8]}"
    holders = [start_holder(name), start_holder(name)]
    try:
        items = zsh_items(f"pss-dup capture {name}", 2)
        pids = " ".join(str(p) for p in sorted(h.pid for h in holders))
        assert items == [(name, f"2 processes: PIDs {pids}")]
    finally:
        for h in holders:
            reap(h.proc)


def test_handle_completion_offers_only_the_snapshot_fds_the_process_holds(holder: Holder) -> None:
    for words, cword in (
        (f"pss-dup free {holder.pid} ", 3),
        (f"pss-dup inspect {holder.pid} ", 3),
        (f"pss-dup dup {holder.pid} 1 --handle ", 5),
        (f"pss-dup dup {holder.name} 1 --handle ", 5),
    ):
        items = zsh_items(words, cword)
        size = os.stat(f"/proc/{holder.pid}/fd/{holder.snapshot_fd}").st_size
        assert items == [(str(holder.snapshot_fd), f"pss-dup snapshot ({size / 1024:.1f} KiB)")], words


def test_handle_completion_filters_by_the_typed_prefix(holder: Holder) -> None:
    assert bash_values(f"pss-dup free {holder.pid} {holder.snapshot_fd}", 3) == [str(holder.snapshot_fd)]
    assert bash_values(f"pss-dup free {holder.pid} 9{holder.snapshot_fd}", 3) == []


def test_handle_completion_for_a_process_that_is_gone_offers_nothing_and_does_not_fail() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    result = complete("bash", f"pss-dup free {proc.pid} ", 3)
    assert result.returncode == 0 and result.stdout.strip() == "" and result.stderr == ""


def test_completion_leaves_out_kernel_threads_and_zombies() -> None:
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        while stat_fields(zombie.pid)[0] != "Z":
            pass
        values = bash_values("pss-dup capture ", 2)
        assert values and str(zombie.pid) not in values
        kernel_threads = kernel_thread_pids()
        assert kernel_threads, "this host shows no kernel threads: the test proves nothing here"
        assert not set(map(str, kernel_threads)) & set(values)
    finally:
        zombie.wait()


def test_a_hostile_process_name_cannot_break_the_protocol() -> None:
    h = start_holder("evil\nplain\nx")
    try:
        items = zsh_items(f"pss-dup capture {h.pid}", 2)
        assert (str(h.pid), "evil?plain?x") in items
        assert not any(value == "plain" for value, _ in items)
        assert "evil" not in " ".join(value for value, _ in zsh_items("pss-dup capture evil", 2))
    finally:
        reap(h.proc)


def test_completion_never_reads_a_command_line(holder: Holder, tmp_path: Path) -> None:
    need_tools("strace")
    log = tmp_path / "strace.log"
    env = {**os.environ, "_PSS_DUP_COMPLETE": "zsh_complete", "COMP_WORDS": "pss-dup capture pssc", "COMP_CWORD": "2"}
    result = subprocess.run(
        ["strace", "-f", "-e", "trace=open,openat", "-o", str(log), PSS_DUP],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert holder.name in result.stdout
    opened = log.read_text()
    assert f"/proc/{holder.pid}/stat" in opened
    assert "/cmdline" not in opened


def test_bad_pid_and_handle_arguments_are_usage_errors() -> None:
    for args, message in ((("free", "abc", "3"), "is not a PID"), (("inspect", "1", "x"), "is not a handle")):
        result = run_cli(*args)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr


def test_the_committed_bash_script_completes_a_snapshot_fd_in_real_bash(holder: Holder) -> None:
    """bash sources completions/pss-dup.bash and runs its completion function as TAB would."""
    need_tools("bash")
    script = (
        f"source {ROOT / 'completions' / 'pss-dup.bash'}\n"
        f"COMP_WORDS=(pss-dup free {holder.pid} ''); COMP_CWORD=3\n"
        "_pss_dup_completion pss-dup\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    env = {**os.environ, "PATH": f"{Path(PSS_DUP).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "--norc", "-c", script], capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(holder.snapshot_fd)]

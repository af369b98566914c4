"""`pss-dup capture` against real processes, through the installed console script."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pss_cli.model import SCHEMA_VERSION
from tests.conftest import PSS_DUP, Target, a_kernel_thread, proc_status, reap, run_cli, start_target

NOBODY = 65534


def capture_json(*args: str) -> dict[str, Any]:
    result = run_cli("capture", *args, "-o", "json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    document = json.loads(result.stdout)
    assert document["schema_version"] == SCHEMA_VERSION and document["ok"] is True
    snapshot: dict[str, Any] = document["results"][0]["snapshot"]
    return snapshot


def test_snapshot_finds_threads_files_pipe_socket_mapping_and_environment(target: Target) -> None:
    snap = capture_json(str(target.pid))
    assert snap["process"]["pid"] == target.pid
    assert snap["process"]["environ"]["PSS_TEST_MARKER"] == "marker-value-42"
    names = {t["name"] for t in snap["threads"]}
    assert set(target.info["threads"]) <= names
    assert snap["process"]["thread_count"] == len(snap["threads"]) >= 4
    for thread in snap["threads"]:
        assert thread["context"]["arch"] == "x86_64"
        assert thread["context"]["registers"]["rip"] > 0
        assert len(bytes.fromhex(thread["context"]["fpregs"])) == 512
    handles = {h["handle"]: h for h in snap["handles"]}
    assert handles[target.info["file_fd"]]["name"] == target.info["file"]
    assert handles[target.info["file_fd"]]["position"] == 5
    read_end, write_end = target.info["pipe"]
    assert handles[read_end]["type"] == "PIPE" and handles[write_end]["type"] == "PIPE"
    assert handles[read_end]["inode"] == handles[write_end]["inode"]
    sock = handles[target.info["socket_fd"]]
    assert sock["type"] == "SOCKET"
    assert sock["type_specific"]["local"] == f"127.0.0.1:{target.info['port']}"
    assert sock["type_specific"]["state"] == "LISTEN"
    mapped = [r for r in snap["va_space"] if r["mapped_file"] == target.info["mapped"]]
    assert len(mapped) == 1 and mapped[0]["size"] == 65536 and mapped[0]["type"] == "MAPPED"
    assert mapped[0]["perms"] == "rw-s"
    assert snap["performance"]["stopped_ms"] > 0


def test_threads_report_nice_and_the_kernel_priority_as_base_priority_like_the_process() -> None:
    """ThreadEntry.base_priority means what ProcessInfo.base_priority means (the kernel priority, stat field 18);
    the nice value is `nice` in both."""
    child = subprocess.Popen(["nice", "-n", "7", "sleep", "30"])
    try:
        deadline = time.monotonic() + 5
        while Path(f"/proc/{child.pid}/comm").read_text().strip() != "sleep" and time.monotonic() < deadline:
            time.sleep(0.01)
        snap = capture_json(str(child.pid), "--threads")
    finally:
        reap(child)
    process = snap["process"]
    [thread] = snap["threads"]
    assert process["nice"] == thread["nice"] == 7
    assert process["base_priority"] == thread["base_priority"] == thread["priority"] == 20 + 7


def test_target_runs_on_untraced_after_capture(target: Target) -> None:
    capture_json(str(target.pid))
    status = proc_status(target.pid)
    assert status["TracerPid"] == "0"
    assert status["State"][0] in "SR"
    assert target.echo("still-alive") == "echo:still-alive"


def test_stopped_target_stays_stopped(target: Target) -> None:
    os.kill(target.pid, signal.SIGSTOP)
    deadline = time.monotonic() + 5
    while proc_status(target.pid)["State"][0] != "T" and time.monotonic() < deadline:
        time.sleep(0.01)
    snap = capture_json(str(target.pid))
    assert snap["process"]["state"] == "STOPPED"
    time.sleep(0.1)
    status = proc_status(target.pid)
    assert status["State"][0] == "T"
    assert status["TracerPid"] == "0"
    os.kill(target.pid, signal.SIGCONT)
    assert target.echo("resumed") == "echo:resumed"


def test_selection_options_capture_only_what_was_asked(target: Target) -> None:
    snap = capture_json(str(target.pid), "--handles")
    assert snap["threads"] is None and snap["va_space"] is None
    assert snap["flags"]["names"] == ["HANDLES"]
    assert all(h["name"] is None for h in snap["handles"])
    snap = capture_json(str(target.pid), "--flags", "THREADS|VA_SPACE")
    assert snap["handles"] is None
    assert all(t["context"] is None for t in snap["threads"])
    assert all(r["rss"] is None for r in snap["va_space"])


@pytest.mark.parametrize("mask", ["0x100000000", "0x400", "-1"])
def test_a_mask_with_bits_no_flag_has_is_a_usage_error(target: Target, mask: str) -> None:
    result = run_cli("capture", str(target.pid), "--flags", mask)
    assert result.returncode == 2, result.stdout
    assert f"capture mask {mask} has unknown bits" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_jsonl_is_one_record_per_line(target: Target) -> None:
    result = run_cli("capture", str(target.pid), "-o", "jsonl", "--flags", "0")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["command"] == "capture" and record["snapshot"]["process"]["pid"] == target.pid


def test_table_report_is_not_cut_when_piped(target: Target) -> None:
    result = subprocess.run([PSS_DUP, "capture", str(target.pid)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert target.info["file"] in result.stdout
    assert target.info["mapped"] in result.stdout
    assert "pss-worker-0" in result.stdout


def test_hostile_process_name_is_shown_as_text_not_markup(tmp_path: Path) -> None:
    evil = "[bold red]x[/]ev[/]"
    proc = subprocess.Popen(
        [sys.executable, "-c", "import ctypes,sys,time; ctypes.CDLL(None).prctl(15, sys.argv[1].encode(),0,0,0); "
         "print('ready', flush=True); time.sleep(60)", evil],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout and proc.stdout.readline().strip() == "ready"
        result = run_cli("capture", str(proc.pid), "--flags", "THREADS")
        assert result.returncode == 0, result.stderr
        assert evil[:15] in result.stdout
    finally:
        reap(proc)


def test_no_such_process_exits_3() -> None:
    pid = 2**22 + 12345
    result = run_cli("capture", str(pid))
    assert result.returncode == 3
    assert result.stderr.count("\n") == 1 and f"no process with PID {pid}" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_thread_id_is_no_process_and_exits_3(target: Target) -> None:
    """/proc/TID exists for any thread, though /proc lists only processes: a worker's TID names no process."""
    tid = max(int(t) for t in os.listdir(f"/proc/{target.pid}/task"))
    assert tid != target.pid and os.path.exists(f"/proc/{tid}")
    result = run_cli("capture", str(tid), "--flags", "0")
    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stderr == f"pss-dup: no process with PID {tid}; list processes with `pss-dup ps`\n"
    assert target.echo("still here") == "echo:still here"


def test_name_matching_several_processes_lists_them_and_exits_2() -> None:
    procs = [subprocess.Popen(["sleep", "301"]) for _ in range(2)]
    try:
        time.sleep(0.2)
        result = run_cli("capture", "sleep")
        assert result.returncode == 2
        for p in procs:
            assert str(p.pid) in result.stderr
        assert "--all" in result.stderr
    finally:
        for p in procs:
            reap(p)


def test_all_captures_every_match() -> None:
    name = f"pss-all-{os.getpid()}"
    script = (
        "import ctypes,sys,time; ctypes.CDLL(None).prctl(15, sys.argv[1].encode(),0,0,0); "
        "print(1,flush=True); time.sleep(60)"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, name], stdout=subprocess.PIPE) for _ in range(2)]
    try:
        for p in procs:
            assert p.stdout and p.stdout.readline()
        result = run_cli("capture", name, "--all", "-o", "json", "--flags", "0")
        assert result.returncode == 0, result.stderr
        pids = {r["pid"] for r in json.loads(result.stdout)["results"]}
        assert pids == {p.pid for p in procs}
    finally:
        for p in procs:
            reap(p)


def test_zombie_exits_3_and_says_so() -> None:
    proc = subprocess.Popen(["true"])
    deadline = time.monotonic() + 5
    while proc_status(proc.pid)["State"][0] != "Z" and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        result = run_cli("capture", str(proc.pid))
        assert result.returncode == 3
        assert "zombie" in result.stderr
    finally:
        proc.wait()


def test_kernel_thread_is_refused_before_any_ptrace() -> None:
    # The kernel thread is only read (/proc/PID/stat) and refused; nothing is attached to it.
    result = run_cli("capture", str(a_kernel_thread()))
    assert result.returncode == 5
    assert "kernel thread" in result.stderr


def test_other_users_process_is_denied_with_the_rule_named(target: Target) -> None:
    result = run_cli("capture", str(target.pid), uid=NOBODY)
    assert result.returncode == 4, result.stderr
    assert "root" in result.stderr or "CAP_SYS_PTRACE" in result.stderr
    assert result.stderr.count("\n") == 1


def test_non_dumpable_process_is_denied_with_the_rule_named() -> None:
    script = "import ctypes,time; ctypes.CDLL(None).prctl(4, 0, 0, 0, 0); print(1, flush=True); time.sleep(60)"
    proc = subprocess.Popen(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable, "-c", script],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout and proc.stdout.readline()
        result = run_cli("capture", str(proc.pid), uid=NOBODY)
        assert result.returncode == 4, result.stderr
        assert "dumpable" in result.stderr
    finally:
        reap(proc)


def test_process_traced_by_someone_else_is_refused(target: Target) -> None:
    tracer = subprocess.Popen(
        [sys.executable, "-c",
         "import ctypes,sys,time; l=ctypes.CDLL(None, use_errno=True); l.syscall.restype=ctypes.c_long; "
         "r=l.syscall(101, 0x4206, int(sys.argv[1]), 0, 0); print(r, flush=True); time.sleep(60)",
         str(target.pid)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert tracer.stdout and tracer.stdout.readline().strip() == "0"
        result = run_cli("capture", str(target.pid))
        assert result.returncode == 7
        assert str(tracer.pid) in result.stderr
    finally:
        reap(tracer)
    assert proc_status(target.pid)["TracerPid"] == "0"


def test_process_exiting_during_capture_is_reported_not_crashed() -> None:
    # A target that exits on its own at a random moment while captures run back to back.
    codes = set()
    for delay in (0.05, 0.1, 0.2):
        proc = start_target("50")
        try:
            killer = subprocess.Popen(["sh", "-c", f"sleep {delay}; kill -9 {proc.pid}"])
            for _ in range(20):
                result = run_cli("capture", str(proc.pid), "-o", "json")
                codes.add(result.returncode)
                assert "Traceback" not in result.stderr
                if result.returncode:
                    assert result.returncode == 3, result.stderr
                    break
            killer.wait()
        finally:
            reap(proc.proc)
    assert 3 in codes


VFORK_PARENT = r"""
#include <stdio.h>
#include <unistd.h>
#include <sys/wait.h>
int main(void) {
    printf("ready\n");
    fflush(stdout);
    pid_t child = vfork();
    if (child == 0) { sleep(60); _exit(0); }
    waitpid(child, 0, 0);
    return 0;
}
"""


@pytest.fixture
def vfork_parent(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A process whose only thread waits in vfork: no ptrace stop can reach it until its child exits."""
    source = tmp_path / "vfork.c"
    source.write_text(VFORK_PARENT)
    subprocess.run(["gcc", "-O0", "-o", str(tmp_path / "vfork"), str(source)], check=True)
    proc = subprocess.Popen([str(tmp_path / "vfork")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout and proc.stdout.readline().strip() == "ready"
    children: list[str] = []
    deadline = time.monotonic() + 5
    while not children and time.monotonic() < deadline:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    try:
        yield proc
    finally:
        for child in children:
            os.kill(int(child), signal.SIGKILL)
        reap(proc)


def test_timeout_waiting_for_a_d_state_thread_exits_124_and_never_traced_it(
    vfork_parent: subprocess.Popen[str],
) -> None:
    """A thread in D is waited for before anything is stopped: running out of time leaves the process untouched."""
    cli = subprocess.Popen([PSS_DUP, "capture", str(vfork_parent.pid), "--timeout", "1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    tracers = set()
    while cli.poll() is None:
        tracers.add(proc_status(vfork_parent.pid)["TracerPid"])
        time.sleep(0.002)
    assert cli.stderr is not None
    err = cli.stderr.read()
    cli.stderr.close()
    assert cli.returncode == 124, err
    assert err.count("\n") == 1 and "did not leave its uninterruptible wait within 1 s" in err
    assert tracers == {"0"}
    status = proc_status(vfork_parent.pid)
    assert status["TracerPid"] == "0" and status["State"][0] == "D"


def test_ctrl_c_while_waiting_for_a_d_state_thread_exits_130_at_once(vfork_parent: subprocess.Popen[str]) -> None:
    cli = subprocess.Popen([PSS_DUP, "capture", str(vfork_parent.pid), "--timeout", "30"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    tracers = set()
    waiting = time.monotonic() + 1.5  # well past start-up: pss-dup waits for the vfork parent by now
    while time.monotonic() < waiting:
        tracers.add(proc_status(vfork_parent.pid)["TracerPid"])
        time.sleep(0.005)
    assert cli.poll() is None, "pss-dup did not wait for the thread in D"
    interrupted = time.monotonic()
    cli.send_signal(signal.SIGINT)
    _, err = cli.communicate(timeout=30)
    assert cli.returncode == 130, err
    assert time.monotonic() - interrupted < 5, "Ctrl-C waited for the timeout"
    assert "Traceback" not in err and "interrupted" in err
    assert tracers == {"0"}
    status = proc_status(vfork_parent.pid)
    assert status["TracerPid"] == "0" and status["State"][0] == "D"


def test_python_m_entry_point_works(sleeper: subprocess.Popen[bytes]) -> None:
    result = subprocess.run([sys.executable, "-m", "pss_cli", "capture", str(sleeper.pid), "--json", "--flags", "0"],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["results"][0]["snapshot"]["process"]["name"] == "sleep"


def test_unsupported_platform_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from pss_cli import platform as backends
    from pss_cli.errors import NotSupported

    backends.backend.cache_clear()
    monkeypatch.setattr(sys, "platform", "sunos5")
    try:
        with pytest.raises(NotSupported, match="Linux and Windows"):
            backends.backend()
    finally:
        backends.backend.cache_clear()


def test_control_characters_a_process_chose_never_reach_the_terminal() -> None:
    """Arguments with a terminal escape and a newline show as '?' in the report and in a one-line error."""
    hostile = "\x1b]0;title\x07\x1b[31mred\nsecond line"
    name = f"pssesc{os.getpid() % 100000}"
    script = f"import ctypes, time; ctypes.CDLL(None).prctl(15, {name.encode()!r}); print(flush=True); time.sleep(60)"
    procs = [subprocess.Popen([sys.executable, "-c", script, hostile], stdout=subprocess.PIPE) for _ in range(2)]
    try:
        for proc in procs:
            assert proc.stdout and proc.stdout.readline()
        report = run_cli("capture", str(procs[0].pid), "--color", "always")
        assert report.returncode == 0, report.stderr
        assert "?]0;title??[31mred?second line" in report.stdout
        assert "\x1b]" not in report.stdout and "\x1b[31mred" not in report.stdout
        ambiguous = run_cli("capture", name)
        assert ambiguous.returncode == 2
        assert ambiguous.stderr.count("\n") == 1 and "\x1b" not in ambiguous.stderr
        assert ambiguous.stderr.count("?]0;title??[31mred?second line") == 2
    finally:
        for proc in procs:
            reap(proc)


def test_running_out_of_its_own_fds_is_one_line_that_blames_pss_dup_not_the_process(
    sleeper: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    """Just above what Python needs to start (5 here), some open() of pss-dup's own fails with EMFILE, wherever it
    is; each such failure is the one documented line, and the process worked on is left as it was."""
    fds = sorted(os.listdir(f"/proc/{sleeper.pid}/fd"))
    failures = 0
    for limit in range(5, 9):
        for command in (
            ["capture", str(sleeper.pid), "--everything"],
            ["dump", str(sleeper.pid), str(tmp_path / f"{limit}.core")],
            ["dup", str(sleeper.pid), str(sleeper.pid)],
        ):
            result = subprocess.run(["prlimit", f"--nofile={limit}:{limit}", PSS_DUP, *command, "-q"],
                                    capture_output=True, text=True, timeout=60)  # fmt: skip
            if result.returncode == 0:
                if command[0] == "dup":  # it worked: give the fd back, so that the table check below holds
                    held = set(os.listdir(f"/proc/{sleeper.pid}/fd")) - set(fds)
                    assert len(held) == 1
                    assert run_cli("free", str(sleeper.pid), held.pop()).returncode == 0
                continue
            failures += 1
            assert result.returncode == 1, result.stderr
            assert result.stderr == (
                f"pss-dup: pss-dup itself has no free file descriptor (its limit is {limit}); "
                "raise it with `ulimit -n` and retry\n"
            )
            assert sorted(os.listdir(f"/proc/{sleeper.pid}/fd")) == fds
            assert proc_status(sleeper.pid)["TracerPid"] == "0"
            assert not (tmp_path / f"{limit}.core").exists()
    assert failures >= 3


@pytest.mark.parametrize("seconds", [float("nan"), float("inf"), 0.0, -1.0, 3601.0])
def test_the_library_refuses_a_timeout_that_cannot_bound_a_wait(
    sleeper: subprocess.Popen[bytes], seconds: float
) -> None:
    import pss_cli
    from pss_cli.errors import UsageError

    with pytest.raises(UsageError, match="is not a timeout"):
        pss_cli.capture(sleeper.pid, timeout=seconds)
    assert proc_status(sleeper.pid)["TracerPid"] == "0"

"""`pss-dup dup`, `inspect` and `free` end to end: real processes, the installed command, and the receiver reading
the snapshot from inside with the library API."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PSS_DUP, TARGETS, Target, proc_status, reap, run_cli

NOBODY = 65534


class Receiver:
    def __init__(self, *prefix: str) -> None:
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, str(TARGETS / "receiver.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=os.path.dirname(TARGETS.parent),
        )
        assert self.proc.stdout and self.proc.stdout.readline().strip() == "ready"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def open(self, fd: int) -> dict[str, Any]:
        """Asks the receiver to open fd with pss_cli.open_snapshot, from inside, and returns its answer."""
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(f"{fd}\n")
        self.proc.stdin.flush()
        answer: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return answer

    def fds(self) -> set[int]:
        return {int(n) for n in os.listdir(f"/proc/{self.pid}/fd")}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        reap(r.proc)


def dup_json(*args: str) -> dict[str, Any]:
    result = run_cli("dup", *args, "-o", "json")
    assert result.returncode == 0, result.stderr
    record: dict[str, Any] = json.loads(result.stdout)["results"][0]
    return record


def test_dup_gives_the_target_a_snapshot_it_reads_from_inside(target: Target, receiver: Receiver) -> None:
    record = dup_json(str(target.pid), str(receiver.pid))
    assert record["target"]["pid"] == receiver.pid
    fd = record["target"]["handle"]
    assert os.readlink(f"/proc/{receiver.pid}/fd/{fd}") == "/memfd:pss-snapshot (deleted)"
    seen = receiver.open(fd)
    assert seen["ok"], seen
    assert seen["pid"] == target.pid and seen["threads"] >= 4 and seen["handles"] >= 5
    assert seen["inheritable"] is False
    assert record["timings"]["target_stopped_ms"] > 0 and record["timings"]["source_stopped_ms"] > 0
    assert {a["role"] for a in record["source"]["access"] + record["target"]["access"]} == {"source", "target"}
    for pid in (target.pid, receiver.pid):
        assert proc_status(pid)["TracerPid"] == "0"
    assert target.echo("after-dup") == "echo:after-dup"


def test_inherit_leaves_the_fd_without_close_on_exec(target: Target, receiver: Receiver) -> None:
    record = dup_json(str(target.pid), str(receiver.pid), "--inherit", "--flags", "0")
    assert receiver.open(record["target"]["handle"])["inheritable"] is True


def test_inspect_reports_the_snapshot_another_process_holds(target: Target, receiver: Receiver) -> None:
    fd = dup_json(str(target.pid), str(receiver.pid))["target"]["handle"]
    result = run_cli("inspect", str(receiver.pid), str(fd), "-o", "json")
    assert result.returncode == 0, result.stderr
    snap = json.loads(result.stdout)["results"][0]["snapshot"]
    assert snap["process"]["pid"] == target.pid
    assert snap["process"]["environ"]["PSS_TEST_MARKER"] == "marker-value-42"
    table = run_cli("inspect", str(receiver.pid), str(fd))
    assert table.returncode == 0 and "pss-worker-0" in table.stdout


def test_handle_hands_on_and_close_source_closes_it(target: Target, receiver: Receiver) -> None:
    fd = dup_json(str(target.pid), str(receiver.pid))["target"]["handle"]
    other = Receiver()
    try:
        record = dup_json(str(receiver.pid), str(other.pid), "--handle", str(fd), "--close-source")
        assert record["source"]["closed"] is True
        assert fd not in receiver.fds()
        seen = other.open(record["target"]["handle"])
        assert seen["ok"] and seen["pid"] == target.pid
    finally:
        reap(other.proc)


def test_handle_that_is_not_a_snapshot_is_refused_untouched(target: Target, receiver: Receiver) -> None:
    result = run_cli("dup", str(target.pid), str(receiver.pid), "--handle", str(target.info["file_fd"]))
    assert result.returncode == 8
    assert f"fd {target.info['file_fd']} of process {target.pid} is not a pss-dup snapshot" in result.stderr
    before = receiver.fds()
    result = run_cli("free", str(target.pid), str(target.info["pipe"][0]))
    assert result.returncode == 8
    assert target.info["pipe"][0] in {int(n) for n in os.listdir(f"/proc/{target.pid}/fd")}
    assert receiver.fds() == before


def unused_fd(pid: int) -> int:
    return max(int(n) for n in os.listdir(f"/proc/{pid}/fd")) + 5


@pytest.mark.parametrize(
    "command", [("free",), ("free", "--dry-run"), ("inspect",), ("dump", "--from"), ("dup", "--handle")]
)
def test_an_fd_that_does_not_exist_is_said_to_be_missing_with_exit_10(
    target: Target, receiver: Receiver, command: tuple[str, ...], tmp_path: Path
) -> None:
    missing = unused_fd(target.pid)
    if command[0] == "dump":
        args = ["dump", "--from", str(target.pid), "--handle", str(missing), str(tmp_path / "x.core")]
    elif command[0] == "dup":
        args = ["dup", str(target.pid), str(receiver.pid), "--handle", str(missing)]
    else:
        args = [*command, str(target.pid), str(missing)]
    before = receiver.fds()
    result = run_cli(*args)
    assert result.returncode == 10, result.stderr
    assert result.stderr.strip() == f"pss-dup: process {target.pid} has no fd {missing}"
    assert receiver.fds() == before and not (tmp_path / "x.core").exists()
    assert proc_status(target.pid)["TracerPid"] == "0"


def test_free_closes_the_snapshot_and_nothing_else(target: Target, receiver: Receiver) -> None:
    before = receiver.fds()
    fd = dup_json(str(target.pid), str(receiver.pid), "--flags", "0")["target"]["handle"]
    assert receiver.fds() == before | {fd}
    dry = run_cli("free", str(receiver.pid), str(fd), "--dry-run", "-o", "json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["results"][0]["dry_run"] is True
    assert fd in receiver.fds()
    result = run_cli("free", str(receiver.pid), str(fd), "-o", "json")
    assert result.returncode == 0, result.stderr
    assert receiver.fds() == before
    assert receiver.open(fd)["ok"] is False


def test_dry_run_dup_changes_nothing(target: Target, receiver: Receiver) -> None:
    before = receiver.fds()
    result = run_cli("dup", str(target.pid), str(receiver.pid), "--dry-run", "-o", "json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)["results"][0]
    assert record["dry_run"] is True and record["target"]["handle"] is None
    assert any("socketpair" in a or "PTRACE_SEIZE" in a for a in record["actions"])
    assert receiver.fds() == before


def context_switches(pid: int) -> dict[int, tuple[str, str]]:
    """Each thread's (voluntary, nonvoluntary) context switches: a thread blocked in a wait that nobody touches
    does not switch; a ptrace stop wakes it (and it switches again to go back to sleep)."""
    switches = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        switches[int(tid)] = (fields["voluntary_ctxt_switches"], fields["nonvoluntary_ctxt_switches"])
    return switches


@pytest.mark.parametrize("selection", [(), ("--everything",)])
def test_dry_run_dup_stops_and_traces_no_process(
    target: Target, receiver: Receiver, tmp_path: Path, selection: tuple[str, ...]
) -> None:
    before = receiver.fds()
    time.sleep(0.2)  # the target's threads settle in their waits
    switches = context_switches(target.pid), context_switches(receiver.pid)
    command = [PSS_DUP, "dup", str(target.pid), str(receiver.pid), *selection, "--dry-run", "-o", "json"]
    trace = tmp_path / "ptrace.log"
    if shutil.which("strace"):  # every ptrace request pss-dup makes, from any of its threads
        command = ["strace", "-f", "-qq", "-e", "trace=ptrace", "-o", str(trace), *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    if trace.exists():
        assert "ptrace(" not in trace.read_text(), trace.read_text()[:2000]
    assert (context_switches(target.pid), context_switches(receiver.pid)) == switches, "a dry run woke a process"
    assert receiver.fds() == before
    assert proc_status(target.pid)["TracerPid"] == "0"
    record = json.loads(result.stdout)["results"][0]
    assert record["dry_run"] is True and record["target"]["handle"] is None and record["captured"] is None
    assert any("freeze its" in a for a in record["actions"]), record["actions"]
    assert any("socketpair" in a for a in record["actions"])
    if selection:
        assert any("VA clone" in a for a in record["actions"])


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace, to trace the source")
def test_dry_run_dup_refuses_a_source_the_real_run_would_refuse(target: Target, receiver: Receiver) -> None:
    """A source someone else traces cannot be captured: the dry run says so, exit 7, as the real run does."""
    tracer = subprocess.Popen(["strace", "-qq", "-o", os.devnull, "-p", str(target.pid)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while proc_status(target.pid)["TracerPid"] == "0":
            assert time.monotonic() < deadline, "strace did not attach"
            time.sleep(0.01)
        dry = run_cli("dup", str(target.pid), str(receiver.pid), "--dry-run")
        real = run_cli("dup", str(target.pid), str(receiver.pid))
        assert (dry.returncode, real.returncode) == (7, 7), (dry.stderr, real.stderr)
        assert dry.stderr == real.stderr and "already traced by PID" in dry.stderr
    finally:
        tracer.terminate()
        tracer.wait(timeout=10)


def test_target_running_as_nobody_receives_and_reads_the_snapshot(target: Target) -> None:
    nobody = Receiver("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")
    try:
        record = dup_json(str(target.pid), str(nobody.pid))
        seen = nobody.open(record["target"]["handle"])
        assert seen["ok"] and seen["pid"] == target.pid
    finally:
        reap(nobody.proc)


def test_dup_into_a_process_that_does_not_exist_exits_3(target: Target) -> None:
    result = run_cli("dup", str(target.pid), str(2**22 + 777))
    assert result.returncode == 3 and "Traceback" not in result.stderr


def test_close_source_without_handle_is_a_usage_error(target: Target, receiver: Receiver) -> None:
    result = run_cli("dup", str(target.pid), str(receiver.pid), "--close-source")
    assert result.returncode == 2 and "--handle" in result.stderr


def test_receiver_api_refuses_an_fd_that_is_not_a_snapshot(receiver: Receiver) -> None:
    seen = receiver.open(0)
    assert seen == {"ok": False, "error": seen["error"], "code": 8}
    assert "not a pss-dup snapshot" in seen["error"]


RECV_TIMEOUT_WAITER = """
import socket, struct, sys
left, right = socket.socketpair()
left.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@qq", 60, 0))
print("ready", flush=True)
sys.stdin.readline()
left.recv(1)
"""


def test_close_source_that_would_be_refused_is_refused_before_the_target_is_changed(
    target: Target, receiver: Receiver
) -> None:
    """A source blocked in recv on a socket with SO_RCVTIMEO (an EINTR pss-dup cannot undo unseen) cannot be
    stopped to close H: the target gets nothing."""
    source = subprocess.Popen(
        [sys.executable, "-c", RECV_TIMEOUT_WAITER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert source.stdin and source.stdout and source.stdout.readline().strip() == "ready"
        fd = dup_json(str(target.pid), str(source.pid), "--flags", "0")["target"]["handle"]
        source.stdin.write("go\n")
        source.stdin.flush()
        deadline = time.monotonic() + 10
        syscall = Path(f"/proc/{source.pid}/syscall")
        while syscall.read_text().split()[0] != "45":  # recvfrom
            assert time.monotonic() < deadline, "the source never blocked in recv"
        before = receiver.fds()
        result = run_cli("dup", str(source.pid), str(receiver.pid), "--handle", str(fd), "--close-source")
        assert result.returncode == 7 and "recvfrom" in result.stderr and "SO_RCVTIMEO" in result.stderr, result.stderr
        assert receiver.fds() == before
        assert fd in {int(n) for n in os.listdir(f"/proc/{source.pid}/fd")}
    finally:
        reap(source)


def test_a_dup_that_needed_force_says_that_its_free_will_need_it_too(target: Target) -> None:
    """A receiver blocked in recv on a socket with SO_RCVTIMEO: its EINTR cannot be undone, so dup needs --force;
    the dup says at once that the free will need it too, and it does."""
    holder = subprocess.Popen(
        [sys.executable, "-c", RECV_TIMEOUT_WAITER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdin and holder.stdout and holder.stdout.readline().strip() == "ready"
        holder.stdin.write("go\n")
        holder.stdin.flush()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{holder.pid}/syscall").read_text().split()[0] != "45":
            assert time.monotonic() < deadline, "the holder never blocked in recv"
        refused = run_cli("dup", str(target.pid), str(holder.pid))
        assert refused.returncode == 7 and "SO_RCVTIMEO" in refused.stderr, refused.stderr
        record = dup_json(str(target.pid), str(holder.pid), "--force")
        fd = record["target"]["handle"]
        assert any(f"pss-dup free {holder.pid} {fd}` will need --force" in w for w in record["warnings"]), record
        woken = record["interruptions"]["target"]
        assert [(i["call"], i["restarted"]) for i in woken] == [("recvfrom", False)], woken  # its EINTR, said
        assert run_cli("free", str(holder.pid), str(fd)).returncode == 7
        assert run_cli("free", str(holder.pid), str(fd), "--force").returncode == 0
        assert str(fd) not in os.listdir(f"/proc/{holder.pid}/fd")
    finally:
        reap(holder)

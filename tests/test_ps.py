"""`pss-dup ps`: finding processes, its filters, the snapshot marker, and its JSON, through the installed script."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from pss_cli.model import SCHEMA_VERSION
from tests.conftest import HOLDER, PSS_DUP, Holder, kernel_thread_pids, reap, run_cli, start_holder


@pytest.fixture
def holder() -> Iterator[Holder]:
    h = start_holder(f"psps-{uuid.uuid4().hex[:8]}", decoys=True)
    try:
        yield h
    finally:
        reap(h.proc)


def ps_json(*args: str) -> list[dict[str, Any]]:
    result = run_cli("ps", *args, "-o", "json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    document = json.loads(result.stdout)
    assert document["command"] == "ps" and document["ok"] is True
    records: list[dict[str, Any]] = document["results"]
    return records


def test_json_record_describes_the_process_and_lists_its_snapshot_fds(holder: Holder) -> None:
    (record,) = ps_json(holder.name)
    proc = psutil.Process(holder.pid)
    assert record == {
        "status": "ok",
        "pid": holder.pid,
        "ppid": os.getpid(),
        "user": pwd.getpwuid(os.getuid()).pw_name,
        "name": holder.name,
        "threads": 1,
        "handles": proc.num_fds(),
        "rss": record["rss"],
        "cmdline": [sys.executable, "-c", HOLDER, holder.name, "decoys"],
        "create_time": proc.create_time(),
        "snapshots": [holder.snapshot_fd],  # the two memfds named pss-snapshot are not snapshots: left out
        "container": None,
    }
    assert len(holder.decoy_fds) == 2
    assert all(os.readlink(f"/proc/{holder.pid}/fd/{fd}") == "/memfd:pss-snapshot (deleted)" for fd in holder.decoy_fds)
    assert record["rss"] > 1 << 20
    assert record["handles"] >= 7  # stdin, stdout, stderr and four memfds


def test_a_process_without_snapshots_has_an_empty_list() -> None:
    name = f"psn-{uuid.uuid4().hex[:8]}"
    script = (
        "import ctypes, sys; ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0); print(flush=True); input()"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, name], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout
        proc.stdout.readline()
        (record,) = ps_json(name)
        assert record["pid"] == proc.pid and record["snapshots"] == []
    finally:
        proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            assert stream
            stream.close()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run pss-dup as another user")
def test_what_another_user_may_not_see_is_null_not_invented(holder: Holder) -> None:
    result = run_cli("ps", holder.name, "-o", "json", uid=65534)
    assert result.returncode == 0, result.stderr
    (record,) = json.loads(result.stdout)["results"]
    assert record["pid"] == holder.pid and record["name"] == holder.name
    assert record["snapshots"] is None and record["handles"] is None


def test_glob_matches_every_process_whose_name_fits() -> None:
    tag = uuid.uuid4().hex[:6]
    holders = [start_holder(f"psg-{tag}-{i}") for i in range(3)]
    try:
        records = ps_json(f"psg-{tag}-[01]")
        assert [r["pid"] for r in records] == sorted(h.pid for h in holders[:2])
        assert len(ps_json(f"psg-{tag}-*")) == 3
    finally:
        for h in holders:
            reap(h.proc)


def test_parent_filter_gives_only_children_of_that_process_and_never_pss_dup_itself(holder: Holder) -> None:
    records = ps_json("--parent", str(os.getpid()))
    assert [r["pid"] for r in records] == [holder.pid]  # the running pss-dup is our child too, and left out


def test_user_filter_takes_a_name_or_a_uid(holder: Holder) -> None:
    user = pwd.getpwuid(os.getuid()).pw_name
    assert [r["pid"] for r in ps_json(holder.name, "--user", user)] == [holder.pid]
    assert [r["pid"] for r in ps_json(holder.name, "-u", str(os.getuid()))] == [holder.pid]
    other = "nobody" if os.getuid() != 65534 else "root"
    result = run_cli("ps", holder.name, "--user", other)
    assert result.returncode == 3


def test_no_match_exits_3_and_still_prints_a_json_document() -> None:
    result = run_cli("ps", f"no-such-{uuid.uuid4().hex}", "-o", "json")
    assert result.returncode == 3
    document = json.loads(result.stdout)
    assert document["ok"] is False
    assert document["results"][0]["error"]["code"] == 3
    assert "no process matches name" in document["results"][0]["error"]["message"]
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_kernel_threads_are_left_out() -> None:
    kernel_threads = kernel_thread_pids()
    assert kernel_threads, "this host shows no kernel threads: the test proves nothing here"
    assert not kernel_threads & {r["pid"] for r in ps_json()}


def test_jsonl_prints_one_record_per_line(holder: Holder) -> None:
    result = run_cli("ps", holder.name, "-o", "jsonl")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["schema_version"] == SCHEMA_VERSION and record["command"] == "ps" and record["pid"] == holder.pid


def test_table_marks_the_snapshot_holder_and_shows_hostile_names_as_they_are() -> None:
    name = "[bold]e[/]" + uuid.uuid4().hex[:4]
    h = start_holder(name, decoys=True)  # memfds named pss-snapshot that are not snapshots do not count
    try:
        result = run_cli("ps", "--parent", str(os.getpid()))
        assert result.returncode == 0, result.stderr
        header, row = result.stdout.splitlines()
        columns = ["pid", "ppid", "user", "name", "threads", "fds", "rss", "snap", "container", "command"]
        assert header.split() == columns
        assert row.split()[:4] == [str(h.pid), str(os.getpid()), pwd.getpwuid(os.getuid()).pw_name, name]
        assert " *1 " in row
    finally:
        reap(h.proc)


def test_piped_table_keeps_a_long_command_line_whole(holder: Holder) -> None:
    long_arg = "x" * 3000
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()", long_arg], stdin=subprocess.PIPE)
    try:
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        result = subprocess.run(
            [PSS_DUP, "ps", "--parent", str(os.getpid())], capture_output=True, text=True, env=env, timeout=60
        )
        assert result.returncode == 0, result.stderr
        (row,) = [line for line in result.stdout.splitlines() if line.split()[0] == str(proc.pid)]
        assert row.endswith(long_arg)
        assert all(line == line.rstrip() for line in result.stdout.splitlines())
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdin
        proc.stdin.close()


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_kernel_threads_are_ruled_out_from_their_stat_alone(tmp_path: Path) -> None:
    """Most of a host's PIDs are kernel threads: `ps` reads each one's /proc/PID/stat and nothing else of it."""
    kernel_threads = kernel_thread_pids()
    if not kernel_threads:
        pytest.skip("this host shows no kernel threads")
    log = tmp_path / "strace.log"
    result = subprocess.run(["strace", "-f", "-e", "trace=open,openat,readlink,readlinkat", "-o", str(log), PSS_DUP,
                             "ps", "-o", "json"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not {r["pid"] for r in json.loads(result.stdout)["results"]} & kernel_threads
    touched = log.read_text()
    for pid in kernel_threads:
        assert set(re.findall(rf'"/proc/{pid}/([^"]*)"', touched)) <= {"stat"}, pid

"""`pss-dup doctor`: the host checks, the exit code, and that it only ever touches the processes it starts."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pss_cli.doctor import Check, Status, exit_code
from pss_cli.errors import ExitCode
from tests.conftest import PSS_DUP, need_tools, run_cli

HOST_SECTIONS = ("platform", "privileges", "setup", "kernel")
NOBODY = 65534
#: Runs doctor where it must fail: as `nobody`, without CAP_SYS_PTRACE (needs root to switch users).
needs_root = pytest.mark.skipif(os.getuid() != 0, reason="needs root to run doctor as another user")
ROUND_TRIP = (
    "capture",
    "dup",
    "receiver reads it",
    "inspect from outside",
    "free",
    "receiver's handle is closed",
    "both processes alive and untraced",
    "both processes exit and are reaped",
)


def doctor_json(*, uid: int | None = None) -> tuple[int, list[dict[str, Any]]]:
    result = run_cli("doctor", "-o", "json", uid=uid)
    assert "Traceback" not in result.stderr
    document = json.loads(result.stdout)
    assert document["command"] == "doctor"
    failed = [r for r in document["results"] if r["result"] == "fail"]
    assert document["ok"] is (not failed)
    return result.returncode, document["results"]


def by_name(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["check"]: r for r in records}


def child_pids(records: list[dict[str, Any]]) -> set[int]:
    detail = by_name(records)["start two processes"]["detail"]
    return {int(pid) for pid in re.findall(r"PID (\d+)", detail)}


def check(status: Status, code: ExitCode = ExitCode.FAILED) -> Check:
    return Check("s", "n", status, "d", code=code if status is Status.FAIL else ExitCode.OK)


def test_exit_code_is_zero_unless_something_failed_and_then_names_the_worst_kind() -> None:
    assert exit_code([check(Status.PASS), check(Status.WARN), check(Status.SKIP)]) == ExitCode.OK
    assert exit_code([check(Status.PASS), check(Status.FAIL)]) == ExitCode.FAILED
    assert exit_code([check(Status.FAIL), check(Status.FAIL, ExitCode.ACCESS_DENIED)]) == ExitCode.ACCESS_DENIED
    mixed = [check(Status.FAIL, ExitCode.ACCESS_DENIED), check(Status.FAIL, ExitCode.NOT_SUPPORTED)]
    assert exit_code(mixed) == ExitCode.NOT_SUPPORTED


def test_every_host_check_passes_here_and_each_kernel_feature_was_really_probed() -> None:
    _, records = doctor_json()
    checks = by_name(records)
    host = [r for r in records if r["section"] in HOST_SECTIONS]
    assert [r for r in host if r["result"] != "pass"] == []
    for name in ("memfd_create with seals", "pidfd_open", "pidfd_getfd", "process_vm_readv"):
        assert checks[name]["ms"] is not None and checks[name]["ms"] > 0
    assert "EPERM" in checks["memfd_create with seals"]["detail"]
    assert "ELF header" in checks["process_vm_readv"]["detail"]
    assert "PTRACE_GET_SYSCALL_INFO" in checks["ptrace"]["detail"] and "TracerPid 0" in checks["ptrace"]["detail"]
    assert set(ROUND_TRIP) <= set(checks)


def test_the_round_trip_passes_and_doctor_exits_0() -> None:
    code, records = doctor_json()
    failures = {r["check"]: r["detail"] for r in records if r["result"] == "fail"}
    assert failures == {}
    assert code == 0
    checks = by_name(records)
    assert all(checks[name]["result"] == "pass" for name in ROUND_TRIP)


@needs_root
def test_exit_code_and_json_agree_about_failures() -> None:
    """Run where checks fail (as nobody), so that the failure records are there to compare."""
    code, records = doctor_json(uid=NOBODY)
    failed = [r for r in records if r["result"] == "fail"]
    assert failed
    expected = exit_code(
        [Check(r["section"], r["check"], Status.FAIL, r["detail"], code=ExitCode(r["error"]["code"])) for r in failed]
    )
    assert code == expected == ExitCode.ACCESS_DENIED
    for record in failed:
        assert record["status"] == "error" and record["fix"]
    for record in records:
        if record["result"] != "fail":
            assert record["status"] == "ok" and "error" not in record


@needs_root
def test_without_root_or_cap_sys_ptrace_doctor_exits_4_and_says_how_to_fix_it() -> None:
    code, records = doctor_json(uid=NOBODY)
    checks = by_name(records)
    privilege = checks["root or CAP_SYS_PTRACE"]
    assert privilege["result"] == "fail" and privilege["error"]["code"] == 4
    assert "sudo" in privilege["fix"]
    assert code == 4


def test_children_are_gone_when_doctor_returns() -> None:
    _, records = doctor_json()
    pids = child_pids(records)
    assert len(pids) == 2
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"doctor left PID {pid} behind"


def test_jsonl_streams_one_record_per_check_that_json_reports() -> None:
    _, reported = doctor_json()
    result = run_cli("doctor", "-o", "jsonl")
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert all(r["command"] == "doctor" for r in records)
    assert [(r["check"], r["result"]) for r in records] == [(r["check"], r["result"]) for r in reported]
    assert [r["check"] for r in records if r["result"] != "pass"] == []
    assert result.returncode == 0


@needs_root
def test_jsonl_exit_code_names_the_failures_it_streamed() -> None:
    result = run_cli("doctor", "-o", "jsonl", uid=NOBODY)
    records = [json.loads(line) for line in result.stdout.splitlines()]
    failed = [Check(r["section"], r["check"], Status.FAIL, "", code=ExitCode(r["error"]["code"])) for r in records
              if r["result"] == "fail"]  # fmt: skip
    assert failed
    assert result.returncode == exit_code(failed) == ExitCode.ACCESS_DENIED


def test_table_shows_every_check_with_its_result() -> None:
    _, records = doctor_json()
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    result = subprocess.run(
        [PSS_DUP, "doctor", "--color", "never"], capture_output=True, text=True, env=env, timeout=120
    )
    assert "Traceback" not in result.stderr
    for record in records:
        assert record["check"] in result.stdout
    assert "PASS" in result.stdout
    assert result.stdout.rstrip().splitlines()[-1].endswith("pss-dup works on this host")
    assert result.returncode == 0


def test_doctor_only_ever_touches_the_processes_it_started(tmp_path: Path) -> None:
    """strace follows every thread of doctor (and lets go of each child at its execve, so doctor can trace it) and
    sees each ptrace, pidfd_open, process_vm_readv and kill: every one names a child doctor reports having started."""
    need_tools("strace")
    log = tmp_path / "strace.log"
    syscalls = ("ptrace", "pidfd_open", "process_vm_readv", "process_vm_writev", "kill", "tkill", "tgkill")
    strace = ["strace", "-f", "-b", "execve", "-qq", "-e", f"trace={','.join(syscalls)}", "-o", str(log)]
    result = subprocess.run(
        [*strace, PSS_DUP, "doctor", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    records = json.loads(result.stdout)["results"]
    children = child_pids(records)
    touched: dict[str, set[int]] = {}
    for line in log.read_text().splitlines():
        match = re.match(r"\d+\s+(\w+)\((?:PTRACE_\w+, )?(\d+)", line)
        if match and match[1] in syscalls:
            touched.setdefault(match[1], set()).add(int(match[2]))
    assert touched.get("ptrace") and touched.get("pidfd_open") and touched.get("process_vm_readv"), touched
    for name, pids in touched.items():
        assert pids <= children, f"{name} on {pids - children}, not a child of doctor ({children})"

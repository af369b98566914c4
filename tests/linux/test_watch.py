"""`pss-dup watch` end to end: real targets cross each threshold on cue, the watcher acts once per trigger within its
limits, gdb names the function that was running, and every target is left running, untraced, with nothing extra."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PSS_DUP, need_tools
from tests.linux.conftest import (
    TARGETS,
    Target,
    children_of,
    compile_c,
    drain_terminal,
    fd_count,
    state,
    tracer_pids,
    wait_until,
)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux only")


@pytest.fixture(scope="session")
def watch_exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/linux/targets/watch_target.c, compiled once per run under a name no other process has."""
    source = (TARGETS / "watch_target.c").read_text()
    return compile_c(tmp_path_factory, f"w{uuid.uuid4().hex[:10]}", source, "-O1", "-g", "-Wall", "-pthread")


@pytest.fixture
def targets(spawn: Callable[..., Target], watch_exe: Path) -> Iterator[Callable[..., Target]]:
    """Start watch targets; each test's targets are checked untouched (untraced, running, no extra fds,
    children or zombies) before they are killed."""
    started: list[tuple[Target, int]] = []

    def start(*args: str, opens: int = 0) -> Target:
        """`opens`: fds the target opens itself (mode fds)."""
        target = spawn([str(watch_exe), *args])
        target.expect("ready")
        started.append((target, 3 + opens))  # stdin, stdout, stderr (Popen closes the rest), and its own
        return target

    yield start
    for target, fds in started:
        if target.proc.poll() is None:
            assert_untouched(target, fds)


def assert_untouched(target: Target, fds: int) -> None:
    assert set(tracer_pids(target.pid).values()) == {0}
    assert state(target.pid) in "RSD", state(target.pid)
    assert fd_count(target.pid) == fds
    assert children_of(target.pid) == []


def watcher(spawn: Callable[..., Target], *args: str, cwd: Path | None = None) -> Target:
    return spawn([PSS_DUP, "watch", *args, "-o", "jsonl"], cwd=cwd, stderr=subprocess.DEVNULL)


def finish(w: Target, timeout: float = 20) -> tuple[int, list[dict[str, Any]]]:
    """The watcher's exit code and every event it reported."""
    finished = w.event("finished", timeout)
    assert w.proc.wait(timeout=10) == finished["exit_code"]
    return finished["exit_code"], [e for e in w.seen if isinstance(e, dict)]


def exe_of(target: Target) -> Path:
    return Path(os.readlink(f"/proc/{target.pid}/exe"))


def of(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == kind]


def test_cpu_spike_dump_names_the_spinning_function(
    spawn: Callable[..., Target], targets: Callable[..., Target], tmp_path: Path
) -> None:
    need_tools("gdb")
    stamp = tmp_path / "spin-started"
    t = targets("spin", "800", str(stamp))
    w = watcher(spawn, str(t.pid), "--cpu", "10", "--for", "0.4", "--poll", "0.2", "--dump", str(tmp_path))
    code, events = finish(w)
    assert code == 0
    (fired,) = of(events, "triggered")
    assert fired["trigger"] == "cpu" and fired["value"] >= 10  # 2 shared cores: a spinning thread may get 25%
    (action,) = of(events, "action")
    assert action["ok"] and Path(action["file"]).parent == tmp_path
    assert Path(action["file"]).name.startswith(f"{exe_of(t).name}_cpu_")
    assert Path(action["file"]).name.endswith(f".{t.pid}.core")
    assert os.stat(action["file"]).st_mode & 0o777 == 0o600
    reaction = action["captured_at"] - float(stamp.read_text())
    # --for less the one poll in which the spin may have started; at most --poll + --for + a loaded machine
    assert 0.4 - 0.2 <= reaction <= 0.2 + 0.4 + 1.0, reaction
    gdb = subprocess.run(
        ["gdb", "-batch", "-nx", "-ex", "bt", str(exe_of(t)), action["file"]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "spin_here" in gdb.stdout, gdb.stdout + gdb.stderr


def test_memory_thresholds_dump_once_each(
    spawn: Callable[..., Target], targets: Callable[..., Target], tmp_path: Path
) -> None:
    t = targets("grow", "300", "8", "5")  # +8 MiB every 300 ms, five times
    w = watcher(
        spawn,
        str(t.pid),
        "--memory",
        "12M",
        "--memory",
        "28M",
        "-n",
        "5",
        "--every",
        "0",
        "--poll",
        "0.1",
        "--duration",
        "3",
        "--dump",
        str(tmp_path),
    )
    code, events = finish(w)
    assert code == 0  # both fired: --duration ended a watch that acted
    fired = of(events, "triggered")
    assert [(e["trigger"], e["threshold"]) for e in fired] == [("memory", 12 << 20), ("memory", 28 << 20)]
    assert all(e["value"] >= e["threshold"] for e in fired)
    assert len(list(tmp_path.glob("*.core"))) == 2 and all(e["ok"] for e in of(events, "action"))


def test_fds_trigger_captures_the_snapshot_as_a_json_line(
    spawn: Callable[..., Target], targets: Callable[..., Target]
) -> None:
    t = targets("fds", "400", "40", opens=40)
    base = fd_count(t.pid)
    w = watcher(spawn, str(t.pid), "--fds", str(base + 30), "--poll", "0.1", "--capture")
    code, events = finish(w)
    assert code == 0
    (fired,) = of(events, "triggered")
    assert fired["trigger"] == "fds" and fired["value"] >= base + 30
    (snapshot,) = of(events, "snapshot")
    assert snapshot["pid"] == t.pid and snapshot["snapshot"]["process"]["pid"] == t.pid


def test_threads_trigger_and_exec_sees_the_variables(
    spawn: Callable[..., Target], targets: Callable[..., Target], tmp_path: Path
) -> None:
    t = targets("threads", "300", "4")
    seen = tmp_path / "seen"
    w = watcher(
        spawn,
        str(t.pid),
        "--threads",
        "5",
        "--poll",
        "0.1",
        "--dump",
        str(tmp_path),
        "--exec",
        f'echo "$PSS_DUP_PID $PSS_DUP_TRIGGER $PSS_DUP_FILE [$PSS_DUP_HANDLE]" > {seen}; exit 3',
    )
    code, events = finish(w)
    assert code == 1  # the --exec failed, so the action did
    (action,) = of(events, "action")
    assert action["exec_status"] == 3 and not action["ok"]
    assert seen.read_text().split() == [str(t.pid), "threads", action["file"], "[]"]


def test_hang_fires_on_a_deadlock_and_says_where_threads_wait(
    spawn: Callable[..., Target], targets: Callable[..., Target]
) -> None:
    t = targets("deadlock", "0")
    t.expect("done")
    started = time.monotonic()
    w = watcher(spawn, str(t.pid), "--hang", "0.8", "--poll", "0.1", "--capture")
    code, events = finish(w)
    assert code == 0 and time.monotonic() - started >= 0.8
    (fired,) = of(events, "triggered")
    assert fired["trigger"] == "hang" and fired["value"] >= 0.8
    waits = fired["detail"]["threads"]
    assert len(waits) == 2 and {w["syscall"] for w in waits.values()} <= {"futex", "pause", "rt_sigsuspend"}
    assert any(w["syscall"] == "futex" for w in waits.values())


def test_no_trigger_on_a_busy_process_never_fires_hang(
    spawn: Callable[..., Target], targets: Callable[..., Target]
) -> None:
    t = targets("spin", "0", "/dev/null")
    w = watcher(spawn, str(t.pid), "--hang", "0.5", "--poll", "0.1", "--duration", "1.2", "--capture")
    code, events = finish(w)
    assert code == 124 and of(events, "triggered") == []
    assert of(events, "finished")[0]["reason"] == "duration"


def test_count_and_every_space_the_actions(spawn: Callable[..., Target], targets: Callable[..., Target]) -> None:
    t = targets("wait", "0")
    w = watcher(spawn, str(t.pid), "--threads", "1", "-n", "3", "--every", "0.5", "--poll", "0.1", "--capture")
    code, events = finish(w)
    assert code == 0
    actions = of(events, "action")
    assert len(actions) == 3 and of(events, "finished")[0]["reason"] == "count"
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(actions)]
    assert all(0.45 <= gap < 1.0 for gap in gaps), gaps


def test_max_size_stops_after_the_file_that_reached_it(
    spawn: Callable[..., Target], targets: Callable[..., Target], tmp_path: Path
) -> None:
    t = targets("wait", "0")
    w = watcher(
        spawn,
        str(t.pid),
        "--threads",
        "1",
        "-n",
        "5",
        "--every",
        "0",
        "--poll",
        "0.1",
        "--max-size",
        "1K",
        "--dump",
        str(tmp_path),
    )
    code, events = finish(w)
    assert code == 0 and of(events, "finished")[0]["reason"] == "max-size"
    assert len(of(events, "action")) == 1 and len(list(tmp_path.glob("*.core"))) == 1


def test_duration_without_a_trigger_exits_124(spawn: Callable[..., Target], targets: Callable[..., Target]) -> None:
    t = targets("wait", "0")
    started = time.monotonic()
    w = watcher(spawn, str(t.pid), "--cpu", "90", "--duration", "0.6", "--poll", "0.2")
    code, events = finish(w)
    assert code == 124 and 0.6 <= time.monotonic() - started < 3
    assert of(events, "triggered") == []


def test_wait_watches_a_process_started_after_the_watcher(
    spawn: Callable[..., Target], targets: Callable[..., Target], watch_exe: Path
) -> None:
    w = watcher(spawn, watch_exe.name, "--wait", "--threads", "1", "--poll", "0.1", "--capture", "--duration", "10")
    w.event("started")
    time.sleep(0.3)
    t = targets("wait", "0")
    code, events = finish(w)
    assert code == 0 and of(events, "action")[0]["pid"] == t.pid


def test_all_wait_keeps_watching_new_processes(
    spawn: Callable[..., Target], targets: Callable[..., Target], watch_exe: Path
) -> None:
    first = targets("wait", "0")
    w = watcher(
        spawn,
        watch_exe.name,
        "--all",
        "--wait",
        "--threads",
        "1",
        "-n",
        "2",
        "--poll",
        "0.1",
        "--capture",
        "--duration",
        "10",
    )
    w.event("action")
    second = targets("wait", "0")
    code, events = finish(w)
    assert code == 0
    assert [a["pid"] for a in of(events, "action")] == [first.pid, second.pid]
    assert [e["pid"] for e in of(events, "target-appeared")] == [second.pid]


def test_a_target_that_exits_ends_the_watch(spawn: Callable[..., Target], targets: Callable[..., Target]) -> None:
    t = targets("wait", "0")
    w = watcher(spawn, str(t.pid), "--cpu", "90", "--poll", "0.1")
    w.event("started")
    t.proc.kill()
    t.proc.wait()
    code, events = finish(w)
    assert code == 0 and of(events, "target-exited")[0]["pid"] == t.pid
    assert of(events, "finished")[0]["reason"] == "targets-exited"


def test_no_trigger_acts_once_now(spawn: Callable[..., Target], targets: Callable[..., Target], tmp_path: Path) -> None:
    t = targets("wait", "0")
    w = watcher(spawn, str(t.pid), "--dump", str(tmp_path), "--name", "{name}-{n}-{trigger}.core")
    code, events = finish(w)
    assert code == 0 and [a["trigger"] for a in of(events, "action")] == ["now"]
    assert [p.name for p in tmp_path.iterdir()] == [f"{exe_of(t).name}-1-now.core"]


def test_compressed_cores_are_zstd_frames_named_with_their_suffix(
    spawn: Callable[..., Target], targets: Callable[..., Target], tmp_path: Path
) -> None:
    need_tools("zstd")
    t = targets("wait", "0")
    w = watcher(spawn, str(t.pid), "--dump", str(tmp_path), "--name", "{name}-{trigger}.core", "--compress", "zstd")
    code, events = finish(w)
    made = tmp_path / f"{exe_of(t).name}-now.core.zst"
    assert code == 0 and [p.name for p in tmp_path.iterdir()] == [made.name]
    assert of(events, "action")[0]["bytes"] == made.stat().st_size
    core = subprocess.run(["zstd", "-q", "-d", "-c", str(made)], capture_output=True, check=True).stdout
    assert core[:4] == b"\x7fELF"


def test_an_existing_file_is_never_replaced(
    spawn: Callable[..., Target], targets: Callable[..., Target], tmp_path: Path
) -> None:
    t = targets("wait", "0")
    (tmp_path / "fixed.core").write_bytes(b"keep")
    w = watcher(spawn, str(t.pid), "--dump", str(tmp_path), "--name", "fixed.core")
    code, events = finish(w)
    assert code == 0 and (tmp_path / "fixed.core").read_bytes() == b"keep"
    assert of(events, "action")[0]["file"] == str(tmp_path / "fixed-2.core")


@pytest.mark.parametrize("signo", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_leave_the_target_running_untraced(
    spawn: Callable[..., Target], targets: Callable[..., Target], signo: int
) -> None:
    t = targets("spin", "0", "/dev/null")
    w = watcher(spawn, str(t.pid), "--cpu", "1000", "--poll", "0.1")
    w.event("started")
    time.sleep(0.3)
    w.proc.send_signal(signo)
    finished = w.event("finished")
    assert w.proc.wait(timeout=10) == 128 + signo == finished["exit_code"]
    wait_until(lambda: state(t.pid) == "R", what="the target to spin on")


def test_missing_target_exits_3() -> None:
    result = subprocess.run(
        [PSS_DUP, "watch", f"no-such-{uuid.uuid4().hex[:8]}", "--cpu", "50"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 3 and "no process named" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cpu", "-1"], "--cpu must be"),
        (["--cpu", "50", "--cpu-below", "60"], "is above --cpu"),
        (["--memory", "2G", "--memory", "1G"], "ascending"),
        (["--memory", "lots"], "is not a size"),
        (["--poll", "0"], "--poll must be more than 0"),
        (["-n", "0"], "-n must be 1 or more"),
        (["--dump", "/proc/self/nonexistent"], "is not a directory"),
        (["--dump", "/proc"], "is not a directory this user can write into"),
        (["--dump", "/etc/hostname"], "is not a directory"),
        (["--name", "../{name}.core"], "--name"),
        (["--name", "{nope}.core"], "knows only"),
        (["--capture", "--dump"], "give one action"),
        (["-o", "json"], "use -o jsonl"),
    ],
)
def test_bad_thresholds_are_usage_errors(targets: Callable[..., Target], args: list[str], message: str) -> None:
    t = targets("wait", "0")
    result = subprocess.run([PSS_DUP, "watch", str(t.pid), *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_dup_into_the_watched_process_is_refused(targets: Callable[..., Target]) -> None:
    t = targets("wait", "0")
    result = subprocess.run(
        [PSS_DUP, "watch", str(t.pid), "--dup", str(t.pid)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2 and "into itself" in result.stderr


def test_dup_pushes_a_snapshot_the_analyser_opens(spawn: Callable[..., Target], targets: Callable[..., Target]) -> None:
    t = targets("wait", "0")
    analyser = spawn([sys.executable, str(Path(__file__).parents[1] / "targets" / "receiver.py")])
    analyser.expect("ready")
    w = watcher(
        spawn,
        str(t.pid),
        "--threads",
        "1",
        "--poll",
        "0.1",
        "--dup",
        str(analyser.pid),
        "--exec",
        'test "$PSS_DUP_HANDLE" -ge 0 && test -z "$PSS_DUP_FILE"',
    )
    code, events = finish(w)
    assert code == 0
    (action,) = of(events, "action")
    assert action["ok"] and action["exec_status"] == 0
    analyser.send(str(action["handle"]))
    seen = analyser.expect("{")
    assert '"ok": true' in seen and f'"pid": {t.pid}' in seen


def test_sigkill_of_the_watcher_leaves_nothing_behind(
    spawn: Callable[..., Target], targets: Callable[..., Target]
) -> None:
    t = targets("wait", "0")
    w = watcher(spawn, str(t.pid), "--hang", "100", "--fds", "1000", "--poll", "0.05")
    w.event("started")
    time.sleep(0.2)
    w.proc.kill()
    assert w.proc.wait(timeout=10) == -signal.SIGKILL
    # the fixture checks the target: untraced, running, no extra fds or children


def test_a_person_at_a_terminal_sees_a_status_line_and_event_lines(targets: Callable[..., Target]) -> None:
    import pty

    t = targets("wait", "0")
    leader, follower = pty.openpty()
    try:
        env = {k: v for k, v in os.environ.items() if k not in ("CI", "TTY_INTERACTIVE", "NO_COLOR")}
        result = subprocess.run(
            [PSS_DUP, "watch", str(t.pid), "--cpu", "99", "--duration", "1.5", "--poll", "0.2"],
            stdout=follower,
            stderr=follower,
            env={**env, "COLUMNS": "150"},
            timeout=30,
        )
        os.close(follower)
        follower = -1
        screen = drain_terminal(leader)
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    text = screen.decode(errors="replace")
    assert result.returncode == 124
    assert f"watching {t.pid}" in text and "finished (duration)" in text
    assert f"{t.pid} {exe_of(t).name}" in text and "cpu 0.0%" in text  # the live status line

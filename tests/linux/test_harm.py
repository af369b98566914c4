"""Never harm a process: seccomp (strict mode and every filter action), and signals that end pss-dup mid-dump.

Each target is started by the test, with `ulimit -c unlimited` and its own working directory, so a core written in
its name (by it, or by a copy of it that ran its code) would show up there.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pss_cli.errors import ProcessGone
from pss_cli.platform.linux import elfcore
from pss_cli.platform.linux.freeze import FrozenProcess
from tests.conftest import PSS_DUP, run_cli
from tests.linux.conftest import TARGETS, Target, big_process, children_of, state, status_field, wait_until

NOBODY = 65534
MODES = ("strict", "kill", "errno", "trap")


@pytest.fixture(scope="session")
def seccomp_exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/linux/targets/seccomp.c, compiled once per run, in a directory `nobody` can reach."""
    out_dir = tmp_path_factory.mktemp("seccomp")
    out_dir.chmod(0o755)
    out = out_dir / "seccomp"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(out), str(TARGETS / "seccomp.c")], check=True, timeout=120)
    return out


class SeccompTarget:
    """A seccomp target in its own directory, with its SIGSYS counter file."""

    def __init__(self, target: Target, workdir: Path) -> None:
        self.target = target
        self.workdir = workdir
        self.lines = 0

    @property
    def pid(self) -> int:
        return self.target.pid

    def sigsys_count(self) -> int:
        return int.from_bytes((self.workdir / "counter").read_bytes()[:8], "little")

    def assert_unharmed(self, after: str) -> None:
        """It still echoes, ran into its filter never, wrote no core, and nobody traces it or is its child."""
        self.lines += 1
        self.target.send(f"line {self.lines}")
        assert self.target.expect("line", timeout=10) == f"line {self.lines}", after
        assert self.target.proc.poll() is None, after
        assert self.sigsys_count() == 0, f"{after}: something in the process ran into its seccomp filter"
        assert sorted(p.name for p in self.workdir.iterdir()) == ["counter"], f"{after}: a file appeared (a core?)"
        assert status_field(self.pid, "TracerPid") == "0", after
        wait_until(lambda: state(self.pid) == "S", what=f"the target to wait for input again after {after}")
        assert children_of(self.pid) == [], after


@pytest.fixture
def seccomp_target(spawn: Callable[..., Target], seccomp_exe: Path, tmp_path: Path) -> Callable[..., SeccompTarget]:
    def start(mode: str, *, uid: int | None = None) -> SeccompTarget:
        workdir = tmp_path / f"{mode}-{uid}"
        workdir.mkdir()
        (workdir / "counter").write_bytes(bytes(4096))
        argv = [str(seccomp_exe), mode, "counter"]
        if uid is not None:
            os.chown(workdir, uid, uid)
            os.chown(workdir / "counter", uid, uid)
            argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]
        target = spawn(["prlimit", "--core=unlimited", *argv], cwd=workdir)
        target.expect("ready")
        assert status_field(target.pid, "Seccomp") == ("1" if mode == "strict" else "2")
        return SeccompTarget(target, workdir)

    return start


@pytest.fixture
def sleeper_source() -> Iterator[subprocess.Popen[bytes]]:
    """A process to capture and hand to the seccomp target."""
    proc = subprocess.Popen(["sleep", "300"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("mode", MODES)
def test_a_process_under_seccomp_survives_every_command(
    mode: str, seccomp_target: Callable[..., SeccompTarget], sleeper_source: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    """Strict mode SIGKILLed the process on the first injected call; a filter killed the VA clone, or (ERRNO) let
    it run on in the program's code until it crashed and left a core in the program's name. Every command now
    runs with the checks suspended for its injected calls, and the clone never runs at all."""
    target = seccomp_target(mode)
    target.assert_unharmed("start")
    core = tmp_path / f"{mode}.core"
    for args in (
        ["capture", str(target.pid)],
        ["capture", str(target.pid), "--everything"],
        ["dump", str(target.pid), str(core)],
        ["dump", str(target.pid), str(core), "--clone-method", "copy", "--force"],
        ["dup", str(sleeper_source.pid), str(target.pid), "--dry-run"],
    ):
        result = run_cli(*args, "-q")
        assert result.returncode == 0, f"{args}: {result.stderr}"
        target.assert_unharmed(" ".join(args))
    pushed = run_cli("dup", str(sleeper_source.pid), str(target.pid), "-o", "json")
    assert pushed.returncode == 0, pushed.stderr
    fd = int(json.loads(pushed.stdout)["results"][0]["target"]["handle"])
    assert os.readlink(f"/proc/{target.pid}/fd/{fd}").startswith("/memfd:pss-snapshot")
    target.assert_unharmed("dup")
    freed = run_cli("free", str(target.pid), str(fd), "-q")
    assert freed.returncode == 0, freed.stderr
    assert not os.path.exists(f"/proc/{target.pid}/fd/{fd}")
    target.assert_unharmed("free")
    assert os.path.getsize(core) > 0


@pytest.mark.parametrize("mode", ["strict", "kill"])
def test_without_the_right_to_suspend_seccomp_every_injection_is_refused_before_anything_is_touched(
    mode: str, seccomp_target: Callable[..., SeccompTarget]
) -> None:
    """As `nobody` pss-dup may trace its own processes but not suspend their seccomp checks (CAP_SYS_ADMIN): every
    command that would inject says so with exit 7, the dry run says the same, and a plain capture still works."""
    target = seccomp_target(mode, uid=NOBODY)
    source = subprocess.Popen(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "sleep", "300"])
    out = Path(tempfile.mkdtemp(prefix="pss-dup-harm-"))  # tmp_path's parents are closed to nobody
    os.chown(out, NOBODY, NOBODY)
    try:
        wait_until(lambda: status_field(source.pid, "Uid").split()[0] == str(NOBODY), what="source as nobody")
        for args in (
            ["dump", str(target.pid), str(out / "x.core")],
            ["capture", str(target.pid), "--everything"],
            ["dup", str(source.pid), str(target.pid)],
            ["dup", str(source.pid), str(target.pid), "--dry-run"],
        ):
            result = run_cli(*args, "-q", uid=NOBODY)
            assert result.returncode == 7, f"{args}: {result.returncode} {result.stderr}"
            assert "seccomp" in result.stderr and "PTRACE_O_SUSPEND_SECCOMP" in result.stderr, result.stderr
            assert len(result.stderr.strip().splitlines()) == 1
            target.assert_unharmed(" ".join(args))
        assert list(out.iterdir()) == []
        result = run_cli("capture", str(target.pid), "-q", uid=NOBODY)
        assert result.returncode == 0, result.stderr
        target.assert_unharmed("capture")
    finally:
        source.kill()
        source.wait()
        shutil.rmtree(out)


# ---- signals that end pss-dup in the middle of a dump ------------------------------------------------------

#: Where in the dump the signal lands: as soon as the process is seen traced (the freeze, the clone's making),
#: and at offsets from the moment the clone exists (the copy, the release).
POINTS = (("traced", 0.0), ("traced", 0.002), ("clone", 0.0), ("clone", 0.05), ("clone", 0.25))


@pytest.fixture(scope="module")
def big_target() -> Iterator[subprocess.Popen[bytes]]:
    with big_process(512) as proc:
        yield proc


def _traced(pid: int) -> bool:
    try:
        return status_field(pid, "TracerPid") != "0"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGPIPE])
def test_a_signal_at_any_point_of_a_dump_ends_it_only_after_the_clone_is_reaped(
    signo: signal.Signals, big_target: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    """SIGTERM and SIGHUP used to kill pss-dup outright during the copy, leaving the clone as a zombie under the
    process until it exited (its own wait() cannot reap a clone made with exit signal 0)."""
    expected = 130 if signo == signal.SIGINT else 128 + signo
    outcomes = []
    for n, (anchor, delay) in enumerate(POINTS):
        path = tmp_path / f"{n}.core"
        tool = subprocess.Popen([PSS_DUP, "dump", str(big_target.pid), str(path), "-q"], stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 30
            while tool.poll() is None and time.monotonic() < deadline:
                if children_of(big_target.pid) if anchor == "clone" else _traced(big_target.pid):
                    break
                time.sleep(0.0005)
            time.sleep(delay)
            tool.send_signal(signo)
            _, err = tool.communicate(timeout=60)
        finally:
            if tool.poll() is None:
                tool.kill()
                tool.wait()
            if tool.stderr is not None:
                tool.stderr.close()
        outcomes.append((anchor, delay, tool.returncode))
        # -signo: the signal came while Python was already shutting down, every handler of ours done (CPython puts
        # SIG_DFL back at finalization): the checks below still say whether anything was left behind.
        assert tool.returncode in (expected, 0, -signo), f"{anchor}+{delay}: exit {tool.returncode}: {err.decode()}"
        if tool.returncode == expected:
            line = err.decode()
            assert line.count("\n") == 1 and ("restored" in line or "let go" in line), line
        if path.exists():  # the signal landed after the core was complete and linked under its name: it is whole
            assert elfcore.read_core(path.read_bytes()).snapshot.memory is not None
            path.unlink()
        assert children_of(big_target.pid) == [], f"{anchor}+{delay}: a clone was left under the process"
        assert status_field(big_target.pid, "TracerPid") == "0"
        assert state(big_target.pid) == "S"
        assert big_target.poll() is None
    assert any(code == expected for *_, code in outcomes), f"the signal never landed during a dump: {outcomes}"


def test_a_process_that_dies_while_held_is_said_to_have_been_killed_not_to_have_exited(
    spawn: Callable[..., Target],
) -> None:
    """When the kernel kills a process under pss-dup (strict seccomp used to), the message names the signal."""
    target = spawn(["sleep", "300"])
    wait_until(lambda: state(target.pid) == "S", what="sleep to sleep")
    freeze = FrozenProcess(target.pid, timeout=5, want_regs=False, want_fp=False, want_xstate=False)
    with pytest.raises(ProcessGone, match=r"was killed by SIGKILL") as caught, freeze:
        os.kill(target.pid, signal.SIGKILL)
        time.sleep(0.1)
    assert "exited" not in str(caught.value)

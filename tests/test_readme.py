"""Every example in README.md runs as written, against processes this test starts.

Console examples use fixed placeholders: 4242 is a process to capture, 5151 and 6161 are processes that receive
snapshots, 7 is the snapshot fd that 5151 holds, and `myapp` is a name two processes share. Each example gets a
fresh set of those processes, the placeholders are replaced by the real PIDs, fd and name, and the command must
succeed (exit 0).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pss_cli.errors import EXIT_CODE_HELP
from tests.conftest import PSS_DUP, TARGETS, reap, start_target

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


def fenced_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.M | re.S)


def console_examples() -> list[str]:
    return [line[2:] for block in fenced_blocks("console") for line in block.splitlines() if line.startswith("$ ")]


@dataclass
class World:
    """The processes the placeholders stand for."""

    source: int
    receivers: tuple[int, int]
    handle: int
    name: str

    def substitute(self, command: str) -> list[str]:
        words = shlex.split(command, comments=True)
        if words[0] == "sudo":
            words = words[1:]
        assert words[0] == "pss-dup", command
        mapping = {"4242": str(self.source), "5151": str(self.receivers[0]), "6161": str(self.receivers[1]),
                   "myapp": self.name}  # fmt: skip
        out = [PSS_DUP]
        for i, word in enumerate(words[1:], start=1):
            if word == "7" and (words[i - 1] in ("--handle", "5151") or words[i - 2 : i] == ["--from", "5151"]):
                out.append(str(self.handle))
            else:
                out.append(mapping.get(word, word))
        return out


def start_receiver() -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, str(TARGETS / "receiver.py")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout and proc.stdout.readline().strip() == "ready"
    return proc


def start_named(name: str) -> subprocess.Popen[bytes]:
    script = (
        "import ctypes,sys,time; ctypes.CDLL(None).prctl(15, sys.argv[1].encode(),0,0,0); "
        "print(1,flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, name], stdout=subprocess.PIPE)
    assert proc.stdout and proc.stdout.readline()
    return proc


@pytest.fixture
def world() -> Iterator[World]:
    source = start_target("2")
    receivers = (start_receiver(), start_receiver())
    name = f"myapp{os.getpid() % 100000}"
    named = [start_named(name) for _ in range(2)]
    try:
        result = subprocess.run([PSS_DUP, "dup", str(source.pid), str(receivers[0].pid), "-o", "json"],
                                capture_output=True, text=True, timeout=60)  # fmt: skip
        assert result.returncode == 0, result.stderr
        handle = json.loads(result.stdout)["results"][0]["target"]["handle"]
        yield World(source.pid, (receivers[0].pid, receivers[1].pid), handle, name)
    finally:
        processes: list[subprocess.Popen[Any]] = [source.proc, *receivers, *named]
        for proc in processes:
            reap(proc)


@pytest.mark.parametrize("command", console_examples())
def test_console_example_runs(command: str, world: World, tmp_path: Path) -> None:
    argv = world.substitute(command)
    if "--force" in argv:  # the example replaces an existing file: make sure there is one
        for word in argv:
            if word.endswith(".core"):
                (tmp_path / word).write_bytes(b"old")
    result = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, f"{command}\n{result.stderr}"
    assert result.stdout
    if "dump" in argv:  # a core, or a compressed one (a zstd frame)
        cores = list(tmp_path.glob("*.core")) + list(tmp_path.glob("*.core.zst"))
        assert cores and all(c.stat().st_mode & 0o777 == 0o600 for c in cores)
        assert all(c.read_bytes()[:4] == (b"\x28\xb5\x2f\xfd" if c.suffix == ".zst" else b"\x7fELF") for c in cores)


def test_readme_examples_cover_every_command() -> None:
    commands = {shlex.split(c, comments=True)[1 if c.startswith("sudo") else 0 :][1] for c in console_examples()}
    listed = set(
        subprocess.run([PSS_DUP, "--help"], capture_output=True, text=True).stdout.split("Commands:")[1].split()
    )
    for command in ("capture", "dup", "inspect", "free", "dump", "ps", "doctor", "completion"):
        assert command in commands and command in listed


def test_receiver_api_example_runs_in_a_receiving_process(world: World) -> None:
    (snippet,) = [b for b in fenced_blocks("python") if "open_snapshot(7)" in b]
    # The receiver waits for the fd number that `dup` reports, then runs the README's code with it.
    code = "import sys\nhandle = int(sys.stdin.readline())\n" + snippet.replace(
        "open_snapshot(7)", "open_snapshot(handle)"
    )
    receiver = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        result = subprocess.run([PSS_DUP, "dup", str(world.source), str(receiver.pid), "-o", "json"],
                                capture_output=True, text=True, timeout=60)  # fmt: skip
        assert result.returncode == 0, result.stderr
        fd = json.loads(result.stdout)["results"][0]["target"]["handle"]
        out, err = receiver.communicate(f"{fd}\n", timeout=60)
        assert receiver.returncode == 0, err
        first = out.splitlines()[0]
        assert first.startswith(f"python {world.source} ") and first.endswith(" threads")
        assert any(
            line.split()[:2] == ["0", "device"] or line.split()[:2] == ["0", "pipe"] for line in out.splitlines()
        )
    finally:
        reap(receiver)


def apt_get_prefix(command: str) -> tuple[list[str], str]:
    """The packages that a README command installs first (`apt-get update -qq && apt-get install -y -qq PKG...`)
    and the rest of it, which must not call apt-get again."""
    update, install, *rest = command.split(" && ")
    assert update == "apt-get update -qq", command
    assert install.startswith("apt-get install -y -qq "), command
    assert rest and not any("apt-get" in step for step in rest), command
    return install.split()[4:], " && ".join(rest)


def test_fresh_machine_main_job_command_works(tmp_path: Path) -> None:
    """The command as written, except its apt-get steps: the suite must not install packages on the host. Their
    text is checked instead: they install what the rest needs (python3 -m venv)."""
    (command,) = [b.strip() for b in fenced_blocks("bash") if "pss-dup doctor" in b]
    packages, command = apt_get_prefix(command)
    assert command.startswith("python3 -m venv .venv && ") and "python3-venv" in packages
    checkout = tmp_path / "checkout"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, checkout / name)
    result = subprocess.run(["bash", "-c", command], cwd=checkout, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "pass" in result.stdout.lower()


def test_exit_code_table_is_the_one_errors_py_defines() -> None:
    """README's table and `pss-dup --help` both come from errors.EXIT_CODE_HELP (backticks aside)."""
    section = README.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| (.+) \|$", section, flags=re.M)
    assert [(int(code), text.replace("`", "")) for code, text in rows] == [
        (int(code), text) for code, text in EXIT_CODE_HELP.items()
    ]

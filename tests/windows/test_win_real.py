"""The Windows backend against the real kernel32 on real processes. Runs only on Windows (the CI's windows-latest job);
skipped everywhere else. Never run on the machine this was written on, which has no Windows.

Each target is a Python child this test starts and always kills; nothing else is captured or touched.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pss_cli import errors
from pss_cli.model import DEFAULT_CAPTURE, CaptureFlags, HandleType
from pss_cli.platform.windows.backend import WindowsBackend, enable_debug_privilege

pytestmark = pytest.mark.skipif(sys.platform != "win32", reason="needs Windows: drives the real PSS API")

SLEEPER = "import sys, threading, time; [threading.Thread(target=time.sleep, args=(120,), daemon=True).start() for _ in range(3)]; f = open(sys.executable, 'rb'); print('ready', flush=True); time.sleep(120)"  # noqa: E501

RECEIVER = """
import json, sys
from pss_cli.platform.windows.backend import WindowsBackend
backend = WindowsBackend()
print("ready", flush=True)
for line in sys.stdin:
    command, _, value = line.strip().partition(" ")
    if command == "open":
        model = backend.open_snapshot(int(value, 0))
        threads = len(model.threads) if model.threads is not None else None
        print(json.dumps({"pid": model.process.pid, "name": model.process.name, "threads": threads}), flush=True)
    elif command == "free":
        backend.free(__import__("os").getpid(), int(value, 0), dry_run=False, force=False, timeout=5)
        print(json.dumps({"freed": value}), flush=True)
    else:
        break
"""


def _start(code: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, encoding="utf-8"
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


@pytest.fixture
def target() -> Iterator[subprocess.Popen[str]]:
    proc = _start(SLEEPER)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=30)


@pytest.fixture
def receiver() -> Iterator[subprocess.Popen[str]]:
    proc = _start(RECEIVER)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=30)


def _ask(proc: subprocess.Popen[str], line: str) -> dict[str, object]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()
    answer: dict[str, object] = json.loads(proc.stdout.readline())
    return answer


def test_capture_of_a_real_child_finds_its_threads_handles_and_memory(target: subprocess.Popen[str]) -> None:
    backend = WindowsBackend()
    with backend.capture(target.pid, DEFAULT_CAPTURE, timeout=30) as snap:
        model = snap.model
    assert model.process.pid == target.pid
    assert model.process.name.lower().startswith("python")
    assert model.threads is not None and len(model.threads) >= 4
    contexts = [t.context for t in model.threads if t.context is not None]
    assert contexts and all(c.register("rip") for c in contexts)
    assert model.handles is not None
    files = [h for h in model.handles if h.type is HandleType.FILE and h.name]
    assert any(h.name and h.name.lower().endswith(Path(sys.executable).name.lower()) for h in files)
    assert model.va_space is not None and any(r.mapped_file for r in model.va_space)
    assert target.poll() is None, "the child still runs"


def test_va_clone_capture_reports_the_clone(target: subprocess.Popen[str]) -> None:
    with WindowsBackend().capture(target.pid, CaptureFlags.VA_CLONE | CaptureFlags.VA_SPACE, timeout=30) as snap:
        assert snap.model.memory is not None and snap.model.memory.clone_pid


def test_dup_into_a_receiver_which_opens_it_with_the_receiver_api(
    target: subprocess.Popen[str], receiver: subprocess.Popen[str]
) -> None:
    backend = WindowsBackend()
    with backend.capture(target.pid, CaptureFlags.THREADS | CaptureFlags.HANDLES, timeout=30) as snap:
        result = backend.duplicate(
            snap, target.pid, None, receiver.pid, close_source=False, inherit=False, dry_run=False, force=False,
            timeout=30,
        )  # fmt: skip
    assert result.target_handle
    seen = _ask(receiver, f"open {result.target_handle:#x}")
    assert seen["pid"] == target.pid and isinstance(seen["threads"], int) and seen["threads"] >= 4
    assert _ask(receiver, f"free {result.target_handle:#x}")["freed"]


def test_inspect_and_remote_free_of_a_snapshot_another_process_holds(
    target: subprocess.Popen[str], receiver: subprocess.Popen[str]
) -> None:
    backend = WindowsBackend()
    snap = backend.capture(target.pid, CaptureFlags.THREADS, timeout=30)
    result = backend.duplicate(
        snap, target.pid, None, receiver.pid, close_source=True, inherit=False, dry_run=False, force=False, timeout=30
    )
    assert snap.freed
    assert result.target_handle is not None
    model = backend.inspect(receiver.pid, result.target_handle, timeout=30)
    assert model.process.pid == target.pid
    freed = backend.free(receiver.pid, result.target_handle, dry_run=False, force=False, timeout=30)
    assert not freed.dry_run


def test_a_foreign_address_is_refused_without_calling_pss() -> None:
    with pytest.raises(errors.BadSnapshot):
        WindowsBackend().open_snapshot(0x10)


def test_dump_writes_a_minidump(target: subprocess.Popen[str], tmp_path: Path) -> None:
    out = tmp_path / "child.dmp"
    start = time.monotonic()
    model = WindowsBackend().dump(target.pid, out, force=False, timeout=60)
    assert out.read_bytes()[:4] == b"MDMP"
    assert model.memory is not None and model.memory.bytes_captured == out.stat().st_size
    assert time.monotonic() - start < 60
    with pytest.raises(errors.OutputExists):
        WindowsBackend().dump(target.pid, out, force=False, timeout=60)


def test_enable_debug_privilege_answers() -> None:
    assert isinstance(enable_debug_privilege(), bool)

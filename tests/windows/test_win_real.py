"""The Windows backend against the real kernel32 on real processes. The PSS tests run only on Windows (the CI's
windows-latest job) and are skipped everywhere else; they have never run: the machines this was written on have no
Windows.

Each target is a Python child this module starts and always reaps (tests.conftest.reap: killed, waited for, its
pipes closed); nothing else is captured or touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pss_cli import errors
from pss_cli.model import DEFAULT_CAPTURE, CaptureFlags, HandleType
from pss_cli.platform.windows.backend import WindowsBackend, enable_debug_privilege
from tests.conftest import reap

windows_only = pytest.mark.skipif(sys.platform != "win32", reason="needs Windows: drives the real PSS API")

#: Four threads, and a named event: PSS names handles of most types, never those of type File.
SLEEPER = """
import ctypes, os, threading, time
kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
kernel32.CreateEventW.restype = ctypes.c_void_p
kernel32.CreateEventW.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_wchar_p)
event = kernel32.CreateEventW(None, 1, 0, f"pss-dup-test-{os.getpid()}")
assert event, ctypes.get_last_error()
for _ in range(3):
    threading.Thread(target=time.sleep, args=(120,), daemon=True).start()
print("ready", flush=True)
time.sleep(120)
"""

RECEIVER = """
import json, os, sys
from pss_cli.errors import PssError
from pss_cli.platform.windows.backend import WindowsBackend
backend = WindowsBackend()
print("ready", flush=True)
for line in sys.stdin:
    command, _, value = line.strip().partition(" ")
    try:
        if command == "open":
            model = backend.open_snapshot(int(value, 0))
            threads = len(model.threads) if model.threads is not None else None
            answer = {"pid": model.process.pid, "name": model.process.name, "threads": threads}
        elif command == "free":
            backend.free(os.getpid(), int(value, 0), dry_run=False, force=False, timeout=5)
            answer = {"freed": value}
        else:
            break
    except PssError as exc:
        answer = {"error": int(exc.exit_code), "message": str(exc)}
    print(json.dumps(answer), flush=True)
"""

IDENTITY = "import json, os, sys, pss_cli; print(json.dumps([os.getpid(), sys.prefix, pss_cli.__file__]), flush=True)"


def python_command() -> tuple[str, dict[str, str]]:
    """The interpreter to start, and its environment, so that the child is the interpreter itself.

    In a venv on Windows, sys.executable is the venv's launcher, which starts the base interpreter as its own child:
    Popen(...).pid would be the launcher's, the process captured or duplicated into would be the wrong one, and
    killing it would leave the interpreter running. CPython's multiprocessing (bpo-35797) starts
    sys._base_executable instead, with __PYVENV_LAUNCHER__ naming the venv's python so that the child still uses the
    venv's packages; so does this."""
    env = dict(os.environ)
    if sys.platform == "win32" and sys.prefix != sys.base_prefix:
        env["__PYVENV_LAUNCHER__"] = sys.executable
        return sys._base_executable, env  # type: ignore[attr-defined]
    return sys.executable, env


def _start(code: str, *, cwd: Path | None = None, ready: bool = True) -> subprocess.Popen[str]:
    """A Python child running `code`; with `ready`, once it has printed "ready". The caller reaps it."""
    executable, env = python_command()
    proc = subprocess.Popen(
        [executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        env=env,
        cwd=cwd,
    )
    if ready:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if line != "ready":
            reap(proc)
            raise RuntimeError(f"the child did not start: {line!r}")
    return proc


def _running(code: str) -> Iterator[subprocess.Popen[str]]:
    proc = _start(code)
    try:
        yield proc
    finally:
        reap(proc)


@pytest.fixture
def target() -> Iterator[subprocess.Popen[str]]:
    yield from _running(SLEEPER)


@pytest.fixture
def receiver() -> Iterator[subprocess.Popen[str]]:
    yield from _running(RECEIVER)


@pytest.fixture
def another_receiver() -> Iterator[subprocess.Popen[str]]:
    yield from _running(RECEIVER)


def _ask(proc: subprocess.Popen[str], line: str) -> dict[str, object]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()
    answer: dict[str, object] = json.loads(proc.stdout.readline())
    return answer


def test_the_child_is_the_interpreter_itself_and_uses_this_environment(tmp_path: Path) -> None:
    """Runs everywhere; on Windows in a venv it fails if the child is started through the venv's launcher."""
    import pss_cli

    proc = _start(IDENTITY, cwd=tmp_path, ready=False)  # not the checkout: pss_cli must come from the environment
    try:
        assert proc.stdout is not None
        pid, prefix, module = json.loads(proc.stdout.readline())
        assert pid == proc.pid, "Popen.pid is not the interpreter (a launcher started it as a child)"
        assert os.path.normcase(prefix) == os.path.normcase(sys.prefix)
        assert Path(module).resolve() == Path(pss_cli.__file__).resolve()
    finally:
        reap(proc)


@windows_only
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
    events = [h.name for h in model.handles if h.type is HandleType.EVENT and h.name]
    assert any(name.endswith(f"\\pss-dup-test-{target.pid}") for name in events), events
    files = [h for h in model.handles if h.type is HandleType.FILE]
    assert files and all(h.name is None for h in files), "PSS never names a handle of type File"
    assert model.va_space is not None and any(r.mapped_file for r in model.va_space)
    assert target.poll() is None, "the child still runs"


@windows_only
def test_va_clone_capture_reports_the_clone(target: subprocess.Popen[str]) -> None:
    with WindowsBackend().capture(target.pid, CaptureFlags.VA_CLONE | CaptureFlags.VA_SPACE, timeout=30) as snap:
        assert snap.model.memory is not None and snap.model.memory.clone_pid


@windows_only
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


@windows_only
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
    gone = _ask(receiver, f"open {result.target_handle:#x}")
    assert gone["error"] == 8, gone


@windows_only
def test_dup_close_source_from_a_holder_frees_it_there(
    target: subprocess.Popen[str], receiver: subprocess.Popen[str], another_receiver: subprocess.Popen[str]
) -> None:
    backend = WindowsBackend()
    with backend.capture(target.pid, CaptureFlags.THREADS, timeout=30) as snap:
        handed = backend.duplicate(
            snap, target.pid, None, receiver.pid, close_source=False, inherit=False, dry_run=False, force=False,
            timeout=30,
        )  # fmt: skip
    assert handed.target_handle is not None
    moved = backend.duplicate(
        None, receiver.pid, handed.target_handle, another_receiver.pid, close_source=True, inherit=False,
        dry_run=False, force=False, timeout=30,
    )  # fmt: skip
    assert moved.source_closed and moved.target_handle is not None
    assert _ask(receiver, f"open {handed.target_handle:#x}")["error"] == 8, "freed whole in the first holder"
    assert _ask(another_receiver, f"open {moved.target_handle:#x}")["pid"] == target.pid
    assert _ask(another_receiver, f"free {moved.target_handle:#x}")["freed"]


@windows_only
def test_a_foreign_address_is_refused_without_calling_pss() -> None:
    with pytest.raises(errors.BadSnapshot):
        WindowsBackend().open_snapshot(0x10)


@windows_only
def test_dump_writes_a_minidump(target: subprocess.Popen[str], tmp_path: Path) -> None:
    out = tmp_path / "child.dmp"
    start = time.monotonic()
    model = WindowsBackend().dump(target.pid, out, force=False, timeout=60)
    assert out.read_bytes()[:4] == b"MDMP"
    assert model.memory is not None and 0 < model.memory.bytes_captured < out.stat().st_size
    assert time.monotonic() - start < 60
    with pytest.raises(errors.OutputExists):
        WindowsBackend().dump(target.pid, out, force=False, timeout=60)


@windows_only
def test_enable_debug_privilege_answers() -> None:
    assert isinstance(enable_debug_privilege(), bool)

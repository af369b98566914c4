"""Capture benchmark: pss-dup's capture beside psutil gathering the same facts, on targets this script starts.

Targets: 1,000 threads; 10,000 fds; 20,000 mappings. For each: pss-dup capture time and how long the target was
stopped (median of N runs), beside psutil's threads(), open_files() and memory_maps(). Then `pss-dup --version`
beside `python -c pass`. Goals (issue 2): 1,000-thread target stopped < 50 ms; handle capture of the 10,000-fd
target no slower than psutil's open_files() alone; --version at most 3x `python -c pass`.

Run as root: `.venv/bin/python bench/bench_capture.py [--runs N]`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

import pss_cli
from pss_cli.model import CaptureFlags

THREADS_TARGET = """
import threading, sys
stop = threading.Event()
for _ in range(1000):
    threading.Thread(target=stop.wait, daemon=True).start()
print("ready", flush=True); sys.stdin.read()
"""

FDS_TARGET = """
import os, resource, sys
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
paths = [f"/proc/self/{n}" for n in ("stat", "status", "cmdline", "environ")]
fds = [os.open(paths[i % len(paths)], os.O_RDONLY) for i in range(10000)]
print("ready", flush=True); sys.stdin.read()
"""

MAPS_TARGET = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
for i in range(20000):
    # Alternating protections keep neighbouring anonymous mappings from merging into one VMA.
    assert libc.mmap(None, 4096, 1 if i % 2 else 3, 0x22, -1, 0) not in (None, 2**64 - 1)
print("ready", flush=True); sys.stdin.read()
"""


def start(code: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout and proc.stdout.readline().strip() == "ready"
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait()


def timed(func: Callable[[], object], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        func()
        times.append((time.perf_counter() - t) * 1000)
    return times


def capture_runs(pid: int, flags: CaptureFlags, runs: int) -> tuple[list[float], list[float], list[float]]:
    """Total capture time, time stopped, and the time spent on the fd table alone (0 when not captured)."""
    totals, stopped, handles = [], [], []
    for _ in range(runs):
        t = time.perf_counter()
        snap = pss_cli.capture(pid, flags, timeout=30)
        totals.append((time.perf_counter() - t) * 1000)
        stopped.append(snap.performance.stopped_ms or 0.0)
        handles.append(snap.performance.handles_ms or 0.0)
    return totals, stopped, handles


def line(label: str, values: list[float]) -> str:
    return f"  {label:<44} median {statistics.median(values):9.2f} ms   max {max(values):9.2f} ms"


def case(
    title: str,
    code: str,
    flags: CaptureFlags,
    psutil_label: str,
    peer_call: Callable[[psutil.Process], object],
    runs: int,
) -> None:
    proc = start(code)
    try:
        p = psutil.Process(proc.pid)
        peer: list[float] = []
        totals: list[float] = []
        stopped: list[float] = []
        handles: list[float] = []
        for _ in range(runs):  # interleaved, so that machine noise falls on both sides alike
            t, s, h = capture_runs(proc.pid, flags, 1)
            totals += t
            stopped += s
            handles += h
            peer += timed(lambda: peer_call(p), 1)
        print(f"{title}  (pid {proc.pid}, flags {flags!r})")
        print(line("pss-dup capture, total", totals))
        print(line("pss-dup capture, target stopped", stopped))
        if flags & CaptureFlags.HANDLES:
            print(line("pss-dup capture, fd table part", handles))
        print(line(f"psutil {psutil_label}", peer))
        print(f"  ratio capture total/psutil: {statistics.median(totals) / statistics.median(peer):.2f}")
        if flags & CaptureFlags.HANDLES:
            print(f"  ratio fd table part/psutil: {statistics.median(handles) / statistics.median(peer):.2f}")
    finally:
        stop(proc)


def version_ratio(runs: int) -> None:
    exe = str(Path(sys.executable).with_name("pss-dup"))
    base = timed(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True), runs)
    ours = timed(lambda: subprocess.run([exe, "--version"], check=True, capture_output=True), runs)
    print("startup")
    print(line("python -c pass", base))
    print(line("pss-dup --version", ours))
    print(f"  ratio: {statistics.median(ours) / statistics.median(base):.2f} (goal <= 3)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    runs = parser.parse_args().runs
    threads = CaptureFlags.THREADS | CaptureFlags.THREAD_CONTEXT
    handles = (
        CaptureFlags.HANDLES
        | CaptureFlags.HANDLE_NAME_INFORMATION
        | CaptureFlags.HANDLE_BASIC_INFORMATION
        | CaptureFlags.HANDLE_TYPE_SPECIFIC_INFORMATION
    )
    va = CaptureFlags.VA_SPACE | CaptureFlags.VA_SPACE_SECTION_INFORMATION
    case(
        "1,000 threads (goal: stopped < 50 ms)",
        THREADS_TARGET,
        threads,
        "Process.threads()",
        psutil.Process.threads,
        runs,
    )
    case(
        "1,000 threads, default capture",
        THREADS_TARGET,
        pss_cli.DEFAULT_CAPTURE,
        "Process.threads()",
        psutil.Process.threads,
        runs,
    )
    case("10,000 fds (goal: ratio <= 1)", FDS_TARGET, handles, "Process.open_files()", psutil.Process.open_files, runs)
    case(
        "20,000 mappings",
        MAPS_TARGET,
        va,
        "Process.memory_maps(grouped=False)",
        lambda p: p.memory_maps(grouped=False),
        runs,
    )
    version_ratio(runs)


if __name__ == "__main__":
    main()

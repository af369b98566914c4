"""How long pss-dup keeps a target stopped: per push_fd (the Linux duplicate) and per freeze of 1,000 threads.

Run as root from the repository: `python bench/bench_dup_stop.py [--runs 200] [--freezes 20]`. It starts its own
targets (tests/linux/targets), prints the figures beside the goals, and kills and reaps the targets at the end.
Goals: push_fd stop median < 1 ms and p99 < 5 ms; a 1,000-thread process frozen (registers read) < 50 ms.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pss_cli.platform.linux.freeze import FrozenProcess  # noqa: E402
from pss_cli.platform.linux.inject import close_remote_fd, push_fd  # noqa: E402

TARGETS = REPO / "tests" / "linux" / "targets"
F_ADD_SEALS, ALL_SEALS = 1033, 0xF


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def row(name: str, values: list[float], goal: str) -> str:
    return (
        f"{name:<34} n={len(values):<4} median {statistics.median(values):7.3f}  p90 {percentile(values, 0.9):7.3f}  "
        f"p99 {percentile(values, 0.99):7.3f}  min {min(values):7.3f}  max {max(values):8.3f} ms   goal: {goal}"
    )


def wait_line(proc: subprocess.Popen[bytes], prefix: bytes) -> None:
    assert proc.stdout is not None
    while not proc.stdout.readline().startswith(prefix):
        pass


def bench_push(runs: int) -> tuple[list[float], list[float]]:
    target = subprocess.Popen(
        [sys.executable, str(TARGETS / "blocker.py"), "read"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    memfd = os.memfd_create("pss-bench", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        wait_line(target, b'{"event": "ready"')
        os.write(memfd, b"pss-dup bench payload")
        fcntl.fcntl(memfd, F_ADD_SEALS, ALL_SEALS)
        time.sleep(0.1)
        for _ in range(10):  # warm-up: first-call costs of ctypes, imports, page faults
            close_remote_fd(target.pid, push_fd(target.pid, memfd, cloexec=True, force=False, timeout=5).fd,
                            verify=lambda _fd: None, force=False, timeout=5)  # fmt: skip
        pushes, closes = [], []
        for _ in range(runs):
            pushed = push_fd(target.pid, memfd, cloexec=True, force=False, timeout=5)
            pushes.append(pushed.stopped_ms)
            closes.append(
                close_remote_fd(target.pid, pushed.fd, verify=lambda _fd: None, force=False, timeout=5).stopped_ms
            )
        return pushes, closes
    finally:
        os.close(memfd)
        target.kill()
        target.wait()


def bench_freeze(freezes: int) -> tuple[list[float], list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "threads"
        subprocess.run(["gcc", "-O2", "-pthread", "-o", str(exe), str(TARGETS / "threads.c")], check=True)
        target = subprocess.Popen([str(exe), "threads", "1000"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            wait_line(target, b"ready")
            while len(os.listdir(f"/proc/{target.pid}/task")) < 1001:
                time.sleep(0.01)
            plain, full = [], []
            for _ in range(freezes):
                with FrozenProcess(target.pid, timeout=5, want_regs=False, want_fp=False, want_xstate=False) as f:
                    assert len(f.tids) == 1001
                assert f.stopped_ms is not None
                plain.append(f.stopped_ms)
                with FrozenProcess(target.pid, timeout=5, want_regs=True, want_fp=True, want_xstate=False) as f:
                    assert len(f.regs) == 1001
                assert f.stopped_ms is not None
                full.append(f.stopped_ms)
            return plain, full
        finally:
            target.kill()
            target.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="push_fd runs (default 200)")
    parser.add_argument("--freezes", type=int, default=20, help="freezes of the 1,000-thread target (default 20)")
    args = parser.parse_args()
    if os.geteuid() != 0 or platform.machine() != "x86_64":
        raise SystemExit("run as root on x86_64 Linux")
    print(f"{platform.node()}: Linux {platform.release()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    pushes, closes = bench_push(args.runs)
    print(row("push_fd: target stopped", pushes, "median < 1 ms, p99 < 5 ms"))
    print(row("close_remote_fd: target stopped", closes, "(free; no goal set)"))
    plain, full = bench_freeze(args.freezes)
    print(row("freeze 1,000 threads, no registers", plain, "< 50 ms"))
    print(row("freeze 1,000 threads, GPR+FP+mask", full, "< 50 ms"))
    ok = statistics.median(pushes) < 1 and percentile(pushes, 0.99) < 5 and statistics.median(full) < 50
    print("goals met" if ok else "goals NOT met")


if __name__ == "__main__":
    main()

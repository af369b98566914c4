"""What watching costs, and how fast `pss-dup watch` reacts.

Run as root from the repository: `python bench/bench_watch.py [--window 15] [--runs 5]`. It starts its own targets
(sleep processes, and tests/linux/targets/watch_target.c compiled here), prints the figures beside the goals, and
kills and reaps every target at the end.
- Cost: the watcher's own CPU (utime + stime from /proc, start-up excluded) for 100 processes at --poll 1 (goal
  <= 2 % of one core), with the cheap triggers and with --fds and --hang too (which read the fd table and every
  thread), and for one process at --poll 0.1.
- Reaction: from the moment the target starts spinning (it writes the time) to the clone stop of the dump
  (`captured_at` in the action event); goal <= --poll + --for + 100 ms.
- Cost of an attached watch (--on-crash): how much slower a target runs that takes 10,000 handled signals a second
  (tests/linux/targets/signal_target.c, storm mode), watched against unwatched (goal <= 2x); and the watcher's CPU
  for one idle attached process at --poll 0.1.
- Stop of an attached dump: stopped_ms of the `--on-signal USR1` dump of a 1 GiB target (signal_target.c, big
  mode), with the VA clone made on the watch's tracer against the frozen copy (--clone-method copy).
The machine may be shared: every figure is the median of --runs runs, and the load is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PSS_DUP = str(Path(sys.executable).with_name("pss-dup"))
TARGET_C = REPO / "tests" / "linux" / "targets" / "watch_target.c"
SIGNAL_C = REPO / "tests" / "linux" / "targets" / "signal_target.c"
STORM_SIGNALS = 10_000
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def reap(procs: list[subprocess.Popen[Any]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def watcher_cpu(pids: list[int], options: list[str], window: float) -> float:
    """% of one core the watcher used over `window` seconds, after its first second (start-up: imports)."""
    argv = [PSS_DUP, "watch", *map(str, pids), *options, "--duration", str(window + 5), "-o", "jsonl"]
    watcher = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2)
        before, at = cpu_seconds(watcher.pid), time.monotonic()
        time.sleep(window)
        used, spent = cpu_seconds(watcher.pid) - before, time.monotonic() - at
    finally:
        reap([watcher])
    return 100 * used / spent


def reaction(exe: Path, poll: float, for_seconds: float, runs: int, cpu: float) -> list[tuple[float, float]]:
    """(seconds from the spin's start to the clone stop, stopped ms) per run."""
    found = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            stamp = Path(tmp) / "stamp"
            target = subprocess.Popen([str(exe), "spin", "1200", str(stamp)], stdout=subprocess.DEVNULL)
            try:
                argv = [
                    PSS_DUP,
                    "watch",
                    str(target.pid),
                    "--cpu",
                    str(cpu),
                    "--for",
                    str(for_seconds),
                    "--poll",
                    str(poll),
                    "--dump",
                    tmp,
                    "--duration",
                    "20",
                    "-o",
                    "jsonl",
                ]
                out = subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout
            finally:
                reap([target])
            (action,) = [e for e in map(json.loads, out.splitlines()) if e["event"] == "action"]
            found.append((action["captured_at"] - float(stamp.read_text()), action["stopped_ms"]))
    return found


def storm_seconds(exe: Path, turns: int, watch: list[str] | None) -> float:
    """How long the target takes to raise and handle STORM_SIGNALS signals, each after `turns` turns of work; with
    `watch`, under `pss-dup watch PID *watch` (attached before the storm starts)."""
    target = subprocess.Popen(
        [str(exe), "storm", str(STORM_SIGNALS), str(turns)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    procs: list[subprocess.Popen[bytes]] = [target]
    try:
        assert target.stdout is not None and target.stdin is not None
        target.stdout.readline()  # ready
        if watch is not None:
            w = subprocess.Popen([PSS_DUP, "watch", str(target.pid), *watch, "-o", "jsonl"], stdout=subprocess.PIPE)
            procs.append(w)
            assert w.stdout is not None
            w.stdout.readline()  # started: attached
        target.stdin.write(b"go\n")
        target.stdin.flush()
        took, handled = target.stdout.readline().split()[1:3]
        assert int(handled) == STORM_SIGNALS, handled
        return float(took)
    finally:
        reap(procs)


def signal_dump_stop(exe: Path, method: str, runs: int) -> list[float]:
    """stopped_ms of `watch --on-signal USR1 --dump` of a 1 GiB target, one per run, with `method`."""
    stops = []
    target = subprocess.Popen([str(exe), "big", "1024"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert target.stdin is not None and target.stdout is not None
        target.stdout.readline()  # ready
        for _ in range(runs):
            with tempfile.TemporaryDirectory() as tmp:
                argv = [PSS_DUP, "watch", str(target.pid), "--on-signal", "USR1", "--dump", tmp]
                w = subprocess.Popen(
                    [*argv, "--clone-method", method, "-o", "jsonl"], stdout=subprocess.PIPE, text=True
                )
                assert w.stdout is not None
                w.stdout.readline()  # started: attached
                target.stdin.write("usr1\n")
                target.stdin.flush()
                target.stdout.readline()  # handled
                events = [json.loads(line) for line in w.stdout]
                w.wait(timeout=60)
                (action,) = [e for e in events if e["event"] == "action"]
                stops.append(action["stopped_ms"])
    finally:
        reap([target])
    return stops


def attached_dump_stop(runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "signal_target"
        subprocess.run(["gcc", "-O1", "-pthread", "-o", str(exe), str(SIGNAL_C)], check=True, timeout=120)
        clone = signal_dump_stop(exe, "clone", runs)
        copy = signal_dump_stop(exe, "copy", runs)
    print(
        f"attached     --on-signal USR1 dump of 1 GiB: stopped median {statistics.median(clone):.1f} ms with the clone,"
        f" {statistics.median(copy):.1f} ms with the frozen copy; load {os.getloadavg()[0]:.2f}"
    )


def attached_cost(runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "signal_target"
        subprocess.run(["gcc", "-O1", "-pthread", "-o", str(exe), str(SIGNAL_C)], check=True, timeout=120)
        turns = 20_000
        for _ in range(8):  # calibrate: the work between two signals takes ~100 us untraced (10,000 a second)
            took = storm_seconds(exe, turns, None)
            if 0.8 <= took <= 1.25:
                break
            turns = max(1000, int(turns / took))
        plain: list[float] = []
        watched: list[float] = []
        for _ in range(runs):  # alternated, so that a change of load on a shared machine hits both alike
            plain.append(storm_seconds(exe, turns, None))
            watched.append(storm_seconds(exe, turns, ["--on-crash"]))
        ratio = statistics.median(watched) / statistics.median(plain)
        print(
            f"attached     {STORM_SIGNALS} handled signals: unwatched median {statistics.median(plain):.3f} s "
            f"({STORM_SIGNALS / statistics.median(plain):,.0f}/s), --on-crash median {statistics.median(watched):.3f} s"
            f" -> {ratio:.2f}x (goal <= 2x); load {os.getloadavg()[0]:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=15.0, help="seconds over which the watcher's CPU is measured")
    parser.add_argument("--runs", type=int, default=5, help="reaction runs per setting")
    parser.add_argument(
        "--cpu",
        type=float,
        default=20.0,
        help="--cpu threshold for the reaction runs (low: a spinning thread may get a fraction of a "
        "core on a shared machine)",
    )
    parser.add_argument("--only-attached", action="store_true", help="only the attached watch's cost and dump stop")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; pss-dup {PSS_DUP}")
    attached_cost(args.runs)
    attached_dump_stop(args.runs)
    if args.only_attached:
        return
    sleepers = [subprocess.Popen(["sleep", "600"]) for _ in range(100)]
    try:
        pids = [p.pid for p in sleepers]
        cheap = ["--cpu", "90", "--memory", "10G", "--threads", "1000"]
        full = [*cheap, "--fds", "100000", "--hang", "3600"]
        figures = [
            ("100 processes, --poll 1, cpu/memory/threads", watcher_cpu(pids, [*cheap, "--poll", "1"], args.window)),
            ("100 processes, --poll 1, + --fds --hang", watcher_cpu(pids, [*full, "--poll", "1"], args.window)),
            (
                "1 process, --poll 0.1, cpu/memory/threads",
                watcher_cpu(pids[:1], [*cheap, "--poll", "0.1"], args.window),
            ),
            ("1 process, --poll 0.1, + --fds --hang", watcher_cpu(pids[:1], [*full, "--poll", "0.1"], args.window)),
            (
                "1 process, --poll 0.1, --on-crash (attached)",
                watcher_cpu(pids[:1], ["--on-crash", "--poll", "0.1"], args.window),
            ),
        ]
    finally:
        reap(sleepers)
    for name, percent in figures:
        goal = "goal <= 2 %" if "100 processes" in name else ""
        print(f"watcher CPU  {name:<46} {percent:6.2f} % of one core   {goal}")
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "watch_target"
        subprocess.run(["gcc", "-O1", "-pthread", "-o", str(exe), str(TARGET_C)], check=True, timeout=120)
        for poll, for_seconds in ((1.0, 1.0), (0.1, 0.0), (0.1, 0.5)):
            runs = reaction(exe, poll, for_seconds, args.runs, args.cpu)
            delays = [r[0] * 1000 for r in runs]
            stops = [r[1] for r in runs]
            print(
                f"reaction     --poll {poll} --for {for_seconds}: spin start -> clone stop median "
                f"{statistics.median(delays):6.0f} ms, max {max(delays):6.0f} ms (goal <= "
                f"{(poll + for_seconds) * 1000 + 100:.0f} ms); stopped median {statistics.median(stops):.1f} ms"
            )


if __name__ == "__main__":
    main()

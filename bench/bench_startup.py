"""Start-up benchmark: pss-dup as a script calls it in a loop, beside the native tool that answers the same question.

Pairs, each run end to end as a child process, interleaved (one of each per round, so machine noise falls on both
sides alike), reported as medians:

    pss-dup capture PID --handles -o json   beside   lsof -p PID     (goal: ratio <= 3)
    pss-dup ps -o json                      beside   ps aux          (goal: ratio <= 8)

PID is a process this script starts (a Python interpreter waiting on stdin) and ends. Each pair also times the same
work done through the library in one interpreter (what the command line adds to it is the difference). Then the
floors a run pays before pss-dup does anything, timed the same way: the interpreter alone; the console script's
imports up to the command's callback on the quick path (pss_cli.cli.quick, no click); psutil, which `ps` loads; click,
which every command line the quick path leaves to click loads; each beside the goal budgets (the goal ratio times
the native command's median).

Beside each wall-clock median, the median CPU time (user + system) of the same runs: on a shared machine the wall
clock of a Python start-up suffers far more from other load than that of a small C tool, and CPU time shows what
the run itself costs.

lsof is not a dependency of pss-dup or of its tests; install it for this benchmark (`apt-get install lsof`). Run
as root (capture traces): `.venv/bin/python bench/bench_startup.py [--runs N]`. Python modules are timed as
installed, from bytecode: the package is compiled first (a wheel install does that; PYTHONDONTWRITEBYTECODE would
otherwise make every run compile it again). Exits 1 when a goal is missed, so it can gate a change.
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pss_cli

TARGET = "import sys; print('ready', flush=True); sys.stdin.read()"
#: The same work as the two commands, through the library: nothing of the CLI.
LIBRARY_CAPTURE = (
    "import json, pss_cli; from pss_cli.serial import to_dict; "
    "print(json.dumps([to_dict(pss_cli.capture({pid}, pss_cli.CaptureFlags.HANDLES))], indent=2))"
)
LIBRARY_PS = (
    "import json, pss_cli; from pss_cli.render.report import process_record; "
    "print(json.dumps([process_record(row) for row in pss_cli.list_processes()], indent=2))"
)


@dataclass(frozen=True, slots=True)
class Pair:
    """A pss-dup command, the native command it is measured against, the largest ratio allowed, and the same work
    through the library without click."""

    title: str
    ours: list[str]
    native: list[str]
    goal: float
    library: list[str]


@dataclass(frozen=True, slots=True)
class Times:
    """One command's runs: wall-clock and CPU (user + system) milliseconds."""

    wall: list[float]
    cpu: list[float]

    def line(self, title: str) -> str:
        return (f"  {title:<52} median {statistics.median(self.wall):7.1f} ms   min {min(self.wall):7.1f} ms   "
                f"cpu {statistics.median(self.cpu):6.1f} ms")  # fmt: skip


def run_ms(argv: list[str]) -> tuple[float, float]:
    """Wall and CPU time of one run of `argv`, output discarded; a failed run ends the benchmark (a broken build is
    no data)."""
    started = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    wall = (time.perf_counter() - started) * 1000
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise subprocess.CalledProcessError(child.returncode, argv)
    return wall, (usage.ru_utime + usage.ru_stime) * 1000


def interleaved(commands: list[list[str]], runs: int) -> list[Times]:
    """Each command's times over `runs` rounds of one run each, after one uncounted run (the page cache)."""
    for argv in commands:
        run_ms(argv)
    times = [Times([], []) for _ in commands]
    for _ in range(runs):
        for argv, series in zip(commands, times, strict=True):
            wall, cpu = run_ms(argv)
            series.wall.append(wall)
            series.cpu.append(cpu)
    return times


def name(argv: list[str]) -> str:
    return " ".join(Path(argv[0]).name if i == 0 else a for i, a in enumerate(argv))


def measure(pair: Pair, runs: int) -> tuple[bool, float]:
    """Print the medians and the ratios; whether the goal is met, and the goal's budget in ms."""
    ours, native, library = interleaved([pair.ours, pair.native, pair.library], runs)
    ratio = statistics.median(ours.wall) / statistics.median(native.wall)
    met = ratio <= pair.goal
    print(pair.title)
    print(ours.line(name(pair.ours)))
    print(native.line(name(pair.native)))
    print(library.line("the same through the library"))
    print(f"  ratio {ratio:.2f} (goal <= {pair.goal:g}): {'met' if met else 'MISSED'}; "
          f"CPU time ratio {statistics.median(ours.cpu) / statistics.median(native.cpu):.2f}")  # fmt: skip
    return met, pair.goal * statistics.median(native.wall)


#: What a run pays before the command's own work: (title, the imports, which goal it is the floor of).
FLOORS = (
    ("the interpreter", "pass", ""),
    ("the quick path up to capture's callback", "import re, pss_cli.cli.quick, pss_cli.cli.capture", "capture"),
    ("the quick path up to ps's callback, and psutil", "import re, pss_cli.cli.quick, pss_cli.cli.ps, psutil", "ps"),
    ("click (what the quick path leaves to click)", "import click", ""),
)


def floors(budgets: dict[str, float], runs: int) -> None:
    """What a pss-dup run pays before its own code, beside the goal budgets."""
    commands = [[sys.executable, "-c", code] for _, code, _ in FLOORS]
    times = interleaved(commands, runs)
    print("floors (python -c ...)")
    for (title, _, _), series in zip(FLOORS, times, strict=True):
        print(series.line(title))
    for (_, _, goal), series in zip(FLOORS, times, strict=True):
        for title, budget in budgets.items():
            if goal and title.startswith(goal):
                left = budget - statistics.median(series.wall)
                print(f"  {title}: goal budget {budget:.1f} ms, {left:.1f} ms of it left after its floor")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30)
    runs = parser.parse_args().runs
    exe = str(Path(sys.executable).with_name("pss-dup"))
    missing = [tool for tool in ("lsof", "ps") if shutil.which(tool) is None]
    if missing:
        print(f"bench_startup: {' and '.join(missing)} not found; install it (apt-get install lsof procps)")
        return 2
    compileall.compile_dir(Path(pss_cli.__file__).parent, quiet=1)
    target = subprocess.Popen([sys.executable, "-c", TARGET], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert target.stdout is not None and target.stdout.readline().strip() == "ready"
        pid = str(target.pid)
        pairs = (
            Pair("capture: one process's fd table", [exe, "capture", pid, "--handles", "-o", "json"],
                 ["lsof", "-p", pid], 3, [sys.executable, "-c", LIBRARY_CAPTURE.format(pid=pid)]),
            Pair("ps: every process", [exe, "ps", "-o", "json"], ["ps", "aux"], 8,
                 [sys.executable, "-c", LIBRARY_PS]),
        )  # fmt: skip
        print(f"{runs} interleaved runs each, target pid {pid}")
        results = {pair.title: measure(pair, runs) for pair in pairs}
        floors({title: budget for title, (_, budget) in results.items()}, runs)
    finally:
        target.kill()
        target.wait()
    return 0 if all(met for met, _ in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

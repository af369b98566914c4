"""Start-up benchmark: pss-dup as a script calls it in a loop, beside the native tool that answers the same question.

Pairs, each run end to end as a child process, interleaved (one of each per round, so machine noise falls on both
sides alike), reported as medians:

    pss-dup capture PID --handles -o json   beside   lsof -p PID     (goal: ratio <= 3)
    pss-dup ps -o json                      beside   ps aux          (goal: ratio <= 8)

PID is a process this script starts (a Python interpreter waiting on stdin) and ends. Each pair also times the same
work done through the library in one interpreter, without click (what a JSON path that bypassed click could gain
at best). Then the floors every run pays before pss-dup does anything, timed the same way: the interpreter
alone, with click, with the model, with both, beside each goal's budget (the goal ratio times the native
command's median).

lsof is not a dependency of pss-dup or of its tests; install it for this benchmark (`apt-get install lsof`). Run
as root (capture traces): `.venv/bin/python bench/bench_startup.py [--runs N]`. Python modules are timed as
installed, from bytecode: the package is compiled first (a wheel install does that; PYTHONDONTWRITEBYTECODE would
otherwise make every run compile it again). Exits 1 when a goal is missed, so it can gate a change.
"""

from __future__ import annotations

import argparse
import compileall
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pss_cli

TARGET = "import sys; print('ready', flush=True); sys.stdin.read()"
#: The same work as the two commands, through the library: no click, nothing of the CLI.
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


def run_ms(argv: list[str]) -> float:
    """Wall time of one run of `argv`, output discarded; a failed run ends the benchmark (a broken build is no data)."""
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return (time.perf_counter() - started) * 1000


def interleaved(commands: list[list[str]], runs: int) -> list[list[float]]:
    """Each command's times over `runs` rounds of one run each, after one uncounted run (the page cache)."""
    for argv in commands:
        run_ms(argv)
    times: list[list[float]] = [[] for _ in commands]
    for _ in range(runs):
        for argv, series in zip(commands, times, strict=True):
            series.append(run_ms(argv))
    return times


def show(argv: list[str], times: list[float]) -> None:
    command = " ".join(Path(argv[0]).name if i == 0 else a for i, a in enumerate(argv))
    print(f"  {command:<44} median {statistics.median(times):7.1f} ms   min {min(times):7.1f} ms")


def measure(pair: Pair, runs: int) -> tuple[bool, float]:
    """Print the medians and the ratios; whether the goal is met, and the goal's budget in ms."""
    ours, native, library = interleaved([pair.ours, pair.native, pair.library], runs)
    ratio = statistics.median(ours) / statistics.median(native)
    met = ratio <= pair.goal
    print(pair.title)
    show(pair.ours, ours)
    show(pair.native, native)
    print(f"  {'the same through the library, without click':<44} median {statistics.median(library):7.1f} ms   "
          f"min {min(library):7.1f} ms")  # fmt: skip
    print(f"  ratio {ratio:.2f} (goal <= {pair.goal:g}): {'met' if met else 'MISSED'}; "
          f"without click {statistics.median(library) / statistics.median(native):.2f}")  # fmt: skip
    return met, pair.goal * statistics.median(native)


def floors(budgets: dict[str, float], runs: int) -> None:
    """What any pss-dup run pays before its own code: the interpreter, then click and the model imported."""
    codes = ("pass", "import click", "import pss_cli.model", "import click, pss_cli.model")
    commands = [[sys.executable, "-c", code] for code in codes]
    times = interleaved(commands, runs)
    print("floors (every run pays these first)")
    for argv, series in zip(commands, times, strict=True):
        print(f"  python -c {argv[2]!r:<33} median {statistics.median(series):7.1f} ms   min {min(series):7.1f} ms")
    for title, budget in budgets.items():
        left = budget - statistics.median(times[-1])
        print(f"  {title}: goal budget {budget:.1f} ms, {left:.1f} ms of it left after the floor")


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
            Pair("capture of one process's fd table", [exe, "capture", pid, "--handles", "-o", "json"],
                 ["lsof", "-p", pid], 3, [sys.executable, "-c", LIBRARY_CAPTURE.format(pid=pid)]),
            Pair("list every process", [exe, "ps", "-o", "json"], ["ps", "aux"], 8,
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

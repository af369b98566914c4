"""Dump benchmark: `pss-dup dump` (VA clone, and the frozen copy) beside gdb's `gcore`, on targets this script starts.

Targets: a C program with 1 GiB and one with 4 GiB of touched memory, each spread over 4 threads; a Python
process with 8 threads and ~200 MB of objects. For each, interleaved runs of: `pss-dup dump` (clone), `pss-dup dump
--clone-method copy`, `gcore`. Reported: total wall time of the command, how long the source was stopped (pss-dup's
stopped_ms; gcore keeps every thread stopped for its whole run), output size, and the copy throughput of the dump
beside a plain memcpy of the same size between two pre-faulted buffers, measured in the same run. The raw read
engines (/proc/PID/mem and process_vm_readv into a pre-faulted buffer) are measured too, and the write side alone: what
a C program gets when it only pwrite()s a resident buffer, over and over, into a new file (or memfd) of the same size.

Goals (issue 4): source stopped < 50 ms for the 1 GiB target with the clone method; total dump time at most one
third of gcore's; copy throughput at least 70% of memcpy.

Mini cores (issue 13): on a C target with 1 GiB touched over 8 threads, interleaved runs of the full dump (clone),
`dump --mini` (its default: the method it picks as stopping the process less), and with `--clone-method copy` and
`clone`. Goals: the mini core at most
2% of the full core's size, its total time at most 150 ms plus Python's start-up (measured: `python -I -c pass`), the
process stopped at most 10 ms. `--mini-only` runs just this part. The load average is printed before and after.

Output (issue 13, `--only-output` runs this part alone): a 1 GiB zero-heavy target (calloc + memset 0, as a JVM
pre-touches its heap) dumped sparse beside gcore (goal: at most 0.25x gcore's time, Python start-up included, and
`du` at most 5% of gcore's file); the cost of looking for zero pages on memory that holds data (the copy engine
writing the 1 GiB target's memory with and without it, beside the C write floor); `--compress zstd` beside
`zstd -T0` on the same bytes; `dump PID - | cat > FILE` beside `dump PID FILE`. The load average is printed with
each, as the machine is shared.

Run as root: `.venv/bin/python bench/bench_dump.py [--runs N] [--dir DIR] [--skip-4g] [--only-output] [--mini-only]`.
Every output file is removed right after it is measured, and each timed run starts after `sync` so that earlier
write-back does not slow it. pss-dup runs with a bytecode cache of its own (PYTHONPYCACHEPREFIX, warmed first): an
installed package has its .pyc files, and an environment with PYTHONDONTWRITEBYTECODE=1 would otherwise recompile the
package on every run.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PSS_DUP = str(Path(sys.executable).with_name("pss-dup"))
PSS_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

C_TARGET = r"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static size_t per_thread;
static pthread_barrier_t ready;
static unsigned char *volatile kept[64];   /* p escapes: the compiler may not drop the memset as a dead store */
static void *toucher(void *arg) {
    unsigned char *p = malloc(per_thread);
    kept[(size_t)arg] = p;
    for (size_t i = 0; i < per_thread; i += 4096) p[i] = (unsigned char)(i >> 12) ^ (unsigned char)(size_t)arg;
    memset(p, (int)(size_t)arg + 1, per_thread);
    pthread_barrier_wait(&ready);
    for (;;) pause();
    return p;
}
int main(int argc, char **argv) {
    int threads = argc > 2 ? atoi(argv[2]) : 4;
    per_thread = ((size_t)atol(argv[1]) << 20) / threads;
    pthread_barrier_init(&ready, NULL, threads + 1);
    pthread_t t;
    for (long i = 0; i < threads; i++) pthread_create(&t, NULL, toucher, (void *)i);
    pthread_barrier_wait(&ready);
    printf("ready\n");
    fflush(stdout);
    char line[8];
    while (fgets(line, sizeof line, stdin)) {}
    return 0;
}
"""

#: The write side alone: a C program pwrite()s one resident 8 MiB buffer over and over until N MiB fill a new file
#: (or a new memfd), with no reading at all. A streaming core writer (pss-dup, and gcore) pays at least this for its
#: output; what it adds is the reading. (Writing out of one big buffer instead would first have to fault that buffer
#: in, which on this VM costs as much as the write itself.)
C_WRITE_LIMIT = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    size_t size = (size_t)atol(argv[1]) << 20, chunk = 8 << 20;
    char *data = mmap(NULL, chunk, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (data == MAP_FAILED) return 1;
    memset(data, 0x5a, chunk);
    int memfd = strcmp(argv[2], "memfd") == 0;
    int fd = memfd ? memfd_create("limit", 0) : open(argv[2], O_CREAT | O_EXCL | O_WRONLY, 0600);
    if (fd < 0) return 1;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (size_t off = 0; off < size; off += chunk) {
        size_t n = size - off < chunk ? size - off : chunk;
        if (pwrite(fd, data, n, (off_t)off) != (ssize_t)n) return 1;
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.6f\n", (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9);
    if (!memfd) unlink(argv[2]);
    return 0;
}
"""

#: The zero-heavy target: N MiB allocated with calloc and written with zeros (so every page is resident, none the
#: shared zero page), as a JVM pre-touches its heap; plus one page of data.
C_ZERO_TARGET = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(int argc, char **argv) {
    size_t size = (size_t)atol(argv[1]) << 20;
    volatile unsigned char *heap = calloc(size, 1);
    for (size_t i = 0; i < size; i += 4096) heap[i] = 0;   /* a write fault per page: resident, not the zero page */
    strcpy((char *)heap + size / 2, "data in the middle of the zeros");   /* (memset(0) after calloc: optimised out) */
    printf("ready\n");
    fflush(stdout);
    char line[8];
    while (fgets(line, sizeof line, stdin)) {}
    return 0;
}
"""

PYTHON_TARGET = r"""
import sys, threading, time
data = [bytes([i % 251]) * 4096 for i in range(50000)]   # ~200 MB of objects
stop = threading.Event()
def sleeper():
    while not stop.is_set():
        time.sleep(0.01)
def worker():
    n = 0
    while not stop.is_set():
        n += sum(range(1000))
        time.sleep(0.005)
for i in range(8):
    threading.Thread(target=sleeper if i % 2 else worker, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""


@dataclass
class Runs:
    total_s: list[float] = field(default_factory=list)
    stopped_ms: list[float] = field(default_factory=list)
    size: list[int] = field(default_factory=list)
    copy_gbps: list[float] = field(default_factory=list)
    memory: list[int] = field(default_factory=list)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    return f"{format(median(values), fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def start(argv: list[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout and proc.stdout.readline().strip() == "ready", "target did not start"
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream:
            stream.close()


def run_pss(pid: int, out: Path, method: str, runs: Runs) -> None:
    os.sync()
    t = time.perf_counter()
    result = subprocess.run([PSS_DUP, "dump", str(pid), str(out), "--clone-method", method, "-o", "json"],
                            capture_output=True, text=True, env=PSS_ENV)  # fmt: skip
    total = time.perf_counter() - t
    if result.returncode != 0:
        raise SystemExit(f"pss-dup dump failed: {result.stderr}")
    record = json.loads(result.stdout)["results"][0]
    memory = record["memory"]
    runs.total_s.append(total)
    runs.stopped_ms.append(record["timings"]["stopped_ms"])
    runs.size.append(out.stat().st_size)
    runs.memory.append(memory["bytes_captured"])
    if memory.get("copy_ms"):
        runs.copy_gbps.append(memory["bytes_captured"] / (memory["copy_ms"] / 1000) / 1e9)
    out.unlink()


def run_gcore(pid: int, directory: Path, runs: Runs) -> None:
    prefix = directory / "gcore"
    os.sync()
    t = time.perf_counter()
    result = subprocess.run(["gcore", "-o", str(prefix), str(pid)], capture_output=True, text=True)
    total = time.perf_counter() - t
    made = directory / f"gcore.{pid}"
    if result.returncode != 0 or not made.exists():
        raise SystemExit(f"gcore failed: {result.stderr[-500:]}")
    runs.total_s.append(total)
    runs.stopped_ms.append(total * 1000)  # gdb holds every thread stopped while it writes
    runs.size.append(made.stat().st_size)
    made.unlink()


def run_mini(pid: int, out: Path, method: str | None, runs: Runs) -> None:
    """One `pss-dup dump --mini` (with `method`, or its default), measured as run_pss measures a full dump."""
    os.sync()
    argv = [PSS_DUP, "dump", str(pid), str(out), "--mini", "-o", "json"]
    t = time.perf_counter()
    result = subprocess.run(argv + (["--clone-method", method] if method else []), capture_output=True, text=True,
                            env=PSS_ENV)  # fmt: skip
    total = time.perf_counter() - t
    if result.returncode != 0:
        raise SystemExit(f"pss-dup dump --mini failed: {result.stderr}")
    record = json.loads(result.stdout)["results"][0]
    runs.total_s.append(total)
    runs.stopped_ms.append(record["timings"]["stopped_ms"])
    runs.size.append(out.stat().st_size)
    runs.memory.append(record["memory"]["bytes_captured"])
    out.unlink()


def startup(argv: list[str], rounds: int) -> list[float]:
    """Seconds of `argv` run `rounds` times: `python -I -c pass` is the interpreter's own start-up, `pss-dup
    --version` the CLI's."""
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=PSS_ENV)
        out.append(time.perf_counter() - t)
    return out


#: 63 threads besides the main one, half sleeping in time.sleep, half waiting on an Event.
PYTHON_64_THREADS = r"""
import sys, threading, time
event = threading.Event()
def sleeper():
    while True:
        time.sleep(0.05)
for i in range(63):
    threading.Thread(target=sleeper if i % 2 else event.wait, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""


def bench_python_mini(directory: Path, rounds: int) -> None:
    """A 64-thread Python process: mini cores (frozen copy and clone), and whether gdb shows libpython frames in
    every thread's backtrace."""
    python = os.path.realpath(sys.executable)
    proc = start([python, "-c", PYTHON_64_THREADS])
    try:
        time.sleep(0.3)
        results = {"mini (default)": Runs(), "mini (frozen copy)": Runs(), "mini (clone)": Runs()}
        for _ in range(rounds):
            run_mini(proc.pid, directory / "py-default.core", None, results["mini (default)"])
            run_mini(proc.pid, directory / "py.core", "copy", results["mini (frozen copy)"])
            run_mini(proc.pid, directory / "py-clone.core", "clone", results["mini (clone)"])
        core = directory / "py-gdb.core"
        subprocess.run([PSS_DUP, "dump", str(proc.pid), str(core), "--mini", "-q"], check=True, env=PSS_ENV,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        gdb = ["gdb", "-nx", "-batch", "-ex", "set debuginfod enabled off", "-ex", "thread apply all bt"]
        out = subprocess.run([*gdb, python, str(core)], capture_output=True, text=True).stdout
        core.unlink()
    finally:
        stop(proc)
    sections = out.split("\nThread ")[1:]
    with_python = sum(1 for part in sections if re.search(r" in _?Py[A-Za-z_]+ \(", part))
    print(f"\n== mini cores: Python, 64 threads; {rounds} interleaved runs, median (min-max)")
    for name, runs in results.items():
        print(
            f"{name:20} total {spread(runs.total_s, '.3f')} s, stopped {spread(runs.stopped_ms, '.2f')} ms, "
            f"file {median([float(s) for s in runs.size]) / 1024:.0f} KiB"
        )
    print(f"gdb: {len(sections)} threads, {with_python} with libpython frames")


def bench_mini(exe: Path, directory: Path, rounds: int) -> None:
    """Mini cores beside the full dump of the same 1 GiB, 8-thread target, in the same run."""
    load_before = os.getloadavg()
    python = startup([sys.executable, "-I", "-c", "pass"], rounds + 2)
    cli = startup([PSS_DUP, "--version"], rounds + 2)
    proc = start([str(exe), "1024", "8"])
    try:
        results = {
            "full (clone)": Runs(),
            "mini (default)": Runs(),
            "mini (frozen copy)": Runs(),
            "mini (clone)": Runs(),
        }
        run_mini(proc.pid, directory / "warm.core", None, Runs())  # fills the bytecode cache
        for _ in range(rounds):
            run_pss(proc.pid, directory / "full.core", "clone", results["full (clone)"])
            run_mini(proc.pid, directory / "mini-default.core", None, results["mini (default)"])
            run_mini(proc.pid, directory / "mini.core", "copy", results["mini (frozen copy)"])
            run_mini(proc.pid, directory / "mini-clone.core", "clone", results["mini (clone)"])
    finally:
        stop(proc)
    full = median([float(s) for s in results["full (clone)"].size])
    print(f"\n== mini cores: C, 1 GiB touched, 8 threads; {rounds} interleaved runs, median (min-max)")
    print(f"start-up: python -I -c pass {spread(python, '.3f')} s, pss-dup --version {spread(cli, '.3f')} s")
    print(f"{'dump':20} {'total s':>22} {'stopped ms':>24} {'file KiB':>10} {'of full':>8} {'total - python':>16}")
    for name, runs in results.items():
        size = median([float(s) for s in runs.size])
        print(
            f"{name:20} {spread(runs.total_s, '.3f'):>22} {spread(runs.stopped_ms, '.2f'):>24} {size / 1024:>10.0f} "
            f"{size / full:>8.2%} {(median(runs.total_s) - median(python)) * 1000:>13.0f} ms"
        )
    mini = results["mini (default)"]
    print(
        f"goals (the default): size {median([float(s) for s in mini.size]) / full:.2%} of full (<= 2%), total "
        f"{(median(mini.total_s) - median(python)) * 1000:.0f} ms + python's start-up (<= 150 ms; "
        f"{(median(mini.total_s) - median(cli)) * 1000:.0f} ms + pss-dup's), stopped "
        f"{median(mini.stopped_ms):.2f} ms (<= 10 ms)"
    )
    print(f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")


def fixed_costs(directory: Path, rounds: int) -> None:
    """Both tools on a process with almost no memory (`sleep`): start-up, attach, write, report."""
    proc = subprocess.Popen(["sleep", "600"])
    try:
        time.sleep(0.1)
        pss, gcore = Runs(), Runs()
        for _ in range(rounds + 1):  # the first pss-dup run fills the bytecode cache
            run_pss(proc.pid, directory / "tiny.core", "clone", pss)
            run_gcore(proc.pid, directory, gcore)
        print(f"\nfixed cost (a `sleep` process): pss-dup dump {spread(pss.total_s[1:], '.2f')} s, "
              f"gcore {spread(gcore.total_s[1:], '.2f')} s")  # fmt: skip
    finally:
        proc.kill()
        proc.wait()


def address_of(buffer: mmap.mmap) -> int:
    anchor = ctypes.c_char.from_buffer(buffer)
    address = ctypes.addressof(anchor)
    del anchor
    return address


def memcpy_gbps(size: int, repeats: int = 3) -> list[float]:
    """memmove between two pre-faulted anonymous buffers of `size` bytes (the best of a plain copy here)."""
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE
    a, b = mmap.mmap(-1, size, flags=flags), mmap.mmap(-1, size, flags=flags)
    try:
        src, dst = address_of(a), address_of(b)
        ctypes.memmove(dst, src, size)  # warm: both buffers resident and mapped
        out = []
        for _ in range(repeats):
            t = time.perf_counter()
            ctypes.memmove(dst, src, size)
            out.append(size / (time.perf_counter() - t) / 1e9)
        return out
    finally:
        a.close()
        b.close()


def write_limit_gbps(limit_exe: Path, size: int, where: str) -> float:
    """GB/s of one run of the C write-side program for `size` bytes into `where` (a file path, or "memfd")."""
    mib = max(1, size >> 20)
    os.sync()
    result = subprocess.run([str(limit_exe), str(mib), where], capture_output=True, text=True, check=True)
    return (mib << 20) / float(result.stdout) / 1e9


def dumped_pieces(pid: int) -> tuple[list[Any], int]:
    """The memory a dump of `pid` holds, as copy-engine pieces laid end to end, and their size."""
    from pss_cli.platform.linux import copyengine, dumprules, procfs

    with procfs.ProcDir(pid) as proc:
        regions = procfs.read_va_space(proc, section_info=True)
    plan = dumprules.plan_memory(regions, pid)
    pieces, offset = [], 0
    for seg in plan.segments:
        if seg.filesz:
            pieces.append(copyengine.Piece(seg.vaddr, seg.filesz, offset))
            offset += seg.filesz
    return pieces, offset


def engine_gbps(pid: int, reader: str) -> float:
    """The read engine alone: the target's dumped memory into a pre-faulted anonymous buffer (no file)."""
    from pss_cli.platform.linux import copyengine

    pieces, offset = dumped_pieces(pid)
    buffer = mmap.mmap(-1, offset, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)
    try:
        with copyengine.MappedSink(buffer) as sink:
            stats = copyengine.copy_pieces(pid, pieces, sink, reader=reader)
        return stats.throughput / 1e9
    finally:
        buffer.close()


def bench_target(
    name: str, proc: subprocess.Popen[str], directory: Path, rounds: int, limit_exe: Path
) -> dict[str, Runs]:
    results = {"pss-dup clone": Runs(), "pss-dup copy": Runs(), "gcore": Runs()}
    to_file: list[float] = []
    to_memfd: list[float] = []
    for _ in range(rounds):  # interleaved, so that drift on this noisy VM hits every tool and the limit alike
        run_pss(proc.pid, directory / "clone.core", "clone", results["pss-dup clone"])
        run_pss(proc.pid, directory / "copy.core", "copy", results["pss-dup copy"])
        run_gcore(proc.pid, directory, results["gcore"])
        written = results["pss-dup clone"].size[-1]
        to_file.append(write_limit_gbps(limit_exe, written, str(directory / "limit.bin")))
        to_memfd.append(write_limit_gbps(limit_exe, written, "memfd"))
    size = int(median([float(m) for m in results["pss-dup clone"].memory]))
    memcpy = memcpy_gbps(size)
    engines = {reader: engine_gbps(proc.pid, reader) for reader in ("mem", "pvr")}
    gcore_total = median(results["gcore"].total_s)
    print(f"\n== {name}: {size / 2**20:.0f} MiB dumped by pss-dup, {rounds} interleaved runs, median (min-max)")
    print(f"{'tool':16} {'total s':>22} {'stopped ms':>26} {'output MiB':>12} {'copy GB/s':>20} {'vs gcore':>9}")
    for tool, runs in results.items():
        total = median(runs.total_s)
        print(
            f"{tool:16} {spread(runs.total_s, '.2f'):>22} {spread(runs.stopped_ms, '.1f'):>26} "
            f"{median([float(s) for s in runs.size]) / 2**20:>12.0f} {spread(runs.copy_gbps, '.2f'):>20} "
            f"{total / gcore_total:>8.2f}x"
        )
    copy = median(results["pss-dup clone"].copy_gbps)
    limit = median(to_file)
    print(f"memcpy of {size / 2**20:.0f} MiB, pre-faulted to pre-faulted: {spread(memcpy, '.2f')} GB/s")
    print(f"dump copy phase (read clone + write file) / memcpy: {copy / median(memcpy):.0%}")
    print(
        f"write side alone (C pwrite of a resident buffer into a new file): {spread(to_file, '.2f')} GB/s "
        f"({limit / median(memcpy):.0%} of memcpy); into a new memfd {spread(to_memfd, '.2f')} GB/s "
        f"({median(to_memfd) / median(memcpy):.0%}). The dump's copy phase runs at {copy / limit:.0%} of it"
    )
    gcore_rate = median([float(s) for s in results["gcore"].size]) / gcore_total / 1e9
    floor = median([float(s) for s in results["pss-dup clone"].size]) / (limit * 1e9)
    print(
        f"floor: writing pss-dup's output at that rate alone takes {floor:.2f} s = {floor / gcore_total:.2f}x "
        f"gcore's total; gcore's output rate {gcore_rate:.2f} GB/s is {gcore_rate / limit:.0%} of it"
    )
    print(
        f"read engines into a pre-faulted buffer: /proc/PID/mem {engines['mem']:.2f} GB/s "
        f"({engines['mem'] / median(memcpy):.0%} of memcpy), process_vm_readv {engines['pvr']:.2f} GB/s "
        f"({engines['pvr'] / median(memcpy):.0%})"
    )
    return results


# ---- output: holes, zstd, stdout (issue 13) ---------------------------------------------------------------------


def load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def timed_dump(pid: int, *args: str, shell_tail: str = "") -> tuple[float, dict[str, Any]]:
    """Wall time of one `pss-dup dump PID ARGS -o json` (Python start-up included), and its record."""
    os.sync()
    command = " ".join([PSS_DUP, "dump", str(pid), *args, "-o", "json"]) + shell_tail
    t = time.perf_counter()
    result = subprocess.run(command, shell=True, capture_output=True, text=True, env=PSS_ENV)
    total = time.perf_counter() - t
    if result.returncode != 0:
        raise SystemExit(f"pss-dup dump failed: {result.stderr[-2000:]}")
    text = result.stderr if shell_tail else result.stdout  # with FILE -, the report goes to stderr
    record: dict[str, Any] = json.loads(text[text.index("{") :])["results"][0]
    return total, record


def gcore_file(pid: int, directory: Path) -> tuple[float, int, int]:
    """gcore's wall time, file size and allocated size (du); the file is removed."""
    os.sync()
    t = time.perf_counter()
    result = subprocess.run(["gcore", "-o", str(directory / "gcore"), str(pid)], capture_output=True, text=True)
    total = time.perf_counter() - t
    made = directory / f"gcore.{pid}"
    if result.returncode != 0 or not made.exists():
        raise SystemExit(f"gcore failed: {result.stderr[-500:]}")
    st = made.stat()
    made.unlink()
    return total, st.st_size, st.st_blocks * 512


def bench_sparse(exe: Path, directory: Path, rounds: int) -> None:
    """The 1 GiB zero-heavy target, dumped sparse, beside gcore."""
    proc = start([str(exe), "1024"])
    try:
        pss_s, pss_du, pss_size, gcore_s, gcore_du, gcore_size = [], [], [], [], [], []
        timed_dump(proc.pid, str(directory / "warm.core"))  # the bytecode cache
        (directory / "warm.core").unlink()
        for _ in range(rounds):
            out = directory / "sparse.core"
            total, record = timed_dump(proc.pid, str(out))
            pss_s.append(total)
            pss_du.append(float(record["output"]["allocated_bytes"]))
            pss_size.append(float(record["output"]["core_bytes"]))
            out.unlink()
            g_total, g_size, g_du = gcore_file(proc.pid, directory)
            gcore_s.append(g_total)
            gcore_size.append(float(g_size))
            gcore_du.append(float(g_du))
        print(f"\n== 1 GiB zero-heavy target (calloc + memset 0), {rounds} interleaved runs, median (min-max); "
              f"{load()}")  # fmt: skip
        print(f"pss-dup dump (sparse): {spread(pss_s, '.2f')} s, size {median(pss_size) / 2**20:.0f} MiB, "
              f"du {spread([d / 2**20 for d in pss_du], '.1f')} MiB")  # fmt: skip
        print(f"gcore:                 {spread(gcore_s, '.2f')} s, size {median(gcore_size) / 2**20:.0f} MiB, "
              f"du {spread([d / 2**20 for d in gcore_du], '.1f')} MiB")  # fmt: skip
        print(f"goal time <= 0.25x gcore: {median(pss_s) / median(gcore_s):.3f}x; "
              f"goal du <= 5% of gcore's file: {median(pss_du) / median(gcore_size):.3%}")  # fmt: skip
    finally:
        stop(proc)


def engine_to_file_gbps(pid: int, path: Path, *, sparse: bool) -> float:
    """The copy engine alone, the target's dumped memory into a new file with or without the zero-page check."""
    from pss_cli.platform.linux import copyengine

    pieces, offset = dumped_pieces(pid)
    os.sync()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        stats = copyengine.write_pieces_fd(fd, offset, pieces, pid, sparse=sparse)
    finally:
        os.close(fd)
        path.unlink()
    return stats.throughput / 1e9


def engine_to_null_gbps(pid: int, *, sparse: bool) -> float:
    """The copy engine alone into /dev/null: the reading rate, with or without the zero-page check (no disk)."""
    from pss_cli.platform.linux import copyengine

    pieces, _ = dumped_pieces(pid)
    fd = os.open("/dev/null", os.O_WRONLY)
    try:
        with copyengine.FdSink(fd, sparse=sparse) as sink:
            return copyengine.copy_pieces(pid, pieces, sink).throughput / 1e9
    finally:
        os.close(fd)


def bench_zero_check_cost(exe: Path, directory: Path, rounds: int, limit_exe: Path) -> None:
    """What looking for zero pages costs on memory that holds data: the 1 GiB target, interleaved."""
    proc = start([str(exe), "1024"])
    try:
        plain: list[float] = []
        sparse: list[float] = []
        null_plain: list[float] = []
        null_sparse: list[float] = []
        floor: list[float] = []
        for i in range(rounds):  # alternating which goes first: one right after another's write-back is slower
            pair = [(plain, null_plain, False), (sparse, null_sparse, True)]
            for runs, null_runs, check in pair if i % 2 else pair[::-1]:
                runs.append(engine_to_file_gbps(proc.pid, directory / "engine.bin", sparse=check))
                null_runs.append(engine_to_null_gbps(proc.pid, sparse=check))
            floor.append(write_limit_gbps(limit_exe, 1 << 30, str(directory / "limit.bin")))
        print(f"\n== zero-page check on 1 GiB of data (no zero page), {rounds} interleaved runs; {load()}")
        print(f"copy engine into a file: plain {spread(plain, '.2f')} GB/s, with the check {spread(sparse, '.2f')} "
              f"GB/s ({median(sparse) / median(plain):.0%} of plain); C write floor {spread(floor, '.2f')} GB/s "
              f"(plain {median(plain) / median(floor):.0%}, checked {median(sparse) / median(floor):.0%} of "
              "it)")  # fmt: skip
        share = median(null_sparse) / median(null_plain)
        print(f"copy engine into /dev/null (reading alone): plain {spread(null_plain, '.2f')} GB/s, with the check "
              f"{spread(null_sparse, '.2f')} GB/s ({share:.0%} of plain)")  # fmt: skip
    finally:
        stop(proc)


def bench_zstd_and_stdout(exe: Path, zero_exe: Path, directory: Path, rounds: int) -> None:
    """--compress zstd beside `zstd -T0` on the same bytes, and `dump - | cat > FILE` beside `dump FILE`."""
    zstd = shutil.which("zstd")
    for name, argv in (("1 GiB of data", [str(exe), "1024"]), ("1 GiB zero-heavy", [str(zero_exe), "1024"])):
        proc = start(argv)
        try:
            ours, ours_rate, ratio, theirs, direct, piped = [], [], [], [], [], []
            for _ in range(rounds):
                out = directory / "z.core"
                total, record = timed_dump(proc.pid, str(out), "--compress", "zstd")
                ours.append(total)
                ours_rate.append(record["output"]["core_bytes"] / record["output"]["seconds"] / 1e9)
                ratio.append(record["output"]["ratio"])
                (directory / "z.core.zst").unlink()
                total, _ = timed_dump(proc.pid, str(out))
                direct.append(total)
                out.unlink()
                total, record = timed_dump(proc.pid, "-", shell_tail=f" | cat > {out}")
                piped.append(total)
                if zstd is not None:  # the same bytes (the streamed core, in the page cache), by the zstd command
                    t = time.perf_counter()
                    subprocess.run([zstd, "-T0", "-q", "-f", str(out), "-o", str(out) + ".zst"], check=True)
                    theirs.append(out.stat().st_size / (time.perf_counter() - t) / 1e9)
                    Path(str(out) + ".zst").unlink()
                out.unlink()
            print(f"\n== {name}: zstd and stdout, {rounds} interleaved runs, median (min-max); {load()}")
            print(f"dump --compress zstd: {spread(ours, '.2f')} s in all, memory compressed at "
                  f"{spread(ours_rate, '.2f')} GB/s, ratio {median(ratio):.0f}x; zstd -T0 on the same core: "
                  f"{spread(theirs, '.2f')} GB/s")  # fmt: skip
            print(f"dump PID FILE {spread(direct, '.2f')} s; dump PID - | cat > FILE {spread(piped, '.2f')} s "
                  f"({median(piped) / median(direct):.2f}x)")  # fmt: skip
        finally:
            stop(proc)


def bench_output(work: Path, directory: Path, rounds: int, exe: Path, limit_exe: Path) -> None:
    zero_exe = work / "zeros"
    (work / "zeros.c").write_text(C_ZERO_TARGET)
    subprocess.run(["gcc", "-O2", "-o", str(zero_exe), str(work / "zeros.c")], check=True)
    bench_sparse(zero_exe, directory, rounds)
    bench_zero_check_cost(exe, directory, rounds, limit_exe)
    bench_zstd_and_stdout(exe, zero_exe, directory, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where the cores are written (default: a temp dir)")
    parser.add_argument("--skip-4g", action="store_true")
    parser.add_argument("--only-output", action="store_true", help="only the output part: holes, zstd, stdout")
    parser.add_argument("--mini-only", action="store_true", help="only the mini-core comparison")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (pss-dup and gcore attach to the targets)")
    if shutil.which("gcore") is None or shutil.which("gcc") is None:
        raise SystemExit("needs gcc and gdb's gcore")
    work = Path(tempfile.mkdtemp(prefix="pss-bench-"))
    directory = args.dir or work
    PSS_ENV["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    try:
        source = work / "touch.c"
        source.write_text(C_TARGET)
        exe = work / "touch"
        subprocess.run(["gcc", "-O2", "-pthread", "-o", str(exe), str(source)], check=True)
        (work / "limit.c").write_text(C_WRITE_LIMIT)
        limit_exe = work / "limit"
        subprocess.run(["gcc", "-O2", "-o", str(limit_exe), str(work / "limit.c")], check=True)
        df = subprocess.run(["df", "-T", str(directory)], capture_output=True, text=True).stdout.splitlines()
        print(f"cores written to {directory} ({df[-1].split()[1]})")
        if args.mini_only:
            bench_mini(exe, directory, args.runs)
            bench_python_mini(directory, args.runs)
            return

        if args.only_output:
            bench_output(work, directory, args.runs, exe, limit_exe)
            return
        fixed_costs(directory, args.runs)
        targets = [("C, 1 GiB touched, 4 threads", [str(exe), "1024"])]
        if not args.skip_4g:
            targets.append(("C, 4 GiB touched, 4 threads", [str(exe), "4096"]))
        targets.append(("Python, 8 threads, ~200 MB of objects", [sys.executable, "-c", PYTHON_TARGET]))
        summary = []
        for name, argv in targets:
            t = time.perf_counter()
            proc = start(argv)
            print(f"\n{name}: pid {proc.pid}, started in {time.perf_counter() - t:.1f} s")
            try:
                results = bench_target(name, proc, directory, args.runs, limit_exe)
            finally:
                stop(proc)
            summary.append((name, results))
        bench_mini(exe, directory, args.runs)
        bench_python_mini(directory, args.runs)
        print("\n== goals")
        for name, results in summary:
            clone, gcore = results["pss-dup clone"], results["gcore"]
            ratio = median(clone.total_s) / median(gcore.total_s)
            print(f"{name}: stopped {median(clone.stopped_ms):.1f} ms, total {ratio:.2f}x gcore's")
        bench_output(work, directory, args.runs, exe, limit_exe)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

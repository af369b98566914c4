"""`pss-dup dump` end to end: gdb reads the cores (threads, locals, globals, heap, libpython frames), a snapshot with
memory handed to another process opens in gdb through /proc/TARGET/fd/N, and the source runs on unharmed: its memory
checks out, no zombie is left, no SIGCHLD reached it."""

from __future__ import annotations

import json
import mmap
import os
import pty
import re
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pss_cli import serial
from pss_cli.model import CLONE_METHODS
from tests.conftest import PSS_DUP, need_tools, proc_status
from tests.linux.conftest import children_of, drain_terminal

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux only")

if sys.platform == "linux":
    from pss_cli.platform.linux import elfcore


@pytest.fixture(autouse=True)
def _gdb_and_gcc() -> None:
    need_tools("gdb", "gcc")


THREADS_C = r"""
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

long known_global = 0x5eed1234;
long *heap_value;
static pthread_barrier_t ready;
static volatile sig_atomic_t sigchld_seen;
/* A worker keeps rewriting this buffer and checking it, during and after the dump. */
#define WORDS (1 << 20)
static unsigned long *buffer;
static volatile unsigned long generations, errors;

static void on_sigchld(int signo) { (void)signo; sigchld_seen++; }

__attribute__((noinline)) static void park(void) { for (;;) pause(); }

__attribute__((noinline)) static void *park_alpha(void *arg) {
    volatile long alpha_local = 4242;
    (void)arg; pthread_barrier_wait(&ready); park(); return (void *)alpha_local;
}
__attribute__((noinline)) static void *park_beta(void *arg) {
    volatile long beta_local = 777001;
    (void)arg; pthread_barrier_wait(&ready); park(); return (void *)beta_local;
}
__attribute__((noinline)) static void *park_gamma(void *arg) {
    volatile long gamma_local = -31337;
    (void)arg; pthread_barrier_wait(&ready); park(); return (void *)gamma_local;
}
static void *rewrite_memory(void *arg) {
    (void)arg;
    pthread_barrier_wait(&ready);
    for (unsigned long g = 1;; g++) {
        for (long i = 0; i < WORDS; i++) buffer[i] = g * 2654435761u + (unsigned long)i;
        for (long i = 0; i < WORDS; i++) if (buffer[i] != g * 2654435761u + (unsigned long)i) errors++;
        generations = g;
        usleep(2000);
    }
    return NULL;
}

int main(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigchld;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGCHLD, &sa, NULL);
    heap_value = malloc(sizeof *heap_value);
    *heap_value = 987654321;
    buffer = malloc(WORDS * sizeof *buffer);
    pthread_barrier_init(&ready, NULL, 5);
    pthread_t t[4];
    pthread_create(&t[0], NULL, park_alpha, NULL);
    pthread_create(&t[1], NULL, park_beta, NULL);
    pthread_create(&t[2], NULL, park_gamma, NULL);
    pthread_create(&t[3], NULL, rewrite_memory, NULL);
    pthread_barrier_wait(&ready);
    printf("ready\n");
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        unsigned long before = generations;
        while (generations < before + 3) usleep(1000);   /* it is still rewriting its memory */
        printf("{\"sigchld\": %d, \"generations\": %lu, \"errors\": %lu}\n", (int)sigchld_seen, generations, errors);
        fflush(stdout);
    }
    return 0;
}
"""

PYTHON_TARGET = r"""
import threading, time, sys
def sleeper():
    while True:
        time.sleep(0.05)
def waiter(event):
    event.wait()
def spinner():
    n = 0
    while True:
        n += sum(range(100))
        time.sleep(0.001)
event = threading.Event()
threads = [threading.Thread(target=sleeper, daemon=True), threading.Thread(target=waiter, args=(event,), daemon=True),
           threading.Thread(target=spinner, daemon=True)]
for t in threads:
    t.start()
print("ready", flush=True)
sys.stdin.readline()
"""


class CTarget:
    def __init__(self, exe: Path) -> None:
        self.exe = exe
        self.proc = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout and self.proc.stdout.readline() == "ready\n"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def report(self) -> dict[str, Any]:
        """The target's own account: SIGCHLDs it got, and whether its memory kept checking out after the dump."""
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write("report\n")
        self.proc.stdin.flush()
        return dict(json.loads(self.proc.stdout.readline()))

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream:
                stream.close()


@pytest.fixture(scope="module")
def threads_exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("gdbtarget")
    source = work / "parked.c"
    source.write_text(THREADS_C)
    exe = work / "parked"
    subprocess.run(["gcc", "-g", "-O0", "-pthread", "-o", str(exe), str(source)], check=True)
    return exe


@pytest.fixture
def c_target(threads_exe: Path) -> Iterator[CTarget]:
    target = CTarget(threads_exe)
    try:
        yield target
    finally:
        target.close()


def dump(*args: str, cwd: Path | None = None) -> dict[str, Any]:
    result = subprocess.run([PSS_DUP, "dump", *args, "-o", "json"], capture_output=True, text=True, timeout=120,
                            cwd=cwd)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no progress bar, no warnings, when stderr is not a terminal
    record: dict[str, Any] = json.loads(result.stdout)["results"][0]
    return record


def gdb(exe: str | Path, core: str | Path, *commands: str) -> str:
    argv = ["gdb", "-nx", "-batch", "-ex", "set debuginfod enabled off"]
    for command in commands:
        argv += ["-ex", command]
    result = subprocess.run([*argv, str(exe), str(core)], capture_output=True, text=True, timeout=120)
    return result.stdout + result.stderr


def thread_sections(bt: str) -> list[str]:
    """`thread apply all bt` output split per thread."""
    parts = re.split(r"\n(?=Thread \d+ )", "\n" + bt)
    return [p for p in parts if p.startswith("Thread ")]


@pytest.mark.parametrize("method", CLONE_METHODS)
def test_gdb_names_every_thread_function_and_reads_locals_globals_and_heap(
    c_target: CTarget, tmp_path: Path, method: str
) -> None:
    core = tmp_path / "parked.core"
    record = dump(str(c_target.pid), str(core), "--clone-method", method)
    assert record["memory"]["method"] == ("va-clone" if method == "clone" else "frozen-copy")
    assert record["memory"]["bytes_captured"] > 8 << 20  # the 8 MiB buffer at least
    assert record["memory"]["copy_ms"] > 0 and record["memory"]["failed_pages"] == 0
    assert record["size"] == core.stat().st_size
    out = gdb(c_target.exe, core, "thread apply all bt full", "print known_global", "print *heap_value")
    sections = thread_sections(out)
    assert len(sections) == 5, out
    for function, local in (("park_alpha", "alpha_local = 4242"), ("park_beta", "beta_local = 777001"),
                            ("park_gamma", "gamma_local = -31337")):  # fmt: skip
        [section] = [s for s in sections if function in s]
        assert local in section
    assert any("rewrite_memory" in s for s in sections)
    assert any(re.search(r"\bmain \(\)", s) for s in sections)
    assert re.search(r"\$1 = 1592594996\b", out), out  # 0x5eed1234
    assert re.search(r"\$2 = 987654321\b", out), out


@pytest.mark.parametrize("method", CLONE_METHODS)
def test_the_core_note_is_the_model_the_json_reported_measured_figures_included(
    c_target: CTarget, tmp_path: Path, method: str
) -> None:
    """The PSSDUP note is written once the memory is copied (and the clone reaped): what gdb users and pss-dup's own
    reader find in the core is the model the CLI reported, copy time, unreadable pages and reaping stop included,
    and readelf still reads the layout."""
    need_tools("readelf")
    core = tmp_path / "parked.core"
    record = dump(str(c_target.pid), str(core), "--clone-method", method)
    with open(core, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        note = elfcore.read_core(m).snapshot
    assert serial.to_dict(note) == record["snapshot"]
    reported = record["snapshot"]["memory"]
    assert reported == record["memory"]
    assert reported["copy_ms"] > 0 and reported["failed_pages"] == 0
    assert reported["bytes_captured"] == sum(r["dumped"] for r in record["snapshot"]["va_space"])
    assert (reported["reap_stopped_ms"] is not None) == (method == "clone")
    assert record["snapshot"]["performance"]["wait_ms"] is not None
    assert record["snapshot"]["interruptions"] is not None
    listing = subprocess.run(["readelf", "-W", "-l", "-n", str(core)], capture_output=True, text=True, check=True)
    assert "PSSDUP" in listing.stdout and "NT_PRSTATUS" in listing.stdout
    assert "Warning" not in listing.stderr + listing.stdout and "Error" not in listing.stderr


def test_source_runs_on_with_its_memory_intact_no_zombie_and_no_sigchld(c_target: CTarget, tmp_path: Path) -> None:
    before = c_target.report()
    record = dump(str(c_target.pid), str(tmp_path / "a.core"))
    assert record["timings"]["stopped_ms"] > 0
    assert 0 < record["timings"]["reap_stopped_ms"] < record["timings"]["total_ms"]
    clone = record["memory"]["clone_pid"]
    assert clone and not os.path.exists(f"/proc/{clone}")
    assert children_of(c_target.pid) == []
    after = c_target.report()
    assert after["sigchld"] == 0
    assert after["errors"] == 0
    assert after["generations"] > before["generations"]
    with open(f"/proc/{c_target.pid}/status") as f:
        status = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
    assert status["TracerPid"].strip() == "0"


def python_backtraces(tmp_path: Path, script: str, *options: str) -> tuple[dict[str, Any], str]:
    """Dump a Python process running `script` (which prints "ready") with `options`: the record, and gdb's
    `thread apply all bt` of the core, read against the real interpreter so that gdb finds libpython."""
    python = os.path.realpath(sys.executable)
    proc = subprocess.Popen([python, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout and proc.stdout.readline() == "ready\n"
        time.sleep(0.2)
        core = tmp_path / "python.core"
        record = dump(str(proc.pid), str(core), *options)
        return record, gdb(python, core, "thread apply all bt")
    finally:
        proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout):
            if stream:
                stream.close()


def test_python_threads_all_show_libpython_frames(tmp_path: Path) -> None:
    _, out = python_backtraces(tmp_path, PYTHON_TARGET)
    sections = thread_sections(out)
    assert len(sections) == 4, out
    for section in sections:
        # Frames of libpython (CPython's own functions: _PyEval_EvalFrameDefault, PyThread_acquire_lock_timed, ...)
        assert re.search(r" in _?Py[A-Za-z_]+ \(", section), section


def test_snapshot_with_memory_pushed_into_another_process_opens_in_gdb(c_target: CTarget, tmp_path: Path) -> None:
    holder = subprocess.Popen(["sleep", "300"])
    try:
        result = subprocess.run([PSS_DUP, "dup", str(c_target.pid), str(holder.pid), "--everything", "-o", "json"],
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        assert result.returncode == 0, result.stderr
        fd = json.loads(result.stdout)["results"][0]["target"]["handle"]
        out = gdb(c_target.exe, f"/proc/{holder.pid}/fd/{fd}", "thread apply all bt", "print *heap_value")
        assert all(name in out for name in ("park_alpha", "park_beta", "park_gamma")), out
        assert "987654321" in out
        # ... and `dump --from` writes the same snapshot out as a file.
        written = tmp_path / "held.core"
        record = dump("--from", str(holder.pid), "--handle", str(fd), str(written))
        assert record["source"] == {"pid": holder.pid, "handle": fd}
        assert written.stat().st_size == os.stat(f"/proc/{holder.pid}/fd/{fd}").st_size
        assert "park_beta" in gdb(c_target.exe, written, "thread apply all bt")
        assert children_of(c_target.pid) == []
        assert c_target.report()["sigchld"] == 0
    finally:
        holder.kill()
        holder.wait(timeout=10)


def vdso_range(pid: int | str) -> tuple[int, int]:
    [line] = [line for line in Path(f"/proc/{pid}/maps").read_text().splitlines() if line.endswith("[vdso]")]
    start, end = line.split()[0].split("-")
    return int(start, 16), int(end, 16)


def load_segments(core: Path) -> dict[int, tuple[int, int, int]]:
    """PT_LOADs of an ELF64 core: vaddr -> (offset, filesz, memsz)."""
    data = core.read_bytes()
    phoff, phentsize, phnum = struct.unpack_from("<Q", data, 32)[0], *struct.unpack_from("<HH", data, 54)
    loads = {}
    for i in range(phnum):
        kind, _flags, offset, vaddr, _paddr, filesz, memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", data, phoff + i * phentsize
        )
        if kind == 1:  # PT_LOAD
            loads[vaddr] = (offset, filesz, memsz)
    return loads


@pytest.mark.parametrize("method", ["clone", "copy"])
def test_the_vdso_is_dumped_whole_and_gdb_reads_it_without_warning(
    c_target: CTarget, tmp_path: Path, method: str
) -> None:
    """The kernel dumps special mappings such as [vdso] whole (fs/coredump.c, always_dump_vma) whether or not the
    process touched every page; a core cut to the pages present leaves gdb a truncated DSO."""
    core = tmp_path / "vdso.core"
    dump(str(c_target.pid), str(core), "--clone-method", method)
    start, end = vdso_range(c_target.pid)
    offset, filesz, memsz = load_segments(core)[start]
    assert filesz == memsz == end - start
    own_start, own_end = vdso_range("self")
    with open("/proc/self/mem", "rb") as mem:
        mem.seek(own_start)
        own = mem.read(own_end - own_start)
    with core.open("rb") as f:
        f.seek(offset)
        assert f.read(filesz) == own  # every process maps the same vDSO image
    out = gdb(c_target.exe, core, "info sharedlibrary")
    assert "corrupt string table index" not in out and "system-supplied DSO" not in out, out


def test_dump_file_rules_default_name_0600_and_no_overwrite_without_force(c_target: CTarget, tmp_path: Path) -> None:
    record = dump(str(c_target.pid), cwd=tmp_path)
    [made] = list(tmp_path.iterdir())
    assert re.fullmatch(rf"parked_{c_target.pid}_\d{{6}}_\d{{6}}\.core", made.name)
    assert record["file"] == str(made)
    assert stat.S_IMODE(made.stat().st_mode) == 0o600
    size = made.stat().st_size
    again = subprocess.run([PSS_DUP, "dump", str(c_target.pid), str(made)], capture_output=True, text=True, timeout=60)
    assert again.returncode == 9 and "--force" in again.stderr
    assert made.stat().st_size == size
    dump(str(c_target.pid), str(made), "--force")
    assert stat.S_IMODE(made.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [made.name]


def test_progress_bar_is_drawn_only_on_a_terminal(c_target: CTarget, tmp_path: Path) -> None:
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TTY_INTERACTIVE")}
    try:
        proc = subprocess.Popen([PSS_DUP, "dump", str(c_target.pid), str(tmp_path / "tty.core"), "-o", "json"],
                                stdout=subprocess.PIPE, stderr=follower, env=env)  # fmt: skip
        os.close(follower)
        follower = -1
        output, _ = proc.communicate(timeout=120)
        drawn = drain_terminal(leader)
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    assert proc.returncode == 0
    assert b"copying memory" in drawn
    assert json.loads(output)["ok"] is True


def test_a_write_error_mid_copy_is_reported_and_leaves_no_file_no_clone(c_target: CTarget, tmp_path: Path) -> None:
    """RLIMIT_FSIZE below the core's size: sizing the file fails with EFBIG (Python ignores SIGXFSZ), said as the
    limit it is, with the size the core needs."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    out = tmp_path / "big.core"
    result = subprocess.run([PSS_DUP, "dump", str(c_target.pid), str(out)], capture_output=True, text=True,
                            timeout=120, preexec_fn=limit)  # fmt: skip
    assert result.returncode == 9, result.stderr
    match = re.fullmatch(rf"pss-dup: {re.escape(str(out))} would outgrow the file size limit \(ulimit -f\) of "
                         rf"1048576 bytes \((\d+) bytes needed, (\d+) written\)\n", result.stderr)  # fmt: skip
    assert match, result.stderr
    assert int(match[1]) > 1 << 20 >= int(match[2])
    assert list(tmp_path.iterdir()) == []
    assert children_of(c_target.pid) == []
    report = c_target.report()
    assert report["sigchld"] == 0 and report["errors"] == 0


@pytest.mark.parametrize("method", ["clone", "copy"])
def test_a_dump_onto_a_full_filesystem_exits_9_with_one_line_and_leaves_no_file(
    c_target: CTarget, tmpfs: Callable[[str], Path], method: str
) -> None:
    """ENOSPC part way through the copy (the clone's memory, or the frozen copy) is the user's disk being full:
    one line that names the filesystem as `df` would and says how much was needed, exit 9, and nothing left on it."""
    mnt = tmpfs("4m")
    out = mnt / "full.core"
    result = subprocess.run([PSS_DUP, "dump", str(c_target.pid), str(out), "--clone-method", method],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 9, result.stderr
    match = re.fullmatch(rf"pss-dup: no space left on tmpfs \(mounted on {re.escape(str(mnt))}\) for "
                         rf"{re.escape(str(out))} \((\d+) bytes needed, (\d+) written\)\n", result.stderr)  # fmt: skip
    assert match, result.stderr
    needed, written = int(match[1]), int(match[2])
    assert needed > 4 << 20 >= written > 0
    assert list(mnt.iterdir()) == []
    assert children_of(c_target.pid) == []
    status = proc_status(c_target.pid)
    assert status["TracerPid"] == "0" and status["State"][0] not in "tT"
    report = c_target.report()
    assert report["sigchld"] == 0 and report["errors"] == 0

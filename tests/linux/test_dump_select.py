"""What memory a core holds: the process's own coredump_filter and MADV_DONTDUMP by default, `--filter MASK`,
`--all-memory`, and `--mini` cores that gdb backtraces every thread of (C threads, Python threads with libpython
frames), also from `watch --dump --mini`."""

from __future__ import annotations

import json
import mmap
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pss_cli import serial
from pss_cli.model import VaRegion
from tests.conftest import PSS_DUP, need_tools, reap
from tests.linux.conftest import compile_c
from tests.linux.test_dump_gdb import (
    CTarget,
    c_target,
    dump,
    gdb,
    python_backtraces,
    thread_sections,
    threads_exe,
)
from tests.linux.test_memory import region

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux only")

if sys.platform == "linux":
    from pss_cli.platform.linux import dumprules, elfcore
    from pss_cli.platform.linux.dumprules import Extent, Filter

__all__ = ["c_target", "threads_exe"]  # fixtures shared with test_dump_gdb

PAGE = 4096

FILTER_C = r"""
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static void *fill(size_t pages, int flags, uint64_t tag) {
    uint64_t *p = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE, flags | MAP_ANONYMOUS, -1, 0);
    for (size_t i = 0; i < pages * 4096 / 8; i++) p[i] = tag;
    return p;
}

int main(int argc, char **argv) {
    if (argc > 1) {  /* its own filter, as a program that keeps its heap out of cores would set it */
        FILE *f = fopen("/proc/self/coredump_filter", "w");
        if (!f || fprintf(f, "%s", argv[1]) < 0 || fclose(f) != 0) { perror("coredump_filter"); return 1; }
    }
    void *anon = fill(4, MAP_PRIVATE, 0xA11CE5A11CE5ULL);
    void *shared = fill(2, MAP_SHARED, 0x5A5A5EED5A5AULL);
    void *secret = fill(2, MAP_PRIVATE, 0xDDDD5EC2E7DDULL);
    madvise(secret, 2 * 4096, MADV_DONTDUMP);
    printf("{\"anon\": %lu, \"shared\": %lu, \"secret\": %lu}\n", (unsigned long)anon, (unsigned long)shared,
           (unsigned long)secret);
    fflush(stdout);
    char line[8];
    while (fgets(line, sizeof line, stdin)) {}
    return 0;
}
"""

ANON = (0xA11CE5A11CE5).to_bytes(8, "little") * (PAGE // 8)
SHARED = (0x5A5A5EED5A5A).to_bytes(8, "little") * (PAGE // 8)
SECRET = (0xDDDD5EC2E7DD).to_bytes(8, "little") * (PAGE // 8)


class FilterTarget:
    """The running filter target and the addresses of its three kinds of memory."""

    def __init__(self, exe: Path, own_filter: str | None) -> None:
        self.proc = subprocess.Popen([str(exe), *([own_filter] if own_filter else [])], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert self.proc.stdout
        self.where: dict[str, int] = json.loads(self.proc.stdout.readline())

    @property
    def pid(self) -> int:
        return self.proc.pid


@pytest.fixture(scope="module")
def filter_exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_c(tmp_path_factory, "filter", FILTER_C, "-O0")


@pytest.fixture
def no_anon_target(filter_exe: Path) -> Iterator[FilterTarget]:
    """A target whose own coredump_filter (0x32) leaves anonymous private memory out of its cores."""
    target = FilterTarget(filter_exe, "0x32")
    try:
        yield target
    finally:
        reap(target.proc)


class CoreFile:
    """A core file read back: its model and the bytes it holds at an address."""

    def __init__(self, path: Path) -> None:
        data = path.read_bytes()
        with mmap.mmap(-1, max(1, len(data))) as m:
            m[: len(data)] = data
            self.parsed = elfcore.read_core(m)
        self.data = data

    def read(self, address: int, size: int = PAGE) -> bytes | None:
        """The bytes at `address`, or None where the core holds none (a PT_LOAD without file bytes there)."""
        for p in self.parsed.loads:
            inside = address - p.segment.vaddr
            if 0 <= inside < p.segment.memsz:
                if inside + size > p.segment.filesz:
                    return None
                return self.data[p.offset + inside : p.offset + inside + size]
        raise AssertionError(f"no PT_LOAD covers {address:#x}")


def dumped(pid: int, core: Path, *options: str) -> tuple[dict[str, Any], CoreFile]:
    record = dump(str(pid), str(core), *options)
    return record, CoreFile(core)


# --------------------------------------------------------------------------------------------- coredump_filter

LIBC = "/usr/lib/libc.so.6"


@pytest.mark.parametrize(
    ("case", "mask", "extent"),
    [
        (region(anonymous=PAGE, vm_flags=("rd", "wr")), 0x32, Extent.NONE),  # bit 0: anonymous private
        (region(anonymous=PAGE, vm_flags=("rd", "wr")), 0x01, Extent.WHOLE),
        (region("rw-s", "/dev/zero (deleted)", inode=5, vm_flags=()), 0x31, Extent.NONE),  # bit 1: anonymous shared
        (region("rw-s", "/dev/zero (deleted)", inode=5, vm_flags=()), 0x02, Extent.WHOLE),
        (region("r-xp", LIBC, inode=5, offset=PAGE, anonymous=0, vm_flags=()), 0x33, Extent.NONE),  # bit 2
        (region("r-xp", LIBC, inode=5, offset=PAGE, anonymous=0, vm_flags=()), 0x04, Extent.WHOLE),
        (region("rw-p", LIBC, inode=5, offset=PAGE, anonymous=PAGE, vm_flags=()), 0x04, Extent.WHOLE),
        (region("rw-s", "/tmp/data.bin", inode=5, vm_flags=()), 0x33, Extent.NONE),  # bit 3: shared file
        (region("rw-s", "/tmp/data.bin", inode=5, vm_flags=()), 0x08, Extent.WHOLE),
        (region("r--p", LIBC, inode=5, offset=0, anonymous=0, vm_flags=()), 0x23, Extent.NONE),  # bit 4: headers
        (region("r--p", LIBC, inode=5, offset=0, anonymous=0, vm_flags=()), 0x10, Extent.HEADER),
        (region(anonymous=PAGE, vm_flags=("rd", "wr", "ht")), 0x13, Extent.NONE),  # bit 5: private hugetlb
        (region("rw-s", "/SYSV0 (deleted)", inode=5, vm_flags=("ht",)), 0x40, Extent.WHOLE),  # bit 6
        (region(anonymous=PAGE, vm_flags=("rd", "wr", "dd")), 0x1FF, Extent.NONE),  # MADV_DONTDUMP, any mask
        (region("r-xp", "[vdso]", vm_flags=()), 0x00, Extent.WHOLE),  # always dumped
    ],
)
def test_every_coredump_filter_bit_is_applied_as_the_kernel_applies_it(case: Any, mask: int, extent: Any) -> None:
    assert dumprules.dump_rule(case, clone=False, rules=Filter(mask, "--filter")).extent is extent


def test_a_file_mapping_taken_for_its_bit_is_read_page_by_page_not_from_pagemap() -> None:
    text = region("r-xp", LIBC, inode=5, offset=PAGE, anonymous=0, vm_flags=())
    assert dumprules.dump_rule(text, clone=False, rules=Filter(0x04, "--filter")).every_page
    written = region(anonymous=PAGE, vm_flags=("rd", "wr"))
    assert not dumprules.dump_rule(written, clone=False, rules=Filter(0x33, "--filter")).every_page


@pytest.mark.parametrize(
    ("case", "extent"),
    [
        (region(anonymous=PAGE, vm_flags=("rd", "wr", "dd")), Extent.WHOLE),
        (region("r-xp", LIBC, inode=5, offset=PAGE, anonymous=0, vm_flags=()), Extent.WHOLE),
        (region("---p", LIBC, inode=5, offset=PAGE, anonymous=0, vm_flags=()), Extent.NONE),
        (region("r--p", "[vvar]", anonymous=0, vm_flags=()), Extent.NONE),
        (region(anonymous=PAGE, vm_flags=("rd", "wr", "io")), Extent.NONE),
    ],
)
def test_all_memory_takes_every_readable_mapping(case: VaRegion, extent: Extent) -> None:
    rules = Filter(source="--all-memory", all_memory=True)
    assert dumprules.dump_rule(case, clone=False, rules=rules).extent is extent


def test_the_process_filter_is_read_from_proc(no_anon_target: FilterTarget) -> None:
    assert dumprules.read_filter(no_anon_target.pid) == Filter(0x32, "process")
    assert dumprules.read_filter(os.getpid()).source == "process"


@pytest.mark.parametrize("method", ["clone", "copy"])
def test_a_process_that_filters_out_anonymous_memory_gets_a_core_without_it(
    no_anon_target: FilterTarget, tmp_path: Path, method: str
) -> None:
    record, core = dumped(no_anon_target.pid, tmp_path / "own.core", "--clone-method", method)
    where = no_anon_target.where
    assert core.read(where["anon"]) is None  # bit 0 is off in the process's own filter
    assert core.read(where["shared"]) == SHARED  # bit 1 is on
    assert core.read(where["secret"]) is None  # MADV_DONTDUMP
    memory = record["memory"]
    assert (memory["selection"], memory["filter"], memory["filter_source"]) == ("kernel", 0x32, "process")
    assert core.parsed.snapshot.memory is not None and core.parsed.snapshot.memory.filter == 0x32


def test_filter_overrides_the_process_mask_and_dontdump_still_stays_out(
    no_anon_target: FilterTarget, tmp_path: Path
) -> None:
    where = no_anon_target.where
    record, core = dumped(no_anon_target.pid, tmp_path / "all-bits.core", "--filter", "0x1ff")
    assert (record["memory"]["filter"], record["memory"]["filter_source"]) == (0x1FF, "--filter")
    assert core.read(where["anon"]) == ANON and core.read(where["shared"]) == SHARED
    assert core.read(where["secret"]) is None
    # Decimal 1: anonymous private memory only; no shared memory, no ELF header pages.
    record, core = dumped(no_anon_target.pid, tmp_path / "one.core", "--filter", "1")
    assert record["memory"]["filter"] == 1
    assert core.read(where["anon"]) == ANON and core.read(where["shared"]) is None
    regions = core.parsed.snapshot.va_space or ()
    headers = [r for r in regions if r.mapped_file and "libc.so" in r.mapped_file and r.offset == 0]
    assert headers and all(r.dumped == 0 for r in headers)


def test_all_memory_takes_dontdump_regions_and_file_contents(no_anon_target: FilterTarget, tmp_path: Path) -> None:
    where = no_anon_target.where
    record, core = dumped(no_anon_target.pid, tmp_path / "all.core", "--all-memory")
    memory = record["memory"]
    assert (memory["selection"], memory["filter"], memory["filter_source"]) == ("all", None, None)
    for name, value in (("anon", ANON), ("shared", SHARED), ("secret", SECRET)):
        assert core.read(where[name]) == value, name
    # libc's code is in the core, as the file holds it (gcore -a dumps file-backed mappings too).
    regions = core.parsed.snapshot.va_space or ()
    [text] = [r for r in regions if r.mapped_file and "libc.so" in r.mapped_file and "x" in r.perms]
    assert text.dumped == text.size
    assert text.mapped_file is not None and text.offset is not None
    with open(text.mapped_file, "rb") as f:
        f.seek(text.offset)
        assert core.read(text.base, PAGE) == f.read(PAGE)


def test_the_table_says_which_mask_was_used_and_where_it_came_from(
    no_anon_target: FilterTarget, tmp_path: Path
) -> None:
    wide = {**os.environ, "COLUMNS": "200"}
    result = subprocess.run([PSS_DUP, "dump", str(no_anon_target.pid), str(tmp_path / "t.core")],
                            capture_output=True, text=True, timeout=120, env=wide)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert re.search(r"chosen by\s+coredump_filter 0x32 \(the process's /proc/PID/coredump_filter\)", result.stdout)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--filter", "zz"], "'zz' is not a mask: give hex (0x33) or decimal (51)"),
        (["--filter", "0x200"], "0x200 is not a coredump_filter mask"),
        (["--filter", "-1"], "-0x1 is not a coredump_filter mask"),
        (["--mini", "--filter", "0x33"], "--mini and --filter exclude each other"),
        (["--all-memory", "--filter", "1"], "--filter and --all-memory exclude each other"),
        (["--stack-limit", "1M"], "--stack-limit sizes the stacks of a --mini core: add --mini"),
        (["--mini", "--stack-limit", "lots"], "'lots' is not a size"),
        (["--mini", "--stack-limit", "0"], "a stack limit of 0 bytes takes nothing"),
    ],
)
def test_bad_memory_options_are_one_line_usage_errors(
    no_anon_target: FilterTarget, tmp_path: Path, options: list[str], message: str
) -> None:
    result = subprocess.run([PSS_DUP, "dump", str(no_anon_target.pid), str(tmp_path / "x.core"), *options],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------- mini cores


def stack_bytes(core: CoreFile, record: dict[str, Any]) -> dict[int, int]:
    """tid -> bytes the core holds from that thread's stack pointer upwards, in the PT_LOAD that holds it."""
    out = {}
    for thread in record["snapshot"]["threads"]:
        rsp = thread["context"]["registers"]["rsp"]
        for p in core.parsed.loads:
            if p.segment.vaddr <= rsp < p.segment.vaddr + p.segment.filesz:
                out[thread["tid"]] = p.segment.vaddr + p.segment.filesz - rsp
    return out


@pytest.mark.parametrize("method", [None, "clone"])
def test_gdb_backtraces_every_thread_of_a_mini_core(c_target: CTarget, tmp_path: Path, method: str | None) -> None:
    core = tmp_path / "mini.core"
    record = dump(str(c_target.pid), str(core), "--mini", *(["--clone-method", method] if method else []))
    memory = record["memory"]
    assert memory["selection"] == "mini" and memory["stack_limit"] == 8 << 20
    assert memory["method"] == ("va-clone" if method else "frozen-copy")  # a mini core is copied while frozen
    assert core.stat().st_size < 2 << 20  # the 8 MiB the target rewrites stay out
    note = CoreFile(core).parsed.snapshot  # pss-dup's own note says what kind of core this is
    assert serial.to_dict(note)["memory"] == memory
    out = gdb(c_target.exe, core, "thread apply all bt")
    sections = thread_sections(out)
    assert len(sections) == 5, out
    for function in ("park_alpha", "park_beta", "park_gamma", "rewrite_memory"):
        assert sum(function in s for s in sections) == 1, out
    assert any(re.search(r"\bmain \(\)", s) for s in sections), out
    assert "??" not in out, out
    assert c_target.report()["errors"] == 0


def test_stack_limit_caps_what_each_thread_stack_gives(c_target: CTarget, tmp_path: Path) -> None:
    core = tmp_path / "small.core"
    record = dump(str(c_target.pid), str(core), "--mini", "--stack-limit", "8K")
    assert record["memory"]["stack_limit"] == 8192
    held = stack_bytes(CoreFile(core), record)
    assert len(held) == 5 and all(0 < size <= 8192 for size in held.values()), held
    assert "park_beta" in gdb(c_target.exe, core, "thread apply all bt")  # the innermost frames are kept


PYTHON_THREADS = r"""
import sys, threading, time
event = threading.Event()
def sleeper():
    while True:
        time.sleep(0.05)
for i in range(12):
    threading.Thread(target=sleeper if i % 2 else event.wait, daemon=True).start()
print("ready", flush=True)
sys.stdin.readline()
"""


def test_a_mini_core_of_python_threads_shows_libpython_frames_for_every_thread(tmp_path: Path) -> None:
    record, out = python_backtraces(tmp_path, PYTHON_THREADS, "--mini")
    assert record["memory"]["bytes_captured"] < 4 << 20
    sections = thread_sections(out)
    assert len(sections) == 13, out
    for section in sections:
        assert re.search(r" in _?Py[A-Za-z_]+ \(", section), section
    assert "No shared libraries loaded" not in out, out


def test_watch_dump_mini_writes_mini_cores(c_target: CTarget, tmp_path: Path) -> None:
    result = subprocess.run([PSS_DUP, "watch", str(c_target.pid), "--dump", str(tmp_path), "--mini", "-o", "jsonl"],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    [action] = [e for e in map(json.loads, result.stdout.splitlines()) if e["event"] == "action"]
    assert action["ok"] and action["bytes"] < 2 << 20
    parsed = CoreFile(Path(action["file"])).parsed.snapshot
    assert parsed.memory is not None and parsed.memory.selection == "mini"
    assert "park_gamma" in gdb(c_target.exe, action["file"], "thread apply all bt")


def test_a_mini_core_streams_to_stdout_compressed_and_gdb_backtraces_it(c_target: CTarget, tmp_path: Path) -> None:
    """--mini with - and --compress (issue 13's points 1, 3 and 4 together): the frozen copy's buffer goes out as
    one zstd frame on stdout, and gdb backtraces every thread of what zstd -d gives back."""
    need_tools("zstd")
    core = tmp_path / "mini.core"
    command = f"{PSS_DUP} dump {c_target.pid} - --mini --compress zstd -o json | zstd -q -d -o {core}"
    result = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stderr)["results"][0]  # stdout holds the core: the report goes to stderr
    assert record["memory"]["selection"] == "mini" and record["memory"]["method"] == "frozen-copy"
    assert record["output"]["streamed"] and record["output"]["core_bytes"] == core.stat().st_size < 2 << 20
    out = gdb(c_target.exe, core, "thread apply all bt")
    for function in ("park_alpha", "park_beta", "park_gamma", "rewrite_memory"):
        assert function in out, out
    assert list(tmp_path.iterdir()) == [core]


def test_watch_dump_mini_compress_writes_compressed_mini_cores(c_target: CTarget, tmp_path: Path) -> None:
    need_tools("zstd")
    result = subprocess.run([PSS_DUP, "watch", str(c_target.pid), "--dump", str(tmp_path), "--mini", "--compress",
                             "zstd", "-o", "jsonl"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    [action] = [e for e in map(json.loads, result.stdout.splitlines()) if e["event"] == "action"]
    made = Path(action["file"])
    assert action["ok"] and made.name.endswith(".core.zst") and action["bytes"] == made.stat().st_size
    core = tmp_path / "mini.core"
    subprocess.run(["zstd", "-q", "-d", str(made), "-o", str(core)], check=True)
    parsed = CoreFile(core).parsed.snapshot
    assert parsed.memory is not None and parsed.memory.selection == "mini"
    assert "park_gamma" in gdb(c_target.exe, core, "thread apply all bt")


def test_a_mini_core_too_big_for_a_buffer_is_copied_into_the_file_directly(
    c_target: CTarget, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pss_cli import api
    from pss_cli.model import DumpSelection
    from pss_cli.platform.linux import vaclone

    monkeypatch.setattr(vaclone, "MINI_BUFFER", 0)
    core = tmp_path / "direct.core"
    snap = api.dump(c_target.pid, core, selection=DumpSelection(mini=True))
    assert snap.memory is not None and snap.memory.selection == "mini" and snap.memory.method == "frozen-copy"
    assert CoreFile(core).parsed.snapshot == snap
    out = gdb(c_target.exe, core, "thread apply all bt")
    assert all(name in out for name in ("park_alpha", "park_beta", "park_gamma", "rewrite_memory")), out


GO_TARGET = r"""
package main

import (
	"bufio"
	"fmt"
	"os"
	"syscall"
)

// A read(2) on a pipe nobody writes to: the goroutine keeps its thread, blocked in the kernel, where neither the
// scheduler nor a busy machine moves it. (os.File would park it in the netpoller instead.)
//
//go:noinline
func waitInGoroutine(fd int, ready chan<- bool) {
	buf := make([]byte, 1)
	ready <- true
	syscall.Read(fd, buf)
}

func main() {
	var fds [2]int
	if err := syscall.Pipe(fds[:]); err != nil {
		panic(err)
	}
	ready := make(chan bool)
	for i := 0; i < 4; i++ {
		go waitInGoroutine(fds[0], ready)
		<-ready
	}
	fmt.Println(fds[0])
	bufio.NewReader(os.Stdin).ReadString('\n')
}
"""


@pytest.fixture(scope="module")
def go_exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_tools("go")
    root = tmp_path_factory.mktemp("go")
    (root / "main.go").write_text(GO_TARGET)
    env = {**os.environ, "GOCACHE": str(root / "cache"), "GOPATH": str(root / "path"), "GO111MODULE": "off"}
    subprocess.run(["go", "build", "-o", "spin", "main.go"], cwd=root, env=env, check=True, timeout=300)
    return root / "spin"


def in_read(pid: int, tid: str, fd: int) -> bool:
    """Whether thread `tid` is blocked in read(2) on `fd` (syscall 0 in /proc/PID/task/TID/syscall)."""
    try:
        words = Path(f"/proc/{pid}/task/{tid}/syscall").read_text().split()
    except OSError:
        return False
    return len(words) > 1 and words[0] == "0" and int(words[1], 16) == fd


def test_gdb_backtraces_the_goroutines_in_a_mini_core_of_a_go_binary(go_exe: Path, tmp_path: Path) -> None:
    proc = subprocess.Popen([str(go_exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        pipe = int(proc.stdout.readline())
        # A goroutine announces itself just before its read(2): wait until all four are in the kernel.
        deadline = time.monotonic() + 10
        while sum(in_read(proc.pid, tid, pipe) for tid in os.listdir(f"/proc/{proc.pid}/task")) < 4:
            assert time.monotonic() < deadline, "the goroutines never blocked in read(2)"
            time.sleep(0.01)
        mini, full = tmp_path / "mini.core", tmp_path / "full.core"
        record = dump(str(proc.pid), str(mini), "--mini")
        dump(str(proc.pid), str(full))
        # Go's stacks lie in a heap arena of 64 MiB: only the pages the runtime touched belong in a mini core.
        assert mini.stat().st_size < full.stat().st_size / 2, (mini.stat().st_size, full.stat().st_size)
        out = gdb(go_exe, mini, "info threads", "thread apply all bt")
        sections = thread_sections(out)
        assert len(sections) == len(record["snapshot"]["threads"]) >= 5, out
        assert sum("main.waitInGoroutine" in s for s in sections) == 4, out
        assert all(re.search(r"#0\s+(?:0x[0-9a-f]+ in )?(?:main|runtime|syscall)[./]", s) for s in sections), out
    finally:
        reap(proc)


MANY_THREADS_C = r"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

volatile char *held;

static void *wait_here(void *arg) {
    for (;;) pause();
    return arg;
}

int main(int argc, char **argv) {
    size_t bytes = strtoul(argv[2], NULL, 10) << 20;
    char *p = malloc(bytes);
    memset(p, 1, bytes);
    held = p;
    for (int i = 0, n = atoi(argv[1]); i < n; i++) {
        pthread_t t;
        pthread_create(&t, NULL, wait_here, NULL);
    }
    puts("ready");
    fflush(stdout);
    for (;;) pause();
}
"""


@pytest.fixture(scope="module")
def many_threads_exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_c(tmp_path_factory, "many", MANY_THREADS_C, "-O1", "-pthread")


@pytest.mark.parametrize(
    ("threads", "mib", "method"),
    [(160, 16, "va-clone"), (4, 16, "frozen-copy"), (16, 384, "frozen-copy"), (160, 512, "frozen-copy")],
)
def test_a_mini_core_takes_the_method_that_stops_the_process_less(
    many_threads_exe: Path, tmp_path: Path, threads: int, mib: int, method: str
) -> None:
    """Many threads and little memory: the clone (its page-table copy is short, the frozen copy reads every stack
    while all wait); otherwise the frozen copy (bench/bench_dump.py's mini section measured both)."""
    proc = subprocess.Popen([str(many_threads_exe), str(threads), str(mib)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        core = tmp_path / "mini.core"
        record = dump(str(proc.pid), str(core), "--mini")
        assert record["memory"]["method"] == method
        assert len(record["snapshot"]["threads"]) == threads + 1
        out = gdb(many_threads_exe, core, "thread apply all bt 3")
        assert sum("wait_here" in s for s in thread_sections(out)) == threads, out
    finally:
        reap(proc)

"""Which pages a snapshot holds and how they are copied: the kernel's core rules, pagemap, the copy engine, the VA
clone and the frozen copy, against a C target (compiled here) that lays out every kind of mapping."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import mmap
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pss_cli import compress
from pss_cli.errors import OutputExists
from pss_cli.model import CLONE_METHODS, CaptureFlags, MemoryProtection, MemoryState, MemoryType, VaRegion
from tests.conftest import PSS_DUP, need_tools
from tests.linux.conftest import big_process, children_of

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux only")

if sys.platform == "linux":
    from pss_cli.platform.linux import backend, copyengine, dumprules, elfcore, memfd, pagescan, procfs, vaclone
    from pss_cli.platform.linux.dumprules import Extent

PAGE = 4096

LAYOUT_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Every page holds one 8-byte value repeated: (tag << 32) | page index, so any byte tells where it came from. */
static void fill(unsigned char *p, int pages, uint64_t tag) {
    for (int i = 0; i < pages; i++) {
        uint64_t v = (tag << 32) | (uint64_t)i;
        for (int j = 0; j < 4096 / 8; j++) memcpy(p + (size_t)i * 4096 + j * 8, &v, 8);
    }
}

static void *anon(size_t size, int flags) {
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, flags | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { perror("mmap"); exit(1); }
    return p;
}

int main(int argc, char **argv) {
    size_t sparse_size = 64u << 20;
    unsigned char *sparse = anon(sparse_size, MAP_PRIVATE | MAP_NORESERVE);
    int touched[] = {0, 100, 5000};
    for (int k = 0; k < 3; k++) fill(sparse + (size_t)touched[k] * 4096, 1, 0x5A00 + k);

    unsigned char *dontdump = anon(2 * 4096, MAP_PRIVATE);
    fill(dontdump, 2, 0xDD);
    madvise(dontdump, 2 * 4096, MADV_DONTDUMP);

    unsigned char *protnone = anon(2 * 4096, MAP_PRIVATE);
    fill(protnone, 2, 0x9E);
    mprotect(protnone, 2 * 4096, PROT_NONE);

    unsigned char *shared = anon(4 * 4096, MAP_SHARED);
    fill(shared, 4, 0x5E);

    unsigned char *dontfork = anon(2 * 4096, MAP_PRIVATE);
    fill(dontfork, 2, 0xDF);
    madvise(dontfork, 2 * 4096, MADV_DONTFORK);

    unsigned char *wipe = anon(2 * 4096, MAP_PRIVATE);
    fill(wipe, 2, 0x3F);
    madvise(wipe, 2 * 4096, MADV_WIPEONFORK);

    unsigned char *gap = anon(3 * 4096, MAP_PRIVATE);
    fill(gap, 3, 0x6A);
    munmap(gap + 4096, 4096);

    int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0600);
    ftruncate(fd, 4 * 4096);
    unsigned char *file = mmap(NULL, 4 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    fill(file, 4, 0xF1);

    printf("{\"sparse\": %lu, \"touched\": [0, 100, 5000], \"dontdump\": %lu, \"protnone\": %lu, \"shared\": %lu, "
           "\"dontfork\": %lu, \"wipe\": %lu, \"gap\": %lu, \"file\": %lu}\n",
           (unsigned long)sparse, (unsigned long)dontdump, (unsigned long)protnone, (unsigned long)shared,
           (unsigned long)dontfork, (unsigned long)wipe, (unsigned long)gap, (unsigned long)file);
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        /* "touch": rewrite the sparse pages, so a snapshot taken before must still hold the old values */
        for (int k = 0; k < 3; k++) fill(sparse + (size_t)touched[k] * 4096, 1, 0x7700 + k);
        printf("touched\n");
        fflush(stdout);
    }
    return 0;
}
"""


def page_value(tag: int, index: int) -> bytes:
    return ((tag << 32) | index).to_bytes(8, "little") * (PAGE // 8)


class Layout:
    """The running C target and the addresses it reported."""

    def __init__(self, proc: subprocess.Popen[bytes], where: dict[str, Any]) -> None:
        self.proc = proc
        self.where = where

    @property
    def pid(self) -> int:
        return self.proc.pid

    def touch(self) -> None:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(b"touch\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == b"touched\n"


@pytest.fixture(scope="module")
def layout_exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_tools("gcc")
    work = tmp_path_factory.mktemp("layout")
    source = work / "layout.c"
    source.write_text(LAYOUT_C)
    exe = work / "layout"
    subprocess.run(["gcc", "-O0", "-g", "-o", str(exe), str(source)], check=True)
    return exe


@pytest.fixture
def layout(layout_exe: Path, tmp_path: Path) -> Iterator[Layout]:
    proc = subprocess.Popen([str(layout_exe), str(tmp_path / "mapped.bin")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)  # fmt: skip
    try:
        assert proc.stdout
        yield Layout(proc, json.loads(proc.stdout.readline()))
    finally:
        proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout):
            if stream:
                stream.close()


class Core:
    """A snapshot's core, read back from its sealed memfd: the model and the bytes at an address."""

    def __init__(self, fd: int) -> None:
        self.parsed = memfd.read_core_fd(fd)
        size = os.fstat(fd).st_size
        with mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ) as m:
            self.data = bytes(m)

    def segment_at(self, address: int) -> elfcore.PlacedSegment:
        for p in self.parsed.loads:
            if p.segment.vaddr <= address < p.segment.vaddr + p.segment.memsz:
                return p
        raise AssertionError(f"no PT_LOAD covers {address:#x}")

    def read(self, address: int, size: int = PAGE) -> bytes | None:
        """The bytes the core holds at `address`, or None if the core has no file bytes there."""
        p = self.segment_at(address)
        inside = address - p.segment.vaddr
        if inside + size > p.segment.filesz:
            return None
        return self.data[p.offset + inside : p.offset + inside + size]

    def region(self, address: int) -> VaRegion:
        for r in self.parsed.snapshot.va_space or ():
            if r.base <= address < r.end:
                return r
        raise AssertionError(f"no region at {address:#x}")


def snapshot_core(pid: int, method: str) -> Core:
    flags = CaptureFlags.VA_SPACE | CaptureFlags.VA_SPACE_SECTION_INFORMATION | CaptureFlags.VA_CLONE
    with backend.capture(pid, flags, timeout=10, clone_method=method) as snap:
        return Core(snap.handle())


# ------------------------------------------------------------------------------------------------ the rules


def region(perms: str = "rw-p", path: str | None = None, **fields: Any) -> VaRegion:
    return VaRegion(
        base=0x10000,
        size=4 * PAGE,
        perms=perms,
        protection=MemoryProtection.READWRITE,
        state=MemoryState.COMMIT,
        type=MemoryType.PRIVATE,
        mapped_file=path,
        **fields,
    )


@pytest.mark.parametrize(
    ("case", "extent"),
    [
        (region(anonymous=PAGE, vm_flags=("rd", "wr", "dd")), Extent.NONE),
        (region(anonymous=PAGE, vm_flags=("rd", "wr", "io")), Extent.NONE),
        (region(anonymous=PAGE, vm_flags=("rd", "wr", "pf")), Extent.NONE),
        (region("r--p", "[vvar]", anonymous=0, vm_flags=()), Extent.NONE),
        (region("r--p", "[vvar_vclock]", anonymous=0, vm_flags=()), Extent.NONE),
        (region("--xp", "[vsyscall]", anonymous=0, vm_flags=()), Extent.NONE),
        (region("r-xp", "[vdso]", anonymous=0, vm_flags=()), Extent.WHOLE),
        (region(anonymous=PAGE, vm_flags=("rd", "wr")), Extent.WHOLE),
        (region(anonymous=0, swap=PAGE, vm_flags=("rd", "wr")), Extent.WHOLE),
        (region(anonymous=0, vm_flags=("rd", "wr")), Extent.NONE),
        (region("r--p", "/usr/lib/libc.so.6", inode=5, offset=0, anonymous=0, vm_flags=()), Extent.HEADER),
        (region("r-xp", "/usr/lib/libc.so.6", inode=5, offset=PAGE, anonymous=0, vm_flags=()), Extent.NONE),
        (
            region("rw-p", "/usr/lib/libc.so.6", inode=5, offset=PAGE, anonymous=PAGE, vm_flags=()),
            Extent.WHOLE,
        ),
        (region("rw-s", "/tmp/data.bin", inode=5, offset=0, rss=PAGE, vm_flags=()), Extent.NONE),
        (region("rw-s", "/dev/zero (deleted)", inode=5, offset=0, vm_flags=()), Extent.WHOLE),
        (region("rw-s", "/memfd:buffers (deleted)", inode=5, offset=0, vm_flags=()), Extent.WHOLE),
        (region("rw-s", "/SYSV00000000 (deleted)", inode=5, offset=0, vm_flags=("ht",)), Extent.NONE),
        (region(anonymous=PAGE, vm_flags=("rd", "wr", "ht")), Extent.WHOLE),
    ],
)
def test_dump_rules_follow_the_kernel_core_filter(case: VaRegion, extent: Extent) -> None:
    assert dumprules.dump_rule(case, clone=False).extent is extent


def test_dontfork_and_wipeonfork_regions_are_left_out_of_a_clone_only() -> None:
    for flag in ("dc", "wf"):
        case = region(anonymous=PAGE, vm_flags=("rd", "wr", flag))
        assert dumprules.dump_rule(case, clone=True).extent is Extent.NONE
        assert dumprules.dump_rule(case, clone=False).extent is Extent.WHOLE


# ------------------------------------------------------------------------------------- real address spaces


@pytest.mark.parametrize("method", CLONE_METHODS)
def test_sparse_reservation_holds_only_its_touched_pages_with_pt_loads_around_holes(
    layout: Layout, method: str
) -> None:
    core = snapshot_core(layout.pid, method)
    base = layout.where["sparse"]
    for k, index in enumerate(layout.where["touched"]):
        assert core.read(base + index * PAGE) == page_value(0x5A00 + k, 0)
    assert core.read(base + 50 * PAGE) is None  # a hole: a PT_LOAD with no file bytes
    inside = [p for p in core.parsed.loads if base <= p.segment.vaddr < base + (64 << 20)]
    assert sum(p.segment.filesz for p in inside) == 3 * PAGE
    assert sum(p.segment.memsz for p in inside) == 64 << 20  # the holes are still in the address-space map
    assert core.region(base).dumped == 3 * PAGE


@pytest.mark.parametrize("method", CLONE_METHODS)
def test_dontdump_is_honoured_and_prot_none_pages_with_data_are_dumped(layout: Layout, method: str) -> None:
    core = snapshot_core(layout.pid, method)
    assert core.read(layout.where["dontdump"]) is None
    assert core.region(layout.where["dontdump"]).dumped == 0
    protnone = layout.where["protnone"]
    assert core.read(protnone) == page_value(0x9E, 0)  # read with FOLL_FORCE through /proc/PID/mem
    assert core.read(protnone + PAGE) == page_value(0x9E, 1)


@pytest.mark.parametrize("method", CLONE_METHODS)
def test_anonymous_shared_memory_is_dumped_and_a_shared_file_mapping_is_not(layout: Layout, method: str) -> None:
    core = snapshot_core(layout.pid, method)
    for i in range(4):
        assert core.read(layout.where["shared"] + i * PAGE) == page_value(0x5E, i)
    assert core.read(layout.where["file"]) is None
    assert core.region(layout.where["file"]).dumped == 0


def test_elf_header_pages_of_file_mappings_are_dumped(layout: Layout) -> None:
    core = snapshot_core(layout.pid, "clone")
    regions = core.parsed.snapshot.va_space or ()
    libc = [r for r in regions if r.mapped_file and "libc.so" in r.mapped_file and r.offset == 0]
    assert libc, "the target maps libc"
    header = core.read(libc[0].base, 4)
    assert header == b"\x7fELF"
    assert libc[0].dumped == PAGE
    text = [r for r in regions if r.mapped_file and "libc.so" in r.mapped_file and "x" in r.perms]
    assert text and text[0].dumped == 0  # code stays in the file


def test_clone_leaves_out_dontfork_and_wipeonfork_and_the_frozen_copy_keeps_them(layout: Layout) -> None:
    cloned = snapshot_core(layout.pid, "clone")
    copied = snapshot_core(layout.pid, "copy")
    for name, tag in (("dontfork", 0xDF), ("wipe", 0x3F)):
        address = layout.where[name]
        assert cloned.read(address) is None
        assert copied.read(address) == page_value(tag, 0)


def test_clone_snapshot_keeps_the_memory_of_the_capture_instant(layout: Layout) -> None:
    """The source rewrites its pages after the capture; the snapshot, copied from the clone later, has the old ones."""
    flags = CaptureFlags.VA_SPACE | CaptureFlags.VA_SPACE_SECTION_INFORMATION | CaptureFlags.VA_CLONE
    with backend.capture(layout.pid, flags, timeout=10) as snap:
        layout.touch()  # the source runs between the clone and the copy
        core = Core(snap.handle())
    base = layout.where["sparse"]
    assert core.read(base) == page_value(0x5A00, 0)
    with open(f"/proc/{layout.pid}/mem", "rb") as mem:
        mem.seek(base)
        assert mem.read(8) == page_value(0x7700, 0)[:8]


def test_capture_with_va_clone_reports_method_size_stop_time_and_leaves_no_child(layout: Layout) -> None:
    flags = CaptureFlags.VA_SPACE | CaptureFlags.VA_SPACE_SECTION_INFORMATION | CaptureFlags.VA_CLONE
    with backend.capture(layout.pid, flags, timeout=10) as snap:
        model = snap.model
        assert model.memory is not None and model.memory.method == "va-clone"
        clone = model.memory.clone_pid
        assert clone is not None and children_of(layout.pid) == [clone]
        with open(f"/proc/{clone}/comm") as f:
            assert f.read().strip() == "pss-vaclone"
        assert os.listdir(f"/proc/{clone}/fd") == []
        snap.handle()
        assert not os.path.exists(f"/proc/{clone}")
    assert model.memory.bytes_captured == sum(r.dumped or 0 for r in model.va_space or ())
    assert model.performance.stopped_ms is not None and model.performance.va_clone_ms is not None
    assert children_of(layout.pid) == []


@pytest.mark.parametrize("method", CLONE_METHODS)
def test_the_memfd_note_is_the_model_the_snapshot_reports_measured_figures_included(
    layout: Layout, method: str
) -> None:
    """A receiver reading the sealed memfd (memfd.read_snapshot_fd) gets the model the capturer reports once the
    copy is done: copy time and unreadable pages as measured, the clone's reaping stop as measured."""
    with backend.capture(layout.pid, backend.DUMP_FLAGS, timeout=10, clone_method=method) as snap:
        before = snap.model.memory
        assert before is not None and before.copy_ms is None and before.failed_pages is None, "nothing copied yet"
        fd = snap.handle()
        reported = snap.model
        received = memfd.read_snapshot_fd(fd)
    assert received == reported
    assert reported.memory is not None and reported.memory.failed_pages == 0
    assert reported.memory.copy_ms is not None and reported.memory.copy_ms > 0
    assert (reported.memory.reap_stopped_ms is not None) == (method == "clone")
    assert reported.performance.wait_ms is not None and reported.interruptions is not None


def test_a_snapshot_closed_unbuilt_kills_and_reaps_its_clone(layout: Layout) -> None:
    flags = CaptureFlags.VA_SPACE | CaptureFlags.VA_CLONE
    with backend.capture(layout.pid, flags, timeout=10) as snap:
        clone = snap.model.memory.clone_pid if snap.model.memory else None
        assert clone is not None and os.path.exists(f"/proc/{clone}")
    assert not os.path.exists(f"/proc/{clone}")
    assert children_of(layout.pid) == []


# ----------------------------------------------------------------------------------------- pagemap, engine


def test_pagemap_scan_and_plain_pagemap_reads_find_the_same_pages(layout: Layout) -> None:
    base = layout.where["sparse"]
    with pagescan.PageScanner(layout.pid) as scanner:
        scanned = scanner.runs(base, base + (64 << 20))
        scanner.use_scan = False
        read = scanner.runs(base, base + (64 << 20))
    expected = [(base + i * PAGE, base + (i + 1) * PAGE) for i in layout.where["touched"]]
    assert read == expected
    assert scanned == expected


@pytest.mark.parametrize("reader", [copyengine.READ_PROC_MEM, copyengine.READ_PROCESS_VM])
def test_copy_engine_zeroes_an_unreadable_page_and_goes_on(layout: Layout, tmp_path: Path, reader: str) -> None:
    shared, gap = layout.where["shared"], layout.where["gap"]  # gap: three pages, the middle one unmapped
    # One-page bounce buffers, three of them in rotation: by the time the unmapped page is read, its buffer still
    # holds a page of `shared` from an earlier batch, which must not end up in the core.
    pieces = [copyengine.Piece(shared, 3 * PAGE, 0), copyengine.Piece(gap, 3 * PAGE, 3 * PAGE)]
    with open(tmp_path / "out", "w+b") as out:
        sink = copyengine.FdSink(out.fileno(), bounce=PAGE)
        stats = copyengine.copy_pieces(layout.pid, pieces, sink, reader=reader)
        sink.close()
        out.seek(0)
        data = out.read()
    assert stats.failed_pages == 1 and stats.bytes == 6 * PAGE
    assert [data[i * PAGE : (i + 1) * PAGE] for i in range(6)] == [
        page_value(0x5E, 0),
        page_value(0x5E, 1),
        page_value(0x5E, 2),
        page_value(0x6A, 0),
        bytes(PAGE),
        page_value(0x6A, 2),
    ]


class InterruptAt:
    """A trace function that raises KeyboardInterrupt before the n-th bytecode run in copyengine.py on this thread: a
    signal handler raises at a bytecode boundary, and this tries each boundary in turn (n = 0 only counts them)."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.count = 0

    def __call__(self, frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename != copyengine.__file__:
            return None
        frame.f_trace_opcodes = True
        return self.opcode

    def opcode(self, frame: Any, event: str, arg: Any) -> Any:
        if event == "opcode":
            self.count += 1
            if self.count == self.at:
                raise KeyboardInterrupt
        return self.opcode


def interrupted_at(at: int, copy: Callable[[], object]) -> tuple[int, BaseException | None]:
    """Run `copy` with KeyboardInterrupt at bytecode `at`; the bytecodes run, and what `copy` raised."""
    tracer = InterruptAt(at)
    sys.settrace(tracer)
    try:
        copy()
        return tracer.count, None
    except BaseException as exc:
        return tracer.count, exc
    finally:
        sys.settrace(None)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # files closed as they are dropped
def test_ctrl_c_on_any_bytecode_of_a_copy_raises_it_and_leaves_no_buffer_or_thread(
    layout: Layout, tmp_path: Path
) -> None:
    """Ctrl-C on each bytecode of the copy engine in turn, into a file (pwrite sink, its writer thread) and into a
    mapping (mapped sink): KeyboardInterrupt comes out every time, never a BufferError from a buffer closed while a
    view of it lived on; the mapping can be closed; no writer thread outlives the copy. (A signal handler runs only
    at some bytecodes; every one is tried. An fd returned by the call just before the interrupt may leak, as
    anywhere in Python; only an uninterrupted copy is checked for that.)"""
    pieces = [copyengine.Piece(layout.where["gap"], 3 * PAGE, PAGE)]  # its middle page is unmapped: a failed read

    def to_file() -> None:
        with open(tmp_path / "out", "w+b") as out:
            copyengine.write_pieces_fd(out.fileno(), 4 * PAGE, pieces, layout.pid, head=b"head", bounce=2 * PAGE)

    def to_mapping() -> None:
        mapping = mmap.mmap(-1, 4 * PAGE)
        try:
            with copyengine.MappedSink(mapping) as sink:
                copyengine.copy_pieces(layout.pid, pieces, sink, batch=2 * PAGE)
        finally:
            mapping.close()  # BufferError here if a view of it were left behind

    def to_sparse_file() -> None:
        with open(tmp_path / "out", "w+b") as out:
            copyengine.write_pieces_fd(out.fileno(), 4 * PAGE, pieces, layout.pid, bounce=2 * PAGE, sparse=True)

    def to_stream() -> None:  # the writer thread writes into a compressor; its fd closes once both let it go
        with open(tmp_path / "out.zst", "w+b") as out:
            stream = copyengine.Stream(out.fileno(), compress.compressor("zstd"))
            try:
                with copyengine.FdSink(stream, bounce=2 * PAGE) as sink:
                    copyengine.copy_pieces(layout.pid, pieces, sink)
                stream.finish(4 * PAGE)
            finally:
                stream.close()

    for copy in (to_file, to_mapping, to_sparse_file, to_stream):
        fds = own_fds()
        total, error = interrupted_at(0, copy)
        assert error is None and total > 100
        wait_for_writers()
        assert own_fds() == fds
        wrong = {}
        for at in range(1, total + 1):
            _, error = interrupted_at(at, copy)
            if not isinstance(error, KeyboardInterrupt):
                wrong[at] = repr(error)
        assert wrong == {}, f"{copy.__name__}: {len(wrong)} of {total} bytecodes: {list(wrong.items())[:5]}"
    error = None
    gc.collect()  # a sink dropped unclosed is collected here, and its finalizer stops its writer
    wait_for_writers()


def wait_for_writers() -> None:
    for thread in threading.enumerate():
        if thread.name == "pss-dup-writer":
            thread.join(timeout=5)
            assert not thread.is_alive(), "a writer thread outlived its copy"


def own_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def test_progress_is_reported_up_to_every_byte(layout: Layout) -> None:
    seen: list[tuple[int, int]] = []
    flags = CaptureFlags.VA_SPACE | CaptureFlags.VA_CLONE
    with backend.capture(layout.pid, flags, timeout=10, progress=lambda d, t: seen.append((d, t))) as snap:
        snap.handle()
        total = snap.model.memory.bytes_captured if snap.model.memory else -1
    assert seen and seen[-1] == (total, total)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_mapped_sink_writes_the_same_core_as_the_pwrite_sink(layout: Layout, tmp_path: Path) -> None:
    with procfs.ProcDir(layout.pid) as proc:
        regions = procfs.read_va_space(proc, section_info=True)
        info = procfs.read_process_info(proc)
    plan = dumprules.plan_memory(regions, layout.pid)
    from pss_cli.model import Performance, Snapshot

    model = Snapshot(CaptureFlags.VA_SPACE, "linux", "x86_64", 0.0, info, None, None, tuple(regions),
                     Performance(0.0, None))  # fmt: skip
    layout_ = elfcore.plan_core(model, None, plan.segments)
    with open(tmp_path / "a", "w+b") as a:
        copyengine.write_core_fd(a.fileno(), layout_, layout.pid)
        a.seek(0)
        by_fd = a.read()
    box: list[copyengine.CopyStats] = []
    fd = memfd.create_sealed(
        layout_, lambda m: box.append(copyengine.write_core_mapped(m, layout_, layout.pid)), prefault=True
    )
    try:
        with mmap.mmap(fd, layout_.size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ) as m:
            assert bytes(m) == by_fd
    finally:
        os.close(fd)


# -------------------------------------------------------------------------------------------- output files


@pytest.mark.parametrize("force", [False, True])
def test_a_full_filesystem_without_o_tmpfile_leaves_no_named_file_either(
    layout: Layout, tmpfs: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch, force: bool
) -> None:
    """Where the filesystem has no O_TMPFILE the core is written under a name (or beside an old file, with force):
    a full disk removes that file and keeps the old one. A kernel without O_TMPFILE sees O_TMPFILE's O_DIRECTORY bit
    only and answers EISDIR; O_DIRECTORY alone draws that same answer from this kernel."""
    mnt = tmpfs("64k")
    path = mnt / "x.core"
    if force:
        path.write_bytes(b"old")
    monkeypatch.setattr(os, "O_TMPFILE", os.O_DIRECTORY)
    with pytest.raises(OutputExists) as caught:
        backend.LinuxBackend().dump(layout.pid, path, force=force, timeout=10)
    assert str(caught.value).startswith(f"no space left on tmpfs (mounted on {mnt}) for {path} (")
    assert [p.name for p in mnt.iterdir()] == (["x.core"] if force else [])
    assert not force or path.read_bytes() == b"old"
    assert children_of(layout.pid) == []


def test_a_held_snapshot_is_copied_to_a_file_across_filesystems(layout: Layout, tmp_path: Path) -> None:
    """memfd (shmem) to the test directory: copy_file_range gives EXDEV across filesystems; sendfile takes over."""
    with backend.capture(layout.pid, CaptureFlags.VA_SPACE | CaptureFlags.VA_CLONE, timeout=10) as snap:
        fd = snap.handle()
        with open(tmp_path / "held.core", "w+b") as out:
            copied = copyengine.copy_file(fd, out.fileno())
            out.seek(0)
            assert copied == os.fstat(fd).st_size
            with mmap.mmap(fd, copied, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ) as m:
                assert out.read() == bytes(m)


def test_a_stopped_process_is_cloned_and_stays_stopped(layout: Layout) -> None:
    os.kill(layout.pid, signal.SIGSTOP)
    try:
        assert wait_state(layout.pid, "T")
        core = snapshot_core(layout.pid, "clone")
        assert core.read(layout.where["sparse"]) == page_value(0x5A00, 0)
        time.sleep(0.1)
        assert proc_state(layout.pid) == "T"
        assert children_of(layout.pid) == []
    finally:
        os.kill(layout.pid, signal.SIGCONT)
    layout.touch()  # and it runs on once continued


def test_source_exiting_while_its_clone_is_held_leaves_nothing_behind(layout: Layout) -> None:
    """The clone is the source's child; once the source is gone it is an orphan. With this test process as the
    subreaper the orphan comes here, so the test can see that closing the snapshot killed it."""
    PR_SET_CHILD_SUBREAPER = 36
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    try:
        snap = backend.capture(layout.pid, CaptureFlags.VA_SPACE | CaptureFlags.VA_CLONE, timeout=10)
        clone = snap.model.memory.clone_pid if snap.model.memory else None
        assert clone is not None
        layout.proc.kill()
        layout.proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while children_of(os.getpid()).count(clone) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # reparented to us
        snap.close()  # kills the clone; there is no source left to reap it in, so its new parent (we) reaps it
        with contextlib.suppress(ChildProcessError):  # pss-dup already did, as the clone's tracer
            os.waitpid(clone, 0)
        assert not os.path.exists(f"/proc/{clone}")
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


@pytest.fixture
def big_source() -> Iterator[subprocess.Popen[bytes]]:
    """A process with 768 MiB of written memory: its dump copies long enough to be interrupted at many points."""
    with big_process(768) as source:
        yield source


def test_pss_dup_killed_during_the_copy_takes_its_clone_with_it(
    big_source: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    """SIGKILL leaves pss-dup no chance to clean up: the kernel must (PTRACE_O_EXITKILL on the clone's tracer). The
    dead clone stays a zombie child of the source, holding no memory; reaping it (here with pss-dup's own helper)
    leaves the source with no child at all, and it runs on. The half-written core had no name yet (O_TMPFILE)."""
    source = big_source
    tool = subprocess.Popen([PSS_DUP, "dump", str(source.pid), str(tmp_path / "killed.core"), "-q"])
    try:
        clone = 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and tool.poll() is None:
            clone = next(iter(children_of(source.pid)), 0)
            with contextlib.suppress(OSError):
                if clone and tracer_of(clone) != 0 and proc_state(clone) == "t":  # held in a ptrace-stop
                    break
            time.sleep(0.002)
        assert clone and tool.poll() is None, "the dump ended before its clone could be seen held"
        tool.kill()
        tool.wait(timeout=10)
        assert wait_state(clone, "Z"), f"the clone {clone} lives on in state {proc_state(clone)}"
        assert list(tmp_path.iterdir()) == [], "a killed dump left a file behind"
        assert vaclone.reap_in_source(source.pid, clone, timeout=10, warnings=[]) is not None
        assert children_of(source.pid) == []
        assert source.poll() is None and proc_state(source.pid) == "S"
    finally:
        if tool.poll() is None:
            tool.kill()
        tool.wait()


#: Where Ctrl-C lands: after this share of the core is on disk, for 20 points spread over the whole copy.
CTRL_C_POINTS = [k / 20 for k in range(20)]


@pytest.mark.slow
def test_ctrl_c_at_any_point_of_the_copy_exits_130_and_leaves_the_source_whole(
    big_source: subprocess.Popen[bytes], tmpfs: Callable[[str], Path]
) -> None:
    """SIGINT at 20 points of a 768 MiB dump, each once the output file holds that share of the core: every run
    exits 130 with its one line, the source is left untraced, running and childless, and no file is left."""
    mnt = tmpfs("1g")
    failures: list[str] = []
    landed: list[float] = []
    attempts = 0
    while len(landed) < len(CTRL_C_POINTS) and attempts < len(CTRL_C_POINTS) + 10:
        point = CTRL_C_POINTS[len(landed)]
        attempts += 1
        tool = subprocess.Popen([PSS_DUP, "dump", str(big_source.pid), str(mnt / "c.core"), "-q"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            share = wait_for_output_share(tool, mnt, point)
            if share is not None:
                tool.send_signal(signal.SIGINT)
            _, err = tool.communicate(timeout=60)
        finally:
            if tool.poll() is None:
                tool.kill()
                tool.wait()
        if share is None or tool.returncode == 0:  # the copy ended before Ctrl-C could land in it: try again
            with contextlib.suppress(FileNotFoundError):
                os.unlink(mnt / "c.core")
            continue
        landed.append(share)
        where = f"Ctrl-C at {share:.0%} of the copy"
        # click ends the line a terminal's "^C" left open: one empty line, then the message
        if tool.returncode != 130 or err.lstrip("\n") != "pss-dup: interrupted; every process was restored\n":
            failures.append(f"{where}: exit {tool.returncode}, {err!r}")
        if tracer_of(big_source.pid) != 0 or proc_state(big_source.pid) not in "RS":
            failures.append(f"{where}: the source is left traced or stopped ({proc_state(big_source.pid)})")
        if children_of(big_source.pid):
            failures.append(f"{where}: the source has children {children_of(big_source.pid)}")
        if list(mnt.iterdir()):
            failures.append(f"{where}: left {[p.name for p in mnt.iterdir()]}")
            for path in mnt.iterdir():
                path.unlink()
    assert len(landed) == len(CTRL_C_POINTS), f"only {len(landed)} of {attempts} runs were interrupted in the copy"
    assert failures == [], "\n".join(failures)


def wait_for_output_share(tool: subprocess.Popen[str], directory: Path, share: float) -> float | None:
    """Wait until the file that `tool` writes in `directory` (open, and unnamed until complete) holds `share` of its
    final size; the share it holds then, or None if the tool ended first."""
    fd_dir = f"/proc/{tool.pid}/fd"
    prefix = f"{directory}/"
    output = None
    deadline = time.monotonic() + 60
    while tool.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if output is None:
                output = next((f"{fd_dir}/{fd}" for fd in os.listdir(fd_dir)
                               if os.readlink(f"{fd_dir}/{fd}").startswith(prefix)), None)  # fmt: skip
            if output is not None:
                st = os.stat(output)
                if st.st_size and st.st_blocks * 512 >= share * st.st_size:
                    return min(1.0, st.st_blocks * 512 / st.st_size)
        time.sleep(0.0005)
    return None


def tracer_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("TracerPid:"))
    except (OSError, StopIteration):
        return 0


def proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()[0].decode()


def wait_state(pid: int, state: str, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc_state(pid) == state:
            return True
        time.sleep(0.01)
    return False

"""Which pages a snapshot's core holds, and the engine that copies them out of another process.

Selection follows the kernel's own core-dump rules (fs/coredump.c `vma_dump_size`, default coredump_filter 0x33):
a private mapping that has anonymous (written or COW-broken) pages is dumped whole, shared memory is dumped whole
only when it is anonymous (shmem whose file has no name left: memfd, SysV, MAP_SHARED|MAP_ANONYMOUS), a private file
mapping at offset 0 that starts with an ELF header gets its first page (gdb finds the build-id there), and nothing
else that is file-backed. MADV_DONTDUMP (VmFlags `dd`), VM_IO and VM_PFNMAP mappings and [vvar], [vvar_vclock] and
[vsyscall] are skipped; [vdso] is always dumped, every page of it. Inside any other dumped mapping only the pages
that are present or swapped (/proc/PID/pagemap; the PAGEMAP_SCAN ioctl on 6.7+) are read, so a 64 GiB sparse
reservation costs what it holds, and the core gets separate PT_LOADs around the holes (p_filesz 0, as the
address-space map).

The engine reads /proc/PID/mem (or process_vm_readv, see READ_PROC_MEM for why not by default) in batches into a
window of the destination: either a bounce buffer that is then written with pwrite (the default: shmem and
page-cache pages are allocated by the write itself, which on the measured VM costs less than faulting a mapping in)
or a pre-faulted shared mapping (posix_fallocate + MAP_POPULATE). A page that cannot be read is left zero and
counted; the copy goes on with the next page.
"""

from __future__ import annotations

import sys

# Linux only: this lets mypy --platform win32 skip the module instead of flagging Linux-only calls.
assert sys.platform == "linux"

import contextlib
import ctypes
import dataclasses
import enum
import errno
import mmap
import os
import queue
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

from pss_cli.errors import AccessDenied, OperationFailed, OutputExists, ProcessGone
from pss_cli.model import VaRegion
from pss_cli.platform.linux import elfcore

T = TypeVar("T")

PAGE_SIZE = mmap.PAGESIZE
#: IOV_MAX (limits.h): the most iovecs one process_vm_readv call takes on either side.
IOV_MAX = 1024

#: Mappings the kernel's core dump leaves out and that process_vm_readv cannot read.
SKIPPED_SPECIAL = frozenset({"[vvar]", "[vvar_vclock]", "[vsyscall]"})
#: Special mappings the kernel always dumps (always_dump_vma).
ALWAYS_DUMPED = frozenset({"[vdso]"})
#: VmFlags (fs/proc/task_mmu.c show_smap_vma_flags) that exclude a mapping: MADV_DONTDUMP, VM_IO, VM_PFNMAP.
VM_DONTDUMP = "dd"
VM_IO = "io"
VM_PFNMAP = "pf"
VM_HUGETLB = "ht"
#: Not present in a fork child: MADV_DONTFORK (VM_DONTCOPY) mappings are absent, MADV_WIPEONFORK ones are zero.
VM_DONTCOPY = "dc"
VM_WIPEONFORK = "wf"

#: Holes in the present pages shorter than this are read (they read as zero) rather than split into PT_LOADs.
MERGE_GAP = 16 * PAGE_SIZE

#: /proc/PID/pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
PM_PRESENT_BIT = 63
PM_SWAP_BIT = 62
#: PAGEMAP_SCAN (6.7+, linux/fs.h): _IOWR('f', 16, struct pm_scan_arg) and the page categories.
PAGE_IS_PRESENT = 1 << 3
PAGE_IS_SWAPPED = 1 << 4
PAGE_IS_PFNZERO = 1 << 5
PAGEMAP_SCAN_VEC = 1024
#: Pagemap entries read per pread in the fallback: 2 MiB of entries describe 1 GiB of address space.
PAGEMAP_WINDOW = 1 << 18

#: Bounce buffers small enough to stay in the CPU caches between the read and the pwrite: 256 KiB copied 1.6-2.6
#: GB/s into an ext4 file on the measured VM, against 0.6-1.1 GB/s with 8 MiB buffers (bench/bench_dump.py).
DEFAULT_BOUNCE = 256 << 10
DEFAULT_BUFFERS = 4
DEFAULT_BATCH = 64 << 20

#: Progress callback: (bytes done, bytes in total). Plain numbers, so that the platform layer never sees rich.
Progress = Callable[[int, int], None]


class Extent(enum.Enum):
    """How much of a mapping the core holds."""

    NONE = "none"
    HEADER = "first page"
    WHOLE = "whole"


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    """The extent chosen for one mapping, and why (shown in tests and warnings)."""

    extent: Extent
    reason: str


def is_shared(region: VaRegion) -> bool:
    return region.perms[3:4] == "s"


def is_file_backed(region: VaRegion) -> bool:
    """Procfs sets `inode` only for file-backed mappings (and shmem, which has an inode too)."""
    return bool(region.inode)


def is_anonymous_shared(region: VaRegion) -> bool:
    """Shared memory whose file has no link left (the kernel checks i_nlink == 0): MAP_SHARED|MAP_ANONYMOUS
    ("/dev/zero (deleted)"), memfd, SysV shm, or a deleted file. Its content exists nowhere else."""
    path = region.mapped_file
    return not is_file_backed(region) or path is None or path.endswith(" (deleted)") or path.startswith("[")


def dump_rule(region: VaRegion, *, clone: bool) -> Rule:
    """The kernel's core-dump choice for one mapping (vma_dump_size with coredump_filter 0x33).

    `clone` says the memory is read from a fork child, where MADV_DONTFORK mappings are missing and
    MADV_WIPEONFORK ones are zero: those are left out rather than dumped wrong.
    """
    flags = set(region.vm_flags or ())
    name = region.mapped_file
    if name in SKIPPED_SPECIAL:
        return Rule(Extent.NONE, f"{name} is a special kernel mapping")
    if name in ALWAYS_DUMPED:
        return Rule(Extent.WHOLE, f"{name} is always dumped")
    if VM_DONTDUMP in flags:
        return Rule(Extent.NONE, "MADV_DONTDUMP")
    if VM_IO in flags or VM_PFNMAP in flags:
        return Rule(Extent.NONE, "device mapping (VM_IO/VM_PFNMAP)")
    if clone and VM_DONTCOPY in flags:
        return Rule(Extent.NONE, "MADV_DONTFORK: not in the VA clone")
    if clone and VM_WIPEONFORK in flags:
        return Rule(Extent.NONE, "MADV_WIPEONFORK: zero in the VA clone")
    if VM_HUGETLB in flags:
        # coredump_filter bit 5 (private hugetlb) is in the default, bit 6 (shared hugetlb) is not.
        return Rule(Extent.NONE, "shared hugetlb") if is_shared(region) else Rule(Extent.WHOLE, "private hugetlb")
    if is_shared(region):
        if is_anonymous_shared(region):
            return Rule(Extent.WHOLE, "anonymous shared memory")
        return Rule(Extent.NONE, "shared file mapping (the file holds it)")
    if (region.anonymous or 0) > 0 or (region.swap or 0) > 0:
        return Rule(Extent.WHOLE, "anonymous pages")
    if region.anonymous is None and region.vm_flags is None and not is_file_backed(region):
        return Rule(Extent.WHOLE, "anonymous mapping (no smaps figures; pagemap decides)")
    if not is_file_backed(region):
        return Rule(Extent.NONE, "never written")
    if region.offset == 0 and region.perms[:1] == "r":
        return Rule(Extent.HEADER, "ELF header of a file mapping")
    return Rule(Extent.NONE, "file mapping (the file holds it)")


# ------------------------------------------------------------------------------------------- present pages


class PageScanner:
    """Which pages of a process are present or swapped: PAGEMAP_SCAN where the kernel has it, else pagemap reads.

    Holds /proc/PID/pagemap open (PTRACE_MODE_READ). The zero page is left out where the kernel can tell
    (PAGEMAP_SCAN's PAGE_IS_PFNZERO), as the kernel's core dump leaves it out.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        self.use_scan = True
        self._arg = _pm_scan_arg()
        self._vec = (_page_region * PAGEMAP_SCAN_VEC)()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> PageScanner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def runs(self, start: int, end: int) -> list[tuple[int, int]]:
        """Present-or-swapped ranges in [start, end), merged where they touch, in address order."""
        if self.use_scan:
            try:
                return _merge_touching(self._scan(start, end))
            except OSError as exc:
                if exc.errno not in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                self.use_scan = False  # before 6.7: no PAGEMAP_SCAN
        return _merge_touching(self._read(start, end))

    def _scan(self, start: int, end: int) -> Iterator[tuple[int, int]]:
        arg, vec = self._arg, self._vec
        cursor = start
        while cursor < end:
            ctypes.memset(ctypes.addressof(arg), 0, ctypes.sizeof(arg))
            arg.size = ctypes.sizeof(arg)
            arg.start, arg.end = cursor, end
            arg.vec, arg.vec_len = ctypes.addressof(vec), PAGEMAP_SCAN_VEC
            arg.category_inverted = arg.category_mask = PAGE_IS_PFNZERO
            arg.category_anyof_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED
            arg.return_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED
            count = _ioctl(self.fd, PAGEMAP_SCAN, ctypes.addressof(arg))
            for i in range(count):
                yield vec[i].start, vec[i].end
            if arg.walk_end <= cursor:
                break
            cursor = arg.walk_end

    def _read(self, start: int, end: int) -> Iterator[tuple[int, int]]:
        first = start // PAGE_SIZE
        last = end // PAGE_SIZE
        while first < last:
            count = min(PAGEMAP_WINDOW, last - first)
            data = os.pread(self.fd, count * 8, first * 8)
            # Bits 62 (swapped) and 63 (present) are the top byte's 0x40 and 0x80: test one byte per entry in C.
            marks = data[7::8].translate(_PRESENT_OR_SWAPPED)
            for match in _RUN.finditer(marks):
                yield (first + match.start()) * PAGE_SIZE, (first + match.end()) * PAGE_SIZE
            if len(data) < count * 8:
                break
            first += count


_PRESENT_OR_SWAPPED = bytes(1 if byte & 0xC0 else 0 for byte in range(256))
_RUN = re.compile(b"\x01+")


#: struct pm_scan_arg (linux/fs.h), all u64.
PM_SCAN_ARG_FIELDS = (
    "size", "flags", "start", "end", "walk_end", "vec", "vec_len", "max_pages", "category_inverted",
    "category_mask", "category_anyof_mask", "return_mask",
)  # fmt: skip


class _pm_scan_arg(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in PM_SCAN_ARG_FIELDS]


class _page_region(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("end", ctypes.c_uint64), ("categories", ctypes.c_uint64)]


def _iowr(kind: str, number: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (ord(kind) << 8) | number


PAGEMAP_SCAN = _iowr("f", 16, ctypes.sizeof(_pm_scan_arg))

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.restype = ctypes.c_int
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_libc.linkat.restype = ctypes.c_int
_libc.linkat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
_libc.pread.restype = ctypes.c_ssize_t
_libc.pread.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_long]
_libc.process_vm_readv.restype = ctypes.c_ssize_t
_libc.process_vm_readv.argtypes = [
    ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong,
]  # fmt: skip


AT_FDCWD = -100
AT_SYMLINK_FOLLOW = 0x400


def link_fd(fd: int, path: str) -> None:
    """linkat("/proc/self/fd/FD", path, AT_SYMLINK_FOLLOW): give an O_TMPFILE file a name (open(2)). os.link cannot:
    with default arguments it calls link(2), which links the /proc symlink itself and fails with EXDEV."""
    if _libc.linkat(AT_FDCWD, f"/proc/self/fd/{fd}".encode(), AT_FDCWD, os.fsencode(path), AT_SYMLINK_FOLLOW) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)


def _ioctl(fd: int, request: int, arg: int) -> int:
    result: int = _libc.ioctl(fd, request, arg)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def _merge_touching(runs: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in runs:
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def merge_small_gaps(runs: Sequence[tuple[int, int]], gap: int = MERGE_GAP) -> list[tuple[int, int]]:
    """Join runs separated by less than `gap` bytes: a few zero pages are cheaper than a PT_LOAD each."""
    out: list[tuple[int, int]] = []
    for start, end in runs:
        if out and start - out[-1][1] < gap:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


# ---------------------------------------------------------------------------------------------------- plan


@dataclasses.dataclass(frozen=True, slots=True)
class MemoryPlan:
    """The PT_LOADs of a core with memory, and how much of each VA region they carry."""

    segments: tuple[elfcore.LoadSegment, ...]
    dumped: tuple[int, ...]
    rules: tuple[Rule, ...]

    @property
    def total(self) -> int:
        return sum(s.filesz for s in self.segments)

    @property
    def regions_dumped(self) -> int:
        return sum(1 for d in self.dumped if d)


def plan_memory(
    regions: Sequence[VaRegion],
    memory_pid: int,
    *,
    shared_pid: int | None = None,
    clone: bool = False,
) -> MemoryPlan:
    """Choose the pages to dump and lay them out as PT_LOADs, one or more per region, in address order.

    `memory_pid` is the process the pages are read from (the VA clone, or the frozen source). `shared_pid` is where
    anonymous shared memory's present pages are looked up: a fork child has no page-table entries for shared
    mappings until it touches them, so with a clone that is the source. The ELF-header check reads 4 bytes from
    `memory_pid` for each private file mapping at offset 0.
    """
    segments: list[elfcore.LoadSegment] = []
    dumped: list[int] = []
    rules: list[Rule] = []
    scanners: dict[int, PageScanner | None] = {}
    try:
        for region in regions:
            rule = dump_rule(region, clone=clone)
            flags = elfcore.segment_flags(region.perms)
            if rule.extent is Extent.HEADER and not _starts_with_elf_magic(memory_pid, region.base):
                rule = Rule(Extent.NONE, "file mapping without an ELF header")
            if rule.extent is Extent.NONE:
                segments.append(elfcore.LoadSegment(region.base, region.size, flags, 0))
                dumped.append(0)
            elif rule.extent is Extent.HEADER:
                size = min(PAGE_SIZE, region.size)
                segments.append(elfcore.LoadSegment(region.base, region.size, flags, size))
                dumped.append(size)
            else:
                pid = shared_pid if shared_pid is not None and is_shared(region) else memory_pid
                if pid not in scanners:
                    scanners[pid] = _open_scanner(pid)
                scanner = scanners[pid]
                # [vdso] pages the process never touched are not present, yet the kernel dumps it whole.
                if scanner is None or region.mapped_file in ALWAYS_DUMPED:
                    runs = [(region.base, region.end)]
                else:
                    runs = _runs_in(scanner, region)
                pieces = _split_around_holes(region, merge_small_gaps(runs), flags)
                segments.extend(pieces)
                dumped.append(sum(p.filesz for p in pieces))
            rules.append(rule)
    finally:
        for scanner in scanners.values():
            if scanner is not None:
                scanner.close()
    return MemoryPlan(tuple(segments), tuple(dumped), tuple(rules))


def _open_scanner(pid: int) -> PageScanner | None:
    try:
        return PageScanner(pid)
    except PermissionError:
        return None  # no pagemap: read whole regions, as the kernel would


def _runs_in(scanner: PageScanner, region: VaRegion) -> list[tuple[int, int]]:
    try:
        return [(max(s, region.base), min(e, region.end)) for s, e in scanner.runs(region.base, region.end)]
    except OSError as exc:
        if exc.errno == errno.ESRCH:
            raise ProcessGone(f"process {scanner.pid} exited while its pages were listed", pid=scanner.pid) from exc
        return [(region.base, region.end)]


def _split_around_holes(region: VaRegion, runs: Sequence[tuple[int, int]], flags: int) -> list[elfcore.LoadSegment]:
    out: list[elfcore.LoadSegment] = []
    cursor = region.base
    for start, end in runs:
        if start > cursor:
            out.append(elfcore.LoadSegment(cursor, start - cursor, flags, 0))
        out.append(elfcore.LoadSegment(start, end - start, flags, end - start))
        cursor = end
    if cursor < region.end or not out:
        out.append(elfcore.LoadSegment(cursor, region.end - cursor, flags, 0))
    return out


def _starts_with_elf_magic(pid: int, address: int) -> bool:
    buf = ctypes.create_string_buffer(4)
    local = _iovec(ctypes.addressof(buf), 4)
    remote = _iovec(address, 4)
    got = _libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    return bool(got == 4 and buf.raw == elfcore.ELFMAG)


class _iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


# ---------------------------------------------------------------------------------------------- the engine


@dataclasses.dataclass(frozen=True, slots=True)
class Piece:
    """`size` bytes at `address` in the process go to `offset` in the core."""

    address: int
    size: int
    offset: int
    force: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class CopyStats:
    """What a copy did: bytes written, pages that could not be read (left zero), and how long it took."""

    bytes: int
    failed_pages: int
    seconds: float

    @property
    def throughput(self) -> float:
        """Bytes per second."""
        return self.bytes / self.seconds if self.seconds > 0 else 0.0


def pieces_of(layout: elfcore.CoreLayout) -> list[Piece]:
    """One piece per PT_LOAD with file bytes; segments without PF_R are read through /proc/PID/mem (FOLL_FORCE)."""
    return [
        Piece(p.segment.vaddr, p.segment.filesz, p.offset, force=not p.segment.flags & elfcore.PF_R)
        for p in layout.loads
        if p.segment.filesz
    ]


class Sink:
    """Where copied bytes go. `window` gives a writable place for `size` bytes bound for `offset`, `commit`
    makes them land there.

    A sink owns every view it hands out and releases it at `commit` or `close`: a view left alive (in the frame of
    a traceback, say) would keep its buffer exported, and closing that buffer would fail with BufferError in place
    of the error that ended the copy. Used as a context manager, a write error that only surfaces once the last
    writes are done is raised on a clean exit.
    """

    def window(self, offset: int, size: int) -> tuple[int, memoryview]:
        raise NotImplementedError

    def commit(self, offset: int, size: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release buffers; the destination itself belongs to the caller."""

    def pending_error(self) -> BaseException | None:
        """A write that failed after its window was committed."""
        return None

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.close()
        error = self.pending_error()
        if exc_type is None and error is not None:
            raise error


class _Bounce:
    """One pre-faulted anonymous buffer, and the one view of it that windows are cut from."""

    def __init__(self, size: int) -> None:
        self.buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_POPULATE)
        self.address = _address_of(self.buffer)
        self.view = memoryview(self.buffer)

    def close(self) -> None:
        """The view before the mapping it exports; twice is harmless."""
        self.view.release()
        self.buffer.close()


class FdSink(Sink):
    """Read into pre-faulted bounce buffers that a writer thread pwrites to `fd` (a memfd or the output file).

    Reading the next batch overlaps writing the last one: both system calls release the GIL, and on two CPUs the
    copy then costs about the slower of the two instead of their sum.

    A Ctrl-C can land on any bytecode, even the one that would call `close`, so the writer never depends on it: it
    writes through its own duplicate of `fd` (what is still queued lands in that file, never in whatever file takes
    over `fd`'s number once the caller closes it), and it holds no reference to the sink, whose finalizer stops it
    when the sink is dropped unclosed.
    """

    def __init__(self, fd: int, bounce: int = DEFAULT_BOUNCE, buffers: int = DEFAULT_BUFFERS) -> None:
        self.size = bounce
        self._free: queue.SimpleQueue[_Bounce] = queue.SimpleQueue()
        self._work: queue.SimpleQueue[tuple[_Bounce, int, int] | None] = queue.SimpleQueue()
        self._all = [_Bounce(bounce) for _ in range(buffers)]
        for b in self._all:
            self._free.put(b)
        self._current: _Bounce | None = None
        self._window: memoryview | None = None
        self._failure = _Failure()
        self._stop = weakref.finalize(self, self._work.put, None)  # once, at close or when dropped unclosed
        self._writer = threading.Thread(
            target=_write_loop,
            args=(os.dup(fd), self._work, self._free, self._failure),
            name="pss-dup-writer",
            daemon=True,
        )
        self._writer.start()

    def window(self, offset: int, size: int) -> tuple[int, memoryview]:
        assert size <= self.size and self._window is None
        self._current = self._free.get()
        if self._failure.error is not None:
            raise self._failure.error
        self._window = self._current.view[:size]
        return self._current.address, self._window

    def commit(self, offset: int, size: int) -> None:
        assert self._current is not None and self._window is not None
        self._window.release()  # released, then forgotten: a Ctrl-C in between leaves nothing exported
        self._window = None
        self._work.put((self._current, offset, size))
        self._current = None

    def pending_error(self) -> BaseException | None:
        return self._failure.error

    def close(self) -> None:
        """Let the writer write what it was given and end, then free the buffers, views first.

        Ctrl-C during the wait (a slow disk, a hung NFS server) ends it: the writer then finishes on its own, and
        the buffers it may still be writing from are left to be freed with it, not closed under it.
        """
        if self._window is not None:
            self._window.release()
        self._stop()
        self._writer.join()
        for b in self._all:
            b.close()


class _Failure:
    """The first error of a writer thread, read by the thread that reads."""

    __slots__ = ("error",)

    def __init__(self) -> None:
        self.error: BaseException | None = None


def _write_loop(
    fd: int,
    work: queue.SimpleQueue[tuple[_Bounce, int, int] | None],
    free: queue.SimpleQueue[_Bounce],
    failure: _Failure,
) -> None:
    """The writer thread: pwrite each committed buffer at its offset and hand it back, until told to stop (None);
    then close its fd. After a failure it only hands buffers back: the reader raises the error at its next window."""
    try:
        while True:
            item = work.get()
            if item is None:
                return
            bounce, offset, size = item
            try:
                if failure.error is None:
                    with bounce.view[:size] as chunk:
                        pwrite_all(fd, chunk, offset)
            except BaseException as exc:
                failure.error = exc
            finally:
                free.put(bounce)
    finally:
        os.close(fd)


class MappedSink(Sink):
    """Read straight into a pre-faulted shared mapping of the destination (posix_fallocate + MAP_POPULATE)."""

    def __init__(self, mapping: mmap.mmap) -> None:
        self.mapping = mapping
        self.address = _address_of(mapping)
        self.size = len(mapping)
        self._window: memoryview | None = None

    def window(self, offset: int, size: int) -> tuple[int, memoryview]:
        assert self._window is None
        self._window = memoryview(self.mapping)[offset : offset + size]
        return self.address + offset, self._window

    def commit(self, offset: int, size: int) -> None:
        assert self._window is not None
        self._window.release()
        self._window = None

    def close(self) -> None:
        """Release the last window, so that the mapping's owner can close it."""
        if self._window is not None:
            self._window.release()


_MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0x8000)


def _address_of(mapping: mmap.mmap) -> int:
    """The address of an mmap. The ctypes object that exports it lives only inside this one expression, never in a
    variable: a Ctrl-C anywhere leaves no export that would stop the mapping from being closed later."""
    return ctypes.addressof(ctypes.c_char.from_buffer(mapping))


#: How memory is read. /proc/PID/mem (FOLL_GET, FOLL_FORCE) is the default: process_vm_readv pins pages with
#: FOLL_PIN, and a read-only pin of a copy-on-write-shared anonymous page makes the kernel *unshare* it, i.e. copy
#: it (mm/gup.c gup_must_unshare): read from a VA clone, every page would be duplicated (+1 GiB of RAM and 0.65
#: GB/s against 2.4 GB/s, measured); read from a forked worker, its sharing with its parent would be broken.
READ_PROC_MEM = "mem"
READ_PROCESS_VM = "pvr"


def copy_pieces(
    pid: int,
    pieces: Sequence[Piece],
    sink: Sink,
    *,
    batch: int | None = None,
    progress: Progress | None = None,
    reader: str = READ_PROC_MEM,
) -> CopyStats:
    """Copy every piece out of process `pid` into `sink`; pages that cannot be read stay zero.

    Pieces must be in file order and contiguous in the file (as the PT_LOADs of one core are), so one batch of up
    to IOV_MAX pieces is read into one window and committed at once. A short read stops at the first page that
    failed: that page is zeroed (after one more try through /proc/PID/mem when process_vm_readv was the reader),
    and the copy resumes at the next page.
    """
    started = time.perf_counter()
    total = sum(p.size for p in pieces)
    limit = min(batch or DEFAULT_BATCH, sink.size) if isinstance(sink, FdSink) else (batch or DEFAULT_BATCH)
    limit = max(PAGE_SIZE, limit - limit % PAGE_SIZE)
    remote = (_iovec * IOV_MAX)()
    local = _iovec()
    mem = _ProcMem(pid)
    use_pvr = reader == READ_PROCESS_VM
    done = failed = 0
    index, skip = 0, 0
    try:
        if not use_pvr:
            mem.require()
        while index < len(pieces):
            first = pieces[index]
            dest = first.offset + skip
            count, size = 0, 0
            j, s = index, skip
            while j < len(pieces) and count < IOV_MAX and size < limit:
                piece = pieces[j]
                if piece.force != first.force or piece.offset + s != dest + size:
                    break
                take = min(piece.size - s, limit - size)
                remote[count].iov_base = piece.address + s
                remote[count].iov_len = take
                count += 1
                size += take
                if s + take == piece.size:
                    j, s = j + 1, 0
                else:
                    s += take
            address, view = sink.window(dest, size)
            if first.force or not use_pvr:
                got = mem.read_into(view, remote, count)
            else:
                local.iov_base, local.iov_len = address, size
                got = _libc.process_vm_readv(pid, ctypes.byref(local), 1, remote, count, 0)
                if got < 0:
                    got = _read_failed(pid, ctypes.get_errno())
            if got < size:
                if _gone(pid):
                    raise ProcessGone(f"process {pid} exited while its memory was copied", pid=pid)
                bad = got - got % PAGE_SIZE
                length = min(PAGE_SIZE, size - bad)
                # By address, not through a slice of the window: a slice is one more view for a Ctrl-C to strand.
                if not (use_pvr and mem.read_page(address + bad, length, _address_at(remote, count, bad))):
                    ctypes.memset(address + bad, 0, length)
                    failed += 1
                got = bad + length
            sink.commit(dest, got)
            done += got
            index, skip = _advance(pieces, index, skip, got)
            if progress is not None:
                progress(done, total)
    finally:
        mem.close()
    return CopyStats(done, failed, time.perf_counter() - started)


def _gone(pid: int) -> bool:
    """Exited (or a zombie, whose memory is gone): every read would fail, so the copy stops instead."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def _read_failed(pid: int, err: int) -> int:
    """process_vm_readv returned -1: EFAULT means the very first page failed; anything else ends the copy."""
    if err == errno.EFAULT:
        return 0
    if err == errno.ESRCH:
        raise ProcessGone(f"process {pid} exited while its memory was copied", pid=pid)
    if err == errno.EPERM:
        raise AccessDenied(f"reading the memory of process {pid} was refused (process_vm_readv: EPERM)", pid=pid)
    raise OperationFailed(f"reading the memory of process {pid} failed: {os.strerror(err)}", pid=pid)


def _address_at(remote: ctypes.Array[_iovec], count: int, position: int) -> int:
    """The remote address of byte `position` of a batch."""
    for i in range(count):
        length = int(remote[i].iov_len)
        if position < length:
            return int(remote[i].iov_base) + position
        position -= length
    raise AssertionError("position beyond the batch")


def _advance(pieces: Sequence[Piece], index: int, skip: int, size: int) -> tuple[int, int]:
    while size:
        left = pieces[index].size - skip
        if size < left:
            return index, skip + size
        size -= left
        index, skip = index + 1, 0
    return index, skip


class _ProcMem:
    """/proc/PID/mem, opened on first use: reads what process_vm_readv cannot (PROT_NONE pages, FOLL_FORCE)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.fd: int | None = None
        self.broken = False

    def _open(self) -> int | None:
        if self.fd is None and not self.broken:
            try:
                self.fd = os.open(f"/proc/{self.pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self.broken = True
        return self.fd

    def require(self) -> None:
        """Open now, with the typed error when that is refused or the process is gone."""
        try:
            self.fd = os.open(f"/proc/{self.pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ProcessGone(f"process {self.pid} exited before its memory was copied", pid=self.pid) from None
        except PermissionError:
            raise AccessDenied(
                f"reading the memory of process {self.pid} was refused (/proc/{self.pid}/mem)", pid=self.pid
            ) from None

    def read_page(self, into: int, length: int, address: int) -> bool:
        """Read `length` bytes at `address` of the process to local address `into`; all of them, or False."""
        fd = self._open()
        return fd is not None and _libc.pread(fd, into, length, address) == length

    def read_into(self, view: memoryview, remote: ctypes.Array[_iovec], count: int) -> int:
        """Read the batch through /proc/PID/mem; returns bytes read before the first failure."""
        fd = self._open()
        done = 0
        for i in range(count):
            address, length = int(remote[i].iov_base), int(remote[i].iov_len)
            while length:
                try:
                    got = os.preadv(fd, [view[done : done + length]], address) if fd is not None else 0
                except OSError:
                    got = 0
                if got <= 0:
                    return done
                done, address, length = done + got, address + got, length - got
        return done

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# ------------------------------------------------------------------------------------------ whole cores


def write_core_fd(
    fd: int,
    layout: elfcore.CoreLayout,
    pid: int,
    *,
    progress: Progress | None = None,
    bounce: int = DEFAULT_BOUNCE,
    reader: str = READ_PROC_MEM,
) -> CopyStats:
    """Write a whole core (headers, notes, the memory of `pid`) into `fd` with pwrite; `fd` is sized first."""
    return write_pieces_fd(
        fd, layout.size, pieces_of(layout), pid, head=layout.head, progress=progress, bounce=bounce, reader=reader
    )


def write_pieces_fd(
    fd: int,
    size: int,
    pieces: Sequence[Piece],
    pid: int,
    *,
    head: bytes = b"",
    progress: Progress | None = None,
    bounce: int = DEFAULT_BOUNCE,
    reader: str = READ_PROC_MEM,
) -> CopyStats:
    """Size `fd` to `size` bytes, write `head` at its start and the memory of `pid` that `pieces` name.

    Used both for the snapshot memfd and for `pss-dup dump`'s output file, which thus never holds half-copied
    pages under a mapping (a full disk is an ordinary ENOSPC from pwrite, not a SIGBUS).
    """
    size_file(fd, size)
    if head:
        pwrite_all(fd, head, 0)
    with FdSink(fd, bounce) as sink:
        return copy_pieces(pid, pieces, sink, progress=progress, reader=reader)


def write_core_mapped(
    mapping: mmap.mmap,
    layout: elfcore.CoreLayout,
    pid: int,
    *,
    progress: Progress | None = None,
    reader: str = READ_PROC_MEM,
) -> CopyStats:
    """Write a whole core into a pre-faulted shared mapping (memfd.create_sealed with prefault=True)."""
    elfcore.write_core(mapping, layout)
    with MappedSink(mapping) as sink:
        return copy_pieces(pid, pieces_of(layout), sink, progress=progress, reader=reader)


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """pwrite until every byte is written; each view is released as it goes, an error or not."""
    with memoryview(data) as view:
        done = 0
        while done < len(view):
            with view[done:] as rest:
                written = os.pwrite(fd, rest, offset + done)
            if written <= 0:
                raise OSError(errno.EIO, "pwrite wrote nothing")
            done += written


class SizeRefused(OSError):
    """ftruncate refused the size a file needs: EFBIG (RLIMIT_FSIZE, or the largest file the filesystem holds)."""

    def __init__(self, error: OSError, size: int) -> None:
        super().__init__(error.errno, error.strerror)
        self.size = size


def size_file(fd: int, size: int) -> None:
    """ftruncate `fd` to `size`; a refusal keeps the size, so that the error can say how much was needed."""
    try:
        os.ftruncate(fd, size)
    except OSError as exc:
        raise SizeRefused(exc, size) from None


# ------------------------------------------------------------------------------------------- output files


class CoreFile:
    """The output file of `pss-dup dump`: mode 0600, never replacing a file unless `force`, and never seen half
    written under its name.

    The core is written into an unnamed file (O_TMPFILE) in the target directory and linked under its name once
    complete, so even a pss-dup that is SIGKILLed leaves nothing behind. Filesystems without O_TMPFILE get a named
    file instead: created exclusively under the name itself, or with `force` beside it and renamed over the old
    file once complete. A failed dump removes what it wrote.
    """

    def __init__(self, path: str | os.PathLike[str], *, force: bool, pid: int | None = None) -> None:
        self.path = os.fspath(path)
        self.force = force
        self.pid = pid
        self.fd = -1
        self._partial: str | None = self.path  # None: the unnamed file

    def __enter__(self) -> CoreFile:
        if os.path.isdir(self.path):
            raise OutputExists(f"{self.path} is a directory", pid=self.pid)
        if not self.force and os.path.lexists(self.path):
            raise OutputExists(f"{self.path} exists; pass --force to replace it", pid=self.pid)
        directory = os.path.dirname(self.path) or "."
        try:
            self.fd = os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
            self._partial = None
            return self
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise OutputExists(f"cannot create a file in {directory}: {exc.strerror}", pid=self.pid) from None
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        if not self.force:
            try:
                self.fd = os.open(self.path, flags, 0o600)
            except FileExistsError:
                raise OutputExists(f"{self.path} exists; pass --force to replace it", pid=self.pid) from None
            except OSError as exc:
                raise OutputExists(f"cannot create {self.path}: {exc.strerror}", pid=self.pid) from None
            return self
        self.fd, self._partial = self._create_beside(lambda name: os.open(name, flags, 0o600))
        return self

    def _create_beside(self, make: Callable[[str], T]) -> tuple[T, str]:
        """`make(name)` for the first free name of the form .NAME.PID.N.partial beside the output."""
        directory, name = os.path.split(self.path)
        for attempt in range(100):
            partial = os.path.join(directory, f".{name}.{os.getpid()}.{attempt}.partial")
            try:
                return make(partial), partial
            except FileExistsError:
                continue
            except OSError as exc:
                where = directory or "."
                raise OutputExists(f"cannot create a file in {where}: {exc.strerror}", pid=self.pid) from None
        raise OutputExists(f"cannot create a temporary file beside {self.path}", pid=self.pid)

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        fd, self.fd = self.fd, -1
        try:
            if exc_type is None and self._partial is None:
                self._name(fd)
        except BaseException:
            os.close(fd)
            raise
        ok = exc_type is None
        try:
            os.close(fd)
        except OSError as error:
            if ok:  # delayed write-back errors surface on close (NFS): the core is not whole
                ok = False
                self._discard()
                raise OperationFailed(f"writing {self.path} failed: {error.strerror}", pid=self.pid) from None
        if not ok:
            self._discard()
        elif self._partial is not None and self._partial != self.path:
            os.replace(self._partial, self.path)

    def _name(self, fd: int) -> None:
        """Give the complete unnamed file its name: directly, or (force) a temporary one that is then renamed."""
        if self.force:
            _, self._partial = self._create_beside(lambda name: link_fd(fd, name))
            return
        try:
            link_fd(fd, self.path)
        except FileExistsError:
            raise OutputExists(f"{self.path} appeared while the core was written; pass --force", pid=self.pid) from None
        except OSError as exc:
            raise OutputExists(f"cannot create {self.path}: {exc.strerror}", pid=self.pid) from None
        self._partial = self.path

    def _discard(self) -> None:
        if self._partial is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._partial)


def filesystem_of(fd: int) -> str | None:
    """The filesystem an open file is on, named as `df` and `mount` name it: "/dev/vda1 (mounted on /home)", or by
    its type where it has no device ("tmpfs (mounted on /tmp)"); None where /proc cannot tell.

    The mount is found by the fd's own mnt_id (/proc/self/fdinfo) in /proc/self/mountinfo (proc_pid_mountinfo(5)),
    so a bind mount or a mount point shadowed by a later mount is not mistaken for another.
    """
    try:
        with open(f"/proc/self/fdinfo/{fd}", "rb") as f:
            found = re.search(rb"^mnt_id:\s*(\d+)$", f.read(), re.MULTILINE)
        with open("/proc/self/mountinfo", "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    if found is None:
        return None
    for line in lines:
        fields = line.split()  # ID PARENT MAJ:MIN ROOT MOUNT-POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE OPTIONS
        if fields[:1] != [found[1]] or b"-" not in fields[6:]:
            continue
        tail = fields[fields.index(b"-", 6) + 1 :]
        if len(tail) < 2:
            return None
        mount_point, fstype, source = (_unescape_mountinfo(f) for f in (fields[4], tail[0], tail[1]))
        return f"{source if source.startswith('/') else fstype} (mounted on {mount_point})"
    return None


def _unescape_mountinfo(field: bytes) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040 ...)."""
    return os.fsdecode(re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), field))


def copy_file(source: int, destination: int) -> int:
    """Copy a whole file (a snapshot memfd) into an empty output file in the kernel (copy_file_range)."""
    size = os.fstat(source).st_size
    size_file(destination, size)
    copied = 0
    in_kernel = True
    while copied < size:
        if in_kernel:
            try:
                got = os.copy_file_range(source, destination, size - copied, copied, copied)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                in_kernel = False  # across filesystems (5.19+): sendfile still copies in the kernel
                continue
        else:
            os.lseek(destination, copied, os.SEEK_SET)
            got = os.sendfile(destination, source, copied, min(size - copied, 1 << 30))
        if got <= 0:
            raise OSError(errno.EIO, "the copy stopped early")
        copied += got
    return copied

"""Which pages a snapshot's core holds: the kernel's core-dump rules per mapping, and the PT_LOADs they make.

Selection follows the kernel's own core-dump rules (fs/coredump.c `vma_dump_size`, default coredump_filter 0x33):
a private mapping that has anonymous (written or COW-broken) pages is dumped whole, shared memory is dumped whole
only when it is anonymous (shmem whose file has no name left: memfd, SysV, MAP_SHARED|MAP_ANONYMOUS), a private file
mapping at offset 0 that starts with an ELF header gets its first page (gdb finds the build-id there), and nothing
else that is file-backed. MADV_DONTDUMP (VmFlags `dd`), VM_IO and VM_PFNMAP mappings and [vvar], [vvar_vclock] and
[vsyscall] are skipped; [vdso] is always dumped, every page of it. Inside any other dumped mapping only the pages
that are present or swapped (pagescan) are read, and the core gets separate PT_LOADs around the holes (p_filesz 0,
as the address-space map).
"""

from __future__ import annotations

import sys

# Linux only: this lets mypy --platform win32 skip the module instead of flagging Linux-only calls.
assert sys.platform == "linux"

import dataclasses
import enum
import errno
from collections.abc import Sequence

from pss_cli.errors import ProcessGone
from pss_cli.model import VaRegion
from pss_cli.platform.linux import elfcore, ptrace
from pss_cli.platform.linux.pagescan import PAGE_SIZE, PageScanner

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


def merge_small_gaps(runs: Sequence[tuple[int, int]], gap: int = MERGE_GAP) -> list[tuple[int, int]]:
    """Join runs separated by less than `gap` bytes: a few zero pages are cheaper than a PT_LOAD each."""
    out: list[tuple[int, int]] = []
    for start, end in runs:
        if out and start - out[-1][1] < gap:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


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
    try:
        return ptrace.process_vm_readv(pid, address, 4) == elfcore.ELFMAG
    except OSError:
        return False

"""Which pages a snapshot's core holds: the kernel's core-dump rules per mapping, and the PT_LOADs they make.

Selection follows the kernel's own core-dump rules (fs/coredump.c `vma_dump_size`) with the process's own
/proc/PID/coredump_filter (or the mask given with `--filter`): MADV_DONTDUMP (VmFlags `dd`), VM_IO and VM_PFNMAP
mappings and [vvar], [vvar_vclock] and [vsyscall] are skipped; [vdso] is always dumped, every page of it; hugetlb
mappings follow bits 5 (private) and 6 (shared); shared memory is dumped whole when anonymous (its file has no name
left: memfd, SysV, MAP_SHARED|MAP_ANONYMOUS) with bit 1, when file-backed with bit 3; a private mapping that has
anonymous (written or COW-broken) pages is dumped whole with bit 0; another private file mapping is dumped whole with
bit 2, else its first page with bit 4 when it is at offset 0 and starts with an ELF header (gdb finds the build-id
there). DAX mappings (bits 7, 8) cannot be told from smaps and follow the rules of the files they are.
`--all-memory` takes every readable mapping whole, MADV_DONTDUMP ones included (gcore -a).

Inside an anonymous or written mapping only the pages that are present or swapped (pagescan) are read, and the core
gets separate PT_LOADs around the holes (p_filesz 0, as the address-space map); a file mapping taken whole for bits 2
or 3 is read page by page, present or not (its content is the file's).

`plan_mini` chooses the memory of a mini core instead: what `thread apply all bt` needs (see its docstring).
"""

from __future__ import annotations

import sys

# Linux only: this lets mypy --platform win32 skip the module instead of flagging Linux-only calls.
assert sys.platform == "linux"

import bisect
import dataclasses
import enum
import errno
from collections.abc import Sequence

from pss_cli.errors import ProcessGone
from pss_cli.model import COREDUMP_FILTER_BITS, DEFAULT_COREDUMP_FILTER, VaRegion
from pss_cli.platform.linux import elfcore, linkmap, ptrace
from pss_cli.platform.linux.inject import RED_ZONE
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

#: coredump_filter bits (include/linux/sched/coredump.h MMF_DUMP_*, less MMF_DUMP_FILTER_SHIFT).
MMF_DUMP_ANON_PRIVATE = 1 << 0
MMF_DUMP_ANON_SHARED = 1 << 1
MMF_DUMP_MAPPED_PRIVATE = 1 << 2
MMF_DUMP_MAPPED_SHARED = 1 << 3
MMF_DUMP_ELF_HEADERS = 1 << 4
MMF_DUMP_HUGETLB_PRIVATE = 1 << 5
MMF_DUMP_HUGETLB_SHARED = 1 << 6

#: Holes in the present pages shorter than this are read (they read as zero) rather than split into PT_LOADs.
MERGE_GAP = 16 * PAGE_SIZE


class Extent(enum.Enum):
    """How much of a mapping the core holds."""

    NONE = "none"
    HEADER = "first page"
    WHOLE = "whole"
    PART = "some pages"


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    """The extent chosen for one mapping, and why (shown in tests and warnings). `every_page`: read each page of a
    WHOLE extent, present or not (a file's content), rather than only the present ones."""

    extent: Extent
    reason: str
    every_page: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Filter:
    """The kernel's rules with a coredump_filter `mask`, or everything readable (`all_memory`), and where the mask
    came from (for the report)."""

    mask: int = DEFAULT_COREDUMP_FILTER
    source: str = "kernel default"
    all_memory: bool = False


#: The kernel's rules with its default mask.
KERNEL_FILTER = Filter()


def read_filter(pid: int) -> Filter:
    """The process's own /proc/PID/coredump_filter (hex, as the kernel prints it); the kernel default when it
    cannot be read (an old kernel, a process that exited: the capture then fails on its own)."""
    try:
        with open(f"/proc/{pid}/coredump_filter", "rb") as f:
            return Filter(int(f.read().strip(), 16) & COREDUMP_FILTER_BITS, "process")
    except (OSError, ValueError):
        return Filter()


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


def _fixed_rule(region: VaRegion, *, clone: bool, dontdump: bool) -> Rule | None:
    """What no mask changes: special mappings, MADV_DONTDUMP (unless not `dontdump`), device mappings, and what the
    VA clone lacks; None for the rest."""
    flags = set(region.vm_flags or ())
    name = region.mapped_file
    if name in SKIPPED_SPECIAL:
        return Rule(Extent.NONE, f"{name} is a special kernel mapping")
    if name in ALWAYS_DUMPED:
        return Rule(Extent.WHOLE, f"{name} is always dumped")
    if VM_DONTDUMP in flags and dontdump:
        return Rule(Extent.NONE, "MADV_DONTDUMP")
    if VM_IO in flags or VM_PFNMAP in flags:
        return Rule(Extent.NONE, "device mapping (VM_IO/VM_PFNMAP)")
    if clone and VM_DONTCOPY in flags:
        return Rule(Extent.NONE, "MADV_DONTFORK: not in the VA clone")
    if clone and VM_WIPEONFORK in flags:
        return Rule(Extent.NONE, "MADV_WIPEONFORK: zero in the VA clone")
    return None


def dump_rule(region: VaRegion, *, clone: bool, rules: Filter = KERNEL_FILTER) -> Rule:
    """The kernel's core-dump choice for one mapping (vma_dump_size with the mask of `rules`), or with
    `rules.all_memory` everything that can be read.

    `clone` says the memory is read from a fork child, where MADV_DONTFORK mappings are missing and
    MADV_WIPEONFORK ones are zero: those are left out rather than dumped wrong.
    """
    fixed = _fixed_rule(region, clone=clone, dontdump=not rules.all_memory)
    if fixed is not None:
        return fixed
    flags = set(region.vm_flags or ())
    mask = COREDUMP_FILTER_BITS if rules.all_memory else rules.mask
    shared = is_shared(region)
    if VM_HUGETLB in flags:
        bit = MMF_DUMP_HUGETLB_SHARED if shared else MMF_DUMP_HUGETLB_PRIVATE
        kind = "shared hugetlb" if shared else "private hugetlb"
        return Rule(Extent.WHOLE, kind) if mask & bit else Rule(Extent.NONE, f"{kind}: filtered out")
    if rules.all_memory:
        if not is_file_backed(region) or is_anonymous_shared(region):
            return Rule(Extent.WHOLE, "--all-memory")
        if region.perms.startswith("---"):
            return Rule(Extent.NONE, "file mapping without access (a reservation)")
        return Rule(Extent.WHOLE, "--all-memory: the file's content", every_page=True)
    if shared:
        if is_anonymous_shared(region):
            if mask & MMF_DUMP_ANON_SHARED:
                return Rule(Extent.WHOLE, "anonymous shared memory")
            return Rule(Extent.NONE, "anonymous shared memory: filtered out")
        if mask & MMF_DUMP_MAPPED_SHARED:
            return Rule(Extent.WHOLE, "shared file mapping", every_page=True)
        return Rule(Extent.NONE, "shared file mapping (the file holds it)")
    written = (region.anonymous or 0) > 0 or (region.swap or 0) > 0
    unknown = region.anonymous is None and region.vm_flags is None and not is_file_backed(region)
    if written or unknown:
        if mask & MMF_DUMP_ANON_PRIVATE:
            return Rule(Extent.WHOLE, "anonymous pages" if written else "anonymous mapping (pagemap decides)")
        if not is_file_backed(region):
            return Rule(Extent.NONE, "anonymous private memory: filtered out")
    if not is_file_backed(region):
        return Rule(Extent.NONE, "never written")
    if mask & MMF_DUMP_MAPPED_PRIVATE:
        return Rule(Extent.WHOLE, "private file mapping", every_page=True)
    if mask & MMF_DUMP_ELF_HEADERS and region.offset == 0 and region.perms[:1] == "r":
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
    core_filter: Filter = KERNEL_FILTER,
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
            rule = dump_rule(region, clone=clone, rules=core_filter)
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
                if scanner is None or region.mapped_file in ALWAYS_DUMPED or rule.every_page:
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


#: A writable private file mapping this small is a loaded object's .data: a mini core takes it whole. glibc keeps
#: the thread list that libthread_db walks in ld.so's and libc's (8 KiB each on the measured host); libpython's
#: 1.2 MiB is left out.
SMALL_DATA = 64 << 10
#: Pages taken below and above each thread pointer (fs_base): glibc's struct pthread (about 2.3 KiB) starts there,
#: the static TLS lies below it. With them libthread_db names every thread in gdb.
TLS_BELOW = PAGE_SIZE
TLS_ABOVE = 2 * PAGE_SIZE


def plan_mini(
    regions: Sequence[VaRegion],
    memory_pid: int,
    threads: Sequence[tuple[int, int]],
    auxv: bytes | None,
    *,
    stack_limit: int,
    clone: bool = False,
    rules: Sequence[Rule] | None = None,
) -> MemoryPlan:
    """A mini core's memory: what gdb needs for `thread apply all bt` of every thread, and nothing else.

    `threads` holds each thread's (stack pointer, thread pointer). Taken: each thread's stack from its stack pointer
    less the red zone to the end of the mapping that holds it, at most `stack_limit` bytes (the frames nearest the
    stack pointer are kept); the pages around each thread pointer; the first page of each file mapping at offset 0
    that starts with an ELF header (gdb matches build-ids there); what gdb reads to list the shared libraries
    (linkmap.loader_ranges) and small writable file mappings; [vdso] whole (gdb reads its symbols and unwind tables
    from memory). Unwinding itself reads .eh_frame from the binaries on disk. MADV_DONTDUMP, device mappings and
    regions the VA clone lacks stay out, as in the kernel's rules. `rules` are mini_rules(regions), when they were
    worked out beforehand (before a freeze, to keep it short).
    """
    if rules is None:
        rules = mini_rules(regions, memory_pid, clone=clone)
    wanted: list[tuple[int, int]] = []
    limit = max(PAGE_SIZE, _page_up(stack_limit))
    bases = [r.base for r in regions]
    for sp, tp in threads:
        region = _region_at(regions, bases, sp)
        if region is not None:
            start = max(region.base, _page_down(sp - RED_ZONE))
            wanted.append((start, min(region.end, start + limit)))
        if tp:
            wanted.append((_page_down(tp) - TLS_BELOW, _page_down(tp) + TLS_ABOVE))
    if auxv:
        try:
            with linkmap.Memory(memory_pid) as memory:
                wanted.extend((_page_down(a), _page_up(b)) for a, b in linkmap.loader_ranges(memory, auxv))
        except FileNotFoundError:
            raise ProcessGone(f"process {memory_pid} exited before its memory was read", pid=memory_pid) from None
    chosen = _merge(wanted)
    segments: list[elfcore.LoadSegment] = []
    dumped: list[int] = []
    chose: list[Rule] = []
    clipped = _clip(chosen, regions)
    scanner = _open_scanner(memory_pid)
    try:
        for region, inside, rule in zip(regions, clipped, rules, strict=True):
            if rule.extent is Extent.WHOLE:
                runs = [(region.base, region.end)]
            elif rule.extent is Extent.NONE:
                runs = []
            elif scanner is not None and inside and not is_shared(region) and not is_file_backed(region):
                # A stack range runs to the end of its mapping: Go's goroutine stacks live in a 64 MiB heap arena,
                # most of it never touched. Anonymous pages never touched read as zeros: not worth a byte of the core.
                runs = _intersect(inside, _runs_in(scanner, region))
            else:
                runs = inside
            if rule.extent is Extent.HEADER:
                runs = _merge([(region.base, min(region.end, region.base + PAGE_SIZE)), *runs])
            elif rule.extent is Extent.PART and not runs:
                rule = Rule(Extent.NONE, "no stack, thread or loader data")
            pieces = _split_around_holes(region, runs, elfcore.segment_flags(region.perms))
            segments.extend(pieces)
            dumped.append(sum(p.filesz for p in pieces))
            chose.append(rule)
    finally:
        if scanner is not None:
            scanner.close()
    return MemoryPlan(tuple(segments), tuple(dumped), tuple(chose))


def mini_rules(regions: Sequence[VaRegion], memory_pid: int, *, clone: bool) -> tuple[Rule, ...]:
    """A mini core's choice for each region, before the stack pointers are known (see plan_mini)."""
    return tuple(_mini_rule(region, memory_pid, clone=clone) for region in regions)


def _mini_rule(region: VaRegion, memory_pid: int, *, clone: bool) -> Rule:
    """A mini core's choice for one mapping: PART means the stack, thread and loader pages that fall in it."""
    fixed = _fixed_rule(region, clone=clone, dontdump=True)
    if fixed is not None:
        return fixed
    private_file = is_file_backed(region) and not is_shared(region)
    if private_file and region.perms[:2] == "rw" and region.size <= SMALL_DATA:
        return Rule(Extent.WHOLE, "small data of a loaded object")
    if (
        private_file
        and region.offset == 0
        and region.perms[:1] == "r"
        and _starts_with_elf_magic(memory_pid, region.base)
    ):
        return Rule(Extent.HEADER, "ELF header of a file mapping")
    return Rule(Extent.PART, "stack, thread or loader data")


def _region_at(regions: Sequence[VaRegion], bases: Sequence[int], address: int) -> VaRegion | None:
    """The region holding `address`; `regions` are in address order, `bases` their starts."""
    i = bisect.bisect_right(bases, address) - 1
    return regions[i] if i >= 0 and address < regions[i].end else None


def _merge(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, with overlapping or touching ranges joined."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(r for r in ranges if r[0] < r[1]):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _intersect(a: Sequence[tuple[int, int]], b: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts common to two sorted lists of disjoint ranges."""
    out: list[tuple[int, int]] = []
    i = j = 0
    while i < len(a) and j < len(b):
        start, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if start < end:
            out.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def _clip(ranges: Sequence[tuple[int, int]], regions: Sequence[VaRegion]) -> list[list[tuple[int, int]]]:
    """For each region, the parts of `ranges` inside it; both sorted and disjoint, so one sweep finds them all."""
    out: list[list[tuple[int, int]]] = []
    cursor = 0
    for region in regions:
        while cursor < len(ranges) and ranges[cursor][1] <= region.base:
            cursor += 1
        inside = []
        j = cursor
        while j < len(ranges) and ranges[j][0] < region.end:
            inside.append((max(ranges[j][0], region.base), min(ranges[j][1], region.end)))
            j += 1
        out.append(inside)
    return out


def _page_down(address: int) -> int:
    return address - address % PAGE_SIZE


def _page_up(address: int) -> int:
    return _page_down(address + PAGE_SIZE - 1)


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

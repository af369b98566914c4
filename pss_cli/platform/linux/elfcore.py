"""The snapshot as an x86_64 ELF core file: the layout the kernel writes, plus pss-dup's own notes.

gdb and readelf read the standard notes (one NT_PRSTATUS per thread, NT_PRPSINFO, NT_AUXV, NT_FILE, …); pss-dup reads
its own notes, owner "PSSDUP": a format version and the whole model as JSON (serial.to_dict). The register bytes
are kept once, in the standard notes, and the parser puts them back into the model. Layout and compatibility
rules: docs/snapshot-format.md.

Writing is split in two so that memory can be streamed in later without holding it in RAM: `plan_core` computes
every size and offset (and renders the headers and notes, which are small), `write_core` puts them into a
caller-provided buffer (an mmap of a memfd) and asks a callback to fill each PT_LOAD's bytes in place.

The parser treats its input as hostile: every offset and size is checked against the buffer before use, and the
only exception it raises is BadSnapshot, with a one-line reason.
"""

from __future__ import annotations

import sys

# Linux only: this lets mypy --platform win32 skip the module instead of flagging Linux-only calls.
assert sys.platform == "linux"

import dataclasses
import json
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from pss_cli import serial
from pss_cli.errors import BadSnapshot
from pss_cli.model import SCHEMA_VERSION, Snapshot, ThreadContext, ThreadEntry, ThreadState, VaRegion

# --------------------------------------------------------------------------------------------- ELF constants

ELFMAG = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
EV_CURRENT = 1
ELFOSABI_NONE = 0
ET_CORE = 4
EM_X86_64 = 62
PT_LOAD = 1
PT_NOTE = 4
PF_X = 0x1
PF_W = 0x2
PF_R = 0x4
PN_XNUM = 0xFFFF
SHT_NULL = 0

NT_PRSTATUS = 1
NT_PRFPREG = 2
NT_PRPSINFO = 3
NT_AUXV = 6
NT_X86_XSTATE = 0x202
NT_SIGINFO = 0x53494749
NT_FILE = 0x46494C45

#: pss-dup's own note types, under owner PSSDUP_OWNER.
NT_PSSDUP_VERSION = 0x50535300
NT_PSSDUP_MODEL = 0x50535301

CORE_OWNER = b"CORE"
LINUX_OWNER = b"LINUX"
PSSDUP_OWNER = b"PSSDUP"

#: The container's format version (the note layout). The model's own version is model.SCHEMA_VERSION.
FORMAT_VERSION = 1

#: ELF_EXEC_PAGESIZE on x86_64: PT_LOAD alignment and NT_FILE's page unit.
ELF_EXEC_PAGESIZE = 4096
#: ELF_PRARGSZ: bytes of pr_psargs, NUL included.
ELF_PRARGSZ = 80
#: TASK_COMM_LEN: bytes of pr_fname, NUL included.
TASK_COMM_LEN = 16

#: x86_64 `struct user_regs_struct` (NT_PRSTATUS pr_reg), in the kernel's order.
X86_64_GPR_NAMES = (
    "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx", "rsi", "rdi",
    "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs",
)  # fmt: skip

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")
SHDR = struct.Struct("<IIQQQQIIQQ")
NHDR = struct.Struct("<III")
GPREGS = struct.Struct(f"<{len(X86_64_GPR_NAMES)}Q")
#: struct elf_prstatus: elf_siginfo, pr_cursig, pr_sigpend, pr_sighold, pid/ppid/pgrp/sid, 4 timevals, pr_reg,
#: pr_fpvalid.
PRSTATUS = struct.Struct(f"<3ih2x2Q4i8q{GPREGS.size}si4x")
#: struct elf_prpsinfo: pr_state, pr_sname, pr_zomb, pr_nice, pr_flag, uid, gid, pid/ppid/pgrp/sid, fname, psargs.
PRPSINFO = struct.Struct(f"<bcbb4xQIIiiii{TASK_COMM_LEN}s{ELF_PRARGSZ}s")
PSSDUP_VERSION = struct.Struct("<II")
FILE_HEADER = struct.Struct("<QQ")
FILE_ENTRY = struct.Struct("<QQQ")

SIGINFO_SIZE = 128
FXSAVE_SIZE = 512
XSAVE_MIN_SIZE = 512 + 64
MAX_XSTATE = 1 << 20
MAX_AUXV = 1 << 20

#: Parser limits, so that hostile headers cannot make it loop or allocate far beyond the input's size.
MAX_SEGMENTS = 1 << 22
MAX_NOTES = 1 << 22
MAX_MODEL_JSON = 256 << 20

U64 = (1 << 64) - 1

assert EHDR.size == 64 and PHDR.size == 56 and SHDR.size == 64
assert PRSTATUS.size == 336 and PRPSINFO.size == 136


# ------------------------------------------------------------------------------------------------ writing


@dataclasses.dataclass(frozen=True, slots=True)
class LoadSegment:
    """One PT_LOAD: `memsz` bytes of address space at `vaddr`, of which the first `filesz` are in the file."""

    vaddr: int
    memsz: int
    flags: int
    filesz: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class PlacedSegment:
    """A PT_LOAD and where its bytes sit in the file."""

    segment: LoadSegment
    offset: int


@dataclasses.dataclass(frozen=True, slots=True)
class CoreLayout:
    """Everything `write_core` needs: the rendered headers and notes, and each PT_LOAD's place.

    `head` holds bytes [0, len(head)) of the file (ELF header, program headers, the PN_XNUM section header when
    needed, the notes); `size` is the whole file's size, memory included.
    """

    head: bytes
    notes_offset: int
    notes_size: int
    loads: tuple[PlacedSegment, ...]
    size: int


#: Called by write_core once per PT_LOAD with file bytes: write the segment's memory into the view.
Fill = Callable[[LoadSegment, memoryview], None]


def segment_flags(perms: str) -> int:
    """PF_* flags from a maps permission string such as "r-xp"."""
    return (PF_R if perms[0:1] == "r" else 0) | (PF_W if perms[1:2] == "w" else 0) | (PF_X if perms[2:3] == "x" else 0)


def segments_from_va_space(snapshot: Snapshot) -> tuple[LoadSegment, ...]:
    """One PT_LOAD per VA region, carrying no memory (p_filesz 0): the address space map that gdb shows."""
    return tuple(LoadSegment(r.base, r.size, segment_flags(r.perms), 0) for r in snapshot.va_space or ())


def plan_core(
    snapshot: Snapshot,
    auxv: bytes | None = None,
    segments: Sequence[LoadSegment] | None = None,
    *,
    data_offset: int = 0,
) -> CoreLayout:
    """Lay out the core: render headers and notes, and place every PT_LOAD (page-aligned file offsets).

    `segments` None means one empty PT_LOAD per VA region (segments_from_va_space); pass your own to carry
    memory. `auxv` is the raw /proc/PID/auxv (NT_AUXV, which gdb needs to find shared libraries). `data_offset`
    places the memory no earlier than that offset, so that memory written before the model was complete (a copy
    made while the process was frozen) keeps its place whatever the notes' final size. Raises ValueError for
    values that cannot be laid out (a tid outside i32, a segment outside the 64-bit space).
    """
    segs = segments_from_va_space(snapshot) if segments is None else tuple(segments)
    for seg in segs:
        _check_segment(seg)
    notes = _render_notes(snapshot, auxv)

    phnum = 1 + len(segs)
    extended = phnum >= PN_XNUM
    phoff = EHDR.size
    shoff = phoff + phnum * PHDR.size if extended else 0
    notes_offset = (shoff + SHDR.size) if extended else phoff + phnum * PHDR.size
    notes_end = notes_offset + len(notes)

    cursor = _align(max(notes_end, data_offset), ELF_EXEC_PAGESIZE) if any(s.filesz for s in segs) else notes_end
    placed = []
    for seg in segs:
        placed.append(PlacedSegment(seg, cursor))
        if seg.filesz:
            cursor = _align(cursor + seg.filesz, ELF_EXEC_PAGESIZE)
    size = max(notes_end, max((p.offset + p.segment.filesz for p in placed), default=0))

    out = bytearray()
    out += EHDR.pack(
        ELFMAG + bytes([ELFCLASS64, ELFDATA2LSB, EV_CURRENT, ELFOSABI_NONE]) + bytes(8),
        ET_CORE,
        EM_X86_64,
        EV_CURRENT,
        0,
        phoff,
        shoff,
        0,
        EHDR.size,
        PHDR.size,
        PN_XNUM if extended else phnum,
        SHDR.size,
        1 if extended else 0,
        0,
    )
    out += PHDR.pack(PT_NOTE, 0, notes_offset, 0, 0, len(notes), 0, 4)
    for p in placed:
        s = p.segment
        out += PHDR.pack(PT_LOAD, s.flags, p.offset, s.vaddr, 0, s.filesz, s.memsz, ELF_EXEC_PAGESIZE)
    if extended:
        # gABI extended numbering: section 0's sh_info holds the real count (e_shnum is 1, so sh_size is 0).
        out += SHDR.pack(0, SHT_NULL, 0, 0, 0, 0, 0, phnum, 0, 0)
    out += notes
    return CoreLayout(bytes(out), notes_offset, len(notes), tuple(placed), size)


def write_core(buf: Any, layout: CoreLayout, fill: Fill | None = None) -> None:
    """Write the planned core into `buf` (an mmap, bytearray or writable memoryview of >= layout.size bytes).

    `buf` must start zero-filled (a fresh bytearray, or an mmap of a freshly truncated memfd): gaps are not
    written. `fill` is called once per PT_LOAD with p_filesz > 0, with a view of exactly that many bytes at the
    segment's offset; it must not keep the view. Without `fill` those bytes stay zero.
    """
    with memoryview(buf) as whole:
        if whole.readonly or whole.nbytes < layout.size:
            raise ValueError(f"write_core needs a writable buffer of {layout.size} bytes, got {whole.nbytes}")
        with whole.cast("B") as view:
            view[: len(layout.head)] = layout.head
            if fill is None:
                return
            for p in layout.loads:
                if p.segment.filesz:
                    with view[p.offset : p.offset + p.segment.filesz] as part:
                        fill(p.segment, part)


def render_core(snapshot: Snapshot, auxv: bytes | None = None, segments: Sequence[LoadSegment] | None = None) -> bytes:
    """The whole core as bytes, memory left zero: for tests and small snapshots."""
    layout = plan_core(snapshot, auxv, segments)
    out = bytearray(layout.size)
    write_core(out, layout)
    return bytes(out)


def _check_segment(seg: LoadSegment) -> None:
    if not (0 <= seg.vaddr <= U64 and 0 <= seg.memsz <= U64 and seg.vaddr + seg.memsz <= U64 + 1):
        raise ValueError(f"PT_LOAD at {seg.vaddr:#x} (+{seg.memsz:#x}) is outside the 64-bit address space")
    if not 0 <= seg.filesz <= seg.memsz:
        raise ValueError(f"PT_LOAD at {seg.vaddr:#x}: p_filesz {seg.filesz} is not within p_memsz {seg.memsz}")
    if seg.flags & ~(PF_R | PF_W | PF_X):
        raise ValueError(f"PT_LOAD at {seg.vaddr:#x}: flags {seg.flags:#x} are not PF_R|PF_W|PF_X")


def _render_notes(snapshot: Snapshot, auxv: bytes | None) -> bytes:
    """The PT_NOTE content in the kernel's order, then pss-dup's notes."""
    threads = snapshot.threads or ()
    tids = [t.tid for t in threads]
    if len(set(tids)) != len(tids):
        raise ValueError("a snapshot cannot hold the same thread twice")
    # The thread stopped delivering a signal goes first, as the kernel puts the thread that dumps: gdb makes it the
    # current thread and reads the signal from its pr_cursig and NT_SIGINFO.
    signalled = [t for t in threads if t.siginfo is not None and len(t.siginfo) == SIGINFO_SIZE]
    if signalled:
        threads = (signalled[0], *(t for t in threads if t is not signalled[0]))
    out = bytearray()
    if threads:
        out += _note(CORE_OWNER, NT_PRSTATUS, _prstatus(snapshot, threads[0]))
    out += _note(CORE_OWNER, NT_PRPSINFO, _prpsinfo(snapshot))
    out += _note(CORE_OWNER, NT_SIGINFO, (signalled[0].siginfo if signalled else None) or bytes(SIGINFO_SIZE))
    if auxv is not None:
        out += _note(CORE_OWNER, NT_AUXV, auxv)
    out += _note(CORE_OWNER, NT_FILE, _file_note(snapshot.va_space or ()))
    for i, thread in enumerate(threads):
        if i:
            out += _note(CORE_OWNER, NT_PRSTATUS, _prstatus(snapshot, thread))
        ctx = thread.context
        if ctx is not None and _fpregs_in_note(ctx):
            out += _note(CORE_OWNER, NT_PRFPREG, ctx.fpregs or b"")
        if ctx is not None and _xstate_in_note(ctx):
            out += _note(LINUX_OWNER, NT_X86_XSTATE, ctx.xstate or b"")
    out += _note(PSSDUP_OWNER, NT_PSSDUP_VERSION, PSSDUP_VERSION.pack(FORMAT_VERSION, SCHEMA_VERSION))
    out += _note(PSSDUP_OWNER, NT_PSSDUP_MODEL, _model_json(snapshot))
    return bytes(out)


def _note(owner: bytes, ntype: int, desc: bytes) -> bytes:
    name = owner + b"\0"
    return NHDR.pack(len(name), len(desc), ntype) + name + bytes(_pad4(len(name))) + desc + bytes(_pad4(len(desc)))


def _gpr_canonical(ctx: ThreadContext) -> bool:
    """Whether the registers are exactly x86_64's user_regs_struct, so that NT_PRSTATUS can carry them."""
    return ctx.arch == "x86_64" and tuple(name for name, _ in ctx.registers) == X86_64_GPR_NAMES


def _fpregs_in_note(ctx: ThreadContext) -> bool:
    return ctx.arch == "x86_64" and ctx.fpregs is not None and len(ctx.fpregs) == FXSAVE_SIZE


def _xstate_in_note(ctx: ThreadContext) -> bool:
    return ctx.arch == "x86_64" and ctx.xstate is not None and XSAVE_MIN_SIZE <= len(ctx.xstate) <= MAX_XSTATE


def _gpr_bytes(ctx: ThreadContext | None) -> bytes:
    if ctx is None or not _gpr_canonical(ctx):
        return bytes(GPREGS.size)
    return GPREGS.pack(*(value & U64 for _, value in ctx.registers))


def _prstatus(snapshot: Snapshot, thread: ThreadEntry) -> bytes:
    if not -(1 << 31) <= thread.tid < 1 << 31:
        raise ValueError(f"thread id {thread.tid} does not fit elf_prstatus.pr_pid")
    ctx = thread.context
    signo = code = 0
    if thread.siginfo is not None and len(thread.siginfo) == SIGINFO_SIZE:
        signo, _, code = struct.unpack_from("<iii", thread.siginfo)
    return PRSTATUS.pack(
        signo,
        code,
        0,
        signo,
        _fit(thread.sig_pending, 0, U64),
        _fit(thread.sig_blocked, 0, U64),
        thread.tid,
        _i32(snapshot.process.ppid),
        0,
        0,
        *_timeval(thread.user_time),
        *_timeval(thread.system_time),
        0,
        0,
        0,
        0,
        _gpr_bytes(ctx),
        1 if ctx is not None and _fpregs_in_note(ctx) else 0,
    )


def _prpsinfo(snapshot: Snapshot) -> bytes:
    proc = snapshot.process
    letter = proc.state.value if proc.state is not ThreadState.UNKNOWN else "."
    index = "RSDTZW".find(letter)
    args = " ".join(proc.cmdline or ()).encode("utf-8", "surrogateescape") if proc.cmdline else b""
    return PRPSINFO.pack(
        index if index >= 0 else 6,
        letter.encode("ascii", "replace")[:1],
        1 if proc.state is ThreadState.ZOMBIE else 0,
        _fit(proc.nice, -128, 127),
        0,
        _fit(proc.uids[0] if proc.uids else None, 0, 0xFFFFFFFF),
        _fit(proc.gids[0] if proc.gids else None, 0, 0xFFFFFFFF),
        _i32(proc.pid),
        _i32(proc.ppid),
        0,
        0,
        _encode_path(proc.name)[: TASK_COMM_LEN - 1],
        args[: ELF_PRARGSZ - 1],
    )


def _file_note(regions: Sequence[VaRegion]) -> bytes:
    """NT_FILE: the file-backed ranges ([heap], [stack] and the like are not files)."""
    files = [r for r in regions if r.mapped_file and not r.mapped_file.startswith("[") and _fits_u64(r)]
    out = bytearray(FILE_HEADER.pack(len(files), ELF_EXEC_PAGESIZE))
    for r in files:
        out += FILE_ENTRY.pack(r.base, r.end, _fit(r.offset, 0, U64) // ELF_EXEC_PAGESIZE)
    for r in files:
        out += _encode_path(r.mapped_file or "").replace(b"\0", b"?") + b"\0"
    return bytes(out)


def _model_json(snapshot: Snapshot) -> bytes:
    """The model as compact ASCII JSON, minus the register images that the standard notes already carry."""
    if snapshot.threads:
        snapshot = dataclasses.replace(snapshot, threads=tuple(_without_blobs(t) for t in snapshot.threads))
    text = json.dumps(serial.to_dict(snapshot), ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.encode("ascii")


def _without_blobs(thread: ThreadEntry) -> ThreadEntry:
    ctx = thread.context
    if ctx is None:
        return thread
    ctx = dataclasses.replace(
        ctx,
        fpregs=None if _fpregs_in_note(ctx) else ctx.fpregs,
        xstate=None if _xstate_in_note(ctx) else ctx.xstate,
    )
    return dataclasses.replace(thread, context=ctx)


def _timeval(seconds: float | None) -> tuple[int, int]:
    if seconds is None or not 0 <= seconds < 1 << 62:
        return 0, 0
    whole = int(seconds)
    return whole, min(int((seconds - whole) * 1_000_000), 999_999)


def _fit(value: int | None, low: int, high: int) -> int:
    """`value` if the C field can hold it, else 0: these header fields are for debuggers; the model is exact."""
    return value if value is not None and low <= value <= high else 0


def _i32(value: int | None) -> int:
    return _fit(value, -(1 << 31), (1 << 31) - 1)


def _fits_u64(region: VaRegion) -> bool:
    return 0 <= region.base <= region.end <= U64


def _encode_path(text: str) -> bytes:
    """A str from /proc back to its bytes (procfs readers decode with surrogateescape)."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def _pad4(size: int) -> int:
    return -size % 4


# ------------------------------------------------------------------------------------------------ parsing


@dataclasses.dataclass(frozen=True, slots=True)
class ThreadRegisters:
    """One thread's raw register notes: pr_reg of NT_PRSTATUS, and NT_PRFPREG / NT_X86_XSTATE when present."""

    tid: int
    gpr: bytes
    fpregs: bytes | None
    xstate: bytes | None


@dataclasses.dataclass(frozen=True, slots=True)
class FileMapping:
    """One NT_FILE entry; `offset` in bytes."""

    start: int
    end: int
    offset: int
    path: str


@dataclasses.dataclass(frozen=True, slots=True)
class ParsedCore:
    """A pss-dup core, read back: the model, and the raw pieces a debugger-facing tool wants."""

    snapshot: Snapshot
    format_version: int
    schema_version: int
    registers: tuple[ThreadRegisters, ...]
    auxv: bytes | None
    files: tuple[FileMapping, ...]
    loads: tuple[PlacedSegment, ...]

    def registers_of(self, tid: int) -> ThreadRegisters | None:
        for regs in self.registers:
            if regs.tid == tid:
                return regs
        return None


@dataclasses.dataclass(frozen=True, slots=True)
class _Note:
    owner: bytes
    type: int
    offset: int
    size: int


def read_snapshot(data: Any) -> Snapshot:
    """The model from a pss-dup core (bytes, memoryview or mmap); BadSnapshot if it is not one."""
    return read_core(data).snapshot


def read_version(data: Any) -> tuple[int, int]:
    """(format version, schema version) of a pss-dup core, reading only headers and note headers.

    BadSnapshot unless it is an x86_64 ELF core with exactly one PSSDUP version note of a version this reader
    knows. Cheap: what `verify_snapshot_fd` uses before handing a snapshot on.
    """
    with _FlatView(data) as view:
        notes_offset, notes_size, _ = _read_headers(view, load_table=False)
        notes = list(_walk_notes(view, notes_offset, notes_size))
        return _check_version(view, notes)


def read_core(data: Any) -> ParsedCore:
    """Parse a pss-dup core, treating every byte as hostile; BadSnapshot with a one-line reason otherwise."""
    with _FlatView(data) as view:
        notes_offset, notes_size, loads = _read_headers(view, load_table=True)
        notes = list(_walk_notes(view, notes_offset, notes_size))
        format_version, schema_version = _check_version(view, notes)
        snapshot = _read_model(view, notes, schema_version)
        registers, auxv, files = _read_standard_notes(view, notes)
        snapshot = _merge_registers(snapshot, registers)
        return ParsedCore(snapshot, format_version, schema_version, registers, auxv, files, loads)


class _FlatView:
    """A flat byte view of the input that is always released, so that an mmap can be closed afterwards."""

    def __init__(self, data: Any) -> None:
        try:
            self.outer = memoryview(data)
        except TypeError:
            raise BadSnapshot(f"a snapshot is bytes, not {type(data).__name__}") from None

    def __enter__(self) -> memoryview:
        try:
            self.flat = self.outer.cast("B")
        except (TypeError, ValueError):
            self.outer.release()
            raise BadSnapshot("snapshot buffer is not a contiguous run of bytes") from None
        return self.flat

    def __exit__(self, *exc: object) -> None:
        self.flat.release()
        self.outer.release()


def _bad(reason: str) -> BadSnapshot:
    return BadSnapshot(f"not a valid pss-dup snapshot: {reason}")


def _read_headers(view: memoryview, *, load_table: bool) -> tuple[int, int, tuple[PlacedSegment, ...]]:
    """Check the ELF header and program headers; (PT_NOTE offset, size, the PT_LOAD table)."""
    size = view.nbytes
    if size < EHDR.size or bytes(view[:4]) != ELFMAG:
        raise BadSnapshot("not a pss-dup snapshot: not an ELF file")
    (ident, e_type, machine, version, _entry, phoff, shoff, _flags, ehsize, phentsize, phnum, shentsize, _shnum, _) = (
        EHDR.unpack_from(view)
    )
    if ident[4] != ELFCLASS64 or ident[5] != ELFDATA2LSB:
        raise _bad("not a little-endian 64-bit ELF file")
    if ident[6] != EV_CURRENT or version != EV_CURRENT:
        raise _bad(f"unknown ELF version {version}")
    if e_type != ET_CORE:
        raise _bad(f"ELF type {e_type} is not ET_CORE")
    if machine != EM_X86_64:
        raise _bad(f"ELF machine {machine} is not x86_64 (EM_X86_64)")
    if ehsize != EHDR.size or phentsize != PHDR.size:
        raise _bad("unexpected ELF header or program header size")
    if phnum == PN_XNUM:
        if shentsize != SHDR.size or not EHDR.size <= shoff <= size - SHDR.size:
            raise _bad("extended program header count without a section header")
        phnum = SHDR.unpack_from(view, shoff)[7]
    if phnum < 1:
        raise _bad("no program headers")
    if phnum > MAX_SEGMENTS:
        raise _bad(f"{phnum} program headers (at most {MAX_SEGMENTS})")
    if not EHDR.size <= phoff or phoff + phnum * PHDR.size > size:
        raise _bad("program headers lie outside the file")

    p_type, _, notes_offset, _, _, notes_size, _, _ = PHDR.unpack_from(view, phoff)
    if p_type != PT_NOTE:
        raise _bad("the first program header is not PT_NOTE")
    if notes_offset > size or notes_size > size - notes_offset:
        raise _bad("PT_NOTE lies outside the file")
    if not load_table:
        return notes_offset, notes_size, ()

    loads = []
    table = bytes(view[phoff + PHDR.size : phoff + phnum * PHDR.size])
    for p_type, flags, offset, vaddr, _, filesz, memsz, _ in PHDR.iter_unpack(table):
        if p_type != PT_LOAD:
            raise _bad(f"program header type {p_type:#x} where PT_LOAD was expected")
        if flags & ~(PF_R | PF_W | PF_X):
            raise _bad(f"PT_LOAD at {vaddr:#x} has flags {flags:#x}")
        if filesz > memsz or vaddr + memsz > U64 + 1:
            raise _bad(f"PT_LOAD at {vaddr:#x} has inconsistent sizes")
        if filesz and (offset > size or filesz > size - offset):
            raise _bad(f"PT_LOAD at {vaddr:#x} lies outside the file")
        loads.append(PlacedSegment(LoadSegment(vaddr, memsz, flags, filesz), offset))
    return notes_offset, notes_size, tuple(loads)


def _walk_notes(view: memoryview, offset: int, size: int) -> Iterator[_Note]:
    """Each note's owner, type and where its desc lies; the bounds of every field are checked."""
    pos, end, count = offset, offset + size, 0
    while pos < end:
        count += 1
        if count > MAX_NOTES:
            raise _bad(f"more than {MAX_NOTES} notes")
        if end - pos < NHDR.size:
            raise _bad(f"truncated note header at offset {pos}")
        namesz, descsz, ntype = NHDR.unpack_from(view, pos)
        name_at = pos + NHDR.size
        desc_at = name_at + namesz + _pad4(namesz)
        next_at = desc_at + descsz + _pad4(descsz)
        if namesz < 1 or next_at > end:
            raise _bad(f"note at offset {pos} overruns PT_NOTE")
        if view[name_at + namesz - 1] != 0:
            raise _bad(f"note name at offset {pos} is not NUL-terminated")
        yield _Note(bytes(view[name_at : name_at + namesz - 1]), ntype, desc_at, descsz)
        pos = next_at


def _desc(view: memoryview, note: _Note) -> bytes:
    return bytes(view[note.offset : note.offset + note.size])


def _check_version(view: memoryview, notes: list[_Note]) -> tuple[int, int]:
    found = [n for n in notes if n.owner == PSSDUP_OWNER and n.type == NT_PSSDUP_VERSION]
    if not found:
        raise BadSnapshot("not a pss-dup snapshot: no PSSDUP version note (an ordinary core file?)")
    if len(found) > 1:
        raise _bad("more than one PSSDUP version note")
    note = found[0]
    if note.size < PSSDUP_VERSION.size:
        raise _bad("PSSDUP version note too short")
    format_version, schema_version = PSSDUP_VERSION.unpack_from(view, note.offset)
    if format_version > FORMAT_VERSION:
        raise BadSnapshot(
            f"snapshot written by a newer pss-dup (format {format_version}); this one reads up to {FORMAT_VERSION}"
        )
    if schema_version > SCHEMA_VERSION:
        raise BadSnapshot(
            f"snapshot written by a newer pss-dup (model schema {schema_version}); "
            f"this one reads up to {SCHEMA_VERSION}"
        )
    if format_version < 1 or schema_version < 1 or note.size != PSSDUP_VERSION.size:
        raise _bad(f"unknown format version {format_version}.{schema_version}")
    for n in notes:
        if n.owner == PSSDUP_OWNER and n.type not in (NT_PSSDUP_VERSION, NT_PSSDUP_MODEL):
            raise _bad(f"unknown PSSDUP note type {n.type:#x}")
    return format_version, schema_version


class _DuplicateKey(Exception):
    pass


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _DuplicateKey
    return out


def _read_model(view: memoryview, notes: list[_Note], schema_version: int) -> Snapshot:
    found = [n for n in notes if n.owner == PSSDUP_OWNER and n.type == NT_PSSDUP_MODEL]
    if len(found) != 1:
        raise _bad("no PSSDUP model note" if not found else "more than one PSSDUP model note")
    if found[0].size > MAX_MODEL_JSON:
        raise _bad(f"model note larger than {MAX_MODEL_JSON} bytes")
    try:
        text = _desc(view, found[0]).decode("ascii")
        data = json.loads(text, object_pairs_hook=_object_without_duplicates, parse_constant=_no_constant)
    except _DuplicateKey:
        raise _bad("model note repeats a key") from None
    except RecursionError:
        raise _bad("model note nested too deeply") from None
    except ValueError as exc:  # UnicodeDecodeError, JSONDecodeError, int digit limit
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise _bad(f"model note is not ASCII JSON ({reason})") from None
    return serial.from_dict(Snapshot, serial.upgrade_snapshot(data, schema_version))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _read_standard_notes(
    view: memoryview, notes: list[_Note]
) -> tuple[tuple[ThreadRegisters, ...], bytes | None, tuple[FileMapping, ...]]:
    """Per-thread register notes (FPREG/XSTATE belong to the PRSTATUS before them), NT_AUXV and NT_FILE."""
    threads: list[ThreadRegisters] = []
    seen_tids: set[int] = set()
    once: dict[int, bytes] = {}
    for note in notes:
        key = (note.owner, note.type)
        if key == (CORE_OWNER, NT_PRSTATUS):
            if note.size != PRSTATUS.size:
                raise _bad(f"NT_PRSTATUS of {note.size} bytes (expected {PRSTATUS.size})")
            fields = PRSTATUS.unpack_from(view, note.offset)
            tid, gpr = fields[6], fields[18]
            if tid in seen_tids:
                raise _bad(f"two NT_PRSTATUS notes for thread {tid}")
            seen_tids.add(tid)
            threads.append(ThreadRegisters(tid, gpr, None, None))
        elif key in ((CORE_OWNER, NT_PRFPREG), (LINUX_OWNER, NT_X86_XSTATE)):
            what = "NT_PRFPREG" if note.type == NT_PRFPREG else "NT_X86_XSTATE"
            if not threads:
                raise _bad(f"{what} before any NT_PRSTATUS")
            current = threads[-1]
            if note.type == NT_PRFPREG:
                if note.size != FXSAVE_SIZE or current.fpregs is not None:
                    raise _bad(f"bad or repeated NT_PRFPREG for thread {current.tid}")
                threads[-1] = dataclasses.replace(current, fpregs=_desc(view, note))
            else:
                if not XSAVE_MIN_SIZE <= note.size <= MAX_XSTATE or current.xstate is not None:
                    raise _bad(f"bad or repeated NT_X86_XSTATE for thread {current.tid}")
                threads[-1] = dataclasses.replace(current, xstate=_desc(view, note))
        elif key in ((CORE_OWNER, NT_PRPSINFO), (CORE_OWNER, NT_SIGINFO), (CORE_OWNER, NT_AUXV), (CORE_OWNER, NT_FILE)):
            if note.type in once:
                raise _bad(f"repeated note type {note.type:#x}")
            limit = {NT_PRPSINFO: PRPSINFO.size, NT_SIGINFO: SIGINFO_SIZE}.get(note.type)
            if limit is not None and note.size != limit:
                raise _bad(f"note type {note.type:#x} of {note.size} bytes (expected {limit})")
            if note.type == NT_AUXV and (note.size > MAX_AUXV or note.size % 16):
                raise _bad(f"NT_AUXV of {note.size} bytes")
            once[note.type] = _desc(view, note)
        # Notes of other owners or types are a debugger's business; gdb and readelf skip them too.
    if NT_PRPSINFO not in once:
        raise _bad("no NT_PRPSINFO note")
    files = _parse_file_note(once[NT_FILE]) if NT_FILE in once else ()
    return tuple(threads), once.get(NT_AUXV), files


def _parse_file_note(desc: bytes) -> tuple[FileMapping, ...]:
    if len(desc) < FILE_HEADER.size:
        raise _bad("NT_FILE too short")
    count, page_size = FILE_HEADER.unpack_from(desc)
    table_end = FILE_HEADER.size + count * FILE_ENTRY.size
    if table_end > len(desc) or page_size == 0 or page_size & (page_size - 1):
        raise _bad("NT_FILE header does not match its size")
    names = desc[table_end:].split(b"\0")
    if len(names) < count + 1:
        raise _bad("NT_FILE has fewer names than entries")
    out = []
    for i, (start, end, pgoff) in enumerate(FILE_ENTRY.iter_unpack(desc[FILE_HEADER.size : table_end])):
        if end < start or pgoff * page_size > U64:
            raise _bad(f"NT_FILE entry {i} is inconsistent")
        out.append(FileMapping(start, end, pgoff * page_size, os.fsdecode(names[i])))
    return tuple(out)


def _merge_registers(snapshot: Snapshot, registers: tuple[ThreadRegisters, ...]) -> Snapshot:
    """Put the register images from the standard notes back into the model, checking both agree."""
    by_tid = {r.tid: r for r in registers}
    threads = snapshot.threads
    if threads is None:
        if registers:
            raise _bad("NT_PRSTATUS notes in a snapshot without threads")
        return snapshot
    if len(threads) != len(registers) or {t.tid for t in threads} != set(by_tid):
        raise _bad("the NT_PRSTATUS notes do not match the model's threads")
    merged = []
    for thread in threads:
        regs = by_tid[thread.tid]
        ctx = thread.context
        if ctx is None:
            if regs.fpregs is not None or regs.xstate is not None:
                raise _bad(f"register notes for thread {thread.tid}, which has no context in the model")
            merged.append(thread)
            continue
        if _gpr_canonical(ctx) and _gpr_bytes(ctx) != regs.gpr:
            raise _bad(f"NT_PRSTATUS of thread {thread.tid} disagrees with the model note")
        if (regs.fpregs is not None and ctx.fpregs is not None) or (regs.xstate is not None and ctx.xstate is not None):
            raise _bad(f"thread {thread.tid} carries a register image twice")
        if ctx.arch != "x86_64" and (regs.fpregs is not None or regs.xstate is not None):
            raise _bad(f"x86_64 register notes for a {ctx.arch} thread {thread.tid}")
        fpregs = regs.fpregs if regs.fpregs is not None else ctx.fpregs
        xstate = regs.xstate if regs.xstate is not None else ctx.xstate
        merged.append(dataclasses.replace(thread, context=dataclasses.replace(ctx, fpregs=fpregs, xstate=xstate)))
    return dataclasses.replace(snapshot, threads=tuple(merged))

"""The snapshot as an ELF core: exact round-trips, the kernel's layout, readelf and gdb accept it, hostile input."""

from __future__ import annotations

import dataclasses
import json
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pss_cli import serial
from pss_cli.errors import BadSnapshot
from pss_cli.model import SCHEMA_VERSION, MemoryCapture, Snapshot, ThreadContext
from pss_cli.platform.linux import elfcore
from pss_cli.platform.linux.elfcore import (
    CORE_OWNER,
    LINUX_OWNER,
    NT_AUXV,
    NT_FILE,
    NT_PRFPREG,
    NT_PRPSINFO,
    NT_PRSTATUS,
    NT_PSSDUP_MODEL,
    NT_PSSDUP_VERSION,
    NT_SIGINFO,
    NT_X86_XSTATE,
    PSSDUP_OWNER,
    LoadSegment,
)
from tests.conftest import need_tools
from tests.linux import core_samples as cs

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux core files")


def write(tmp_path: Path, data: bytes, name: str = "snap.core") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def gdb(core: Path, *commands: str) -> subprocess.CompletedProcess[str]:
    need_tools("gdb")
    args = ["gdb", "-nx", "-batch"]
    for command in commands:
        args += ["-ex", command]
    return subprocess.run([*args, "-c", str(core)], capture_output=True, text=True, timeout=60, check=False)


# ------------------------------------------------------------------------------------------------ round-trips


@pytest.mark.parametrize(
    "snapshot",
    [
        cs.snapshot(3),
        cs.snapshot(4, without_context=(2,)),
        cs.snapshot(1, contexts=False),
        cs.snapshot(2, with_threads=False),
        dataclasses.replace(cs.snapshot(1), va_space=None, handles=None),
    ],
    ids=["3-threads", "one-without-context", "no-contexts", "threads-not-captured", "no-handles-no-va"],
)
def test_core_round_trips_to_an_equal_snapshot(snapshot: Snapshot) -> None:
    parsed = elfcore.read_core(elfcore.render_core(snapshot, cs.auxv()))
    assert parsed.snapshot == snapshot
    assert parsed.format_version == elfcore.FORMAT_VERSION
    assert parsed.schema_version == SCHEMA_VERSION


def test_register_images_travel_in_the_standard_notes_only() -> None:
    snap = cs.snapshot(2)
    core = elfcore.render_core(snap, cs.auxv())
    model = json.loads(next(d for o, t, d in cs.notes_of(core) if (o, t) == (PSSDUP_OWNER, NT_PSSDUP_MODEL)))
    for thread in model["threads"]:
        assert thread["context"]["fpregs"] is None
        assert thread["context"]["xstate"] is None
        assert thread["context"]["registers"]["orig_rax"] == 230
    parsed = elfcore.read_core(core)
    for thread in snap.threads or ():
        regs = parsed.registers_of(thread.tid)
        assert regs is not None and thread.context is not None
        assert regs.gpr == elfcore.GPREGS.pack(*(v for _, v in thread.context.registers))
        assert regs.fpregs == thread.context.fpregs
        assert regs.xstate == thread.context.xstate


def test_non_x86_contexts_keep_their_bytes_in_the_model_note() -> None:
    snap = cs.snapshot(2)
    threads = snap.threads or ()
    arm = ThreadContext("aarch64", (("x0", 1), ("pc", 0x4000), ("sp", 0x7FF0)), fpregs=b"\x05" * 528)
    odd = dataclasses.replace(threads[1].context or arm, xstate=b"\x01" * 64)  # too small to be an XSAVE area
    snap = dataclasses.replace(
        snap, threads=(dataclasses.replace(threads[0], context=arm), dataclasses.replace(threads[1], context=odd))
    )
    core = elfcore.render_core(snap)
    kinds = [(o, t) for o, t, _ in cs.notes_of(core)]
    assert kinds.count((CORE_OWNER, NT_PRFPREG)) == 1
    assert (LINUX_OWNER, NT_X86_XSTATE) not in kinds
    parsed = elfcore.read_core(core)
    assert parsed.snapshot == snap
    assert parsed.registers_of(threads[0].tid) == elfcore.ThreadRegisters(threads[0].tid, bytes(216), None, None)


def test_auxv_files_and_loads_are_read_back() -> None:
    snap = cs.snapshot(1)
    parsed = elfcore.read_core(elfcore.render_core(snap, cs.auxv()))
    assert parsed.auxv == cs.auxv()
    files = [r for r in snap.va_space or () if r.mapped_file and not r.mapped_file.startswith("[")]
    assert [(f.start, f.end, f.offset, f.path) for f in parsed.files] == [
        (r.base, r.end, r.offset, r.mapped_file) for r in files
    ]
    assert [(p.segment.vaddr, p.segment.memsz, p.segment.filesz) for p in parsed.loads] == [
        (r.base, r.size, 0) for r in snap.va_space or ()
    ]
    assert [p.segment.flags for p in parsed.loads][:3] == [4, 5, 6]  # r--, r-x, rw-


def test_without_auxv_there_is_no_auxv_note() -> None:
    core = elfcore.render_core(cs.snapshot(1), None)
    assert NT_AUXV not in [t for _, t, _ in cs.notes_of(core)]
    assert elfcore.read_core(core).auxv is None


# ------------------------------------------------------------------------------------------------- the layout


def test_layout_follows_the_kernel() -> None:
    snap = cs.snapshot(3)
    core = elfcore.render_core(snap, cs.auxv())
    ident, e_type, machine, version, entry, phoff, shoff, _, ehsize, phentsize, phnum, _, shnum, _ = struct.unpack_from(
        "<16sHHIQQQIHHHHHH", core
    )
    assert ident == b"\x7fELF\x02\x01\x01" + bytes(9)
    assert (e_type, machine, version, entry, phoff, shoff, ehsize, phentsize, shnum) == (4, 62, 1, 0, 64, 0, 64, 56, 0)
    regions = snap.va_space or ()
    assert phnum == 1 + len(regions)
    phdrs = [struct.unpack_from("<IIQQQQQQ", core, 64 + 56 * i) for i in range(phnum)]
    assert phdrs[0][0] == 4 and phdrs[0][7] == 4  # PT_NOTE first, 4-byte aligned
    for (p_type, flags, _, vaddr, paddr, filesz, memsz, align), region in zip(phdrs[1:], regions, strict=True):
        assert (p_type, vaddr, paddr, filesz, memsz, align) == (1, region.base, 0, 0, region.size, 4096)
        assert flags == (4 if "r" in region.perms else 0) | (2 if "w" in region.perms else 0) | (
            1 if "x" in region.perms else 0
        )

    kinds = [(o, t) for o, t, _ in cs.notes_of(core)]
    per_thread = [(CORE_OWNER, NT_PRFPREG), (LINUX_OWNER, NT_X86_XSTATE)]
    assert kinds == [
        (CORE_OWNER, NT_PRSTATUS),
        (CORE_OWNER, NT_PRPSINFO),
        (CORE_OWNER, NT_SIGINFO),
        (CORE_OWNER, NT_AUXV),
        (CORE_OWNER, NT_FILE),
        *per_thread,
        (CORE_OWNER, NT_PRSTATUS),
        *per_thread,
        (CORE_OWNER, NT_PRSTATUS),
        *per_thread,
        (PSSDUP_OWNER, NT_PSSDUP_VERSION),
        (PSSDUP_OWNER, NT_PSSDUP_MODEL),
    ]


def test_prstatus_and_prpsinfo_fields() -> None:
    snap = cs.snapshot(2)
    notes = cs.notes_of(elfcore.render_core(snap, cs.auxv()))
    statuses = [d for o, t, d in notes if (o, t) == (CORE_OWNER, NT_PRSTATUS)]
    threads = snap.threads or ()
    assert [len(d) for d in statuses] == [336, 336]
    for desc, thread in zip(statuses, threads, strict=True):
        sigpend, sighold, pid, ppid = struct.unpack_from("<QQii", desc, 16)
        utime = struct.unpack_from("<qq", desc, 48)
        assert (sigpend, sighold, pid, ppid) == (thread.sig_pending, thread.sig_blocked, thread.tid, 1)
        assert utime == (int(thread.user_time or 0), round((thread.user_time or 0) % 1 * 1e6))
        assert thread.context is not None
        assert desc[112:328] == b"".join(struct.pack("<Q", v) for _, v in thread.context.registers)
        assert struct.unpack_from("<i", desc, 328)[0] == 1  # pr_fpvalid
    (psinfo,) = [d for o, t, d in notes if (o, t) == (CORE_OWNER, NT_PRPSINFO)]
    assert len(psinfo) == 136
    assert psinfo[1:2] == b"S"
    assert struct.unpack_from("<IIi", psinfo, 16) == (1000, 1000, cs.PID)
    assert psinfo[40:56].rstrip(b"\0") == b"sleepy"
    assert psinfo[56:136].rstrip(b"\0") == "/usr/bin/sleepy --threads 2 café".encode()
    (version,) = [d for o, t, d in notes if (o, t) == (PSSDUP_OWNER, NT_PSSDUP_VERSION)]
    assert struct.unpack("<II", version) == (elfcore.FORMAT_VERSION, SCHEMA_VERSION)


def test_thread_without_context_still_gets_a_zeroed_prstatus() -> None:
    snap = cs.snapshot(3, without_context=(1,))
    notes = cs.notes_of(elfcore.render_core(snap))
    statuses = [d for o, t, d in notes if (o, t) == (CORE_OWNER, NT_PRSTATUS)]
    assert len(statuses) == 3
    assert statuses[1][112:328] == bytes(216)
    assert struct.unpack_from("<i", statuses[1], 328)[0] == 0
    assert struct.unpack_from("<i", statuses[1], 32)[0] == cs.PID + 1


def test_memory_is_filled_in_place_at_page_aligned_offsets() -> None:
    snap = cs.snapshot(1)
    segments = [
        LoadSegment(0x10000, 0x3000, 6, 0x3000),
        LoadSegment(0x20000, 0x1000, 4, 0),
        LoadSegment(0x30000, 0x2000, 5, 100),
    ]
    layout = elfcore.plan_core(snap, cs.auxv(), segments)
    seen: list[tuple[int, int]] = []

    def fill(segment: LoadSegment, view: memoryview) -> None:
        seen.append((segment.vaddr, len(view)))
        view[:] = bytes([segment.vaddr >> 16]) * len(view)

    buf = bytearray(layout.size)
    elfcore.write_core(buf, layout, fill)
    assert seen == [(0x10000, 0x3000), (0x30000, 100)]
    assert [p.offset % 4096 for p in layout.loads if p.segment.filesz] == [0, 0]
    assert layout.size == layout.loads[2].offset + 100
    parsed = elfcore.read_core(bytes(buf))
    assert parsed.loads == layout.loads
    for p in parsed.loads:
        assert bytes(buf[p.offset : p.offset + p.segment.filesz]) == bytes([p.segment.vaddr >> 16]) * p.segment.filesz


def test_write_core_refuses_a_short_or_read_only_buffer() -> None:
    layout = elfcore.plan_core(cs.snapshot(1))
    with pytest.raises(ValueError, match="writable buffer"):
        elfcore.write_core(bytearray(layout.size - 1), layout)
    with pytest.raises(ValueError, match="writable buffer"):
        elfcore.write_core(bytes(layout.size), layout)


@pytest.mark.parametrize(
    ("segment", "message"),
    [
        (LoadSegment(0x1000, 0x1000, 4, 0x2000), "p_filesz"),
        (LoadSegment(-1, 0x1000, 4), "64-bit"),
        (LoadSegment(2**64 - 0x1000, 0x2000, 4), "64-bit"),
        (LoadSegment(0x1000, 0x1000, 8), "flags"),
    ],
)
def test_plan_core_refuses_impossible_segments(segment: LoadSegment, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        elfcore.plan_core(cs.snapshot(1), None, [segment])


def test_plan_core_refuses_a_thread_twice() -> None:
    snap = cs.snapshot(2)
    threads = snap.threads or ()
    with pytest.raises(ValueError, match="same thread twice"):
        elfcore.plan_core(dataclasses.replace(snap, threads=(threads[0], threads[0])))


def test_extended_numbering_for_65535_or_more_program_headers(tmp_path: Path) -> None:
    snap = cs.snapshot(2)
    segments = [LoadSegment(0x10000000 + i * 0x2000, 0x1000, 4, 0) for i in range(70_000)]
    segments[0] = LoadSegment(0x10000000, 0x1000, 4, 0x1000)
    layout = elfcore.plan_core(snap, None, segments)
    buf = bytearray(layout.size)
    elfcore.write_core(buf, layout, lambda seg, view: view.__setitem__(slice(0, 8), b"PSSMARK!"))
    assert struct.unpack_from("<H", buf, 56)[0] == 0xFFFF  # e_phnum = PN_XNUM
    shoff, shnum = struct.unpack_from("<Q", buf, 40)[0], struct.unpack_from("<H", buf, 60)[0]
    assert shnum == 1 and struct.unpack_from("<I", buf, shoff + 44)[0] == 70_001  # sh_info
    parsed = elfcore.read_core(bytes(buf))
    assert len(parsed.loads) == 70_000 and parsed.snapshot == snap
    path = write(tmp_path, bytes(buf))
    need_tools("readelf", "gdb")
    header = subprocess.run(["readelf", "-h", str(path)], capture_output=True, text=True, check=True).stdout
    assert re.search(r"Number of program headers:\s+65535 \(70001\)", header)
    out = gdb(path, "info threads", "x/s 0x10000000")
    assert out.returncode == 0, out.stderr
    assert '"PSSMARK!"' in out.stdout


# ----------------------------------------------------------------------------------- readelf and gdb accept it


def test_readelf_lists_every_note(tmp_path: Path) -> None:
    need_tools("readelf")
    path = write(tmp_path, elfcore.render_core(cs.snapshot(4, without_context=(3,)), cs.auxv()))
    out = subprocess.run(["readelf", "-n", "-W", str(path)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert "Warning" not in out.stderr and "Error" not in out.stderr
    rows = [line.split() for line in out.stdout.splitlines()]
    owners = [r[0] for r in rows if len(r) > 1 and r[1].startswith("0x")]
    assert sum("NT_PRSTATUS" in line for line in out.stdout.splitlines()) == 4
    assert sum("NT_FPREGSET" in line for line in out.stdout.splitlines()) == 3
    assert sum("NT_X86_XSTATE" in line for line in out.stdout.splitlines()) == 3
    for name in ("NT_PRPSINFO", "NT_AUXV", "NT_FILE", "NT_SIGINFO"):
        assert sum(name in line for line in out.stdout.splitlines()) == 1, name
    assert owners.count("PSSDUP") == 2
    assert owners.count("LINUX") == 3


def test_gdb_loads_the_core_and_lists_one_thread_per_prstatus(tmp_path: Path) -> None:
    snap = cs.snapshot(4, without_context=(2,))
    path = write(tmp_path, elfcore.render_core(snap, cs.auxv()))
    out = gdb(path, "info threads", "thread 2", "p/x $rsp", "p/x $fs_base", "p/x $xmm0.v2_int64", "p $orig_rax")
    assert out.returncode == 0, out.stderr
    for thread in snap.threads or ():
        assert f"LWP {thread.tid}" in out.stdout
    assert len(re.findall(r"^\*?\s+\d+\s+LWP \d+", out.stdout, re.M)) == 4
    values = cs.gpr_values(cs.PID + 1, 1)
    assert f"= {values['rsp']:#x}" in out.stdout
    assert f"= {values['fs_base']:#x}" in out.stdout
    assert "= {0x11110001, 0x22220001}" in out.stdout
    assert "= 230" in out.stdout
    for bad in ("not a core dump", "Unexpected size", "not in executable format", "Couldn't find general-purpose"):
        assert bad not in out.stdout + out.stderr, bad


def test_gdb_loads_a_snapshot_without_threads(tmp_path: Path) -> None:
    path = write(tmp_path, elfcore.render_core(cs.snapshot(2, with_threads=False), cs.auxv()))
    out = gdb(path, "info proc mappings")
    assert out.returncode == 0, out.stderr
    assert "/usr/lib/x86_64-linux-gnu/libc.so.6" in out.stdout


# ------------------------------------------------------------------------------------------------ refusals


def core_notes() -> list[cs.Note]:
    return cs.notes_of(elfcore.render_core(cs.snapshot(2), cs.auxv()))


def version_note(fmt: int, schema: int) -> bytes:
    return struct.pack("<II", fmt, schema)


def model_with(change: dict[str, object]) -> bytes:
    notes = core_notes()
    model = json.loads(next(d for o, t, d in notes if t == NT_PSSDUP_MODEL))
    model.update(change)
    return json.dumps(model).encode()


def mutated(offset: int, fmt: str, value: int) -> bytes:
    core = bytearray(elfcore.render_core(cs.snapshot(2), cs.auxv()))
    struct.pack_into(fmt, core, offset, value)
    return bytes(core)


HOSTILE: list[tuple[str, bytes, str]] = [
    ("empty", b"", "not an ELF file"),
    ("text", b"hello world, this is not a core file at all, not even close to one..", "not an ELF file"),
    ("32-bit", mutated(4, "<B", 1), "not a little-endian 64-bit ELF"),
    ("big-endian", mutated(5, "<B", 2), "not a little-endian 64-bit ELF"),
    ("executable", mutated(16, "<H", 2), "ELF type 2 is not ET_CORE"),
    ("aarch64", mutated(18, "<H", 183), "ELF machine 183 is not x86_64"),
    ("phoff-huge", mutated(32, "<Q", 2**64 - 1), "program headers lie outside the file"),
    ("phnum-huge", mutated(56, "<H", 0xFFFE), "program headers lie outside the file"),
    ("xnum-no-shdr", mutated(56, "<H", 0xFFFF), "extended program header count without a section header"),
    ("note-size-huge", mutated(64 + 32, "<Q", 2**63), "PT_NOTE lies outside the file"),
    ("note-offset-huge", mutated(64 + 8, "<Q", 2**64 - 8), "PT_NOTE lies outside the file"),
    ("no-pssdup", cs.build_core([n for n in core_notes() if n[0] != PSSDUP_OWNER]), "no PSSDUP version note"),
    (
        "two-versions",
        cs.build_core([*core_notes(), (PSSDUP_OWNER, NT_PSSDUP_VERSION, version_note(1, 1))]),
        "more than one PSSDUP version note",
    ),
    (
        "two-models",
        cs.build_core([*core_notes(), core_notes()[-1]]),
        "more than one PSSDUP model note",
    ),
    (
        "no-model",
        cs.build_core([n for n in core_notes() if n[1] != NT_PSSDUP_MODEL]),
        "no PSSDUP model note",
    ),
    (
        "newer-format",
        cs.build_core(cs.replace_note(core_notes(), PSSDUP_OWNER, NT_PSSDUP_VERSION, version_note(7, 1))),
        f"snapshot written by a newer pss-dup (format 7); this one reads up to {elfcore.FORMAT_VERSION}",
    ),
    (
        "newer-schema",
        cs.build_core(cs.replace_note(core_notes(), PSSDUP_OWNER, NT_PSSDUP_VERSION, version_note(1, 99))),
        f"(model schema 99); this one reads up to {SCHEMA_VERSION}",
    ),
    (
        "format-zero",
        cs.build_core(cs.replace_note(core_notes(), PSSDUP_OWNER, NT_PSSDUP_VERSION, version_note(0, 1))),
        "unknown format version 0.1",
    ),
    (
        "model-not-json",
        cs.build_core(cs.replace_note(core_notes(), PSSDUP_OWNER, NT_PSSDUP_MODEL, b"{not json")),
        "model note is not ASCII JSON",
    ),
    (
        "model-not-ascii",
        cs.build_core(cs.replace_note(core_notes(), PSSDUP_OWNER, NT_PSSDUP_MODEL, '{"é": 1}'.encode())),
        "model note is not ASCII JSON",
    ),
    (
        "model-nan",
        cs.build_core(
            cs.replace_note(
                core_notes(),
                PSSDUP_OWNER,
                NT_PSSDUP_MODEL,
                model_with({"captured_at": 0}).replace(b'"captured_at": 0', b'"captured_at": NaN'),
            )
        ),
        "model note is not ASCII JSON (NaN is not JSON",
    ),
    (
        "model-duplicate-key",
        cs.build_core(cs.replace_note(core_notes(), PSSDUP_OWNER, NT_PSSDUP_MODEL, b'{"arch": "x", "arch": "y"}')),
        "model note repeats a key",
    ),
    (
        "model-deep",
        cs.build_core(cs.replace_note(core_notes(), PSSDUP_OWNER, NT_PSSDUP_MODEL, b"[" * 200_000 + b"]" * 200_000)),
        "nested too deeply",
    ),
    (
        "model-huge-int",
        cs.build_core(cs.replace_note(core_notes(), PSSDUP_OWNER, NT_PSSDUP_MODEL, b"1" * 5000)),
        "model note is not ASCII JSON",
    ),
    (
        "model-bad-field",
        cs.build_core(cs.replace_note(core_notes(), PSSDUP_OWNER, NT_PSSDUP_MODEL, model_with({"captured_at": "now"}))),
        "snapshot field captured_at: expected a number, got a string",
    ),
    (
        "thread-missing-prstatus",
        cs.build_core([n for i, n in enumerate(core_notes()) if i not in (7, 8, 9)]),
        "the NT_PRSTATUS notes do not match the model's threads",
    ),
    (
        "registers-disagree",
        cs.build_core(
            [(o, t, d[:112] + b"\xff" * 8 + d[120:]) if t == NT_PRSTATUS else (o, t, d) for o, t, d in core_notes()]
        ),
        "disagrees with the model note",
    ),
    (
        "short-prstatus",
        cs.build_core([(o, t, d[:300]) if t == NT_PRSTATUS else (o, t, d) for o, t, d in core_notes()]),
        "NT_PRSTATUS of 300 bytes",
    ),
    (
        "fpregs-first",
        cs.build_core([(CORE_OWNER, NT_PRFPREG, bytes(512)), *core_notes()]),
        "NT_PRFPREG before any NT_PRSTATUS",
    ),
    (
        "unknown-pssdup-note",
        cs.build_core([*core_notes(), (PSSDUP_OWNER, 0x50535399, b"")]),
        "unknown PSSDUP note type 0x50535399",
    ),
    (
        "bad-nt-file",
        cs.build_core(cs.replace_note(core_notes(), CORE_OWNER, NT_FILE, struct.pack("<QQ", 2**60, 4096))),
        "NT_FILE header does not match its size",
    ),
]


@pytest.mark.parametrize(("data", "message"), [(d, m) for _, d, m in HOSTILE], ids=[n for n, _, _ in HOSTILE])
def test_hostile_core_is_refused_with_a_one_line_reason(data: bytes, message: str) -> None:
    started = time.perf_counter()
    with pytest.raises(BadSnapshot) as info:
        elfcore.read_core(data)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert time.perf_counter() - started < 2


def test_every_truncation_is_refused() -> None:
    core = elfcore.render_core(cs.snapshot(2), cs.auxv())
    for end in range(0, len(core), 7):
        with pytest.raises(BadSnapshot):
            elfcore.read_core(core[:end])


def test_version_is_read_from_headers_alone() -> None:
    core = elfcore.render_core(cs.snapshot(2), cs.auxv())
    assert elfcore.read_version(core) == (elfcore.FORMAT_VERSION, SCHEMA_VERSION)
    broken_model = cs.build_core(cs.replace_note(cs.notes_of(core), PSSDUP_OWNER, NT_PSSDUP_MODEL, b"{"))
    assert elfcore.read_version(broken_model) == (elfcore.FORMAT_VERSION, SCHEMA_VERSION)


def test_a_schema_1_core_reads_in_todays_terms_nice_moved_and_unmeasured_failed_pages_null() -> None:
    """Schema 1 stored a Linux thread's nice value in base_priority, and its note, rendered before the memory copy,
    said failed_pages 0 that nothing had measured. Read back today, they mean what schema 2 says."""
    written = dataclasses.replace(cs.snapshot(2), memory=MemoryCapture("va-clone", 4096, 1))
    notes = cs.notes_of(elfcore.render_core(written, cs.auxv()))
    model = json.loads(next(d for o, t, d in notes if t == NT_PSSDUP_MODEL))
    for thread, nice in zip(model["threads"], (5, -3), strict=True):
        del thread["nice"]
        thread["base_priority"] = nice
    model["memory"]["failed_pages"] = 0
    notes = cs.replace_note(notes, PSSDUP_OWNER, NT_PSSDUP_MODEL, json.dumps(model).encode())
    parsed = elfcore.read_core(
        cs.build_core(cs.replace_note(notes, PSSDUP_OWNER, NT_PSSDUP_VERSION, version_note(1, 1)))
    )
    assert parsed.schema_version == 1
    threads = parsed.snapshot.threads or ()
    assert [(t.priority, t.base_priority, t.nice) for t in threads] == [(20, 20, 5), (20, 20, -3)]
    assert parsed.snapshot.memory is not None and parsed.snapshot.memory.failed_pages is None
    assert dataclasses.replace(parsed.snapshot, threads=written.threads, memory=written.memory) == written


def test_non_buffer_input_is_refused() -> None:
    with pytest.raises(BadSnapshot, match="a snapshot is bytes, not str"):
        elfcore.read_core("core")
    with pytest.raises(BadSnapshot, match="not a contiguous run of bytes"):
        elfcore.read_core(memoryview(elfcore.render_core(cs.snapshot(1)))[::2])


def test_an_ordinary_core_file_is_not_a_snapshot(tmp_path: Path) -> None:
    """A core that gdb wrote for a process of ours: valid ELF, but no PSSDUP notes."""
    need_tools("gcore")
    child = subprocess.Popen(["sleep", "30"])
    try:
        subprocess.run(
            ["gcore", "-o", str(tmp_path / "core"), str(child.pid)], capture_output=True, timeout=60, check=True
        )
    finally:
        child.kill()
        child.wait()
    (core,) = tmp_path.glob("core.*")
    with pytest.raises(BadSnapshot, match=r"no PSSDUP version note \(an ordinary core file\?\)"):
        elfcore.read_snapshot(core.read_bytes())


def test_model_note_is_compact_ascii_json_of_to_dict() -> None:
    snap = cs.snapshot(1, contexts=False)
    (model,) = [d for o, t, d in cs.notes_of(elfcore.render_core(snap)) if t == NT_PSSDUP_MODEL]
    assert model.isascii()
    assert model == json.dumps(serial.to_dict(snap), separators=(",", ":")).encode()

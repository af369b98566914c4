"""Realistic snapshots, built by hand, for the ELF core, memfd and parser-fuzz tests.

The register images have the kernel's sizes (216-byte user_regs_struct, 512-byte FXSAVE, an XSAVE area with a
valid header) and plausible values (a canonical user-space rip/rsp, the user cs/ss selectors, eflags with IF).
"""

from __future__ import annotations

import struct

from pss_cli.model import (
    CaptureFlags,
    HandleEntry,
    HandleFlags,
    HandleType,
    MemoryProtection,
    MemoryState,
    MemoryType,
    Performance,
    ProcessFlags,
    ProcessInfo,
    Snapshot,
    SyscallState,
    ThreadContext,
    ThreadEntry,
    ThreadFlags,
    ThreadState,
    VaRegion,
)
from pss_cli.platform.linux.elfcore import X86_64_GPR_NAMES

#: AVX-only XSAVE size (x87 | SSE | AVX), the smallest that gdb reads without a warning.
XSTATE_SIZE = 832
XCR0 = 0x7
USER_CS = 0x33
USER_SS = 0x2B
PID = 31337


def gpr_values(tid: int, index: int) -> dict[str, int]:
    """A plausible user-space register set: blocked in clock_nanosleep, as a sleeping thread is."""
    stack = 0x7FFC_0000_0000 - index * 0x80_0000
    return dict.fromkeys(X86_64_GPR_NAMES, 0) | {
        "rax": (-516) & (2**64 - 1),  # -ERESTART_RESTARTBLOCK, as the kernel leaves it
        "orig_rax": 230,
        "rip": 0x7F12_3456_7000 + 0x1A3,
        "rsp": stack,
        "rbp": stack + 0x40,
        "rdi": 1,
        "rsi": 0,
        "rdx": stack + 0x10,
        "rcx": 0x7F12_3456_71A3,
        "r11": 0x246,
        "cs": USER_CS,
        "ss": USER_SS,
        "eflags": 0x246,
        "fs_base": 0x7F12_3400_0740 + index * 0x1000,
        "r12": tid,
    }


def fxsave(index: int) -> bytes:
    """A 512-byte FXSAVE image: default control words, MXCSR 0x1f80, xmm0 holding a marker."""
    image = bytearray(512)
    struct.pack_into("<HHHH", image, 0, 0x037F, 0, 0, 0)
    struct.pack_into("<II", image, 24, 0x1F80, 0xFFFF)
    struct.pack_into("<QQ", image, 160, 0x1111_0000 + index, 0x2222_0000 + index)
    struct.pack_into("<Q", image, 464, XCR0)  # xstate_fx_sw_bytes: where gdb finds XCR0
    return bytes(image)


def xsave(index: int) -> bytes:
    """An XSAVE area (standard format): the FXSAVE part, then the header with xstate_bv = x87|SSE|AVX."""
    image = bytearray(XSTATE_SIZE)
    image[:512] = fxsave(index)
    struct.pack_into("<Q", image, 512, XCR0)
    return bytes(image)


def thread(tid: int, index: int, *, context: bool = True) -> ThreadEntry:
    values = gpr_values(tid, index)
    ctx = (
        ThreadContext("x86_64", tuple((n, values[n]) for n in X86_64_GPR_NAMES), fxsave(index), xsave(index))
        if context
        else None
    )
    return ThreadEntry(
        tid=tid,
        name="main" if index == 0 else f"worker-{index}",
        state=ThreadState.SLEEPING,
        flags=ThreadFlags.NONE,
        user_time=0.5 + index,
        system_time=0.25,
        start_time=1_700_000_000.0 + index,
        priority=20,
        base_priority=20,
        affinity=(0, 1),
        processor=index % 2,
        syscall=SyscallState(230, "clock_nanosleep", (1, 0, values["rdx"], 0, 0, 0), values["rsp"], values["rip"]),
        sig_blocked=1 << 13,
        sig_pending=0,
        context=ctx,
        nice=0,
    )


def regions() -> tuple[VaRegion, ...]:
    def region(base: int, size: int, perms: str, kind: MemoryType, path: str | None, offset: int = 0) -> VaRegion:
        prot = {"r--p": MemoryProtection.READONLY, "r-xp": MemoryProtection.EXECUTE_READ}.get(
            perms, MemoryProtection.READWRITE
        )
        file_backed = path is not None and not path.startswith("[")
        return VaRegion(
            base,
            size,
            perms,
            prot,
            MemoryState.COMMIT,
            kind,
            path,
            offset=offset if file_backed else None,
            device="08:01" if file_backed else None,
            inode=4242 if file_backed else None,
            rss=4096,
            vm_flags=("rd", "mr", "mw", "me"),
        )

    exe = "/usr/bin/sleepy"
    libc = "/usr/lib/x86_64-linux-gnu/libc.so.6"
    return (
        region(0x5555_5555_4000, 0x1000, "r--p", MemoryType.IMAGE, exe),
        region(0x5555_5555_5000, 0x2000, "r-xp", MemoryType.IMAGE, exe, 0x1000),
        region(0x5555_5555_7000, 0x1000, "rw-p", MemoryType.IMAGE, exe, 0x3000),
        region(0x5555_5556_0000, 0x21000, "rw-p", MemoryType.PRIVATE, "[heap]"),
        region(0x7F12_3440_0000, 0x28000, "r--p", MemoryType.IMAGE, libc),
        region(0x7F12_3442_8000, 0x195000, "r-xp", MemoryType.IMAGE, libc, 0x28000),
        region(0x7F12_3460_0000, 0x4000, "rw-p", MemoryType.PRIVATE, None),
        region(0x7FFB_F000_0000, 0x1000_0000, "rw-p", MemoryType.PRIVATE, "[stack]"),
        region(0x7FFF_F7FC_1000, 0x2000, "r-xp", MemoryType.IMAGE, "[vdso]"),
    )


def auxv() -> bytes:
    """A plausible /proc/PID/auxv: (type, value) u64 pairs ending in AT_NULL."""
    pairs = [(33, 0x7FFF_F7FC_1000), (6, 4096), (3, 0x5555_5555_4040), (4, 56), (5, 13), (7, 0x7F12_3470_0000),
             (9, 0x5555_5555_5040), (11, 0), (12, 0), (13, 0), (14, 0), (23, 0), (0, 0)]  # fmt: skip
    return b"".join(struct.pack("<QQ", t, v) for t, v in pairs)


def snapshot(
    n_threads: int = 3, *, contexts: bool = True, without_context: tuple[int, ...] = (), with_threads: bool = True
) -> Snapshot:
    """A sleeping multi-threaded process with fds and a realistic memory map."""
    threads = tuple(thread(PID + i, i, context=contexts and i not in without_context) for i in range(n_threads))
    process = ProcessInfo(
        pid=PID,
        ppid=1,
        name="sleepy",
        exe="/usr/bin/sleepy",
        cmdline=("/usr/bin/sleepy", "--threads", str(n_threads), "caf\u00e9"),
        cwd="/tmp",
        state=ThreadState.SLEEPING,
        start_time=1_700_000_000.0,
        user_time=1.5,
        system_time=0.5,
        base_priority=20,
        nice=0,
        flags=ProcessFlags.NONE,
        exit_status=None,
        affinity=(0, 1),
        thread_count=n_threads,
        handle_count=3,
        virtual_size=1 << 28,
        peak_virtual_size=1 << 28,
        working_set_size=1 << 22,
        peak_working_set_size=1 << 22,
        private_usage=1 << 20,
        page_fault_count=99,
        uids=(1000, 1000, 1000, 1000),
        gids=(1000, 1000, 1000, 1000),
        environ=(("HOME", "/home/u"), ("LANG", "C.UTF-8")),
        sig_pending=0,
        sig_blocked=0,
        sig_ignored=0,
        sig_caught=1 << 1,
        seccomp_mode=0,
        no_new_privs=False,
        dumpable=True,
    )
    handles = (
        HandleEntry(0, HandleType.DEVICE, "chr", "/dev/null", HandleFlags.HAVE_TYPE | HandleFlags.HAVE_NAME, False),
        HandleEntry(1, HandleType.PIPE, "fifo", "pipe:[123]", HandleFlags.HAVE_TYPE | HandleFlags.HAVE_NAME, False),
        HandleEntry(
            3,
            HandleType.MEMFD,
            "reg",
            "/memfd:pss-snapshot (deleted)",
            HandleFlags.HAVE_TYPE | HandleFlags.HAVE_NAME | HandleFlags.HAVE_TYPE_SPECIFIC_INFORMATION,
            True,
            open_flags=0o2100002,
            position=0,
            inode=77,
            type_specific=(("seals", 0xF), ("size", 1 << 16)),
        ),
    )
    return Snapshot(
        flags=CaptureFlags.THREADS | CaptureFlags.THREAD_CONTEXT | CaptureFlags.HANDLES | CaptureFlags.VA_SPACE,
        platform="linux",
        arch="x86_64",
        captured_at=1_700_000_100.5,
        process=process,
        threads=threads if with_threads else None,
        handles=handles,
        va_space=regions(),
        performance=Performance(capture_ms=4.5, stopped_ms=1.5, threads_ms=0.75, handles_ms=0.5, va_space_ms=1.0),
    )


# ---------------------------------------------------------------------- an independent reader and builder of notes
# Written from the ELF spec rather than with elfcore's own helpers, so that the tests check elfcore against it.

Note = tuple[bytes, int, bytes]


def notes_of(core: bytes) -> list[Note]:
    """(owner, type, desc) of every note in the first PT_NOTE, in file order."""
    phoff = struct.unpack_from("<Q", core, 32)[0]
    _, _, offset, _, _, filesz, _, _ = struct.unpack_from("<IIQQQQQQ", core, phoff)
    out, pos = [], offset
    while pos < offset + filesz:
        namesz, descsz, ntype = struct.unpack_from("<III", core, pos)
        name_at = pos + 12
        desc_at = name_at + (namesz + 3) // 4 * 4
        out.append((core[name_at : name_at + namesz - 1], ntype, core[desc_at : desc_at + descsz]))
        pos = desc_at + (descsz + 3) // 4 * 4
    return out


def note_offsets(core: bytes) -> list[int]:
    """File offsets of every note header, for mutating namesz/descsz in place."""
    phoff = struct.unpack_from("<Q", core, 32)[0]
    _, _, offset, _, _, filesz, _, _ = struct.unpack_from("<IIQQQQQQ", core, phoff)
    out, pos = [], offset
    while pos < offset + filesz:
        out.append(pos)
        namesz, descsz, _ = struct.unpack_from("<III", core, pos)
        pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return out


def build_core(notes: list[Note], loads: tuple[tuple[int, int, int], ...] = ()) -> bytes:
    """An x86_64 ET_CORE with these notes and empty PT_LOADs (vaddr, memsz, flags)."""
    blob = b""
    for owner, ntype, desc in notes:
        name = owner + b"\0"
        blob += struct.pack("<III", len(name), len(desc), ntype)
        blob += name + bytes(-len(name) % 4) + desc + bytes(-len(desc) % 4)
    phnum = 1 + len(loads)
    notes_at = 64 + 56 * phnum
    ident = b"\x7fELF\x02\x01\x01" + bytes(9)
    head = struct.pack("<16sHHIQQQIHHHHHH", ident, 4, 62, 1, 0, 64, 0, 0, 64, 56, phnum, 64, 0, 0)
    phdrs = struct.pack("<IIQQQQQQ", 4, 0, notes_at, 0, 0, len(blob), 0, 4)
    for vaddr, memsz, flags in loads:
        phdrs += struct.pack("<IIQQQQQQ", 1, flags, notes_at + len(blob), vaddr, 0, 0, memsz, 4096)
    return head + phdrs + blob


def replace_note(notes: list[Note], owner: bytes, ntype: int, desc: bytes) -> list[Note]:
    return [(o, t, desc if (o, t) == (owner, ntype) else d) for o, t, d in notes]

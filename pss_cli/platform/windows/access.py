"""Least-privilege process access masks: what each operation opens each process with, and why.

Every mask is computed from the operation and, for a capture, from the capture flags; nothing is opened with
PROCESS_ALL_ACCESS. `needed_by` keeps the reason for each right so that an ERROR_ACCESS_DENIED can name the flag that
asked for it. Each reason says where the rule comes from: [DOC] Microsoft's documentation of the function or flag,
[NTDLL] ntdll's PssNt* code as public decompilations show it, [INF] inferred, with no source checked (docs/windows.md
lists the sources).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pss_cli.errors import UsageError
from pss_cli.model import CaptureFlags
from pss_cli.platform.windows.abi import (
    DELETE,
    PROCESS_CREATE_PROCESS,
    PROCESS_CREATE_THREAD,
    PROCESS_DUP_HANDLE,
    PROCESS_QUERY_INFORMATION,
    PROCESS_QUERY_LIMITED_INFORMATION,
    PROCESS_SET_INFORMATION,
    PROCESS_SET_LIMITED_INFORMATION,
    PROCESS_SET_QUOTA,
    PROCESS_SET_SESSIONID,
    PROCESS_SUSPEND_RESUME,
    PROCESS_TERMINATE,
    PROCESS_VM_OPERATION,
    PROCESS_VM_READ,
    PROCESS_VM_WRITE,
    READ_CONTROL,
    SYNCHRONIZE,
    WRITE_DAC,
    WRITE_OWNER,
)

#: Every named process right, in bit order; the formatter and parser use these names.
PROCESS_RIGHTS: dict[str, int] = {
    "PROCESS_TERMINATE": PROCESS_TERMINATE,
    "PROCESS_CREATE_THREAD": PROCESS_CREATE_THREAD,
    "PROCESS_SET_SESSIONID": PROCESS_SET_SESSIONID,
    "PROCESS_VM_OPERATION": PROCESS_VM_OPERATION,
    "PROCESS_VM_READ": PROCESS_VM_READ,
    "PROCESS_VM_WRITE": PROCESS_VM_WRITE,
    "PROCESS_DUP_HANDLE": PROCESS_DUP_HANDLE,
    "PROCESS_CREATE_PROCESS": PROCESS_CREATE_PROCESS,
    "PROCESS_SET_QUOTA": PROCESS_SET_QUOTA,
    "PROCESS_SET_INFORMATION": PROCESS_SET_INFORMATION,
    "PROCESS_QUERY_INFORMATION": PROCESS_QUERY_INFORMATION,
    "PROCESS_SUSPEND_RESUME": PROCESS_SUSPEND_RESUME,
    "PROCESS_QUERY_LIMITED_INFORMATION": PROCESS_QUERY_LIMITED_INFORMATION,
    "PROCESS_SET_LIMITED_INFORMATION": PROCESS_SET_LIMITED_INFORMATION,
    "DELETE": DELETE,
    "READ_CONTROL": READ_CONTROL,
    "WRITE_DAC": WRITE_DAC,
    "WRITE_OWNER": WRITE_OWNER,
    "SYNCHRONIZE": SYNCHRONIZE,
}

#: The rights PssCaptureSnapshot needs per capture flag. Process information is always captured.
CAPTURE_RIGHTS: tuple[tuple[CaptureFlags, int, str], ...] = (
    (CaptureFlags.NONE, PROCESS_QUERY_LIMITED_INFORMATION, "process information [INF]"),
    (CaptureFlags.VA_CLONE, PROCESS_CREATE_PROCESS, "VA_CLONE: the clone is created with the target as parent [INF]"),
    (CaptureFlags.HANDLES, PROCESS_QUERY_INFORMATION, "HANDLES [INF]"),
    (CaptureFlags.HANDLES, PROCESS_DUP_HANDLE, "HANDLES: PSS duplicates each handle to learn its type [NTDLL]"),
    (CaptureFlags.HANDLE_NAME_INFORMATION, PROCESS_DUP_HANDLE, "HANDLE_NAME_INFORMATION [INF]"),
    (CaptureFlags.HANDLE_BASIC_INFORMATION, PROCESS_DUP_HANDLE, "HANDLE_BASIC_INFORMATION [INF]"),
    (CaptureFlags.HANDLE_TYPE_SPECIFIC_INFORMATION, PROCESS_DUP_HANDLE, "HANDLE_TYPE_SPECIFIC_INFORMATION [INF]"),
    (CaptureFlags.HANDLE_TRACE, PROCESS_QUERY_INFORMATION, "HANDLE_TRACE [INF]"),
    (CaptureFlags.THREADS, PROCESS_QUERY_INFORMATION, "THREADS [INF]"),
    (CaptureFlags.THREAD_CONTEXT, PROCESS_QUERY_INFORMATION, "THREAD_CONTEXT (walks the threads) [INF]"),
    (CaptureFlags.THREAD_CONTEXT_EXTENDED, PROCESS_QUERY_INFORMATION, "THREAD_CONTEXT_EXTENDED [INF]"),
    (CaptureFlags.VA_SPACE, PROCESS_QUERY_INFORMATION, "VA_SPACE [INF]"),
    (CaptureFlags.VA_SPACE_SECTION_INFORMATION, PROCESS_VM_READ, "VA_SPACE_SECTION_INFORMATION [DOC]"),
)

#: PssDuplicateSnapshot, on the process that holds the snapshot when that is not this process [DOC].
DUPLICATE_SOURCE_ACCESS = PROCESS_VM_READ | PROCESS_DUP_HANDLE
#: PssDuplicateSnapshot, on the process that receives the copy [DOC].
DUPLICATE_TARGET_ACCESS = PROCESS_VM_OPERATION | PROCESS_VM_WRITE | PROCESS_DUP_HANDLE
#: PssFreeSnapshot on a snapshot held by another process [DOC]; it includes DUPLICATE_SOURCE_ACCESS, which `free`
#: uses to check that the handle really is a snapshot before freeing it. ntdll does not check it up front: without
#: PROCESS_VM_OPERATION it closes the snapshot's handles, leaves its memory and still reports success [NTDLL].
REMOTE_FREE_ACCESS = PROCESS_VM_READ | PROCESS_VM_OPERATION | PROCESS_DUP_HANDLE


@dataclass(frozen=True, slots=True)
class AccessRequest:
    """A mask to open one process with, and for each right the reason it is asked for."""

    mask: int
    needed_by: tuple[tuple[int, str], ...]

    def reasons(self, rights: int) -> tuple[str, ...]:
        """Why each of `rights` was asked for (for an access-denied message)."""
        return tuple(why for right, why in self.needed_by if right & rights)


def capture_access(flags: CaptureFlags) -> AccessRequest:
    """The least mask PssCaptureSnapshot needs for `flags`."""
    if flags & CaptureFlags.VA_SPACE_SECTION_INFORMATION and not flags & CaptureFlags.VA_SPACE:
        raise UsageError("VA_SPACE_SECTION_INFORMATION is only valid together with VA_SPACE (PSS_CAPTURE_FLAGS)")
    needed = [(right, why) for flag, right, why in CAPTURE_RIGHTS if flag == CaptureFlags.NONE or flag & flags]
    mask = 0
    for right, _ in needed:
        mask |= right
    return AccessRequest(mask, tuple(needed))


def duplicate_source_access(*, free_source: bool = False) -> AccessRequest:
    """The holder of a snapshot that is duplicated; with `free_source` it is freed there afterwards, so the mask is
    the remote free's (never PSS_DUPLICATE_CLOSE_SOURCE, whose remote free ignores its own failures [NTDLL])."""
    needed_by = (
        (PROCESS_VM_READ, "PssDuplicateSnapshot reads the snapshot's bookkeeping from the holder [DOC]"),
        (PROCESS_DUP_HANDLE, "PssDuplicateSnapshot copies the snapshot's kernel handles out of the holder [DOC]"),
    )
    if not free_source:
        return AccessRequest(DUPLICATE_SOURCE_ACCESS, needed_by)
    free = remote_free_access()
    return AccessRequest(DUPLICATE_SOURCE_ACCESS | free.mask, needed_by + free.needed_by)


def duplicate_target_access() -> AccessRequest:
    return AccessRequest(
        DUPLICATE_TARGET_ACCESS,
        (
            (PROCESS_VM_OPERATION, "PssDuplicateSnapshot allocates the copy in the target [DOC]"),
            (PROCESS_VM_WRITE, "PssDuplicateSnapshot writes the copy into the target [DOC]"),
            (PROCESS_DUP_HANDLE, "PssDuplicateSnapshot puts the snapshot's kernel handles into the target [DOC]"),
        ),
    )


def remote_free_access() -> AccessRequest:
    return AccessRequest(
        REMOTE_FREE_ACCESS,
        (
            (PROCESS_VM_READ, "PssFreeSnapshot reads the snapshot's bookkeeping from the holder [DOC]"),
            (PROCESS_VM_OPERATION, "PssFreeSnapshot releases the snapshot's memory in the holder [DOC]"),
            (PROCESS_DUP_HANDLE, "PssFreeSnapshot closes the snapshot's kernel handles in the holder [DOC]"),
        ),
    )


def access_names(mask: int) -> tuple[str, ...]:
    """The named rights in `mask`, in bit order; bits without a name are left out (see format_access)."""
    return tuple(name for name, bit in PROCESS_RIGHTS.items() if mask & bit)


def format_access(mask: int) -> str:
    """`0x00000050 (PROCESS_VM_READ|PROCESS_DUP_HANDLE)`; unnamed bits are shown as one hex term."""
    names = list(access_names(mask))
    named = 0
    for name in names:
        named |= PROCESS_RIGHTS[name]
    if rest := mask & ~named:
        names.append(f"0x{rest:x}")
    return f"0x{mask:08x} ({'|'.join(names) or '0'})"


_TERM = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|0[xX][0-9a-fA-F]+|[0-9]+")


def parse_access(text: str) -> int:
    """An access mask from hex (`0x50`), decimal (`80`), names joined with `|` (with or without `PROCESS_`), or a
    mix; also accepts format_access's own output. UsageError for anything else."""
    body = text.strip()
    if body.endswith(")") and "(" in body:
        head, _, inner = body[:-1].partition("(")
        value = parse_access(head)
        if inner.strip() != "0" and parse_access(inner) != value:
            raise UsageError(f"access mask {text!r}: the hex value and the names disagree")
        return value
    mask = 0
    terms = [t.strip() for t in body.split("|")]
    if not body or any(not t for t in terms):
        raise UsageError(f"access mask {text!r}: expected hex, decimal or names joined with '|'")
    for term in terms:
        if not _TERM.fullmatch(term):
            raise UsageError(f"access mask {text!r}: {term!r} is not a number or a right's name")
        if term[0].isdigit():
            value = int(term, 0) if term.lower().startswith("0x") else int(term, 10)
        else:
            key = term.upper()
            value = PROCESS_RIGHTS.get(key, PROCESS_RIGHTS.get("PROCESS_" + key, -1))
            if value < 0:
                raise UsageError(f"access mask {text!r}: unknown right {term!r}; known: {', '.join(PROCESS_RIGHTS)}")
        if value > 0xFFFFFFFF:
            raise UsageError(f"access mask {text!r}: {term!r} does not fit in 32 bits")
        mask |= value
    return mask

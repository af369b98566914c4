"""Where another process's dynamic linker keeps its list of loaded objects: what gdb reads to find shared libraries.

gdb (solib-svr4.c) finds the libraries of a core in the core's memory, not in NT_FILE: DT_DEBUG in the executable's
dynamic section (located through AT_PHDR), the `struct r_debug` it points to, and each `struct link_map` of the
chain (l_addr, l_name, l_ld, l_next, l_prev) with its name. A core without those pages says "No shared libraries
loaded" and every frame past the first is `??`. A mini core carries just those pages; glibc keeps them in ld.so's
data, the heap and anonymous mappings that a stack-only selection would miss.
"""

from __future__ import annotations

import sys

# Linux only: this lets mypy --platform win32 skip the module instead of flagging Linux-only calls.
assert sys.platform == "linux"

import os
import struct
from collections.abc import Iterator

from pss_cli.platform.linux.pagescan import PAGE_SIZE

#: auxv keys (elf.h).
AT_NULL = 0
AT_PHDR = 3
AT_PHENT = 4
AT_PHNUM = 5
#: Program header and dynamic tags (elf.h).
PT_DYNAMIC = 2
PT_PHDR = 6
DT_NULL = 0
DT_DEBUG = 21
PHDR = struct.Struct("<IIQQQQQQ")
DYN = struct.Struct("<qQ")
#: struct r_debug_extended (glibc 2.35+; older glibc stops after r_ldbase): version, r_map, r_brk, r_state,
#: r_ldbase, r_next.
R_DEBUG_SIZE = 48
#: The first five words of struct link_map, the part that is ABI: l_addr, l_name, l_ld, l_next, l_prev.
LINK_MAP = struct.Struct("<QQQQQ")
#: Most link_map entries followed (a process with more loaded objects than this is unusual), and longest name read.
MAX_OBJECTS = 8192
MAX_NAME = 4096
#: Most dynamic entries read from the executable.
MAX_DYNAMIC = 1024


class Memory:
    """Reads of another process's memory through /proc/PID/mem, which (unlike process_vm_readv) copies no page of a
    VA clone or a forked worker to read it."""

    def __init__(self, pid: int) -> None:
        self.fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)

    def read(self, address: int, size: int) -> bytes | None:
        """`size` bytes at `address`, or None if any of them cannot be read."""
        try:
            data = os.pread(self.fd, size, address)
        except (OSError, OverflowError):
            return None
        return data if len(data) == size else None

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> Memory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def auxv_values(auxv: bytes) -> dict[int, int]:
    """The auxiliary vector as key -> value, up to AT_NULL."""
    out: dict[int, int] = {}
    for key, value in struct.iter_unpack("<QQ", auxv[: len(auxv) - len(auxv) % 16]):
        if key == AT_NULL:
            break
        out[key] = value
    return out


def loader_ranges(memory: Memory, auxv: bytes) -> list[tuple[int, int]]:
    """The byte ranges gdb reads to list the shared libraries: the executable's program headers and dynamic
    section, r_debug, and every link_map head and name. Empty for a static executable (no DT_DEBUG)."""
    values = auxv_values(auxv)
    phdr, phnum, phent = values.get(AT_PHDR), values.get(AT_PHNUM), values.get(AT_PHENT, PHDR.size)
    if not phdr or not phnum or phent != PHDR.size:
        return []
    table = memory.read(phdr, phnum * PHDR.size)
    if table is None:
        return []
    headers = [PHDR.unpack_from(table, i * PHDR.size) for i in range(phnum)]
    bias = next((phdr - h[3] for h in headers if h[0] == PT_PHDR), None)
    dynamic = next((h for h in headers if h[0] == PT_DYNAMIC), None)
    ranges = [(phdr, phdr + phnum * PHDR.size)]
    if bias is None or dynamic is None:
        return ranges
    start, size = dynamic[3] + bias, min(dynamic[5], MAX_DYNAMIC * DYN.size)
    ranges.append((start, start + size))
    r_debug = _debug_address(memory, start, size)
    if r_debug:
        ranges.append((r_debug, r_debug + R_DEBUG_SIZE))
        ranges.extend(_link_maps(memory, r_debug))
    return ranges


def _debug_address(memory: Memory, start: int, size: int) -> int:
    data = memory.read(start, size) or b""
    for tag, value in DYN.iter_unpack(data[: len(data) - len(data) % DYN.size]):
        if tag == DT_NULL:
            break
        if tag == DT_DEBUG:
            return int(value)
    return 0


def _link_maps(memory: Memory, r_debug: int) -> Iterator[tuple[int, int]]:
    head = memory.read(r_debug + 8, 8)
    address: int = struct.unpack("<Q", head)[0] if head else 0
    seen: set[int] = set()
    while address and address not in seen and len(seen) < MAX_OBJECTS:
        seen.add(address)
        entry = memory.read(address, LINK_MAP.size)
        if entry is None:
            return
        yield address, address + LINK_MAP.size
        _l_addr, name, _l_ld, following, _prev = LINK_MAP.unpack(entry)
        if name:
            yield name, name + _name_length(memory, name)
        address = following


def _name_length(memory: Memory, address: int) -> int:
    """Bytes of the NUL-terminated string at `address`, NUL included, read a page at most at a time."""
    length = 0
    while length < MAX_NAME:
        chunk = min(PAGE_SIZE - (address + length) % PAGE_SIZE, MAX_NAME - length)
        data = memory.read(address + length, chunk)
        if data is None:
            return max(length, 1)
        end = data.find(b"\0")
        if end >= 0:
            return length + end + 1
        length += chunk
    return length

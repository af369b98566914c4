"""How much process memory a minidump carries, read back from the file MiniDumpWriteDump wrote.

dbghelp says nothing about it: `dump` reads the file's memory lists (MemoryListStream, and Memory64ListStream, which
a full-memory dump uses) and counts their ranges, so that the report gives the memory the file holds rather than
the file's size (which includes thread lists, handle data, module lists and memory info). Plain reads on the file
descriptor: the same on every host, so the contract tests run it against the fake too.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
from typing import TypeVar

from pss_cli.errors import OperationFailed
from pss_cli.platform.windows import abi
from pss_cli.platform.windows.abi import Abi

S = TypeVar("S", bound=ctypes.Structure)


@dataclasses.dataclass(frozen=True, slots=True)
class MinidumpMemory:
    """The memory ranges a minidump lists: their bytes in total, and how many there are."""

    bytes: int
    ranges: int


def memory_in(fd: int, path: str, layout: Abi = abi.NATIVE) -> MinidumpMemory:
    """The memory the minidump open as `fd` holds; OperationFailed when it is not a minidump whose directory and
    memory lists lie inside the file."""
    reader = _Reader(fd, path)
    header = reader.struct(layout.MINIDUMP_HEADER, 0)
    if int(header.Signature) != abi.MINIDUMP_SIGNATURE:
        raise reader.bad("no MDMP signature")
    directory = reader.array(layout.MINIDUMP_DIRECTORY, int(header.StreamDirectoryRva), int(header.NumberOfStreams))
    sizes: dict[int, int] = {}  # by start address: a range listed in both lists counts once
    for entry in directory:
        rva = int(entry.Location.Rva)
        if entry.StreamType == abi.Memory64ListStream:
            # The memory of all ranges follows BaseRva, one range after the other.
            data = reader.field(layout.MINIDUMP_MEMORY64_LIST, "BaseRva", rva)
            for d in reader.ranges(layout.MINIDUMP_MEMORY64_LIST, layout.MINIDUMP_MEMORY_DESCRIPTOR64, rva):
                sizes[int(d.StartOfMemoryRange)] = reader.held(data, int(d.DataSize))
                data += int(d.DataSize)
        elif entry.StreamType == abi.MemoryListStream:
            for d in reader.ranges(layout.MINIDUMP_MEMORY_LIST, layout.MINIDUMP_MEMORY_DESCRIPTOR, rva):
                sizes[int(d.StartOfMemoryRange)] = reader.held(int(d.Memory.Rva), int(d.Memory.DataSize))
    return MinidumpMemory(sum(sizes.values()), len(sizes))


class _Reader:
    """Bounds-checked structure reads at file offsets (RVAs)."""

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.path = path
        self.size = os.fstat(fd).st_size

    def bad(self, reason: str) -> OperationFailed:
        return OperationFailed(f"cannot count the memory in {self.path}, which MiniDumpWriteDump wrote: {reason}")

    def read(self, offset: int, size: int) -> bytes:
        if offset + size > self.size:
            raise self.bad(f"{size} bytes at offset {offset} lie beyond its end ({self.size} bytes)")
        os.lseek(self.fd, offset, os.SEEK_SET)
        data = b""
        while len(data) < size:
            chunk = os.read(self.fd, size - len(data))
            if not chunk:
                raise self.bad(f"it ended at offset {offset + len(data)}")
            data += chunk
        return data

    def held(self, offset: int, size: int) -> int:
        """`size`, once it is sure that the file holds that many bytes at `offset`."""
        if offset + size > self.size:
            raise self.bad(f"{size} bytes of memory at offset {offset} lie beyond its end ({self.size} bytes)")
        return size

    def struct(self, cls: type[S], offset: int) -> S:
        return cls.from_buffer_copy(self.read(offset, ctypes.sizeof(cls)))

    def ranges(self, lst: type[ctypes.Structure], descriptor: type[S], rva: int) -> ctypes.Array[S]:
        """The descriptors of a memory list at `rva`: NumberOfMemoryRanges of them where MemoryRanges starts (the
        list's one-element array stands for them all, so the list itself is never read whole)."""
        number = self.field(lst, "NumberOfMemoryRanges", rva)
        return self.array(descriptor, rva + lst.MemoryRanges.offset, number)

    def field(self, cls: type[ctypes.Structure], name: str, offset: int) -> int:
        """One unsigned integer field of a structure at `offset`, read alone."""
        where = getattr(cls, name)
        return int.from_bytes(self.read(offset + where.offset, where.size), "little")

    def array(self, cls: type[S], offset: int, count: int) -> ctypes.Array[S]:
        size = ctypes.sizeof(cls) * count  # checked against the file's size before anything is allocated
        return (cls * count).from_buffer_copy(self.read(offset, size))

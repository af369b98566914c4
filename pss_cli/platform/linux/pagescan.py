"""Which pages of a process are present or swapped: PAGEMAP_SCAN (6.7+) where the kernel has it, else reads of
/proc/PID/pagemap (Documentation/admin-guide/mm/pagemap.rst).

A mapping's core-dump extent (dumprules) says which regions to dump; this says which of their pages hold anything,
so that a 64 GiB sparse reservation costs what it holds.
"""

from __future__ import annotations

import sys

# Linux only: this lets mypy --platform win32 skip the module instead of flagging Linux-only calls.
assert sys.platform == "linux"

import ctypes
import errno
import mmap
import os
import re
from collections.abc import Iterable, Iterator

PAGE_SIZE = mmap.PAGESIZE

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

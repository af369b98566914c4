"""Compressed dumps: `--compress zstd` writes one standard zstd frame (what `zstd -d` and zstdcat read).

The standard library's compression.zstd (Python 3.14+) where Python has it; before 3.14, backports.zstd: the same
module, API and C library, published for older Pythons by the maintainer of pyzstd, which compression.zstd grew
from (PEP 784). One code path therefore serves every Python, and the dependency goes away with 3.14. The frame is
compressed by zstd's own worker threads, one per CPU this process may run on, as `zstd -T0` does; the level is the
zstd command's default (3), and the frame carries a checksum, as the command's frames do.
"""

from __future__ import annotations

import os
import sys
from typing import Protocol

#: --compress choices, and the suffix each adds to the file name.
SUFFIXES = {"zstd": ".zst"}
COMPRESSIONS = tuple(SUFFIXES)
ZSTD_LEVEL = 3


class Compressor(Protocol):
    """A streaming compressor: what `compress` returns is the frame so far; `flush` ends the frame."""

    def compress(self, data: bytes | memoryview) -> bytes: ...

    def flush(self) -> bytes: ...


def compressor(name: str) -> Compressor:
    """A compressor for one frame of `name` (one of COMPRESSIONS)."""
    if name != "zstd":
        raise ValueError(f"unknown compression {name!r}; known: {', '.join(COMPRESSIONS)}")
    if sys.version_info >= (3, 14):
        from compression import zstd
    else:
        from backports import zstd
    options: dict[int, int] = {
        zstd.CompressionParameter.compression_level: ZSTD_LEVEL,
        zstd.CompressionParameter.checksum_flag: 1,
        zstd.CompressionParameter.nb_workers: _cpus(),
    }
    return zstd.ZstdCompressor(options=options)


def _cpus() -> int:
    """The CPUs this process may run on (zstd -T0 counts them too)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1

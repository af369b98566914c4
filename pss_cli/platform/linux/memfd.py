"""The snapshot's container on Linux: a sealed memfd holding the ELF core.

Once sealed (F_SEAL_WRITE|F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_SEAL) nobody, its creator included, can change, grow or
shrink it, so any process that holds the fd can map and parse it without a copy and without fearing that the bytes
change, or that the file shrinks under the mapping (SIGBUS), while it reads them.
"""

from __future__ import annotations

import sys

# Linux only: this lets mypy --platform win32 skip the module instead of flagging Linux-only calls.
assert sys.platform == "linux"

import errno
import fcntl
import mmap
import os
import stat
from collections.abc import Callable

from pss_cli.errors import BadSnapshot, NoSuchHandle, OperationFailed
from pss_cli.model import Snapshot
from pss_cli.platform.linux import elfcore, procfs

#: memfd_create(2) flags; MFD_NOEXEC_SEAL (6.3+) is missing from Python 3.11's os module.
MFD_CLOEXEC = 0x0001
MFD_ALLOW_SEALING = 0x0002
MFD_NOEXEC_SEAL = 0x0008

F_ADD_SEALS = fcntl.F_ADD_SEALS
F_GET_SEALS = fcntl.F_GET_SEALS
F_SEAL_SEAL = fcntl.F_SEAL_SEAL
F_SEAL_SHRINK = fcntl.F_SEAL_SHRINK
F_SEAL_GROW = fcntl.F_SEAL_GROW
F_SEAL_WRITE = fcntl.F_SEAL_WRITE

#: The seals every pss-dup snapshot carries (F_SEAL_EXEC, from MFD_NOEXEC_SEAL, may come on top).
SNAPSHOT_SEALS = F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL

#: The name a snapshot's memfd gets, and what readlink(/proc/PID/fd/N) then says: defined where /proc is read, so
#: that ps and completion look for the very name created here. Any memfd may carry it, so it only nominates.
MEMFD_NAME = procfs.SNAPSHOT_MEMFD_NAME


def create_sealed(
    layout: elfcore.CoreLayout,
    write: Callable[[mmap.mmap], None],
    name: str = MEMFD_NAME,
    *,
    prefault: bool = False,
) -> int:
    """A new sealed memfd of layout.size bytes that `write` filled through a shared mapping; returns the fd.

    The fd is close-on-exec. `write` gets the zero-filled mapping and must not keep views into it (the mapping is
    unmapped before sealing: F_SEAL_WRITE fails with EBUSY while a writable shared mapping exists). `prefault`
    allocates and maps every page before `write` runs, which is what makes a large memory copy fast (shmem faults
    per 4 KiB page otherwise). On any failure the fd is closed and nothing is left behind.
    """
    fd = _memfd_create(name)
    try:
        mapping = _map_for_writing(fd, layout.size, prefault=prefault)
        try:
            write(mapping)
        finally:
            mapping.close()
        try:
            fcntl.fcntl(fd, F_ADD_SEALS, SNAPSHOT_SEALS)
        except OSError as exc:
            raise OperationFailed(f"could not seal the snapshot memfd: {exc.strerror}") from exc
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_unsealed(name: str = MEMFD_NAME) -> int:
    """A new, empty, not yet sealed snapshot memfd (close-on-exec), for writers that fill it with pwrite: letting
    the write allocate the shmem pages is cheaper than faulting in a mapping for gigabytes of memory. Seal it
    with `seal` once written."""
    return _memfd_create(name)


def seal(fd: int) -> None:
    """Add every snapshot seal: from here on nobody can change, grow or shrink the memfd."""
    try:
        fcntl.fcntl(fd, F_ADD_SEALS, SNAPSHOT_SEALS)
    except OSError as exc:
        raise OperationFailed(f"could not seal the snapshot memfd: {exc.strerror}") from exc


def _map_for_writing(fd: int, size: int, *, prefault: bool) -> mmap.mmap:
    try:
        os.ftruncate(fd, size)
        if prefault:
            os.posix_fallocate(fd, 0, size)
        flags = mmap.MAP_SHARED | (mmap.MAP_POPULATE if prefault else 0)
        return mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except OSError as exc:
        raise OperationFailed(f"could not size and map the snapshot memfd ({size} bytes): {exc.strerror}") from exc


def _memfd_create(name: str) -> int:
    flags = MFD_CLOEXEC | MFD_ALLOW_SEALING
    try:
        return os.memfd_create(name, flags | MFD_NOEXEC_SEAL)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise OperationFailed(f"memfd_create failed: {exc.strerror}") from exc
    try:
        return os.memfd_create(name, flags)  # before 6.3: no MFD_NOEXEC_SEAL
    except OSError as exc:
        raise OperationFailed(f"memfd_create failed: {exc.strerror}") from exc


def verify_snapshot_fd(fd: int, *, label: str | None = None) -> None:
    """BadSnapshot unless `fd` is a sealed memfd whose content starts as a pss-dup core of a known version.

    Cheap: fstat, the /proc/self/fd link, F_GET_SEALS, and the ELF and note headers. This is the check made
    before a snapshot that some process holds is handed on or closed.
    """
    label = label or f"fd {fd}"
    size = _sealed_memfd_size(fd, label)
    with _ReadOnlyMapping(fd, size, label) as mapping:
        try:
            elfcore.read_version(mapping)
        except BadSnapshot as exc:
            raise BadSnapshot(f"{label}: {exc}") from None


def checked_snapshots(pid: int, named: tuple[int, ...]) -> tuple[int, ...]:
    """Those of `named` (fds of `pid` that procfs.snapshot_fds found under a snapshot's name) that are pss-dup
    snapshots, checked as `free` checks them: a sealed memfd in pss-dup's format.

    Each is reopened through /proc/PID/fd/N, after stat says it is a regular file: a new open file of the same
    memfd, so no offset or flag of the process's own changes, and it takes no more access than reading the fd
    table does (PTRACE_MODE_READ).
    """
    found = []
    for fd in named:
        path = f"/proc/{pid}/fd/{fd}"
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):
                continue
            local = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError:
            continue  # closed meanwhile, or not ours to open
        try:
            verify_snapshot_fd(local)
            found.append(fd)
        except BadSnapshot:
            pass
        finally:
            os.close(local)
    return tuple(found)


def read_snapshot_fd(fd: int, *, label: str | None = None) -> Snapshot:
    """The model from a snapshot fd (the receiver side): checked as by verify_snapshot_fd, mapped, parsed."""
    return read_core_fd(fd, label=label).snapshot


def read_core_fd(fd: int, *, label: str | None = None) -> elfcore.ParsedCore:
    """Everything the core in a snapshot fd holds (model, raw register notes, auxv, PT_LOAD table)."""
    label = label or f"fd {fd}"
    size = _sealed_memfd_size(fd, label)
    with _ReadOnlyMapping(fd, size, label) as mapping:
        try:
            return elfcore.read_core(mapping)
        except BadSnapshot as exc:
            raise BadSnapshot(f"{label}: {exc}") from None


def _sealed_memfd_size(fd: int, label: str) -> int:
    """The size of `fd` after checking that it is a memfd with every snapshot seal, so mapping it is safe."""
    try:
        st = os.fstat(fd)
    except OSError as exc:
        if exc.errno == errno.EBADF:
            raise NoSuchHandle(f"{label} is not an open file descriptor") from None
        raise BadSnapshot(f"{label} cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise BadSnapshot(f"{label} is not a pss-dup snapshot: not a regular file (a {_kind(st.st_mode)})")
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        target = None  # no /proc: the seal check below still refuses ordinary files
    if target is not None and not target.startswith("/memfd:"):
        raise BadSnapshot(f"{label} is not a pss-dup snapshot: not a memfd ({target[:200]!r})")
    try:
        seals = fcntl.fcntl(fd, F_GET_SEALS)
    except OSError:
        raise BadSnapshot(f"{label} is not a pss-dup snapshot: the file cannot carry seals") from None
    missing = SNAPSHOT_SEALS & ~seals
    if missing:
        raise BadSnapshot(f"{label} is not a pss-dup snapshot: not sealed (missing seals {_seal_names(missing)})")
    if st.st_size < elfcore.EHDR.size:
        raise BadSnapshot(f"{label} is not a pss-dup snapshot: {st.st_size} bytes is too short for an ELF core")
    return st.st_size


class _ReadOnlyMapping:
    """A read-only private mapping of a sealed memfd, always unmapped."""

    def __init__(self, fd: int, size: int, label: str) -> None:
        try:
            self.mapping = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
        except OSError as exc:
            raise BadSnapshot(f"{label}: cannot map the snapshot ({exc.strerror})") from None

    def __enter__(self) -> mmap.mmap:
        return self.mapping

    def __exit__(self, *exc: object) -> None:
        self.mapping.close()


def _seal_names(seals: int) -> str:
    names = {F_SEAL_SEAL: "F_SEAL_SEAL", F_SEAL_SHRINK: "F_SEAL_SHRINK", F_SEAL_GROW: "F_SEAL_GROW",
             F_SEAL_WRITE: "F_SEAL_WRITE"}  # fmt: skip
    return "|".join(name for bit, name in names.items() if seals & bit)


def _kind(mode: int) -> str:
    for test, word in ((stat.S_ISFIFO, "pipe"), (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "directory"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device")):  # fmt: skip
        if test(mode):
            return word
    return "special file"

"""Paths inside a root directory that another process controls (a container's, `/proc/PID/root`), resolved so that
nothing in it can lead out: `dump --into-container` writes there as root.

openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS) resolves the path as if the root were "/": an absolute symlink the
container planted (to /etc, or to /proc/1/root) resolves inside the container or not at all, ".." stops at the root,
and /proc magic links are refused. Where openat2 is missing or filtered (ENOSYS, or EPERM from a seccomp profile),
the path is walked one component at a time with O_NOFOLLOW, refusing every symlink and "..": stricter, never looser.
"""

from __future__ import annotations

import sys

# Linux only: this lets mypy --platform win32 skip the module instead of flagging Linux-only calls.
assert sys.platform == "linux"

import ctypes
import errno
import os

from pss_cli.errors import OutputExists

#: libc's syscall(2), for openat2, which has no wrapper in glibc before 2.40 nor in Python.
_syscall = ctypes.CDLL(None, use_errno=True).syscall
_syscall.restype = ctypes.c_long

#: openat2(2) (linux/openat2.h): its syscall number on x86_64, and the resolve flags used here.
SYS_openat2 = 437
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10


class OpenHow(ctypes.Structure):
    """struct open_how."""

    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def open_in_root(root: str, directory: str, pid: int | None) -> int:
    """An O_PATH fd of `directory` resolved inside `root` as if `root` were "/" (see the module's docstring)."""
    try:
        root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise OutputExists(f"cannot open {root}: {exc.strerror}", pid=pid) from None
    try:
        how = OpenHow(os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
        fd = _syscall(SYS_openat2, root_fd, os.fsencode(directory), ctypes.byref(how), ctypes.sizeof(how))
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EPERM):
            raise OutputExists(f"cannot open {directory} in {root}: {os.strerror(err)}", pid=pid)
        return _walk_without_symlinks(root_fd, directory, root, pid)
    finally:
        os.close(root_fd)


def _walk_without_symlinks(root_fd: int, directory: str, root: str, pid: int | None) -> int:
    current = os.dup(root_fd)
    try:
        for part in (p for p in directory.split("/") if p not in ("", ".")):
            if part == "..":
                raise OutputExists(f"{directory}: '..' is refused in a path inside {root}", pid=pid)
            try:
                following = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=current)
            except OSError as exc:
                raise OutputExists(
                    f"cannot open {directory} in {root} without following a symlink: {exc.strerror}", pid=pid
                ) from None
            os.close(current)
            current = following
        return current
    except BaseException:
        os.close(current)
        raise

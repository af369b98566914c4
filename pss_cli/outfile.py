"""The output file of `pss-dup dump` (a core on Linux, a minidump on Windows): mode 0600, never replacing a file
unless `force`, and never seen half written under its name.

Where the filesystem can (Linux's O_TMPFILE), the file is written unnamed in the target directory and linked under
its name once complete, so even a pss-dup that is SIGKILLed leaves nothing behind. Elsewhere (Windows, and Linux
filesystems without O_TMPFILE) it is a named file: created exclusively under the name itself, or with `force`
beside it and renamed over the old file once complete. A failed dump removes what it wrote. This module is the one
place that knows the difference: only where `os.O_TMPFILE` exists is a file written unnamed.

`dump --into-container` hands in a directory fd resolved inside a root the target controls (platform.linux.inroot);
every step here then works relative to it, and the final name is never followed (O_EXCL, linkat and renameat act on
the name itself, a symlink there is "exists"). The file then belongs to the target's user and group.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import re
import stat
import sys
from collections.abc import Callable
from typing import TypeVar

from pss_cli.errors import OperationFailed, OutputExists

T = TypeVar("T")

if sys.platform == "win32":
    #: O_BINARY: no CRLF translation by the C runtime; O_NOINHERIT: child processes do not get the file.
    _OPEN_FLAGS = os.O_RDWR | os.O_BINARY | os.O_NOINHERIT
else:
    _OPEN_FLAGS = os.O_RDWR | os.O_CLOEXEC


class OutputFile:
    """An output file under construction: `fd` is open for reading and writing while the `with` block runs; a clean
    exit gives the complete file its name, an exception removes it (and keeps any file it was to replace)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        force: bool,
        pid: int | None = None,
        directory_fd: int | None = None,
        owner: tuple[int, int] | None = None,
    ) -> None:
        """`directory_fd`: the directory the file goes in, already resolved (a container's, resolved inside its
        root: see pss_cli.platform.linux.inroot); `path` then only names the file (its last component) and is what
        messages show. This object closes the fd. `owner`: the (uid, gid) the file is given (POSIX)."""
        self.path = os.fspath(path)
        self.force = force
        self.pid = pid
        self.owner = owner
        self.fd = -1
        #: The directory fd, and the name the rest works with: the file's name in that directory, or the whole path.
        self._dir_fd = directory_fd
        self._name = self.path if directory_fd is None else os.path.basename(self.path)
        self._partial: str | None = self._name  # None: the unnamed file

    def __enter__(self) -> OutputFile:
        try:
            if self._name in ("", ".", ".."):
                raise OutputExists(f"{self.path} names no file", pid=self.pid)
            self._create()
            if self.owner is not None and sys.platform != "win32":
                os.fchown(self.fd, *self.owner)
        except BaseException:
            self._abandon()
            raise
        return self

    def _create(self) -> None:
        st = self._stat(follow=True)
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise OutputExists(f"{self.path} is a directory", pid=self.pid)
        if not self.force and self._stat(follow=False) is not None:
            raise OutputExists(f"{self.path} exists; pass --force to replace it", pid=self.pid)
        if self._dir_fd is not None:
            unnamed = _open_unnamed(".", self.pid, self._dir_fd)
        else:
            unnamed = _open_unnamed(os.path.dirname(self.path) or ".", self.pid)
        if unnamed is not None:
            self.fd, self._partial = unnamed, None
            return
        flags = _OPEN_FLAGS | os.O_CREAT | os.O_EXCL
        if not self.force:
            try:
                self.fd = os.open(self._name, flags, 0o600, dir_fd=self._dir_fd)
            except FileExistsError:
                raise OutputExists(f"{self.path} exists; pass --force to replace it", pid=self.pid) from None
            except OSError as exc:
                raise OutputExists(f"cannot create {self.path}: {exc.strerror}", pid=self.pid) from None
            return
        self.fd, self._partial = self._create_beside(lambda name: os.open(name, flags, 0o600, dir_fd=self._dir_fd))

    def _stat(self, *, follow: bool) -> os.stat_result | None:
        """The output path's status (None if there is nothing there); a symlink is followed only in our own
        filesystem, never inside a container's root."""
        try:
            return os.stat(self._name, dir_fd=self._dir_fd, follow_symlinks=follow and self._dir_fd is None)
        except OSError:  # as os.path.lexists: nothing there that could be replaced
            return None

    def _create_beside(self, make: Callable[[str], T]) -> tuple[T, str]:
        """`make(name)` for the first free name of the form .NAME.PID.N.partial beside the output."""
        directory, name = os.path.split(self._name)
        for attempt in range(100):
            partial = os.path.join(directory, f".{name}.{os.getpid()}.{attempt}.partial")
            try:
                return make(partial), partial
            except FileExistsError:
                continue
            except OSError as exc:
                where = directory or "."
                raise OutputExists(f"cannot create a file in {where}: {exc.strerror}", pid=self.pid) from None
        raise OutputExists(f"cannot create a temporary file beside {self.path}", pid=self.pid)

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        try:
            self._finish(exc_type is None)
        finally:
            self._abandon()

    def _abandon(self) -> None:
        """Close what is still open (the file after an error in __enter__, the directory fd)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            self._discard()
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    def _finish(self, ok: bool) -> None:
        fd, self.fd = self.fd, -1
        try:
            if ok and self._partial is None:
                self._link(fd)
        except BaseException:
            os.close(fd)
            raise
        try:
            os.close(fd)  # before the rename or the removal: Windows does neither to an open file
        except OSError as error:
            if ok:  # delayed write-back errors surface on close (NFS): the file is not whole
                ok = False
                self._discard()
                raise OperationFailed(f"writing {self.path} failed: {error.strerror}", pid=self.pid) from None
        if not ok:
            self._discard()
        elif self._partial is not None and self._partial != self._name:
            os.replace(self._partial, self._name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)

    def _link(self, fd: int) -> None:
        """Give the complete unnamed file its name: directly, or (force) a temporary one that is then renamed."""
        if self.force:
            _, self._partial = self._create_beside(lambda name: _link_fd(fd, name, self._dir_fd))
            return
        try:
            _link_fd(fd, self._name, self._dir_fd)
        except FileExistsError:
            raise OutputExists(f"{self.path} appeared while it was written; pass --force", pid=self.pid) from None
        except OSError as exc:
            raise OutputExists(f"cannot create {self.path}: {exc.strerror}", pid=self.pid) from None
        self._partial = self._name

    def _discard(self) -> None:
        if self._partial is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._partial, dir_fd=self._dir_fd)
            self._partial = None


def _open_unnamed(directory: str, pid: int | None, dir_fd: int | None = None) -> int | None:
    """An unnamed file in `directory` (O_TMPFILE; relative to `dir_fd` if given); None where the system has none
    (Windows) or the filesystem or the kernel has none: a kernel without O_TMPFILE sees only its O_DIRECTORY bit and
    answers EISDIR."""
    tmpfile: int | None = getattr(os, "O_TMPFILE", None)
    if tmpfile is None:
        return None
    try:
        return os.open(directory, tmpfile | _OPEN_FLAGS, 0o600, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            return None
        raise OutputExists(f"cannot create a file in {directory}: {exc.strerror}", pid=pid) from None


#: linkat(2) (fcntl.h): the dirfd that means the working directory, and the flag that follows a symlink.
AT_FDCWD = -100
AT_SYMLINK_FOLLOW = 0x400


def _link_fd(fd: int, path: str, dir_fd: int | None = None) -> None:
    """linkat("/proc/self/fd/FD", path, AT_SYMLINK_FOLLOW): give an O_TMPFILE file a name (open(2)). os.link cannot:
    with default arguments it calls link(2), which links the /proc symlink itself and fails (EXDEV). `path` is
    relative to `dir_fd` if given; a symlink already at `path` is never followed (EEXIST)."""
    linkat = _libc().linkat
    where = AT_FDCWD if dir_fd is None else dir_fd
    if linkat(AT_FDCWD, f"/proc/self/fd/{fd}".encode(), where, os.fsencode(path), AT_SYMLINK_FOLLOW) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)


@functools.cache
def _libc() -> ctypes.CDLL:
    """The C library, loaded on first use: only a Linux output file is ever linked into place."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.linkat.restype = ctypes.c_int
    libc.linkat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    return libc


def filesystem_of(fd: int) -> str | None:
    """The filesystem an open file is on, named as `df` and `mount` name it: "/dev/vda1 (mounted on /home)", or by
    its type where it has no device ("tmpfs (mounted on /tmp)"); None where /proc cannot tell (or there is none).

    The mount is found by the fd's own mnt_id (/proc/self/fdinfo) in /proc/self/mountinfo (proc_pid_mountinfo(5)),
    so a bind mount or a mount point shadowed by a later mount is not mistaken for another.
    """
    try:
        with open(f"/proc/self/fdinfo/{fd}", "rb") as f:
            found = re.search(rb"^mnt_id:\s*(\d+)$", f.read(), re.MULTILINE)
        with open("/proc/self/mountinfo", "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    if found is None:
        return None
    for line in lines:
        fields = line.split()  # ID PARENT MAJ:MIN ROOT MOUNT-POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE OPTIONS
        if fields[:1] != [found[1]] or b"-" not in fields[6:]:
            continue
        tail = fields[fields.index(b"-", 6) + 1 :]
        if len(tail) < 2:
            return None
        mount_point, fstype, source = (_unescape_mountinfo(f) for f in (fields[4], tail[0], tail[1]))
        return f"{source if source.startswith('/') else fstype} (mounted on {mount_point})"
    return None


def _unescape_mountinfo(field: bytes) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040 ...)."""
    return os.fsdecode(re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), field))

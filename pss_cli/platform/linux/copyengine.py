"""The engine that copies pages out of another process into a core: a memfd or an output file.

It reads /proc/PID/mem (or process_vm_readv, see READ_PROC_MEM for why not by default) in batches into a window of
the destination: either a bounce buffer that is then written with pwrite (the default: shmem and page-cache pages
are allocated by the write itself, which on the measured VM costs less than faulting a mapping in) or a pre-faulted
shared mapping (posix_fallocate + MAP_POPULATE). A page that cannot be read is left zero and counted; the copy goes
on with the next page.
"""

from __future__ import annotations

import sys

# Linux only: this lets mypy --platform win32 skip the module instead of flagging Linux-only calls.
assert sys.platform == "linux"

import ctypes
import dataclasses
import errno
import functools
import mmap
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Sequence

from pss_cli.compress import Compressor
from pss_cli.errors import AccessDenied, OperationFailed, ProcessGone
from pss_cli.platform.linux import elfcore, procfs
from pss_cli.platform.linux.ptrace import iovec

PAGE_SIZE = mmap.PAGESIZE
#: IOV_MAX (limits.h): the most iovecs one process_vm_readv call takes on either side.
IOV_MAX = 1024

#: Bounce buffers small enough to stay in the CPU caches between the read and the pwrite: 256 KiB copied 1.6-2.6
#: GB/s into an ext4 file on the measured VM, against 0.6-1.1 GB/s with 8 MiB buffers (bench/bench_dump.py).
DEFAULT_BOUNCE = 256 << 10
DEFAULT_BUFFERS = 4
DEFAULT_BATCH = 64 << 20

#: Progress callback: (bytes done, bytes in total). Plain numbers, so that the platform layer never sees rich.
Progress = Callable[[int, int], None]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.pread.restype = ctypes.c_ssize_t
_libc.pread.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_long]
#: memcmp through PyDLL: called holding the GIL (see _pwrite_sparse).
_memcmp = ctypes.PyDLL(None).memcmp
_memcmp.restype = ctypes.c_int
_memcmp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
_libc.process_vm_readv.restype = ctypes.c_ssize_t
_libc.process_vm_readv.argtypes = [
    ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong,
]  # fmt: skip


@dataclasses.dataclass(frozen=True, slots=True)
class Piece:
    """`size` bytes at `address` in the process go to `offset` in the core."""

    address: int
    size: int
    offset: int
    force: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class CopyStats:
    """What a copy did: bytes written, pages that could not be read (left zero), and how long it took."""

    bytes: int
    failed_pages: int
    seconds: float

    @property
    def throughput(self) -> float:
        """Bytes per second."""
        return self.bytes / self.seconds if self.seconds > 0 else 0.0


def pieces_of(layout: elfcore.CoreLayout) -> list[Piece]:
    """One piece per PT_LOAD with file bytes; segments without PF_R are read through /proc/PID/mem (FOLL_FORCE)."""
    return [
        Piece(p.segment.vaddr, p.segment.filesz, p.offset, force=not p.segment.flags & elfcore.PF_R)
        for p in layout.loads
        if p.segment.filesz
    ]


class Sink:
    """Where copied bytes go. `window` gives a writable place for `size` bytes bound for `offset`, `commit`
    makes them land there.

    A sink owns every view it hands out and releases it at `commit` or `close`: a view left alive (in the frame of
    a traceback, say) would keep its buffer exported, and closing that buffer would fail with BufferError in place
    of the error that ended the copy. Used as a context manager, a write error that only surfaces once the last
    writes are done is raised on a clean exit.
    """

    def window(self, offset: int, size: int) -> tuple[int, memoryview]:
        raise NotImplementedError

    def commit(self, offset: int, size: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release buffers; the destination itself belongs to the caller."""

    def pending_error(self) -> BaseException | None:
        """A write that failed after its window was committed."""
        return None

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.close()
        error = self.pending_error()
        if exc_type is None and error is not None:
            raise error


class _Bounce:
    """One pre-faulted anonymous buffer, and the one view of it that windows are cut from."""

    def __init__(self, size: int) -> None:
        self.buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_POPULATE)
        self.address = _address_of(self.buffer)
        self.view = memoryview(self.buffer)

    def close(self) -> None:
        """The view before the mapping it exports; twice is harmless."""
        self.view.release()
        self.buffer.close()


class FdSink(Sink):
    """Read into pre-faulted bounce buffers that a writer thread pwrites to `fd` (a memfd or the output file), or
    writes into a Stream. With `sparse`, all-zero pages are not written: they stay holes of the pre-sized file.

    Reading the next batch overlaps writing the last one: both system calls release the GIL, and on two CPUs the
    copy then costs about the slower of the two instead of their sum.

    A Ctrl-C can land on any bytecode, even the one that would call `close`, so the writer never depends on it: it
    writes through its own duplicate of `fd` (what is still queued lands in that file, never in whatever file takes
    over `fd`'s number once the caller closes it), and it holds no reference to the sink, whose finalizer stops it
    when the sink is dropped unclosed.
    """

    def __init__(
        self, fd: int | Stream, bounce: int = DEFAULT_BOUNCE, buffers: int = DEFAULT_BUFFERS, *, sparse: bool = False
    ) -> None:
        self.size = bounce
        self._free: queue.SimpleQueue[_Bounce] = queue.SimpleQueue()
        self._work: queue.SimpleQueue[tuple[_Bounce, int, int, bytes | None] | None] = queue.SimpleQueue()
        self._sparse = sparse and not isinstance(fd, Stream)
        self._all = [_Bounce(bounce) for _ in range(buffers)]
        for b in self._all:
            self._free.put(b)
        self._current: _Bounce | None = None
        self._window: memoryview | None = None
        self._failure = _Failure()
        self._stop = weakref.finalize(self, self._work.put, None)  # once, at close or when dropped unclosed
        write: Write
        if isinstance(fd, Stream):
            fd.hold()
            write, done = fd.write_at, fd.let_go
        else:
            own = os.dup(fd)
            write = functools.partial(_pwrite_sparse if sparse else _pwrite_chunk, own)
            done = functools.partial(os.close, own)
        self._writer = threading.Thread(
            target=_write_loop,
            args=(write, done, self._work, self._free, self._failure),
            name="pss-dup-writer",
            daemon=True,
        )
        self._writer.start()

    def window(self, offset: int, size: int) -> tuple[int, memoryview]:
        assert size <= self.size and self._window is None
        self._current = self._free.get()
        if self._failure.error is not None:
            raise self._failure.error
        self._window = self._current.view[:size]
        return self._current.address, self._window

    def commit(self, offset: int, size: int) -> None:
        assert self._current is not None and self._window is not None
        self._window.release()  # released, then forgotten: a Ctrl-C in between leaves nothing exported
        self._window = None
        marks = _page_marks(self._current.buffer, size) if self._sparse else None
        self._work.put((self._current, offset, size, marks))
        self._current = None

    def pending_error(self) -> BaseException | None:
        return self._failure.error

    def close(self) -> None:
        """Let the writer write what it was given and end, then free the buffers, views first.

        Ctrl-C during the wait (a slow disk, a hung NFS server) ends it: the writer then finishes on its own, and
        the buffers it may still be writing from are left to be freed with it, not closed under it.
        """
        if self._window is not None:
            self._window.release()
        self._stop()
        self._writer.join()
        for b in self._all:
            b.close()


class Stream:
    """A core written front to back, to a pipe, a socket or a compressor: nothing is sought. What a file would
    leave as holes between the pieces is written as zeros (a compressor makes them all but free).

    The stream writes through its own duplicate of `fd`, closed by `close` once no writer thread holds it: a Ctrl-C
    that cuts the wait for a sink's writer short must not leave that thread writing into whatever file takes over
    the fd's number. `core_bytes` counts the core's bytes, `written` the bytes that went out (fewer, compressed).
    """

    def __init__(self, fd: int, compressor: Compressor | None = None) -> None:
        self.compressor = compressor
        self.core_bytes = 0
        self.written = 0
        #: One token per party using the fd, the caller's at the bottom: whoever takes that one, the last token
        #: left, closes the fd. list.append and list.pop are atomic; a lock could be left held by a Ctrl-C.
        self._tokens: list[bool] = [True]
        self._closed = False
        self.fd = os.dup(fd)

    def hold(self) -> None:
        """A writer thread starts using the stream (before the caller closes it)."""
        self._tokens.append(False)

    def let_go(self) -> None:
        """A writer thread is done with it."""
        self._drop_token()

    def write_at(self, chunk: bytes | memoryview, offset: int, address: int = 0, marks: bytes | None = None) -> None:
        """Write `chunk` at `offset`, which lies at or past everything written so far."""
        if offset < self.core_bytes:
            raise ValueError(f"a stream cannot go back from {self.core_bytes} to {offset}")
        self._zeros(offset - self.core_bytes)
        self._out(chunk)

    def finish(self, size: int) -> None:
        """Zeros up to `size` bytes of core, and the end of the compressed frame."""
        self._zeros(size - self.core_bytes)
        if self.compressor is not None:
            self._send(self.compressor.flush())

    def close(self) -> None:
        """The caller is done with it; twice is harmless."""
        if not self._closed:
            self._closed = True
            self._drop_token()

    def _drop_token(self) -> None:
        if self._tokens.pop():
            os.close(self.fd)

    def _zeros(self, count: int) -> None:
        while count > 0:
            step = min(count, len(_ZEROS))
            self._out(_ZEROS[:step])
            count -= step

    def _out(self, data: bytes | memoryview) -> None:
        self.core_bytes += len(data)
        self._send(self.compressor.compress(data) if self.compressor is not None else data)

    def _send(self, data: bytes | memoryview) -> None:
        with memoryview(data) as view:
            done = 0
            while done < len(view):
                with view[done:] as rest:
                    done += os.write(self.fd, rest)
        self.written += done


#: Zeros for the gaps of a stream; a view, so that a slice copies nothing.
_ZEROS = memoryview(bytes(1 << 20))


class _Failure:
    """The first error of a writer thread, read by the thread that reads."""

    __slots__ = ("error",)

    def __init__(self) -> None:
        self.error: BaseException | None = None


#: How the writer thread puts a committed chunk at its offset: (chunk, offset, its address in memory, and for a
#: sparse write the page marks of _page_marks).
Write = Callable[[memoryview, int, int, bytes | None], None]


def _write_loop(
    write: Write,
    done: Callable[[], None],
    work: queue.SimpleQueue[tuple[_Bounce, int, int, bytes | None] | None],
    free: queue.SimpleQueue[_Bounce],
    failure: _Failure,
) -> None:
    """The writer thread: write each committed buffer at its offset and hand it back, until told to stop (None);
    then call `done` (close its fd). After a failure it only hands buffers back: the reader raises the error at its
    next window."""
    try:
        while True:
            item = work.get()
            if item is None:
                return
            bounce, offset, size, marks = item
            try:
                if failure.error is None:
                    with bounce.view[:size] as chunk:
                        write(chunk, offset, bounce.address, marks)
            except BaseException as exc:
                failure.error = exc
            finally:
                free.put(bounce)
    finally:
        done()


def _pwrite_chunk(fd: int, chunk: memoryview, offset: int, address: int, marks: bytes | None) -> None:
    pwrite_all(fd, chunk, offset)


def _page_marks(buffer: mmap.mmap, size: int) -> bytes | None:
    """One byte per page of the first `size` bytes of `buffer`: zero where the page may be all zero (its first and
    last bytes are), else not; None unless `size` is whole pages (the copy commits whole pages).

    Taken by the reading thread as it commits the chunk it just read, while the chunk is in its CPU's cache: the
    same samples taken by the writer thread on the other CPU missed the cache once a page, which cost about a tenth
    of the reading rate (bench/bench_dump.py). Sliced from the mmap, not a view: nothing is exported for a Ctrl-C
    to strand.
    """
    pages = size // PAGE_SIZE
    if pages * PAGE_SIZE != size:
        return None
    sampled = int.from_bytes(buffer[0:size:PAGE_SIZE], "little") | int.from_bytes(
        buffer[PAGE_SIZE - 1 : size : PAGE_SIZE], "little"
    )
    return sampled.to_bytes(pages, "little")


def _pwrite_sparse(fd: int, chunk: memoryview, offset: int, address: int, marks: bytes | None) -> None:
    """pwrite the pages of `chunk` that hold anything; all-zero pages are left as holes of the (pre-sized) file.

    Only the pages that `marks` says may be zero are compared in full (memcmp, stopping at the first non-zero
    byte), so memory that holds data costs next to nothing more. memcmp is called holding the GIL: releasing and
    taking it back per page cost more than the comparison when the reader thread wants it too.
    """
    page = marks.find(0) if marks is not None else -1
    if marks is None or page < 0:
        pwrite_all(fd, chunk, offset)
        return
    size = len(chunk)
    if page == 0 and not marks.strip(b"\0") and _is_zero(address, size):
        return  # all zero: the common case of a zero-filled heap, one memcmp for the chunk
    run = 0  # start of the pending run of pages with data
    while page >= 0:
        low = page * PAGE_SIZE
        if _is_zero(address + low, PAGE_SIZE):
            if low > run:
                with chunk[run:low] as part:
                    pwrite_all(fd, part, offset + run)
            run = low + PAGE_SIZE
        page = marks.find(0, page + 1)
    if run < size:
        with chunk[run:] as part:
            pwrite_all(fd, part, offset + run)


def _is_zero(address: int, size: int) -> bool:
    """Whether `size` bytes at `address` are all zero: the first is, and each equals the next (memcmp of the range
    against itself shifted by one byte, no zero buffer needed)."""
    return ctypes.c_ubyte.from_address(address).value == 0 and _memcmp(address, address + 1, size - 1) == 0


class MappedSink(Sink):
    """Read straight into a pre-faulted shared mapping of the destination (posix_fallocate + MAP_POPULATE)."""

    def __init__(self, mapping: mmap.mmap) -> None:
        self.mapping = mapping
        self.address = _address_of(mapping)
        self.size = len(mapping)
        self._window: memoryview | None = None

    def window(self, offset: int, size: int) -> tuple[int, memoryview]:
        assert self._window is None
        self._window = memoryview(self.mapping)[offset : offset + size]
        return self.address + offset, self._window

    def commit(self, offset: int, size: int) -> None:
        assert self._window is not None
        self._window.release()
        self._window = None

    def close(self) -> None:
        """Release the last window, so that the mapping's owner can close it."""
        if self._window is not None:
            self._window.release()


MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0x8000)


def _address_of(mapping: mmap.mmap) -> int:
    """The address of an mmap. The ctypes object that exports it lives only inside this one expression, never in a
    variable: a Ctrl-C anywhere leaves no export that would stop the mapping from being closed later."""
    return ctypes.addressof(ctypes.c_char.from_buffer(mapping))


#: How memory is read. /proc/PID/mem (FOLL_GET, FOLL_FORCE) is the default: process_vm_readv pins pages with
#: FOLL_PIN, and a read-only pin of a copy-on-write-shared anonymous page makes the kernel *unshare* it, i.e. copy
#: it (mm/gup.c gup_must_unshare): read from a VA clone, every page would be duplicated (+1 GiB of RAM and 0.65
#: GB/s against 2.4 GB/s, measured); read from a forked worker, its sharing with its parent would be broken.
READ_PROC_MEM = "mem"
READ_PROCESS_VM = "pvr"


def copy_pieces(
    pid: int,
    pieces: Sequence[Piece],
    sink: Sink,
    *,
    batch: int | None = None,
    progress: Progress | None = None,
    reader: str = READ_PROC_MEM,
) -> CopyStats:
    """Copy every piece out of process `pid` into `sink`; pages that cannot be read stay zero.

    Pieces must be in file order and contiguous in the file (as the PT_LOADs of one core are), so one batch of up
    to IOV_MAX pieces is read into one window and committed at once. A short read stops at the first page that
    failed: that page is zeroed (after one more try through /proc/PID/mem when process_vm_readv was the reader),
    and the copy resumes at the next page.
    """
    started = time.perf_counter()
    total = sum(p.size for p in pieces)
    limit = min(batch or DEFAULT_BATCH, sink.size) if isinstance(sink, FdSink) else (batch or DEFAULT_BATCH)
    limit = max(PAGE_SIZE, limit - limit % PAGE_SIZE)
    remote = (iovec * IOV_MAX)()
    local = iovec()
    mem = _ProcMem(pid)
    use_pvr = reader == READ_PROCESS_VM
    done = failed = 0
    index, skip = 0, 0
    try:
        if not use_pvr:
            mem.require()
        while index < len(pieces):
            first = pieces[index]
            dest = first.offset + skip
            count, size = 0, 0
            j, s = index, skip
            while j < len(pieces) and count < IOV_MAX and size < limit:
                piece = pieces[j]
                if piece.force != first.force or piece.offset + s != dest + size:
                    break
                take = min(piece.size - s, limit - size)
                remote[count].iov_base = piece.address + s
                remote[count].iov_len = take
                count += 1
                size += take
                if s + take == piece.size:
                    j, s = j + 1, 0
                else:
                    s += take
            address, view = sink.window(dest, size)
            if first.force or not use_pvr:
                got = mem.read_into(view, remote, count)
            else:
                local.iov_base, local.iov_len = address, size
                got = _libc.process_vm_readv(pid, ctypes.byref(local), 1, remote, count, 0)
                if got < 0:
                    got = _read_failed(pid, ctypes.get_errno())
            if got < size:
                if _gone(pid):
                    raise ProcessGone(f"process {pid} exited while its memory was copied", pid=pid)
                bad = got - got % PAGE_SIZE
                length = min(PAGE_SIZE, size - bad)
                # By address, not through a slice of the window: a slice is one more view for a Ctrl-C to strand.
                if not (use_pvr and mem.read_page(address + bad, length, _address_at(remote, count, bad))):
                    ctypes.memset(address + bad, 0, length)
                    failed += 1
                got = bad + length
            sink.commit(dest, got)
            done += got
            index, skip = _advance(pieces, index, skip, got)
            if progress is not None:
                progress(done, total)
    finally:
        mem.close()
    return CopyStats(done, failed, time.perf_counter() - started)


def _gone(pid: int) -> bool:
    """Exited (or a zombie, whose memory is gone): every read would fail, so the copy stops instead."""
    try:
        return procfs.read_stat(pid).exited
    except (OSError, ValueError):
        return True


def _read_failed(pid: int, err: int) -> int:
    """process_vm_readv returned -1: EFAULT means the very first page failed; anything else ends the copy."""
    if err == errno.EFAULT:
        return 0
    if err == errno.ESRCH:
        raise ProcessGone(f"process {pid} exited while its memory was copied", pid=pid)
    if err == errno.EPERM:
        raise AccessDenied(f"reading the memory of process {pid} was refused (process_vm_readv: EPERM)", pid=pid)
    raise OperationFailed(f"reading the memory of process {pid} failed: {os.strerror(err)}", pid=pid)


def _address_at(remote: ctypes.Array[iovec], count: int, position: int) -> int:
    """The remote address of byte `position` of a batch."""
    for i in range(count):
        length = int(remote[i].iov_len)
        if position < length:
            return int(remote[i].iov_base) + position
        position -= length
    raise AssertionError("position beyond the batch")


def _advance(pieces: Sequence[Piece], index: int, skip: int, size: int) -> tuple[int, int]:
    while size:
        left = pieces[index].size - skip
        if size < left:
            return index, skip + size
        size -= left
        index, skip = index + 1, 0
    return index, skip


class _ProcMem:
    """/proc/PID/mem, opened on first use: reads what process_vm_readv cannot (PROT_NONE pages, FOLL_FORCE)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.fd: int | None = None
        self.broken = False

    def _open(self) -> int | None:
        if self.fd is None and not self.broken:
            try:
                self.fd = os.open(f"/proc/{self.pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self.broken = True
        return self.fd

    def require(self) -> None:
        """Open now, with the typed error when that is refused or the process is gone."""
        try:
            self.fd = os.open(f"/proc/{self.pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ProcessGone(f"process {self.pid} exited before its memory was copied", pid=self.pid) from None
        except PermissionError:
            raise AccessDenied(
                f"reading the memory of process {self.pid} was refused (/proc/{self.pid}/mem)", pid=self.pid
            ) from None

    def read_page(self, into: int, length: int, address: int) -> bool:
        """Read `length` bytes at `address` of the process to local address `into`; all of them, or False."""
        fd = self._open()
        return fd is not None and _libc.pread(fd, into, length, address) == length

    def read_into(self, view: memoryview, remote: ctypes.Array[iovec], count: int) -> int:
        """Read the batch through /proc/PID/mem; returns bytes read before the first failure."""
        fd = self._open()
        done = 0
        for i in range(count):
            address, length = int(remote[i].iov_base), int(remote[i].iov_len)
            while length:
                try:
                    got = os.preadv(fd, [view[done : done + length]], address) if fd is not None else 0
                except OSError:
                    got = 0
                if got <= 0:
                    return done
                done, address, length = done + got, address + got, length - got
        return done

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# ------------------------------------------------------------------------------------------ whole cores


def write_core_fd(
    fd: int,
    layout: elfcore.CoreLayout,
    pid: int,
    *,
    progress: Progress | None = None,
    bounce: int = DEFAULT_BOUNCE,
    reader: str = READ_PROC_MEM,
) -> CopyStats:
    """Write a whole core (headers, notes, the memory of `pid`) into `fd` with pwrite; `fd` is sized first."""
    return write_pieces_fd(
        fd, layout.size, pieces_of(layout), pid, head=layout.head, progress=progress, bounce=bounce, reader=reader
    )


def write_pieces_fd(
    fd: int,
    size: int,
    pieces: Sequence[Piece],
    pid: int,
    *,
    head: bytes = b"",
    progress: Progress | None = None,
    bounce: int = DEFAULT_BOUNCE,
    reader: str = READ_PROC_MEM,
    sparse: bool = False,
) -> CopyStats:
    """Size `fd` to `size` bytes, write `head` at its start and the memory of `pid` that `pieces` name; with
    `sparse`, all-zero pages are left as holes (`fd` must be a new, empty file).

    Used both for the snapshot memfd and for `pss-dup dump`'s output file, which thus never holds half-copied
    pages under a mapping (a full disk is an ordinary ENOSPC from pwrite, not a SIGBUS).
    """
    size_file(fd, size)
    if head:
        pwrite_all(fd, head, 0)
    with FdSink(fd, bounce, sparse=sparse) as sink:
        return copy_pieces(pid, pieces, sink, progress=progress, reader=reader)


def stream_core(stream: Stream, layout: elfcore.CoreLayout, pid: int, *, progress: Progress | None = None) -> CopyStats:
    """A whole core into `stream`, front to back: the headers and notes as `layout` has them, then the memory of
    `pid`, then the end of the stream."""
    stream.write_at(layout.head, 0)
    with FdSink(stream) as sink:
        stats = copy_pieces(pid, pieces_of(layout), sink, progress=progress)
    stream.finish(layout.size)
    return stats


def stream_file(source: int, stream: Stream) -> int:
    """A whole file (a snapshot memfd) into `stream`; its size."""
    size = os.fstat(source).st_size
    while stream.core_bytes < size:
        data = os.pread(source, min(size - stream.core_bytes, 1 << 20), stream.core_bytes)
        if not data:
            raise OSError(errno.EIO, "the snapshot ended early")
        stream.write_at(data, stream.core_bytes)
    stream.finish(size)
    return size


def write_core_mapped(
    mapping: mmap.mmap,
    layout: elfcore.CoreLayout,
    pid: int,
    *,
    progress: Progress | None = None,
    reader: str = READ_PROC_MEM,
) -> CopyStats:
    """Write a whole core into a pre-faulted shared mapping (memfd.create_sealed with prefault=True)."""
    elfcore.write_core(mapping, layout)
    with MappedSink(mapping) as sink:
        return copy_pieces(pid, pieces_of(layout), sink, progress=progress, reader=reader)


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """pwrite until every byte is written; each view is released as it goes, an error or not."""
    with memoryview(data) as view:
        done = 0
        while done < len(view):
            with view[done:] as rest:
                written = os.pwrite(fd, rest, offset + done)
            if written <= 0:
                raise OSError(errno.EIO, "pwrite wrote nothing")
            done += written


class SizeRefused(OSError):
    """ftruncate refused the size a file needs: EFBIG (RLIMIT_FSIZE, or the largest file the filesystem holds)."""

    def __init__(self, error: OSError, size: int) -> None:
        super().__init__(error.errno, error.strerror)
        self.size = size


def size_file(fd: int, size: int) -> None:
    """ftruncate `fd` to `size`; a refusal keeps the size, so that the error can say how much was needed."""
    try:
        os.ftruncate(fd, size)
    except OSError as exc:
        raise SizeRefused(exc, size) from None


def copy_file(source: int, destination: int) -> int:
    """Copy a whole file (a snapshot memfd) into an empty output file in the kernel (copy_file_range)."""
    size = os.fstat(source).st_size
    size_file(destination, size)
    copied = 0
    in_kernel = True
    while copied < size:
        if in_kernel:
            try:
                got = os.copy_file_range(source, destination, size - copied, copied, copied)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                in_kernel = False  # across filesystems (5.19+): sendfile still copies in the kernel
                continue
        else:
            os.lseek(destination, copied, os.SEEK_SET)
            got = os.sendfile(destination, source, copied, min(size - copied, 1 << 30))
        if got <= 0:
            raise OSError(errno.EIO, "the copy stopped early")
        copied += got
    return copied

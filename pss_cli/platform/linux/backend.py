"""The Linux backend: PSS operations built from /proc, ptrace, memfd and pidfds.

Each operation reads as its steps; the mechanisms live in procfs.py (reading), freeze.py and inject.py (stopping
and injecting), elfcore.py and memfd.py (the snapshot container). OS errors are translated here, once.

Only procfs is imported with this module: each operation imports the mechanisms it uses, so that listing processes
loads no ptrace code and a capture without memory loads neither injection nor the core writer.
"""

from __future__ import annotations

import sys

# Linux only: this lets mypy --platform win32 skip the module instead of flagging Linux-only calls.
assert sys.platform == "linux"

import contextlib
import errno
import functools
import os
import resource
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from pss_cli import record
from pss_cli.compress import COMPRESSIONS
from pss_cli.errors import (
    AccessDenied,
    Interrupted,
    NoSuchProcess,
    NotSupported,
    OperationFailed,
    OutputFull,
    ProcessGone,
    PssError,
    UsageError,
)
from pss_cli.model import (
    CLONE_METHODS,
    EVERYTHING,
    KERNEL_DUMP,
    AccessUse,
    AttachSpec,
    CaptureFlags,
    CapturePlan,
    Container,
    DumpOutput,
    DumpSelection,
    DuplicateResult,
    FreeResult,
    HandleEntry,
    Interruption,
    ListedProcess,
    Performance,
    ProcessLocation,
    Snapshot,
    ThreadContext,
    ThreadEntry,
    VaRegion,
)
from pss_cli.platform import LiveProcess, LocalSnapshot, ProgressCallback
from pss_cli.platform.linux import procfs

if TYPE_CHECKING:
    from pss_cli import outfile
    from pss_cli.platform.linux import copyengine, inject
    from pss_cli.platform.linux.freeze import FrozenProcess
    from pss_cli.platform.linux.vaclone import MemoryGrab
    from pss_cli.platform.linux.watching import ProcWatch

#: What a capture asks of the kernel, for the report's access column.
CAPTURE_ACCESS = ("PTRACE_MODE_READ_FSCREDS (/proc)", "PTRACE_MODE_ATTACH_REALCREDS (PTRACE_SEIZE)")
PUSH_ACCESS = ("PTRACE_MODE_ATTACH_REALCREDS (PTRACE_SEIZE, pidfd_getfd)",)
FREEZE_FLAGS = CaptureFlags.THREADS | CaptureFlags.THREAD_CONTEXT | CaptureFlags.HANDLES | CaptureFlags.VA_SPACE


def context_from_regs(gpr: bytes, fpregs: bytes | None, xstate: bytes | None) -> ThreadContext:
    from pss_cli.platform.linux import elfcore

    values = elfcore.GPREGS.unpack_from(gpr)
    return ThreadContext(
        arch="x86_64", registers=tuple(zip(elfcore.X86_64_GPR_NAMES, values, strict=True)), fpregs=fpregs, xstate=xstate
    )


@contextlib.contextmanager
def os_errors(pid: int, what: str) -> Iterator[None]:
    """Translate the OS's answer about `pid` into pss-dup's typed errors, once, at the boundary."""
    try:
        yield
    except PssError:
        raise
    except (FileNotFoundError, ProcessLookupError) as exc:
        if os.path.exists(f"/proc/{pid}"):
            raise ProcessGone(f"process {pid} changed while pss-dup was reading it ({exc.strerror})", pid=pid) from exc
        raise ProcessGone(f"process {pid} exited during {what}", pid=pid) from exc
    except PermissionError as exc:
        from pss_cli.platform.linux import access

        raise access.explain_denied(pid, what) from exc


class LinuxSnapshot:
    """A snapshot this process holds: the model, and the sealed memfd built from it on first use.

    With memory (PSS_CAPTURE_VA_CLONE) `memory` holds its source (the VA clone, or the copy made while frozen):
    building the memfd copies the memory in and ends the clone; `write_core` writes a core file instead. Either
    way `model` becomes the finished model, the one the note holds (copy time, unreadable pages, reaping stop).
    """

    def __init__(self, model: Snapshot, auxv: bytes | None, memory: MemoryGrab | None = None) -> None:
        self._model = model
        self._auxv = auxv
        self._fd: int | None = None
        self._memory = memory

    @property
    def model(self) -> Snapshot:
        return self._model

    def handle(self) -> int:
        if self._fd is None:
            if self._memory is not None:
                with os_errors(self._model.process.pid, "copy the memory"):
                    self._fd, self._model = self._memory.build_snapshot(self._model, self._auxv)
            else:
                from pss_cli.platform.linux import elfcore, memfd

                layout = elfcore.plan_core(self._model, self._auxv)
                self._fd = memfd.create_sealed(layout, lambda buf: elfcore.write_core(buf, layout, None))
        return self._fd

    def write_core(self, fd: int, *, sparse: bool = False) -> Snapshot:
        """Write the snapshot as a core file into `fd` (an empty output file; with `sparse`, all-zero pages stay
        holes); the model as finally reported."""
        if self._memory is None:
            from pss_cli.platform.linux import copyengine, elfcore

            copyengine.write_core_fd(fd, elfcore.plan_core(self._model, self._auxv), os.getpid())
            return self._model
        with os_errors(self._model.process.pid, "copy the memory"):
            self._model = self._memory.write_file(fd, self._model, self._auxv, sparse=sparse)
        return self._model

    def write_stream(self, stream: copyengine.Stream) -> Snapshot:
        """Write the snapshot as a core into `stream`, front to back; the model as finally reported."""
        if self._memory is None:
            from pss_cli.platform.linux import copyengine, elfcore

            copyengine.stream_core(stream, elfcore.plan_core(self._model, self._auxv), os.getpid())
            return self._model
        with os_errors(self._model.process.pid, "copy the memory"):
            self._model = self._memory.write_stream(stream, self._model, self._auxv)
        return self._model

    def close(self) -> None:
        try:
            if self._memory is not None:
                self._memory.release()
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> LinuxSnapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_proc(pid: int) -> procfs.ProcDir:
    try:
        return procfs.ProcDir(pid)
    except FileNotFoundError:
        raise NoSuchProcess(f"no process with PID {pid}; list processes with `pss-dup ps`", pid=pid) from None
    except PermissionError:
        from pss_cli.platform.linux import access

        raise access.explain_denied(pid, "open /proc") from None


def capture(
    pid: int,
    flags: CaptureFlags,
    *,
    timeout: float,
    clone_method: str = "clone",
    progress: ProgressCallback | None = None,
    dump_fd: int | None = None,
    selection: DumpSelection = KERNEL_DUMP,
) -> LinuxSnapshot:
    """PssCaptureSnapshot on Linux; `selection` says what memory a capture with PSS_CAPTURE_VA_CLONE takes.

    Everything that can be read while the process runs is read first (command line, environment, auxv, each
    thread's scheduler state, the fd table, the memory map); the freeze then reads registers and re-checks the
    fd table and the memory map, reading again only what changed, so the process is stopped as briefly as possible.
    """
    from pss_cli.platform.linux import access
    from pss_cli.platform.linux.freeze import FrozenProcess, attachment_of

    access.require_supported_arch()
    attachment = attachment_of(pid)
    if attachment is not None and (attachment.dying() or attachment.job_stopped()):
        # A watch holds a thread of it in a fault or in its exit: the process ends once let go (and no call can be
        # injected in an exit); or it is stopped by job control (a listening thread cannot take an injected call):
        # the memory is copied during the freeze, on the watch's own tracer thread. Else the VA clone is made on
        # that thread too.
        clone_method = "copy"
    started = time.perf_counter()
    captured_at = time.time()
    grab: MemoryGrab | None = None
    with open_proc(pid) as proc, os_errors(pid, "capture"), _released_on_error(lambda: grab):
        access.check_traceable(pid)
        if flags & CaptureFlags.VA_CLONE:  # planned before the freeze; smaps come from the clone afterwards
            from pss_cli.platform.linux import vaclone

            grab = vaclone.grab_for(
                clone_method, pid, timeout=timeout, progress=progress, dest_fd=dump_fd, selection=selection
            )
        boot = procfs.boot_time()  # once for the process and its threads
        info = procfs.read_process_info(proc, count_handles=not flags & CaptureFlags.HANDLES, boot=boot)
        auxv = procfs.read_auxv(proc)
        want_threads = bool(flags & (CaptureFlags.THREADS | CaptureFlags.THREAD_CONTEXT))
        before = {tid: procfs.read_thread(proc, tid, boot) for tid in procfs.list_tids(proc)} if want_threads else {}
        handles: tuple[HandleEntry, ...] | None = None
        va_space: tuple[VaRegion, ...] | None = None
        threads: tuple[ThreadEntry, ...] | None = None
        stopped_ms: float | None = None
        wait_ms: float | None = None
        handles_ms = va_ms = None
        interruptions: tuple[Interruption, ...] | None = None
        # The fd table and the memory map are read in full while the process runs, then checked again while it
        # is frozen: only what changed in between is read under the freeze.
        reader = procfs.HandleReader(
            proc,
            names=bool(flags & CaptureFlags.HANDLE_NAME_INFORMATION),
            basic=bool(flags & CaptureFlags.HANDLE_BASIC_INFORMATION),
            type_specific=bool(flags & CaptureFlags.HANDLE_TYPE_SPECIFIC_INFORMATION),
        )
        section_info = bool(flags & CaptureFlags.VA_SPACE_SECTION_INFORMATION) and (
            grab is None or grab.smaps_before_freeze
        )
        t = time.perf_counter()
        handles_before = reader.read_all() if flags & CaptureFlags.HANDLES else {}
        handles_ms = (time.perf_counter() - t) * 1000 if flags & CaptureFlags.HANDLES else None
        t = time.perf_counter()
        va_before = procfs.read_va_space(proc, section_info=section_info) if flags & CaptureFlags.VA_SPACE else ()
        va_ms = (time.perf_counter() - t) * 1000 if flags & CaptureFlags.VA_SPACE else None
        if grab is not None:
            grab.before_freeze(va_before)
        if flags & FREEZE_FLAGS or grab is not None:
            with FrozenProcess(
                pid,
                timeout=timeout,
                want_regs=bool(flags & CaptureFlags.THREAD_CONTEXT),
                want_fp=bool(flags & CaptureFlags.THREAD_CONTEXT),
                want_xstate=bool(flags & CaptureFlags.THREAD_CONTEXT_EXTENDED),
                tracer=grab.tracer if grab is not None else None,
            ) as frozen:
                if flags & CaptureFlags.HANDLES:
                    handles = reader.refresh(handles_before)
                if flags & CaptureFlags.VA_SPACE:
                    unchanged = procfs.map_keys(proc) == procfs.region_keys(va_before)
                    va_space = va_before if unchanged else procfs.read_va_space(proc, section_info=section_info)
                if grab is not None:
                    grab.during_freeze(frozen, va_space)
            stopped_ms = frozen.stopped_ms
            interruptions = tuple(frozen.interruptions)
            wait_ms = frozen.wait_ms
            if want_threads:
                threads = tuple(thread_entries(proc, frozen, before))
        info = record.replace(
            info,
            thread_count=len(threads) if threads is not None else info.thread_count,
            handle_count=len(handles) if handles is not None else info.handle_count,
        )
    model = Snapshot(
        flags=flags,
        platform="linux",
        arch="x86_64",
        captured_at=captured_at,
        process=info,
        threads=threads,
        handles=handles,
        va_space=va_space,
        performance=Performance(
            capture_ms=(time.perf_counter() - started) * 1000,
            stopped_ms=stopped_ms,
            handles_ms=handles_ms,
            va_space_ms=va_ms,
            wait_ms=wait_ms,
        ),
        interruptions=interruptions,
    )
    if grab is not None:
        with os_errors(pid, "capture"), _released_on_error(lambda: grab):
            model = grab.after_thaw(model)
    return LinuxSnapshot(model, auxv, grab)


def plan_capture(pid: int, flags: CaptureFlags) -> CapturePlan:
    """The dry run of `capture`: each check a capture makes that needs no stop, made; nothing stopped or traced.

    What the real capture would refuse before stopping anything (zombie, kernel thread, tracer, 32-bit, access, a
    VA clone it cannot make safely) is refused here the same way; a thread in D state is said to be waited for.
    """
    from pss_cli.platform.linux import access

    access.require_supported_arch()
    with open_proc(pid) as proc, os_errors(pid, "capture"):
        access.check_traceable(pid)
        actions = [f"read what process {pid} shows in /proc while it runs (command line, environment, auxv, threads)"]
        warnings: tuple[str, ...] = ()
        freezes = bool(flags & FREEZE_FLAGS) or bool(flags & CaptureFlags.VA_CLONE)
        if freezes:
            if not access.probe_attach(pid):
                raise access.explain_denied(pid, "freeze (PTRACE_SEIZE)")
            tids = procfs.list_tids(proc)
            for tid in tids:
                refusal = access.traced_elsewhere(pid, tid)
                if refusal is not None:
                    raise refusal
            waited = [str(tid) for tid in tids if access.thread_state(pid, tid) == "D"]
            if waited:
                actions.append(
                    f"wait, with nothing stopped and up to --timeout, for thread {', '.join(waited)} to leave its "
                    "uninterruptible wait (state D)"
                )
            count = f"{len(tids)} thread" + ("s" if len(tids) != 1 else "")
            actions.append(f"freeze its {count} (PTRACE_SEIZE + PTRACE_INTERRUPT) to read {_frozen_reads(flags)}")
        if flags & CaptureFlags.VA_CLONE:
            from pss_cli.platform.linux import vaclone

            clone = vaclone.plan_clone(pid)
            warnings = clone.warnings
            actions.append(
                f"while frozen, make a copy-on-write VA clone with an injected clone() in thread {clone.tid}; "
                "copy the memory from it once the process runs again, then end the clone"
            )
        if freezes:
            actions.append("let every thread go (PTRACE_DETACH)")
    actions.append("build a sealed memfd snapshot")
    names = CAPTURE_ACCESS if freezes else CAPTURE_ACCESS[:1]
    return CapturePlan(
        pid=pid,
        flags=flags,
        access=AccessUse(pid=pid, role="source", names=names),
        actions=tuple(actions),
        warnings=warnings,
    )


def _frozen_reads(flags: CaptureFlags) -> str:
    parts = [
        ("the thread list", flags & CaptureFlags.THREADS),
        ("registers", flags & CaptureFlags.THREAD_CONTEXT),
        ("the fd table", flags & CaptureFlags.HANDLES),
        ("the memory map", flags & CaptureFlags.VA_SPACE),
    ]
    return ", ".join(name for name, wanted in parts if wanted) or "a consistent instant"


@contextlib.contextmanager
def _released_on_error(grab: Callable[[], MemoryGrab | None]) -> Iterator[None]:
    """A capture that fails after the VA clone was made kills and reaps the clone before the error goes up; should
    that fail too, the error says so (the clone's tracer is gone by then, so the kernel has killed the clone)."""
    try:
        yield
    except BaseException as exc:
        held = grab()
        if held is not None:
            try:
                held.release()
            except Exception as failure:
                exc.args = (f"{exc}; ending its VA clone failed too: {failure}", *exc.args[1:])
        raise


#: What a mini core's stop costs, in ms, as measured here (2 cores, 8-256 threads, 16 MiB-1 GiB resident; the
#: figures in bench/bench_dump.py's mini section): the frozen copy grows with the threads (each stack is read while
#: every thread waits), the clone with the resident set (its page tables are copied while frozen).
MINI_COPY_MS = (3.0, 0.15)  # fixed, per thread
MINI_CLONE_MS = (5.5, 0.08, 35.0)  # fixed, per thread, per GiB resident


def mini_method(pid: int) -> str:
    """The method that stops `pid` less for a mini core: the frozen copy, unless many threads and little memory make
    the clone's stop shorter. A process under seccomp gets the copy: it needs no injected call at all."""
    try:
        status = procfs.read_status(pid)
        threads = int(status.get("Threads", "1"))
        resident = (procfs.status_kib(status, "VmRSS") or 0) / (1 << 30)
        seccomp = int(status.get("Seccomp", "0"))
    except (OSError, ValueError):
        return "copy"  # the capture reports what is wrong with the process
    copy = MINI_COPY_MS[0] + MINI_COPY_MS[1] * threads
    clone = MINI_CLONE_MS[0] + MINI_CLONE_MS[1] * threads + MINI_CLONE_MS[2] * resident
    return "clone" if clone < copy and seccomp == 0 else "copy"


def thread_entries(
    proc: procfs.ProcDir, frozen: FrozenProcess, before: dict[int, ThreadEntry]
) -> Iterator[ThreadEntry]:
    """Threads that were frozen, with the state they had before the freeze and the registers read during it."""
    for tid in frozen.tids:
        entry = before.get(tid)
        if entry is None:  # born during the freeze: read it now, if it still lives
            try:
                entry = procfs.read_thread(proc, tid)
            except FileNotFoundError:
                continue
        regs = frozen.regs.get(tid)
        if regs is not None:
            entry = record.replace(
                entry, context=context_from_regs(regs.gpr, regs.fpregs, regs.xstate), sig_blocked=regs.sigmask
            )
        if tid in frozen.siginfos:
            entry = record.replace(entry, siginfo=frozen.siginfos[tid])
        yield entry


#: What `dump` captures: everything, memory included (ProcDump -ma with -r), as `capture --everything` does.
DUMP_FLAGS = EVERYTHING


#: A write's answer when the file cannot get the room it needs: the filesystem is full, a quota is reached, or the
#: file would outgrow a size limit. Only writes get these, so they may be looked for around a capture too.
NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


@contextlib.contextmanager
def _write_errors(pid: int, out: outfile.OutputFile | _Written, *, others: bool = True) -> Iterator[None]:
    """A failed write of the output file as a typed error. No room (NO_ROOM) says where and how much, wherever it
    came from; with `others`, any other error of a call on a file descriptor (EIO) is a failed write too."""
    try:
        yield
    except PssError:
        raise
    except OSError as exc:
        if exc.errno in NO_ROOM:
            raise _no_room(exc, out, pid) from exc
        if others and exc.filename is None and exc.errno not in (errno.ESRCH, errno.ENOENT, errno.EPERM, errno.EACCES):
            raise OperationFailed(f"writing {out.path} failed: {exc.strerror}", pid=pid) from exc
        raise


@record.record
class _Written:
    """A stream's fd, named for the errors as an output file is."""

    path: str
    fd: int


def _no_room(exc: OSError, out: outfile.OutputFile | _Written, pid: int) -> OutputFull:
    """The one line for a file that got no room: "no space left on DEVICE for FILE (N bytes needed, M written)", and
    the like for a quota or a size limit. N is the size the core needs, M what the filesystem holds of it now (the
    file is removed once this is said)."""
    from pss_cli import outfile
    from pss_cli.platform.linux import copyengine

    st = os.fstat(out.fd)
    needed = exc.size if isinstance(exc, copyengine.SizeRefused) else st.st_size
    figures = f"({needed} bytes needed, {min(st.st_blocks * 512, st.st_size)} written)"
    where = outfile.filesystem_of(out.fd) or f"the filesystem of {os.path.dirname(os.path.abspath(out.path))}"
    if exc.errno == errno.ENOSPC:
        return OutputFull(f"no space left on {where} for {out.path} {figures}", pid=pid)
    if exc.errno == errno.EDQUOT:
        return OutputFull(f"disk quota exceeded on {where} for {out.path} {figures}", pid=pid)
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and needed > limit:
        return OutputFull(f"{out.path} would outgrow the file size limit (ulimit -f) of {limit} bytes {figures}",
                          pid=pid)  # fmt: skip
    return OutputFull(f"{out.path} would be larger than {where} allows {figures}", pid=pid)


def _copy_seconds(model: Snapshot, seconds: float) -> float:
    """How long the memory took to go out: the copy as measured, else the whole write (`seconds`)."""
    copy_ms = model.memory.copy_ms if model.memory is not None else None
    return copy_ms / 1000 if copy_ms else seconds


def _free_needs_force(target_pid: int, pushed: inject.PushResult) -> tuple[str, ...]:
    """A push that needed --force (its thread was in a call whose EINTR cannot be undone) is planned with its
    free: the free stops a thread of the same process, and is refused the same way while that lasts."""
    if not pushed.warnings:
        return ()
    return (
        f"`pss-dup free {target_pid} {pushed.fd}` will need --force too while that lasts (it stops a thread of "
        "the same process)",
    )


def snapshot_check(pid: int, handle: int) -> Callable[[int], None]:
    """The check made on a local copy of another process's fd before it is handed on, closed or read."""
    from pss_cli.platform.linux import memfd

    return functools.partial(memfd.verify_snapshot_fd, label=f"fd {handle} of process {pid}")


def container_output(pid: int, path: str) -> dict[str, Any]:
    """OutputFile's arguments for a file at `path` in the root directory of `pid` (`/proc/PID/root`: its container's
    filesystem, seen from its own mount namespace), owned by its effective user and group."""
    from pss_cli.platform.linux import inroot

    with os_errors(pid, "find the root directory of"):
        status = procfs.read_status(pid)
    uids, gids = procfs.status_ids(status, "Uid"), procfs.status_ids(status, "Gid")
    if not uids or not gids:
        raise NoSuchProcess(f"process {pid} has exited", pid=pid)
    directory = os.path.dirname(path) or "/"
    return {"directory_fd": inroot.open_in_root(f"/proc/{pid}/root", directory, pid), "owner": (uids[1], gids[1])}


class LinuxBackend:
    """The Backend Protocol on Linux."""

    name = "linux"

    def capture(self, pid: int, flags: CaptureFlags, *, timeout: float) -> LinuxSnapshot:
        return capture(pid, flags, timeout=timeout)

    def dump(
        self,
        pid: int,
        path: str | os.PathLike[str] | int,
        *,
        force: bool,
        timeout: float,
        clone_method: str | None = None,
        progress: ProgressCallback | None = None,
        compress: str | None = None,
        written: Callable[[DumpOutput], None] | None = None,
        selection: DumpSelection = KERNEL_DUMP,
        into_container: bool = False,
    ) -> Snapshot:
        """An ELF core of `pid` that gdb reads, written from a VA clone (or a copy made while frozen).

        Without a `clone_method`, a mini core takes whichever method stops the process less (mini_method), any
        other core a VA clone. A file is sparse:
        all-zero pages are holes (into a container's directory too: the file is the same, only its directory is
        found otherwise). An fd (`path` an int: a pipe, a socket) or a compressed file is a stream, written front to
        back: zero pages are written (compressed to almost nothing), and the headers come first, their note holding
        the model as it was before the copy.
        """
        from pss_cli import outfile

        method = clone_method or (mini_method(pid) if selection.mini else "clone")
        if method not in CLONE_METHODS:
            raise UsageError(f"unknown clone method {method!r}; known: {', '.join(CLONE_METHODS)}")
        if compress is not None and compress not in COMPRESSIONS:
            raise UsageError(f"unknown compression {compress!r}; known: {', '.join(COMPRESSIONS)}")
        where: dict[str, Any] = {}
        if into_container and not isinstance(path, int):  # api.dump refuses a stream into a container
            where = container_output(pid, os.fspath(path))
        if isinstance(path, int) or compress is not None:
            return self._dump_stream(pid, path, force, timeout, method, progress, compress, written, selection, where)
        with outfile.OutputFile(path, force=force, pid=pid, **where) as out:
            with _write_errors(pid, out, others=False):  # --clone-method copy writes the memory while frozen
                snap = capture(
                    pid,
                    DUMP_FLAGS,
                    timeout=timeout,
                    clone_method=method,
                    progress=progress,
                    dump_fd=out.fd,
                    selection=selection,
                )
            started = time.perf_counter()
            with snap, _write_errors(pid, out):
                model = snap.write_core(out.fd, sparse=True)
            seconds = time.perf_counter() - started
            st = os.fstat(out.fd)  # the file itself: its name may lie in a container's root
        if written is not None:
            written(DumpOutput(st.st_size, st.st_size, st.st_blocks * 512, None, False, _copy_seconds(model, seconds)))
        return model

    def _dump_stream(
        self,
        pid: int,
        path: str | os.PathLike[str] | int,
        force: bool,
        timeout: float,
        clone_method: str,
        progress: ProgressCallback | None,
        compress: str | None,
        written: Callable[[DumpOutput], None] | None,
        selection: DumpSelection,
        where: dict[str, Any],
    ) -> Snapshot:
        """`dump` into a stream: an fd, or a file written front to back through a compressor (`where`: the
        OutputFile arguments of a file in a container's root)."""
        from pss_cli import compress as compression
        from pss_cli import outfile
        from pss_cli.platform.linux import copyengine

        with contextlib.ExitStack() as stack:
            out: outfile.OutputFile | _Written
            if isinstance(path, int):
                out = _Written("the output stream", path)
            else:
                out = stack.enter_context(outfile.OutputFile(path, force=force, pid=pid, **where))
            stream = copyengine.Stream(out.fd, compression.compressor(compress) if compress else None)
            stack.callback(stream.close)
            snap = stack.enter_context(
                capture(
                    pid, DUMP_FLAGS, timeout=timeout, clone_method=clone_method, progress=progress, selection=selection
                )
            )
            started = time.perf_counter()
            with _write_errors(pid, out):
                model = snap.write_stream(stream)
            seconds = time.perf_counter() - started
            allocated = None if isinstance(path, int) else os.fstat(out.fd).st_blocks * 512
        if written is not None:
            written(
                DumpOutput(stream.core_bytes, stream.written, allocated, compress, True, _copy_seconds(model, seconds))
            )
        return model

    def dump_held(
        self, pid: int, handle: int, path: str | os.PathLike[str], *, force: bool, timeout: float
    ) -> Snapshot:
        """Write the snapshot that `pid` holds as fd `handle` into a core file; nothing is stopped."""
        from pss_cli import outfile
        from pss_cli.platform.linux import copyengine, inject, memfd

        if pid == os.getpid():
            local = os.dup(handle)
        else:
            with os_errors(pid, "read the snapshot handle"):
                local = inject.get_remote_fd(pid, handle)
        try:
            model = memfd.read_snapshot_fd(local, label=f"fd {handle} of process {pid}")
            with outfile.OutputFile(path, force=force, pid=pid) as out, _write_errors(pid, out):
                copyengine.copy_file(local, out.fd)
            return model
        finally:
            os.close(local)

    def plan_capture(self, pid: int, flags: CaptureFlags) -> CapturePlan:
        return plan_capture(pid, flags)

    def watch(self, pid: int, attach: AttachSpec | None = None, wake: Callable[[], None] | None = None) -> ProcWatch:
        from pss_cli.platform.linux.watching import ProcWatch

        return ProcWatch(pid, attach, wake)

    def duplicate(
        self,
        snapshot: LocalSnapshot | CapturePlan | None,
        source_pid: int,
        source_handle: int | None,
        target_pid: int,
        *,
        close_source: bool,
        inherit: bool,
        dry_run: bool,
        force: bool,
        timeout: float,
    ) -> DuplicateResult:
        from pss_cli.platform.linux import access, inject

        access.require_supported_arch()
        access_used = [AccessUse(pid=target_pid, role="target", names=PUSH_ACCESS)]
        actions: list[str] = []
        local_fd: int | None = None
        owned = False
        warnings: tuple[str, ...] = ()
        try:
            if isinstance(snapshot, CapturePlan):
                if not dry_run:
                    raise UsageError("a capture plan stands for a snapshot in a dry run only; capture first")
                access_used.insert(0, snapshot.access)
                actions.extend(snapshot.actions)
                warnings = snapshot.warnings
            elif snapshot is not None:
                access_used.insert(0, AccessUse(pid=source_pid, role="source", names=CAPTURE_ACCESS))
                if dry_run:
                    actions.append(f"build a sealed memfd snapshot of process {source_pid}")
                else:
                    local_fd = snapshot.handle()
            else:
                assert source_handle is not None
                access_used.insert(
                    0, AccessUse(pid=source_pid, role="source", names=("PTRACE_MODE_ATTACH_REALCREDS (pidfd_getfd)",))
                )
                with os_errors(source_pid, "read the snapshot handle"):
                    local_fd = inject.get_remote_fd(source_pid, source_handle)
                owned = True
                snapshot_check(source_pid, source_handle)(local_fd)
                actions.append(f"checked fd {source_handle} of process {source_pid}: a sealed pss-dup snapshot")
            closing = close_source and source_handle is not None
            if dry_run:
                with os_errors(target_pid, "duplicate"):
                    actions.extend(inject.dry_run_push(target_pid, force=force))
                if closing:
                    assert source_handle is not None
                    with os_errors(source_pid, "close the source handle"):
                        actions.extend(inject.dry_run_close(source_pid, source_handle, force=force))
                return DuplicateResult(
                    source_pid=source_pid,
                    target_pid=target_pid,
                    target_handle=None,
                    access=tuple(access_used),
                    source_closed=False,
                    inherit=inherit,
                    dry_run=True,
                    target_stopped_ms=None,
                    actions=tuple(actions),
                    warnings=warnings,
                )
            assert local_fd is not None
            if closing:  # refuse before the target is changed what would be refused after (EINTR hazard, seccomp)
                assert source_handle is not None
                with os_errors(source_pid, "close the source handle"):
                    inject.dry_run_close(source_pid, source_handle, force=force)
            with os_errors(target_pid, "duplicate"):
                pushed = inject.push_fd(target_pid, local_fd, cloexec=not inherit, force=force, timeout=timeout)
            actions.append(f"installed fd {pushed.fd} in process {target_pid}")
            closed = False
            if closing:
                assert source_handle is not None
                try:
                    with os_errors(source_pid, "close the source handle"):
                        inject.close_remote_fd(
                            source_pid,
                            source_handle,
                            verify=snapshot_check(source_pid, source_handle),
                            force=force,
                            timeout=timeout,
                        )
                except PssError as exc:  # the push stands: say so, or the caller would think nothing changed
                    exc.args = (f"{exc}; process {target_pid} already received the snapshot as fd {pushed.fd}",)
                    raise
                except KeyboardInterrupt:
                    raise Interrupted(
                        f"interrupted before fd {source_handle} of process {source_pid} was closed; "
                        f"process {target_pid} already received the snapshot as fd {pushed.fd}",
                        pid=source_pid,
                    ) from None
                closed = True
                actions.append(f"closed fd {source_handle} in process {source_pid} (PSS_DUPLICATE_CLOSE_SOURCE)")
            return DuplicateResult(
                source_pid=source_pid,
                target_pid=target_pid,
                target_handle=pushed.fd,
                access=tuple(access_used),
                source_closed=closed,
                inherit=inherit,
                dry_run=False,
                target_stopped_ms=pushed.stopped_ms,
                actions=tuple(actions),
                warnings=(*pushed.warnings, *_free_needs_force(target_pid, pushed)),
                interruptions=pushed.interruptions,
            )
        finally:
            if owned and local_fd is not None:
                os.close(local_fd)

    def free(self, pid: int, handle: int, *, dry_run: bool, force: bool, timeout: float) -> FreeResult:
        from pss_cli.platform.linux import access, inject

        access.require_supported_arch()
        used = (AccessUse(pid=pid, role="holder", names=PUSH_ACCESS),)
        with os_errors(pid, "free"):
            if dry_run:
                local = inject.get_remote_fd(pid, handle)
                try:
                    snapshot_check(pid, handle)(local)
                finally:
                    os.close(local)
                actions = (
                    f"checked fd {handle} of process {pid}: a sealed pss-dup snapshot",
                    *inject.dry_run_close(pid, handle, force=force),
                )
                return FreeResult(pid=pid, handle=handle, access=used, dry_run=True, stopped_ms=None, actions=actions)
            closed = inject.close_remote_fd(
                pid, handle, verify=snapshot_check(pid, handle), force=force, timeout=timeout
            )
        return FreeResult(
            pid=pid,
            handle=handle,
            access=used,
            dry_run=False,
            stopped_ms=closed.stopped_ms,
            actions=(f"closed fd {handle} in process {pid}",),
            interruptions=closed.interruptions,
        )

    def inspect(self, pid: int, handle: int, *, timeout: float) -> Snapshot:
        if pid == os.getpid():
            return self.open_snapshot(handle)
        from pss_cli.platform.linux import inject, memfd

        with os_errors(pid, "read the snapshot handle"):
            local = inject.get_remote_fd(pid, handle)
        try:
            return memfd.read_snapshot_fd(local, label=f"fd {handle} of process {pid}")
        finally:
            os.close(local)

    def process_exists(self, pid: int) -> bool:
        return procfs.process_exists(pid)

    def live_processes(self) -> Iterator[LiveProcess]:
        for pid, name in procfs.live_processes():
            yield LiveProcess(pid, name)

    def list_processes(self, *, kernel_threads: bool = False) -> Iterator[ListedProcess]:
        return procfs.list_processes(kernel_threads=kernel_threads)

    def describe_process(self, pid: int) -> ListedProcess | None:
        return procfs.read_listed(pid)

    def locate(self, pid: int) -> ProcessLocation | None:
        return procfs.locate(pid)

    def container_of(self, pid: int) -> Container | None:
        return procfs.container_of(pid)

    def path_in_root(self, pid: int, path: str) -> str:
        return f"/proc/{pid}/root/{path.lstrip('/')}"

    def held_snapshots(self, pid: int) -> tuple[int, ...] | None:
        named = procfs.snapshot_fds(pid)
        if not named:
            return named  # unreadable, or nothing named like a snapshot: the snapshot reader need not even load
        from pss_cli.platform.linux import memfd

        return memfd.checked_snapshots(pid, named)

    def named_snapshots(self, pid: int) -> tuple[int, ...] | None:
        return procfs.snapshot_fds(pid)

    def handle_size(self, pid: int, handle: int) -> int | None:
        return procfs.fd_size(pid, handle)

    def enable_debug_privilege(self) -> bool:
        raise NotSupported(
            "--debug-privilege is a Windows option (SeDebugPrivilege); on Linux run as root or with CAP_SYS_PTRACE"
        )

    def open_snapshot(self, handle: int) -> Snapshot:
        from pss_cli.platform.linux import memfd

        try:
            return memfd.read_snapshot_fd(handle)
        except OSError as exc:
            raise AccessDenied(f"cannot read fd {handle}: {exc.strerror}") from exc

"""PSS_CAPTURE_VA_CLONE on Linux: a copy-on-write clone of the frozen process, and the memory sources built on it.

The clone is made by an injected `clone(flags=0)` in one thread of a process that FrozenProcess holds: exit signal 0
(no SIGCHLD, invisible to a plain wait()), no CLONE_VM (a copy-on-write copy of the whole address space), no
CLONE_FILES (its own copy of the fd table). The seized threads carry PTRACE_O_TRACECLONE, so the child is attached
to the same tracer thread at birth and starts in a ptrace-stop, before it has run one instruction.

It never runs one. It stays in that ptrace-stop, traced by the thread that froze its source, until it is killed:
no instruction of the program's code, and no system call that a seccomp filter or strict mode could see (the
injected ones run with PTRACE_O_SUSPEND_SECCOMP where the process has seccomp on). Right after its birth its core
size limit is set to 0 and PTRACE_O_EXITKILL is set, so a pss-dup that dies (SIGKILL, the OOM killer) takes the
clone with it and nothing, ever, writes a core in the program's name. Its fds are closed (close_range: pipes still
see EOF, flocks are released), it gets a session of its own (a signal to the program's process group or terminal
does not reach it), comm "pss-vaclone" and PR_SET_PDEATHSIG(SIGKILL). The source thaws right after: it was stopped
for the freeze and the clone's page-table copy, not for a copy of its memory.

Memory is then read from the clone while the source runs on. Afterwards the clone is killed through a pidfd held
since its birth, and reaped by an injected `wait4(pid, NULL, __WALL|WNOHANG)` in the source, so no zombie is left
in the source and no SIGCHLD reaches it. (The double-fork variant would leave the clone to init; on hosts whose
pid 1 does not reap orphans, as here, that is a zombie for good.) SIGINT, SIGTERM, SIGHUP and SIGPIPE end pss-dup
through that path (pss_cli.interrupts); what is left after a SIGKILL of pss-dup is the clone's zombie, no memory.

A process that an attached watch holds seized (attach.py) gets its clone from the watch's own tracer thread: the
freeze interrupts its threads there, the clone is born that thread's tracee and registered with the attachment
(whose serve loop then never resumes it), and its reaping is injected into a thread of the source frozen the same
way. The thread the watch holds in a signal-delivery-stop serves for the injection only when no other thread can:
its signal is then delivered as it came once it is let go (attach.Attachment.let_go). The tracer thread is the
watch's, so the clone's death goes with the watch's end, not with the dump's.

`CopyMemory` is the other method (`--clone-method copy`): the memory is copied while the process stays frozen, for
processes where injection is refused. It writes the memory into the snapshot memfd during the freeze at an offset
reserved for the headers.

Either way the headers are written last, once the copy is done and the clone ended: the PSSDUP note then holds the
copy time, the unreadable pages and the reaping stop as measured, never the defaults of a model not yet finished.
"""

from __future__ import annotations

import sys

# Linux only: this lets mypy --platform win32 skip the module instead of flagging Linux-only calls.
assert sys.platform == "linux"

import atexit
import contextlib
import dataclasses
import errno
import mmap
import os
import resource
import select
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Final

from pss_cli.errors import NoSuchProcess, OperationFailed, ProcessGone, PssError, Refused, Timeout
from pss_cli.model import KERNEL_DUMP, DumpSelection, MemoryCapture, Snapshot, VaRegion
from pss_cli.platform.linux import copyengine, dumprules, elfcore, inject, memfd, procfs, ptrace
from pss_cli.platform.linux.freeze import FrozenProcess, TracerSession, TracerThread, attachment_of, wait_stop
from pss_cli.platform.linux.inject import RED_ZONE, RemoteCalls, check

SYS_clone: Final = 56
SYS_wait4: Final = 61
SYS_kill: Final = 62
SYS_setsid: Final = 112
SYS_prctl: Final = 157
SYS_close_range: Final = 436
PR_SET_PDEATHSIG: Final = 1
PR_SET_NAME: Final = 15
CLONE_NAME: Final = b"pss-vaclone\0"
#: __WALL, under a name that class bodies do not mangle.
WAIT_ALL: Final = ptrace.__WALL

METHOD_CLONE: Final = "clone"
METHOD_COPY: Final = "copy"


# ---- the clone ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ClonePlan:
    """What the clone needs, read before the freeze so that the stop stays short."""

    pid: int
    tid: int
    syscall_ip: int
    suspend_seccomp: bool
    #: Where the child's comm can be written for PR_SET_NAME: below the red zone of the borrowed thread's stack.
    scratch_ok: Callable[[int, int], bool]
    warnings: tuple[str, ...]


def plan_clone(pid: int) -> ClonePlan:
    """Choose the thread and the `syscall` instruction for the clone (inject.plan_injection's choice)."""
    try:
        plan = inject.plan_injection(pid, force=True)
    except Refused as exc:
        raise Refused(
            f"{exc}; or copy the memory while the process is stopped, which injects nothing "
            "(`pss-dup dump --clone-method copy`)",
            pid=pid,
        ) from None
    try:
        site = plan.vdso_insn if plan.vdso_insn is not None else plan.libc_insn
        if site is None:
            site = inject.find_syscall_insn(pid, plan.maps, "libc")
        if site is None:
            raise Refused(
                f"process {pid} has no `syscall` instruction to borrow for the VA clone; use --clone-method copy",
                pid=pid,
            )
        return ClonePlan(
            pid=pid,
            tid=plan.tid,
            syscall_ip=site,
            suspend_seccomp=plan.suspend_seccomp,
            scratch_ok=plan.stack_scratch_ok,
            warnings=tuple(w for w in plan.warnings if "EINTR" not in w),
        )
    finally:
        plan.close()


@dataclasses.dataclass
class VaClone:
    """A held clone: its pid, a pidfd held since its birth, the tracer thread it stays stopped under, and what
    making it cost."""

    source_pid: int
    #: The clone's PID as pss-dup sees it, and as the source sees it (its parent: who reaps it with wait4).
    pid: int
    pid_in_source: int
    pidfd: int
    clone_ms: float
    hold_ms: float
    source_tid: int
    tracer: TracerThread
    warnings: list[str] = dataclasses.field(default_factory=list)
    #: Signals that reached the borrowed thread during the injection; re-sent once the process is thawed.
    stashed: list[ptrace.siginfo_t] = dataclasses.field(default_factory=list)
    alive: bool = True
    #: How long the reaping wait4 held one thread of the source.
    reap_stopped_ms: float | None = None
    #: The `syscall` instruction the clone was made with (an attached source's reaping borrows it too).
    syscall_ip: int = 0
    #: False when the tracer thread is an attached watch's: it outlives the clone.
    owns_tracer: bool = True

    def resend_stashed(self) -> None:
        resend(self.source_pid, self.source_tid, self.stashed)

    def kill_and_reap(self, *, timeout: float) -> None:
        """SIGKILL the clone (through its pidfd: no pid reuse), wait for its exit, reap it inside the source, and
        end its tracer thread.

        Runs in a TracerSession, which holds SIGINT/SIGTERM/SIGHUP back: a Ctrl-C now is raised once the clone is
        reaped, rather than leave a zombie in the source. A source that cannot be stopped any more (it exited, or
        another tracer took it) is a warning: the zombie is then its parent's, or init's, to reap.
        """
        if not self.alive:
            return
        with TracerSession(self.tracer) as session:
            try:
                session.call(lambda: self._end(timeout))
            finally:
                self.alive = False
                if self.owns_tracer:
                    self.tracer.close()  # should anything be left attached, EXITKILL ends it with the thread

    def _end(self, timeout: float) -> None:
        try:
            with contextlib.suppress(ProcessLookupError):  # already dead: still a zombie of the source to reap
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            _wait_exit(self.pidfd, timeout)
            # A traced child's exit goes to its tracer first (this thread); only then can the source reap it. (An
            # attached watch's serve loop may have taken it already: ECHILD.)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, WAIT_ALL)
        finally:
            os.close(self.pidfd)
            _forget_clone(self.source_pid, self.pid)  # before the source reaps it and its pid can be reused
        try:
            self.reap_stopped_ms = reap_in_source(
                self.source_pid, self.pid_in_source, timeout=timeout, warnings=self.warnings, syscall_ip=self.syscall_ip
            )
        except PssError as exc:
            self.warnings.append(f"the VA clone {self.pid} stays a zombie child of process {self.source_pid}: {exc}")


def _wait_exit(pidfd: int, timeout: float) -> None:
    """A pidfd polls readable once its process has exited (is a zombie); a 1 GiB clone takes a while to unmap."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    deadline = time.monotonic() + timeout
    while not poller.poll(max(1, int((deadline - time.monotonic()) * 1000))):
        if time.monotonic() >= deadline:
            raise Timeout(f"the VA clone did not exit within {timeout:g} s of SIGKILL")


def resend(pid: int, tid: int, stashed: list[ptrace.siginfo_t]) -> None:
    """Signals an injection stashed, sent again once the process runs (their sender's siginfo is not kept)."""
    for info in stashed:
        with contextlib.suppress(OSError):
            ptrace.tgkill(pid, tid, info.si_signo)
    stashed.clear()


def _forget_clone(source_pid: int, child: int) -> None:
    attachment = attachment_of(source_pid)
    if attachment is not None:
        attachment.clones.discard(child)


def reap_in_source(
    source_pid: int, child: int, *, timeout: float, warnings: list[str], syscall_ip: int = 0
) -> float | None:
    """Inject wait4(child, NULL, __WALL|WNOHANG, NULL) into the source (`child` is the PID the source knows it by):
    its dead clone leaves no zombie there.
    Returns how long the source's thread was held (None when the source is gone). A source an attached watch holds
    is frozen on the watch's tracer thread instead of one thread seized (`syscall_ip`: the clone's instruction)."""
    if attachment_of(source_pid) is not None:
        return _reap_attached(source_pid, child, timeout=timeout, warnings=warnings, syscall_ip=syscall_ip)
    try:
        plan = inject.plan_injection(source_pid, force=True)
    except NoSuchProcess:
        return None  # the source is gone (or a zombie): its children went to init or the nearest subreaper
    # Part of ending pss-dup cleanly: a Ctrl-C or SIGTERM pending now (the one being handled, or a second) must not
    # cut the wait for the source's thread short, or the clone would stay a zombie in the source.
    injector = inject.Injector(source_pid, timeout=timeout, force=True, plan=plan, interruptible=False)
    result = 0

    def steps() -> int:
        with injector:
            return _wait4(injector.syscall, child)

    try:
        with TracerSession() as session:
            result = session.call(steps)
    except NoSuchProcess:
        return None
    except OSError as exc:
        raise inject.typed_error(source_pid, exc, "reap the VA clone") from None
    finally:
        plan.close()
    _note_reaped(source_pid, child, result, warnings)
    warnings.extend(
        f"reaping the VA clone woke thread {i.tid} out of {i.call}, which returned EINTR to the process: {i.note}"
        for i in injector.interruptions
        if not i.restarted
    )
    return injector.stopped_ms


def _reap_attached(
    source_pid: int, child: int, *, timeout: float, warnings: list[str], syscall_ip: int
) -> float | None:
    """reap_in_source for a source an attached watch holds: a thread of it frozen by the watch's tracer (where this
    runs: the clone's end is a job of that thread) runs the wait4."""
    suspend = inject.needs_seccomp_suspended(source_pid)
    try:
        with FrozenProcess(source_pid, timeout=timeout, want_regs=False, want_fp=False, want_xstate=False) as frozen:
            tid = frozen.injection_thread(source_pid)
            if tid is None:
                warnings.append(
                    f"the VA clone {child} stays a zombie child of process {source_pid} (it holds no memory): each "
                    "of its threads is in its exit or stopped by job control, where no call can be injected"
                )
                return None
            plan = ClonePlan(source_pid, tid, syscall_ip, suspend, _no_scratch, ())
            assert frozen.attachment is not None
            options = frozen.attachment.options

            def steps() -> tuple[int, list[ptrace.siginfo_t]]:
                with _remote_calls(plan, options) as task:
                    return _wait4(task.syscall, child), task.stashed

            result, stashed = frozen.call(steps)
    except (NoSuchProcess, ProcessGone):
        return None  # the source is gone: its children went to init or the nearest subreaper
    resend(source_pid, tid, stashed)
    _note_reaped(source_pid, child, result, warnings)
    return frozen.stopped_ms


def _note_reaped(source_pid: int, child: int, result: int, warnings: list[str]) -> None:
    """A warning unless the injected wait4 returned the clone's pid."""
    if result == -errno.ECHILD:
        warnings.append(f"the VA clone {child} was already reaped by process {source_pid}")
    elif result != child:
        warnings.append(f"could not reap the VA clone {child} in process {source_pid} (wait4 returned {result})")


def _wait4(syscall: Callable[..., int], child: int) -> int:
    """wait4(child, NULL, __WALL|WNOHANG, NULL) run in the source until it reaps the zombie; its last result."""
    got = 0
    for _ in range(50):
        got = syscall(SYS_wait4, child, 0, ptrace.WNOHANG | ptrace.__WALL, 0)
        if got != 0:
            break
        time.sleep(0.001)  # the pidfd said it exited; wait() sees the zombie a moment later at most
    return got


def _no_scratch(start: int, rsp: int) -> bool:
    return False


def make_clone(frozen: FrozenProcess, plan: ClonePlan) -> VaClone:
    """Inject the clone into the frozen process and hold the child; on failure nothing is left behind. The freeze
    must run on a tracer thread that outlives it (FrozenProcess(tracer=...)): the clone stays traced by it."""
    assert frozen.tracer is not None, "the clone's tracer thread must outlive the freeze"
    deadline = time.monotonic() + frozen.timeout
    # The chosen thread may have exited meanwhile, or (attached) be held for the watch: another does as well.
    tid = frozen.injection_thread(plan.tid)
    if tid is None:
        raise ProcessGone(f"process {plan.pid} has no thread left to make the VA clone", pid=plan.pid)
    plan = dataclasses.replace(plan, tid=tid)
    tracer = frozen.tracer
    attachment = frozen.attachment
    options = attachment.options if attachment is not None else ptrace.PTRACE_O_TRACECLONE
    clones = attachment.clones if attachment is not None else None
    clone = frozen.call(lambda: _clone_on_tracer(tracer, plan, deadline, options, clones))
    clone.owns_tracer = attachment is None
    return clone


@contextlib.contextmanager
def _remote_calls(plan: ClonePlan, options_after: int) -> Iterator[RemoteCalls]:
    """Calls injected into frozen thread plan.tid (on its tracer thread), with the options a clone needs meanwhile;
    its registers, and then `options_after`, put back."""
    pid, tid = plan.pid, plan.tid
    options = ptrace.PTRACE_O_TRACECLONE | ptrace.PTRACE_O_TRACEFORK | ptrace.PTRACE_O_TRACEVFORK
    if plan.suspend_seccomp:
        options |= ptrace.PTRACE_O_SUSPEND_SECCOMP
    peek = tid == pid and procfs.parent_of(pid) == os.getpid()
    ptrace.ptrace(ptrace.PTRACE_SETOPTIONS, tid, 0, options)
    try:
        task = RemoteCalls(pid, tid, syscall_ip=plan.syscall_ip, peek_exit=peek)
        try:
            yield task
        finally:
            task.restore()
    finally:
        ptrace.ptrace(ptrace.PTRACE_SETOPTIONS, tid, 0, options_after)


def _clone_on_tracer(
    tracer: TracerThread, plan: ClonePlan, deadline: float, options_after: int, clones: set[int] | None
) -> VaClone:
    with _remote_calls(plan, options_after) as task:
        return _clone_and_hold(task, tracer, plan, deadline, clones)


def _clone_and_hold(
    task: RemoteCalls, tracer: TracerThread, plan: ClonePlan, deadline: float, clones: set[int] | None
) -> VaClone:
    """`clones`: an attached watch's set, which the child joins at once (by the PID its tracer sees), before its
    serve loop can see it."""
    child = in_source = 0
    try:
        started = time.perf_counter()
        in_source = check(task.syscall(SYS_clone, 0, 0, 0, 0, 0), "clone")
        clone_ms = (time.perf_counter() - started) * 1000
        # clone() answers with the PID in the source's namespace, which is another process's PID here when the
        # source lives in a PID namespace below ours (a container): every call of ours takes the PID we see.
        child = task.new_task or 0
        if child <= 0:
            raise OperationFailed(f"the VA clone {in_source} of process {plan.pid} was not reported to its tracer")
        if clones is not None:
            clones.add(child)
        with contextlib.suppress(OSError):  # first of all: whatever happens to it, the clone writes no core
            resource.prlimit(child, resource.RLIMIT_CORE, (0, 0))
        pidfd = ptrace.pidfd_open(child)
        try:
            started = time.perf_counter()
            warnings = _hold(child, plan, deadline)
            hold_ms = (time.perf_counter() - started) * 1000
        except BaseException:
            os.close(pidfd)
            raise
    except BaseException:
        if in_source > 0:
            try:
                _discard_child(task, child, in_source)
            finally:
                if clones is not None:
                    clones.discard(child)
        raise
    return VaClone(
        plan.pid,
        child,
        in_source,
        pidfd,
        clone_ms,
        hold_ms,
        plan.tid,
        tracer,
        [*plan.warnings, *warnings],
        task.stashed,
        syscall_ip=plan.syscall_ip,
    )


def _hold(child: int, plan: ClonePlan, deadline: float) -> list[str]:
    """The child sits in its first ptrace-stop: tie its life to our tracer thread, drop its fds, take it out of the
    program's session, name it; it stays in a ptrace-stop, having run no instruction of its own."""
    status = wait_stop(child, child, deadline)
    if ptrace.stop_event(status) != ptrace.PTRACE_EVENT_STOP:
        raise OperationFailed(f"the VA clone {child} did not start in a ptrace-stop (status {status:#x})")
    options = ptrace.PTRACE_O_EXITKILL  # should pss-dup die, the clone dies too rather than run the program
    if plan.suspend_seccomp:
        options |= ptrace.PTRACE_O_SUSPEND_SECCOMP
    ptrace.ptrace(ptrace.PTRACE_SETOPTIONS, child, 0, options)
    task = RemoteCalls(child, child, syscall_ip=plan.syscall_ip)
    if task.saved.rax != 0:
        raise OperationFailed(f"the VA clone {child} does not look like a fresh clone (rax={task.saved.rax:#x})")
    warnings: list[str] = []
    closed = task.syscall(SYS_close_range, 0, 0xFFFFFFFF, 0)
    if closed < 0:
        warnings.append(f"the VA clone could not close its fds (close_range: {os.strerror(-closed)})")
    task.syscall(SYS_setsid)
    rsp = task.saved.rsp
    scratch = (rsp - RED_ZONE - 32) & ~15
    if plan.scratch_ok(scratch, rsp):
        with contextlib.suppress(OSError):
            original = ptrace.process_vm_readv(child, scratch, len(CLONE_NAME))
            try:
                ptrace.process_vm_writev(child, scratch, CLONE_NAME)
                task.syscall(SYS_prctl, PR_SET_NAME, scratch)
            finally:  # the clone's image is what the core holds: it stays the source's, byte for byte
                ptrace.process_vm_writev(child, scratch, original)
    task.syscall(SYS_prctl, PR_SET_PDEATHSIG, signal.SIGKILL)
    task.restore()
    return warnings


def _discard_child(task: RemoteCalls, child: int, in_source: int) -> None:
    """A clone that could not be held: kill it, collect it as its tracer, reap it in the (still frozen) source.

    `child` is its PID as we see it (0 if never reported: the source then kills it), `in_source` as the source
    sees it."""
    if child > 0:
        with contextlib.suppress(OSError):
            os.kill(child, signal.SIGKILL)
        with contextlib.suppress(OSError, PssError):
            while True:
                got, _ = os.waitpid(child, ptrace.__WALL)
                if got == child:
                    break
    else:
        with contextlib.suppress(OSError, PssError):
            task.syscall(SYS_kill, in_source, signal.SIGKILL)
    with contextlib.suppress(OSError, PssError):
        task.syscall(SYS_wait4, in_source, 0, ptrace.__WALL, 0)


# ---- memory sources --------------------------------------------------------------------------------------------


class MemoryGrab:
    """Where a snapshot's memory comes from, through the steps of a capture.

    `during_freeze` runs inside FrozenProcess; `after_thaw` fills the model (regions' `dumped`, `memory`);
    `build_snapshot` makes the sealed memfd; `write_file` writes the core into an output file; `release` ends
    whatever the grab still holds (the clone). Every path ends in `release`.

    The memory always goes in before the headers: the PSSDUP note is rendered from the model once the copy is
    done (and the clone reaped), so it carries what they measured, and equals the model the caller reports.
    """

    method: str = ""
    #: The tracer thread the freeze must run on, when the grab keeps something traced past the thaw (the clone).
    tracer: TracerThread | None = None

    def __init__(
        self,
        pid: int,
        *,
        timeout: float,
        progress: copyengine.Progress | None,
        selection: DumpSelection = KERNEL_DUMP,
    ) -> None:
        self.pid = pid
        self.timeout = timeout
        self.progress = progress
        self.selection = selection
        self.core_filter = core_filter_for(pid, selection)
        #: A mini core finds the loader's data through the auxiliary vector, read before the freeze.
        self.auxv = _read_auxv(pid) if selection.mini else None
        self.plan: dumprules.MemoryPlan | None = None
        self.stats: copyengine.CopyStats | None = None
        self.warnings: list[str] = []

    @property
    def smaps_before_freeze(self) -> bool:
        """Whether the capture reads smaps (VmFlags) before the freeze for this grab, not afterwards or during it:
        a frozen mini copy needs them while the process is stopped, and must not pay for the page walk then."""
        return False

    def before_freeze(self, va_space: Sequence[VaRegion]) -> None:
        """The memory map as read before the freeze (with smaps when smaps_before_freeze): whatever can be worked
        out from it alone is, so that the freeze does not wait for it."""

    def plan_for(
        self,
        regions: Sequence[VaRegion],
        memory_pid: int,
        threads: Sequence[tuple[int, int]],
        *,
        clone: bool,
        rules: Sequence[dumprules.Rule] | None = None,
    ) -> dumprules.MemoryPlan:
        """The pages the core takes: a mini core's, or the kernel's rules with this dump's filter. `threads` holds
        each thread's (stack pointer, thread pointer), which a mini core needs; `rules` its mini_rules when they
        were worked out beforehand."""
        if self.selection.mini:
            return dumprules.plan_mini(
                regions,
                memory_pid,
                threads,
                self.auxv,
                stack_limit=self.selection.stack_limit,
                clone=clone,
                rules=rules,
            )
        shared = self.pid if clone else None
        return dumprules.plan_memory(regions, memory_pid, shared_pid=shared, clone=clone, core_filter=self.core_filter)

    def during_freeze(self, frozen: FrozenProcess, va_space: Sequence[VaRegion] | None) -> None:
        raise NotImplementedError

    def after_thaw(self, model: Snapshot) -> Snapshot:
        raise NotImplementedError

    def build_snapshot(self, model: Snapshot, auxv: bytes | None) -> tuple[int, Snapshot]:
        """The sealed memfd, and the model its note holds."""
        return _sealed(memfd.create_unsealed(), lambda fd: self.write_file(fd, model, auxv))

    def write_file(self, fd: int, model: Snapshot, auxv: bytes | None, *, sparse: bool = False) -> Snapshot:
        """Write the whole core into `fd` (an empty file; with `sparse`, all-zero pages stay holes); the model its
        note holds."""
        raise NotImplementedError

    def write_stream(self, stream: copyengine.Stream, model: Snapshot, auxv: bytes | None) -> Snapshot:
        """Write the whole core into `stream`, front to back; the model as finally measured. Here: the sealed
        snapshot first, then streamed."""
        return self._via_snapshot(model, auxv, lambda source: copyengine.stream_file(source, stream))

    def _via_snapshot(self, model: Snapshot, auxv: bytes | None, send: Callable[[int], object]) -> Snapshot:
        """Build the sealed snapshot, `send` its fd on, close it; the model its note holds."""
        source, model = self.build_snapshot(model, auxv)
        try:
            send(source)
        finally:
            os.close(source)
        return model

    def release(self) -> None:
        pass

    def reap_stopped_ms(self) -> float | None:
        return None

    def _finished(self, model: Snapshot) -> Snapshot:
        """The model once the memory is copied: its copy time, unreadable pages, and any warnings added."""
        extra = tuple(w for w in self.warnings if w not in model.warnings)
        if self.stats is not None and model.memory is not None:
            done = dataclasses.replace(
                model.memory,
                copy_ms=self.stats.seconds * 1000,
                failed_pages=self.stats.failed_pages,
                reap_stopped_ms=self.reap_stopped_ms(),
            )
            model = dataclasses.replace(model, memory=done)
        return dataclasses.replace(model, warnings=(*model.warnings, *extra)) if extra else model

    def _write_head(self, fd: int, model: Snapshot, auxv: bytes | None, data_offset: int) -> Snapshot:
        """Put the headers and notes of the finished model in front of the memory already at `data_offset`, and size
        the file; the model they hold."""
        model = self._finished(model)
        layout = elfcore.plan_core(model, auxv, self.segments, data_offset=data_offset)
        first = next((p.offset for p in layout.loads if p.segment.filesz), data_offset)
        if first != data_offset:
            raise OperationFailed(
                f"the snapshot's headers ({len(layout.head)} bytes) outgrew the room reserved for them "
                f"({data_offset} bytes); capture again"
            )
        copyengine.size_file(fd, layout.size)
        copyengine.pwrite_all(fd, layout.head, 0)
        return model

    @property
    def segments(self) -> tuple[elfcore.LoadSegment, ...]:
        assert self.plan is not None
        return self.plan.segments

    def _finish_model(self, model: Snapshot, regions: Sequence[VaRegion], clone_pid: int | None) -> Snapshot:
        plan = self.plan
        assert plan is not None
        selection = self.selection
        kernel = not selection.mini and not selection.all_memory
        capture = MemoryCapture(
            method=self.method,
            bytes_captured=plan.total,
            regions=plan.regions_dumped,
            clone_pid=clone_pid,
            selection="mini" if selection.mini else "all" if selection.all_memory else "kernel",
            filter=self.core_filter.mask if kernel else None,
            filter_source=self.core_filter.source if kernel else None,
            stack_limit=selection.stack_limit if selection.mini else None,
        )
        va_space = model.va_space
        if va_space is not None:
            dumped = {(r.base, r.size): d for r, d in zip(regions, plan.dumped, strict=True)}
            va_space = tuple(dataclasses.replace(r, dumped=dumped.get((r.base, r.size), 0)) for r in va_space)
        return dataclasses.replace(model, va_space=va_space, memory=capture, warnings=(*model.warnings, *self.warnings))

    def _note_failures(self, stats: copyengine.CopyStats) -> None:
        self.stats = stats
        if stats.failed_pages:
            self.warnings.append(f"{stats.failed_pages} pages could not be read and are zero in the core")


class CloneMemory(MemoryGrab):
    """The default: a VA clone made during the freeze; memory is read from it after the thaw."""

    method = "va-clone"

    def __init__(
        self,
        pid: int,
        *,
        timeout: float,
        progress: copyengine.Progress | None,
        selection: DumpSelection = KERNEL_DUMP,
    ) -> None:
        super().__init__(pid, timeout=timeout, progress=progress, selection=selection)
        self.clone_plan = plan_clone(pid)  # before the freeze: maps, the syscall site
        self.clone: VaClone | None = None
        self.regions: tuple[VaRegion, ...] = ()
        attachment = attachment_of(pid)
        #: An attached watch's tracer thread is the clone's (the freeze runs there); it is not ours to end.
        self._owns_tracer = attachment is None
        self.tracer = TracerThread.start() if attachment is None else attachment.tracer
        _unreleased.add(self)

    def during_freeze(self, frozen: FrozenProcess, va_space: Sequence[VaRegion] | None) -> None:
        self.clone = make_clone(frozen, self.clone_plan)
        frozen.release_acting = True  # the clone holds the state: a watched signal need not wait for the copy

    def after_thaw(self, model: Snapshot) -> Snapshot:
        clone = self.clone
        assert clone is not None
        clone.resend_stashed()
        self.warnings.extend(clone.warnings)
        regions = clone_regions(clone.pid, model.va_space)
        self.plan = self.plan_for(regions, clone.pid, model_pointers(model), clone=True)
        self.regions = regions
        if model.va_space is not None:
            model = dataclasses.replace(model, va_space=_with_figures(model.va_space, regions, model))
        performance = dataclasses.replace(model.performance, va_clone_ms=clone.clone_ms)
        return self._finish_model(dataclasses.replace(model, performance=performance), regions, clone.pid)

    def write_file(self, fd: int, model: Snapshot, auxv: bytes | None, *, sparse: bool = False) -> Snapshot:
        """The memory first, read from the clone behind room left for the headers; then the clone is ended; then
        the headers, whose note carries what the copy and the reaping measured."""
        data_offset = head_room(elfcore.plan_core(model, auxv, self.segments))
        layout = elfcore.plan_core(model, auxv, self.segments, data_offset=data_offset)
        try:
            stats = copyengine.write_pieces_fd(
                fd, layout.size, copyengine.pieces_of(layout), self._clone_pid(), progress=self.progress, sparse=sparse
            )
        finally:
            self.release()
        self._note_failures(stats)
        return self._write_head(fd, model, auxv, data_offset)

    def write_stream(self, stream: copyengine.Stream, model: Snapshot, auxv: bytes | None) -> Snapshot:
        """Straight from the clone, headers first: a stream cannot go back to them. Their note therefore holds the
        model as it was before the copy (no copy time, unreadable pages or reaping stop yet); the model returned has
        them."""
        model = self._finished(model)
        layout = elfcore.plan_core(model, auxv, self.segments)
        try:
            stats = copyengine.stream_core(stream, layout, self._clone_pid(), progress=self.progress)
        finally:
            self.release()
        self._note_failures(stats)
        return self._finished(model)

    def reap_stopped_ms(self) -> float | None:
        return self.clone.reap_stopped_ms if self.clone is not None else None

    def _clone_pid(self) -> int:
        assert self.clone is not None and self.clone.alive
        return self.clone.pid

    def release(self) -> None:
        _unreleased.discard(self)
        clone = self.clone
        try:
            if clone is not None and clone.alive:
                clone.kill_and_reap(timeout=self.timeout)
                self.warnings.extend(w for w in clone.warnings if w not in self.warnings)
        finally:
            if self.tracer is not None and self._owns_tracer:
                self.tracer.close()  # no clone was made (or it is ended): nothing is left attached to it


def _sealed(fd: int, fill: Callable[[int], Snapshot]) -> tuple[int, Snapshot]:
    """Complete the core in memfd `fd` (`fill` returns the model its note holds) and seal it; closed on failure."""
    try:
        model = fill(fd)
        memfd.seal(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd, model


#: Clone grabs not released yet. A termination signal that lands between two statements of a caller (after the
#: capture returned, before its `with`) still ends in `release`: interpreter exit releases what is left, so the
#: source is not left with the clone's zombie.
_unreleased: set[CloneMemory] = set()


@atexit.register
def _release_left_over() -> None:
    for grab in list(_unreleased):
        with contextlib.suppress(Exception):
            grab.release()


class CopyMemory(MemoryGrab):
    """`--clone-method copy`: the memory is copied while the process is frozen, straight into its destination: the
    snapshot memfd, or with `dest_fd` the output file of a dump (headers follow once the model is complete)."""

    method = "frozen-copy"

    def __init__(
        self,
        pid: int,
        *,
        timeout: float,
        progress: copyengine.Progress | None,
        dest_fd: int | None = None,
        selection: DumpSelection = KERNEL_DUMP,
    ) -> None:
        super().__init__(pid, timeout=timeout, progress=progress, selection=selection)
        self.fd: int | None = None
        self.dest_fd = dest_fd
        self.data_offset = 0
        self.regions: tuple[VaRegion, ...] = ()

    def during_freeze(self, frozen: FrozenProcess, va_space: Sequence[VaRegion] | None) -> None:
        regions = tuple(va_space or ())
        if not regions or regions[0].vm_flags is None:
            with procfs.ProcDir(self.pid) as proc:
                regions = procfs.read_va_space(proc, section_info=True)
        self.regions = regions
        self.plan = self.plan_for(regions, self.pid, frozen_pointers(frozen), clone=False)
        self._copy_planned(frozen)

    def _copy_planned(self, frozen: FrozenProcess) -> None:
        """Copy what the plan names into the destination, behind room reserved for the headers."""
        assert self.plan is not None
        self.data_offset = reserve_for_head(frozen, self.regions, self.plan)
        self.fd = memfd.create_unsealed() if self.dest_fd is None else self.dest_fd
        pieces = []
        offset = self.data_offset
        for seg in self.plan.segments:
            if seg.filesz:
                pieces.append(copyengine.Piece(seg.vaddr, seg.filesz, offset, force=not seg.flags & elfcore.PF_R))
                offset += seg.filesz
        self._note_failures(
            copyengine.write_pieces_fd(
                self.fd, offset, pieces, self.pid, progress=self.progress, sparse=self.dest_fd is not None
            )
        )

    def after_thaw(self, model: Snapshot) -> Snapshot:
        return self._finish_model(model, self.regions, None)

    def build_snapshot(self, model: Snapshot, auxv: bytes | None) -> tuple[int, Snapshot]:
        fd, self.fd = self.fd, None  # the memfd the frozen copy filled: the caller's from now on
        assert fd is not None and fd != self.dest_fd
        return _sealed(fd, lambda fd: self._write_head(fd, model, auxv, self.data_offset))

    def write_file(self, fd: int, model: Snapshot, auxv: bytes | None, *, sparse: bool = False) -> Snapshot:
        if fd == self.dest_fd:  # the memory is already in place: only the headers are missing
            return self._write_head(fd, model, auxv, self.data_offset)
        return self._via_snapshot(model, auxv, lambda source: copyengine.copy_file(source, fd))

    def release(self) -> None:
        if self.fd is not None and self.fd != self.dest_fd:
            os.close(self.fd)
        self.fd = None


#: The most a mini core copies into pss-dup's own memory; more (deep stacks in many threads) goes straight to the
#: destination, as a full frozen copy does.
MINI_BUFFER: Final = 64 << 20


class MiniCopy(CopyMemory):
    """A mini core copied while the process is frozen, into a buffer of pss-dup's own (its pages come to a few
    hundred KiB to a few MiB), and laid out once the process runs again with headers of their exact size.

    For that little memory this stops the process less than a VA clone, whose page-table copy grows with the
    process (bench/bench_dump.py: ~2 ms against 22-50 ms for 1 GiB). VmFlags are read before the freeze, so the
    freeze pays for no page walk. A plan larger than MINI_BUFFER is copied as CopyMemory copies.
    """

    def __init__(
        self,
        pid: int,
        *,
        timeout: float,
        progress: copyengine.Progress | None,
        dest_fd: int | None,
        selection: DumpSelection,
    ) -> None:
        super().__init__(pid, timeout=timeout, progress=progress, dest_fd=dest_fd, selection=selection)
        self.buffer: mmap.mmap | None = None
        self._early: tuple[Sequence[VaRegion], tuple[dumprules.Rule, ...]] | None = None

    @property
    def smaps_before_freeze(self) -> bool:
        return True

    def before_freeze(self, va_space: Sequence[VaRegion]) -> None:
        self._early = (va_space, dumprules.mini_rules(va_space, self.pid, clone=False))

    def during_freeze(self, frozen: FrozenProcess, va_space: Sequence[VaRegion] | None) -> None:
        regions = tuple(va_space or ())
        if not regions:
            with procfs.ProcDir(self.pid) as proc:
                regions = procfs.read_va_space(proc, section_info=False)
        self.regions = regions
        # The map is unchanged since it was read before the freeze (the capture compared it): its rules still hold.
        rules = self._early[1] if self._early is not None and self._early[0] is va_space else None
        self.plan = self.plan_for(regions, self.pid, frozen_pointers(frozen), clone=False, rules=rules)
        if self.plan.total > MINI_BUFFER:
            self._copy_planned(frozen)
            return
        size = max(self.plan.total, copyengine.PAGE_SIZE)
        self.buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | copyengine.MAP_POPULATE)
        pieces, offset = [], 0
        for seg in self.plan.segments:
            if seg.filesz:
                pieces.append(copyengine.Piece(seg.vaddr, seg.filesz, offset, force=not seg.flags & elfcore.PF_R))
                offset += seg.filesz
        with copyengine.MappedSink(self.buffer) as sink:
            self._note_failures(copyengine.copy_pieces(self.pid, pieces, sink))

    def build_snapshot(self, model: Snapshot, auxv: bytes | None) -> tuple[int, Snapshot]:
        if self.buffer is None:
            return super().build_snapshot(model, auxv)
        return _sealed(memfd.create_unsealed(), lambda fd: self.write_file(fd, model, auxv))

    def write_file(self, fd: int, model: Snapshot, auxv: bytes | None, *, sparse: bool = False) -> Snapshot:
        """Headers, notes and the buffered pages, each PT_LOAD's bytes at its place."""
        if self.buffer is None:
            return super().write_file(fd, model, auxv, sparse=sparse)
        model = self._finished(model)
        layout = elfcore.plan_core(model, auxv, self.segments)
        copyengine.size_file(fd, layout.size)
        copyengine.pwrite_all(fd, layout.head, 0)
        position = 0
        with memoryview(self.buffer) as view:
            for placed in layout.loads:
                size = placed.segment.filesz
                if size:
                    with view[position : position + size] as part:
                        copyengine.pwrite_all(fd, part, placed.offset)
                    position += size
        return model

    def release(self) -> None:
        try:
            if self.buffer is not None:
                self.buffer.close()
                self.buffer = None
        finally:
            super().release()


def reserve_for_head(frozen: FrozenProcess, regions: Sequence[VaRegion], plan: dumprules.MemoryPlan) -> int:
    """Room for the ELF headers and notes, written after the thaw once the model is complete: a generous bound
    (unused room is a hole in the memfd and costs nothing)."""
    threads = len(frozen.tids)
    xstate = max((len(r.xstate or b"") for r in frozen.regs.values()), default=0)
    try:
        environ = os.stat(f"/proc/{frozen.pid}/environ").st_size or 64 * 1024
    except OSError:
        environ = 64 * 1024
    try:
        handles = len(os.listdir(f"/proc/{frozen.pid}/fd"))
    except OSError:
        handles = 1024
    estimate = (
        64
        + elfcore.PHDR.size * (len(plan.segments) + 2)
        + threads * (2 * xstate + 8 * 1024)
        + handles * 2 * 1024
        + len(regions) * 3 * 1024
        + 4 * environ
    )
    return _page_align(2 * estimate + (1 << 20))


#: Room left after the headers of a clone's core, rendered before its copy, for what the copy and the clone's end
#: add to the note: three measured figures and a few lines of warnings. Unused room is a hole: it costs nothing.
HEAD_SLACK: Final = 64 * 1024


def head_room(layout: elfcore.CoreLayout) -> int:
    """Where the memory of a core starts when its headers are written after the copy: behind the headers as
    rendered before it, with HEAD_SLACK to spare."""
    return _page_align(len(layout.head) + HEAD_SLACK)


def _page_align(value: int) -> int:
    return (value + copyengine.PAGE_SIZE - 1) // copyengine.PAGE_SIZE * copyengine.PAGE_SIZE


def clone_regions(clone_pid: int, source: Sequence[VaRegion] | None) -> tuple[VaRegion, ...]:
    """The clone's memory map with smaps figures, read after the thaw (so the source's stop does not pay the page
    walk). Regions the source had and the clone lacks (MADV_DONTFORK) are kept from the source's map."""
    try:
        with procfs.ProcDir(clone_pid) as proc:
            mine = procfs.read_va_space(proc, section_info=True)
    except FileNotFoundError:
        raise ProcessGone(f"the VA clone {clone_pid} disappeared before its memory was read") from None
    if not source:
        return mine
    by_key = {(r.base, r.size): r for r in mine}
    return tuple(by_key.get((r.base, r.size), r) for r in source)


def _with_figures(va_space: Sequence[VaRegion], regions: Sequence[VaRegion], model: Snapshot) -> tuple[VaRegion, ...]:
    """The model's regions, with the clone's smaps figures when the capture asked for section information."""
    from pss_cli.model import CaptureFlags

    if not model.flags & CaptureFlags.VA_SPACE_SECTION_INFORMATION:
        return tuple(va_space)
    by_key = {(r.base, r.size): r for r in regions}
    out = []
    for r in va_space:
        figures = by_key.get((r.base, r.size))
        if figures is None or figures.vm_flags is None:
            out.append(r)
        else:
            out.append(
                dataclasses.replace(
                    r,
                    rss=figures.rss,
                    pss=figures.pss,
                    anonymous=figures.anonymous,
                    swap=figures.swap,
                    locked=figures.locked,
                    vm_flags=figures.vm_flags,
                )
            )
    return tuple(out)


def grab_for(
    method: str,
    pid: int,
    *,
    timeout: float,
    progress: copyengine.Progress | None = None,
    dest_fd: int | None = None,
    selection: DumpSelection = KERNEL_DUMP,
) -> MemoryGrab:
    """The memory source for a capture with PSS_CAPTURE_VA_CLONE; `dest_fd` is a dump's output file, which the
    frozen copy writes into directly; `selection` what memory it takes."""
    if method == METHOD_CLONE:
        return CloneMemory(pid, timeout=timeout, progress=progress, selection=selection)
    if method == METHOD_COPY and selection.mini:
        return MiniCopy(pid, timeout=timeout, progress=progress, dest_fd=dest_fd, selection=selection)
    if method == METHOD_COPY:
        return CopyMemory(pid, timeout=timeout, progress=progress, dest_fd=dest_fd, selection=selection)
    raise ValueError(f"unknown clone method {method!r}")


def core_filter_for(pid: int, selection: DumpSelection) -> dumprules.Filter:
    """The kernel's rules a dump applies: everything (--all-memory), the mask given (--filter), or the process's
    own coredump_filter."""
    if selection.all_memory:
        return dumprules.Filter(source="--all-memory", all_memory=True)
    if selection.filter is not None:
        return dumprules.Filter(selection.filter, "--filter")
    return dumprules.read_filter(pid)


def _read_auxv(pid: int) -> bytes | None:
    try:
        with procfs.ProcDir(pid) as proc:
            return procfs.read_auxv(proc)
    except FileNotFoundError:
        raise ProcessGone(f"process {pid} exited before it was captured", pid=pid) from None


_RSP = elfcore.X86_64_GPR_NAMES.index("rsp")
_FS_BASE = elfcore.X86_64_GPR_NAMES.index("fs_base")


def frozen_pointers(frozen: FrozenProcess) -> list[tuple[int, int]]:
    """(stack pointer, thread pointer) of each frozen thread whose registers were read."""
    out = []
    for regs in frozen.regs.values():
        values = elfcore.GPREGS.unpack_from(regs.gpr)
        out.append((values[_RSP], values[_FS_BASE]))
    return out


def model_pointers(model: Snapshot) -> list[tuple[int, int]]:
    """(stack pointer, thread pointer) of each thread of the model that has registers."""
    out = []
    for thread in model.threads or ():
        if thread.context is not None:
            registers = dict(thread.context.registers)
            out.append((registers.get("rsp", 0), registers.get("fs_base", 0)))
    return out

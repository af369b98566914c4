"""Stopping a whole process (`FrozenProcess`) or one of its threads (`seized_thread`) with ptrace, and letting go.

Three kernel rules shape this module:

* A tracee belongs to the tracer *thread*, and PTRACE_DETACH only works on a tracee that sits in a ptrace-stop. A
  thread stuck in an uninterruptible wait (D state, a vfork parent) never reaches its stop, so it can only be let go
  by the tracer thread exiting. Every operation therefore makes its ptrace requests on a short-lived thread of its
  own (`TracerThread`); when that thread ends, the kernel detaches whatever is still attached. No path leaves a
  tracer behind.
* Any ptrace-stop satisfies a pending PTRACE_INTERRUPT ("any trap clears pending STOP trap", kernel/signal.c). So a
  thread that first reports a signal-delivery-stop or a PTRACE_EVENT_CLONE stop is already frozen; it is kept in
  that stop and, for a signal, PTRACE_DETACH hands the signal back with its original siginfo.
* The tool must not die while a thread is seized: the kernel would detach it mid-injection. SIGINT, SIGTERM and
  SIGHUP are held back for the whole operation and delivered once every thread is restored (so Ctrl-C still ends
  the tool, with KeyboardInterrupt, after the target is whole again).
"""

from __future__ import annotations

import sys

# Linux only: this lets mypy --platform win32 skip the module instead of flagging Linux-only calls.
assert sys.platform == "linux"

import _thread
import contextlib
import ctypes
import errno
import os
import signal
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, Protocol, TypeVar

from pss_cli import interrupts
from pss_cli.errors import (
    Interrupted,
    NoSuchProcess,
    NotSupported,
    OperationFailed,
    ProcessGone,
    Refused,
    Timeout,
)
from pss_cli.model import Interruption
from pss_cli.platform.linux import access, procfs, ptrace, restart
from pss_cli.record import record

T = TypeVar("T")

#: Held back while anything is seized. SIGCHLD too, so that ptrace-stop notifications queue up for sigtimedwait.
HELD_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD)
GROUP_STOP_SIGNALS: Final = frozenset({signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})
#: Longest single sleep while waiting for a stop; SIGCHLD normally ends it much sooner.
WAIT_SLICE: Final = 0.002
#: How long a freeze waits for a thread found in an uninterruptible wait (D) before it lets every thread go, waits
#: for that one with nothing stopped, and starts again. A stopped thread waits for a thread in D (which no ptrace
#: request can stop) as long as it stays there; this bounds what that costs them.
UNINTERRUPTIBLE_GRACE: Final = 0.02
#: Sleeps while waiting, with nothing stopped, for threads to leave D: short first (disk waits are short), longer
#: after.
D_POLL_FIRST: Final = 0.001
D_POLL_LONGEST: Final = 0.01

_SIGCHLD_SET: Final = frozenset({signal.SIGCHLD})
_STOP_REQUESTS: Final = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
_SIG_BLOCK, _SIG_SETMASK = 0, 2
_NO_EVENT: Final = -1
_GONE: Final = -2


# ---- signal mask of the tool ---------------------------------------------------------------------------------


class _sigset_t(ctypes.Structure):
    _fields_ = [("bits", ctypes.c_uint64 * 16)]  # glibc's 1024-bit sigset_t


_libc = ctypes.CDLL(None, use_errno=True)
_pthread_sigmask = _libc.pthread_sigmask
_pthread_sigmask.argtypes = [ctypes.c_int, ctypes.POINTER(_sigset_t), ctypes.POINTER(_sigset_t)]
_pthread_sigmask.restype = ctypes.c_int


def _hold_signals() -> _sigset_t:
    """Block HELD_SIGNALS in this thread and return the old mask, without running Python signal handlers.

    signal.pthread_sigmask would run pending handlers on return, and a KeyboardInterrupt escaping between "blocked"
    and "old mask saved" would leave the mask changed for good.
    """
    new, old = _sigset_t(), _sigset_t()
    for signo in HELD_SIGNALS:
        new.bits[(signo - 1) // 64] |= 1 << ((signo - 1) % 64)
    if _pthread_sigmask(_SIG_BLOCK, ctypes.byref(new), ctypes.byref(old)) != 0:
        raise OSError(ctypes.get_errno(), "pthread_sigmask")
    return old


def _restore_signals(old: _sigset_t) -> None:
    """Put the old mask back, then let Python run the handlers of what arrived meanwhile (Ctrl-C raises here)."""
    _pthread_sigmask(_SIG_SETMASK, ctypes.byref(old), None)
    signal.pthread_sigmask(signal.SIG_BLOCK, ())  # a no-op that runs pending handlers: KeyboardInterrupt


# ---- the tracer thread ---------------------------------------------------------------------------------------

_current = threading.local()


class TracerThread:
    """One OS thread that makes every ptrace request of one operation, so that its exit detaches all tracees."""

    def __init__(self) -> None:
        self._request = _thread.allocate_lock()
        self._request.acquire()
        self._reply = _thread.allocate_lock()
        self._reply.acquire()
        #: Set by the tracer thread after each release of _reply: the truth when a wait for it was interrupted.
        self._replied = False
        self._job: Callable[[], Any] | None = None
        self._result: Any = None
        self._error: BaseException | None = None
        self.native_id = 0
        self.ident = 0
        self._closed = False
        #: What the thread does between jobs instead of sleeping (an attached watch serves its tracees' stops):
        #: called again and again until a job comes; `call` and `close` ring it out of its wait (see ring).
        self.idle: Callable[[], None] | None = None
        #: SIGCHLDs this thread consumed with sigtimedwait (one is re-raised for the app if it handles SIGCHLD).
        self.sigchld_taken = 0
        #: What a Python signal handler raised in the caller while it waited (KeyboardInterrupt): held back until
        #: the session has restored everything. Our mask holds signals back in the caller's thread only; another
        #: thread of the process (rich's refresh thread, a writer) can still take a Ctrl-C and make the handler run.
        self.deferred: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="pss-dup-tracer", daemon=True)
        self._thread.start()
        self._await_reply()

    @classmethod
    def start(cls) -> TracerThread:
        """A tracer thread made outside a TracerSession, to outlive several of them (the VA clone's): it is born
        with HELD_SIGNALS blocked, as one made inside a session is, so it never takes a Ctrl-C or a SIGCHLD."""
        old = _hold_signals()
        try:
            return cls()
        finally:
            _pthread_sigmask(_SIG_SETMASK, ctypes.byref(old), None)

    @staticmethod
    def current() -> TracerThread | None:
        """The tracer thread the caller runs on, if any."""
        tracer: TracerThread | None = getattr(_current, "tracer", None)
        return tracer

    def _serve(self) -> None:
        _current.tracer = self
        # Stopping a thousand threads means waking a thousand threads, each of which would preempt us on the way;
        # at nice -20 (this thread only, and only if we may) the loop runs through and the stop gets shorter.
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, -20)
        self.native_id = threading.get_native_id()
        self.ident = threading.get_ident()
        self._reply.release()
        self._replied = True
        while True:
            idle = self.idle
            if idle is None:
                self._request.acquire()
            else:
                while not self._request.acquire(blocking=False):
                    idle()
            job = self._job
            if job is None:
                return
            try:
                self._result = job()
            except BaseException as exc:  # handed to the caller's thread, raised there
                self._error = exc
            self._reply.release()
            self._replied = True

    def call(self, job: Callable[[], T]) -> T:
        """Run `job` on the tracer thread and return its result (or raise its exception) in the caller."""
        if threading.get_ident() == self.ident:
            return job()
        self._job = job
        self._replied = False
        self._request.release()
        self.ring()
        self._await_reply()
        result, error = self._result, self._error
        self._result = self._error = None
        if error is not None:
            raise error
        value: T = result
        return value

    def _await_reply(self) -> None:
        """Wait for the tracer thread's reply, never giving up half way: leaving while it runs a job (an injected
        system call, a freeze) could end the tool with a thread of the target holding our registers.

        A signal handler may raise at any point of the wait, before or after the lock was taken; `_replied` then
        says when the reply came, and a non-blocking acquire takes the release if the interrupted one did not.
        """
        try:
            self._reply.acquire()
            return
        except BaseException as exc:
            self._defer(exc)
        while True:
            try:
                while not self._replied:
                    time.sleep(0.0005)
                self._reply.acquire(blocking=False)
                return
            except BaseException as exc:
                self._defer(exc)

    def ring(self) -> None:
        """Cut an `idle` wait short: a SIGCHLD for this thread alone, which it holds blocked and waits for."""
        if self.idle is not None and self.ident:
            with contextlib.suppress(OSError, ProcessLookupError):
                signal.pthread_kill(self.ident, signal.SIGCHLD)

    def _defer(self, exc: BaseException) -> None:
        if self.deferred is None:
            self.deferred = exc

    def close(self) -> None:
        """End the thread and wait until the kernel has let go of its tracees (the task is gone from /proc). Once."""
        if self._closed:
            return
        self._closed = True
        self._job = None
        self._request.release()
        self.ring()
        while True:
            try:
                self._thread.join()
                break
            except BaseException as exc:  # as in _await_reply: the thread may still hold tracees
                self._defer(exc)
        deadline = time.monotonic() + 2.0
        while os.path.exists(f"/proc/self/task/{self.native_id}") and time.monotonic() < deadline:
            time.sleep(0.0002)


class TracerSession:
    """Holds SIGINT/SIGTERM/SIGHUP/SIGCHLD back and owns one TracerThread, for the length of one operation.

    Started from a tracer thread, it joins the running session instead (operations nest without extra hops). Given
    a `tracer` (TracerThread.start), it works on that one and leaves it running: the VA clone stays traced by the
    thread that froze its source until the clone is ended.
    """

    def __init__(self, tracer: TracerThread | None = None) -> None:
        self.tracer = tracer
        self._keeps_tracer = tracer is not None
        self._old_mask: _sigset_t | None = None
        self._nested = False
        self._held = interrupts.held()

    def __enter__(self) -> TracerSession:
        current = TracerThread.current()
        if current is not None:
            self.tracer, self._nested = current, True
            return self
        self._held.__enter__()
        try:
            self._old_mask = _hold_signals()
        except BaseException:
            self._held.__exit__(None, None, None)
            raise
        try:
            signal.pthread_sigmask(signal.SIG_BLOCK, ())  # a Ctrl-C from before we started raises now, harmlessly
            if self.tracer is None:
                self.tracer = TracerThread()
        except BaseException:
            _pthread_sigmask(_SIG_SETMASK, ctypes.byref(self._old_mask), None)
            self._old_mask = None
            self._held.__exit__(None, None, None)
            raise
        return self

    def call(self, job: Callable[[], T]) -> T:
        assert self.tracer is not None
        return self.tracer.call(job)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._nested or self.tracer is None or self._old_mask is None:
            return
        tracer = self.tracer
        try:
            try:
                if not self._keeps_tracer:
                    tracer.close()
                if tracer.sigchld_taken and _app_handles_sigchld():
                    tracer.sigchld_taken = 0
                    os.kill(os.getpid(), signal.SIGCHLD)  # ours may have hidden one of the app's own children
            finally:
                _restore_signals(self._old_mask)
            deferred, tracer.deferred = tracer.deferred, None
            if deferred is not None and exc_type is None:
                raise deferred
        finally:
            self._held.__exit__(exc_type, exc, tb)


def _app_handles_sigchld() -> bool:
    handler = signal.getsignal(signal.SIGCHLD)
    return handler not in (signal.SIG_DFL, signal.SIG_IGN)


# ---- waiting for ptrace-stops (on the tracer thread) ---------------------------------------------------------


#: How traced threads ended, as waitpid told their tracer: a message then says "was killed by SIGSYS" rather than
#: "exited", so that a process that died under pss-dup is never passed off as one that ended by itself.
_endings: dict[int, int] = {}


def how_it_ended(*tids: int) -> str:
    """'exited', 'exited with status N' or 'was killed by SIGNAME', for the first of `tids` whose end was seen."""
    for tid in tids:
        status = _endings.pop(tid, None)
        if status is None:
            continue
        if os.WIFSIGNALED(status):
            signo = os.WTERMSIG(status)
            try:
                return f"was killed by {signal.Signals(signo).name}"
            except ValueError:
                return f"was killed by signal {signo}"
        return f"exited with status {os.WEXITSTATUS(status)}"
    return "exited"


def poll_status(tid: int, *, peek_exit: bool) -> int:
    """The next wait status of `tid`, _NO_EVENT, or _GONE once it has exited.

    `peek_exit` looks for an exit without reaping it: when the tool is also the process's parent, the exit status
    of the group leader belongs to the parent's own wait(), not to us.
    """
    if peek_exit:
        ended = ptrace.peek_exit_status(tid)
        if ended is not None:
            if ended != ptrace.GONE_UNSEEN:
                _endings[tid] = ended
            return _GONE
    try:
        got, status = os.waitpid(tid, os.WNOHANG | ptrace.__WALL)
    except ChildProcessError:
        return _GONE
    if got == 0:
        return _NO_EVENT
    if os.WIFEXITED(status) or os.WIFSIGNALED(status):
        _endings[tid] = status
        return _GONE
    return status


def wait_stop(
    pid: int, tid: int, deadline: float, *, peek_exit: bool = False, interruptible: bool = True, timeout: float = 0.0
) -> int:
    """The next ptrace-stop status of `tid` (on the tracer thread); ProcessGone once it has ended, Timeout past the
    deadline (`timeout` is the figure its message names). Interrupted on Ctrl-C/SIGTERM/SIGHUP while waiting,
    unless `interruptible` is False (see pause_for_stop)."""
    while True:
        status = poll_status(tid, peek_exit=peek_exit)
        if status >= 0:
            return status
        if status == _GONE:
            raise ProcessGone(f"process {pid} {how_it_ended(tid)} while pss-dup held thread {tid}", pid=pid)
        if not pause_for_stop(deadline, interruptible=interruptible):
            raise Timeout(
                f"thread {tid} {describe_stuck_thread(pid, tid)} of process {pid} did not stop within {timeout:g} s; "
                "pss-dup let go of it",
                pid=pid,
            )


def pause_for_stop(deadline: float, *, interruptible: bool = True) -> bool:
    """Sleep until a SIGCHLD (a tracee stopped or exited) or a short slice passes; False once past the deadline.

    `interruptible=False` while a thread runs an injected system call: it has our registers then, and giving up
    before it stops again would leave it running with them. Such a call takes microseconds; Ctrl-C waits for it.
    """
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return False
    requested = _STOP_REQUESTS & signal.sigpending() if interruptible else set()
    if requested:
        # Ctrl-C (or SIGTERM/SIGHUP) while a thread will not stop: give up now, not at the deadline. The caller
        # lets go of every thread; the signal itself is delivered once the tool's mask is restored.
        signo = signal.SIGINT if signal.SIGINT in requested else min(requested)
        what = "interrupted" if signo == signal.SIGINT else f"ended by {signal.Signals(signo).name}"
        raise Interrupted(f"{what} while waiting for a thread to stop; every thread was let go", signo=signo)
    if signal.sigtimedwait(_SIGCHLD_SET, min(remaining, WAIT_SLICE)) is not None:
        tracer = TracerThread.current()
        if tracer is not None:
            tracer.sigchld_taken += 1
    return True


def describe_stuck_thread(pid: int, tid: int) -> str:
    """State, wait channel and system call of a thread that would not stop, for the Timeout message."""
    parts = []
    try:
        st = procfs.read_stat(pid, tid)
        parts.append(f"({st.comm}) in state {st.state}")
    except (OSError, ValueError):
        pass
    try:
        with open(f"/proc/{pid}/task/{tid}/wchan") as f:
            wchan = f.read().strip()
        if wchan and wchan != "0":
            parts.append(f"waiting in {wchan}")
    except OSError:
        pass
    blocked = procfs.read_syscall(pid, tid)
    if blocked is not None:
        parts.append(f"in system call {syscall_name(blocked.number)}")
    return " ".join(parts)


def syscall_name(nr: int) -> str:
    try:
        from pss_cli.platform.linux.syscall_names import X86_64_SYSCALLS
    except ImportError:  # pragma: no cover - the table is generated with the package
        return f"#{nr}"
    return X86_64_SYSCALLS.get(nr, f"#{nr}")


class _Uninterruptible(Exception):
    """A thread still in D after UNINTERRUPTIBLE_GRACE of a freeze: FrozenProcess lets go and starts again."""

    def __init__(self, tid: int) -> None:
        super().__init__(f"thread {tid} is in an uninterruptible wait")
        self.tid = tid


PF_EXITING: Final = 0x00000004


def _seize_refused(pid: int, tid: int, what: str) -> Exception:
    """The typed error for EPERM from PTRACE_SEIZE: the thread is exiting, someone else traces it, or the rules
    deny us."""
    try:
        st = procfs.read_stat(pid, tid)
        exiting = st.exited or bool(st.flags & PF_EXITING)
    except (OSError, ValueError):
        exiting = True
    if exiting:  # the kernel refuses to attach to a task on its way out (exit_state, PF_EXITING)
        return ProcessGone(f"process {pid} exited while pss-dup was stopping it", pid=pid)
    return access.traced_elsewhere(pid, tid) or access.explain_denied(pid, what)


# ---- one thread ----------------------------------------------------------------------------------------------


class SeizedThread:
    """One thread of a process held in a ptrace-stop; see `seized_thread`.

    Signals that stop the thread while it is held are stashed (with their siginfo) and handed back on release: the
    first by PTRACE_DETACH from a signal-delivery-stop, any others with tgkill.
    """

    def __init__(self, pid: int, tid: int, *, timeout: float, options: int = 0, interruptible: bool = True) -> None:
        self.pid = pid
        self.tid = tid
        self.timeout = timeout
        self.options = options
        #: Whether a pending Ctrl-C/SIGTERM gives up waiting for the first stop (not while cleaning up: see vaclone).
        self.interruptible = interruptible
        self.stashed: list[ptrace.siginfo_t] = []
        #: True while the thread sits in a signal-delivery-stop, where PTRACE_DETACH can deliver a signal.
        self.in_signal_stop = False
        #: The process was in group-stop (state T) when we came; it stays stopped after release.
        self.group_stopped = False
        #: Registers to put back before detaching (the injector's saved context).
        self.restore_regs: ptrace.user_regs_struct | None = None
        self.stopped = False
        self.gone = False
        self.session: TracerSession | None = None
        #: What the thread was seen blocked in just before the stop (restart.observe), and what our stop did to it.
        self.blocked: restart.Blocked | None = None
        self.interruption: Interruption | None = None
        self._stopped_at: float | None = None
        #: We are also the process's parent: its leader's exit status is the parent's, to be peeked at, not reaped.
        self.peek_exit = tid == pid and procfs.parent_of(pid) == os.getpid()
        self._first: float | None = None
        self._last: float | None = None

    @property
    def stopped_ms(self) -> float | None:
        """From PTRACE_INTERRUPT to PTRACE_DETACH; None until released."""
        if self._first is None or self._last is None:
            return None
        return (self._last - self._first) * 1000

    def stop(self) -> None:
        """PTRACE_SEIZE + PTRACE_INTERRUPT, then wait for the first stop (on the tracer thread)."""
        try:
            ptrace.seize(self.tid, self.options)
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                raise ProcessGone(f"thread {self.tid} of process {self.pid} exited", pid=self.pid) from None
            if (
                exc.errno == errno.EPERM
                and self.options & ptrace.PTRACE_O_SUSPEND_SECCOMP
                and access.probe_attach(self.pid)
            ):
                raise Refused(
                    f"process {self.pid} runs under a seccomp filter that would see the injected system calls, and "
                    "the kernel refused PTRACE_O_SUSPEND_SECCOMP (it needs CAP_SYS_ADMIN and a tracer that is not "
                    "itself under seccomp)",
                    pid=self.pid,
                ) from None
            if exc.errno == errno.EPERM:
                raise _seize_refused(self.pid, self.tid, "stop (PTRACE_SEIZE)") from None
            raise OperationFailed(f"PTRACE_SEIZE of thread {self.tid} failed: {exc.strerror}", pid=self.pid) from None
        self._first = time.perf_counter()
        with contextlib.suppress(ProcessLookupError):  # exited between the two calls: the wait sees it
            ptrace.interrupt(self.tid)
        status = self.wait(time.monotonic() + self.timeout)
        self._stopped_at = time.monotonic()
        self.blocked = restart.at_stop(self.pid, self.tid, self.blocked)
        self.stopped = True
        self.note_stop(status)

    def wait(self, deadline: float) -> int:
        """The next ptrace-stop status; ProcessGone if the thread exits, Timeout past the deadline."""
        try:
            return wait_stop(
                self.pid,
                self.tid,
                deadline,
                peek_exit=self.peek_exit,
                interruptible=self.interruptible,
                timeout=self.timeout,
            )
        except ProcessGone:
            self.gone = True
            self.stopped = False
            raise

    def note_stop(self, status: int) -> None:
        """Classify a stop: keep a signal-delivery-stop's siginfo; remember a group-stop."""
        event = ptrace.stop_event(status)
        self.in_signal_stop = event == 0
        if event == 0:
            self.stash_signal()
        elif event == ptrace.PTRACE_EVENT_STOP and os.WSTOPSIG(status) in GROUP_STOP_SIGNALS:
            self.group_stopped = True

    def stash_signal(self) -> None:
        """Keep the signal of the current signal-delivery-stop; it is suppressed now and re-delivered on release."""
        info = ptrace.siginfo_t()
        ptrace.get_siginfo(self.tid, info)
        self.stashed.append(info)

    def release(self) -> None:
        """Restore registers if asked, hand back stashed signals, PTRACE_DETACH (on the tracer thread)."""
        if not self.stopped:
            return
        self.stopped = False
        try:
            regs = self.restore_regs
            if regs is None:
                regs = ptrace.user_regs_struct()
                ptrace.get_regs(self.tid, regs)
            self.interruption = restart.decide(
                self.pid, self.tid, regs, self.blocked, real_signal=bool(self.stashed), stopped_at=self._stopped_at
            )
            if self.restore_regs is not None or (self.interruption is not None and self.interruption.restarted):
                ptrace.set_regs(self.tid, regs)
            later = self.stashed
            if self.stashed and self.in_signal_stop:
                first, later = self.stashed[0], self.stashed[1:]
                ptrace.set_siginfo(self.tid, first)
                ptrace.detach(self.tid, first.si_signo)
            else:
                ptrace.detach(self.tid, 0)
            self._last = time.perf_counter()
            for info in later:
                ptrace.tgkill(self.pid, self.tid, info.si_signo)
        except ProcessLookupError:
            self.gone = True
        finally:
            if self._last is None:
                self._last = time.perf_counter()


class seized_thread:
    """Context manager: thread `tid` of `pid` held in a ptrace-stop, released (and restored) on exit."""

    def __init__(self, pid: int, tid: int, timeout: float, *, options: int = 0, interruptible: bool = True) -> None:
        self.held = SeizedThread(pid, tid, timeout=timeout, options=options, interruptible=interruptible)
        self._session = TracerSession()

    def __enter__(self) -> SeizedThread:
        self._session.__enter__()
        self.held.session = self._session
        try:
            self._session.call(self.held.stop)
        except BaseException:
            try:
                self._session.call(self.held.release)
            finally:
                self._session.__exit__(None, None, None)
            raise
        return self.held

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self._session.call(self.held.release)
        finally:
            self._session.__exit__(exc_type, exc, tb)


# ---- the whole process ---------------------------------------------------------------------------------------


class Attachment(Protocol):
    """A process that a watch keeps seized (attach.py). A freeze of it runs on that tracer thread, interrupts the
    threads instead of seizing them, and resumes them instead of detaching: the process stays attached."""

    tracer: TracerThread
    #: The PTRACE_O_* options its threads carry (a thread found untraced is seized with them).
    options: int
    #: Threads the watch holds in a stop it has not answered yet: tid -> (wait status, siginfo or None). The freeze
    #: counts them as stopped and leaves them held.
    held: dict[int, tuple[int, ptrace.siginfo_t | None]]
    #: VA clones made on its tracer thread and not ended yet: its serve loop never resumes them (vaclone.py).
    clones: set[int]

    @property
    def acting(self) -> int | None:
        """The held thread the watcher is acting on now, if any."""
        ...

    def dying(self) -> bool:
        """A thread is held in a crash or in its exit: no VA clone then (the process ends once let go)."""
        ...

    def job_stopped(self) -> bool:
        """A thread sits in a job-control stop (PTRACE_LISTEN): no VA clone then (no call can be injected there)."""
        ...

    def settle(self, tid: int, status: int) -> None:
        """A signal-delivery or exit stop the freeze took in the watch's place: answer it as the watch would."""
        ...

    def let_go(self, tid: int) -> None:
        """Resume a held thread now, its signal delivered as it came (on the tracer thread)."""
        ...


#: pid -> its attachment, while a watch in this process holds it seized.
_attachments: dict[int, Attachment] = {}


def set_attachment(pid: int, attachment: Attachment | None) -> None:
    if attachment is None:
        _attachments.pop(pid, None)
    else:
        _attachments[pid] = attachment


def attachment_of(pid: int) -> Attachment | None:
    return _attachments.get(pid)


@record
class ThreadRegs:
    """One frozen thread's register context: the raw regsets, as a core file stores them."""

    tid: int
    gpr: bytes  # NT_PRSTATUS, struct user_regs_struct (216 bytes)
    fpregs: bytes | None  # NT_PRFPREG, the 512-byte FXSAVE image
    xstate: bytes | None  # NT_X86_XSTATE, CPU-dependent size
    sigmask: int | None  # PTRACE_GETSIGMASK (the thread's real mask, not a ppoll/pselect temporary one)


class FrozenProcess:
    """Context manager: every thread of `pid` stopped with PTRACE_SEIZE + PTRACE_INTERRUPT, thawed on exit.

    Threads born during the freeze are caught (PTRACE_O_TRACECLONE, and /proc/PID/task listed again until nothing
    new appears once every known thread has stopped). Threads that exit meanwhile are dropped; the whole process
    exiting raises ProcessGone. A process that was in group-stop stays stopped after the thaw.

    A thread in an uninterruptible wait (state D: a vfork parent waiting for its child, a disk or NFS wait) reaches
    no ptrace-stop until it leaves it, and every thread already stopped would wait with it. So each thread's state
    is read first and the freeze starts only once none is in D, waiting for that with nothing stopped (`wait_ms`).
    A thread can enter D again between that check and its PTRACE_INTERRUPT: if the freeze is still waiting for a
    thread in D after UNINTERRUPTIBLE_GRACE, every thread is let go and the whole sequence starts over, all within
    the one `timeout`; past it, Timeout.
    """

    def __init__(
        self,
        pid: int,
        *,
        timeout: float,
        want_regs: bool,
        want_fp: bool,
        want_xstate: bool,
        tracer: TracerThread | None = None,
    ) -> None:
        self.pid = pid
        #: A watch keeps the process seized: freeze on its tracer thread and leave it attached.
        self.attachment = _attachments.get(pid)
        #: The tracer thread to freeze on and leave running (see TracerSession); None for one of its own.
        self.tracer = self.attachment.tracer if self.attachment is not None else tracer
        self.timeout = timeout
        self.want_regs = want_regs
        self.want_fp = want_fp
        self.want_xstate = want_xstate
        #: The threads that were stopped (sorted), set on entry.
        self.tids: tuple[int, ...] = ()
        self.regs: dict[int, ThreadRegs] = {}
        #: Wall-clock time when the last thread stopped.
        self.stopped_at: float | None = None
        #: From the first PTRACE_INTERRUPT to the last PTRACE_DETACH, summed over attempts given up for a thread in
        #: D; valid after exit.
        self.stopped_ms: float | None = None
        #: Spent waiting, with nothing stopped, for threads to leave an uninterruptible wait; set on entry.
        self.wait_ms = 0.0
        #: The process was in group-stop (state T) before the freeze.
        self.group_stopped = False
        #: Signals that were on their way into a thread when it stopped: tid -> signal number (re-delivered).
        self.signals: dict[int, int] = {}
        #: Threads that exited during the freeze.
        self.exited: set[int] = set()
        #: Blocked calls the freeze interrupted with EINTR, and what the thaw did about each (see restart.py).
        self.interruptions: list[Interruption] = []
        #: The siginfo of each thread an attachment held in a signal-delivery-stop (the signal a watch acts on).
        self.siginfos: dict[int, bytes] = {}
        #: Set once a VA clone holds the frozen state: the thaw also lets go of the held thread the watcher acts on
        #: (its signal is delivered now, not after the copy), so that the process runs on during the copy.
        self.release_acting = False
        self._held: set[int] = set()
        self._statuses: dict[int, int] = {}
        self._blocked: dict[int, restart.Blocked] = {}
        self._rax = ptrace.RaxReader()
        #: When the first thread was interrupted (time.monotonic()).
        self._stopped_at: float | None = None
        self._stopped: dict[int, ptrace.siginfo_t | None] = {}
        self._known: set[int] = set()
        self._skipped: set[int] = set()
        self._pending: set[int] = set()
        self._session: TracerSession | None = None
        self._first: float | None = None
        self._stopped_total = 0.0
        self._leader_is_child = False
        self._initial: list[int] = []
        self._reader: ptrace.RegsetReader | None = None

    # -- context manager (caller's thread) --

    def __enter__(self) -> FrozenProcess:
        access.check_traceable(self.pid)
        deadline = time.monotonic() + self.timeout
        self._leader_is_child = procfs.parent_of(self.pid) == os.getpid()
        if self.want_regs or self.want_fp or self.want_xstate:
            self._reader = ptrace.RegsetReader(fp=self.want_fp, xstate=self.want_xstate)
        while True:
            self._initial = self._wait_out_uninterruptible(deadline)
            for tid in self._initial:  # what each thread is blocked in, read before any is stopped
                blocked = restart.observe(self.pid, tid)
                if blocked is not None:
                    self._blocked[tid] = blocked
            session = TracerSession(self.tracer)
            session.__enter__()
            try:
                session.call(lambda: self._freeze(deadline))
            except _Uninterruptible:
                self._let_go(session)
                self._forget_attempt()
                continue
            except BaseException:
                self._let_go(session)
                raise
            self._session = session
            return self

    def _let_go(self, session: TracerSession) -> None:
        """Thaw what is stopped; ending the tracer thread lets go of a thread that never reached its stop."""
        try:
            session.call(self._thaw)
        finally:
            session.__exit__(None, None, None)

    def _wait_out_uninterruptible(self, deadline: float) -> list[int]:
        """The process's threads, once none of them is in an uninterruptible wait (D); nothing is stopped meanwhile.

        Only the threads seen in D are read again until they leave it; then every thread once more, since another
        one may have entered D meanwhile. Timeout at the deadline, naming the thread that stayed.
        """
        waiting_since: float | None = None
        pause = D_POLL_FIRST
        try:
            while True:
                tids = self._list_tasks()
                stuck = [tid for tid in tids if access.thread_state(self.pid, tid) == "D"]
                if not stuck:
                    return tids
                if waiting_since is None:
                    waiting_since = time.monotonic()
                while stuck:
                    if time.monotonic() >= deadline:
                        raise self._uninterruptible_timeout(stuck[0])
                    time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
                    pause = min(pause * 2, D_POLL_LONGEST)
                    stuck = [tid for tid in stuck if access.thread_state(self.pid, tid) == "D"]
        finally:
            if waiting_since is not None:
                self.wait_ms += (time.monotonic() - waiting_since) * 1000

    def _uninterruptible_timeout(self, tid: int) -> Timeout:
        return Timeout(
            f"thread {tid} {describe_stuck_thread(self.pid, tid)} of process {self.pid} did not leave its "
            f"uninterruptible wait within {self.timeout:g} s; pss-dup waited for it before stopping the other "
            "threads, and leaves every thread running",
            pid=self.pid,
        )

    def _forget_attempt(self) -> None:
        """Start a freeze afresh after one given up for a thread in D (every thread was let go)."""
        for collection in (
            self._known,
            self._skipped,
            self._pending,
            self.signals,
            self.exited,
            self.regs,
            self._blocked,
            self.siginfos,
            self._held,
            self._statuses,
        ):
            collection.clear()
        self.interruptions.clear()
        self.group_stopped = False

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        session = self._session
        if session is None:
            return
        self._session = None
        try:
            session.call(self._thaw)
        finally:
            session.__exit__(exc_type, exc, tb)
        if exc_type is None and self.exited and not self._alive():
            raise ProcessGone(
                f"process {self.pid} {how_it_ended(self.pid, *sorted(self.exited))} while it was frozen", pid=self.pid
            )

    def call(self, job: Callable[[], T]) -> T:
        """Run `job` on the tracer thread that holds every frozen thread, where ptrace requests for them must be
        made (the VA clone injects into one of them). Only between entry and exit."""
        assert self._session is not None, "FrozenProcess.call outside the freeze"
        return self._session.call(job)

    # -- on the tracer thread --

    def _list_tasks(self) -> list[int]:
        try:
            return [int(t) for t in os.listdir(f"/proc/{self.pid}/task")]
        except FileNotFoundError:
            if self._known:
                raise ProcessGone(f"process {self.pid} exited while pss-dup was freezing it", pid=self.pid) from None
            raise NoSuchProcess(f"no process with PID {self.pid}", pid=self.pid) from None

    def _freeze(self, deadline: float) -> None:
        seize, interrupt = ptrace.seize, ptrace.interrupt
        options = ptrace.PTRACE_O_TRACECLONE
        known, pending = self._known, self._pending
        candidates = self._initial
        while True:
            fresh = [tid for tid in candidates if tid not in known]
            if not fresh:
                break
            seized = []
            for tid in fresh:
                known.add(tid)
                if self.attachment is not None:
                    if not self._take_held(tid):
                        seized.append(tid)  # already ours: only to be interrupted
                    continue
                try:
                    seize(tid, options)
                except OSError as exc:
                    self._seize_failed(tid, exc)
                    continue
                seized.append(tid)
            if (seized or self._held) and self._first is None:
                self._first = time.perf_counter()
                self._stopped_at = time.monotonic()
            for tid in seized:
                try:
                    interrupt(tid)
                except ProcessLookupError:  # it is exiting (the wait reports that), or born before the watch saw it
                    if self.attachment is not None and self._seize_untraced(tid):
                        interrupt(tid)
                pending.add(tid)
            self._collect(deadline)
            if self._all_known_stopped():
                break
            candidates = self._list_tasks()
        if not self._stopped:
            raise ProcessGone(
                f"process {self.pid} {how_it_ended(self.pid, *sorted(self.exited))} while pss-dup was freezing it",
                pid=self.pid,
            )
        self.stopped_at = time.time()
        if self.want_regs or self.want_fp or self.want_xstate:
            self._read_registers()
        self.tids = tuple(sorted(self._stopped))

    def _take_held(self, tid: int) -> bool:
        """A thread the attachment holds in a stop counts as frozen as it is; it stays held after the thaw."""
        assert self.attachment is not None
        held = self.attachment.held.get(tid)
        if held is None:
            return False
        status, info = held
        self._stopped[tid] = info
        self._statuses[tid] = status
        self._held.add(tid)
        if info is not None:
            self.siginfos[tid] = bytes(info)
        return True

    def injection_thread(self, preferred: int) -> int | None:
        """A frozen thread to run injected calls in: `preferred`, else another, one the watch does not hold first;
        a thread held in a signal-delivery-stop will do (its signal is delivered as it came when let go); never one
        in its exit stop (it will not return to user mode)."""
        order = [preferred, *(tid for tid in self.tids if tid != preferred)]
        usable = [
            tid
            for tid in order
            if tid in self._stopped
            and ptrace.stop_event(self._statuses.get(tid, 0)) != ptrace.PTRACE_EVENT_EXIT
            and not (self.attachment is not None and self._group_stopped(tid))
        ]
        free = [tid for tid in usable if tid not in self._held]
        chosen = free or usable
        return chosen[0] if chosen else None

    def _group_stopped(self, tid: int) -> bool:
        """Stopped by job control: an attached thread goes back to PTRACE_LISTEN at the thaw, which the kernel
        refuses once a call was injected into it (its stop is no longer the group-stop's)."""
        status = self._statuses.get(tid, 0)
        return ptrace.stop_event(status) == ptrace.PTRACE_EVENT_STOP and os.WSTOPSIG(status) in GROUP_STOP_SIGNALS

    def _seize_untraced(self, tid: int) -> bool:
        """A thread of an attached process that is not traced yet: seize it with the attachment's options."""
        assert self.attachment is not None
        try:
            ptrace.seize(tid, self.attachment.options)
        except OSError:
            return False
        return True

    def _all_known_stopped(self) -> bool:
        """The kernel's thread count equals what we hold: nobody new can exist, skip listing /proc/PID/task again.

        Sound because a stopped thread cannot exit or clone, and a clone in progress finishes before its parent
        stops; otherwise (a zombie leader is counted too, for one) the caller lists the tasks again.
        """
        try:
            count = procfs.read_stat(self.pid).num_threads
        except (OSError, ValueError):
            return False
        return count == len(self._stopped) + len(self._skipped)

    def _seize_failed(self, tid: int, exc: OSError) -> None:
        if exc.errno == errno.ESRCH:
            return  # exited before we came
        if exc.errno != errno.EPERM:
            raise OperationFailed(f"PTRACE_SEIZE of thread {tid} of process {self.pid} failed: {exc.strerror}")
        try:
            exited = procfs.read_stat(self.pid, tid).exited
        except (OSError, ValueError):
            return  # gone
        if exited:
            self._skipped.add(tid)  # a group leader that called pthread_exit, or a thread on its way out
            return
        try:
            tracer = access.tracer_of(self.pid, tid)
        except OSError:
            return
        if tracer == os.getpid():
            self._pending.add(tid)  # auto-attached by TRACECLONE; its PTRACE_EVENT_STOP is on the way
            return
        raise _seize_refused(self.pid, tid, "freeze (PTRACE_SEIZE)")

    def _collect(self, deadline: float) -> None:
        pending, leader = self._pending, self.pid
        peek_leader = self._leader_is_child
        look_for_d = time.monotonic() + UNINTERRUPTIBLE_GRACE
        while pending:
            for tid in list(pending):
                status = poll_status(tid, peek_exit=peek_leader and tid == leader)
                if status == _NO_EVENT:
                    continue
                pending.discard(tid)
                if status == _GONE:
                    self._gone(tid)
                else:
                    self._on_stop(tid, status)
            if pending and time.monotonic() >= look_for_d:
                for tid in pending:
                    if access.thread_state(self.pid, tid) == "D":
                        raise _Uninterruptible(tid)
                look_for_d = time.monotonic() + UNINTERRUPTIBLE_GRACE
            if pending and not pause_for_stop(deadline):
                raise self._timeout_error()

    def _on_stop(self, tid: int, status: int) -> None:
        self._statuses[tid] = status
        event = ptrace.stop_event(status)
        info: ptrace.siginfo_t | None = None
        try:
            if event == 0:  # signal-delivery-stop: keep it, hand the signal back on thaw
                info = ptrace.siginfo_t()
                ptrace.get_siginfo(tid, info)
                self.signals[tid] = info.si_signo
            elif event == ptrace.PTRACE_EVENT_CLONE:
                child = ptrace.get_event_msg(tid)
                if child not in self._known:
                    self._known.add(child)
                    self._pending.add(child)
            elif event == ptrace.PTRACE_EVENT_STOP and os.WSTOPSIG(status) in GROUP_STOP_SIGNALS:
                self.group_stopped = True
        except ProcessLookupError:
            self._gone(tid)
            return
        self._stopped[tid] = info
        blocked = self._blocked.get(tid)
        if blocked is not None and blocked.timed:  # a finite epoll timeout: its switch count, now
            self._blocked[tid] = restart.at_stop(self.pid, tid, blocked) or blocked

    def _gone(self, tid: int) -> None:
        self._stopped.pop(tid, None)
        self._pending.discard(tid)
        self.signals.pop(tid, None)
        self.exited.add(tid)

    def _timeout_error(self) -> Timeout:
        stuck = sorted(self._pending)
        first = stuck[0]
        more = f" ({len(stuck) - 1} more threads did not stop either)" if len(stuck) > 1 else ""
        return Timeout(
            f"thread {first} {describe_stuck_thread(self.pid, first)} of process {self.pid} did not stop within "
            f"{self.timeout:g} s{more}; pss-dup let go of every thread",
            pid=self.pid,
        )

    def _read_registers(self) -> None:
        reader = self._reader
        assert reader is not None
        want_gpr = self.want_regs
        for tid in list(self._stopped):
            try:
                gpr, fp, xstate, sigmask = reader.read(tid)
            except ProcessLookupError:
                self._gone(tid)
                continue
            if len(gpr) != ptrace.USER_REGS_SIZE or gpr[136] == ptrace.USER_CS_32:
                raise NotSupported(f"thread {tid} of process {self.pid} runs 32-bit code", pid=self.pid)
            self.regs[tid] = ThreadRegs(
                tid=tid, gpr=gpr if want_gpr else b"", fpregs=fp, xstate=xstate, sigmask=sigmask
            )

    def _thaw(self) -> None:
        failures = []
        for tid, info in self._stopped.items():
            if tid in self._held:
                assert self.attachment is not None
                if self.release_acting and tid == self.attachment.acting:
                    self.attachment.let_go(tid)
                continue  # the attachment answers that stop once the watch has acted on it
            try:
                self._undo_our_eintr(tid, info)
                if self.attachment is not None:
                    self._resume(tid, info)
                elif info is not None:
                    ptrace.set_siginfo(tid, info)
                    ptrace.detach(tid, info.si_signo)
                else:
                    ptrace.detach(tid, 0)
            except ProcessLookupError:
                self._collect_end(tid)
                self.exited.add(tid)
            except OSError as exc:
                failures.append(f"{tid}: {exc.strerror}")
        self._stopped.clear()
        if self._first is not None:
            self._stopped_total += time.perf_counter() - self._first
            self._first = None
            self.stopped_ms = self._stopped_total * 1000
        if failures:  # the tracer thread's exit detaches these; say so rather than hide it
            raise OperationFailed(f"PTRACE_DETACH failed for threads of process {self.pid}: {', '.join(failures)}")

    def _resume(self, tid: int, info: ptrace.siginfo_t | None) -> None:
        """Thaw one thread of an attached process without detaching it. A signal or an exit the stop caught is the
        watch's to answer (it may be the crash it waits for); a group-stop goes back to PTRACE_LISTEN."""
        assert self.attachment is not None
        status = self._statuses.get(tid, 0)
        event = ptrace.stop_event(status)
        if info is not None:
            ptrace.set_siginfo(tid, info)
            self.attachment.settle(tid, status)
        elif event == ptrace.PTRACE_EVENT_EXIT:
            self.attachment.settle(tid, status)
        elif event == ptrace.PTRACE_EVENT_STOP and os.WSTOPSIG(status) in GROUP_STOP_SIGNALS:
            ptrace.listen(tid)
        else:
            ptrace.cont(tid, 0)

    def _collect_end(self, tid: int) -> None:
        """A thread that vanished from its stop was killed (SIGKILL reaches a stopped thread) or exited: take the
        status its tracer is owed, so the error can say which (how_it_ended), for a moment at most."""
        deadline = time.monotonic() + 0.1
        peek = self._leader_is_child and tid == self.pid
        while poll_status(tid, peek_exit=peek) == _NO_EVENT and time.monotonic() < deadline:
            time.sleep(0.001)

    def _undo_our_eintr(self, tid: int, info: ptrace.siginfo_t | None) -> None:
        """A thread our interrupt woke out of a call that fails with EINTR issues it again (restart.py)."""
        if ptrace.stop_event(self._statuses.get(tid, 0)) == ptrace.PTRACE_EVENT_EXIT:
            return  # it is on its way out: nothing returns to the program
        known = self.regs.get(tid)
        if known is not None and known.gpr:
            if not restart.may_show_eintr(known.gpr):
                return  # the registers read during the freeze say it is not in that state: no extra system call
        elif self._rax.read(tid) != -restart.EINTR:
            return  # one word read, not the whole register set: this runs for every thread of the freeze
        regs = ptrace.user_regs_struct()
        ptrace.get_regs(tid, regs)
        decision = restart.decide(
            self.pid, tid, regs, self._blocked.get(tid), real_signal=info is not None, stopped_at=self._stopped_at
        )
        if decision is not None:
            self.interruptions.append(decision)
            if decision.restarted:
                ptrace.set_regs(tid, regs)

    def _alive(self) -> bool:
        try:
            exited = procfs.read_stat(self.pid).exited
        except (OSError, ValueError):
            return False
        return not exited or access.has_live_thread(self.pid)

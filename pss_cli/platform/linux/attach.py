"""The attached watch (--on-signal, --on-crash, --on-exit): every thread seized, never stopped by us, each signal
passed on as it came.

One tracer thread per watched process (freeze.TracerThread) seizes every thread with PTRACE_O_TRACECLONE (new
threads are traced from birth) and, for --on-exit, PTRACE_O_TRACEEXIT; never PTRACE_O_EXITKILL, so a watcher that
dies leaves the process running untraced (the kernel detaches it). Between jobs the thread serves the stops:

* a signal-delivery-stop is resumed with exactly that signal (its siginfo untouched), and counted; one the watch
  waits for is held instead, for the watcher to act on, and resumed with it afterwards;
* a group-stop (SIGSTOP, SIGTSTP...) is answered with PTRACE_LISTEN: the thread stays stopped as it would untraced,
  and SIGCONT wakes it as it would;
* a new thread's first stop and clone events are resumed at once; an exit stop is held when it is the process's.

A crash is a fatal signal whose disposition is the default action when it is delivered. The disposition is read
at the stop from /proc/PID/status (SigIgn, SigCgt): a synchronous fault that is blocked or ignored has already been
reset to SIG_DFL by the kernel then (force_sig_info_to_task), and a handled SIGSEGV (a JVM, Go) is no crash.

Stops are looked at with WNOWAIT and resumed without being taken: should the watcher be killed (SIGKILL) at any
moment, the kernel detaches and delivers the signal of a stop not yet answered. Only a stop held for an action has
been taken (so that the next look sees past it): a SIGKILL of the watcher during that action loses that one signal
(a fault repeats itself at once, untraced; a sent one is gone).

A capture while attached freezes on this same tracer thread (freeze.Attachment): no detach and re-seize in which a
crash could pass unseen. A dump's VA clone is made there too (vaclone.py): the clone is this thread's tracee, held in
its birth stop, never resumed; the serve loop takes whatever event of it comes (its death, a SIGKILL from anyone)
and answers none, so that it neither runs the program's code nor sits untaken at the head of the next peek. Its
pid is forgotten as soon as its exit is taken here, before the source reaps it and the pid can be reused.

A held signal stop that the watcher dumps with the clone is let go as soon as the clone holds the state (the thaw
of that freeze): the handler runs while the clone is copied, not after. A crash or an exit stop stays held for the
whole action (the dump copies while frozen then: the process ends once let go).

Ending the watch answers what is held and ends the tracer thread: the kernel then detaches every thread without
stopping it (no EINTR), and a signal caught in a stop at that moment is delivered.

The tracer sleeps in sigtimedwait(SIGCHLD): a tracee's stop signals the watcher process, and `call` rings the
thread with a SIGCHLD of its own. So that the notification reaches a tracer thread rather than be taken (and
dropped, SIGCHLD being ignored) by another thread, the thread that attaches blocks SIGCHLD while any attachment
lives; with several attachments, the tracer that takes one passes it on to the others.
"""

from __future__ import annotations

import sys

assert sys.platform == "linux"

import collections
import contextlib
import errno
import os
import signal
import threading
from collections.abc import Callable
from typing import Final

from pss_cli import interrupts
from pss_cli.errors import NoSuchProcess, OperationFailed
from pss_cli.model import AttachSpec, WatchStop
from pss_cli.platform.linux import access, procfs, ptrace
from pss_cli.platform.linux.freeze import TracerThread, _seize_refused, set_attachment

#: The signals whose default action ends the process with a core (signal(7)): what --on-crash catches.
CRASH_SIGNALS: Final = frozenset(
    {
        signal.SIGSEGV,
        signal.SIGBUS,
        signal.SIGILL,
        signal.SIGFPE,
        signal.SIGABRT,
        signal.SIGSYS,
        signal.SIGTRAP,
        signal.SIGXCPU,
        signal.SIGXFSZ,
        signal.SIGQUIT,
    }
)
#: si_code values (asm-generic/siginfo.h): at or below 0 the signal was sent by a process (kill, tgkill, sigqueue).
SI_USER: Final = 0
SI_TKILL: Final = -6
#: How long the tracer sleeps when no SIGCHLD comes: only a notification taken elsewhere waits this long.
IDLE_SLICE: Final = 0.05
SYS_exit_group: Final = 231
#: Where orig_rax sits in struct user (the sixteenth word of user_regs_struct).
USER_ORIG_RAX_OFFSET: Final = 120
#: Look at the next event of this thread's tracees (__WNOTHREAD) without taking it (WNOWAIT): a stop whose status
#: was taken by a wait has lost its signal, which a tracer that then dies (SIGKILL) would never hand back.
_PEEK_ANY: Final = os.WEXITED | os.WSTOPPED | os.WNOHANG | os.WNOWAIT | ptrace.__WALL | 0x20000000
_SIGCHLD_SET: Final = frozenset({signal.SIGCHLD})

_lock = threading.Lock()
_live: list[Attachment] = []
_blocked_here: set[int] = set()


class Attachment:
    """Process `pid` held seized by a tracer thread of its own; see the module docstring. Made by `attach`."""

    def __init__(self, pid: int, spec: AttachSpec, wake: Callable[[], None]) -> None:
        self.pid = pid
        self.spec = spec
        self._wake = wake
        self.options = ptrace.PTRACE_O_TRACECLONE | (ptrace.PTRACE_O_TRACEEXIT if spec.exit else 0)
        #: tid -> (wait status, siginfo): threads held in a stop until the watcher has acted (freeze.Attachment).
        self.held: dict[int, tuple[int, ptrace.siginfo_t | None]] = {}
        #: tid -> the trigger each held thread stopped for ("signal", "crash", "exit").
        self._why: dict[int, str] = {}
        #: Held threads handed to the watcher by `take`, in order, not released yet: it acts on the first.
        self._taken: list[int] = []
        #: VA clones this tracer thread holds (freeze.Attachment.clones).
        self.clones: set[int] = set()
        #: Set once the watch ends: stops are passed on as they came, none taken and held (a stop taken just before
        #: the tracer thread ends would lose its signal in the kernel's detach).
        self.closing = False
        #: Signal-delivery-stops seen, by signal number: each was passed on.
        self.counts: collections.Counter[int] = collections.Counter()
        #: The wait status the process ended with, once it has.
        self.ended: int | None = None
        self._new: collections.deque[WatchStop] = collections.deque()
        self._status_path = f"/proc/{pid}/status"
        self.tracer = TracerThread.start()

    # ---- the caller's thread ----------------------------------------------------------------------------------

    def start(self) -> None:
        try:
            self.tracer.call(self._seize_all)
        except BaseException:
            self.tracer.close()  # the kernel detaches whatever was seized
            raise
        set_attachment(self.pid, self)
        self.tracer.idle = self._serve
        self.tracer.call(lambda: None)  # the thread waits for a job as it was told before: one ends that wait

    def take(self) -> list[WatchStop]:
        """The stops held since the last look, each once."""
        out = []
        while self._new:
            stop = self._new.popleft()
            self._taken.append(stop.tid)
            out.append(stop)
        return out

    @property
    def acting(self) -> int | None:
        """The held thread the watcher acts on now: the first it took and has not released (freeze.Attachment)."""
        return self._taken[0] if self._taken else None

    def job_stopped(self) -> bool:
        """A thread the watch does not hold sits in a ptrace stop: a job-control stop (SIGSTOP, SIGTSTP...) the
        watch answered with PTRACE_LISTEN, or a stop being answered right now. A call injected into a listening
        thread would leave it where LISTEN no longer applies (stuck, deaf to SIGCONT): such a process is copied
        while frozen instead; it is not running anyway."""
        try:
            tids = os.listdir(f"/proc/{self.pid}/task")
        except OSError:
            return False
        for name in tids:
            tid = int(name)
            if tid in self.held:
                continue
            try:
                if procfs.read_stat(self.pid, tid).state == "t":
                    return True
            except (OSError, ValueError):
                continue
        return False

    def dying(self) -> bool:
        """A thread is held in a crash or in its exit: the process ends once it is let go (freeze.Attachment)."""
        # tuple() copies in one step under the GIL: the tracer thread may add or drop a held thread meanwhile.
        return any(why != "signal" for why in tuple(self._why.values()))

    def release(self, stop: WatchStop) -> None:
        """Resume a held thread: the signal it stopped for is delivered, an exit goes on."""
        with contextlib.suppress(ValueError):
            self._taken.remove(stop.tid)
        with interrupts.held():
            self.tracer.call(lambda: self.let_go(stop.tid))

    def close(self) -> None:
        """Answer every held stop, then end the tracer thread: the kernel detaches every thread, none stopped."""
        with interrupts.held():
            try:
                self.tracer.call(self._release_all)
            finally:
                set_attachment(self.pid, None)
                self.tracer.close()

    # ---- the tracer thread ------------------------------------------------------------------------------------

    def _seize_all(self) -> None:
        seen: set[int] = set()
        while True:
            try:
                tids = [int(t) for t in os.listdir(f"/proc/{self.pid}/task")]
            except FileNotFoundError:
                raise NoSuchProcess(f"no process with PID {self.pid}", pid=self.pid) from None
            fresh = [tid for tid in tids if tid not in seen]
            if not fresh:
                return
            for tid in fresh:
                seen.add(tid)
                try:
                    ptrace.seize(tid, self.options)
                except OSError as exc:
                    if exc.errno == errno.ESRCH:
                        continue
                    if exc.errno == errno.EPERM:
                        if access.tracer_of(self.pid, tid) == os.getpid():
                            continue  # born traced: TRACECLONE of a thread seized a moment ago
                        raise _seize_refused(self.pid, tid, "watch (PTRACE_SEIZE)") from None
                    raise OperationFailed(
                        f"PTRACE_SEIZE of thread {tid} of process {self.pid} failed: {exc.strerror}", pid=self.pid
                    ) from None

    def _serve(self) -> None:
        """One round between jobs: answer every stop there is, else sleep until a SIGCHLD or IDLE_SLICE."""
        found = False
        while True:
            try:
                got = os.waitid(os.P_ALL, 0, _PEEK_ANY)
            except ChildProcessError:
                break  # no tracee left: the process has ended
            if got is None:
                break
            found = True
            if got.si_pid in self.clones:
                self._clone_event(got.si_pid)
            elif got.si_code == os.CLD_TRAPPED:
                self.settle(got.si_pid, (got.si_status & 0xFFFF) << 8 | 0x7F)  # as waitpid() would say it
            else:
                self.settle(got.si_pid, _take(got.si_pid))
        if found:
            return
        info = signal.sigtimedwait(_SIGCHLD_SET, IDLE_SLICE)
        if info is not None and info.si_code != SI_TKILL:
            _pass_on(self)

    def _clone_event(self, pid: int) -> None:
        """Take an event of a VA clone and answer nothing: it stays where it is; once it has died (our SIGKILL or
        anyone's), it is no tracee any more and its pid goes back to the source, which reaps it (vaclone.py)."""
        status = _take(pid)
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            self.clones.discard(pid)

    def settle(self, tid: int, status: int) -> None:
        """Answer one stop (or note one end) of a tracee, as the module docstring says."""
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            if tid == self.pid:
                self.ended = status
                self._wake()
            return
        if not os.WIFSTOPPED(status):
            return
        event, signo = ptrace.stop_event(status), os.WSTOPSIG(status)
        try:
            if event == 0:
                self.counts[signo] += 1
                trigger = self._signal_trigger(signo)
                if trigger is None:
                    ptrace.cont(tid, signo)
                else:
                    self._hold_signal(tid, status, trigger)
            elif event == ptrace.PTRACE_EVENT_STOP and signo != signal.SIGTRAP:
                ptrace.listen(tid)  # a group-stop (the stop signal is its WSTOPSIG): stay stopped, as untraced
            elif event == ptrace.PTRACE_EVENT_EXIT and self.spec.exit and not self.closing:
                self._maybe_hold_exit(tid, status)
            else:
                ptrace.cont(tid, 0)
        except ProcessLookupError:  # killed meanwhile (SIGKILL reaches a stopped thread)
            self.held.pop(tid, None)
            self._why.pop(tid, None)

    def _signal_trigger(self, signo: int) -> str | None:
        if self.closing:
            return None
        if self.spec.crash and signo in CRASH_SIGNALS and self._default_action(signo):
            return "crash"
        if signo in self.spec.signals:
            return "signal"
        return None

    def _default_action(self, signo: int) -> bool:
        """Neither ignored nor caught, as the process's dispositions stand now (at the stop)."""
        try:
            with open(self._status_path, "rb") as f:
                text = f.read()
        except OSError:
            return True
        bit = 1 << (signo - 1)
        for key in (b"SigIgn:", b"SigCgt:"):
            at = text.find(key)
            if at >= 0 and int(text[at + len(key) : text.index(b"\n", at)].strip(), 16) & bit:
                return False
        return True

    def _hold_signal(self, tid: int, status: int, trigger: str) -> None:
        _take(tid)
        info = ptrace.siginfo_t()
        ptrace.get_siginfo(tid, info)
        self.held[tid] = (status, info)
        self._why[tid] = trigger
        raw = bytes(info._union)
        code = info.si_code
        address = sender = None
        if code > SI_USER and info.si_signo in (
            signal.SIGSEGV,
            signal.SIGBUS,
            signal.SIGILL,
            signal.SIGFPE,
            signal.SIGTRAP,
        ):
            address = int.from_bytes(raw[:8], "little")
        elif code <= SI_USER:
            sender = int.from_bytes(raw[:4], "little", signed=True)
        self._new.append(WatchStop(tid, trigger, info.si_signo, code, address, sender))
        self._wake()

    def _maybe_hold_exit(self, tid: int, status: int) -> None:
        """PTRACE_EVENT_EXIT comes for each thread; held only for the process's own exit."""
        exit_status = ptrace.get_event_msg(tid)
        if not self._process_exits(tid, exit_status):
            ptrace.cont(tid, 0)
            return
        _take(tid)
        self.held[tid] = (status, None)
        self._why[tid] = "exit"
        if os.WIFSIGNALED(exit_status):
            stop = WatchStop(tid, "exit", signo=os.WTERMSIG(exit_status))
        else:
            stop = WatchStop(tid, "exit", exit_status=os.WEXITSTATUS(exit_status))
        self._new.append(stop)
        self._wake()

    def _process_exits(self, tid: int, exit_status: int) -> bool:
        """exit_group() or a fatal signal ends them all; exit() ends the process only as its last thread."""
        if os.WIFSIGNALED(exit_status):
            return True
        regs = ptrace.user_regs_struct()
        ptrace.get_regs(tid, regs)
        if regs.orig_rax == SYS_exit_group:
            return True
        try:
            return procfs.read_stat(self.pid).num_threads <= 1
        except (OSError, ValueError):
            return True

    def let_go(self, tid: int) -> None:
        """Resume a held thread (on the tracer thread). The siginfo is put back first: a call injected into the
        thread meanwhile (the VA clone, its reaping) left it in a single-step SIGTRAP stop, and the held signal is
        delivered from there exactly as it came (same number, same siginfo), once."""
        held = self.held.pop(tid, None)
        self._why.pop(tid, None)
        if held is None:
            return
        status, info = held
        with contextlib.suppress(ProcessLookupError):
            if info is not None:
                ptrace.set_siginfo(tid, info)
            ptrace.cont(tid, os.WSTOPSIG(status) if ptrace.stop_event(status) == 0 else 0)

    def _release_all(self) -> None:
        self.closing = True
        self._taken.clear()
        for tid in list(self.held):
            self.let_go(tid)


def _take(tid: int) -> int:
    """Take the event `_serve` looked at (a stop to hold, an end); 0 if a freeze took it already."""
    try:
        return os.waitpid(tid, os.WNOHANG | ptrace.__WALL)[1]
    except ChildProcessError:
        return 0


def attach(pid: int, spec: AttachSpec, wake: Callable[[], None]) -> Attachment:
    """Seize every thread of `pid` for an attached watch; SIGCHLD is held back in the caller's thread meanwhile."""
    with _lock:
        was = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGCHLD_SET)
        if not _live and signal.SIGCHLD not in was:
            _blocked_here.add(threading.get_ident())
    attachment = Attachment(pid, spec, wake)
    try:
        attachment.start()
    except BaseException:
        _forget(None)
        raise
    with _lock:
        _live.append(attachment)
    return attachment


def detach(attachment: Attachment) -> None:
    try:
        attachment.close()
    finally:
        _forget(attachment)


def _forget(attachment: Attachment | None) -> None:
    with _lock:
        if attachment in _live:
            _live.remove(attachment)
        if not _live and threading.get_ident() in _blocked_here:
            _blocked_here.discard(threading.get_ident())
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGCHLD_SET)


def _pass_on(taker: Attachment) -> None:
    """A SIGCHLD is one notification for the whole process: the tracer that took it rings the others."""
    for other in list(_live):
        if other is not taker:
            other.tracer.ring()

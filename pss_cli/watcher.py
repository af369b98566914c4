"""The `watch` loop: sample every watched process each --poll, fire triggers, act within the limits, report events.

The rules live in pss_cli.watch (pure); the sampling in the platform backend (Linux: /proc only, nothing stopped or
traced between actions); the actions reuse the existing paths (dump with the clone method, capture, duplicate).
--on-signal, --on-crash and --on-exit keep the targets seized instead (the backend's attached watch): a thread it
holds in a stop wakes the loop at once, is acted on while it stays held, and is then let go as it would have gone.
Nothing here imports click or rich: the command passes a `Reporter`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from pss_cli.compress import SUFFIXES
from pss_cli.errors import ExitCode, NoSuchProcess, OutputExists, PssError, UsageError
from pss_cli.lookup import process_name
from pss_cli.model import KERNEL_DUMP, ResourceSample, WatchStop
from pss_cli.naming import file_name
from pss_cli.platform import WatchedProcess, backend
from pss_cli.watch import (
    Action,
    ActionEvent,
    Event,
    Finished,
    Fired,
    Limits,
    LimitSettings,
    SampleEvent,
    Started,
    TargetAppeared,
    TargetExited,
    Triggered,
    Triggers,
    TriggerState,
    fired_for,
    signal_name,
)

#: With --all --wait, new processes are looked for at most this often: a scan of every process costs far more than a
#: sample of one.
RESCAN_SECONDS = 1.0
#: What the `started` event and the first line say when the watch keeps its targets seized.
ATTACHED_NOTE = (
    "--on-signal/--on-crash/--on-exit keep each target seized (ptrace) for the whole watch: a second debugger "
    "(gdb, strace) cannot attach to it meanwhile; every signal is passed on as it came"
)


@dataclass(slots=True)
class Watched:
    pid: int
    name: str
    proc: WatchedProcess
    state: TriggerState
    sample: ResourceSample | None = None
    actions: int = 0


@dataclass(frozen=True, slots=True)
class StatusRow:
    """One line of the live status: the process, each trigger's value now, and the actions taken on it."""

    pid: int
    name: str
    values: dict[str, float | None]
    actions: int


class Reporter(Protocol):
    def event(self, event: Event) -> None: ...

    def status(self, rows: list[StatusRow]) -> None: ...

    def snapshot(self, record: dict[str, Any]) -> None:
        """A --capture snapshot, as one JSON-ready record."""
        ...


@dataclass
class Watcher:
    """One run of `pss-dup watch`."""

    targets: list[str]
    all_matches: bool
    wait: bool
    triggers: Triggers
    limits: LimitSettings
    action: Action
    reporter: Reporter
    verbose: bool = False
    timeout: float = 10.0
    resolve: Callable[..., list[int]] | None = None
    watched: dict[int, Watched] = field(default_factory=dict)
    _pending: list[str] = field(default_factory=list)
    _seen: set[int] = field(default_factory=set)
    _fired_any: bool = False
    #: Set by an attached watch's tracer thread when it holds a stop: the loop wakes at once rather than at the poll.
    _wake: threading.Event = field(default_factory=threading.Event)
    #: Signals passed on to processes no longer watched, by pid.
    _signals_done: dict[int, dict[str, int]] = field(default_factory=dict)

    def run(self) -> int:
        """Watch until -n/--max-size is reached, every target has exited, or --duration runs out; the exit code."""
        started = time.monotonic()
        self.bookkeeping = Limits(self.limits)
        try:
            self._find_targets(first=True)
            self.reporter.event(
                Started(
                    time.time(),
                    tuple({"pid": w.pid, "name": w.name} for w in self.watched.values()),
                    self._trigger_record(),
                    self.action.kind,
                    self._limit_record(),
                    ATTACHED_NOTE if self.triggers.attach.any else None,
                )
            )
            deadline = None if self.limits.duration is None else started + self.limits.duration
            next_tick = time.monotonic()
            last_scan = next_tick
            while True:
                now = time.monotonic()
                if self.wait and (self._pending or self.all_matches) and now - last_scan >= RESCAN_SECONDS:
                    self._find_targets(first=False)
                    last_scan = now
                due = now >= next_tick - 1e-4
                for w in list(self.watched.values()):
                    self._held_stops(w)
                    if due and w.pid in self.watched:
                        self._poll(w)
                    if self.triggers.any and self.bookkeeping.exhausted:
                        return self._finish(self.bookkeeping.exhausted)
                if due:
                    self.reporter.status([self._status_row(w) for w in self.watched.values()])
                    next_tick += self.limits.poll
                    if next_tick < time.monotonic():  # fell behind (a long action): keep the pace from now
                        next_tick = time.monotonic()
                waiting = self.wait and (self._pending or self.all_matches)
                if not self.triggers.any and not waiting and all(w.actions for w in self.watched.values()):
                    return self._finish("acted")
                if not self.watched and not waiting:
                    return self._finish("targets-exited")
                if deadline is not None and time.monotonic() >= deadline:
                    return self._finish("duration")
                pause = max(0.0, next_tick - time.monotonic())
                if deadline is not None:
                    pause = min(pause, max(0.0, deadline - time.monotonic()))
                self._wake.wait(pause)
                self._wake.clear()
        finally:
            for w in self.watched.values():
                w.proc.close()

    def _status_row(self, w: Watched) -> StatusRow:
        values = w.state.current(w.sample)
        if self.triggers.attach.any:
            values["signals"] = sum(w.proc.signal_counts().values())
        return StatusRow(w.pid, w.name, values, w.actions)

    def _signal_record(self) -> dict[str, dict[str, int]] | None:
        if not self.triggers.attach.any:
            return None
        record = {str(pid): counts for pid, counts in self._signals_done.items()}
        for w in self.watched.values():
            record[str(w.pid)] = named_counts(w.proc.signal_counts())
        return record

    def _finish(self, reason: str) -> int:
        b = self.bookkeeping
        if b.failed:
            code = ExitCode.FAILED
        elif reason == "duration" and not self._fired_any:
            code = ExitCode.TIMEOUT
        else:
            code = ExitCode.OK
        self.reporter.event(
            Finished(time.time(), reason, int(code), b.actions, b.failed, b.bytes_written, self._signal_record())
        )
        return int(code)

    def interrupted(self, reason: str, code: int) -> None:
        """Ctrl-C or SIGTERM: the last event says so (the command exits through its usual path)."""
        b = getattr(self, "bookkeeping", Limits(self.limits))
        self.reporter.event(
            Finished(time.time(), reason, code, b.actions, b.failed, b.bytes_written, self._signal_record())
        )

    # ---- targets ----------------------------------------------------------------------------------------------

    def _find_targets(self, *, first: bool) -> None:
        """Resolve TARGETs; a missing one is NoSuchProcess (exit 3) unless --wait, when it is looked for again."""
        from pss_cli.lookup import resolve

        find = self.resolve or resolve
        wanted = list(self.targets) if first else list(self._pending)
        if not first and self.all_matches:
            wanted = list(self.targets)
        self._pending = []
        for target in wanted:
            try:
                pids = find(target, all_matches=self.all_matches)
            except NoSuchProcess:
                if not self.wait:
                    raise
                self._pending.append(target)
                continue
            for pid in pids:
                if first and pid == self.action.dup_into:
                    raise UsageError(f"--dup {pid} is a watched process: a snapshot cannot be pushed into itself")
                if pid in self._seen or pid == self.action.dup_into or pid == os.getpid():
                    continue
                self._seen.add(pid)
                self._add(pid, announce=not first)

    def _add(self, pid: int, *, announce: bool) -> None:
        attach = self.triggers.attach
        try:
            proc = backend().watch(pid, attach if attach.any else None, self._wake.set)
        except NoSuchProcess:
            if not self.wait:
                raise
            return
        name = process_name(pid)
        self.watched[pid] = Watched(pid, name, proc, TriggerState(self.triggers))
        if announce:
            self.reporter.event(TargetAppeared(time.time(), pid, name))

    # ---- one process, one poll --------------------------------------------------------------------------------

    def _poll(self, w: Watched) -> None:
        try:
            w.sample = w.proc.sample(fds=self.triggers.needs_fds, thread_states=self.triggers.needs_threads)
        except NoSuchProcess:
            self._gone(w)
            return
        fired = w.state.update(w.sample)
        if not self.triggers.any and not w.actions:  # no trigger given: act once on each process, now
            fired = [Fired("now", 0, 0)]
        if self.verbose:
            self.reporter.event(SampleEvent(time.time(), w.pid, w.state.current(w.sample)))
        if fired and (self.bookkeeping.may_act(w.pid, w.sample.at) or fired[0].trigger == "now"):
            self._act(w, fired[0])

    def _held_stops(self, w: Watched) -> None:
        """Act on each thread the attached watch holds (a signal, a crash, the exit), then let it go on."""
        for stop in w.proc.stops():
            try:
                self._act_on_stop(w, stop)
            finally:
                w.proc.release(stop)

    def _act_on_stop(self, w: Watched, stop: WatchStop) -> None:
        fired = fired_for(stop)
        if self.bookkeeping.may_act(w.pid, time.monotonic()):
            self._act(w, fired)

    def _gone(self, w: Watched) -> None:
        status = w.proc.exit_status()
        counts = named_counts(w.proc.signal_counts())
        w.proc.close()
        del self.watched[w.pid]
        code, signo = status if status is not None else (None, None)
        if self.triggers.attach.any:
            self._signals_done[w.pid] = counts
        self.reporter.event(
            TargetExited(
                time.time(),
                w.pid,
                w.name,
                code,
                None if signo is None else signal_name(signo),
                counts if self.triggers.attach.any else None,
            )
        )

    def _act(self, w: Watched, fired: Fired) -> None:
        detail = dict(fired.detail)
        if fired.trigger == "hang":
            detail["threads"] = {str(tid): place for tid, place in w.proc.wait_places().items()}
        self._fired_any = True
        self.reporter.event(Triggered(time.time(), w.pid, w.name, fired.trigger, fired.value, fired.threshold, detail))
        event = self._do(w, fired.trigger)
        w.actions += 1
        w.state.acted(fired, time.monotonic())
        self.bookkeeping.record(w.pid, time.monotonic(), event.bytes or 0, ok=event.ok)
        self.reporter.event(event)

    def _do(self, w: Watched, trigger: str) -> ActionEvent:
        """The action, then --exec; any failure of either becomes a failed action event (exit 1), never a crash."""
        a = self.action
        fields: dict[str, Any] = {}
        try:
            if a.kind == "dump":
                fields = self._dump(w, trigger)
            elif a.kind == "capture":
                fields = self._capture(w, trigger)
            else:
                fields = self._dup(w)
        except NoSuchProcess as exc:
            return ActionEvent(time.time(), w.pid, w.name, a.kind, trigger, False, error=str(exc))
        except PssError as exc:
            return ActionEvent(time.time(), w.pid, w.name, a.kind, trigger, False, error=str(exc))
        ok = True
        if a.exec_command is not None:
            fields["exec_status"] = run_exec(a.exec_command, w.pid, trigger, fields.get("file"), fields.get("handle"))
            ok = fields["exec_status"] == 0
        return ActionEvent(time.time(), w.pid, w.name, a.kind, trigger, ok, **fields)

    def _dump(self, w: Watched, trigger: str) -> dict[str, Any]:
        from pss_cli import api

        base = file_name(
            self.action.template,
            name=w.name,
            pid=w.pid,
            trigger=trigger,
            when=time.time(),
            n=self.bookkeeping.actions + 1,
            container=api.container_label(w.pid) if "{container}" in self.action.template else None,
        )
        compress = self.action.compress
        if compress is not None and not base.endswith(SUFFIXES[compress]):
            base += SUFFIXES[compress]
        for attempt in range(1, 1000):
            path = os.path.join(self.action.directory, base if attempt == 1 else numbered(base, attempt))
            try:
                snap = backend().dump(
                    w.pid,
                    path,
                    force=False,
                    timeout=self.timeout,
                    clone_method=self.action.clone_method,
                    compress=compress,
                    selection=self.action.selection or KERNEL_DUMP,
                )
                break
            except OutputExists as exc:
                if not os.path.lexists(path):
                    raise  # not a name clash: the disk is full, or the file cannot be written
                last = exc
        else:
            raise last
        return {
            "file": os.path.abspath(path),
            "bytes": os.stat(path).st_size,
            "stopped_ms": snap.performance.stopped_ms,
            "captured_at": snap.captured_at,
            "method": snap.memory.method if snap.memory is not None else None,
        }

    def _capture(self, w: Watched, trigger: str) -> dict[str, Any]:
        from pss_cli.api import capture
        from pss_cli.serial import to_dict

        model = capture(w.pid, timeout=self.timeout)
        self.reporter.snapshot({"event": "snapshot", "pid": w.pid, "trigger": trigger, "snapshot": to_dict(model)})
        return {"stopped_ms": model.performance.stopped_ms, "captured_at": model.captured_at}

    def _dup(self, w: Watched) -> dict[str, Any]:
        from pss_cli.api import capture_snapshot, duplicate

        assert self.action.dup_into is not None
        local = capture_snapshot(w.pid, timeout=self.timeout)
        try:
            result = duplicate(local, w.pid, self.action.dup_into, timeout=self.timeout)
        finally:
            local.close()
        return {
            "handle": result.target_handle,
            "stopped_ms": local.model.performance.stopped_ms,
            "captured_at": local.model.captured_at,
        }

    # ---- records for the started event -------------------------------------------------------------------------

    def _trigger_record(self) -> dict[str, Any]:
        t = self.triggers
        timed = t.cpu is not None or t.cpu_below is not None
        record = {
            "cpu": t.cpu,
            "cpu_below": t.cpu_below,
            "for_seconds": t.for_seconds if timed else None,
            "memory": list(t.memory),
            "memory_below": t.memory_below,
            "fds": t.fds,
            "threads": t.threads,
            "hang": t.hang,
            "on_signal": [signal_name(n) for n in t.on_signal],
            "on_crash": t.on_crash or None,
            "on_exit": t.on_exit or None,
        }
        return {k: v for k, v in record.items() if v not in (None, [])}

    def _limit_record(self) -> dict[str, Any]:
        s = self.limits
        return {"count": s.count, "every": s.every, "poll": s.poll, "duration": s.duration, "max_size": s.max_size}


def numbered(name: str, n: int) -> str:
    """`name` with `-n` before its suffix: a second dump in the same second never replaces the first."""
    stem, dot, suffix = name.rpartition(".")
    return f"{stem}-{n}.{suffix}" if dot and stem else f"{name}-{n}"


def run_exec(command: str, pid: int, trigger: str, path: str | None, handle: int | None) -> int:
    """--exec: COMMAND through the shell, told what was done in PSS_DUP_*; its output goes to stderr, so that stdout
    stays the event stream. Its exit status (128 + N when a signal N ended it, as shells report it)."""
    env = {
        **os.environ,
        "PSS_DUP_PID": str(pid),
        "PSS_DUP_TRIGGER": trigger,
        "PSS_DUP_FILE": path or "",
        "PSS_DUP_HANDLE": "" if handle is None else str(handle),
    }
    sys.stdout.flush()
    with sigchld_unblocked():
        done = subprocess.run(command, shell=True, env=env, stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno())
    return done.returncode if done.returncode >= 0 else 128 - done.returncode


@contextlib.contextmanager
def sigchld_unblocked() -> Iterator[None]:
    """An attached watch blocks SIGCHLD in this thread (its tracer threads wait for it); a command started meanwhile
    must not inherit that mask (a shell waits for its own children with it)."""
    if sys.platform == "win32":
        yield
        return
    was = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
    try:
        yield
    finally:
        if signal.SIGCHLD in was:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})


def named_counts(counts: dict[int, int]) -> dict[str, int]:
    return {signal_name(n): c for n, c in sorted(counts.items())}

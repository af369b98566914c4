"""`pss-dup watch`: the trigger and limit logic, pure and platform-neutral, and the events it reports.

Nothing here reads /proc or touches a process: the command feeds `Sample`s (from the backend) to a `TriggerState`
per process, asks `Limits` whether it may act, and reports what happened as event records. That keeps every rule
(thresholds, --for windows, --every, -n, --max-size) testable without starting a process.

Three kinds of triggers:
- level triggers (--cpu, --cpu-below, --memory-below, --fds, --threads, --hang) fire whenever their condition holds
  (for --cpu/--cpu-below: for --for seconds in a row) and --every lets the process be acted on again;
- --memory thresholds are edge triggers: each fires once, in ascending order, one action per threshold crossed;
- --on-signal, --on-crash and --on-exit are events an attached watch sees (the backend keeps the process seized
  and holds the thread in its stop while the action runs): one `Fired` per event, from `fired_for`.
"""

from __future__ import annotations

import math
import re
import signal
from dataclasses import asdict, dataclass, field
from typing import Any

from pss_cli.model import AttachSpec, DumpSelection, ResourceSample, WatchStop

#: Size suffixes, binary like ps and free: 512M is 512 MiB.
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.I)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
DEFAULT_TEMPLATE = "{name}_{trigger}_{time}.{pid}.core"
#: What --on-signal cannot watch: SIGKILL never reaches a tracer.
UNWATCHABLE_SIGNALS = frozenset({"SIGKILL"})
#: Below this the watcher would spend a core on sampling and the kernel's tick (CPU times count in 1/CLK_TCK s) could
#: not tell a busy process from an idle one within one interval.
MIN_POLL = 0.01


def parse_size(text: str) -> int:
    """'512M', '2G', '4096', '1.5G' as bytes (binary units); ValueError for anything else."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a size (like 4096, 512K, 512M, 2G)")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def parse_signal(text: str) -> int:
    """'USR1', 'SIGUSR1', 'sigusr1' or '10' as a signal number; ValueError for anything else."""
    name = text.strip().upper()
    if name.isdigit():
        number = int(name)
        if not 1 <= number <= 64:
            raise ValueError(f"{text!r} is not a signal number (1 to 64)")
        return number
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise ValueError(f"{text!r} is not a signal name (like USR1, SIGSEGV) or number") from None


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"


def size_text(size: int) -> str:
    """A size as people write it for --memory: the largest binary unit that divides it, else MiB with a fraction."""
    for unit in ("T", "G", "M", "K"):
        if size >= _UNITS[unit] and size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]}{unit}"
    return f"{size / (1 << 20):.1f}M" if size >= 1 << 20 else f"{size}"


@dataclass(frozen=True, slots=True)
class Triggers:
    """The thresholds a watch checks; None (or empty) where not asked for."""

    cpu: float | None = None
    cpu_below: float | None = None
    for_seconds: float = 1.0
    memory: tuple[int, ...] = ()
    memory_below: int | None = None
    fds: int | None = None
    threads: int | None = None
    hang: float | None = None
    on_signal: tuple[int, ...] = ()
    on_crash: bool = False
    on_exit: bool = False

    @property
    def attach(self) -> AttachSpec:
        """The triggers only an attached watch sees (it then keeps the process seized)."""
        return AttachSpec(frozenset(self.on_signal), self.on_crash, self.on_exit)

    @property
    def any(self) -> bool:
        return bool(
            self.memory
            or self.attach.any
            or any(
                v is not None for v in (self.cpu, self.cpu_below, self.memory_below, self.fds, self.threads, self.hang)
            )
        )

    @property
    def needs_fds(self) -> bool:
        return self.fds is not None

    @property
    def needs_threads(self) -> bool:
        """Per-thread states are read only for --hang (a thread in D), never otherwise: they cost a read a thread."""
        return self.hang is not None


@dataclass(frozen=True, slots=True)
class LimitSettings:
    count: int = 1
    every: float = 10.0
    poll: float = 1.0
    duration: float | None = None
    max_size: int | None = None


def problems(triggers: Triggers, limits: LimitSettings) -> list[str]:
    """Every threshold or limit that makes no sense, as one message each (the command exits 2 on the first)."""
    found = []
    numbers: dict[str, float | None] = {
        "--cpu": triggers.cpu,
        "--cpu-below": triggers.cpu_below,
        "--for": triggers.for_seconds,
        "--memory-below": triggers.memory_below,
        "--fds": triggers.fds,
        "--threads": triggers.threads,
        "--hang": triggers.hang,
        "--every": limits.every,
        "--duration": limits.duration,
        "--max-size": limits.max_size,
        "--poll": limits.poll,
    }
    for name, value in numbers.items():
        if value is not None and (not math.isfinite(value) or value < 0):
            found.append(f"{name} must be a finite number of 0 or more, not {value}")
    for name, value in (("--poll", limits.poll), ("--duration", limits.duration), ("--hang", triggers.hang)):
        if value is not None and value == 0:
            found.append(f"{name} must be more than 0")
    if limits.poll > 3600 or 0 < limits.poll < MIN_POLL:
        found.append(f"--poll must be from {MIN_POLL} to 3600 seconds")
    if limits.count < 1:
        found.append(f"-n must be 1 or more, not {limits.count}")
    if triggers.cpu_below is not None and triggers.cpu is not None and triggers.cpu_below > triggers.cpu:
        found.append(f"--cpu-below {triggers.cpu_below:g} is above --cpu {triggers.cpu:g}: no process can be both")
    if any(m <= 0 for m in triggers.memory):
        found.append("--memory must be more than 0")
    if any(b <= a for a, b in zip(triggers.memory, triggers.memory[1:], strict=False)):
        listed = ", ".join(size_text(m) for m in triggers.memory)
        found.append(f"--memory thresholds must be given in ascending order, each once (got {listed})")
    if triggers.memory_below is not None and triggers.memory and triggers.memory_below > triggers.memory[0]:
        found.append("--memory-below is above the first --memory threshold: no process can be both")
    for number in triggers.on_signal:
        if signal_name(number) in UNWATCHABLE_SIGNALS:
            found.append(f"--on-signal {signal_name(number)}: that signal never reaches a tracer, it cannot be watched")
    return found


# ---- triggers -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fired:
    """A trigger whose condition holds: its kind, the value that made it fire, the threshold, and details."""

    trigger: str
    value: float
    threshold: float
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class TriggerState:
    """One process's trigger bookkeeping between samples."""

    triggers: Triggers
    previous: ResourceSample | None = None
    cpu: float | None = None
    _above_since: float | None = None
    _below_since: float | None = None
    _memory_next: int = 0
    _progress_at: float | None = None
    _d_since: dict[int, float] = field(default_factory=dict)

    def update(self, sample: ResourceSample) -> list[Fired]:
        """Feed one sample; the triggers that hold now, in the order the options are documented."""
        t = self.triggers
        fired: list[Fired] = []
        prev, self.previous = self.previous, sample
        # Samples come every --poll seconds give or take the scheduler: a window ends at the sample nearest to its
        # end, not one whole poll later because this sample came a millisecond early.
        slack = (sample.at - prev.at) / 2 if prev is not None else 0.0
        if prev is not None and sample.at > prev.at:
            self.cpu = 100.0 * (sample.cpu_seconds - prev.cpu_seconds) / (sample.at - prev.at)
            if t.cpu is not None:
                self._above_since = self._window(self.cpu >= t.cpu, self._above_since, prev.at)
                if self._above_since is not None and sample.at - self._above_since >= t.for_seconds - slack:
                    fired.append(
                        Fired("cpu", round(self.cpu, 1), t.cpu, {"for_seconds": sample.at - self._above_since})
                    )
            if t.cpu_below is not None:
                self._below_since = self._window(self.cpu < t.cpu_below, self._below_since, prev.at)
                if self._below_since is not None and sample.at - self._below_since >= t.for_seconds - slack:
                    fired.append(
                        Fired(
                            "cpu-below", round(self.cpu, 1), t.cpu_below, {"for_seconds": sample.at - self._below_since}
                        )
                    )
        if self._memory_next < len(t.memory) and sample.rss >= t.memory[self._memory_next]:
            fired.append(Fired("memory", sample.rss, t.memory[self._memory_next]))
        if t.memory_below is not None and sample.rss < t.memory_below:
            fired.append(Fired("memory-below", sample.rss, t.memory_below))
        if t.fds is not None and sample.fds is not None and sample.fds >= t.fds:
            fired.append(Fired("fds", sample.fds, t.fds))
        if t.threads is not None and sample.threads >= t.threads:
            fired.append(Fired("threads", sample.threads, t.threads))
        if t.hang is not None:
            hung = self._hang(sample, prev, slack)
            if hung is not None:
                fired.append(hung)
        return fired

    @staticmethod
    def _window(holds: bool, since: float | None, interval_start: float) -> float | None:
        """A --for window: it starts where the first interval in which the condition held started."""
        if not holds:
            return None
        return interval_start if since is None else since

    def _hang(self, sample: ResourceSample, prev: ResourceSample | None, slack: float) -> Fired | None:
        assert self.triggers.hang is not None
        if prev is None or self._progress_at is None or sample.cpu_seconds != prev.cpu_seconds:
            self._progress_at = sample.at
        in_d = {tid for tid, state in sample.thread_states if state == "D"}
        self._d_since = {tid: self._d_since.get(tid, sample.at) for tid in in_d}
        idle = sample.at - self._progress_at
        if idle >= self.triggers.hang - slack:
            return Fired("hang", round(idle, 3), self.triggers.hang, {"reason": "no CPU time used"})
        for tid, since in self._d_since.items():
            if sample.at - since >= self.triggers.hang - slack:
                return Fired(
                    "hang",
                    round(sample.at - since, 3),
                    self.triggers.hang,
                    {"reason": "a thread in uninterruptible sleep (D)", "tid": tid},
                )
        return None

    def acted(self, fired: Fired, now: float) -> None:
        """The action for `fired` was taken: an edge trigger moves to its next threshold, a window starts anew."""
        if fired.trigger == "memory":
            self._memory_next += 1
        elif fired.trigger == "cpu":
            self._above_since = None
        elif fired.trigger == "cpu-below":
            self._below_since = None
        elif fired.trigger == "hang":
            self._progress_at = now
            self._d_since = dict.fromkeys(self._d_since, now)
        # signal, crash, exit: events, nothing to rearm

    def current(self, sample: ResourceSample | None) -> dict[str, float | None]:
        """The value of each requested trigger now, for the status line and `sample` events."""
        t = self.triggers
        values: dict[str, float | None] = {}
        if t.cpu is not None or t.cpu_below is not None:
            values["cpu"] = None if self.cpu is None else round(self.cpu, 1)
        if sample is None:
            return values
        if t.memory or t.memory_below is not None:
            values["memory"] = sample.rss
        if t.fds is not None:
            values["fds"] = sample.fds
        if t.threads is not None:
            values["threads"] = sample.threads
        if t.hang is not None and self._progress_at is not None:
            values["idle_seconds"] = round(sample.at - self._progress_at, 3)
        return values


def fired_for(stop: WatchStop) -> Fired:
    """The trigger an attached watch's held stop stands for. `value` and `threshold` are the signal number for
    "signal" and "crash"; for "exit", `value` is the exit status (128 + N for a signal N, as shells say)."""
    detail: dict[str, Any] = {"tid": stop.tid}
    if stop.trigger == "exit":
        if stop.exit_status is not None:
            detail["status"] = stop.exit_status
            return Fired("exit", stop.exit_status, 0, detail)
        detail["signal"] = signal_name(stop.signo)
        return Fired("exit", 128 + stop.signo, 0, detail)
    detail["signal"] = signal_name(stop.signo)
    if stop.code is not None:
        detail["si_code"] = stop.code
    if stop.address is not None:
        detail["si_addr"] = f"{stop.address:#x}"
    if stop.sender is not None:
        detail["sender_pid"] = stop.sender
    return Fired(stop.trigger, stop.signo, stop.signo, detail)


# ---- limits ---------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Limits:
    """-n, --every and --max-size across the whole watch."""

    settings: LimitSettings
    actions: int = 0
    failed: int = 0
    bytes_written: int = 0
    _last: dict[int, float] = field(default_factory=dict)

    def may_act(self, pid: int, now: float) -> bool:
        last = self._last.get(pid)
        return not self.exhausted and (last is None or now - last >= self.settings.every - 1e-6)

    def record(self, pid: int, now: float, written: int, *, ok: bool) -> None:
        self.actions += 1
        self.failed += not ok
        self.bytes_written += written
        self._last[pid] = now

    @property
    def exhausted(self) -> str | None:
        """Why no more actions may be taken, or None."""
        if self.actions >= self.settings.count:
            return "count"
        if self.settings.max_size is not None and self.bytes_written >= self.settings.max_size:
            return "max-size"
        return None


# ---- events ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """Base of the watch events; `kind` is the JSON "event" field (docs/watch-events.md)."""

    at: float

    kind = "event"

    def record(self) -> dict[str, Any]:
        return {"event": self.kind, **asdict(self)}


@dataclass(frozen=True, slots=True)
class Started(Event):
    targets: tuple[dict[str, Any], ...]
    triggers: dict[str, Any]
    action: str
    limits: dict[str, Any]
    #: Set when the watch keeps its targets seized (--on-signal/--on-crash/--on-exit): what that means for them.
    attached: str | None = None
    kind = "started"


@dataclass(frozen=True, slots=True)
class SampleEvent(Event):
    pid: int
    values: dict[str, float | None]
    kind = "sample"


@dataclass(frozen=True, slots=True)
class Triggered(Event):
    pid: int
    name: str
    trigger: str
    value: float
    threshold: float
    detail: dict[str, Any]
    kind = "triggered"


@dataclass(frozen=True, slots=True)
class ActionEvent(Event):
    pid: int
    name: str
    action: str
    trigger: str
    ok: bool
    file: str | None = None
    bytes: int | None = None
    stopped_ms: float | None = None
    captured_at: float | None = None
    #: How a dump took the memory: "va-clone" or "frozen-copy".
    method: str | None = None
    handle: int | None = None
    exec_status: int | None = None
    error: str | None = None
    kind = "action"


@dataclass(frozen=True, slots=True)
class TargetAppeared(Event):
    pid: int
    name: str
    kind = "target-appeared"


@dataclass(frozen=True, slots=True)
class TargetExited(Event):
    pid: int
    name: str
    #: The exit code; None when a signal ended it (`signal`), or when the watcher could not learn it (it was neither
    #: the parent nor attached).
    status: int | None = None
    signal: str | None = None
    #: Signals the attached watch passed on to it, by name.
    signals: dict[str, int] | None = None
    kind = "target-exited"


@dataclass(frozen=True, slots=True)
class Finished(Event):
    reason: str
    exit_code: int
    actions: int
    failed: int
    bytes_written: int
    #: An attached watch: the signals passed on to each process ({pid: {name: count}}), every one delivered.
    signals: dict[str, dict[str, int]] | None = None
    kind = "finished"


@dataclass(frozen=True, slots=True)
class Action:
    """What to do when a trigger fires: exactly one of dump (a directory), capture, or dup (an analyser's PID)."""

    kind: str  # "dump", "capture" or "dup"
    directory: str = "."
    template: str = ""
    dup_into: int | None = None
    exec_command: str | None = None
    #: --compress for dumps: the compression (pss_cli.compress), or None.
    compress: str | None = None
    #: What memory a dump takes (--mini, --filter, --all-memory); None: what the kernel would dump.
    selection: DumpSelection | None = None
    #: --clone-method of the dumps; None: as `dump` chooses (a crash or exit an attached watch holds: copy).
    clone_method: str | None = None

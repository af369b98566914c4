"""The watch rules without processes: thresholds, --for windows, edge and level triggers, --every/-n/--max-size,
file names from --name templates, and the checks that turn nonsense into usage errors."""

from __future__ import annotations

import pytest

from pss_cli.model import ResourceSample, WatchStop
from pss_cli.naming import WATCH_FIELDS, file_name, template_problem
from pss_cli.watch import (
    DEFAULT_TEMPLATE,
    Limits,
    LimitSettings,
    Triggers,
    TriggerState,
    fired_for,
    parse_signal,
    parse_size,
    problems,
)

MiB = 1 << 20


def sample(
    at: float,
    cpu: float = 0.0,
    rss: int = 0,
    threads: int = 1,
    fds: int | None = None,
    states: tuple[tuple[int, str], ...] = (),
) -> ResourceSample:
    return ResourceSample(at=at, cpu_seconds=cpu, rss=rss, threads=threads, fds=fds, thread_states=states)


def feed(state: TriggerState, samples: list[ResourceSample]) -> list[list[str]]:
    return [[f.trigger for f in state.update(s)] for s in samples]


def test_cpu_fires_only_after_holding_for_the_window() -> None:
    state = TriggerState(Triggers(cpu=50, for_seconds=2))
    # CPU seconds grow by 0.9 per second from t=1: 90 %
    fired = feed(state, [sample(0, 0), sample(1, 0.9), sample(2, 1.8), sample(3, 2.7)])
    assert fired == [[], [], ["cpu"], ["cpu"]]


def test_cpu_window_restarts_when_the_condition_breaks_and_after_an_action() -> None:
    state = TriggerState(Triggers(cpu=50, for_seconds=2))
    assert feed(state, [sample(0, 0), sample(1, 0.9), sample(2, 0.9), sample(3, 1.8)]) == [[], [], [], []]
    (fired,) = state.update(sample(4, 2.7))
    state.acted(fired, 4)
    assert feed(state, [sample(5, 3.6), sample(6, 4.5)]) == [[], ["cpu"]]


def test_cpu_below_and_for_zero_fire_on_the_first_interval() -> None:
    state = TriggerState(Triggers(cpu_below=10, for_seconds=0))
    assert feed(state, [sample(0, 0), sample(1, 0.05)]) == [[], ["cpu-below"]]


def test_memory_thresholds_fire_once_each_in_order() -> None:
    state = TriggerState(Triggers(memory=(10 * MiB, 20 * MiB)))
    fired = state.update(sample(0, rss=25 * MiB))
    assert [(f.trigger, f.threshold) for f in fired] == [("memory", 10 * MiB)]
    state.acted(fired[0], 0)
    fired = state.update(sample(1, rss=25 * MiB))
    assert [(f.trigger, f.threshold) for f in fired] == [("memory", 20 * MiB)]
    state.acted(fired[0], 1)
    assert state.update(sample(2, rss=90 * MiB)) == []


def test_level_triggers_hold_while_their_condition_does() -> None:
    state = TriggerState(Triggers(fds=10, threads=4, memory_below=MiB))
    assert feed(state, [sample(0, fds=9, threads=3, rss=2 * MiB), sample(1, fds=10, threads=4, rss=MiB - 1)]) == [
        [],
        ["memory-below", "fds", "threads"],
    ]


def test_hang_fires_after_no_cpu_time_or_a_long_d_state() -> None:
    idle = TriggerState(Triggers(hang=2))
    assert feed(idle, [sample(0, 5), sample(1, 5), sample(2, 5)]) == [[], [], ["hang"]]
    busy_but_stuck = TriggerState(Triggers(hang=2))
    fired = feed(busy_but_stuck, [sample(t, cpu=t, states=((7, "D"), (8, "R"))) for t in range(4)])
    assert fired == [[], [], ["hang"], ["hang"]]
    (last,) = busy_but_stuck.update(sample(4, cpu=4, states=((7, "D"),)))
    assert last.detail["tid"] == 7
    busy_but_stuck.acted(last, 4)
    assert busy_but_stuck.update(sample(5, cpu=5, states=((7, "D"),))) == []


def test_limits_count_every_and_max_size() -> None:
    limits = Limits(LimitSettings(count=3, every=10, max_size=100))
    assert limits.may_act(1, 0)
    limits.record(1, 0, 40, ok=True)
    assert not limits.may_act(1, 9.9) and limits.may_act(2, 9.9) and limits.may_act(1, 10)
    limits.record(2, 10, 70, ok=False)
    assert limits.exhausted == "max-size" and limits.failed == 1
    counted = Limits(LimitSettings(count=1, every=0))
    counted.record(1, 0, 0, ok=True)
    assert counted.exhausted == "count" and not counted.may_act(2, 100)


@pytest.mark.parametrize(
    ("text", "size"),
    [("4096", 4096), ("512K", 512 << 10), ("512M", 512 * MiB), ("2G", 2 << 30), ("1.5g", 3 << 29), ("64MiB", 64 * MiB)],
)
def test_sizes_are_binary(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "-1M", "lots", "1Q", "nan"])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(
    ("triggers", "limits", "message"),
    [
        (Triggers(cpu=-1), LimitSettings(), "--cpu must be"),
        (Triggers(cpu=float("nan")), LimitSettings(), "--cpu must be"),
        (Triggers(cpu=50, cpu_below=60), LimitSettings(), "above --cpu"),
        (Triggers(memory=(2 * MiB, MiB)), LimitSettings(), "ascending"),
        (Triggers(memory=(MiB, MiB)), LimitSettings(), "ascending"),
        (Triggers(hang=0), LimitSettings(), "--hang must be more than 0"),
        (Triggers(), LimitSettings(poll=0), "--poll must be more than 0"),
        (Triggers(), LimitSettings(poll=0.001), "--poll must be from 0.01"),
        (Triggers(), LimitSettings(count=0), "-n must be"),
        (Triggers(), LimitSettings(every=-1), "--every must be"),
        (Triggers(), LimitSettings(duration=0), "--duration must be more than 0"),
    ],
)
def test_nonsense_is_reported(triggers: Triggers, limits: LimitSettings, message: str) -> None:
    assert any(message in p for p in problems(triggers, limits)), problems(triggers, limits)


def test_sensible_settings_have_no_problems() -> None:
    assert problems(Triggers(cpu=90, cpu_below=5, memory=(MiB, 2 * MiB), hang=30), LimitSettings()) == []


def test_file_names_are_safe_whatever_the_process_is_called() -> None:
    name = file_name(DEFAULT_TEMPLATE, name="../evil name\n", pid=42, trigger="cpu", when=0, n=1)
    assert "/" not in name and " " not in name and "\n" not in name
    assert name.startswith("evil_name_cpu_") and name.endswith(".42.core")


@pytest.mark.parametrize(
    "template",
    ["../{name}", "{name}/x", "{nope}.core", "{name", "a b{pid}", ".{pid}", "{name:/>70}", "{pid!r}", "-{pid}"],
)
def test_bad_templates_are_refused(template: str) -> None:
    assert template_problem(template, WATCH_FIELDS) is not None


def test_every_field_is_allowed_in_a_template() -> None:
    assert template_problem("{name}-{pid}-{trigger}-{time}-{host}-{n}-{container}.core", WATCH_FIELDS) is None


def test_a_window_ends_at_the_sample_nearest_its_end_not_a_poll_later() -> None:
    state = TriggerState(Triggers(cpu=50, for_seconds=2))
    # the third sample comes 2 ms early: without slack the watch would act one whole --poll late
    assert feed(state, [sample(0, 0), sample(1, 0.9), sample(1.998, 1.8)]) == [[], [], ["cpu"]]
    hang = TriggerState(Triggers(hang=1))
    assert feed(hang, [sample(0, 3), sample(0.499, 3), sample(0.998, 3)]) == [[], [], ["hang"]]


def test_container_token_names_the_container_or_host() -> None:
    inside = file_name("{container}_{pid}.core", name="x", pid=7, trigger="cpu", when=0, n=1, container="4f3c2a1b9d8e")
    assert inside == "4f3c2a1b9d8e_7.core"
    assert file_name("{container}.core", name="x", pid=7, trigger="cpu", when=0, n=1) == "host.core"
    assert file_name("{container}.core", name="x", pid=7, trigger="cpu", when=0, n=1, container="../a b") == "a_b.core"
    assert template_problem("{container}_{pid}.core") is None


@pytest.mark.parametrize("text", ["USR1", "SIGUSR1", "sigusr1", "10"])
def test_signals_are_named_as_people_write_them(text: str) -> None:
    assert parse_signal(text) == 10


@pytest.mark.parametrize("text", ["USR9", "0", "65", "", "SIG"])
def test_what_is_no_signal_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_signal(text)


def test_sigkill_cannot_be_watched_and_attached_triggers_count_as_triggers() -> None:
    triggers = Triggers(on_signal=(9,))
    assert triggers.any and triggers.attach.any
    assert any("never reaches a tracer" in p for p in problems(triggers, LimitSettings()))
    assert not problems(Triggers(on_signal=(10, 19), on_crash=True, on_exit=True), LimitSettings())


def test_a_held_stop_reports_its_signal_and_where_it_came_from() -> None:
    crash = fired_for(WatchStop(7, "crash", signo=11, code=1, address=0))
    assert (crash.trigger, crash.value, crash.threshold) == ("crash", 11, 11)
    assert crash.detail == {"tid": 7, "signal": "SIGSEGV", "si_code": 1, "si_addr": "0x0"}
    sent = fired_for(WatchStop(7, "signal", signo=10, code=0, sender=99))
    assert sent.detail["sender_pid"] == 99 and "si_addr" not in sent.detail
    assert fired_for(WatchStop(7, "exit", exit_status=3)).value == 3
    killed = fired_for(WatchStop(7, "exit", signo=15))
    assert killed.value == 128 + 15 and killed.detail["signal"] == "SIGTERM"

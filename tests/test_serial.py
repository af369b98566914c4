"""The JSON codec of the model: exact round-trips, the documented encodings, and strict refusal of bad input."""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import math
import operator
import types
import typing
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pss_cli import serial
from pss_cli.errors import BadSnapshot
from pss_cli.model import (
    AccessUse,
    CaptureFlags,
    DuplicateResult,
    FreeResult,
    HandleEntry,
    HandleFlags,
    HandleType,
    MemoryCapture,
    MemoryProtection,
    MemoryState,
    MemoryType,
    Performance,
    ProcessFlags,
    ProcessInfo,
    Snapshot,
    SyscallState,
    ThreadContext,
    ThreadEntry,
    ThreadFlags,
    ThreadState,
    VaRegion,
)

GPR_NAMES = (
    "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx", "rsi", "rdi",
    "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs",
)  # fmt: skip


def thread(tid: int, *, context: bool = True) -> ThreadEntry:
    regs = tuple((name, (tid << 20) + i * 8) for i, name in enumerate(GPR_NAMES))
    ctx = ThreadContext("x86_64", regs, bytes(range(256)) * 2, b"\x01" * 1088) if context else None
    return ThreadEntry(
        tid=tid,
        name=f"worker-{tid}",
        state=ThreadState.SLEEPING,
        flags=ThreadFlags.NONE,
        user_time=0.25,
        system_time=0.125,
        start_time=1_700_000_000.5,
        priority=20,
        base_priority=0,
        affinity=(0, 1),
        processor=1,
        syscall=SyscallState(230, "clock_nanosleep", (0, 0, 0x7FFD0000, 0, 0, 0), 0x7FFD1000, 0x7F0000001234),
        sig_blocked=0,
        sig_pending=1 << 9,
        context=ctx,
    )


def realistic_snapshot() -> Snapshot:
    process = ProcessInfo(
        pid=4242,
        ppid=1,
        name="python3",
        exe="/usr/bin/python3.11",
        cmdline=("python3", "-c", "import time; time.sleep(60)", "caf\u00e9", "\udcff"),
        cwd="/tmp",
        state=ThreadState.SLEEPING,
        start_time=1_700_000_000.25,
        user_time=1.5,
        system_time=0.5,
        base_priority=20,
        nice=0,
        flags=ProcessFlags.NONE,
        exit_status=None,
        affinity=(0, 1),
        thread_count=3,
        handle_count=4,
        virtual_size=1 << 30,
        peak_virtual_size=1 << 31,
        working_set_size=1 << 24,
        peak_working_set_size=1 << 25,
        private_usage=None,
        page_fault_count=1234,
        uids=(0, 0, 0, 0),
        gids=(0, 0, 0, 0),
        environ=(("HOME", "/root"), ("LANG", "C.UTF-8"), ("odd key", "\x00\n")),
        sig_pending=0,
        sig_blocked=0,
        sig_ignored=1 << 12,
        sig_caught=1 << 1,
        seccomp_mode=0,
        no_new_privs=False,
        dumpable=True,
    )
    handles = (
        HandleEntry(0, HandleType.DEVICE, "chr", "/dev/pts/0", HandleFlags.HAVE_TYPE | HandleFlags.HAVE_NAME, False),
        HandleEntry(
            3,
            HandleType.EVENTFD,
            "anon_inode",
            "anon_inode:[eventfd]",
            HandleFlags.HAVE_TYPE | HandleFlags.HAVE_TYPE_SPECIFIC_INFORMATION,
            True,
            open_flags=0o2000002,
            position=0,
            inode=11,
            mount_id=15,
            type_specific=(("eventfd-count", 7), ("eventfd-id", "12")),
        ),
    )
    regions = (
        VaRegion(
            0x555555554000,
            0x1000,
            "r--p",
            MemoryProtection.READONLY,
            MemoryState.COMMIT,
            MemoryType.IMAGE,
            "/usr/bin/python3.11",
            offset=0,
            device="08:01",
            inode=1234,
            rss=4096,
            vm_flags=("rd", "mr", "mw", "me", "sd"),
        ),
        VaRegion(
            0x7FFD0000000,
            0x21000,
            "rw-p",
            MemoryProtection.READWRITE,
            MemoryState.COMMIT,
            MemoryType.PRIVATE,
            "[stack]",
        ),
    )
    return Snapshot(
        flags=CaptureFlags.THREADS | CaptureFlags.THREAD_CONTEXT | CaptureFlags.HANDLES | CaptureFlags.VA_SPACE,
        platform="linux",
        arch="x86_64",
        captured_at=1_700_000_100.0,
        process=process,
        threads=(thread(4242), thread(4243), thread(4244, context=False)),
        handles=handles,
        va_space=regions,
        performance=Performance(capture_ms=5.5, stopped_ms=1.25, threads_ms=0.5),
        memory=MemoryCapture("none", 0, 0),
        warnings=("thread 4244: registers not read",),
    )


def through_json(data: dict[str, Any]) -> Any:
    return json.loads(json.dumps(data, ensure_ascii=True))


# ----------------------------------------------------------------------------------------------- encoding rules


def test_realistic_snapshot_round_trips_through_ascii_json() -> None:
    snap = realistic_snapshot()
    text = json.dumps(serial.to_dict(snap), ensure_ascii=True, allow_nan=False)
    assert text.isascii()
    assert serial.from_dict(Snapshot, json.loads(text)) == snap


def test_keys_follow_field_order() -> None:
    data = serial.to_dict(realistic_snapshot())
    assert list(data) == [f.name for f in dataclasses.fields(Snapshot)]
    assert list(data["process"]) == [f.name for f in dataclasses.fields(ProcessInfo)]


def test_documented_encodings() -> None:
    data = serial.to_dict(realistic_snapshot())
    assert data["flags"] == {"value": 0x984, "names": ["HANDLES", "THREADS", "THREAD_CONTEXT", "VA_SPACE"]}
    assert data["process"]["flags"] == {"value": 0, "names": []}
    assert data["process"]["state"] == "SLEEPING"
    assert data["va_space"][0]["state"] == "COMMIT"
    assert data["va_space"][0]["type"] == "IMAGE"
    assert data["va_space"][0]["protection"] == {"value": 2, "names": ["READONLY"]}
    assert data["process"]["environ"] == {"HOME": "/root", "LANG": "C.UTF-8", "odd key": "\x00\n"}
    assert data["process"]["cmdline"][0] == "python3"
    assert data["handles"][1]["type"] == "EVENTFD"
    assert data["handles"][1]["type_specific"] == {"eventfd-count": 7, "eventfd-id": "12"}
    ctx = data["threads"][0]["context"]
    assert ctx["registers"]["rip"] == (4242 << 20) + 16 * 8
    assert list(ctx["registers"]) == list(GPR_NAMES)
    assert ctx["fpregs"] == (bytes(range(256)) * 2).hex()
    assert data["threads"][2]["context"] is None
    assert data["process"]["exit_status"] is None


def test_repeated_pair_keys_stay_a_list_and_round_trip() -> None:
    snap = realistic_snapshot()
    env = (("A", "1"), ("A", "2"))
    snap = dataclasses.replace(snap, process=dataclasses.replace(snap.process, environ=env))
    data = serial.to_dict(snap)
    assert data["process"]["environ"] == [["A", "1"], ["A", "2"]]
    assert serial.from_dict(Snapshot, through_json(data)).process.environ == env


def test_empty_pairs_are_an_empty_object() -> None:
    data = serial.to_dict(realistic_snapshot())
    assert data["handles"][0]["type_specific"] == {}


@pytest.mark.parametrize(
    "result",
    [
        DuplicateResult(
            10,
            20,
            7,
            (AccessUse(10, "source", ("PTRACE_MODE_READ",)),),
            False,
            True,
            False,
            0.4,
            ("pushed fd",),
            ("slow",),
        ),
        DuplicateResult(10, 20, None, (), True, False, True, None),
        FreeResult(20, 7, (AccessUse(20, "target", ("a", "b"), mask=0x1F0FFF),), False, 0.3, ("closed fd 7",)),
    ],
)
def test_results_round_trip(result: DuplicateResult | FreeResult) -> None:
    assert serial.from_dict(type(result), through_json(serial.to_dict(result))) == result


def test_non_finite_float_is_refused_on_encode() -> None:
    snap = dataclasses.replace(realistic_snapshot(), captured_at=math.nan)
    with pytest.raises(ValueError, match="non-finite"):
        serial.to_dict(snap)


def test_to_dict_refuses_non_dataclasses() -> None:
    with pytest.raises(TypeError):
        serial.to_dict({"a": 1})


# ---------------------------------------------------------------------------------------------- strict decoding


def mutate(data: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    data = through_json(data)
    target: Any = data
    for key in path[:-1]:
        target = target[key]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("threads", 1, "context", "registers", "rip"), "0x1", "threads[1].context.registers.rip: expected an integer"),
        (("threads", 1, "tid"), True, "threads[1].tid: expected an integer, got a boolean"),
        (("threads", 1, "tid"), 1.0, "threads[1].tid: expected an integer, got a number"),
        (("threads", 0, "context", "fpregs"), "ABCD", "threads[0].context.fpregs: expected an even-length lowercase"),
        (("threads", 0, "context", "fpregs"), "abc", "threads[0].context.fpregs: expected an even-length lowercase"),
        (("threads", 0, "context", "fpregs"), "00 11", "expected an even-length lowercase hex"),
        (("threads", 0, "state"), "NAPPING", 'threads[0].state: unknown ThreadState "NAPPING"'),
        (("threads", 0, "state"), "S", 'unknown ThreadState "S"'),
        (("process", "pid"), None, "process.pid: expected an integer, got null"),
        (("process", "nice"), 1 << 64, "process.nice: integer out of range"),
        (("process", "nice"), -(1 << 63) - 1, "process.nice: integer out of range"),
        (("process", "start_time"), "now", "process.start_time: expected a number, got a string"),
        (("process", "start_time"), math.inf, "process.start_time: expected a finite number"),
        (("process", "start_time"), 10**400, "process.start_time: number out of range"),
        (("process", "environ"), "HOME=/", "process.environ: expected an object, got a string"),
        (("process", "environ", "HOME"), 5, "process.environ.HOME: expected a string, got an integer"),
        (("process", "environ"), [["A"]], "process.environ[0]: expected a [name, value] pair"),
        (("process", "cmdline"), {"0": "x"}, "process.cmdline: expected an array, got an object"),
        (("process", "cmdline", 1), 1, "process.cmdline[1]: expected a string"),
        (("process", "uids"), [0, "0"], "process.uids[1]: expected an integer"),
        (("flags", "value"), 0x2, "flags.value: bits 0x2 are not CaptureFlags members"),
        (("flags", "value"), -1, "flags.value: bits"),
        (("flags", "names"), ["THREADS"], "flags.names: does not match value 0x984"),
        (("flags",), 0x984, "flags: expected an object {value, names}, got an integer"),
        (("flags", "extra"), 1, "flags: expected exactly the keys value and names"),
        (
            ("handles", 1, "type_specific", "eventfd-count"),
            1.5,
            'type_specific["eventfd-count"]: expected a string or an integer, got a number',
        ),
        (("handles", 1, "type_specific", "eventfd-count"), None, "expected a value, got null"),
        (("process", "bogus"), 1, "process.bogus: unknown field (written by a newer pss-dup?)"),
        (("process", "pid"), DELETE, "process.pid: missing"),
        (("threads", 0, "syscall", "args"), 5, "threads[0].syscall.args: expected an array"),
        (("performance",), [], "performance: expected an object, got an array"),
        (("va_space", 0, "vm_flags", 0), {}, "va_space[0].vm_flags[0]: expected a string, got an object"),
    ],
)
def test_bad_field_is_refused_with_its_path(path: tuple[str | int, ...], value: Any, message: str) -> None:
    data = mutate(serial.to_dict(realistic_snapshot()), path, value)
    with pytest.raises(BadSnapshot) as info:
        serial.from_dict(Snapshot, data)
    text = str(info.value)
    assert text.startswith("snapshot field ")
    assert message in text
    assert "\n" not in text


def test_optional_field_may_be_omitted_but_not_mistyped() -> None:
    data = mutate(serial.to_dict(realistic_snapshot()), ("warnings",), DELETE)
    assert serial.from_dict(Snapshot, data).warnings == ()
    with pytest.raises(BadSnapshot, match="warnings: expected an array"):
        serial.from_dict(Snapshot, mutate(data, ("warnings",), None))


def test_top_level_must_be_an_object() -> None:
    with pytest.raises(BadSnapshot, match=r"^snapshot: expected an object, got an array$"):
        serial.from_dict(Snapshot, [])


def test_oversized_containers_and_strings_are_refused() -> None:
    data = serial.to_dict(realistic_snapshot())
    with pytest.raises(BadSnapshot, match=r"warnings: more than 1000000 items"):
        serial.from_dict(Snapshot, mutate(data, ("warnings",), [""] * (serial.MAX_ITEMS + 1)))
    with pytest.raises(BadSnapshot, match=r"process.name: string longer than 1048576"):
        serial.from_dict(Snapshot, mutate(data, ("process", "name"), "x" * (serial.MAX_STRING + 1)))


def test_hostile_key_in_message_is_escaped_and_short() -> None:
    key = "\n" * 100
    data = mutate(serial.to_dict(realistic_snapshot()), ("process", key), 1)
    with pytest.raises(BadSnapshot) as info:
        serial.from_dict(Snapshot, data)
    assert "\n" not in str(info.value)
    assert len(str(info.value)) < 200


def test_what_names_the_document() -> None:
    with pytest.raises(BadSnapshot, match=r"^dup result field pid: missing$"):
        serial.from_dict(FreeResult, {}, what="dup result")


# ------------------------------------------------------------------------------------------------- properties


@functools.cache
def strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    """Any value of a model type, built from its type hints (so new fields are covered without touching this)."""
    if tp is type(None):
        return st.none()
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return st.one_of(*(strategy_for(arg) for arg in typing.get_args(tp)))
    simple: dict[Any, st.SearchStrategy[Any]] = {
        bool: st.booleans(),
        int: st.integers(serial.MIN_INT, serial.MAX_INT),
        float: st.floats(allow_nan=False, allow_infinity=False),
        str: st.text(max_size=12),
        bytes: st.binary(max_size=24),
    }
    if tp in simple:
        return simple[tp]
    if isinstance(tp, type) and issubclass(tp, enum.IntFlag):
        bits = [m for m in tp.__members__.values() if m and not m & (m - 1)]
        return st.lists(st.sampled_from(bits), max_size=4).map(lambda ms: functools.reduce(operator.or_, ms, tp(0)))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.sampled_from(tp)
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(strategy_for(args[0]), max_size=3).map(tuple)
        return st.tuples(*(strategy_for(arg) for arg in args))
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return st.builds(tp, **{f.name: strategy_for(hints[f.name]) for f in dataclasses.fields(tp)})
    raise TypeError(tp)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(strategy_for(Snapshot), strategy_for(DuplicateResult), strategy_for(FreeResult)))
def test_any_model_value_round_trips(value: Any) -> None:
    assert serial.from_dict(type(value), through_json(serial.to_dict(value))) == value


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_arbitrary_json_in_any_field_raises_only_bad_snapshot(data: st.DataObject) -> None:
    doc = serial.to_dict(realistic_snapshot())
    paths: list[tuple[str | int, ...]] = []

    def walk(node: Any, path: tuple[str | int, ...]) -> None:
        paths.append(path)
        if isinstance(node, dict):
            for key, child in node.items():
                walk(child, (*path, key))
        elif isinstance(node, list):
            for i, child in enumerate(node):
                walk(child, (*path, i))

    walk(doc, ())
    path = data.draw(st.sampled_from(paths[1:]))
    replacement = data.draw(json_values)
    try:
        result = serial.from_dict(Snapshot, mutate(doc, path, replacement))
    except BadSnapshot as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(result, Snapshot)


def test_name_value_fields_read_off_the_written_annotations_are_the_resolved_ones() -> None:
    from pss_cli import model, record

    classes = [c for c in vars(model).values() if isinstance(c, type) and record.is_record(c)]
    assert len(classes) > 15
    for cls in classes:
        assert serial._written_pair_fields(cls) == serial._pair_fields(cls), cls.__name__
    assert serial._written_pair_fields(model.ThreadContext) == {"registers"}

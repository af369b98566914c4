"""A fake kernel32 that enforces PSS's rules as Microsoft documents them and as ntdll implements them, for contract
tests on any platform.

It implements pss_cli.platform.windows.kernel32.Kernel32Like over an in-memory world of processes, written
independently of pss_cli's access.py (so that a wrong mask there fails a test). docs/windows.md lists every rule with
its source ([DOC] Microsoft's documentation, [NTDLL] ntdll's PssNt* code as public decompilations show it, [SAMPLE],
or none found). In short:
- OpenProcess grants a mask only if the process allows every right in it;
- PssCaptureSnapshot checks the rights per flag; handles are recorded as ntdll's PsspWalkHandleTable records them
  (untyped without PROCESS_DUP_HANDLE, no name for type File);
- descriptors live in their holder's memory and start with the 'PSSD' marker; tests can map other memory
  (add_memory). A local PSS call on an unreadable address faults, on readable memory without the marker raises
  STATUS_INVALID_HANDLE (both OSError, as ctypes reports them), and records it in `faults`;
- remote duplication reads the whole descriptor (ERROR_PARTIAL_COPY / ERROR_NOACCESS when it cannot, ERROR_INVALID_
  HANDLE for a wrong marker); PSS_DUPLICATE_CLOSE_SOURCE frees the source on every path;
- a remote free is PssNtFreeRemoteSnapshot's: each step needs its own right and its failure is ignored, which can
  leave a half-freed descriptor (`half_freed()`) or leaked handles (`leaked`);
- buffers must be exactly the structure's size; a class the snapshot lacks is ERROR_NOT_FOUND; walks end with
  ERROR_NO_MORE_ITEMS;
- MiniDumpWriteDump needs a local HPSS with a VA clone and a callback that answers IsProcessSnapshotCallback with
  S_FALSE, CancelCallback without cancelling, and ReadMemoryFailureCallback with TRUE and S_OK; outputs are not
  cleared before the callback;
- GetLastError returns a C int, as ctypes.get_last_error() does.
Every call is logged in `calls` as (name, args...), and `fail_index` makes the Nth fallible call fail.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass, field
from typing import Any

from pss_cli.model import CaptureFlags, MemoryProtection, MemoryState, MemoryType, ProcessFlags, ThreadFlags
from pss_cli.platform.windows import abi
from pss_cli.platform.windows.kernel32 import MINIDUMP_CALLBACK_ROUTINE

A = abi.NATIVE
PSEUDO_HANDLE = (1 << (8 * ctypes.sizeof(ctypes.c_void_p))) - 1
SELF = os.getpid()

#: The first DWORD of every PSS snapshot descriptor, 'PSSD' (ntdll's PssNtValidateDescriptor checks it).
PSSD = 0x44535350
#: How many bytes ntdll reads of a descriptor another process holds (PssNtFreeRemoteSnapshot: 0x478 x64, 976 x86).
DESCRIPTOR_SIZE = 0x478 if A.pointer_size == 8 else 976
#: The first address above user space; reading there is a probe failure (STATUS_ACCESS_VIOLATION, ERROR_NOACCESS).
USER_LIMIT = 0x7FFF_FFFF_0000 if A.pointer_size == 8 else 0x7FFF_0000
ERROR_NOACCESS = 998
#: MINIDUMP_CALLBACK_TYPE values the fake sends besides IsProcessSnapshotCallback (minidumpapiset.h).
CANCEL_CALLBACK = 6
READ_MEMORY_FAILURE_CALLBACK = 14
#: How many CancelCallbacks a dump sends while the callback keeps CheckCancel TRUE.
CANCEL_CHECKS = 3
#: The FailureStatus of an unreadable block: HRESULT_FROM_WIN32(ERROR_PARTIAL_COPY) (the fake's choice).
READ_FAILURE_HRESULT = 0x8007_012B

# The rights, spelled out again on purpose (not imported from access.py).
QUERY_LIMITED = 0x1000
QUERY_INFORMATION = 0x400
CREATE_PROCESS = 0x80
DUP_HANDLE = 0x40
VM_READ = 0x10
VM_WRITE = 0x20
VM_OPERATION = 0x08

MESSAGES = {
    5: "Access is denied.",
    6: "The handle is invalid.",
    8: "Not enough memory resources are available to process this command.",
    24: "The program issued a command but the command length is incorrect.",
    50: "The request is not supported.",
    87: "The parameter is incorrect.",
    259: "No more data is available.",
    299: "Only part of a ReadProcessMemory or WriteProcessMemory request was completed.",
    998: "Invalid access to memory location.",
    1168: "Element not found.",
}

# Calls that release something: failing them would only test that a leak is a leak, so fail_index skips them.
CLEANUP_CALLS = frozenset({"CloseHandle", "PssFreeSnapshot", "PssWalkMarkerFree"})
# Calls that cannot fail on Windows.
INFALLIBLE_CALLS = frozenset({"GetCurrentProcess", "GetLastError", "FormatMessageW", "get_osfhandle"})


class FakeFault(OSError):
    """What ctypes raises on Windows when a foreign call hits an access violation."""


@dataclass
class FakeThread:
    tid: int
    rip: int
    rsp: int
    priority: int = 8
    base_priority: int = 8
    suspend_count: int = 0
    terminated: bool = False


@dataclass
class FakeObject:
    handle: int
    object_type: int
    type_name: str
    name: str | None
    granted_access: int = 0x1F0003
    inherit: bool = False


@dataclass
class FakeRegion:
    base: int
    size: int
    state: int
    protect: int
    type: int
    mapped_file: str | None = None
    #: dbghelp can read it from the VA clone (False: a ReadMemoryFailureCallback while dumping).
    readable: bool = True


@dataclass
class FakeProcess:
    pid: int
    ppid: int
    image: str
    threads: list[FakeThread] = field(default_factory=list)
    objects: list[FakeObject] = field(default_factory=list)
    regions: list[FakeRegion] = field(default_factory=list)
    #: The rights OpenProcess will grant to this caller.
    grants: int = abi.PROCESS_ALL_ACCESS
    wow64: bool = False
    #: PssCaptureSnapshot fails with ERROR_ACCESS_DENIED even with the right mask (a thread refused its context).
    capture_denied: bool = False


@dataclass
class FakeSnapshot:
    hpss: int
    holder: int
    source: FakeProcess
    flags: int
    context_flags: int
    vm_allocations: bool
    clone_pid: int | None
    #: PSS could duplicate the process's handles to query them (the capture held PROCESS_DUP_HANDLE).
    handles_duplicated: bool = True
    #: The kernel handles the descriptor holds (VA clone, sections) are still open in the holder.
    handles_open: bool = True
    #: Its descriptor is damaged past the marker: ntdll faults on it after validating the marker.
    corrupt: bool = False
    #: Keeps the memory that entries point into (names, CONTEXT records) alive while the snapshot lives.
    keep: list[Any] = field(default_factory=list)


@dataclass
class FakeMemory:
    """Committed memory in a process that is not a snapshot descriptor: it starts with `marker`, then zeros."""

    base: int
    size: int
    marker: int = 0
    protect: int = MemoryProtection.READWRITE


@dataclass
class OpenHandle:
    kind: str
    pid: int
    access: int


class FakeKernel32:
    """The fake. `processes` maps PID to FakeProcess; `snapshots` maps (holder PID, HPSS) to FakeSnapshot."""

    def __init__(self, processes: list[FakeProcess], *, debug_privilege: bool = True) -> None:
        self.processes = {p.pid: p for p in processes}
        self.processes.setdefault(SELF, FakeProcess(SELF, 1, "C:\\Python\\python.exe"))
        self.snapshots: dict[tuple[int, int], FakeSnapshot] = {}
        self.handles: dict[int, OpenHandle] = {}
        self.markers: dict[int, dict[int, int]] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.faults: list[str] = []
        self.bad_closes: list[int] = []
        self.files: dict[int, int] = {}
        self.fail_index: int | None = None
        #: An HRESULT MiniDumpWriteDump fails with (a knob for the tests, not a rule).
        self.dump_failure: int | None = None
        self.debug_privilege = debug_privilege
        #: (CallbackType, returned TRUE, Status) of every minidump callback, in order.
        self.callback_answers: list[tuple[int, bool, int]] = []
        #: Memory blocks the last minidump left out after a read failure the callback told it to ignore.
        self.omitted: list[tuple[int, int]] = []
        #: Memory that is not a snapshot, by PID (see add_memory).
        self.memory: dict[int, list[FakeMemory]] = {}
        #: Snapshots whose memory was freed while their kernel handles stayed open in the holder.
        self.leaked: list[str] = []
        #: Frees that closed handle values a half-freed snapshot had already closed (they may name other objects now).
        self.stray_closes: list[str] = []
        self._last_error = 0
        self._next = 0x1000

    # --- bookkeeping ---------------------------------------------------------------------------------------------

    def _new_value(self) -> int:
        self._next += 0x10
        return self._next

    def _log(self, *entry: Any) -> bool:
        """Record the call; True when this call is the one chosen to fail."""
        self.calls.append(entry)
        name = entry[0]
        if name in CLEANUP_CALLS or name in INFALLIBLE_CALLS:
            return False
        index = sum(1 for c in self.calls if c[0] not in CLEANUP_CALLS and c[0] not in INFALLIBLE_CALLS) - 1
        return index == self.fail_index

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def fallible_calls(self) -> int:
        return sum(1 for c in self.calls if c[0] not in CLEANUP_CALLS and c[0] not in INFALLIBLE_CALLS)

    def open_process_handles(self) -> dict[int, OpenHandle]:
        return dict(self.handles)

    def held_by(self, pid: int) -> list[FakeSnapshot]:
        return [s for (holder, _), s in self.snapshots.items() if holder == pid]

    def half_freed(self) -> list[FakeSnapshot]:
        """Descriptors whose handles were closed but whose memory was not freed: they still look like snapshots, and
        a later free or duplicate there would use handle values that may now name other objects."""
        return [s for s in self.snapshots.values() if not s.handles_open]

    def add_memory(self, pid: int, base: int, size: int = 0x1000, *, marker: int = 0) -> int:
        """Map committed read-write memory that is not a snapshot into `pid`; its address."""
        self.memory.setdefault(pid, []).append(FakeMemory(base, size, marker))
        return base

    def _fault(self, what: str, hpss: int) -> FakeFault:
        self.faults.append(f"{what}(0x{hpss:x})")
        return FakeFault(f"exception: access violation reading 0x{hpss:016x}")

    def _invalid_handle_exception(self, what: str, hpss: int) -> FakeFault:
        """PssNtValidateDescriptor's answer to a readable address without the marker: it raises STATUS_INVALID_HANDLE
        (RtlRaiseException), which ctypes reports as an OSError, like a fault."""
        self.faults.append(f"{what}(0x{hpss:x}): STATUS_INVALID_HANDLE raised")
        return FakeFault("exception code 0xc0000008")

    def _region(self, pid: int, address: int) -> FakeMemory | None:
        return next((m for m in self.memory.get(pid, ()) if m.base <= address < m.base + m.size), None)

    def _read(self, pid: int, address: int, size: int) -> bytes | int:
        """`size` bytes at `address` in `pid` as NtReadVirtualMemory would copy them, or the Win32 code of its
        failure: ERROR_NOACCESS outside user space, ERROR_PARTIAL_COPY for unmapped or too short memory."""
        if address <= 0 or address + size > USER_LIMIT:
            return ERROR_NOACCESS
        if (pid, address) in self.snapshots:
            return (PSSD.to_bytes(4, "little") + bytes(DESCRIPTOR_SIZE - 4))[:size]
        region = self._region(pid, address)
        if region is None or address + size > region.base + region.size:
            return abi.ERROR_PARTIAL_COPY
        content = region.marker.to_bytes(4, "little") + bytes(region.size - 4)
        offset = address - region.base
        return content[offset : offset + size]

    def _process_of(self, handle: int) -> tuple[int, int] | None:
        """(pid, access) for a process handle, None for anything else."""
        if handle == PSEUDO_HANDLE:
            return SELF, abi.PROCESS_ALL_ACCESS
        entry = self.handles.get(handle)
        if entry is None or entry.kind != "process":
            return None
        return entry.pid, entry.access

    def add_snapshot(self, holder: int, source_pid: int, flags: int, *, vm_allocations: bool = True) -> int:
        """Put a snapshot into `holder` directly (as if captured or duplicated there earlier); its HPSS."""
        snap = self._build(self.processes[source_pid], holder, flags, abi.CONTEXT_ALL_AMD64, vm_allocations)
        return snap.hpss

    def _build(self, proc: FakeProcess, holder: int, flags: int, context_flags: int, vm: bool) -> FakeSnapshot:
        hpss = self._new_value() * 0x100
        clone = (90000 + len(self.snapshots)) if flags & CaptureFlags.VA_CLONE else None
        snap = FakeSnapshot(hpss, holder, proc, flags, context_flags, vm, clone)
        self.snapshots[(holder, hpss)] = snap
        return snap

    def _copy(self, snap: FakeSnapshot, holder: int) -> FakeSnapshot:
        new = self._build(snap.source, holder, snap.flags, snap.context_flags, True)
        new.clone_pid = snap.clone_pid
        return new

    # --- processthreadsapi / handleapi / memoryapi ---------------------------------------------------------------

    def GetCurrentProcess(self) -> int:
        self._log("GetCurrentProcess")
        return PSEUDO_HANDLE

    def GetLastError(self) -> int:
        """As ctypes.get_last_error() reports it: a C int, so an HRESULT such as 0x80070005 comes back negative."""
        self.calls.append(("GetLastError",))
        return ctypes.c_int32(self._last_error).value

    def OpenProcess(self, desired_access: int, inherit_handle: bool, process_id: int) -> int:
        if self._log("OpenProcess", desired_access, process_id):
            self._last_error = abi.ERROR_ACCESS_DENIED
            return 0
        proc = self.processes.get(process_id)
        if proc is None:
            self._last_error = abi.ERROR_INVALID_PARAMETER
            return 0
        if desired_access & ~proc.grants:
            self._last_error = abi.ERROR_ACCESS_DENIED
            return 0
        handle = self._new_value()
        self.handles[handle] = OpenHandle("process", process_id, desired_access)
        return handle

    def CloseHandle(self, handle: int) -> bool:
        self._log("CloseHandle", handle)
        if self.handles.pop(handle, None) is None:
            self.bad_closes.append(handle)
            self._last_error = abi.ERROR_INVALID_HANDLE
            return False
        return True

    def GetProcessId(self, process: int) -> int:
        self._log("GetProcessId", process)
        for snap in self.snapshots.values():
            if snap.clone_pid is not None and process == snap.clone_pid * 4:
                return snap.clone_pid
        found = self._process_of(process)
        return found[0] if found else 0

    def VirtualQuery(self, address: int, buffer: ctypes.Structure) -> int:
        if self._log("VirtualQuery", address):
            return 0
        region = self._region(SELF, address)
        if (SELF, address) in self.snapshots:
            base, size, protect = address & ~0xFFF, 0x1000, int(MemoryProtection.READWRITE)
        elif region is not None:
            base, size, protect = region.base, region.size, region.protect
        else:
            return 0
        ctypes.memset(ctypes.addressof(buffer), 0, ctypes.sizeof(buffer))
        buffer.BaseAddress = base
        buffer.AllocationBase = base
        buffer.RegionSize = size
        buffer.State = MemoryState.COMMIT
        buffer.Type = MemoryType.PRIVATE
        buffer.Protect = protect
        return ctypes.sizeof(buffer)

    def ReadProcessMemory(self, process: int, address: int, size: int) -> bytes | None:
        if self._log("ReadProcessMemory", process, address, size):
            self._last_error = abi.ERROR_PARTIAL_COPY
            return None
        found = self._process_of(process)
        if found is None:
            self._last_error = abi.ERROR_INVALID_HANDLE
            return None
        pid, access = found
        if not access & VM_READ:
            self._last_error = abi.ERROR_ACCESS_DENIED
            return None
        data = self._read(pid, address, size)
        if isinstance(data, int):
            self._last_error = data
            return None
        return data

    def FormatMessageW(self, code: int) -> str:
        self.calls.append(("FormatMessageW", code))
        return MESSAGES.get(code, "")

    # --- processsnapshot.h ---------------------------------------------------------------------------------------

    def PssCaptureSnapshot(self, process: int, capture_flags: int, thread_context_flags: int) -> tuple[int, int]:
        if self._log("PssCaptureSnapshot", process, capture_flags, thread_context_flags):
            return abi.ERROR_NOT_ENOUGH_MEMORY, 0
        found = self._process_of(process)
        if found is None:
            return abi.ERROR_INVALID_HANDLE, 0
        pid, access = found
        flags = CaptureFlags(capture_flags)
        required = QUERY_LIMITED
        if flags & CaptureFlags.VA_CLONE:
            required |= CREATE_PROCESS
        walks = (
            CaptureFlags.HANDLES
            | CaptureFlags.HANDLE_TRACE
            | CaptureFlags.THREADS
            | CaptureFlags.THREAD_CONTEXT
            | CaptureFlags.THREAD_CONTEXT_EXTENDED
            | CaptureFlags.VA_SPACE
        )
        if flags & walks:
            required |= QUERY_INFORMATION
        if flags & CaptureFlags.VA_SPACE_SECTION_INFORMATION:
            if not flags & CaptureFlags.VA_SPACE:
                return abi.ERROR_INVALID_PARAMETER, 0
            required |= VM_READ
        if flags & (CaptureFlags.THREAD_CONTEXT | CaptureFlags.THREAD_CONTEXT_EXTENDED) and not thread_context_flags:
            return abi.ERROR_INVALID_PARAMETER, 0
        if required & ~access:
            return abi.ERROR_ACCESS_DENIED, 0
        proc = self.processes[pid]
        if proc.capture_denied:
            return abi.ERROR_ACCESS_DENIED, 0
        snap = self._build(
            proc, SELF, capture_flags, thread_context_flags, bool(flags & CaptureFlags.CREATE_USE_VM_ALLOCATIONS)
        )
        # ntdll does not fail the capture when it cannot duplicate a handle: it records the handle untyped.
        snap.handles_duplicated = bool(access & DUP_HANDLE)
        return abi.ERROR_SUCCESS, snap.hpss

    def _local(self, what: str, hpss: int) -> FakeSnapshot:
        """The snapshot this process holds at `hpss`, as ntdll finds it: an unreadable address faults, a readable one
        without the 'PSSD' marker raises STATUS_INVALID_HANDLE, a corrupt descriptor faults past the marker."""
        snap = self.snapshots.get((SELF, hpss))
        if snap is None:
            data = self._read(SELF, hpss, 4)
            if isinstance(data, int):
                raise self._fault(what, hpss)
            raise self._invalid_handle_exception(what, hpss)
        if snap.corrupt:
            raise self._fault(what, hpss + 0x388)
        return snap

    def PssQuerySnapshot(self, snapshot: int, information_class: int, buffer: ctypes.Structure, length: int) -> int:
        fail = self._log("PssQuerySnapshot", snapshot, information_class, length)
        snap = self._local("PssQuerySnapshot", snapshot)
        if fail:
            return abi.ERROR_NOT_ENOUGH_MEMORY
        struct, fill = self._query_class(snap, information_class)
        if struct is None:
            return abi.ERROR_INVALID_PARAMETER
        if length != ctypes.sizeof(struct):
            return abi.ERROR_BAD_LENGTH
        assert ctypes.sizeof(buffer) >= length, "the caller's buffer is smaller than the length it passed"
        if fill is None:
            return abi.ERROR_NOT_FOUND
        ctypes.memmove(ctypes.addressof(buffer), ctypes.addressof(fill), length)
        return abi.ERROR_SUCCESS

    def _query_class(self, snap: FakeSnapshot, cls: int) -> tuple[type[ctypes.Structure] | None, Any]:
        f = CaptureFlags(snap.flags)
        proc = snap.source
        if cls == abi.PSS_QUERY_PROCESS_INFORMATION:
            return A.PSS_PROCESS_INFORMATION, self._process_information(proc)
        if cls == abi.PSS_QUERY_THREAD_INFORMATION:
            value = A.PSS_THREAD_INFORMATION(len(proc.threads), ctypes.sizeof(A.CONTEXT))
            return A.PSS_THREAD_INFORMATION, value if f & CaptureFlags.THREADS else None
        if cls == abi.PSS_QUERY_HANDLE_INFORMATION:
            value = A.PSS_HANDLE_INFORMATION(len(proc.objects))
            return A.PSS_HANDLE_INFORMATION, value if f & CaptureFlags.HANDLES else None
        if cls == abi.PSS_QUERY_VA_SPACE_INFORMATION:
            value = A.PSS_VA_SPACE_INFORMATION(len(proc.regions))
            return A.PSS_VA_SPACE_INFORMATION, value if f & CaptureFlags.VA_SPACE else None
        if cls == abi.PSS_QUERY_VA_CLONE_INFORMATION:
            value = A.PSS_VA_CLONE_INFORMATION(snap.clone_pid * 4 if snap.clone_pid else None)
            return A.PSS_VA_CLONE_INFORMATION, value if f & CaptureFlags.VA_CLONE else None
        if cls == abi.PSS_QUERY_PERFORMANCE_COUNTERS:
            counters = A.PSS_PERFORMANCE_COUNTERS()
            counters.TotalWallClockPeriod = 2500  # 2.5 ms at PSS_PERF_RESOLUTION (µs)
            counters.ThreadsWallClockPeriod = 1000
            counters.HandlesWallClockPeriod = 500
            counters.VaSpaceWallClockPeriod = 250
            counters.VaCloneWallClockPeriod = 750 if f & CaptureFlags.VA_CLONE else 0
            return A.PSS_PERFORMANCE_COUNTERS, counters if f & CaptureFlags.CREATE_MEASURE_PERFORMANCE else None
        if cls == abi.PSS_QUERY_HANDLE_TRACE_INFORMATION:
            value = A.PSS_HANDLE_TRACE_INFORMATION(0x7770, 4096)
            return A.PSS_HANDLE_TRACE_INFORMATION, value if f & CaptureFlags.HANDLE_TRACE else None
        if cls == abi.PSS_QUERY_AUXILIARY_PAGES_INFORMATION:
            return A.PSS_AUXILIARY_PAGES_INFORMATION, A.PSS_AUXILIARY_PAGES_INFORMATION(0)
        return None, None

    def _process_information(self, proc: FakeProcess) -> ctypes.Structure:
        info = A.PSS_PROCESS_INFORMATION()
        info.ExitStatus = abi.STILL_ACTIVE
        info.PebBaseAddress = 0x7FF6_0000_0000
        info.AffinityMask = 0b11
        info.BasePriority = 8
        info.ProcessId = proc.pid
        info.ParentProcessId = proc.ppid
        info.Flags = ProcessFlags.WOW64 if proc.wow64 else 0
        created = 116_444_736_000_000_000 + 1_700_000_000 * 10_000_000  # 2023-11-14T22:13:20Z
        info.CreateTime.dwLowDateTime = created & 0xFFFFFFFF
        info.CreateTime.dwHighDateTime = created >> 32
        info.UserTime.dwLowDateTime = 30_000_000  # 3 s
        info.KernelTime.dwLowDateTime = 10_000_000  # 1 s
        info.VirtualSize = 123 << 20
        info.PeakVirtualSize = 150 << 20
        info.WorkingSetSize = 20 << 20
        info.PeakWorkingSetSize = 25 << 20
        info.PrivateUsage = 10 << 20
        info.PageFaultCount = 4321
        encoded = proc.image.encode("utf-16-le")
        ctypes.memmove(ctypes.addressof(info.ImageFileName), encoded, len(encoded))
        return info

    def PssWalkMarkerCreate(self) -> tuple[int, int]:
        if self._log("PssWalkMarkerCreate"):
            return abi.ERROR_NOT_ENOUGH_MEMORY, 0
        marker = self._new_value()
        self.markers[marker] = {}
        return abi.ERROR_SUCCESS, marker

    def PssWalkMarkerFree(self, walk_marker: int) -> int:
        self._log("PssWalkMarkerFree", walk_marker)
        return abi.ERROR_SUCCESS if self.markers.pop(walk_marker, None) is not None else abi.ERROR_INVALID_HANDLE

    def PssWalkMarkerGetPosition(self, walk_marker: int) -> tuple[int, int]:
        self._log("PssWalkMarkerGetPosition", walk_marker)
        if walk_marker not in self.markers:
            return abi.ERROR_INVALID_HANDLE, 0
        return abi.ERROR_SUCCESS, sum(self.markers[walk_marker].values())

    def PssWalkMarkerSetPosition(self, walk_marker: int, position: int) -> int:
        self._log("PssWalkMarkerSetPosition", walk_marker, position)
        if walk_marker not in self.markers:
            return abi.ERROR_INVALID_HANDLE
        self.markers[walk_marker] = dict.fromkeys(self.markers[walk_marker], position)
        return abi.ERROR_SUCCESS

    def PssWalkMarkerSeekToBeginning(self, walk_marker: int) -> int:
        return self.PssWalkMarkerSetPosition(walk_marker, 0)

    def PssWalkSnapshot(
        self, snapshot: int, information_class: int, walk_marker: int, buffer: ctypes.Structure, length: int
    ) -> int:
        fail = self._log("PssWalkSnapshot", snapshot, information_class, walk_marker, length)
        snap = self._local("PssWalkSnapshot", snapshot)
        if fail:
            return abi.ERROR_NOT_ENOUGH_MEMORY
        if walk_marker not in self.markers:
            return abi.ERROR_INVALID_HANDLE
        entries = self._walk_class(snap, information_class)
        if entries is None:
            return abi.ERROR_INVALID_PARAMETER
        struct, items = entries
        if length != ctypes.sizeof(struct):
            return abi.ERROR_BAD_LENGTH
        if items is None:
            return abi.ERROR_NOT_FOUND
        position = self.markers[walk_marker].get(information_class, 0)
        if position >= len(items):
            return abi.ERROR_NO_MORE_ITEMS
        self.markers[walk_marker][information_class] = position + 1
        ctypes.memmove(ctypes.addressof(buffer), ctypes.addressof(items[position]), length)
        return abi.ERROR_SUCCESS

    def _wide(self, snap: FakeSnapshot, text: str) -> tuple[int, int]:
        """A counted UTF-16 string in snapshot memory (deliberately not NUL-terminated): (address, bytes)."""
        data = text.encode("utf-16-le")
        buf = ctypes.create_string_buffer(data + b"\xff\xff", len(data) + 2)
        snap.keep.append(buf)
        return ctypes.addressof(buf), len(data)

    def _walk_class(
        self, snap: FakeSnapshot, cls: int
    ) -> tuple[type[ctypes.Structure], list[ctypes.Structure] | None] | None:
        f = CaptureFlags(snap.flags)
        if cls == abi.PSS_WALK_THREADS:
            return A.PSS_THREAD_ENTRY, self._threads(snap) if f & CaptureFlags.THREADS else None
        if cls == abi.PSS_WALK_HANDLES:
            return A.PSS_HANDLE_ENTRY, self._handles(snap) if f & CaptureFlags.HANDLES else None
        if cls == abi.PSS_WALK_VA_SPACE:
            return A.PSS_VA_SPACE_ENTRY, self._regions(snap) if f & CaptureFlags.VA_SPACE else None
        if cls == abi.PSS_WALK_AUXILIARY_PAGES:
            return A.PSS_AUXILIARY_PAGE_ENTRY, []
        return None

    def _threads(self, snap: FakeSnapshot) -> list[ctypes.Structure]:
        out = []
        with_context = snap.flags & (CaptureFlags.THREAD_CONTEXT | CaptureFlags.THREAD_CONTEXT_EXTENDED)
        for t in snap.source.threads:
            e = A.PSS_THREAD_ENTRY()
            e.ExitStatus = 0 if t.terminated else abi.STILL_ACTIVE
            e.TebBaseAddress = 0x1000_0000 + t.tid
            e.ProcessId = snap.source.pid
            e.ThreadId = t.tid
            e.AffinityMask = 0b1
            e.Priority = t.priority
            e.BasePriority = t.base_priority
            e.LastSyscallFirstArgument = 0x44
            e.LastSyscallNumber = 0x1B
            e.UserTime.dwLowDateTime = 5_000_000
            e.CaptureTime.dwHighDateTime = 0x01DA0000
            e.Flags = ThreadFlags.TERMINATED if t.terminated else 0
            e.SuspendCount = t.suspend_count
            e.Win32StartAddress = 0x7FF7_1234_0000
            if with_context:
                ctx = A.CONTEXT()
                ctx.ContextFlags = snap.context_flags & 0xFFFF_FFFF
                ctx.Rip, ctx.Rsp, ctx.Rax = t.rip, t.rsp, t.tid
                ctx.EFlags = 0x246
                ctx.SegCs, ctx.SegSs = 0x33, 0x2B
                ctx.MxCsr = 0x1F80
                ctx.FltSave.ControlWord = 0x27F
                snap.keep.append(ctx)
                e.ContextRecord = ctypes.addressof(ctx)
                e.SizeOfContextRecord = ctypes.sizeof(ctx)
            out.append(e)
        return out

    def _handles(self, snap: FakeSnapshot) -> list[ctypes.Structure]:
        """Entries as ntdll writes them (PsspWalkHandleTable, PsspHandleDumper): each handle is duplicated into the
        capturing process first; when that fails (no PROCESS_DUP_HANDLE) the entry has no flags at all. Otherwise the
        type name is always there, the object name only with HANDLE_NAME_INFORMATION and never for type "File", and
        ObjectType only with HANDLE_TYPE_SPECIFIC_INFORMATION for the six types PSS knows."""
        f = CaptureFlags(snap.flags)
        out = []
        for o in snap.source.objects:
            e = A.PSS_HANDLE_ENTRY()
            e.Handle = o.handle
            e.CaptureTime.dwHighDateTime = 0x01DA0001
            flags = 0
            if snap.handles_duplicated:
                flags |= abi.PSS_HANDLE_HAVE_TYPE
                e.TypeName, e.TypeNameLength = self._wide(snap, o.type_name)
                if f & CaptureFlags.HANDLE_NAME_INFORMATION and o.type_name.lower() != "file" and o.name is not None:
                    flags |= abi.PSS_HANDLE_HAVE_NAME
                    e.ObjectName, e.ObjectNameLength = self._wide(snap, o.name)
                if f & CaptureFlags.HANDLE_BASIC_INFORMATION:
                    flags |= abi.PSS_HANDLE_HAVE_BASIC_INFORMATION
                    e.GrantedAccess = o.granted_access
                    e.Attributes = abi.OBJ_INHERIT if o.inherit else 0
                    e.HandleCount, e.PointerCount = 1, 2
                if f & CaptureFlags.HANDLE_TYPE_SPECIFIC_INFORMATION and o.object_type != abi.PSS_OBJECT_TYPE_UNKNOWN:
                    flags |= abi.PSS_HANDLE_HAVE_TYPE_SPECIFIC_INFORMATION
                    e.ObjectType = o.object_type
                    self._type_specific(snap, o, e.TypeSpecificInformation)
            e.Flags = flags
            out.append(e)
        return out

    @staticmethod
    def _type_specific(snap: FakeSnapshot, o: FakeObject, u: ctypes.Union) -> None:
        if o.object_type == abi.PSS_OBJECT_TYPE_EVENT:
            u.Event.ManualReset = 1
            u.Event.Signaled = 0
        elif o.object_type == abi.PSS_OBJECT_TYPE_MUTANT:
            u.Mutant.CurrentCount = 1
            u.Mutant.OwnerProcessId = snap.source.pid
            u.Mutant.OwnerThreadId = 77

    def _regions(self, snap: FakeSnapshot) -> list[ctypes.Structure]:
        with_names = snap.flags & CaptureFlags.VA_SPACE_SECTION_INFORMATION
        out = []
        for r in snap.source.regions:
            e = A.PSS_VA_SPACE_ENTRY()
            e.BaseAddress = r.base
            e.AllocationBase = r.base
            e.RegionSize = r.size
            e.State, e.Protect, e.Type = r.state, r.protect, r.type
            if with_names and r.mapped_file:
                e.MappedFileName, e.MappedFileNameLength = self._wide(snap, r.mapped_file)
            out.append(e)
        return out

    def PssDuplicateSnapshot(
        self, source_process: int, snapshot: int, target_process: int, flags: int
    ) -> tuple[int, int]:
        fail = self._log("PssDuplicateSnapshot", source_process, snapshot, target_process, flags)
        source = self._process_of(source_process)
        if source is None:
            return abi.ERROR_INVALID_HANDLE, 0
        source_pid, source_access = source
        close_source = bool(flags & abi.PSS_DUPLICATE_CLOSE_SOURCE)
        if source_pid == SELF:
            snap = self._local("PssDuplicateSnapshot", snapshot)
            rc, copy = (abi.ERROR_NOT_ENOUGH_MEMORY, 0) if fail else self._into(snap, target_process)
            if close_source:  # PssNtFreeSnapshot, even when the duplication failed
                del self.snapshots[(SELF, snapshot)]
            return rc, copy
        rc, copy = self._duplicate_remote(source_pid, source_access, snapshot, target_process, fail)
        if close_source:  # PsspDuplicateSnapshotRemoteToRemote calls it on every path and ignores its result
            self._free_remote(source_pid, source_access, snapshot)
        return rc, copy

    def _duplicate_remote(self, pid: int, access: int, hpss: int, target_process: int, fail: bool) -> tuple[int, int]:
        snap, code = self._descriptor(pid, access, hpss)
        if snap is None:
            return code, 0
        if fail:
            return abi.ERROR_NOT_ENOUGH_MEMORY, 0
        if not access & DUP_HANDLE:  # ZwDuplicateObject of the descriptor's handles out of the holder
            return abi.ERROR_ACCESS_DENIED, 0
        if not snap.handles_open:  # those handle values were closed (or now name something else)
            return abi.ERROR_INVALID_HANDLE, 0
        return self._into(snap, target_process)

    def _into(self, snap: FakeSnapshot, target_process: int) -> tuple[int, int]:
        target = self._process_of(target_process)
        if target is None:
            return abi.ERROR_INVALID_HANDLE, 0
        target_pid, target_access = target
        if target_pid != SELF and (VM_OPERATION | VM_WRITE | DUP_HANDLE) & ~target_access:
            return abi.ERROR_ACCESS_DENIED, 0
        return abi.ERROR_SUCCESS, self._copy(snap, target_pid).hpss

    def _descriptor(self, pid: int, access: int, hpss: int) -> tuple[FakeSnapshot | None, int]:
        """ntdll's read of a descriptor that another process holds (ZwReadVirtualMemory of the whole descriptor, then
        the marker check): the snapshot, or the Win32 code of the failure."""
        if not access & VM_READ:
            return None, abi.ERROR_ACCESS_DENIED
        data = self._read(pid, hpss, DESCRIPTOR_SIZE)
        if isinstance(data, int):
            return None, data
        if int.from_bytes(data[:4], "little") != PSSD:
            return None, abi.ERROR_INVALID_HANDLE
        return self.snapshots[(pid, hpss)], abi.ERROR_SUCCESS

    def _free_remote(self, pid: int, access: int, hpss: int) -> int:
        """PssNtFreeRemoteSnapshot: read and check the descriptor; STATUS_NOT_SUPPORTED unless it is in VirtualAlloc'ed
        memory; then close its handles in the holder (ZwDuplicateObject with DUPLICATE_CLOSE_SOURCE: needs
        PROCESS_DUP_HANDLE) and free its memory (ZwFreeVirtualMemory: needs PROCESS_VM_OPERATION), ignoring both
        results, and report success."""
        snap, code = self._descriptor(pid, access, hpss)
        if snap is None:
            return code
        if not snap.vm_allocations:
            return abi.ERROR_NOT_SUPPORTED
        if access & DUP_HANDLE:
            if not snap.handles_open:
                self.stray_closes.append(f"process {pid}: the closed handle values of snapshot 0x{hpss:x}")
            snap.handles_open = False
        if access & VM_OPERATION:
            del self.snapshots[(pid, hpss)]
            if snap.handles_open:
                self.leaked.append(f"process {pid}: the handles of snapshot 0x{hpss:x}")
        return abi.ERROR_SUCCESS

    def PssFreeSnapshot(self, process: int, snapshot: int) -> int:
        self._log("PssFreeSnapshot", process, snapshot)
        found = self._process_of(process)
        if found is None:
            return abi.ERROR_INVALID_HANDLE
        pid, access = found
        if pid == SELF:
            self._local("PssFreeSnapshot", snapshot)
            del self.snapshots[(SELF, snapshot)]
            return abi.ERROR_SUCCESS
        return self._free_remote(pid, access, snapshot)

    # --- advapi32 --------------------------------------------------------------------------------------------------

    def OpenProcessToken(self, process: int, desired_access: int) -> int:
        if self._log("OpenProcessToken", process, desired_access):
            self._last_error = abi.ERROR_ACCESS_DENIED
            return 0
        handle = self._new_value()
        self.handles[handle] = OpenHandle("token", SELF, desired_access)
        return handle

    def LookupPrivilegeValueW(self, name: str, luid: ctypes.Structure) -> bool:
        if self._log("LookupPrivilegeValueW", name):
            self._last_error = abi.ERROR_NOT_FOUND
            return False
        if name != "SeDebugPrivilege":
            self._last_error = abi.ERROR_NOT_FOUND
            return False
        luid.LowPart, luid.HighPart = 20, 0
        return True

    def AdjustTokenPrivileges(self, token: int, new_state: ctypes.Structure) -> bool:
        fail = self._log(
            "AdjustTokenPrivileges",
            token,
            int(new_state.PrivilegeCount),
            int(new_state.Privileges[0].Luid.LowPart),
            int(new_state.Privileges[0].Attributes),
        )
        entry = self.handles.get(token)
        if fail or entry is None or entry.kind != "token" or not entry.access & abi.TOKEN_ADJUST_PRIVILEGES:
            self._last_error = abi.ERROR_ACCESS_DENIED
            return False
        self._last_error = abi.ERROR_SUCCESS if self.debug_privilege else abi.ERROR_NOT_ALL_ASSIGNED
        return True

    # --- dbghelp / CRT ---------------------------------------------------------------------------------------------

    def get_osfhandle(self, fd: int) -> int:
        self.calls.append(("get_osfhandle", fd))
        handle = 0x70000 + fd
        self.files[handle] = fd
        return handle

    def MiniDumpWriteDump(
        self, process: int, process_id: int, file: int, dump_type: int, callback: ctypes.Structure | None
    ) -> bool:
        if self._log("MiniDumpWriteDump", process, process_id, file, dump_type):
            self._last_error = 0x8007_0008
            return False
        if self.dump_failure is not None:
            self._last_error = self.dump_failure
            return False
        snap = self.snapshots.get((SELF, process))
        if snap is None or file not in self.files:
            self._last_error = 0x8007_0006  # HRESULT_FROM_WIN32(ERROR_INVALID_HANDLE)
            return False
        if callback is None or not callback.CallbackRoutine:
            self._last_error = 0x8007_0006  # without the callback dbghelp treats the HPSS as a process handle
            return False
        routine = MINIDUMP_CALLBACK_ROUTINE(int(callback.CallbackRoutine))

        def ask(kind: int, fill: Any = None) -> tuple[bool, ctypes.Structure]:
            cb_in = A.MINIDUMP_CALLBACK_INPUT()
            cb_in.ProcessId = process_id
            cb_in.ProcessHandle = process
            cb_in.CallbackType = kind
            if fill is not None:
                fill(cb_in)
            cb_out = A.MINIDUMP_CALLBACK_OUTPUT()
            # No source says dbghelp clears the output before these callbacks: the callback must set what it answers.
            ctypes.memset(ctypes.addressof(cb_out), 0xFF, ctypes.sizeof(cb_out))
            ok = bool(routine(callback.CallbackParam, ctypes.addressof(cb_in), ctypes.addressof(cb_out)))
            self.callback_answers.append((kind, ok, ctypes.c_uint32(cb_out.Status).value))
            return ok, cb_out

        ok, out = ask(abi.IsProcessSnapshotCallback)
        if not ok or out.Status != abi.S_FALSE:  # else dbghelp treats the HPSS as a process handle
            self._last_error = 0x8007_0006
            return False
        for _ in range(CANCEL_CHECKS):  # CheckCancel TRUE asks for more; Cancel TRUE (with TRUE returned) cancels
            ok, out = ask(CANCEL_CALLBACK)
            if ok and out.Cancel:
                self._last_error = 0x8007_04C7  # HRESULT_FROM_WIN32(ERROR_CANCELLED), as documented
                return False
            if not ok or not out.CheckCancel:
                break
        dumped = []
        for region in snap.source.regions:
            if region.state != MemoryState.COMMIT:
                continue
            if region.readable:
                dumped.append(region)
                continue

            def failure(cb_in: ctypes.Structure, region: FakeRegion = region) -> None:
                cb_in.ReadMemoryFailure.Offset = region.base
                cb_in.ReadMemoryFailure.Bytes = region.size
                cb_in.ReadMemoryFailure.FailureStatus = READ_FAILURE_HRESULT - (1 << 32)

            ok, out = ask(READ_MEMORY_FAILURE_CALLBACK, failure)
            if not ok or out.Status != 0:  # only TRUE with S_OK omits the block; anything else fails the dump
                self._last_error = READ_FAILURE_HRESULT
                return False
            self.omitted.append((region.base, region.size))
        os.write(self.files[file], minidump_bytes([(r.base, r.size) for r in dumped]))
        return True


#: MINIDUMP_STREAM_TYPE ThreadListStream: a stream the fake writes besides the memory list, as dbghelp does.
THREAD_LIST_STREAM = 3


def minidump_bytes(ranges: list[tuple[int, int]], *, list64: bool = True) -> bytes:
    """A minidump as dbghelp lays one out: header, stream directory (an empty thread list, then the memory list),
    the list, then the memory (zeros here). A full-memory dump has a Memory64ListStream, whose memory follows from
    its BaseRva on; other dumps a MemoryListStream, whose descriptors each give their memory's Rva."""
    header = A.MINIDUMP_HEADER()
    directory = (A.MINIDUMP_DIRECTORY * 2)()
    threads = ctypes.c_uint32(0)
    lst = A.MINIDUMP_MEMORY64_LIST if list64 else A.MINIDUMP_MEMORY_LIST
    head_size = lst.MemoryRanges.offset
    descriptors = ((A.MINIDUMP_MEMORY_DESCRIPTOR64 if list64 else A.MINIDUMP_MEMORY_DESCRIPTOR) * len(ranges))()
    header.Signature = abi.MINIDUMP_SIGNATURE
    header.Version = 0xA793  # MINIDUMP_VERSION
    header.NumberOfStreams = 2
    header.StreamDirectoryRva = ctypes.sizeof(header)
    threads_rva = header.StreamDirectoryRva + ctypes.sizeof(directory)
    list_rva = threads_rva + ctypes.sizeof(threads)
    memory_rva = list_rva + head_size + ctypes.sizeof(descriptors)
    directory[0].StreamType = THREAD_LIST_STREAM
    directory[0].Location.DataSize = ctypes.sizeof(threads)
    directory[0].Location.Rva = threads_rva
    directory[1].StreamType = abi.Memory64ListStream if list64 else abi.MemoryListStream
    directory[1].Location.DataSize = head_size + ctypes.sizeof(descriptors)
    directory[1].Location.Rva = list_rva
    head = lst()
    head.NumberOfMemoryRanges = len(ranges)
    if list64:
        head.BaseRva = memory_rva
    rva = memory_rva
    for d, (base, size) in zip(descriptors, ranges, strict=True):
        d.StartOfMemoryRange = base
        if list64:
            d.DataSize = size
        else:
            d.Memory.DataSize, d.Memory.Rva = size, rva
        rva += size
    return (
        bytes(header) + bytes(directory) + bytes(threads) + bytes(head)[:head_size] + bytes(descriptors)
        + bytes(sum(size for _, size in ranges))
    )  # fmt: skip

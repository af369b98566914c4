"""Read a snapshot that this process holds (a local HPSS) into the pss_cli model, with PssQuerySnapshot and
PssWalkSnapshot.

Walk entries point into the snapshot (names, CONTEXT records); they stay valid only while the snapshot and the walk
marker live, so every entry is converted to plain Python values before the next walk step, and every marker is freed
on every path.
"""

from __future__ import annotations

import ctypes
import ntpath
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from pss_cli.model import (
    CaptureFlags,
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
from pss_cli.platform.windows import abi
from pss_cli.platform.windows.abi import Abi
from pss_cli.platform.windows.kernel32 import Kernel32Like
from pss_cli.platform.windows.winerror import error_for

T = TypeVar("T")

#: 1601-01-01 to 1970-01-01 in FILETIME's 100 ns units.
FILETIME_UNIX_EPOCH = 116_444_736_000_000_000

#: CONTEXT_* register groups (low bits of ContextFlags, the same on x64 and x86).
CONTEXT_CONTROL_BIT = 0x1
CONTEXT_INTEGER_BIT = 0x2
CONTEXT_SEGMENTS_BIT = 0x4
CONTEXT_FLOATING_POINT_BIT = 0x8
CONTEXT_DEBUG_REGISTERS_BIT = 0x10
CONTEXT_EXTENDED_REGISTERS_X86_BIT = 0x20

_OBJECT_TYPES = {
    abi.PSS_OBJECT_TYPE_PROCESS: HandleType.PROCESS,
    abi.PSS_OBJECT_TYPE_THREAD: HandleType.THREAD,
    abi.PSS_OBJECT_TYPE_MUTANT: HandleType.MUTANT,
    abi.PSS_OBJECT_TYPE_EVENT: HandleType.EVENT,
    abi.PSS_OBJECT_TYPE_SECTION: HandleType.SECTION,
    abi.PSS_OBJECT_TYPE_SEMAPHORE: HandleType.SEMAPHORE,
}
_TYPE_NAMES = {
    "File": HandleType.FILE,
    "Directory": HandleType.DIRECTORY,
    "Process": HandleType.PROCESS,
    "Thread": HandleType.THREAD,
    "Mutant": HandleType.MUTANT,
    "Event": HandleType.EVENT,
    "Section": HandleType.SECTION,
    "Semaphore": HandleType.SEMAPHORE,
}
_PROTECTION_RWX = {
    MemoryProtection.NOACCESS: "---",
    MemoryProtection.READONLY: "r--",
    MemoryProtection.READWRITE: "rw-",
    MemoryProtection.WRITECOPY: "rw-",
    MemoryProtection.EXECUTE: "--x",
    MemoryProtection.EXECUTE_READ: "r-x",
    MemoryProtection.EXECUTE_READWRITE: "rwx",
    MemoryProtection.EXECUTE_WRITECOPY: "rwx",
}

#: The query classes that are optional: a snapshot without that part answers with an error or a zero count.
_ABSENT = (abi.ERROR_NOT_FOUND, abi.ERROR_INVALID_PARAMETER, abi.ERROR_NOT_SUPPORTED)


def filetime_value(ft: ctypes.Structure) -> int:
    return (int(ft.dwHighDateTime) << 32) | int(ft.dwLowDateTime)


def filetime_to_unix(ft: ctypes.Structure) -> float | None:
    """A FILETIME timestamp as Unix seconds; None for the zero FILETIME (not set)."""
    value = filetime_value(ft)
    return None if value == 0 else (value - FILETIME_UNIX_EPOCH) / 10_000_000


def filetime_seconds(ft: ctypes.Structure) -> float:
    """A FILETIME duration (kernel or user time) in seconds."""
    return filetime_value(ft) / 10_000_000


def cpus(mask: int | None) -> tuple[int, ...] | None:
    """An affinity mask as the list of CPU numbers it allows."""
    if mask is None:
        return None
    return tuple(i for i in range(mask.bit_length()) if mask >> i & 1)


def utf16_at(address: int | None, nbytes: int) -> str | None:
    """A counted UTF-16 string (length in bytes, not NUL-terminated) from snapshot memory."""
    if not address or nbytes <= 0:
        return None
    return ctypes.string_at(address, nbytes & ~1).decode("utf-16-le", errors="replace")


def wchar_array(array: ctypes.Array[ctypes.c_uint16]) -> str:
    """A NUL-terminated WCHAR[N] field."""
    return bytes(memoryview(array).cast("B")).decode("utf-16-le", errors="replace").split("\0", 1)[0]


def _int(value: int | None) -> int:
    return 0 if value is None else int(value)


@dataclass(frozen=True, slots=True)
class ReadOptions:
    """What to read. For a snapshot we captured the flags are known; a received one is probed (`probe=True`)."""

    flags: CaptureFlags
    probe: bool = False


class SnapshotReader:
    """Queries and walks one local HPSS. The caller owns the snapshot; the reader frees only its walk markers."""

    def __init__(self, k: Kernel32Like, hpss: int, layout: Abi = abi.NATIVE) -> None:
        self.k = k
        self.hpss = hpss
        self.abi = layout
        #: The latest CaptureTime seen in a thread or handle entry (Unix seconds): when the snapshot was taken.
        self.capture_time: float | None = None

    def _saw(self, capture_time: ctypes.Structure) -> None:
        stamp = filetime_to_unix(capture_time)
        if stamp is not None and (self.capture_time is None or stamp > self.capture_time):
            self.capture_time = stamp

    def query(self, information_class: int, struct: abi.CStruct) -> ctypes.Structure:
        buffer = struct()
        rc = self.k.PssQuerySnapshot(self.hpss, information_class, buffer, ctypes.sizeof(buffer))
        if rc != abi.ERROR_SUCCESS:
            raise error_for(self.k, rc, f"PssQuerySnapshot({_query_name(information_class)})")
        return buffer

    def try_query(self, information_class: int, struct: abi.CStruct) -> ctypes.Structure | None:
        """For a received snapshot: None when the snapshot does not carry that class."""
        buffer = struct()
        rc = self.k.PssQuerySnapshot(self.hpss, information_class, buffer, ctypes.sizeof(buffer))
        if rc in _ABSENT:
            return None
        if rc != abi.ERROR_SUCCESS:
            raise error_for(self.k, rc, f"PssQuerySnapshot({_query_name(information_class)})")
        return buffer

    def walk(self, walk_class: int, struct: abi.CStruct, convert: Callable[[ctypes.Structure], T]) -> list[T]:
        """Every entry of one walk class, each converted while the marker still holds it; the marker is freed."""
        rc, marker = self.k.PssWalkMarkerCreate()
        if rc != abi.ERROR_SUCCESS:
            raise error_for(self.k, rc, "PssWalkMarkerCreate")
        out: list[T] = []
        try:
            buffer = struct()
            while True:
                rc = self.k.PssWalkSnapshot(self.hpss, walk_class, marker, buffer, ctypes.sizeof(buffer))
                if rc == abi.ERROR_NO_MORE_ITEMS:
                    return out
                if rc != abi.ERROR_SUCCESS:
                    raise error_for(self.k, rc, f"PssWalkSnapshot({_walk_name(walk_class)})")
                out.append(convert(buffer))
        finally:
            self.k.PssWalkMarkerFree(marker)

    # --- conversions ---------------------------------------------------------------------------------------------

    def process_info(self, info: ctypes.Structure, *, thread_count: int, handle_count: int | None) -> ProcessInfo:
        exe = wchar_array(info.ImageFileName) or None
        exit_status = int(info.ExitStatus)
        flags = ProcessFlags(int(info.Flags) & 0xFFFFFFFF)
        alive = exit_status == abi.STILL_ACTIVE
        if not alive:
            state = ThreadState.ZOMBIE
        elif flags & ProcessFlags.FROZEN:
            state = ThreadState.STOPPED
        else:
            state = ThreadState.RUNNING
        return ProcessInfo(
            pid=int(info.ProcessId),
            ppid=int(info.ParentProcessId),
            name=ntpath.basename(exe) if exe else "",
            exe=exe,
            cmdline=None,
            cwd=None,
            state=state,
            start_time=filetime_to_unix(info.CreateTime),
            user_time=filetime_seconds(info.UserTime),
            system_time=filetime_seconds(info.KernelTime),
            base_priority=int(info.BasePriority),
            nice=None,
            flags=flags,
            exit_status=None if alive else exit_status,
            affinity=cpus(_int(info.AffinityMask)),
            thread_count=thread_count,
            handle_count=handle_count,
            virtual_size=_int(info.VirtualSize),
            peak_virtual_size=_int(info.PeakVirtualSize),
            working_set_size=_int(info.WorkingSetSize),
            peak_working_set_size=_int(info.PeakWorkingSetSize),
            private_usage=_int(info.PrivateUsage),
            page_fault_count=int(info.PageFaultCount),
            peb_base_address=_int(info.PebBaseAddress),
        )

    def thread_context(self, address: int, size: int) -> ThreadContext | None:
        """Copy a CONTEXT record out of the snapshot and name its registers (x64: winnt.h order, lower case)."""
        if not address or size <= 0:
            return None
        ctx = self.abi.CONTEXT()
        ctypes.memmove(ctypes.addressof(ctx), address, min(size, ctypes.sizeof(ctx)))
        have = int(ctx.ContextFlags)
        regs: list[tuple[str, int]] = []
        fpregs: bytes | None = None
        if self.abi.arch == "x64":
            if have & CONTEXT_INTEGER_BIT:
                regs += [(name.lower(), int(getattr(ctx, name))) for name in abi.AMD64_INTEGER_REGISTERS]
            if have & CONTEXT_CONTROL_BIT:
                regs += [("rip", int(ctx.Rip)), ("eflags", int(ctx.EFlags)), ("cs", int(ctx.SegCs))]
                regs += [("ss", int(ctx.SegSs))]
            if have & CONTEXT_SEGMENTS_BIT:
                regs += [(s.lower(), int(getattr(ctx, f"Seg{s}"))) for s in ("Ds", "Es", "Fs", "Gs")]
            if have & CONTEXT_DEBUG_REGISTERS_BIT:
                regs += [(f"dr{i}", int(getattr(ctx, f"Dr{i}"))) for i in (0, 1, 2, 3, 6, 7)]
            if have & CONTEXT_FLOATING_POINT_BIT:
                regs.append(("mxcsr", int(ctx.MxCsr)))
                fpregs = bytes(ctx.FltSave)
            arch = "x86_64"
        else:
            if have & CONTEXT_INTEGER_BIT:
                regs += [(r.lower(), int(getattr(ctx, r))) for r in ("Eax", "Ecx", "Edx", "Ebx", "Esi", "Edi")]
            if have & CONTEXT_CONTROL_BIT:
                regs += [("ebp", int(ctx.Ebp)), ("esp", int(ctx.Esp)), ("eip", int(ctx.Eip))]
                regs += [("eflags", int(ctx.EFlags)), ("cs", int(ctx.SegCs)), ("ss", int(ctx.SegSs))]
            if have & CONTEXT_SEGMENTS_BIT:
                regs += [(s.lower(), int(getattr(ctx, f"Seg{s}"))) for s in ("Ds", "Es", "Fs", "Gs")]
            if have & CONTEXT_DEBUG_REGISTERS_BIT:
                regs += [(f"dr{i}", int(getattr(ctx, f"Dr{i}"))) for i in (0, 1, 2, 3, 6, 7)]
            if have & CONTEXT_EXTENDED_REGISTERS_X86_BIT:
                fpregs = bytes(ctx.ExtendedRegisters)
            arch = "x86"
        return ThreadContext(arch=arch, registers=tuple(regs), fpregs=fpregs, xstate=None)

    def thread_entry(self, e: ctypes.Structure) -> ThreadEntry:
        self._saw(e.CaptureTime)
        flags = ThreadFlags(int(e.Flags) & 0xFFFFFFFF)
        suspend = int(e.SuspendCount)
        if flags & ThreadFlags.TERMINATED:
            state = ThreadState.DEAD
        elif suspend > 0:
            state = ThreadState.STOPPED
        else:
            state = ThreadState.UNKNOWN
        context = self.thread_context(_int(e.ContextRecord), int(e.SizeOfContextRecord))
        sp = pc = None
        if context is not None:
            sp = context.register("rsp") if context.arch == "x86_64" else context.register("esp")
            pc = context.register("rip") if context.arch == "x86_64" else context.register("eip")
        return ThreadEntry(
            tid=int(e.ThreadId),
            name=None,
            state=state,
            flags=flags,
            user_time=filetime_seconds(e.UserTime),
            system_time=filetime_seconds(e.KernelTime),
            start_time=filetime_to_unix(e.CreateTime),
            priority=int(e.Priority),
            base_priority=int(e.BasePriority),
            affinity=cpus(_int(e.AffinityMask)),
            processor=None,
            syscall=SyscallState(
                number=int(e.LastSyscallNumber),
                name=None,
                args=(_int(e.LastSyscallFirstArgument),),
                stack_pointer=sp,
                program_counter=pc,
            ),
            sig_blocked=None,
            sig_pending=None,
            context=context,
            exit_status=int(e.ExitStatus) if flags & ThreadFlags.TERMINATED else None,
            teb_base_address=_int(e.TebBaseAddress),
            start_address=_int(e.Win32StartAddress),
            suspend_count=suspend,
        )

    def handle_entry(self, e: ctypes.Structure) -> HandleEntry:
        """A PSS_HANDLE_ENTRY. Pipes and sockets stay FILE: PSS never names a handle of type File (ntdll skips
        ObjectNameInformation for it), so nothing tells them apart from files."""
        self._saw(e.CaptureTime)
        flags = HandleFlags(int(e.Flags) & 0xF)
        type_name = utf16_at(_int(e.TypeName), int(e.TypeNameLength)) if flags & HandleFlags.HAVE_TYPE else None
        name = utf16_at(_int(e.ObjectName), int(e.ObjectNameLength)) if flags & HandleFlags.HAVE_NAME else None
        object_type = int(e.ObjectType)
        kind = _OBJECT_TYPES.get(object_type) or _TYPE_NAMES.get(type_name or "", HandleType.UNKNOWN)
        basic = bool(flags & HandleFlags.HAVE_BASIC_INFORMATION)
        attributes = int(e.Attributes) if basic else None
        specific: tuple[tuple[str, str | int], ...] = ()
        if flags & HandleFlags.HAVE_TYPE_SPECIFIC_INFORMATION:
            specific = _type_specific(object_type, e.TypeSpecificInformation)
        return HandleEntry(
            handle=_int(e.Handle),
            type=kind,
            type_name=type_name,
            name=name,
            flags=flags,
            close_on_exec=None if attributes is None else not attributes & abi.OBJ_INHERIT,
            granted_access=int(e.GrantedAccess) if basic else None,
            attributes=attributes,
            handle_count=int(e.HandleCount) if basic else None,
            pointer_count=int(e.PointerCount) if basic else None,
            type_specific=specific,
        )

    def va_region(self, e: ctypes.Structure) -> VaRegion | None:
        """A PSS_VA_SPACE_ENTRY; None for MEM_FREE gaps (a Linux map has none) and for values the model lacks."""
        state_value, type_value = int(e.State), int(e.Type)
        if state_value == MemoryState.FREE:
            return None
        try:
            state, kind = MemoryState(state_value), MemoryType(type_value)
        except ValueError:
            return None
        protection = MemoryProtection(int(e.Protect) & 0x7FF)
        base_protection = MemoryProtection(int(protection) & 0xFF)
        rwx = _PROTECTION_RWX.get(base_protection, "---")
        shared = kind is MemoryType.MAPPED and base_protection not in (
            MemoryProtection.WRITECOPY,
            MemoryProtection.EXECUTE_WRITECOPY,
        )
        return VaRegion(
            base=_int(e.BaseAddress),
            size=_int(e.RegionSize),
            perms=rwx + ("s" if shared else "p"),
            protection=protection,
            state=state,
            type=kind,
            mapped_file=utf16_at(_int(e.MappedFileName), int(e.MappedFileNameLength)),
            allocation_base=_int(e.AllocationBase),
        )

    # --- the whole snapshot --------------------------------------------------------------------------------------

    def read(
        self,
        options: ReadOptions,
        *,
        captured_at: float,
        capture_ms: float,
        thread_count: Callable[[int], int | None] | None = None,
    ) -> Snapshot:
        """The model of the whole snapshot. With `options.probe` every optional part is asked for, and the flags are
        inferred from what was there (a received HPSS does not say how it was captured)."""
        flags = options.flags
        probe = options.probe
        lay = self.abi
        warnings: list[str] = []
        info = self.query(abi.PSS_QUERY_PROCESS_INFORMATION, lay.PSS_PROCESS_INFORMATION)
        pid = int(info.ProcessId)

        threads: tuple[ThreadEntry, ...] | None = None
        if probe or flags & CaptureFlags.THREADS:
            tinfo = self._optional(abi.PSS_QUERY_THREAD_INFORMATION, lay.PSS_THREAD_INFORMATION, probe)
            if tinfo is not None and (not probe or int(tinfo.ThreadsCaptured) > 0):
                threads = tuple(self.walk(abi.PSS_WALK_THREADS, lay.PSS_THREAD_ENTRY, self.thread_entry))
        handles: tuple[HandleEntry, ...] | None = None
        if probe or flags & CaptureFlags.HANDLES:
            hinfo = self._optional(abi.PSS_QUERY_HANDLE_INFORMATION, lay.PSS_HANDLE_INFORMATION, probe)
            if hinfo is not None and (not probe or int(hinfo.HandlesCaptured) > 0):
                handles = tuple(self.walk(abi.PSS_WALK_HANDLES, lay.PSS_HANDLE_ENTRY, self.handle_entry))
        regions: tuple[VaRegion, ...] | None = None
        if probe or flags & CaptureFlags.VA_SPACE:
            vinfo = self._optional(abi.PSS_QUERY_VA_SPACE_INFORMATION, lay.PSS_VA_SPACE_INFORMATION, probe)
            if vinfo is not None and (not probe or int(vinfo.RegionCount) > 0):
                walked = self.walk(abi.PSS_WALK_VA_SPACE, lay.PSS_VA_SPACE_ENTRY, self.va_region)
                regions = tuple(r for r in walked if r is not None)
        memory: MemoryCapture | None = None
        if probe or flags & CaptureFlags.VA_CLONE:
            clone = self._optional(abi.PSS_QUERY_VA_CLONE_INFORMATION, lay.PSS_VA_CLONE_INFORMATION, probe)
            clone_handle = _int(clone.VaCloneHandle) if clone is not None else 0
            if clone_handle:
                committed = [r for r in regions or () if r.state is MemoryState.COMMIT]
                memory = MemoryCapture(
                    method="va-clone",
                    bytes_captured=sum(r.size for r in committed),
                    regions=len(committed),
                    clone_pid=self.k.GetProcessId(clone_handle) or None,
                )
                if regions is None:
                    warnings.append("VA clone captured without VA_SPACE: its size is not known (reported as 0)")
        performance = Performance(capture_ms=capture_ms, stopped_ms=None)
        if probe or flags & CaptureFlags.CREATE_MEASURE_PERFORMANCE:
            counters = self._optional(abi.PSS_QUERY_PERFORMANCE_COUNTERS, lay.PSS_PERFORMANCE_COUNTERS, probe)
            if counters is not None and int(counters.TotalWallClockPeriod) > 0:
                performance = _performance(counters, capture_ms)
        if flags & CaptureFlags.HANDLE_TRACE:
            trace = self._optional(abi.PSS_QUERY_HANDLE_TRACE_INFORMATION, lay.PSS_HANDLE_TRACE_INFORMATION, True)
            if trace is not None:
                warnings.append(f"handle trace captured ({int(trace.Size)} bytes in a section); not decoded")

        if threads is not None:
            count = len(threads)
        else:
            counted = thread_count(pid) if thread_count is not None else None
            if counted is None:
                warnings.append("thread count unknown: threads were not captured (reported as 0)")
            count = counted or 0
        process = self.process_info(info, thread_count=count, handle_count=None if handles is None else len(handles))
        if process.flags & ProcessFlags.WOW64:
            warnings.append(
                "the process is 32-bit (WOW64): thread contexts are the 64-bit view (wow64cpu), not its x86 registers"
            )
        if probe:
            flags = _inferred_flags(threads, handles, regions, memory, performance)
            if self.capture_time is not None:
                captured_at = self.capture_time
            else:
                warnings.append("capture time unknown: the snapshot has no thread or handle entries; time of reading")
        return Snapshot(
            flags=flags,
            platform="windows",
            arch="x86_64" if lay.arch == "x64" else "x86",
            captured_at=captured_at,
            process=process,
            threads=threads,
            handles=handles,
            va_space=regions,
            performance=performance,
            memory=memory,
            warnings=tuple(warnings),
        )

    def _optional(self, information_class: int, struct: abi.CStruct, probe: bool) -> ctypes.Structure | None:
        return self.try_query(information_class, struct) if probe else self.query(information_class, struct)


def _performance(counters: ctypes.Structure, capture_ms: float) -> Performance:
    def ms(name: str) -> float | None:
        value = int(getattr(counters, f"{name}WallClockPeriod"))
        return value * 1000 / abi.PSS_PERF_RESOLUTION if value else None

    return Performance(
        capture_ms=capture_ms,
        stopped_ms=None,
        threads_ms=ms("Threads"),
        handles_ms=ms("Handles"),
        va_space_ms=ms("VaSpace"),
        va_clone_ms=ms("VaClone"),
    )


def _type_specific(object_type: int, u: ctypes.Union) -> tuple[tuple[str, str | int], ...]:
    if object_type == abi.PSS_OBJECT_TYPE_PROCESS:
        p = u.Process
        return (
            ("pid", int(p.ProcessId)),
            ("ppid", int(p.ParentProcessId)),
            ("exit_status", int(p.ExitStatus)),
            ("base_priority", int(p.BasePriority)),
            ("peb_base_address", _int(p.PebBaseAddress)),
        )
    if object_type == abi.PSS_OBJECT_TYPE_THREAD:
        t = u.Thread
        return (
            ("pid", int(t.ProcessId)),
            ("tid", int(t.ThreadId)),
            ("exit_status", int(t.ExitStatus)),
            ("priority", int(t.Priority)),
            ("start_address", _int(t.Win32StartAddress)),
        )
    if object_type == abi.PSS_OBJECT_TYPE_MUTANT:
        m = u.Mutant
        return (
            ("current_count", int(m.CurrentCount)),
            ("abandoned", int(bool(m.Abandoned))),
            ("owner_pid", int(m.OwnerProcessId)),
            ("owner_tid", int(m.OwnerThreadId)),
        )
    if object_type == abi.PSS_OBJECT_TYPE_EVENT:
        ev = u.Event
        return (("manual_reset", int(bool(ev.ManualReset))), ("signaled", int(bool(ev.Signaled))))
    if object_type == abi.PSS_OBJECT_TYPE_SECTION:
        s = u.Section
        return (
            ("base_address", _int(s.BaseAddress)),
            ("allocation_attributes", int(s.AllocationAttributes)),
            ("maximum_size", int(s.MaximumSize)),
        )
    if object_type == abi.PSS_OBJECT_TYPE_SEMAPHORE:
        sem = u.Semaphore
        return (("current_count", int(sem.CurrentCount)), ("maximum_count", int(sem.MaximumCount)))
    return ()


def _inferred_flags(
    threads: tuple[ThreadEntry, ...] | None,
    handles: tuple[HandleEntry, ...] | None,
    regions: tuple[VaRegion, ...] | None,
    memory: MemoryCapture | None,
    performance: Performance,
) -> CaptureFlags:
    flags = CaptureFlags.NONE
    if threads is not None:
        flags |= CaptureFlags.THREADS
        if any(t.context is not None for t in threads):
            flags |= CaptureFlags.THREAD_CONTEXT
    if handles is not None:
        flags |= CaptureFlags.HANDLES
        seen = HandleFlags.NONE
        for h in handles:
            seen |= h.flags
        if seen & HandleFlags.HAVE_NAME:
            flags |= CaptureFlags.HANDLE_NAME_INFORMATION
        if seen & HandleFlags.HAVE_BASIC_INFORMATION:
            flags |= CaptureFlags.HANDLE_BASIC_INFORMATION
        if seen & HandleFlags.HAVE_TYPE_SPECIFIC_INFORMATION:
            flags |= CaptureFlags.HANDLE_TYPE_SPECIFIC_INFORMATION
    if regions is not None:
        flags |= CaptureFlags.VA_SPACE
        if any(r.mapped_file for r in regions):
            flags |= CaptureFlags.VA_SPACE_SECTION_INFORMATION
    if memory is not None:
        flags |= CaptureFlags.VA_CLONE
    if performance.threads_ms is not None or performance.va_space_ms is not None:
        flags |= CaptureFlags.CREATE_MEASURE_PERFORMANCE
    return flags


def _query_name(information_class: int) -> str:
    return _QUERY_NAMES.get(information_class, str(information_class))


def _walk_name(walk_class: int) -> str:
    return _WALK_NAMES.get(walk_class, str(walk_class))


_QUERY_NAMES = {
    value: name for name, value in vars(abi).items() if name.startswith("PSS_QUERY_") and isinstance(value, int)
}
_WALK_NAMES = {
    value: name for name, value in vars(abi).items() if name.startswith("PSS_WALK_") and isinstance(value, int)
}

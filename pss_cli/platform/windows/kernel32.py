"""The Win32 surface the Windows backend uses, as a Protocol, and the real ctypes bindings behind it.

The backend's logic is written against `Kernel32Like`, so that the contract tests can put a fake kernel32 in its
place on Linux. The prototypes are one platform-neutral table (`PROTOTYPES`), which the layout test compares with
win32metadata's function signatures; `load_kernel32()` applies them to the real DLLs, on Windows only.

Conventions kept from Win32 on purpose: PSS functions return their error code (they do not set the last error);
the classic functions return 0/FALSE and leave the reason in `GetLastError()`. Out-parameters come back as tuples
`(status, value)` so that no caller handles a raw pointer.
"""

from __future__ import annotations

import ctypes
import sys
from dataclasses import dataclass
from typing import Protocol

from pss_cli.errors import NotSupported
from pss_cli.platform.windows import abi

_u32 = ctypes.c_uint32
_i32 = ctypes.c_int32
_ptr = ctypes.c_void_p
_size = ctypes.c_size_t


@dataclass(frozen=True, slots=True)
class Prototype:
    """One exported function: its DLL, return type and argument types (fixed-width, pointer-sized as `c_void_p`)."""

    dll: str
    restype: type[ctypes._SimpleCData[int]] | type[ctypes.c_void_p]
    argtypes: tuple[type[ctypes._SimpleCData[int]] | type[ctypes.c_void_p], ...]


#: Every function the backend calls. Out-parameters and buffers are `c_void_p` (passed with byref).
PROTOTYPES: dict[str, Prototype] = {
    # processsnapshot.h (kernel32, Windows 8.1 / Server 2012 R2)
    "PssCaptureSnapshot": Prototype("kernel32", _u32, (_ptr, _u32, _u32, _ptr)),
    "PssQuerySnapshot": Prototype("kernel32", _u32, (_ptr, _i32, _ptr, _u32)),
    "PssWalkSnapshot": Prototype("kernel32", _u32, (_ptr, _i32, _ptr, _ptr, _u32)),
    "PssDuplicateSnapshot": Prototype("kernel32", _u32, (_ptr, _ptr, _ptr, _ptr, _i32)),
    "PssFreeSnapshot": Prototype("kernel32", _u32, (_ptr, _ptr)),
    "PssWalkMarkerCreate": Prototype("kernel32", _u32, (_ptr, _ptr)),
    "PssWalkMarkerFree": Prototype("kernel32", _u32, (_ptr,)),
    "PssWalkMarkerGetPosition": Prototype("kernel32", _u32, (_ptr, _ptr)),
    "PssWalkMarkerSetPosition": Prototype("kernel32", _u32, (_ptr, _size)),
    "PssWalkMarkerSeekToBeginning": Prototype("kernel32", _u32, (_ptr,)),
    # processthreadsapi.h, handleapi.h, memoryapi.h, winbase.h
    "OpenProcess": Prototype("kernel32", _ptr, (_u32, _i32, _u32)),
    "CloseHandle": Prototype("kernel32", _i32, (_ptr,)),
    "GetCurrentProcess": Prototype("kernel32", _ptr, ()),
    "GetProcessId": Prototype("kernel32", _u32, (_ptr,)),
    "VirtualQuery": Prototype("kernel32", _size, (_ptr, _ptr, _size)),
    "ReadProcessMemory": Prototype("kernel32", _i32, (_ptr, _ptr, _ptr, _size, _ptr)),
    "FormatMessageW": Prototype("kernel32", _u32, (_u32, _ptr, _u32, _u32, _ptr, _u32, _ptr)),
    # securitybaseapi.h / winbase.h (advapi32)
    "OpenProcessToken": Prototype("advapi32", _i32, (_ptr, _u32, _ptr)),
    "LookupPrivilegeValueW": Prototype("advapi32", _i32, (_ptr, _ptr, _ptr)),
    "AdjustTokenPrivileges": Prototype("advapi32", _i32, (_ptr, _i32, _ptr, _u32, _ptr, _ptr)),
    # minidumpapiset.h (dbghelp)
    "MiniDumpWriteDump": Prototype("dbghelp", _i32, (_ptr, _u32, _ptr, _i32, _ptr, _ptr, _ptr)),
}

# MINIDUMP_CALLBACK_ROUTINE: BOOL CALLBACK (PVOID, PMINIDUMP_CALLBACK_INPUT, PMINIDUMP_CALLBACK_OUTPUT). stdcall on
# x86 Windows; elsewhere (the fake kernel32 on Linux) the C convention, which is the same thing on x64.
if sys.platform == "win32":
    MINIDUMP_CALLBACK_ROUTINE = ctypes.WINFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
else:
    MINIDUMP_CALLBACK_ROUTINE = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)


class Kernel32Like(Protocol):
    """What the backend needs from kernel32, advapi32, dbghelp and the C runtime."""

    def GetCurrentProcess(self) -> int:
        """The pseudo-handle (-1 as an unsigned pointer) for this process; never closed."""
        ...

    def GetLastError(self) -> int: ...

    def OpenProcess(self, desired_access: int, inherit_handle: bool, process_id: int) -> int:
        """A process handle, or 0 with the reason in GetLastError()."""
        ...

    def CloseHandle(self, handle: int) -> bool: ...

    def GetProcessId(self, process: int) -> int:
        """The PID behind a process handle, or 0."""
        ...

    def VirtualQuery(self, address: int, buffer: ctypes.Structure) -> int:
        """Fill a MEMORY_BASIC_INFORMATION for this process's `address`; bytes written, 0 on failure."""
        ...

    def ReadProcessMemory(self, process: int, address: int, size: int) -> bytes | None:
        """Exactly `size` bytes at `address` in `process`, or None with the reason in GetLastError(). It never faults,
        which is why it reads memory whose owner is not known."""
        ...

    def FormatMessageW(self, code: int) -> str:
        """The system's text for a Win32 error code, or "" when it has none."""
        ...

    def PssCaptureSnapshot(self, process: int, capture_flags: int, thread_context_flags: int) -> tuple[int, int]:
        """(error code, HPSS)."""
        ...

    def PssQuerySnapshot(self, snapshot: int, information_class: int, buffer: ctypes.Structure, length: int) -> int: ...

    def PssWalkSnapshot(
        self, snapshot: int, information_class: int, walk_marker: int, buffer: ctypes.Structure, length: int
    ) -> int: ...

    def PssDuplicateSnapshot(
        self, source_process: int, snapshot: int, target_process: int, flags: int
    ) -> tuple[int, int]:
        """(error code, HPSS valid in the target process)."""
        ...

    def PssFreeSnapshot(self, process: int, snapshot: int) -> int: ...

    def PssWalkMarkerCreate(self) -> tuple[int, int]:
        """(error code, HPSSWALK), with the default allocator."""
        ...

    def PssWalkMarkerFree(self, walk_marker: int) -> int: ...

    def PssWalkMarkerGetPosition(self, walk_marker: int) -> tuple[int, int]: ...

    def PssWalkMarkerSetPosition(self, walk_marker: int, position: int) -> int: ...

    def PssWalkMarkerSeekToBeginning(self, walk_marker: int) -> int: ...

    def OpenProcessToken(self, process: int, desired_access: int) -> int:
        """A token handle, or 0 with the reason in GetLastError()."""
        ...

    def LookupPrivilegeValueW(self, name: str, luid: ctypes.Structure) -> bool:
        """Fill `luid` with the local LUID of privilege `name`."""
        ...

    def AdjustTokenPrivileges(self, token: int, new_state: ctypes.Structure) -> bool:
        """TRUE can still mean "not all assigned": check GetLastError() for ERROR_NOT_ALL_ASSIGNED."""
        ...

    def MiniDumpWriteDump(
        self, process: int, process_id: int, file: int, dump_type: int, callback: ctypes.Structure | None
    ) -> bool: ...

    def get_osfhandle(self, fd: int) -> int:
        """The Win32 file HANDLE behind a C runtime file descriptor."""
        ...


if sys.platform == "win32":
    import msvcrt

    def _as_int(value: int | None) -> int:
        return 0 if value is None else int(value)

    class _WinKernel32:
        """ctypes over kernel32/advapi32/dbghelp with PROTOTYPES applied; raises NotSupported if PSS is absent."""

        def __init__(self) -> None:
            dlls = {name: ctypes.WinDLL(name, use_last_error=True) for name in ("kernel32", "advapi32", "dbghelp")}
            self._fn: dict[str, ctypes._NamedFuncPointer] = {}
            for name, proto in PROTOTYPES.items():
                try:
                    fn = getattr(dlls[proto.dll], name)
                except AttributeError as exc:
                    raise NotSupported(
                        f"{proto.dll}.dll has no {name}: the Process Snapshotting API needs Windows 8.1 or "
                        "Windows Server 2012 R2 or later"
                    ) from exc
                fn.restype = proto.restype
                fn.argtypes = proto.argtypes
                self._fn[name] = fn

        def GetCurrentProcess(self) -> int:
            return _as_int(self._fn["GetCurrentProcess"]())

        def GetLastError(self) -> int:
            return ctypes.get_last_error()

        def OpenProcess(self, desired_access: int, inherit_handle: bool, process_id: int) -> int:
            return _as_int(self._fn["OpenProcess"](desired_access, int(inherit_handle), process_id))

        def CloseHandle(self, handle: int) -> bool:
            return bool(self._fn["CloseHandle"](handle))

        def GetProcessId(self, process: int) -> int:
            return int(self._fn["GetProcessId"](process))

        def VirtualQuery(self, address: int, buffer: ctypes.Structure) -> int:
            return int(self._fn["VirtualQuery"](address, ctypes.byref(buffer), ctypes.sizeof(buffer)))

        def ReadProcessMemory(self, process: int, address: int, size: int) -> bytes | None:
            buffer = ctypes.create_string_buffer(size)
            done = ctypes.c_size_t()
            ok = self._fn["ReadProcessMemory"](process, address, buffer, size, ctypes.byref(done))
            return buffer.raw[:size] if ok and done.value == size else None

        def FormatMessageW(self, code: int) -> str:
            text = ctypes.create_unicode_buffer(1024)
            flags = abi.FORMAT_MESSAGE_FROM_SYSTEM | abi.FORMAT_MESSAGE_IGNORE_INSERTS
            n = int(self._fn["FormatMessageW"](flags, None, code, 0, text, len(text), None))
            return text.value[:n].strip()

        def PssCaptureSnapshot(self, process: int, capture_flags: int, thread_context_flags: int) -> tuple[int, int]:
            out = ctypes.c_void_p()
            rc = int(self._fn["PssCaptureSnapshot"](process, capture_flags, thread_context_flags, ctypes.byref(out)))
            return rc, _as_int(out.value)

        def PssQuerySnapshot(self, snapshot: int, information_class: int, buffer: ctypes.Structure, length: int) -> int:
            return int(self._fn["PssQuerySnapshot"](snapshot, information_class, ctypes.byref(buffer), length))

        def PssWalkSnapshot(
            self, snapshot: int, information_class: int, walk_marker: int, buffer: ctypes.Structure, length: int
        ) -> int:
            fn = self._fn["PssWalkSnapshot"]
            return int(fn(snapshot, information_class, walk_marker, ctypes.byref(buffer), length))

        def PssDuplicateSnapshot(
            self, source_process: int, snapshot: int, target_process: int, flags: int
        ) -> tuple[int, int]:
            out = ctypes.c_void_p()
            fn = self._fn["PssDuplicateSnapshot"]
            rc = int(fn(source_process, snapshot, target_process, ctypes.byref(out), flags))
            return rc, _as_int(out.value)

        def PssFreeSnapshot(self, process: int, snapshot: int) -> int:
            return int(self._fn["PssFreeSnapshot"](process, snapshot))

        def PssWalkMarkerCreate(self) -> tuple[int, int]:
            out = ctypes.c_void_p()
            rc = int(self._fn["PssWalkMarkerCreate"](None, ctypes.byref(out)))
            return rc, _as_int(out.value)

        def PssWalkMarkerFree(self, walk_marker: int) -> int:
            return int(self._fn["PssWalkMarkerFree"](walk_marker))

        def PssWalkMarkerGetPosition(self, walk_marker: int) -> tuple[int, int]:
            out = ctypes.c_size_t()
            rc = int(self._fn["PssWalkMarkerGetPosition"](walk_marker, ctypes.byref(out)))
            return rc, int(out.value)

        def PssWalkMarkerSetPosition(self, walk_marker: int, position: int) -> int:
            return int(self._fn["PssWalkMarkerSetPosition"](walk_marker, position))

        def PssWalkMarkerSeekToBeginning(self, walk_marker: int) -> int:
            return int(self._fn["PssWalkMarkerSeekToBeginning"](walk_marker))

        def OpenProcessToken(self, process: int, desired_access: int) -> int:
            out = ctypes.c_void_p()
            ok = self._fn["OpenProcessToken"](process, desired_access, ctypes.byref(out))
            return _as_int(out.value) if ok else 0

        def LookupPrivilegeValueW(self, name: str, luid: ctypes.Structure) -> bool:
            wide = ctypes.create_unicode_buffer(name)
            return bool(self._fn["LookupPrivilegeValueW"](None, wide, ctypes.byref(luid)))

        def AdjustTokenPrivileges(self, token: int, new_state: ctypes.Structure) -> bool:
            fn = self._fn["AdjustTokenPrivileges"]
            return bool(fn(token, 0, ctypes.byref(new_state), 0, None, None))

        def MiniDumpWriteDump(
            self, process: int, process_id: int, file: int, dump_type: int, callback: ctypes.Structure | None
        ) -> bool:
            cb = None if callback is None else ctypes.byref(callback)
            return bool(self._fn["MiniDumpWriteDump"](process, process_id, file, dump_type, None, None, cb))

        def get_osfhandle(self, fd: int) -> int:
            return msvcrt.get_osfhandle(fd)

    def load_kernel32() -> Kernel32Like:
        """The real bindings; NotSupported where the PSS API is missing (before Windows 8.1)."""
        return _WinKernel32()

else:

    def load_kernel32() -> Kernel32Like:
        """Anywhere but Windows there is no kernel32 to load."""
        raise NotSupported(f"the Windows backend needs Windows; this is {sys.platform}")

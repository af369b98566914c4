"""Windows SDK declarations used by the PSS backend: constants, and structures built from fixed-width ctypes types.

Nothing here loads a DLL, so the module imports on Linux, where the layout tests check it against Microsoft's
win32metadata. Structures come from `build_abi(arch)`, a factory parameterised on the target architecture, so that
the same declarations are checked with 8-byte pointers (x64) and 4-byte pointers (x86) on any host.

ABI traps avoided on purpose: `ctypes.wintypes.DWORD`, `LONG` and `BOOL` are 8 bytes on LP64 Linux, `c_wchar` is 4
bytes there, and FILETIME declared as a 64-bit integer would be 8-aligned where Windows aligns it to 4 (shifting four
fields of PSS_THREAD_ENTRY). So DWORD is `c_uint32`, WCHAR is `c_uint16` and FILETIME is two `c_uint32`.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pss_cli.model import CaptureFlags, HandleFlags, MemoryProtection, MemoryState, MemoryType

Arch = Literal["x64", "x86"]

# --- processsnapshot.h --------------------------------------------------------------------------------------------
PSS_PERF_RESOLUTION = 1_000_000

PSS_QUERY_PROCESS_INFORMATION = 0
PSS_QUERY_VA_CLONE_INFORMATION = 1
PSS_QUERY_AUXILIARY_PAGES_INFORMATION = 2
PSS_QUERY_VA_SPACE_INFORMATION = 3
PSS_QUERY_HANDLE_INFORMATION = 4
PSS_QUERY_THREAD_INFORMATION = 5
PSS_QUERY_HANDLE_TRACE_INFORMATION = 6
PSS_QUERY_PERFORMANCE_COUNTERS = 7

PSS_WALK_AUXILIARY_PAGES = 0
PSS_WALK_VA_SPACE = 1
PSS_WALK_HANDLES = 2
PSS_WALK_THREADS = 3
PSS_WALK_THREAD_NAME = 4

PSS_DUPLICATE_NONE = 0
PSS_DUPLICATE_CLOSE_SOURCE = 1

PSS_OBJECT_TYPE_UNKNOWN = 0
PSS_OBJECT_TYPE_PROCESS = 1
PSS_OBJECT_TYPE_THREAD = 2
PSS_OBJECT_TYPE_MUTANT = 3
PSS_OBJECT_TYPE_EVENT = 4
PSS_OBJECT_TYPE_SECTION = 5
PSS_OBJECT_TYPE_SEMAPHORE = 6

# PSS_CAPTURE_FLAGS, PSS_PROCESS_FLAGS, PSS_THREAD_FLAGS and PSS_HANDLE_FLAGS live in pss_cli.model (CaptureFlags,
# ProcessFlags, ThreadFlags, HandleFlags) with the SDK's values; the layout test checks them against win32metadata.
PSS_HANDLE_HAVE_TYPE = HandleFlags.HAVE_TYPE
PSS_HANDLE_HAVE_NAME = HandleFlags.HAVE_NAME
PSS_HANDLE_HAVE_BASIC_INFORMATION = HandleFlags.HAVE_BASIC_INFORMATION
PSS_HANDLE_HAVE_TYPE_SPECIFIC_INFORMATION = HandleFlags.HAVE_TYPE_SPECIFIC_INFORMATION

# --- winnt.h: process access rights -------------------------------------------------------------------------------
PROCESS_TERMINATE = 0x0001
PROCESS_CREATE_THREAD = 0x0002
PROCESS_SET_SESSIONID = 0x0004
PROCESS_VM_OPERATION = 0x0008
PROCESS_VM_READ = 0x0010
PROCESS_VM_WRITE = 0x0020
PROCESS_DUP_HANDLE = 0x0040
PROCESS_CREATE_PROCESS = 0x0080
PROCESS_SET_QUOTA = 0x0100
PROCESS_SET_INFORMATION = 0x0200
PROCESS_QUERY_INFORMATION = 0x0400
PROCESS_SUSPEND_RESUME = 0x0800
PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
PROCESS_SET_LIMITED_INFORMATION = 0x2000
DELETE = 0x00010000
READ_CONTROL = 0x00020000
WRITE_DAC = 0x00040000
WRITE_OWNER = 0x00080000
SYNCHRONIZE = 0x00100000
PROCESS_ALL_ACCESS = 0x001FFFFF

TOKEN_QUERY = 0x0008
TOKEN_ADJUST_PRIVILEGES = 0x0020
SE_PRIVILEGE_ENABLED = 0x00000002
SE_DEBUG_NAME = "SeDebugPrivilege"

OBJ_INHERIT = 0x00000002

# --- winerror.h ---------------------------------------------------------------------------------------------------
ERROR_SUCCESS = 0
ERROR_ACCESS_DENIED = 5
ERROR_INVALID_HANDLE = 6
ERROR_NOT_ENOUGH_MEMORY = 8
ERROR_BAD_LENGTH = 24
ERROR_NOT_SUPPORTED = 50
ERROR_INVALID_PARAMETER = 87
ERROR_CALL_NOT_IMPLEMENTED = 120
ERROR_NO_MORE_ITEMS = 259
ERROR_PARTIAL_COPY = 299
ERROR_NOACCESS = 998
ERROR_NOT_FOUND = 1168
ERROR_NOT_ALL_ASSIGNED = 1300
S_OK = 0
S_FALSE = 1
#: GetExitCodeProcess / PSS ExitStatus of a process or thread that has not exited.
STILL_ACTIVE = 259

FORMAT_MESSAGE_IGNORE_INSERTS = 0x00000200
FORMAT_MESSAGE_FROM_SYSTEM = 0x00001000

# --- CONTEXT flags (winnt.h) --------------------------------------------------------------------------------------
CONTEXT_AMD64 = 0x00100000
CONTEXT_ALL_AMD64 = 0x0010001F
CONTEXT_XSTATE_AMD64 = 0x00100040
CONTEXT_X86 = 0x00010000
CONTEXT_ALL_X86 = 0x0001003F
CONTEXT_XSTATE_X86 = 0x00010040

# --- minidumpapiset.h ---------------------------------------------------------------------------------------------
CancelCallback = 6
ReadMemoryFailureCallback = 14
IsProcessSnapshotCallback = 16
MiniDumpWithFullMemory = 0x00000002
MiniDumpWithHandleData = 0x00000004
MiniDumpWithUnloadedModules = 0x00000020
MiniDumpWithFullMemoryInfo = 0x00000800
MiniDumpWithThreadInfo = 0x00001000
#: MINIDUMP_STREAM_TYPE: the streams that list the memory a minidump carries (32-bit and 64-bit offsets).
MemoryListStream = 5
Memory64ListStream = 9
#: MINIDUMP_SIGNATURE, "MDMP" read as a little-endian ULONG32 (a #define, which win32metadata does not carry).
MINIDUMP_SIGNATURE = 0x504D444D

# --- memoryapi.h: values the model's enums carry, under their SDK names -------------------------------------------
MEM_COMMIT = MemoryState.COMMIT
MEM_RESERVE = MemoryState.RESERVE
MEM_FREE = MemoryState.FREE
MEM_PRIVATE = MemoryType.PRIVATE
MEM_MAPPED = MemoryType.MAPPED
MEM_IMAGE = MemoryType.IMAGE
PAGE_NOACCESS = MemoryProtection.NOACCESS
PAGE_READONLY = MemoryProtection.READONLY
PAGE_READWRITE = MemoryProtection.READWRITE
PAGE_WRITECOPY = MemoryProtection.WRITECOPY
PAGE_EXECUTE = MemoryProtection.EXECUTE
PAGE_EXECUTE_READ = MemoryProtection.EXECUTE_READ
PAGE_EXECUTE_READWRITE = MemoryProtection.EXECUTE_READWRITE
PAGE_EXECUTE_WRITECOPY = MemoryProtection.EXECUTE_WRITECOPY
PAGE_GUARD = MemoryProtection.GUARD
PAGE_NOCACHE = MemoryProtection.NOCACHE
PAGE_WRITECOMBINE = MemoryProtection.WRITECOMBINE

#: The flags of the Microsoft sample "Generate Dump File from a Process Snapshot", which ProcDump -r follows.
MINIDUMP_CAPTURE_FLAGS = (
    CaptureFlags.VA_CLONE
    | CaptureFlags.HANDLES
    | CaptureFlags.HANDLE_NAME_INFORMATION
    | CaptureFlags.HANDLE_BASIC_INFORMATION
    | CaptureFlags.HANDLE_TYPE_SPECIFIC_INFORMATION
    | CaptureFlags.HANDLE_TRACE
    | CaptureFlags.THREADS
    | CaptureFlags.THREAD_CONTEXT
    | CaptureFlags.THREAD_CONTEXT_EXTENDED
    | CaptureFlags.CREATE_BREAKAWAY
    | CaptureFlags.CREATE_BREAKAWAY_OPTIONAL
    | CaptureFlags.CREATE_USE_VM_ALLOCATIONS
    | CaptureFlags.CREATE_RELEASE_SECTION
)

#: ProcDump -ma's dump type: all memory, memory info, handles, unloaded modules, thread info.
MINIDUMP_FULL_TYPE = (
    MiniDumpWithFullMemory
    | MiniDumpWithFullMemoryInfo
    | MiniDumpWithHandleData
    | MiniDumpWithUnloadedModules
    | MiniDumpWithThreadInfo
)

#: CONTEXT's integer registers in their x64 order (winnt.h).
AMD64_INTEGER_REGISTERS = (
    "Rax",
    "Rcx",
    "Rdx",
    "Rbx",
    "Rsp",
    "Rbp",
    "Rsi",
    "Rdi",
    "R8",
    "R9",
    "R10",
    "R11",
    "R12",
    "R13",
    "R14",
    "R15",
)


class ForeignPointer32(ctypes.c_uint32):
    """A pointer field of a 32-bit process declared on a 64-bit host: only for checking x86 layouts."""


class ForeignPointer64(ctypes.c_uint64):
    """A pointer field of a 64-bit process declared on a 32-bit host: only for checking x64 layouts."""


CStruct = type[ctypes.Structure]


def _define(
    name: str,
    fields: Sequence[tuple[str, object]],
    *,
    pack: int | None = None,
    anonymous: tuple[str, ...] = (),
) -> type[ctypes.Structure]:
    """One structure; `_layout_ = "ms"` keeps `_pack_` meaning MSVC's rule on every host and Python version."""
    cls: type[ctypes.Structure] = type(name, (ctypes.Structure,), _namespace(fields, pack, anonymous))
    return cls


def _union(
    name: str,
    fields: Sequence[tuple[str, object]],
    *,
    pack: int | None = None,
    anonymous: tuple[str, ...] = (),
) -> type[ctypes.Union]:
    """One union (only ever a member of a structure)."""
    cls: type[ctypes.Union] = type(name, (ctypes.Union,), _namespace(fields, pack, anonymous))
    return cls


def _namespace(fields: Sequence[tuple[str, object]], pack: int | None, anonymous: tuple[str, ...]) -> dict[str, object]:
    namespace: dict[str, object] = {}
    if pack is not None:
        namespace["_layout_"] = "ms"
        namespace["_pack_"] = pack
    if anonymous:
        namespace["_anonymous_"] = anonymous
    namespace["_fields_"] = list(fields)
    return namespace


@dataclass(frozen=True, slots=True)
class Abi:
    """Every structure the backend passes to or reads from Windows, for one architecture."""

    arch: Arch
    pointer_size: int
    FILETIME: CStruct
    LUID: CStruct
    LUID_AND_ATTRIBUTES: CStruct
    TOKEN_PRIVILEGES: CStruct
    M128A: CStruct
    XSAVE_FORMAT: CStruct
    FLOATING_SAVE_AREA: CStruct
    CONTEXT: CStruct
    MEMORY_BASIC_INFORMATION: CStruct
    PSS_PROCESS_INFORMATION: CStruct
    PSS_VA_CLONE_INFORMATION: CStruct
    PSS_AUXILIARY_PAGES_INFORMATION: CStruct
    PSS_VA_SPACE_INFORMATION: CStruct
    PSS_HANDLE_INFORMATION: CStruct
    PSS_THREAD_INFORMATION: CStruct
    PSS_HANDLE_TRACE_INFORMATION: CStruct
    PSS_PERFORMANCE_COUNTERS: CStruct
    PSS_AUXILIARY_PAGE_ENTRY: CStruct
    PSS_VA_SPACE_ENTRY: CStruct
    PSS_HANDLE_ENTRY: CStruct
    PSS_THREAD_ENTRY: CStruct
    PSS_THREAD_NAME: CStruct
    PSS_ALLOCATOR: CStruct
    VS_FIXEDFILEINFO: CStruct
    MINIDUMP_MEMORY_INFO: CStruct
    MINIDUMP_THREAD_CALLBACK: CStruct
    MINIDUMP_THREAD_EX_CALLBACK: CStruct
    MINIDUMP_MODULE_CALLBACK: CStruct
    MINIDUMP_INCLUDE_THREAD_CALLBACK: CStruct
    MINIDUMP_INCLUDE_MODULE_CALLBACK: CStruct
    MINIDUMP_IO_CALLBACK: CStruct
    MINIDUMP_READ_MEMORY_FAILURE_CALLBACK: CStruct
    MINIDUMP_VM_QUERY_CALLBACK: CStruct
    MINIDUMP_VM_PRE_READ_CALLBACK: CStruct
    MINIDUMP_VM_POST_READ_CALLBACK: CStruct
    MINIDUMP_CALLBACK_INPUT: CStruct
    MINIDUMP_CALLBACK_OUTPUT: CStruct
    MINIDUMP_CALLBACK_INFORMATION: CStruct
    MINIDUMP_LOCATION_DESCRIPTOR: CStruct
    MINIDUMP_HEADER: CStruct
    MINIDUMP_DIRECTORY: CStruct
    MINIDUMP_MEMORY_DESCRIPTOR: CStruct
    MINIDUMP_MEMORY_LIST: CStruct
    MINIDUMP_MEMORY_DESCRIPTOR64: CStruct
    MINIDUMP_MEMORY64_LIST: CStruct

    def structures(self) -> dict[str, CStruct]:
        """Every declared structure by its SDK name (what the layout test walks)."""
        return {name: value for name in self.__slots__ if isinstance(value := getattr(self, name), type)}


def build_abi(arch: Arch) -> Abi:
    """Declare every structure for `arch`; pointers are c_void_p/c_size_t when `arch` matches this Python."""
    pointer_size = 8 if arch == "x64" else 4
    native = pointer_size == ctypes.sizeof(ctypes.c_void_p)
    u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64
    i32, i64 = ctypes.c_int32, ctypes.c_int64
    # PVOID, HANDLE, PCWSTR, CONTEXT*, function pointers; ULONG_PTR and SIZE_T.
    ptr: object = ctypes.c_void_p if native else (ForeignPointer64 if pointer_size == 8 else ForeignPointer32)
    ulong_ptr: object = ctypes.c_size_t if native else (u64 if pointer_size == 8 else u32)
    BOOL = i32
    HRESULT = i32

    FILETIME = _define("FILETIME", [("dwLowDateTime", u32), ("dwHighDateTime", u32)])
    LUID = _define("LUID", [("LowPart", u32), ("HighPart", i32)])
    LUID_AND_ATTRIBUTES = _define("LUID_AND_ATTRIBUTES", [("Luid", LUID), ("Attributes", u32)], pack=4)
    TOKEN_PRIVILEGES = _define("TOKEN_PRIVILEGES", [("PrivilegeCount", u32), ("Privileges", LUID_AND_ATTRIBUTES * 1)])
    # DECLSPEC_ALIGN(16) in winnt.h; ctypes before 3.13 cannot say so. Every M128A offset below is a multiple of 16
    # anyway, and the backend only reads CONTEXT records that Windows allocated, never allocates one.
    M128A = _define("M128A", [("Low", u64), ("High", i64)])
    xmm_count, reserved4 = (16, 96) if arch == "x64" else (8, 224)
    XSAVE_FORMAT = _define(
        "XSAVE_FORMAT",
        [
            ("ControlWord", u16),
            ("StatusWord", u16),
            ("TagWord", u8),
            ("Reserved1", u8),
            ("ErrorOpcode", u16),
            ("ErrorOffset", u32),
            ("ErrorSelector", u16),
            ("Reserved2", u16),
            ("DataOffset", u32),
            ("DataSelector", u16),
            ("Reserved3", u16),
            ("MxCsr", u32),
            ("MxCsr_Mask", u32),
            ("FloatRegisters", M128A * 8),
            ("XmmRegisters", M128A * xmm_count),
            ("Reserved4", u8 * reserved4),
        ],
    )
    FLOATING_SAVE_AREA = _define(
        "FLOATING_SAVE_AREA",
        [
            ("ControlWord", u32),
            ("StatusWord", u32),
            ("TagWord", u32),
            ("ErrorOffset", u32),
            ("ErrorSelector", u32),
            ("DataOffset", u32),
            ("DataSelector", u32),
            ("RegisterArea", u8 * 80),
            ("Cr0NpxState" if arch == "x64" else "Spare0", u32),
        ],
    )
    if arch == "x64":
        legacy = _define(
            "_Anonymous_e__Struct",
            [("Header", M128A * 2), ("Legacy", M128A * 8)] + [(f"Xmm{i}", M128A) for i in range(16)],
        )
        float_union = _union(
            "_Anonymous_e__Union",
            [("FltSave", XSAVE_FORMAT), ("Anonymous", legacy)],
            anonymous=("Anonymous",),
        )
        CONTEXT = _define(
            "CONTEXT",
            [(f"P{i}Home", u64) for i in range(1, 7)]
            + [("ContextFlags", u32), ("MxCsr", u32)]
            + [(f"Seg{s}", u16) for s in ("Cs", "Ds", "Es", "Fs", "Gs", "Ss")]
            + [("EFlags", u32)]
            + [(f"Dr{i}", u64) for i in (0, 1, 2, 3, 6, 7)]
            + [(r, u64) for r in AMD64_INTEGER_REGISTERS]
            + [("Rip", u64), ("Anonymous", float_union), ("VectorRegister", M128A * 26), ("VectorControl", u64)]
            + [(n, u64) for n in ("DebugControl", "LastBranchToRip", "LastBranchFromRip")]
            + [(n, u64) for n in ("LastExceptionToRip", "LastExceptionFromRip")],
            anonymous=("Anonymous",),
        )
    else:
        CONTEXT = _define(
            "CONTEXT",
            [("ContextFlags", u32)]
            + [(f"Dr{i}", u32) for i in (0, 1, 2, 3, 6, 7)]
            + [("FloatSave", FLOATING_SAVE_AREA)]
            + [(f"Seg{s}", u32) for s in ("Gs", "Fs", "Es", "Ds")]
            + [(r, u32) for r in ("Edi", "Esi", "Ebx", "Edx", "Ecx", "Eax", "Ebp", "Eip", "SegCs", "EFlags")]
            + [("Esp", u32), ("SegSs", u32), ("ExtendedRegisters", u8 * 512)],
        )
    mbi_fields: list[tuple[str, object]] = [("BaseAddress", ptr), ("AllocationBase", ptr), ("AllocationProtect", u32)]
    if arch == "x64":
        mbi_fields.append(("PartitionId", u16))
    mbi_fields += [("RegionSize", ulong_ptr), ("State", u32), ("Protect", u32), ("Type", u32)]
    MEMORY_BASIC_INFORMATION = _define("MEMORY_BASIC_INFORMATION", mbi_fields)

    PSS_PROCESS_INFORMATION = _define(
        "PSS_PROCESS_INFORMATION",
        [
            ("ExitStatus", u32),
            ("PebBaseAddress", ptr),
            ("AffinityMask", ulong_ptr),
            ("BasePriority", i32),
            ("ProcessId", u32),
            ("ParentProcessId", u32),
            ("Flags", i32),
            ("CreateTime", FILETIME),
            ("ExitTime", FILETIME),
            ("KernelTime", FILETIME),
            ("UserTime", FILETIME),
            ("PriorityClass", u32),
            ("PeakVirtualSize", ulong_ptr),
            ("VirtualSize", ulong_ptr),
            ("PageFaultCount", u32),
        ]
        + [
            (n, ulong_ptr)
            for n in (
                "PeakWorkingSetSize",
                "WorkingSetSize",
                "QuotaPeakPagedPoolUsage",
                "QuotaPagedPoolUsage",
                "QuotaPeakNonPagedPoolUsage",
                "QuotaNonPagedPoolUsage",
                "PagefileUsage",
                "PeakPagefileUsage",
                "PrivateUsage",
            )
        ]
        + [("ExecuteFlags", u32), ("ImageFileName", u16 * 260)],
    )
    PSS_VA_CLONE_INFORMATION = _define("PSS_VA_CLONE_INFORMATION", [("VaCloneHandle", ptr)])
    PSS_AUXILIARY_PAGES_INFORMATION = _define("PSS_AUXILIARY_PAGES_INFORMATION", [("AuxPagesCaptured", u32)])
    PSS_VA_SPACE_INFORMATION = _define("PSS_VA_SPACE_INFORMATION", [("RegionCount", u32)])
    PSS_HANDLE_INFORMATION = _define("PSS_HANDLE_INFORMATION", [("HandlesCaptured", u32)])
    PSS_THREAD_INFORMATION = _define("PSS_THREAD_INFORMATION", [("ThreadsCaptured", u32), ("ContextLength", u32)])
    PSS_HANDLE_TRACE_INFORMATION = _define("PSS_HANDLE_TRACE_INFORMATION", [("SectionHandle", ptr), ("Size", u32)])
    PSS_PERFORMANCE_COUNTERS = _define(
        "PSS_PERFORMANCE_COUNTERS",
        [
            (f"{phase}{measure}", u64)
            for phase in ("Total", "VaClone", "VaSpace", "AuxPages", "Handles", "Threads")
            for measure in ("CycleCount", "WallClockPeriod")
        ],
    )
    PSS_AUXILIARY_PAGE_ENTRY = _define(
        "PSS_AUXILIARY_PAGE_ENTRY",
        [
            ("Address", ptr),
            ("BasicInformation", MEMORY_BASIC_INFORMATION),
            ("CaptureTime", FILETIME),
            ("PageContents", ptr),
            ("PageSize", u32),
        ],
    )
    PSS_VA_SPACE_ENTRY = _define(
        "PSS_VA_SPACE_ENTRY",
        [
            ("BaseAddress", ptr),
            ("AllocationBase", ptr),
            ("AllocationProtect", u32),
            ("RegionSize", ulong_ptr),
            ("State", u32),
            ("Protect", u32),
            ("Type", u32),
            ("TimeDateStamp", u32),
            ("SizeOfImage", u32),
            ("ImageBase", ptr),
            ("CheckSum", u32),
            ("MappedFileNameLength", u16),
            ("MappedFileName", ptr),
        ],
    )
    type_specific = _union(
        "_TypeSpecificInformation_e__Union",
        [
            (
                "Process",
                _define(
                    "_Process_e__Struct",
                    [
                        ("ExitStatus", u32),
                        ("PebBaseAddress", ptr),
                        ("AffinityMask", ulong_ptr),
                        ("BasePriority", i32),
                        ("ProcessId", u32),
                        ("ParentProcessId", u32),
                        ("Flags", u32),
                    ],
                ),
            ),
            (
                "Thread",
                _define(
                    "_Thread_e__Struct",
                    [
                        ("ExitStatus", u32),
                        ("TebBaseAddress", ptr),
                        ("ProcessId", u32),
                        ("ThreadId", u32),
                        ("AffinityMask", ulong_ptr),
                        ("Priority", i32),
                        ("BasePriority", i32),
                        ("Win32StartAddress", ptr),
                    ],
                ),
            ),
            (
                "Mutant",
                _define(
                    "_Mutant_e__Struct",
                    [("CurrentCount", i32), ("Abandoned", BOOL), ("OwnerProcessId", u32), ("OwnerThreadId", u32)],
                ),
            ),
            ("Event", _define("_Event_e__Struct", [("ManualReset", BOOL), ("Signaled", BOOL)])),
            (
                "Section",
                _define(
                    "_Section_e__Struct",
                    [("BaseAddress", ptr), ("AllocationAttributes", u32), ("MaximumSize", i64)],
                ),
            ),
            ("Semaphore", _define("_Semaphore_e__Struct", [("CurrentCount", i32), ("MaximumCount", i32)])),
        ],
    )
    PSS_HANDLE_ENTRY = _define(
        "PSS_HANDLE_ENTRY",
        [
            ("Handle", ptr),
            ("Flags", i32),
            ("ObjectType", i32),
            ("CaptureTime", FILETIME),
            ("Attributes", u32),
            ("GrantedAccess", u32),
            ("HandleCount", u32),
            ("PointerCount", u32),
            ("PagedPoolCharge", u32),
            ("NonPagedPoolCharge", u32),
            ("CreationTime", FILETIME),
            ("TypeNameLength", u16),
            ("TypeName", ptr),
            ("ObjectNameLength", u16),
            ("ObjectName", ptr),
            ("TypeSpecificInformation", type_specific),
        ],
    )
    PSS_THREAD_ENTRY = _define(
        "PSS_THREAD_ENTRY",
        [
            ("ExitStatus", u32),
            ("TebBaseAddress", ptr),
            ("ProcessId", u32),
            ("ThreadId", u32),
            ("AffinityMask", ulong_ptr),
            ("Priority", i32),
            ("BasePriority", i32),
            ("LastSyscallFirstArgument", ptr),
            ("LastSyscallNumber", u16),
            ("CreateTime", FILETIME),
            ("ExitTime", FILETIME),
            ("KernelTime", FILETIME),
            ("UserTime", FILETIME),
            ("Win32StartAddress", ptr),
            ("CaptureTime", FILETIME),
            ("Flags", i32),
            ("SuspendCount", u16),
            ("SizeOfContextRecord", u16),
            ("ContextRecord", ptr),
        ],
    )
    PSS_THREAD_NAME = _define("PSS_THREAD_NAME", [("ThreadNameSize", u16), ("ThreadName", ptr)])
    PSS_ALLOCATOR = _define("PSS_ALLOCATOR", [("Context", ptr), ("AllocRoutine", ptr), ("FreeRoutine", ptr)])

    VS_FIXEDFILEINFO = _define(
        "VS_FIXEDFILEINFO",
        [
            (n, u32)
            for n in (
                "dwSignature",
                "dwStrucVersion",
                "dwFileVersionMS",
                "dwFileVersionLS",
                "dwProductVersionMS",
                "dwProductVersionLS",
                "dwFileFlagsMask",
                "dwFileFlags",
                "dwFileOS",
                "dwFileType",
                "dwFileSubtype",
                "dwFileDateMS",
                "dwFileDateLS",
            )
        ],
    )
    # minidumpapiset.h is wrapped in pshpack4.h: every MINIDUMP_* structure below, and every anonymous member declared
    # inside one, is packed to 4 (so MINIDUMP_CALLBACK_OUTPUT is 52 bytes on x64, not 56).
    MINIDUMP_MEMORY_INFO = _define(
        "MINIDUMP_MEMORY_INFO",
        [
            ("BaseAddress", u64),
            ("AllocationBase", u64),
            ("AllocationProtect", u32),
            ("__alignment1", u32),
            ("RegionSize", u64),
            ("State", u32),
            ("Protect", u32),
            ("Type", u32),
            ("__alignment2", u32),
        ],
        pack=4,
    )
    thread_head: list[tuple[str, object]] = [("ThreadId", u32), ("ThreadHandle", ptr)]
    thread_tail: list[tuple[str, object]] = [
        ("Context", CONTEXT),
        ("SizeOfContext", u32),
        ("StackBase", u64),
        ("StackEnd", u64),
    ]
    MINIDUMP_THREAD_CALLBACK = _define("MINIDUMP_THREAD_CALLBACK", thread_head + thread_tail, pack=4)
    MINIDUMP_THREAD_EX_CALLBACK = _define(
        "MINIDUMP_THREAD_EX_CALLBACK",
        thread_head + thread_tail + [("BackingStoreBase", u64), ("BackingStoreEnd", u64)],
        pack=4,
    )
    MINIDUMP_MODULE_CALLBACK = _define(
        "MINIDUMP_MODULE_CALLBACK",
        [
            ("FullPath", ptr),
            ("BaseOfImage", u64),
            ("SizeOfImage", u32),
            ("CheckSum", u32),
            ("TimeDateStamp", u32),
            ("VersionInfo", VS_FIXEDFILEINFO),
            ("CvRecord", ptr),
            ("SizeOfCvRecord", u32),
            ("MiscRecord", ptr),
            ("SizeOfMiscRecord", u32),
        ],
        pack=4,
    )
    MINIDUMP_INCLUDE_THREAD_CALLBACK = _define("MINIDUMP_INCLUDE_THREAD_CALLBACK", [("ThreadId", u32)], pack=4)
    MINIDUMP_INCLUDE_MODULE_CALLBACK = _define("MINIDUMP_INCLUDE_MODULE_CALLBACK", [("BaseOfImage", u64)], pack=4)
    MINIDUMP_IO_CALLBACK = _define(
        "MINIDUMP_IO_CALLBACK",
        [("Handle", ptr), ("Offset", u64), ("Buffer", ptr), ("BufferBytes", u32)],
        pack=4,
    )
    MINIDUMP_READ_MEMORY_FAILURE_CALLBACK = _define(
        "MINIDUMP_READ_MEMORY_FAILURE_CALLBACK",
        [("Offset", u64), ("Bytes", u32), ("FailureStatus", HRESULT)],
        pack=4,
    )
    MINIDUMP_VM_QUERY_CALLBACK = _define("MINIDUMP_VM_QUERY_CALLBACK", [("Offset", u64)], pack=4)
    MINIDUMP_VM_PRE_READ_CALLBACK = _define(
        "MINIDUMP_VM_PRE_READ_CALLBACK", [("Offset", u64), ("Buffer", ptr), ("Size", u32)], pack=4
    )
    MINIDUMP_VM_POST_READ_CALLBACK = _define(
        "MINIDUMP_VM_POST_READ_CALLBACK",
        [("Offset", u64), ("Buffer", ptr), ("Size", u32), ("Completed", u32), ("Status", HRESULT)],
        pack=4,
    )
    input_union = _union(
        "_Anonymous_e__Union",
        [
            ("Status", HRESULT),
            ("Thread", MINIDUMP_THREAD_CALLBACK),
            ("ThreadEx", MINIDUMP_THREAD_EX_CALLBACK),
            ("Module", MINIDUMP_MODULE_CALLBACK),
            ("IncludeThread", MINIDUMP_INCLUDE_THREAD_CALLBACK),
            ("IncludeModule", MINIDUMP_INCLUDE_MODULE_CALLBACK),
            ("Io", MINIDUMP_IO_CALLBACK),
            ("ReadMemoryFailure", MINIDUMP_READ_MEMORY_FAILURE_CALLBACK),
            ("SecondaryFlags", u32),
            ("VmQuery", MINIDUMP_VM_QUERY_CALLBACK),
            ("VmPreRead", MINIDUMP_VM_PRE_READ_CALLBACK),
            ("VmPostRead", MINIDUMP_VM_POST_READ_CALLBACK),
        ],
        pack=4,
    )
    MINIDUMP_CALLBACK_INPUT = _define(
        "MINIDUMP_CALLBACK_INPUT",
        [("ProcessId", u32), ("ProcessHandle", ptr), ("CallbackType", u32), ("Anonymous", input_union)],
        pack=4,
        anonymous=("Anonymous",),
    )
    output_union = _union(
        "_Anonymous_e__Union",
        [
            ("ModuleWriteFlags", u32),
            ("ThreadWriteFlags", u32),
            ("SecondaryFlags", u32),
            ("Anonymous1", _define("_Anonymous1_e__Struct", [("MemoryBase", u64), ("MemorySize", u32)], pack=4)),
            ("Anonymous2", _define("_Anonymous2_e__Struct", [("CheckCancel", BOOL), ("Cancel", BOOL)], pack=4)),
            ("Handle", ptr),
            (
                "Anonymous3",
                _define("_Anonymous3_e__Struct", [("VmRegion", MINIDUMP_MEMORY_INFO), ("Continue", BOOL)], pack=4),
            ),
            (
                "Anonymous4",
                _define(
                    "_Anonymous4_e__Struct",
                    [("VmQueryStatus", HRESULT), ("VmQueryResult", MINIDUMP_MEMORY_INFO)],
                    pack=4,
                ),
            ),
            (
                "Anonymous5",
                _define("_Anonymous5_e__Struct", [("VmReadStatus", HRESULT), ("VmReadBytesCompleted", u32)], pack=4),
            ),
            ("Status", HRESULT),
        ],
        pack=4,
        anonymous=("Anonymous1", "Anonymous2", "Anonymous3", "Anonymous4", "Anonymous5"),
    )
    MINIDUMP_CALLBACK_OUTPUT = _define(
        "MINIDUMP_CALLBACK_OUTPUT", [("Anonymous", output_union)], pack=4, anonymous=("Anonymous",)
    )
    MINIDUMP_CALLBACK_INFORMATION = _define(
        "MINIDUMP_CALLBACK_INFORMATION",
        [("CallbackRoutine", ptr), ("CallbackParam", ptr)],
        pack=4 if arch == "x64" else None,
    )
    # The file's own structures (the same on every architecture): what `dump` reads back from the minidump it wrote.
    MINIDUMP_LOCATION_DESCRIPTOR = _define("MINIDUMP_LOCATION_DESCRIPTOR", [("DataSize", u32), ("Rva", u32)], pack=4)
    MINIDUMP_HEADER = _define(
        "MINIDUMP_HEADER",
        [
            ("Signature", u32),
            ("Version", u32),
            ("NumberOfStreams", u32),
            ("StreamDirectoryRva", u32),
            ("CheckSum", u32),
            ("Anonymous", _union("_Anonymous_e__Union", [("Reserved", u32), ("TimeDateStamp", u32)], pack=4)),
            ("Flags", u64),
        ],
        pack=4,
        anonymous=("Anonymous",),
    )
    MINIDUMP_DIRECTORY = _define(
        "MINIDUMP_DIRECTORY", [("StreamType", u32), ("Location", MINIDUMP_LOCATION_DESCRIPTOR)], pack=4
    )
    MINIDUMP_MEMORY_DESCRIPTOR = _define(
        "MINIDUMP_MEMORY_DESCRIPTOR", [("StartOfMemoryRange", u64), ("Memory", MINIDUMP_LOCATION_DESCRIPTOR)], pack=4
    )
    # The lists end in a one-element array that stands for as many descriptors as NumberOfMemoryRanges says.
    MINIDUMP_MEMORY_LIST = _define(
        "MINIDUMP_MEMORY_LIST",
        [("NumberOfMemoryRanges", u32), ("MemoryRanges", MINIDUMP_MEMORY_DESCRIPTOR * 1)],
        pack=4,
    )
    MINIDUMP_MEMORY_DESCRIPTOR64 = _define(
        "MINIDUMP_MEMORY_DESCRIPTOR64", [("StartOfMemoryRange", u64), ("DataSize", u64)], pack=4
    )
    MINIDUMP_MEMORY64_LIST = _define(
        "MINIDUMP_MEMORY64_LIST",
        [("NumberOfMemoryRanges", u64), ("BaseRva", u64), ("MemoryRanges", MINIDUMP_MEMORY_DESCRIPTOR64 * 1)],
        pack=4,
    )
    return Abi(
        arch=arch,
        pointer_size=pointer_size,
        FILETIME=FILETIME,
        LUID=LUID,
        LUID_AND_ATTRIBUTES=LUID_AND_ATTRIBUTES,
        TOKEN_PRIVILEGES=TOKEN_PRIVILEGES,
        M128A=M128A,
        XSAVE_FORMAT=XSAVE_FORMAT,
        FLOATING_SAVE_AREA=FLOATING_SAVE_AREA,
        CONTEXT=CONTEXT,
        MEMORY_BASIC_INFORMATION=MEMORY_BASIC_INFORMATION,
        PSS_PROCESS_INFORMATION=PSS_PROCESS_INFORMATION,
        PSS_VA_CLONE_INFORMATION=PSS_VA_CLONE_INFORMATION,
        PSS_AUXILIARY_PAGES_INFORMATION=PSS_AUXILIARY_PAGES_INFORMATION,
        PSS_VA_SPACE_INFORMATION=PSS_VA_SPACE_INFORMATION,
        PSS_HANDLE_INFORMATION=PSS_HANDLE_INFORMATION,
        PSS_THREAD_INFORMATION=PSS_THREAD_INFORMATION,
        PSS_HANDLE_TRACE_INFORMATION=PSS_HANDLE_TRACE_INFORMATION,
        PSS_PERFORMANCE_COUNTERS=PSS_PERFORMANCE_COUNTERS,
        PSS_AUXILIARY_PAGE_ENTRY=PSS_AUXILIARY_PAGE_ENTRY,
        PSS_VA_SPACE_ENTRY=PSS_VA_SPACE_ENTRY,
        PSS_HANDLE_ENTRY=PSS_HANDLE_ENTRY,
        PSS_THREAD_ENTRY=PSS_THREAD_ENTRY,
        PSS_THREAD_NAME=PSS_THREAD_NAME,
        PSS_ALLOCATOR=PSS_ALLOCATOR,
        VS_FIXEDFILEINFO=VS_FIXEDFILEINFO,
        MINIDUMP_MEMORY_INFO=MINIDUMP_MEMORY_INFO,
        MINIDUMP_THREAD_CALLBACK=MINIDUMP_THREAD_CALLBACK,
        MINIDUMP_THREAD_EX_CALLBACK=MINIDUMP_THREAD_EX_CALLBACK,
        MINIDUMP_MODULE_CALLBACK=MINIDUMP_MODULE_CALLBACK,
        MINIDUMP_INCLUDE_THREAD_CALLBACK=MINIDUMP_INCLUDE_THREAD_CALLBACK,
        MINIDUMP_INCLUDE_MODULE_CALLBACK=MINIDUMP_INCLUDE_MODULE_CALLBACK,
        MINIDUMP_IO_CALLBACK=MINIDUMP_IO_CALLBACK,
        MINIDUMP_READ_MEMORY_FAILURE_CALLBACK=MINIDUMP_READ_MEMORY_FAILURE_CALLBACK,
        MINIDUMP_VM_QUERY_CALLBACK=MINIDUMP_VM_QUERY_CALLBACK,
        MINIDUMP_VM_PRE_READ_CALLBACK=MINIDUMP_VM_PRE_READ_CALLBACK,
        MINIDUMP_VM_POST_READ_CALLBACK=MINIDUMP_VM_POST_READ_CALLBACK,
        MINIDUMP_CALLBACK_INPUT=MINIDUMP_CALLBACK_INPUT,
        MINIDUMP_CALLBACK_OUTPUT=MINIDUMP_CALLBACK_OUTPUT,
        MINIDUMP_CALLBACK_INFORMATION=MINIDUMP_CALLBACK_INFORMATION,
        MINIDUMP_LOCATION_DESCRIPTOR=MINIDUMP_LOCATION_DESCRIPTOR,
        MINIDUMP_HEADER=MINIDUMP_HEADER,
        MINIDUMP_DIRECTORY=MINIDUMP_DIRECTORY,
        MINIDUMP_MEMORY_DESCRIPTOR=MINIDUMP_MEMORY_DESCRIPTOR,
        MINIDUMP_MEMORY_LIST=MINIDUMP_MEMORY_LIST,
        MINIDUMP_MEMORY_DESCRIPTOR64=MINIDUMP_MEMORY_DESCRIPTOR64,
        MINIDUMP_MEMORY64_LIST=MINIDUMP_MEMORY64_LIST,
    )


#: This Python's architecture as the SDK names it; an x86 Python is also what runs under WOW64.
NATIVE_ARCH: Arch = "x64" if ctypes.sizeof(ctypes.c_void_p) == 8 else "x86"
NATIVE: Abi = build_abi(NATIVE_ARCH)

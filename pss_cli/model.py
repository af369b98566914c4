"""The platform-neutral snapshot model.

It mirrors what the Windows Process Snapshotting API exposes (PSS_PROCESS_INFORMATION, PSS_THREAD_ENTRY,
PSS_HANDLE_ENTRY, PSS_VA_SPACE_ENTRY, PSS_PERFORMANCE_COUNTERS) and adds what Linux knows besides. A field that a
platform cannot fill is None, never an invented value. This module does no I/O and imports nothing of the package
but pss_cli.record (a frozen dataclass without the start-up cost).
"""

from __future__ import annotations

import enum
import math
import sys

from pss_cli.record import record

#: Bumped whenever a field is renamed or removed, or its meaning changes; adding a field keeps the version.
#: 2: Linux's ThreadEntry.base_priority is the kernel priority, as ProcessInfo's (it was nice, now ThreadEntry.nice);
#: MemoryCapture.failed_pages is null until measured (it was 0). Readers upgrade schema 1 (serial.upgrade_snapshot).
SCHEMA_VERSION = 2

#: The largest PID the system can name: a DWORD on Windows, a pid_t (an int) on Linux. A larger number must be
#: refused, not passed on: the kernel would truncate it to some other, live PID.
MAX_PID = 0xFFFF_FFFF if sys.platform == "win32" else 0x7FFF_FFFF
#: The largest snapshot handle: an HPSS (a pointer) on Windows, an fd (an int) on Linux.
MAX_HANDLE = 0xFFFF_FFFF_FFFF_FFFF if sys.platform == "win32" else 0x7FFF_FFFF
#: The bounds of --timeout, in seconds: below MIN_TIMEOUT a freeze of a busy process fails for no reason; an hour
#: is already far longer than any process should be kept waiting.
MIN_TIMEOUT = 0.1
MAX_TIMEOUT = 3600.0


def pid_number(text: str) -> int | None:
    """`text` as a PID, or None: ASCII digits only ('²' is a digit to str.isdigit, not to int), within MAX_PID."""
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(MAX_PID)):
        return None
    number = int(text)
    return number if 0 < number <= MAX_PID else None


def timeout_problem(seconds: float) -> str | None:
    """Why `seconds` cannot bound a wait, or None. NaN slips through any range check (every comparison with it is
    false), so finiteness is tested on its own."""
    if not math.isfinite(seconds) or not MIN_TIMEOUT <= seconds <= MAX_TIMEOUT:
        return f"{seconds} is not a timeout: give a number of seconds from {MIN_TIMEOUT:g} to {MAX_TIMEOUT:g}"
    return None


#: `dump --clone-method`: "clone" copies a copy-on-write clone while the process runs on, "copy" copies the memory
#: while it stays frozen (Linux; Windows always dumps from a PSS VA clone).
CLONE_METHODS = ("clone", "copy")

#: The kernel's default /proc/PID/coredump_filter (MMF_DUMP_FILTER_DEFAULT): anonymous private and shared memory, ELF
#: headers, private hugetlb.
DEFAULT_COREDUMP_FILTER = 0x33
#: The bits /proc/PID/coredump_filter has (MMF_DUMP_FILTER_BITS, 9: bit 0 anonymous private ... bit 8 DAX shared).
COREDUMP_FILTER_BITS = 0x1FF
#: `dump --stack-limit`'s default: the most stack memory a mini core takes per thread (glibc's default stack size).
DEFAULT_STACK_LIMIT = 8 << 20


def filter_problem(mask: int) -> str | None:
    """Why `mask` is not a coredump_filter, or None."""
    if not 0 <= mask <= COREDUMP_FILTER_BITS:
        return f"{mask:#x} is not a coredump_filter mask: its bits are 0 to 8 (0x0 to {COREDUMP_FILTER_BITS:#x})"
    return None


@record
class DumpSelection:
    """What memory a dump holds. By default what the kernel would dump for the process (its coredump_filter, and
    MADV_DONTDUMP); `filter` overrides the mask; `all_memory` takes everything readable, MADV_DONTDUMP regions too
    (gcore -a); `mini` takes what a backtrace of every thread needs, at most `stack_limit` bytes of each stack."""

    mini: bool = False
    stack_limit: int = DEFAULT_STACK_LIMIT
    filter: int | None = None
    all_memory: bool = False


#: What `dump` takes unless told otherwise: what the kernel would dump for the process.
KERNEL_DUMP = DumpSelection()


def selection_problem(selection: DumpSelection) -> str | None:
    """Why `selection` cannot be dumped, or None: a mask outside coredump_filter's bits, a stack limit that is not
    positive, or choices that exclude each other."""
    chosen = [name for name, on in (("--mini", selection.mini), ("--filter", selection.filter is not None),
                                    ("--all-memory", selection.all_memory)) if on]  # fmt: skip
    if len(chosen) > 1:
        return f"{' and '.join(chosen)} exclude each other: give one"
    if selection.filter is not None:
        return filter_problem(selection.filter)
    if selection.stack_limit <= 0:
        return f"a stack limit of {selection.stack_limit} bytes takes nothing: give a positive size"
    return None


class CaptureFlags(enum.IntFlag):
    """PSS_CAPTURE_FLAGS, with the SDK's values."""

    NONE = 0x0
    VA_CLONE = 0x1
    HANDLES = 0x4
    HANDLE_NAME_INFORMATION = 0x8
    HANDLE_BASIC_INFORMATION = 0x10
    HANDLE_TYPE_SPECIFIC_INFORMATION = 0x20
    HANDLE_TRACE = 0x40
    THREADS = 0x80
    THREAD_CONTEXT = 0x100
    THREAD_CONTEXT_EXTENDED = 0x200
    VA_SPACE = 0x800
    VA_SPACE_SECTION_INFORMATION = 0x1000
    IPT_TRACE = 0x2000
    CREATE_BREAKAWAY_OPTIONAL = 0x04000000
    CREATE_BREAKAWAY = 0x08000000
    CREATE_FORCE_BREAKAWAY = 0x10000000
    CREATE_USE_VM_ALLOCATIONS = 0x20000000
    CREATE_MEASURE_PERFORMANCE = 0x40000000
    CREATE_RELEASE_SECTION = 0x80000000


#: What `capture` takes when no selection option is given: everything except memory content and tracing.
DEFAULT_CAPTURE = (
    CaptureFlags.THREADS
    | CaptureFlags.THREAD_CONTEXT
    | CaptureFlags.HANDLES
    | CaptureFlags.HANDLE_NAME_INFORMATION
    | CaptureFlags.HANDLE_BASIC_INFORMATION
    | CaptureFlags.HANDLE_TYPE_SPECIFIC_INFORMATION
    | CaptureFlags.VA_SPACE
    | CaptureFlags.VA_SPACE_SECTION_INFORMATION
)

#: `--everything`: every capture flag that means something on both platforms, memory included.
EVERYTHING = DEFAULT_CAPTURE | CaptureFlags.THREAD_CONTEXT_EXTENDED | CaptureFlags.VA_CLONE


class ProcessFlags(enum.IntFlag):
    """PSS_PROCESS_FLAGS."""

    NONE = 0
    PROTECTED = 0x1
    WOW64 = 0x2
    FROZEN = 0x10


class ThreadFlags(enum.IntFlag):
    """PSS_THREAD_FLAGS."""

    NONE = 0
    TERMINATED = 0x1


class ThreadState(enum.Enum):
    """Scheduler state as /proc reports it; Windows maps its thread states onto the same names."""

    RUNNING = "R"
    SLEEPING = "S"
    DISK_SLEEP = "D"
    STOPPED = "T"
    TRACING_STOP = "t"
    ZOMBIE = "Z"
    DEAD = "X"
    IDLE = "I"
    PARKED = "P"
    UNKNOWN = "?"

    @classmethod
    def from_code(cls, code: str) -> ThreadState:
        """The state for a /proc state letter; an unknown letter is UNKNOWN, not an error."""
        try:
            return cls(code)
        except ValueError:
            return cls.UNKNOWN


class HandleType(enum.Enum):
    """What a handle (Windows) or file descriptor (Linux) refers to."""

    FILE = "file"
    DIRECTORY = "directory"
    DEVICE = "device"
    PIPE = "pipe"
    FIFO = "fifo"
    SOCKET = "socket"
    EVENTFD = "eventfd"
    EPOLL = "eventpoll"
    TIMERFD = "timerfd"
    SIGNALFD = "signalfd"
    INOTIFY = "inotify"
    FANOTIFY = "fanotify"
    PIDFD = "pidfd"
    MEMFD = "memfd"
    IO_URING = "io_uring"
    ANON_INODE = "anon_inode"
    PROCESS = "process"
    THREAD = "thread"
    MUTANT = "mutant"
    EVENT = "event"
    SECTION = "section"
    SEMAPHORE = "semaphore"
    UNKNOWN = "unknown"


class HandleFlags(enum.IntFlag):
    """PSS_HANDLE_FLAGS: which parts of a handle entry were captured."""

    NONE = 0
    HAVE_TYPE = 0x1
    HAVE_NAME = 0x2
    HAVE_BASIC_INFORMATION = 0x4
    HAVE_TYPE_SPECIFIC_INFORMATION = 0x8


class MemoryState(enum.IntEnum):
    """MEM_* allocation states of PSS_VA_SPACE_ENTRY.State."""

    COMMIT = 0x1000
    RESERVE = 0x2000
    FREE = 0x10000


class MemoryType(enum.IntEnum):
    """MEM_* region types of PSS_VA_SPACE_ENTRY.Type."""

    PRIVATE = 0x20000
    MAPPED = 0x40000
    IMAGE = 0x1000000


class MemoryProtection(enum.IntFlag):
    """PAGE_* protection constants of PSS_VA_SPACE_ENTRY.Protect."""

    NOACCESS = 0x01
    READONLY = 0x02
    READWRITE = 0x04
    WRITECOPY = 0x08
    EXECUTE = 0x10
    EXECUTE_READ = 0x20
    EXECUTE_READWRITE = 0x40
    EXECUTE_WRITECOPY = 0x80
    GUARD = 0x100
    NOCACHE = 0x200
    WRITECOMBINE = 0x400


@record
class Namespaces:
    """The namespaces a process lives in, by inode number (/proc/PID/ns/NAME): two processes share a namespace
    exactly when their numbers match. None where the link could not be read."""

    pid: int | None = None
    mnt: int | None = None
    net: int | None = None
    user: int | None = None
    cgroup: int | None = None


@record
class Container:
    """The container a process runs in, as its cgroup path or its environment shows it.

    `runtime` is "docker", "containerd", "cri-o", "kubernetes" (a kubepods cgroup that names no runtime), "podman"
    or "systemd-nspawn" from a cgroup path; from the environment it is the `container=` value as given. `id` is the
    runtime's container ID (64 hex digits; a machine name for systemd-nspawn), None where only the environment
    says there is a container. `source` is "cgroup" or "environ".
    """

    runtime: str
    id: str | None
    source: str

    @property
    def short_id(self) -> str:
        """The ID as docker shows it (12 hex digits), a machine name whole; "-" without one."""
        if self.id is None:
            return "-"
        return self.id[:12] if self.source == "cgroup" and self.runtime != "systemd-nspawn" else self.id


@record
class ProcessLocation:
    """Where a process lives: its PID in each PID namespace, its namespaces, its cgroup and its container.

    `ns_pids` is /proc/PID/status NSpid: the PID in the namespace of the /proc that was read (the PID pss-dup
    sees) first, the PID in the process's own namespace last; one number when both are the same namespace. A PID
    in a namespace above pss-dup's (the host's, seen from a container) is never visible. `cgroup` is the cgroup v2
    path (the v1 `name=systemd` one on a host without v2 membership), relative to the reader's cgroup namespace.
    """

    ns_pids: tuple[int, ...] | None = None
    namespaces: Namespaces | None = None
    cgroup: str | None = None
    container: Container | None = None

    @property
    def inner_pid(self) -> int | None:
        """The PID the process has in its own PID namespace (what `ps` inside its container shows)."""
        return self.ns_pids[-1] if self.ns_pids else None


@record
class ProcessInfo:
    """PSS_PROCESS_INFORMATION plus what Linux adds. Times are seconds; start_time is a Unix timestamp."""

    pid: int
    ppid: int | None
    name: str
    exe: str | None
    cmdline: tuple[str, ...] | None
    cwd: str | None
    state: ThreadState
    start_time: float | None
    user_time: float | None
    system_time: float | None
    base_priority: int | None
    nice: int | None
    flags: ProcessFlags
    exit_status: int | None
    affinity: tuple[int, ...] | None
    thread_count: int
    handle_count: int | None
    virtual_size: int | None
    peak_virtual_size: int | None
    working_set_size: int | None
    peak_working_set_size: int | None
    private_usage: int | None
    page_fault_count: int | None
    uids: tuple[int, ...] | None = None
    gids: tuple[int, ...] | None = None
    environ: tuple[tuple[str, str], ...] | None = None
    sig_pending: int | None = None
    sig_blocked: int | None = None
    sig_ignored: int | None = None
    sig_caught: int | None = None
    seccomp_mode: int | None = None
    no_new_privs: bool | None = None
    dumpable: bool | None = None
    peb_base_address: int | None = None
    #: Namespaces, cgroup and container (Linux); None where the platform has none or /proc would not say.
    location: ProcessLocation | None = None


@record
class SyscallState:
    """The syscall a thread is blocked in (/proc/PID/task/TID/syscall; Windows LastSyscallNumber)."""

    number: int
    name: str | None
    args: tuple[int, ...]
    stack_pointer: int | None
    program_counter: int | None


@record
class ThreadContext:
    """A thread's register context.

    `registers` is the general-purpose set in the architecture's own order (x86_64: user_regs_struct), so that
    writers can lay it out again exactly; `fpregs` and `xstate` are the raw FXSAVE and XSAVE images, kept as
    bytes because their layout depends on the CPU.
    """

    arch: str
    registers: tuple[tuple[str, int], ...]
    fpregs: bytes | None = None
    xstate: bytes | None = None

    def register(self, name: str) -> int | None:
        """One register's value by name, or None where the architecture has no such register."""
        for reg, value in self.registers:
            if reg == name:
                return value
        return None


@record
class ThreadEntry:
    """PSS_THREAD_ENTRY plus Linux's scheduler facts.

    `priority` and `base_priority` mean what they mean in ProcessInfo and on Windows (current and base scheduling
    priority); Linux has one kernel priority per thread (/proc stat field 18) and gives it for both. Its nice value
    is `nice`, as for the process.
    """

    tid: int
    name: str | None
    state: ThreadState
    flags: ThreadFlags
    user_time: float | None
    system_time: float | None
    start_time: float | None
    priority: int | None
    base_priority: int | None
    affinity: tuple[int, ...] | None
    processor: int | None
    syscall: SyscallState | None
    sig_blocked: int | None
    sig_pending: int | None
    context: ThreadContext | None
    exit_status: int | None = None
    teb_base_address: int | None = None
    start_address: int | None = None
    suspend_count: int | None = None
    nice: int | None = None
    #: The 128-byte siginfo of the signal this thread was stopped delivering, when the capture was made for that
    #: signal (`watch --on-signal/--on-crash`); a core then names it (NT_SIGINFO, pr_cursig).
    siginfo: bytes | None = None


@record
class HandleEntry:
    """PSS_HANDLE_ENTRY; on Linux a file descriptor.

    `type_specific` carries what only one kind of object has (eventfd count, memfd seals, socket family and state,
    epoll targets, Windows mutant owner, …) as name/value pairs, so the model needs no variant per kind.
    """

    handle: int
    type: HandleType
    type_name: str | None
    name: str | None
    flags: HandleFlags
    close_on_exec: bool | None
    open_flags: int | None = None
    position: int | None = None
    inode: int | None = None
    device: int | None = None
    mount_id: int | None = None
    granted_access: int | None = None
    attributes: int | None = None
    handle_count: int | None = None
    pointer_count: int | None = None
    type_specific: tuple[tuple[str, str | int], ...] = ()


@record
class VaRegion:
    """PSS_VA_SPACE_ENTRY; on Linux a line of /proc/PID/maps with its smaps figures."""

    base: int
    size: int
    perms: str
    protection: MemoryProtection
    state: MemoryState
    type: MemoryType
    mapped_file: str | None
    offset: int | None = None
    device: str | None = None
    inode: int | None = None
    rss: int | None = None
    pss: int | None = None
    anonymous: int | None = None
    swap: int | None = None
    locked: int | None = None
    vm_flags: tuple[str, ...] | None = None
    allocation_base: int | None = None
    dumped: int | None = None

    @property
    def end(self) -> int:
        """One past the region's last byte."""
        return self.base + self.size


@record
class MemoryCapture:
    """What memory content a snapshot carries, and how it got it."""

    method: str
    bytes_captured: int
    regions: int
    clone_pid: int | None = None
    #: How long copying the memory took (after the process was let go, with the VA clone); None until it is done.
    copy_ms: float | None = None
    #: Pages that could not be read and are zero in the snapshot; None until the copy is done (0 is a measurement).
    failed_pages: int | None = None
    #: The second, short stop of one thread of the source: the injected wait4 that reaps the dead VA clone; None
    #: until it is reaped, and for a copy made while frozen (no clone).
    reap_stopped_ms: float | None = None
    #: How the memory was chosen: "kernel" (the kernel's core-dump rules with `filter`), "all" (everything readable,
    #: MADV_DONTDUMP included) or "mini" (registers' stacks, ELF headers and the loader's data: a backtrace's needs).
    selection: str = "kernel"
    #: The coredump_filter mask the kernel's rules used, and where it came from: "process" (/proc/PID/coredump_filter),
    #: "--filter", or "kernel default" (the file could not be read). None when no mask applied ("all", "mini").
    filter: int | None = None
    filter_source: str | None = None
    #: A mini core's cap on the stack bytes taken per thread; None for other cores.
    stack_limit: int | None = None


@record
class DumpOutput:
    """What a dump wrote, beside the snapshot it holds: the core's size, the bytes that went out (fewer when
    compressed), the room it takes on disk (a sparse core leaves its zero pages out; None for a stream), and how
    long the memory took to go out (copy, compression and writing, overlapped)."""

    core_bytes: int
    written_bytes: int
    allocated_bytes: int | None
    compression: str | None
    streamed: bool
    seconds: float

    @property
    def ratio(self) -> float | None:
        """How many times smaller the output is than the core (compressed dumps)."""
        return self.core_bytes / self.written_bytes if self.compression and self.written_bytes else None


@record
class Performance:
    """PSS_PERFORMANCE_COUNTERS, in milliseconds; stopped_ms is how long the process was frozen.

    wait_ms is how long the capture waited, before the freeze and with nothing stopped, for threads to leave an
    uninterruptible wait (state D); None when nothing was frozen (or on Windows, where PSS does not say).
    """

    capture_ms: float
    stopped_ms: float | None
    threads_ms: float | None = None
    handles_ms: float | None = None
    va_space_ms: float | None = None
    va_clone_ms: float | None = None
    wait_ms: float | None = None


@record
class Interruption:
    """A thread that pss-dup's stop woke out of a blocked call that fails with EINTR: whether the call was issued
    again (the process saw nothing), with what timeout, or why the process saw EINTR."""

    tid: int
    call: str
    restarted: bool
    #: The timeout the re-issued call got, in ms (what was left of the program's own); None: unchanged.
    timeout_ms: int | None = None
    note: str = ""


@record
class Snapshot:
    """One captured process. `threads`, `handles` and `va_space` are None when their flag was not asked for."""

    flags: CaptureFlags
    platform: str
    arch: str
    captured_at: float
    process: ProcessInfo
    threads: tuple[ThreadEntry, ...] | None
    handles: tuple[HandleEntry, ...] | None
    va_space: tuple[VaRegion, ...] | None
    performance: Performance
    memory: MemoryCapture | None = None
    warnings: tuple[str, ...] = ()
    #: Blocked calls the freeze interrupted (Linux); None where the platform has no such thing.
    interruptions: tuple[Interruption, ...] | None = None


@record
class AccessUse:
    """The access one operation took on one process: a Windows access mask, or the Linux checks it passed."""

    pid: int
    role: str
    names: tuple[str, ...]
    mask: int | None = None


@record
class CapturePlan:
    """A capture a dry run would make, checked without stopping the process: the access it would take (each check
    that can be made without stopping it passed) and the steps it would take. It stands for the snapshot in a
    dry run of `dup`."""

    pid: int
    flags: CaptureFlags
    access: AccessUse
    actions: tuple[str, ...]
    warnings: tuple[str, ...] = ()


@record
class DuplicateResult:
    """What `dup` did (PssDuplicateSnapshot): the handle that the target now holds, and what it cost."""

    source_pid: int
    target_pid: int
    target_handle: int | None
    access: tuple[AccessUse, ...]
    source_closed: bool
    inherit: bool
    dry_run: bool
    target_stopped_ms: float | None
    actions: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    #: Blocked calls of the target's thread that the injection interrupted (Linux).
    interruptions: tuple[Interruption, ...] | None = None


@record
class FreeResult:
    """What `free` did (PssFreeSnapshot in another process)."""

    pid: int
    handle: int
    access: tuple[AccessUse, ...]
    dry_run: bool
    stopped_ms: float | None
    actions: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    #: Blocked calls of the holder's thread that the injection interrupted (Linux).
    interruptions: tuple[Interruption, ...] | None = None


@record
class ListedProcess:
    """One process as a listing reads it (`ps`, a TARGET given by name): a field the OS refuses is None.

    The values are psutil's, field for field (scripts compare them with it): `name` is Linux's `comm` cut at 15
    characters, made whole from argv[0] where that starts with it; `cmdline` splits a rewritten command line as
    psutil does. `exe` is "" where the process has no executable (a kernel thread), None where it may not be read.
    `uid` is the real uid (None on Windows); `handles` counts fds on Linux, handles on Windows.
    """

    pid: int
    ppid: int | None
    name: str | None
    exe: str | None
    cmdline: tuple[str, ...] | None
    user: str | None
    uid: int | None
    threads: int | None
    handles: int | None
    rss: int | None
    create_time: float | None


@record
class ResourceSample:
    """One look at a watched process (`pss-dup watch`): read from /proc without stopping or tracing it.

    `at` is a monotonic clock reading; `fds` is None unless asked for (or unreadable); `thread_states` holds
    (tid, state letter) pairs only when a trigger needs them (--hang).
    """

    at: float
    cpu_seconds: float
    rss: int
    threads: int
    fds: int | None = None
    thread_states: tuple[tuple[int, str], ...] = ()


@record
class AttachSpec:
    """What an attached watch waits for (--on-signal, --on-crash, --on-exit): it then keeps the process seized."""

    signals: frozenset[int] = frozenset()
    crash: bool = False
    exit: bool = False

    @property
    def any(self) -> bool:
        return bool(self.signals) or self.crash or self.exit


@record
class WatchStop:
    """A thread an attached watch holds in a stop for the watcher to act on, and what it was doing there.

    `trigger` is "signal" (a --on-signal signal on its way in), "crash" (a fatal signal with its default action) or
    "exit" (the process is exiting). For signals: `signo`, `code` (si_code), `address` (si_addr of a fault) and
    `sender` (si_pid of a signal a process sent). For an exit: `exit_status` (the exit code), or `signo` the signal
    that ends it.
    """

    tid: int
    trigger: str
    signo: int = 0
    code: int | None = None
    address: int | None = None
    sender: int | None = None
    exit_status: int | None = None

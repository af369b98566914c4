"""The Windows backend: PssCaptureSnapshot, PssDuplicateSnapshot, PssFreeSnapshot and a minidump from a VA clone.

Rules kept on every path:
- each process is opened with the least mask the operation needs (access.py) and closed again, success or not;
- a snapshot this process holds is freed exactly once (PSS_DUPLICATE_CLOSE_SOURCE counts as the free);
- an HPSS value that did not come from this process's own PSS calls is never handed to a local PSS call before
  VirtualQuery shows committed, private, read-write memory here that starts with the descriptor marker: ntdll raises
  STATUS_INVALID_HANDLE for anything else, or faults on an unreadable address;
- an OSError out of any local PSS call (ctypes' report of such an exception) is BadSnapshot, never a traceback;
- a snapshot held by another process is read by duplicating it into this process (which validates it: ntdll reads
  the descriptor and checks its marker there), then freeing the copy; it is freed there by PssFreeSnapshot with the
  documented rights, never by PSS_DUPLICATE_CLOSE_SOURCE, whose remote free ignores its own failures.
PSS calls are synchronous and take no timeout: `timeout` is accepted for the common interface and not used.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import platform
import time
from collections.abc import Callable, Iterator
from types import TracebackType

from pss_cli import errors
from pss_cli.model import (
    KERNEL_DUMP,
    AccessUse,
    AttachSpec,
    CaptureFlags,
    CapturePlan,
    Container,
    DumpOutput,
    DumpSelection,
    DuplicateResult,
    FreeResult,
    ListedProcess,
    MemoryCapture,
    MemoryProtection,
    MemoryState,
    MemoryType,
    ProcessLocation,
    Snapshot,
)
from pss_cli.outfile import OutputFile
from pss_cli.platform import Backend, LiveProcess, LocalSnapshot, WatchedProcess
from pss_cli.platform.windows import abi, minidump
from pss_cli.platform.windows.abi import Abi
from pss_cli.platform.windows.access import (
    AccessRequest,
    access_names,
    capture_access,
    duplicate_source_access,
    duplicate_target_access,
    format_access,
    remote_free_access,
)
from pss_cli.platform.windows.kernel32 import MINIDUMP_CALLBACK_ROUTINE, Kernel32Like, load_kernel32
from pss_cli.platform.windows.reader import ReadOptions, SnapshotReader
from pss_cli.platform.windows.winerror import access_denied, describe, error_for, open_process_error

#: Added to every capture: the descriptor in VirtualAlloc'ed memory can later be freed remotely or handed on with
#: PSS_DUPLICATE_CLOSE_SOURCE, and the performance counters fill the report's timings.
CAPTURE_CREATE_FLAGS = CaptureFlags.CREATE_USE_VM_ALLOCATIONS | CaptureFlags.CREATE_MEASURE_PERFORMANCE

#: The first DWORD of every snapshot descriptor ('PSSD'); ntdll's PssNtValidateDescriptor refuses anything else.
PSS_DESCRIPTOR_MARKER = 0x44535350
#: What PssDuplicateSnapshot answers when the value is not a snapshot in the holder: the descriptor's marker is wrong
#: (ERROR_INVALID_HANDLE), or it cannot be read whole (ERROR_PARTIAL_COPY, ERROR_NOACCESS).
NOT_A_SNAPSHOT = frozenset({abi.ERROR_INVALID_HANDLE, abi.ERROR_PARTIAL_COPY, abi.ERROR_NOACCESS})

#: HRESULT_FROM_WIN32: MiniDumpWriteDump leaves an HRESULT in the last error.
_FACILITY_WIN32_MASK = 0xFFFF0000
_FACILITY_WIN32_PREFIX = 0x80070000


def thread_context_flags(flags: CaptureFlags, layout: Abi = abi.NATIVE) -> int:
    """PssCaptureSnapshot's ThreadContextFlags: CONTEXT_ALL, plus CONTEXT_XSTATE for THREAD_CONTEXT_EXTENDED."""
    if not flags & (CaptureFlags.THREAD_CONTEXT | CaptureFlags.THREAD_CONTEXT_EXTENDED):
        return 0
    x64 = layout.arch == "x64"
    value = abi.CONTEXT_ALL_AMD64 if x64 else abi.CONTEXT_ALL_X86
    if flags & CaptureFlags.THREAD_CONTEXT_EXTENDED:
        value |= abi.CONTEXT_XSTATE_AMD64 if x64 else abi.CONTEXT_XSTATE_X86
    return value


class WindowsSnapshot:
    """A snapshot this process holds (an HPSS), with its model; `close()` frees it (PssFreeSnapshot) once."""

    def __init__(self, k: Kernel32Like, hpss: int, model: Snapshot, access: AccessUse | None = None) -> None:
        self._k = k
        self._hpss = hpss
        self._model = model
        self.access = access
        self._freed = False

    @property
    def model(self) -> Snapshot:
        return self._model

    @property
    def freed(self) -> bool:
        return self._freed

    def handle(self) -> int:
        """The HPSS, valid in this process only."""
        if self._freed:
            raise errors.BadSnapshot("this snapshot was already freed (or handed on with --close-source)")
        return self._hpss

    def forget(self) -> None:
        """Someone else freed it (PSS_DUPLICATE_CLOSE_SOURCE frees the source even when duplication fails)."""
        self._freed = True

    def close(self) -> None:
        if self._freed:
            return
        self._freed = True
        free_local(self._k, self._hpss)

    def __enter__(self) -> WindowsSnapshot:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@contextlib.contextmanager
def local_pss_call(hpss: int, what: str) -> Iterator[None]:
    """BadSnapshot for an OSError out of a PSS call on a local HPSS: ctypes' report of the exception ntdll raised
    (STATUS_INVALID_HANDLE for a bad marker, an access violation for a damaged descriptor)."""
    try:
        yield
    except OSError as exc:
        raise errors.BadSnapshot(f"{what} on snapshot 0x{hpss:x} faulted: {exc}", pid=os.getpid()) from exc


def free_local(k: Kernel32Like, hpss: int) -> None:
    """PssFreeSnapshot of a snapshot this process holds."""
    with local_pss_call(hpss, "PssFreeSnapshot"):
        rc = k.PssFreeSnapshot(k.GetCurrentProcess(), hpss)
    if rc != abi.ERROR_SUCCESS:
        raise error_for(k, rc, "PssFreeSnapshot", pid=os.getpid())


def enable_debug_privilege(kernel32: Kernel32Like | None = None) -> bool:
    """Enable SeDebugPrivilege in this process's token for the rest of the run; False when the token lacks it
    (not elevated) or any step fails. The token handle is closed on every path."""
    k = kernel32 if kernel32 is not None else load_kernel32()
    token = k.OpenProcessToken(k.GetCurrentProcess(), abi.TOKEN_ADJUST_PRIVILEGES | abi.TOKEN_QUERY)
    if not token:
        return False
    try:
        state = abi.NATIVE.TOKEN_PRIVILEGES()
        state.PrivilegeCount = 1
        if not k.LookupPrivilegeValueW(abi.SE_DEBUG_NAME, state.Privileges[0].Luid):
            return False
        state.Privileges[0].Attributes = abi.SE_PRIVILEGE_ENABLED
        ok = k.AdjustTokenPrivileges(token, state)
        # AdjustTokenPrivileges succeeds even when the privilege is not in the token; only the last error says so.
        return ok and k.GetLastError() != abi.ERROR_NOT_ALL_ASSIGNED
    finally:
        k.CloseHandle(token)


def check_host(machine: str, arch: abi.Arch = abi.NATIVE_ARCH) -> None:
    """NotSupported unless this Python matches the OS: x64 on AMD64, or x86 on 32-bit Windows."""
    machine = machine.upper()
    if (machine in ("AMD64", "X86_64") and arch == "x64") or (machine in ("X86", "I386", "I686") and arch == "x86"):
        return
    if arch == "x86":
        raise errors.NotSupported(
            f"this is a 32-bit Python on {machine} Windows (WOW64): a WOW64 process cannot snapshot 64-bit "
            "processes; install a 64-bit Python"
        )
    raise errors.NotSupported(
        f"Windows on {machine} is not supported: pss-dup declares CONTEXT and the minidump callback structures for "
        "x64 and x86 only"
    )


#: What a listing reads of each process: as_dict reads them under one oneshot() per process, and nothing slow.
LISTED_ATTRS = ["ppid", "username", "name", "exe", "num_threads", "memory_info", "cmdline", "create_time",
                "num_handles"]  # fmt: skip


def _psutil_thread_count(pid: int) -> int | None:
    import psutil

    try:
        return int(psutil.Process(pid).num_threads())
    except psutil.Error:
        return None


class WindowsBackend:
    """The Backend for Windows 8.1 / Server 2012 R2 and later, x64 (or x86 on a 32-bit Windows)."""

    name = "windows"

    def __init__(
        self,
        kernel32: Kernel32Like | None = None,
        *,
        thread_count: Callable[[int], int | None] = _psutil_thread_count,
        layout: Abi = abi.NATIVE,
    ) -> None:
        if kernel32 is None:
            check_host(platform.machine())
            kernel32 = load_kernel32()
        self.k = kernel32
        self.abi = layout
        self._thread_count = thread_count
        self._pid = os.getpid()

    # --- helpers -------------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _process(self, pid: int, request: AccessRequest, what: str) -> Iterator[int]:
        """A handle to `pid` with exactly `request.mask`, closed on exit; this process uses its pseudo-handle."""
        if pid == self._pid:
            yield self.k.GetCurrentProcess()
            return
        handle = self.k.OpenProcess(request.mask, False, pid)
        if not handle:
            code = self.k.GetLastError()
            if code == abi.ERROR_ACCESS_DENIED:
                raise access_denied(self.k, f"OpenProcess for {what}", pid, request, self._missing_rights(pid, request))
            raise open_process_error(self.k, code, pid)
        try:
            yield handle
        finally:
            self.k.CloseHandle(handle)

    def _missing_rights(self, pid: int, request: AccessRequest) -> int | None:
        """Which rights of a refused mask are refused one by one (each probe is a subset, closed at once); None when
        each alone is granted and only the combination was refused."""
        missing = 0
        tried = 0
        for right, _ in request.needed_by:
            if right & tried:
                continue
            tried |= right
            probe = self.k.OpenProcess(right, False, pid)
            if probe:
                self.k.CloseHandle(probe)
            else:
                missing |= right
        return missing or None

    def _use(self, pid: int, role: str, request: AccessRequest | None) -> AccessUse:
        if pid == self._pid or request is None:
            return AccessUse(pid=pid, role=role, names=("GetCurrentProcess() pseudo-handle",), mask=None)
        return AccessUse(pid=pid, role=role, names=access_names(request.mask), mask=request.mask)

    def _validated_local(self, handle: int) -> int:
        """`handle` as an HPSS of this process: committed, private, read-write memory (no guard page, whose first
        touch would change it), pointer-aligned, starting with the descriptor marker that ntdll checks. The marker is
        read with ReadProcessMemory, which cannot fault. BadSnapshot otherwise."""
        info = self.abi.MEMORY_BASIC_INFORMATION()
        reason = None
        if handle <= 0 or handle % self.abi.pointer_size:
            reason = "not a pointer-aligned address"
        elif not self.k.VirtualQuery(handle, info):
            reason = "not an address in this process"
        elif int(info.State) != MemoryState.COMMIT or int(info.Type) != MemoryType.PRIVATE:
            reason = "not committed private memory"
        elif int(info.Protect) & 0xFF != MemoryProtection.READWRITE or int(info.Protect) & MemoryProtection.GUARD:
            reason = "not read-write memory"
        else:
            marker = self.k.ReadProcessMemory(self.k.GetCurrentProcess(), handle, 4)
            if marker is None:
                reason = f"it cannot be read ({describe(self.k, self.k.GetLastError())})"
            elif int.from_bytes(marker, "little") != PSS_DESCRIPTOR_MARKER:
                reason = "it does not start with PSS's descriptor marker"
        if reason:
            raise errors.BadSnapshot(
                f"0x{handle:x} is not a snapshot (HPSS) of this process: {reason}. An HPSS is an address in the "
                "process that holds it; one returned by a duplication into another process is only valid there",
                pid=self._pid,
            )
        return handle

    def _read(self, hpss: int, options: ReadOptions, captured_at: float, capture_ms: float) -> Snapshot:
        with local_pss_call(hpss, "reading"):
            return SnapshotReader(self.k, hpss, self.abi).read(
                options, captured_at=captured_at, capture_ms=capture_ms, thread_count=self._thread_count
            )

    def _not_a_snapshot(self, handle: int, pid: int, rc: int) -> errors.BadSnapshot:
        return errors.BadSnapshot(
            f"0x{handle:x} is not a process snapshot (HPSS) held by process {pid} "
            f"(PssDuplicateSnapshot: {describe(self.k, rc)})",
            pid=pid,
        )

    def _copy_here(self, holder: int, pid: int, handle: int) -> int:
        """Duplicate the snapshot that `pid` holds as `handle` into this process (validating it); the local HPSS."""
        rc, copy = self.k.PssDuplicateSnapshot(holder, handle, self.k.GetCurrentProcess(), abi.PSS_DUPLICATE_NONE)
        if rc in NOT_A_SNAPSHOT:
            raise self._not_a_snapshot(handle, pid, rc)
        if rc == abi.ERROR_ACCESS_DENIED:
            raise access_denied(self.k, "PssDuplicateSnapshot", pid, duplicate_source_access())
        if rc != abi.ERROR_SUCCESS:
            raise error_for(self.k, rc, "PssDuplicateSnapshot", pid=pid)
        return copy

    # --- Backend -------------------------------------------------------------------------------------------------

    def watch(
        self, pid: int, attach: AttachSpec | None = None, wake: Callable[[], None] | None = None
    ) -> WatchedProcess:
        """`pss-dup watch` samples /proc on Linux; its Windows sampler is not written yet."""
        raise errors.NotSupported("pss-dup watch runs on Linux only for now")

    def plan_capture(self, pid: int, flags: CaptureFlags) -> CapturePlan:
        """The dry run of `capture`: the process is opened with the access PssCaptureSnapshot needs (which proves
        it is granted) and closed; PssCaptureSnapshot is not called, since it suspends the process."""
        request = self._capture_request(flags)
        with self._process(pid, request, "PssCaptureSnapshot"):
            pass
        actions = (
            f"open process {pid} with {format_access(request.mask)}",
            f"call PssCaptureSnapshot (flags {int(flags | CAPTURE_CREATE_FLAGS):#x}), read the snapshot, close the "
            "process handle",
        )
        return CapturePlan(pid=pid, flags=flags, access=self._use(pid, "captured", request), actions=actions)

    def _capture_request(self, flags: CaptureFlags) -> AccessRequest:
        if flags & CaptureFlags.IPT_TRACE:
            raise errors.NotSupported("PSS_CAPTURE_IPT_TRACE (Intel PT tracing) is not implemented by pss-dup")
        return capture_access(flags)

    def capture(self, pid: int, flags: CaptureFlags, *, timeout: float) -> WindowsSnapshot:
        """PssCaptureSnapshot with the least access for `flags`; the model is read at once, the process handle
        closed before reading. The caller frees the snapshot (`close()`)."""
        request = self._capture_request(flags)
        call_flags = flags | CAPTURE_CREATE_FLAGS
        with self._process(pid, request, "PssCaptureSnapshot") as process:
            captured_at = time.time()
            start = time.perf_counter()
            rc, hpss = self.k.PssCaptureSnapshot(process, call_flags, thread_context_flags(flags, self.abi))
            capture_ms = (time.perf_counter() - start) * 1000
        if rc == abi.ERROR_ACCESS_DENIED:
            raise access_denied(self.k, "PssCaptureSnapshot", pid, request)
        if rc != abi.ERROR_SUCCESS:
            raise error_for(self.k, rc, "PssCaptureSnapshot", pid=pid)
        try:
            model = self._read(hpss, ReadOptions(call_flags), captured_at, capture_ms)
        except BaseException:
            with contextlib.suppress(OSError):  # the descriptor may be what faulted: keep the first error
                self.k.PssFreeSnapshot(self.k.GetCurrentProcess(), hpss)
            raise
        return WindowsSnapshot(self.k, hpss, model, self._use(pid, "captured", request))

    def duplicate(
        self,
        snapshot: LocalSnapshot | CapturePlan | None,
        source_pid: int,
        source_handle: int | None,
        target_pid: int,
        *,
        close_source: bool,
        inherit: bool,
        dry_run: bool,
        force: bool,
        timeout: float,
    ) -> DuplicateResult:
        """PssDuplicateSnapshot from the holder (this process for `snapshot`, else `source_pid`) into target_pid."""
        if inherit:
            raise errors.NotSupported("--inherit has no meaning on Windows: an HPSS is an address, not a handle")
        local: WindowsSnapshot | None = None
        plan: CapturePlan | None = None
        hpss: int | None
        if isinstance(snapshot, CapturePlan):
            if not dry_run:
                raise errors.UsageError("a capture plan stands for a snapshot in a dry run only; capture first")
            plan = snapshot
            holder_pid, hpss = self._pid, None
        elif snapshot is not None:
            if not isinstance(snapshot, WindowsSnapshot):
                raise errors.BadSnapshot("not a Windows snapshot")
            local = snapshot
            holder_pid, hpss = self._pid, snapshot.handle()
        elif source_handle is None:
            raise errors.UsageError("duplicate needs a snapshot or a source handle")
        elif source_pid == self._pid:
            holder_pid, hpss = self._pid, self._validated_local(source_handle)
        else:
            holder_pid, hpss = source_pid, source_handle
        # A snapshot held elsewhere is freed there by PssFreeSnapshot after the duplication, and its result checked:
        # PSS_DUPLICATE_CLOSE_SOURCE would free it with the duplication's rights and ignore its own failures.
        remote = holder_pid != self._pid
        source_request = duplicate_source_access(free_source=close_source) if remote else None
        target_request = duplicate_target_access()
        access: list[AccessUse] = []
        if local is not None and local.access is not None:
            access.append(local.access)
        if plan is not None:
            access.append(plan.access)
        access.append(self._use(holder_pid, "source (holds the snapshot)", source_request))
        access.append(self._use(target_pid, "target", target_request))
        actions = [
            *(plan.actions if plan is not None else ()),
            f"open process {holder_pid} with {format_access(source_request.mask)}"
            if source_request
            else "use this process's pseudo-handle as the source",
            f"open process {target_pid} with {format_access(target_request.mask)}",
        ]
        close_here = close_source and not remote
        dup_flags = abi.PSS_DUPLICATE_CLOSE_SOURCE if close_here else abi.PSS_DUPLICATE_NONE
        with contextlib.ExitStack() as stack:
            source = (
                stack.enter_context(self._process(holder_pid, source_request, "PssDuplicateSnapshot"))
                if source_request
                else self.k.GetCurrentProcess()
            )
            target = stack.enter_context(self._process(target_pid, target_request, "PssDuplicateSnapshot"))
            if dry_run:
                what = "the new snapshot" if hpss is None else f"0x{hpss:x}"
                actions.append(
                    f"would call PssDuplicateSnapshot({what}, flags={'CLOSE_SOURCE' if close_here else 'NONE'})"
                )
                if close_source and remote:
                    actions.append(f"would call PssFreeSnapshot(0x{hpss:x}) in process {holder_pid}")
                return DuplicateResult(
                    source_pid=source_pid,
                    target_pid=target_pid,
                    target_handle=None,
                    access=tuple(access),
                    source_closed=False,
                    inherit=False,
                    dry_run=True,
                    target_stopped_ms=None,
                    actions=tuple(actions),
                )
            assert hpss is not None  # a plan comes only with dry_run
            with contextlib.nullcontext() if remote else local_pss_call(hpss, "PssDuplicateSnapshot"):
                rc, copy = self.k.PssDuplicateSnapshot(source, hpss, target, dup_flags)
            if close_here and local is not None:
                local.forget()
            if rc in NOT_A_SNAPSHOT:
                raise self._not_a_snapshot(hpss, holder_pid, rc)
            if rc == abi.ERROR_ACCESS_DENIED:
                both = AccessRequest(
                    target_request.mask | (source_request.mask if source_request else 0),
                    target_request.needed_by + (source_request.needed_by if source_request else ()),
                )
                raise access_denied(self.k, "PssDuplicateSnapshot", target_pid, both)
            if rc != abi.ERROR_SUCCESS:
                raise error_for(self.k, rc, "PssDuplicateSnapshot", pid=target_pid)
            actions.append(f"PssDuplicateSnapshot: process {target_pid} now holds 0x{copy:x}")
            if close_here:
                actions.append("freed the source snapshot in this process (PSS_DUPLICATE_CLOSE_SOURCE)")
            elif close_source:
                assert source_request is not None
                rc = self.k.PssFreeSnapshot(source, hpss)
                if rc != abi.ERROR_SUCCESS:
                    exc = self._remote_free_error(holder_pid, rc, source_request)
                    exc.args = (f"{exc}; process {target_pid} already received the snapshot as 0x{copy:x}",)
                    raise exc
                actions.append(f"PssFreeSnapshot freed 0x{hpss:x} in process {holder_pid}")
        return DuplicateResult(
            source_pid=source_pid,
            target_pid=target_pid,
            target_handle=copy,
            access=tuple(access),
            source_closed=close_source,
            inherit=False,
            dry_run=False,
            target_stopped_ms=None,
            actions=tuple(actions),
        )

    def _remote_free_error(self, pid: int, rc: int, request: AccessRequest) -> errors.PssError:
        """The typed error for a failed PssFreeSnapshot of a snapshot that `pid` holds."""
        if rc == abi.ERROR_NOT_SUPPORTED:
            return errors.NotSupported(
                f"PssFreeSnapshot in process {pid}: {describe(self.k, rc)}. A snapshot can be freed from another "
                "process only when its bookkeeping is in VirtualAlloc'ed memory: captured with "
                "PSS_CREATE_USE_VM_ALLOCATIONS (pss-dup always does) or duplicated there",
                pid=pid,
            )
        if rc == abi.ERROR_ACCESS_DENIED:
            return access_denied(self.k, "PssFreeSnapshot", pid, request)
        return error_for(self.k, rc, "PssFreeSnapshot", pid=pid)

    def free(self, pid: int, handle: int, *, dry_run: bool, force: bool, timeout: float) -> FreeResult:
        """PssFreeSnapshot in `pid`, after proving `handle` is a snapshot there (a duplicate of it into this process
        succeeds, and is freed at once)."""
        if pid == self._pid:
            hpss = self._validated_local(handle)
            access = (self._use(pid, "holder", None),)
            if dry_run:
                return FreeResult(pid, handle, access, True, None, (f"would free local snapshot 0x{hpss:x}",))
            free_local(self.k, hpss)
            return FreeResult(pid, handle, access, False, None, (f"freed local snapshot 0x{hpss:x}",))
        request = remote_free_access()
        access = (self._use(pid, "holder", request),)
        actions = [f"open process {pid} with {format_access(request.mask)}"]
        with self._process(pid, request, "PssFreeSnapshot") as process:
            free_local(self.k, self._copy_here(process, pid, handle))
            actions.append(f"checked that 0x{handle:x} is a snapshot there (duplicated it here and freed the copy)")
            if dry_run:
                actions.append(f"would call PssFreeSnapshot(0x{handle:x}) in process {pid}")
                return FreeResult(pid, handle, access, True, None, tuple(actions))
            rc = self.k.PssFreeSnapshot(process, handle)
        if rc != abi.ERROR_SUCCESS:
            raise self._remote_free_error(pid, rc, request)
        actions.append(f"PssFreeSnapshot freed 0x{handle:x} in process {pid}")
        return FreeResult(pid, handle, access, False, None, tuple(actions))

    def inspect(self, pid: int, handle: int, *, timeout: float) -> Snapshot:
        """Read a snapshot that `pid` holds: duplicate it here (PROCESS_VM_READ|PROCESS_DUP_HANDLE only), read the
        copy, free the copy."""
        if pid == self._pid:
            return self.open_snapshot(handle)
        with self._process(pid, duplicate_source_access(), "PssDuplicateSnapshot") as process:
            copy = self._copy_here(process, pid, handle)
        try:
            return self._read(copy, ReadOptions(CaptureFlags.NONE, probe=True), time.time(), 0.0)
        finally:
            free_local(self.k, copy)

    def open_snapshot(self, handle: int) -> Snapshot:
        """The receiver side: a process that was handed an HPSS (by PssDuplicateSnapshot into it) reads it. It stays
        held; free it with `free(os.getpid(), handle)`."""
        hpss = self._validated_local(handle)
        return self._read(hpss, ReadOptions(CaptureFlags.NONE, probe=True), time.time(), 0.0)

    def process_exists(self, pid: int) -> bool:
        import psutil

        return psutil.pid_exists(pid)

    def live_processes(self) -> Iterator[LiveProcess]:
        import psutil

        own = os.getpid()
        try:
            for proc in psutil.process_iter(["name"], ad_value=None):
                if proc.pid not in (own, 0):
                    yield LiveProcess(proc.pid, proc.info["name"] or "")
        except Exception:  # a listing for completion: a failure means fewer suggestions, never an error
            return

    def list_processes(self, *, kernel_threads: bool = False) -> Iterator[ListedProcess]:
        import psutil

        own = os.getpid()
        for pid in psutil.pids():
            if pid != own and (pid != 0 or kernel_threads) and (found := self.describe_process(pid)) is not None:
                yield found

    def describe_process(self, pid: int) -> ListedProcess | None:
        import psutil

        try:
            info = psutil.Process(pid).as_dict(LISTED_ATTRS, ad_value=None)
        except psutil.NoSuchProcess:
            return None
        memory, cmdline = info["memory_info"], info["cmdline"]
        return ListedProcess(
            pid=pid,
            ppid=info["ppid"],
            name=info["name"],
            exe=info["exe"],
            cmdline=tuple(cmdline) if cmdline is not None else None,
            user=info["username"],
            uid=None,
            threads=info["num_threads"],
            handles=info["num_handles"],
            rss=memory.rss if memory is not None else None,
            create_time=info["create_time"],
        )

    def locate(self, pid: int) -> ProcessLocation | None:
        return None  # Windows containers (silos) are not modelled

    def container_of(self, pid: int) -> Container | None:
        return None

    def path_in_root(self, pid: int, path: str) -> str:
        raise errors.NotSupported("a process's own root directory is a Linux notion", pid=pid)

    def held_snapshots(self, pid: int) -> tuple[int, ...] | None:
        """An HPSS is an address in its holder: nothing outside tells it from any other pointer."""
        return None

    def named_snapshots(self, pid: int) -> tuple[int, ...] | None:
        return None

    def handle_size(self, pid: int, handle: int) -> int | None:
        return None

    def enable_debug_privilege(self) -> bool:
        return enable_debug_privilege(self.k)

    def dump(
        self,
        pid: int,
        path: str | os.PathLike[str] | int,
        *,
        force: bool,
        timeout: float,
        clone_method: str | None = None,
        progress: Callable[[int, int], None] | None = None,
        compress: str | None = None,
        written: Callable[[DumpOutput], None] | None = None,
        selection: DumpSelection = KERNEL_DUMP,
        into_container: bool = False,
        dump_type: int = abi.MINIDUMP_FULL_TYPE,
    ) -> Snapshot:
        """A minidump of `pid` written from a VA-clone snapshot, as ProcDump -r does: the process is suspended only
        while the clone is made. An existing file is never replaced unless `force`; a failed dump leaves none
        (pss_cli.outfile). The model's memory is what the file holds (its memory lists, read back), and copy_ms how
        long MiniDumpWriteDump took; blocks the clone could not give are left out and named in a warning.
        `progress` is not called (MiniDumpWriteDump reports none)."""
        if clone_method not in (None, "clone"):
            raise errors.NotSupported(
                f"--clone-method {clone_method} is Linux-only; Windows dumps from a PSS VA clone", pid=pid
            )
        if compress is not None or isinstance(path, int):
            raise errors.NotSupported("compressed and streamed dumps are Linux-only for now", pid=pid)
        if selection != KERNEL_DUMP:
            raise errors.NotSupported(
                "--mini, --filter, --all-memory and --stack-limit are Linux-only; a Windows dump is a full minidump",
                pid=pid,
            )
        if into_container:
            raise errors.NotSupported("--into-container is Linux-only: Windows containers are not modelled", pid=pid)
        with OutputFile(path, force=force, pid=pid) as out:
            with self.capture(pid, abi.MINIDUMP_CAPTURE_FLAGS, timeout=timeout) as snap:
                started = time.perf_counter()
                unread = self._write_minidump(snap, pid, self.k.get_osfhandle(out.fd), dump_type)
                copy_ms = (time.perf_counter() - started) * 1000
                model = snap.model
            held = minidump.memory_in(out.fd, out.path, self.abi)
        memory = MemoryCapture(
            method="va-clone+minidump",
            bytes_captured=held.bytes,
            regions=held.ranges,
            clone_pid=model.memory.clone_pid if model.memory else None,
            copy_ms=copy_ms,
        )
        if written is not None:
            st = os.stat(path)
            blocks = getattr(st, "st_blocks", None)  # Windows' stat has none
            allocated = blocks * 512 if blocks is not None else None
            written(DumpOutput(st.st_size, st.st_size, allocated, None, False, copy_ms / 1000))
        return dataclasses.replace(model, memory=memory, warnings=model.warnings + _unread_warnings(unread))

    def dump_held(
        self, pid: int, handle: int, path: str | os.PathLike[str], *, force: bool, timeout: float
    ) -> Snapshot:
        """Not yet on Windows (see _dump_held_unsupported)."""
        raise _dump_held_unsupported(pid)

    def _write_minidump(
        self, snap: WindowsSnapshot, pid: int, file_handle: int, dump_type: int
    ) -> list[tuple[int, int]]:
        """MiniDumpWriteDump from the snapshot; the (address, size) of each block the clone could not give.

        The callback answers as Microsoft's own PSS dump sample does: IsProcessSnapshotCallback with S_FALSE (the
        handle is a snapshot), CancelCallback with Cancel and CheckCancel FALSE (no cancelling, no more asking), and
        ReadMemoryFailureCallback with TRUE and S_OK, the only answer that makes dbghelp leave the block out instead
        of abandoning the dump (MINIDUMP_CALLBACK_TYPE)."""
        layout = self.abi
        unread: list[tuple[int, int]] = []

        def routine(_param: int | None, input_address: int | None, output_address: int | None) -> int:
            if input_address and output_address:
                callback = layout.MINIDUMP_CALLBACK_INPUT.from_address(input_address)
                output = layout.MINIDUMP_CALLBACK_OUTPUT.from_address(output_address)
                kind = int(callback.CallbackType)
                if kind == abi.IsProcessSnapshotCallback:
                    output.Status = abi.S_FALSE
                elif kind == abi.CancelCallback:
                    output.Cancel = 0
                    output.CheckCancel = 0
                elif kind == abi.ReadMemoryFailureCallback:
                    failure = callback.ReadMemoryFailure
                    unread.append((int(failure.Offset), int(failure.Bytes)))
                    output.Status = abi.S_OK
            return 1

        function = MINIDUMP_CALLBACK_ROUTINE(routine)
        info = layout.MINIDUMP_CALLBACK_INFORMATION()
        info.CallbackRoutine = ctypes.cast(function, ctypes.c_void_p).value
        info.CallbackParam = None
        ok = self.k.MiniDumpWriteDump(snap.handle(), pid, file_handle, dump_type, info)
        if not ok:
            code = self.k.GetLastError() & 0xFFFFFFFF  # an HRESULT, which ctypes hands back as a signed C int
            if code & _FACILITY_WIN32_MASK == _FACILITY_WIN32_PREFIX:
                code &= 0xFFFF
            raise error_for(self.k, code, "MiniDumpWriteDump", pid=pid)
        return unread


def _unread_warnings(unread: list[tuple[int, int]]) -> tuple[str, ...]:
    """One warning for the memory a minidump left out because the VA clone could not give it."""
    if not unread:
        return ()
    total = sum(size for _, size in unread)
    first = ", ".join(f"0x{address:x} ({size} bytes)" for address, size in unread[:3])
    more = f" and {len(unread) - 3} more" if len(unread) > 3 else ""
    return (
        f"{total} bytes in {len(unread)} block(s) could not be read from the VA clone and are not in the dump: "
        f"{first}{more}",
    )


def _dump_held_unsupported(pid: int) -> errors.NotSupported:
    return errors.NotSupported(
        "dump --from is not supported on Windows yet: a minidump needs the process handle, not only the snapshot",
        pid=pid,
    )


def _conforms(backend: WindowsBackend) -> Backend:
    """Static proof (mypy) that WindowsBackend implements the Backend Protocol."""
    return backend

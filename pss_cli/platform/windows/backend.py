"""The Windows backend: PssCaptureSnapshot, PssDuplicateSnapshot, PssFreeSnapshot and a minidump from a VA clone.

Rules kept on every path:
- each process is opened with the least mask the operation needs (access.py) and closed again, success or not;
- a snapshot this process holds is freed exactly once (PSS_DUPLICATE_CLOSE_SOURCE counts as the free);
- an HPSS value that did not come from this process's own PSS calls is never handed to a local PSS call before
  VirtualQuery shows it is committed, private, read-write memory here: a foreign or stale HPSS makes ntdll fault
  (ctypes turns that fault into OSError, which becomes BadSnapshot, but the fault may leave ntdll state behind);
- a snapshot held by another process is read by duplicating it into this process (which validates it: the call
  answers ERROR_INVALID_HANDLE for anything that is not a snapshot there), then freeing the copy.
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
from pathlib import Path
from types import TracebackType

from pss_cli import errors
from pss_cli.model import (
    AccessUse,
    CaptureFlags,
    CapturePlan,
    DuplicateResult,
    FreeResult,
    MemoryCapture,
    MemoryProtection,
    MemoryState,
    MemoryType,
    Snapshot,
)
from pss_cli.platform import Backend, LocalSnapshot
from pss_cli.platform.windows import abi
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
        rc = self._k.PssFreeSnapshot(self._k.GetCurrentProcess(), self._hpss)
        if rc != abi.ERROR_SUCCESS:
            raise error_for(self._k, rc, "PssFreeSnapshot")

    def __enter__(self) -> WindowsSnapshot:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


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
        """`handle` as an HPSS of this process, after checking that reading it cannot fault: committed, private,
        read-write memory, pointer-aligned. BadSnapshot otherwise."""
        info = self.abi.MEMORY_BASIC_INFORMATION()
        reason = None
        if handle <= 0 or handle % self.abi.pointer_size:
            reason = "not a pointer-aligned address"
        elif not self.k.VirtualQuery(handle, info):
            reason = "not an address in this process"
        elif int(info.State) != MemoryState.COMMIT or int(info.Type) != MemoryType.PRIVATE:
            reason = "not committed private memory"
        elif int(info.Protect) & 0xFF != MemoryProtection.READWRITE:
            reason = "not read-write memory"
        if reason:
            raise errors.BadSnapshot(
                f"0x{handle:x} is not a snapshot (HPSS) of this process: {reason}. An HPSS is an address in the "
                "process that holds it; one returned by a duplication into another process is only valid there",
                pid=self._pid,
            )
        return handle

    def _read(self, hpss: int, options: ReadOptions, captured_at: float, capture_ms: float) -> Snapshot:
        try:
            return SnapshotReader(self.k, hpss, self.abi).read(
                options, captured_at=captured_at, capture_ms=capture_ms, thread_count=self._thread_count
            )
        except OSError as exc:  # ctypes' report of an access violation inside ntdll
            raise errors.BadSnapshot(f"reading snapshot 0x{hpss:x} faulted: {exc}", pid=self._pid) from exc

    def _free_local(self, hpss: int) -> None:
        rc = self.k.PssFreeSnapshot(self.k.GetCurrentProcess(), hpss)
        if rc != abi.ERROR_SUCCESS:
            raise error_for(self.k, rc, "PssFreeSnapshot", pid=self._pid)

    def _copy_here(self, holder: int, pid: int, handle: int) -> int:
        """Duplicate the snapshot that `pid` holds as `handle` into this process (validating it); the local HPSS."""
        rc, copy = self.k.PssDuplicateSnapshot(holder, handle, self.k.GetCurrentProcess(), abi.PSS_DUPLICATE_NONE)
        if rc == abi.ERROR_INVALID_HANDLE:
            raise errors.BadSnapshot(
                f"0x{handle:x} is not a process snapshot (HPSS) held by process {pid} "
                f"(PssDuplicateSnapshot: {describe(self.k, rc)})",
                pid=pid,
            )
        if rc == abi.ERROR_ACCESS_DENIED:
            raise access_denied(self.k, "PssDuplicateSnapshot", pid, duplicate_source_access())
        if rc != abi.ERROR_SUCCESS:
            raise error_for(self.k, rc, "PssDuplicateSnapshot", pid=pid)
        return copy

    # --- Backend -------------------------------------------------------------------------------------------------

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
        source_request = duplicate_source_access() if holder_pid != self._pid else None
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
        dup_flags = abi.PSS_DUPLICATE_CLOSE_SOURCE if close_source else abi.PSS_DUPLICATE_NONE
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
                    f"would call PssDuplicateSnapshot({what}, flags={'CLOSE_SOURCE' if close_source else 'NONE'})"
                )
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
            rc, copy = self.k.PssDuplicateSnapshot(source, hpss, target, dup_flags)
            if close_source and local is not None:
                local.forget()
        if rc == abi.ERROR_INVALID_HANDLE:
            raise errors.BadSnapshot(
                f"0x{hpss:x} is not a process snapshot (HPSS) held by process {holder_pid} "
                f"(PssDuplicateSnapshot: {describe(self.k, rc)})",
                pid=holder_pid,
            )
        if rc == abi.ERROR_ACCESS_DENIED:
            both = AccessRequest(
                target_request.mask | (source_request.mask if source_request else 0),
                target_request.needed_by + (source_request.needed_by if source_request else ()),
            )
            raise access_denied(self.k, "PssDuplicateSnapshot", target_pid, both)
        if rc != abi.ERROR_SUCCESS:
            raise error_for(self.k, rc, "PssDuplicateSnapshot", pid=target_pid)
        actions.append(f"PssDuplicateSnapshot: process {target_pid} now holds 0x{copy:x}")
        if close_source:
            actions.append(f"freed the source snapshot in process {holder_pid} (PSS_DUPLICATE_CLOSE_SOURCE)")
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

    def free(self, pid: int, handle: int, *, dry_run: bool, force: bool, timeout: float) -> FreeResult:
        """PssFreeSnapshot in `pid`, after proving `handle` is a snapshot there (a duplicate of it into this process
        succeeds, and is freed at once)."""
        if pid == self._pid:
            hpss = self._validated_local(handle)
            access = (self._use(pid, "holder", None),)
            if dry_run:
                return FreeResult(pid, handle, access, True, None, (f"would free local snapshot 0x{hpss:x}",))
            self._free_local(hpss)
            return FreeResult(pid, handle, access, False, None, (f"freed local snapshot 0x{hpss:x}",))
        request = remote_free_access()
        access = (self._use(pid, "holder", request),)
        actions = [f"open process {pid} with {format_access(request.mask)}"]
        with self._process(pid, request, "PssFreeSnapshot") as process:
            self._free_local(self._copy_here(process, pid, handle))
            actions.append(f"checked that 0x{handle:x} is a snapshot there (duplicated it here and freed the copy)")
            if dry_run:
                actions.append(f"would call PssFreeSnapshot(0x{handle:x}) in process {pid}")
                return FreeResult(pid, handle, access, True, None, tuple(actions))
            rc = self.k.PssFreeSnapshot(process, handle)
        if rc == abi.ERROR_NOT_SUPPORTED:
            raise errors.NotSupported(
                f"PssFreeSnapshot in process {pid}: {describe(self.k, rc)}. A snapshot can be freed from another "
                "process only when its bookkeeping is in VirtualAlloc'ed memory: captured with "
                "PSS_CREATE_USE_VM_ALLOCATIONS (pss-dup always does) or duplicated there",
                pid=pid,
            )
        if rc == abi.ERROR_ACCESS_DENIED:
            raise access_denied(self.k, "PssFreeSnapshot", pid, request)
        if rc != abi.ERROR_SUCCESS:
            raise error_for(self.k, rc, "PssFreeSnapshot", pid=pid)
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
            self._free_local(copy)

    def open_snapshot(self, handle: int) -> Snapshot:
        """The receiver side: a process that was handed an HPSS (by PssDuplicateSnapshot into it) reads it. It stays
        held; free it with `free(os.getpid(), handle)`."""
        hpss = self._validated_local(handle)
        return self._read(hpss, ReadOptions(CaptureFlags.NONE, probe=True), time.time(), 0.0)

    def held_snapshots(self, pid: int) -> tuple[int, ...] | None:
        """An HPSS is an address in its holder: nothing outside tells it from any other pointer."""
        return None

    def enable_debug_privilege(self) -> bool:
        return enable_debug_privilege(self.k)

    def dump(
        self,
        pid: int,
        path: str | os.PathLike[str],
        *,
        force: bool,
        timeout: float,
        clone_method: str = "clone",
        progress: Callable[[int, int], None] | None = None,
        dump_type: int = abi.MINIDUMP_FULL_TYPE,
    ) -> Snapshot:
        """A minidump of `pid` written from a VA-clone snapshot, as ProcDump -r does: the process is suspended only
        while the clone is made. An existing file is never replaced unless `force`; a failed dump leaves none.
        `progress` is not called (MiniDumpWriteDump reports none)."""
        if clone_method != "clone":
            raise errors.NotSupported(
                f"--clone-method {clone_method} is Linux-only; Windows dumps from a PSS VA clone", pid=pid
            )
        target = Path(path)
        if force:
            fd, partial = _create_beside(target)
        else:
            try:
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
            except FileExistsError as exc:
                raise errors.OutputExists(f"{target} exists; pass --force to replace it", pid=pid) from exc
            except OSError as exc:
                raise errors.OutputExists(f"cannot create {target}: {exc.strerror}", pid=pid) from exc
            partial = target
        done = False
        try:
            with os.fdopen(fd, "wb") as stream, self.capture(pid, abi.MINIDUMP_CAPTURE_FLAGS, timeout=timeout) as snap:
                self._write_minidump(snap, pid, self.k.get_osfhandle(stream.fileno()), dump_type)
                model = snap.model
            if partial != target:
                os.replace(partial, target)
            done = True
        finally:
            if not done:
                with contextlib.suppress(OSError):
                    os.unlink(partial)
        size = target.stat().st_size
        clone_pid = model.memory.clone_pid if model.memory else None
        regions = model.memory.regions if model.memory else 0
        memory = MemoryCapture(method="va-clone+minidump", bytes_captured=size, regions=regions, clone_pid=clone_pid)
        return _replace_memory(model, memory)

    def dump_held(
        self, pid: int, handle: int, path: str | os.PathLike[str], *, force: bool, timeout: float
    ) -> Snapshot:
        """Not yet on Windows (see _dump_held_unsupported)."""
        raise _dump_held_unsupported(pid)

    def _write_minidump(self, snap: WindowsSnapshot, pid: int, file_handle: int, dump_type: int) -> None:
        layout = self.abi

        def routine(_param: int | None, input_address: int | None, output_address: int | None) -> int:
            if input_address and output_address:
                callback = layout.MINIDUMP_CALLBACK_INPUT.from_address(input_address)
                if int(callback.CallbackType) == abi.IsProcessSnapshotCallback:
                    layout.MINIDUMP_CALLBACK_OUTPUT.from_address(output_address).Status = abi.S_FALSE
            return 1

        function = MINIDUMP_CALLBACK_ROUTINE(routine)
        info = layout.MINIDUMP_CALLBACK_INFORMATION()
        info.CallbackRoutine = ctypes.cast(function, ctypes.c_void_p).value
        info.CallbackParam = None
        ok = self.k.MiniDumpWriteDump(snap.handle(), pid, file_handle, dump_type, info)
        if not ok:
            code = self.k.GetLastError()
            if code & _FACILITY_WIN32_MASK == _FACILITY_WIN32_PREFIX:
                code &= 0xFFFF
            raise error_for(self.k, code, "MiniDumpWriteDump", pid=pid)


def _dump_held_unsupported(pid: int) -> errors.NotSupported:
    return errors.NotSupported(
        "dump --from is not supported on Windows yet: a minidump needs the process handle, not only the snapshot",
        pid=pid,
    )


def _create_beside(target: Path) -> tuple[int, Path]:
    """A new file next to `target`, to be renamed over it once complete (so --force never leaves half a dump)."""
    for attempt in range(100):
        partial = target.with_name(f".{target.name}.{os.getpid()}.{attempt}.partial")
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
        except FileExistsError:
            continue
        except OSError as exc:
            raise errors.OutputExists(f"cannot create a file in {target.parent}: {exc.strerror}") from exc
        return fd, partial
    raise errors.OutputExists(f"cannot create a temporary file beside {target}")


def _replace_memory(model: Snapshot, memory: MemoryCapture) -> Snapshot:
    return dataclasses.replace(model, memory=memory)


def _conforms(backend: WindowsBackend) -> Backend:
    """Static proof (mypy) that WindowsBackend implements the Backend Protocol."""
    return backend

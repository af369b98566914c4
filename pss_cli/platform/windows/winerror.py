"""Win32 error codes turned into pss_cli's typed errors, with the system's own text (FormatMessageW).

This is the one place on Windows where an error number becomes an exception; nothing above the backend sees a code.
"""

from __future__ import annotations

from pss_cli import errors
from pss_cli.platform.windows.abi import (
    ERROR_ACCESS_DENIED,
    ERROR_BAD_LENGTH,
    ERROR_CALL_NOT_IMPLEMENTED,
    ERROR_INVALID_HANDLE,
    ERROR_INVALID_PARAMETER,
    ERROR_NOT_FOUND,
    ERROR_NOT_SUPPORTED,
)
from pss_cli.platform.windows.access import AccessRequest, format_access
from pss_cli.platform.windows.kernel32 import Kernel32Like

ACCESS_DENIED_ADVICE = (
    "run pss-dup from an elevated prompt (Run as administrator), add --debug-privilege to enable SeDebugPrivilege, "
    "or, if the process is protected (PPL: antimalware, system services), it cannot be opened with these rights"
)


def describe(k: Kernel32Like, code: int) -> str:
    """`Access is denied (Win32 error 5)`, or an HRESULT in hex (`HRESULT 0x80004005`): GetLastError comes back
    from ctypes as a C int, so a code with the top bit set would otherwise print as a negative number."""
    code &= 0xFFFFFFFF
    label = f"Win32 error {code}" if code <= 0xFFFF else f"HRESULT 0x{code:08X}"
    text = k.FormatMessageW(code).strip().rstrip(".")
    return f"{text} ({label})" if text else label


def access_denied(
    k: Kernel32Like,
    what: str,
    pid: int,
    request: AccessRequest | None,
    missing: int | None = None,
    *,
    code: int = ERROR_ACCESS_DENIED,
) -> errors.AccessDenied:
    """AccessDenied naming the rights that were refused (or asked for), why each was needed, and what to do."""
    parts = [f"{what} on process {pid}: {describe(k, code)}"]
    if request is not None:
        refused = request.mask if missing is None else missing
        label = "refused" if missing is not None else "asked for"
        parts.append(f"{label} {format_access(refused)}")
        if reasons := request.reasons(refused):
            parts.append("needed by " + "; ".join(reasons))
    parts.append(ACCESS_DENIED_ADVICE)
    return errors.AccessDenied(". ".join(parts), pid=pid)


def error_for(k: Kernel32Like, code: int, what: str, *, pid: int | None = None) -> errors.PssError:
    """The typed error for a Win32 code returned by `what` (ERROR_ACCESS_DENIED has its own `access_denied`)."""
    where = f"{what} on process {pid}" if pid is not None else what
    message = f"{where}: {describe(k, code)}"
    if code == ERROR_ACCESS_DENIED:
        return errors.AccessDenied(f"{message}. {ACCESS_DENIED_ADVICE}", pid=pid)
    if code == ERROR_INVALID_HANDLE:
        return errors.BadSnapshot(f"{message}: that handle is not a process snapshot (HPSS) there", pid=pid)
    if code == ERROR_NOT_FOUND:  # from PSS: the snapshot was not captured with that information
        return errors.OperationFailed(f"{message}: that information is not in the snapshot", pid=pid)
    if code in (ERROR_NOT_SUPPORTED, ERROR_CALL_NOT_IMPLEMENTED):
        return errors.NotSupported(message, pid=pid)
    if code == ERROR_BAD_LENGTH:
        return errors.OperationFailed(
            f"{message}: pss-dup's structure size disagrees with this Windows version (please report it)", pid=pid
        )
    return errors.OperationFailed(message, pid=pid)


def open_process_error(k: Kernel32Like, code: int, pid: int) -> errors.PssError:
    """OpenProcess's ERROR_INVALID_PARAMETER means that no process has this PID."""
    if code == ERROR_INVALID_PARAMETER:
        return errors.NoSuchProcess(f"no process with PID {pid} ({describe(k, code)})", pid=pid)
    return error_for(k, code, "OpenProcess", pid=pid)

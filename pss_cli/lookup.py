"""Finding processes by PID or by name, with psutil."""

from __future__ import annotations

import os
import sys

import psutil

from pss_cli.errors import AmbiguousTarget, NoSuchProcess
from pss_cli.model import MAX_PID


def name_matches(wanted: str, name: str | None, exe: str | None, cmdline: list[str] | None) -> bool:
    """psutil's recipe: the name, the executable's basename, or argv[0]'s basename (Windows: `.exe` optional).

    Linux truncates `comm` to 15 characters, so a longer wanted name also matches its truncation.
    """
    candidates = {name or "", os.path.basename(exe or ""), os.path.basename(cmdline[0]) if cmdline else ""}
    candidates.discard("")
    if sys.platform == "win32":
        folded = {c.casefold().removesuffix(".exe") for c in candidates}
        return wanted.casefold().removesuffix(".exe") in folded
    return wanted in candidates or (len(wanted) > 15 and wanted[:15] == (name or ""))


def find_by_name(wanted: str) -> list[tuple[int, str]]:
    """(pid, command line) of every process that matches, this process excluded."""
    own = os.getpid()
    found = []
    for proc in psutil.process_iter(["name", "exe", "cmdline"], ad_value=None):
        info = proc.info
        if proc.pid != own and name_matches(wanted, info["name"], info["exe"], info["cmdline"]):
            found.append((proc.pid, " ".join(info["cmdline"] or []) or info["name"] or "?"))
    return sorted(found)


def resolve(target: str, *, all_matches: bool = False) -> list[int]:
    """The PIDs that TARGET names: a PID, or a process name that must match exactly one process unless all_matches."""
    if target.isascii() and target.isdigit():  # not str.isdigit alone: '²' is a digit that int() refuses
        pid = int(target) if len(target) <= len(str(MAX_PID)) else MAX_PID + 1
        if not 0 < pid <= MAX_PID or not psutil.pid_exists(pid):
            if pid > MAX_PID:
                raise NoSuchProcess(f"no process with PID {target}; list processes with `pss-dup ps`")
            raise NoSuchProcess(f"no process with PID {pid}; list processes with `pss-dup ps`", pid=pid)
        return [pid]
    matches = find_by_name(target)
    if not matches:
        raise NoSuchProcess(f"no process named {target!r}; list processes with `pss-dup ps`")
    if len(matches) > 1 and not all_matches:
        raise AmbiguousTarget(target, matches)
    return [pid for pid, _ in matches]

"""Containers built from what the machine has: a cgroup named like a runtime's (made under the cgroup v2 mount, or
the v1 name=systemd one) holding `unshare --pid --fork --mount-proc --net --mount`, whose PID 1 is a small init
that starts a sibling. No container runtime is needed; the cgroup path and the namespaces are real.

Everything is undone on exit: the namespace's PID 1 is killed (the kernel then kills the rest of its PID
namespace), `unshare` is reaped, the cgroups are removed once empty, and no process is left in the namespaces.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import need_tools
from tests.linux.conftest import REPO, Target

#: PID 1 of the namespace: it starts a sibling (a sleeper), says both PIDs (as it sees them), and waits on stdin.
INIT = """
import os, subprocess, sys
sibling = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
print(os.getpid(), sibling.pid, flush=True)
sys.stdin.read()
"""


def cgroup_root() -> tuple[Path, str]:
    """The mount point of a cgroup hierarchy a test may make a cgroup in: (v2 mount, "0::"), else the v1 systemd
    one; skipped where neither is writable."""
    v1 = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            tail = fields[fields.index("-") + 1 :]
            if tail[0] == "cgroup2":
                return Path(fields[4]), ""
            if tail[0] == "cgroup" and "name=systemd" in tail[2]:
                v1 = Path(fields[4])
    if v1 is None:
        pytest.skip("no cgroup v2 or name=systemd hierarchy is mounted")
    return v1, "name=systemd"


def own_cgroup(hierarchy: str) -> str:
    """This process's path in that hierarchy: a cgroup made below it shows up below it in /proc/PID/cgroup."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == hierarchy:
            return path
    return "/"


@dataclass
class FakeContainer:
    """A container of the test's own making: its runtime-shaped cgroup path and ID, `unshare`, its PID 1 and the
    sibling (host PIDs, and as the namespace sees them)."""

    id: str
    cgroup_path: str
    unshare: Target
    init_pid: int
    sibling_pid: int
    init_ns_pid: int
    sibling_ns_pid: int

    def inside(self, *command: str, drop_ptrace: bool = False, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run `command` in the container's PID and mount namespaces (nsenter, as `docker exec` does), optionally
        without CAP_SYS_PTRACE (setpriv, as a container without --cap-add SYS_PTRACE has)."""
        argv = ["nsenter", f"--target={self.init_pid}", "--pid", "--mount", "--"]
        if drop_ptrace:
            argv += ["setpriv", "--inh-caps=-sys_ptrace", "--bounding-set=-sys_ptrace", "--"]
        env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
        return subprocess.run([*argv, *command], capture_output=True, text=True, timeout=timeout, env=env)

    def pss_dup(self, *args: str, drop_ptrace: bool = False) -> subprocess.CompletedProcess[str]:
        """pss-dup run inside the container (the venv's interpreter: the mount namespace still sees it)."""
        return self.inside(sys.executable, "-m", "pss_cli", *args, drop_ptrace=drop_ptrace)


def ns_inode(pid: int, name: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{name}").st_ino


def holders_of(namespace: int) -> list[int]:
    """Every process in the PID namespace with this inode."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if ns_inode(int(entry), "pid") == namespace:
                    found.append(int(entry))
    return found


@contextlib.contextmanager
def fake_container(leaf: str, *, top: str | None = None, prefix: str = "") -> Iterator[FakeContainer]:
    """A container whose cgroup is TOP/LEAF below this process's own cgroup (TOP defaults to a unique
    pss-dup-test-*.slice, so runs never meet); `leaf` may hold {id}, replaced with a fresh 64-hex-digit ID that
    starts with `prefix`."""
    need_tools("unshare", "nsenter", "setpriv")
    root, hierarchy = cgroup_root()
    ident = (prefix + secrets.token_hex(32))[:64]
    top = top or f"pss-dup-test-{secrets.token_hex(4)}.slice"
    relative = Path(top) / leaf.format(id=ident)
    base = root / own_cgroup(hierarchy).lstrip("/")
    made: list[Path] = []
    unshare: Target | None = None
    init_pid = 0
    namespace = 0
    try:
        where = base
        for part in relative.parts:
            where = where / part
            try:
                where.mkdir()
            except PermissionError:
                pytest.skip(f"cannot make a cgroup under {base}")
            made.append(where)
        script = f'echo $$ > "{where}/cgroup.procs" && exec "$@"'
        argv = ["sh", "-c", script, "sh", "unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--net",
                "--mount", "--", sys.executable, "-c", INIT]  # fmt: skip
        unshare = Target(argv)
        init_ns, sibling_ns = (int(n) for n in unshare.line().split())
        init_pid = only(p for p in children(unshare.pid))
        sibling_pid = only(children(init_pid))
        namespace = ns_inode(init_pid, "pid")
        yield FakeContainer(
            id=ident,
            cgroup_path="/" + str(Path(own_cgroup(hierarchy).lstrip("/")) / relative),
            unshare=unshare,
            init_pid=init_pid,
            sibling_pid=sibling_pid,
            init_ns_pid=init_ns,
            sibling_ns_pid=sibling_ns,
        )
    finally:
        if init_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(init_pid, signal.SIGKILL)  # PID 1 of a namespace: the kernel kills every other process in it
        if unshare is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                unshare.proc.wait(timeout=10)  # it reaps its child (PID 1) and exits: nothing goes to init
            unshare.reap()
        for cgroup in reversed(made):
            deadline = time.monotonic() + 10
            while True:
                try:
                    cgroup.rmdir()
                    break
                except OSError:  # EBUSY while the killed processes are still on their way out
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)
        if namespace:
            assert holders_of(namespace) == [], "a process was left in the test's PID namespace"


def children(pid: int) -> list[int]:
    deadline = time.monotonic() + 10
    while True:
        found = []
        for task in os.listdir(f"/proc/{pid}/task"):
            found += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.01)


def only(items: Any) -> int:
    (item,) = list(items)
    return int(item)


#: Runs argv[1:] under a seccomp filter that denies ptrace, process_vm_readv and pidfd_getfd with EPERM, as a
#: container runtime's default profile does for a container without CAP_SYS_PTRACE.
SECCOMP_DENY = r"""
import ctypes, os, struct, sys
DENIED = (101, 310, 438)  # x86_64 ptrace, process_vm_readv, pidfd_getfd
ERRNO_EPERM, ALLOW, AUDIT_ARCH_X86_64 = 0x00050000 | 1, 0x7FFF0000, 0xC000003E
LD, JEQ, RET = 0x20, 0x15, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K
prog = [(LD, 0, 0, 4), (JEQ, 1, 0, AUDIT_ARCH_X86_64), (RET, 0, 0, ALLOW), (LD, 0, 0, 0)]
for i, nr in enumerate(DENIED):
    prog.append((JEQ, len(DENIED) - i, 0, nr))
prog += [(RET, 0, 0, ALLOW), (RET, 0, 0, ERRNO_EPERM)]
code = b"".join(struct.pack("HBBI", *insn) for insn in prog)
buf = ctypes.create_string_buffer(code)
fprog = struct.pack("HxxxxxxQ", len(prog), ctypes.addressof(buf))
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_ulong]
assert libc.prctl(38, 1, None, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, fprog, 0, 0) == 0, ctypes.get_errno()  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
os.execv(sys.argv[1], sys.argv[1:])
"""

"""procfs, the one /proc parser: stat, maps and syscall of real processes, whatever names they give themselves."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pss_cli.platform.linux import access, inject, procfs
from tests.linux.conftest import SYSTEM_PYTHON, Target, wait_blocked

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux only")

SYS_read = 0
#: A comm that fools a parser splitting at the first ')': it would read state Z and parent 1. Not UTF-8 either.
TRICKY_COMM = b"x) Z 1 (\xff)"

#: Renames itself, maps a file whose name holds spaces and parentheses, then blocks in read(2) on stdin.
NAMED = r"""
import mmap, sys
with open("/proc/self/comm", "wb") as f:
    f.write(bytes.fromhex(sys.argv[1]))
with open(sys.argv[2], "rb") as f:
    mapping = mmap.mmap(f.fileno(), 4096, prot=mmap.PROT_READ)
print("ready", flush=True)
sys.stdin.buffer.raw.read(1)
"""


@pytest.fixture
def named(spawn: Callable[..., Target], tmp_path: Path) -> Target:
    mapped = tmp_path / "a file (with) spaces.bin"
    mapped.write_bytes(b"\0" * 4096)
    target = spawn([SYSTEM_PYTHON, "-c", NAMED, TRICKY_COMM.hex(), str(mapped)])
    target.expect("ready")
    target.mapped = str(mapped)  # type: ignore[attr-defined]
    wait_blocked(target.pid, {SYS_read})
    return target


def test_stat_takes_comm_up_to_the_last_parenthesis_and_keeps_its_bad_bytes(named: Target) -> None:
    comm = "x) Z 1 (\\xff)"
    for tid in (None, named.pid):
        st = procfs.read_stat(named.pid, tid)
        assert (st.comm, st.state, st.ppid, st.num_threads) == (comm, "S", os.getpid(), 1)
        assert not st.exited and st.flags & 0x00200000 == 0  # PF_KTHREAD
    with procfs.ProcDir(named.pid) as proc:
        assert procfs.read_thread(proc, named.pid).name == comm
        assert procfs.read_process_info(proc, with_environ=False).ppid == os.getpid()
    assert procfs.parent_of(named.pid) == os.getpid()


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86_64 only")
def test_a_comm_that_reads_like_a_zombie_is_not_refused_as_one(named: Target) -> None:
    access.check_traceable(named.pid)


def test_stat_that_is_not_a_stat_line_is_a_value_error() -> None:
    for raw in (b"", b"42 (name", b"42 (name) S 1"):
        with pytest.raises(ValueError):
            procfs.parse_stat(raw)


def test_parent_of_a_process_that_is_gone_is_zero(spawn: Callable[..., Target]) -> None:
    target = spawn([SYSTEM_PYTHON, "-c", "pass"])
    target.reap()
    assert procfs.parent_of(target.pid) == 0


def test_maps_keep_a_path_with_spaces_and_every_reader_sees_the_same_map(named: Target) -> None:
    maps = procfs.read_maps(named.pid)
    assert named.mapped in {path for *_, path in maps}  # type: ignore[attr-defined]
    keys = [(start, end, perms, path) for start, end, perms, _, _, _, path in maps]
    with procfs.ProcDir(named.pid) as proc:
        assert procfs.map_keys(proc) == keys
        assert procfs.region_keys(procfs.read_va_space(proc, section_info=False)) == keys
    through_thread = inject.read_maps(named.pid, named.pid)
    assert [(m.start, m.end, m.perms, m.path or None) for m in through_thread] == keys


def test_syscall_names_the_blocked_call_and_is_none_while_running(named: Target) -> None:
    blocked = procfs.read_syscall(named.pid, named.pid)
    assert blocked is not None and (blocked.number, blocked.name, blocked.args[0]) == (SYS_read, "read", 0)
    for running in (b"running\n", b"-1 0x7ffc0 0x7f000\n"):  # in user space; and in the kernel, not in a call
        assert procfs.parse_syscall(running) is None


def test_read_usage_matches_what_status_says_and_reads_fds_and_threads_only_when_asked() -> None:
    """`watch` samples through read_usage: RSS from stat agrees with VmRSS, and the costly reads are opt-in."""
    with procfs.ProcDir(os.getpid()) as proc:
        cheap = procfs.read_usage(proc, fds=False, thread_states=False)
        full = procfs.read_usage(proc, fds=True, thread_states=True)
        status = procfs.read_status(os.getpid())
        inside = len(os.listdir("/proc/self/fd"))
    assert cheap.fds is None and cheap.thread_states == ()
    vm_rss = procfs.status_kib(status, "VmRSS")
    assert vm_rss is not None and abs(cheap.rss - vm_rss) < 8 << 20
    assert full.threads == int(status["Threads"]) == len(full.thread_states)
    assert full.fds is not None and abs(full.fds - inside) <= 1  # each count sees its own open directory fd(s)
    assert full.cpu_seconds >= cheap.cpu_seconds > 0 and full.at >= cheap.at

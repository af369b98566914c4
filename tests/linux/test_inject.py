"""push_fd / close_remote_fd / get_remote_fd against real processes, each of which checks the result from inside.

Every target makes its blocking call through raw libc, so an EINTR that a ptrace stop leaks would reach it and be
reported; the tests assert that none does (except where a call's timeout cannot be kept: refused, or reported).
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pss_cli.errors import (
    AccessDenied,
    BadSnapshot,
    NoSuchHandle,
    NoSuchProcess,
    NotSupported,
    ProcessGone,
    Refused,
    Timeout,
    ZombieProcess,
)
from pss_cli.platform.linux import inject
from tests.conftest import missing_tool
from tests.linux.conftest import (
    PAYLOAD,
    Target,
    fd_count,
    own_fd_count,
    own_rss_kib,
    own_threads,
    run_tool,
    sealed_memfd,
    state,
    status_field,
    tracer_pids,
    wait_blocked,
    wait_until,
)

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or os.uname().machine != "x86_64" or os.geteuid() != 0,
    reason="needs Linux x86_64 and root (ptrace of processes run as other users)",
)

SYS_read, SYS_nanosleep, SYS_poll, SYS_accept, SYS_futex = 0, 35, 7, 43, 202
SYS_clock_nanosleep, SYS_epoll_wait, SYS_epoll_pwait, SYS_restart_syscall = 230, 232, 281, 219
ALL_SEALS = 0xF


@pytest.fixture
def memfd() -> Iterator[int]:
    fd = sealed_memfd()
    yield fd
    os.close(fd)


def push(pid: int, fd: int, **options: object) -> inject.PushResult:
    kwargs: dict[str, object] = {"cloexec": True, "force": False, "timeout": 5.0, **options}
    return inject.push_fd(pid, fd, **kwargs)  # type: ignore[arg-type]


def assert_holds_payload(target: Target, fd: int, *, cloexec: bool = True) -> None:
    """The target itself reads the pushed fd: our bytes, sealed, close-on-exec as asked, a memfd."""
    target.send(f"check {fd}")
    seen = target.event("check")
    assert seen.get("error") is None, seen
    assert seen["data"].encode("latin-1") == PAYLOAD
    assert seen["seals"] == ALL_SEALS
    assert seen["cloexec"] is cloexec
    assert seen["link"].startswith("/memfd:pss-test")


def assert_untraced(pid: int) -> None:
    assert set(tracer_pids(pid).values()) == {0}


def assert_no_read_errors(target: Target) -> None:
    target.send("fds")
    target.event("fds")
    assert not [e for e in target.seen if isinstance(e, dict) and e.get("event") == "read-error"], target.seen


# ---- blocked in various system calls ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["nanosleep", "nanosleep-abs"])
def test_sleeping_target_wakes_on_its_original_deadline(blocker: Callable[..., Target], memfd: int, mode: str) -> None:
    target = blocker(mode, "2.0")
    wait_blocked(target.pid, {SYS_nanosleep, SYS_clock_nanosleep})
    time.sleep(0.8)
    pushed = push(target.pid, memfd)
    woke = target.event("woke", timeout=10)
    assert woke["ret"] == 0 and woke["errno"] == 0
    # a restart with the full timeout would end at >= 2.8 s; the VM's own timer overshoot stays well below 0.5 s
    assert 2.0 <= woke["elapsed"] < 2.5, woke
    assert_holds_payload(target, pushed.fd)
    assert_untraced(target.pid)


def test_futex_wait_with_timeout_keeps_its_deadline(blocker: Callable[..., Target], memfd: int) -> None:
    target = blocker("futex", "2.0")
    wait_blocked(target.pid, {SYS_futex})
    time.sleep(0.8)
    pushed = push(target.pid, memfd)
    woke = target.event("woke", timeout=10)
    assert woke["ret"] == -1 and woke["errno"] == errno.ETIMEDOUT, woke
    assert 2.0 <= woke["elapsed"] < 2.5, woke
    assert_holds_payload(target, pushed.fd)


def test_threading_event_wait_is_undisturbed(blocker: Callable[..., Target], memfd: int) -> None:
    target = blocker("event", "1.5")
    wait_blocked(target.pid, {SYS_futex})
    time.sleep(0.5)
    pushed = push(target.pid, memfd)
    woke = target.event("woke", timeout=10)
    assert woke["ret"] == 0  # Event.wait timed out: nobody set it, nothing woke it early
    assert 1.5 <= woke["elapsed"] < 2.0, woke
    assert_holds_payload(target, pushed.fd)


def test_pipe_reader_gets_everything_written_afterwards_in_order(blocker: Callable[..., Target], memfd: int) -> None:
    target = blocker("read")
    wait_blocked(target.pid, {SYS_read})
    pushed = push(target.pid, memfd)
    for i in range(1, 4):
        target.send(f"data-{i}")
    got = [target.event("got")["line"] for _ in range(3)]
    assert got == ["data-1", "data-2", "data-3"]
    assert_holds_payload(target, pushed.fd)
    assert_no_read_errors(target)
    assert_untraced(target.pid)


def test_poll_waiter_wakes_only_for_its_data(blocker: Callable[..., Target], memfd: int) -> None:
    target = blocker("poll")
    wait_blocked(target.pid, {SYS_poll})
    pushed = push(target.pid, memfd)
    time.sleep(0.1)
    assert blocked_still(target, SYS_poll), "poll returned although no data came"
    target.send(f"check {pushed.fd}")
    woke = target.event("woke")
    assert woke["ret"] == 1 and woke["errno"] == 0
    check = target.event("check")
    assert check["data"].encode("latin-1") == PAYLOAD


def blocked_still(target: Target, nr: int) -> bool:
    """Still blocked in `nr`, or in restart_syscall: poll and the sleeps come back that way after any stop."""
    with open(f"/proc/{target.pid}/syscall") as f:
        return f.read().split()[0] in (str(nr), str(SYS_restart_syscall))


def test_accepting_server_accepts_the_next_client(blocker: Callable[..., Target], memfd: int, tmp_path: Path) -> None:
    path = str(tmp_path / "listen.sock")
    target = blocker("accept", path)
    target.event("listening")
    wait_blocked(target.pid, {SYS_accept})
    pushed = push(target.pid, memfd)
    time.sleep(0.1)
    assert blocked_still(target, SYS_accept)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(path)
        woke = target.event("woke")
    assert woke["ret"] >= 0 and woke["errno"] == 0
    assert_holds_payload(target, pushed.fd)


def test_multithreaded_target_with_a_cpu_spinner(blocker: Callable[..., Target], memfd: int) -> None:
    target = blocker("read", "--threads", "4", "--spin")
    wait_blocked(target.pid, {SYS_read})
    results = [push(target.pid, memfd) for _ in range(20)]
    assert all(r.warnings == () for r in results)
    for r in results:
        assert_holds_payload(target, r.fd)
    assert_no_read_errors(target)
    assert_untraced(target.pid)


def test_inheritable_push_leaves_close_on_exec_off(blocker: Callable[..., Target], memfd: int) -> None:
    target = blocker("read")
    pushed = push(target.pid, memfd, cloexec=False)
    assert_holds_payload(target, pushed.fd, cloexec=False)


def test_stopped_target_stays_stopped_and_still_gets_the_fd(blocker: Callable[..., Target], memfd: int) -> None:
    target = blocker("read")
    wait_blocked(target.pid, {SYS_read})
    os.kill(target.pid, signal.SIGSTOP)
    wait_until(lambda: state(target.pid) == "T", what="group-stop")
    pushed = push(target.pid, memfd)
    time.sleep(0.05)
    assert state(target.pid) == "T"
    assert_untraced(target.pid)
    os.kill(target.pid, signal.SIGCONT)
    assert_holds_payload(target, pushed.fd)
    assert_no_read_errors(target)


def test_target_running_as_nobody_receives_the_fd(blocker: Callable[..., Target], memfd: int) -> None:
    target = blocker("read", user=65534, group=65534, extra_groups=[])
    assert status_field(target.pid, "Uid").split()[0] == "65534"
    wait_blocked(target.pid, {SYS_read})
    pushed = push(target.pid, memfd)
    assert_holds_payload(target, pushed.fd)


def test_group_leader_that_exited_is_skipped(c_target: Callable[..., Target], memfd: int) -> None:
    target = c_target("leader-exit")
    wait_until(lambda: state(target.pid) == "Z", what="the leader to exit")
    pushed = push(target.pid, memfd)
    target.send(f"check {pushed.fd}")
    assert target.expect("check").split(maxsplit=3)[3] == PAYLOAD.decode()


def test_signals_arriving_during_injection_are_delivered_once_each(c_target: Callable[..., Target]) -> None:
    """A second thread keeps signalling the main thread (SA_RESTART handler) while we inject into it."""
    target = c_target("sigcatch")
    fd = sealed_memfd()
    try:
        for _ in range(100):
            pushed = push(target.pid, fd)
            inject.close_remote_fd(target.pid, pushed.fd, verify=lambda _fd: None, force=False, timeout=5)
    finally:
        os.close(fd)
    target.send("quiet")
    target.expect("quiet")
    time.sleep(0.1)
    target.send("count")
    _, sent, received = target.expect("count").split()
    assert int(sent) > 1000 and sent == received
    assert not [line for line in target.seen if "read-error" in str(line)]


def test_injector_runs_single_calls_from_the_callers_thread(c_target: Callable[..., Target]) -> None:
    target = c_target("threads", "1")
    with inject.Injector(target.pid, timeout=5) as inj:
        assert inj.tid == target.pid
        assert inj.syscall(39) == target.pid  # getpid, run by the target
        with pytest.raises(OSError) as caught:
            inject.check(inj.syscall(3, 12345), "close")  # close(12345): -EBADF
        assert caught.value.errno == errno.EBADF
        assert inj.read(inj.syscall_ip, 2) == b"\x0f\x05"
    assert inj.stopped_ms is not None
    assert_untraced(target.pid)
    target.send("ping")
    assert target.expect("pong")


def test_thread_on_a_heap_stack_gets_a_mapped_scratch_page(c_target: Callable[..., Target]) -> None:
    """No guard page below the stack: the memory under its rsp may be someone else's, so a page is mmapped."""
    target = c_target("ownstack")
    worker = max(int(t) for t in os.listdir(f"/proc/{target.pid}/task"))
    with open(f"/proc/{target.pid}/maps") as f:
        maps_before = f.read()
    with inject.Injector(target.pid, timeout=5, tid=worker) as inj:
        with open(f"/proc/{target.pid}/maps") as f:
            during = f.read()
        assert f"{inj.scratch:08x}-" in during and f"{inj.scratch:08x}-" not in maps_before
        assert inj.syscall(39) == target.pid
    with open(f"/proc/{target.pid}/maps") as f:
        assert f.read() == maps_before
    target.send("ping")
    assert target.expect("pong")


# ---- refusals and errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "nr"), [("semop", 65), ("sigtimedwait", 128), ("epoll", SYS_epoll_wait)])
def test_calls_that_a_stop_fails_with_eintr_are_issued_again_unseen(
    blocker: Callable[..., Target], memfd: int, mode: str, nr: int
) -> None:
    """These used to be refused (forced, the call came back with EINTR): now the stop is undone, no --force."""
    target = blocker(mode)
    wait_blocked(target.pid, {nr})
    pushed = push(target.pid, memfd)
    assert pushed.warnings == ()
    assert [(i.tid, i.restarted) for i in pushed.interruptions] == [(target.pid, True)]
    time.sleep(0.05)
    assert blocked_still(target, nr), "the call did not go on after the stop"
    assert os.stat(f"/proc/{target.pid}/fd/{pushed.fd}").st_ino == os.fstat(memfd).st_ino
    if mode == "epoll":  # a command on stdin is its event: the call answers it, as if never stopped
        assert_holds_payload(target, pushed.fd)


def test_a_call_whose_timeout_cannot_be_kept_is_refused_and_forced_shows_its_eintr(
    blocker: Callable[..., Target], memfd: int
) -> None:
    """A socket with SO_RCVTIMEO: issued again, recv would wait its whole timeout anew, so the EINTR stays."""
    target = blocker("recv-timeout")
    wait_blocked(target.pid, {45})
    with pytest.raises(Refused, match=r"recvfrom.*EINTR.*SO_RCVTIMEO|EINTR"):
        push(target.pid, memfd)
    assert blocked_still(target, 45)
    pushed = push(target.pid, memfd, force=True)
    assert len(pushed.warnings) == 1
    assert [(i.call, i.restarted) for i in pushed.interruptions] == [("recvfrom", False)]
    woke = target.event("woke")
    assert woke["ret"] == -1 and woke["errno"] == errno.EINTR


def test_inotify_read_restarts_and_is_not_refused(blocker: Callable[..., Target], memfd: int, tmp_path: Path) -> None:
    """signal(7) lists inotify reads as EINTR-prone only up to Linux 3.7; today they restart."""
    target = blocker("inotify", str(tmp_path))
    wait_blocked(target.pid, {SYS_read})
    pushed = push(target.pid, memfd)
    assert pushed.warnings == ()
    time.sleep(0.05)
    assert blocked_still(target, SYS_read)
    (tmp_path / "created").touch()
    woke = target.event("woke")
    assert woke["ret"] > 0 and woke["errno"] == 0
    assert_holds_payload(target, pushed.fd)


def test_epoll_main_thread_is_spared_when_another_thread_can_take_the_injection(
    blocker: Callable[..., Target], memfd: int
) -> None:
    target = blocker("epoll", "--threads", "1")
    wait_blocked(target.pid, {SYS_epoll_wait})
    pushed = push(target.pid, memfd)
    assert pushed.warnings == ()
    time.sleep(0.05)
    assert blocked_still(target, SYS_epoll_wait), "the main thread's epoll_wait was interrupted"
    target.send(f"check {pushed.fd}")
    woke = target.event("woke")
    assert woke["ret"] == 1 and woke["errno"] == 0
    assert target.event("check")["data"].encode("latin-1") == PAYLOAD


def test_seccomp_filter_is_suspended_for_the_injection(blocker: Callable[..., Target], memfd: int) -> None:
    """The target's filter kills it on socketpair(2); with the filter suspended it survives ours."""
    target = blocker("read", "--seccomp-kill-socketpair")
    assert status_field(target.pid, "Seccomp") == "2"
    wait_blocked(target.pid, {SYS_read})
    pushed = push(target.pid, memfd)
    assert_holds_payload(target, pushed.fd)
    assert target.proc.poll() is None


def test_seccomp_target_is_refused_when_the_filter_cannot_be_suspended(
    blocker: Callable[..., Target], memfd: int
) -> None:
    target = blocker("read", "--seccomp-kill-socketpair")
    wait_blocked(target.pid, {SYS_read})
    fds = fd_count(target.pid)
    code = (
        "import os\nfrom pss_cli.platform.linux.inject import push_fd\nfrom pss_cli.errors import PssError\n"
        f"fd = os.memfd_create('x')\ntry:\n    push_fd({target.pid}, fd, cloexec=True, force=True, timeout=5)\n"
        "except PssError as e:\n    print(type(e).__name__, e)\nelse:\n    print('pushed')\n"
    )
    result = run_tool(code, drop_caps="sys_admin")
    assert result.stdout.startswith("Refused"), result.stdout + result.stderr
    assert "seccomp" in result.stdout and "CAP_SYS_ADMIN" in result.stdout
    assert target.proc.poll() is None and fd_count(target.pid) == fds


def test_thread_that_will_not_stop_times_out_and_is_let_go(c_target: Callable[..., Target], memfd: int) -> None:
    target = c_target("vfork", "1.5")
    wait_until(lambda: state(target.pid) == "D", what="the vfork parent to wait in D")
    with pytest.raises(Timeout, match=f"thread {target.pid}"):
        push(target.pid, memfd, timeout=0.3)
    assert_untraced(target.pid)
    assert target.expect("vfork-done", timeout=10)  # it went on by itself, with its own registers
    target.send("ping")
    assert target.expect("pong")
    assert_untraced(target.pid)


def test_push_into_zombie_or_missing_process_is_a_typed_error(memfd: int) -> None:
    child = subprocess.Popen(["true"])
    wait_until(lambda: state(child.pid) == "Z", what="zombie")
    try:
        with pytest.raises(ZombieProcess):
            push(child.pid, memfd)
    finally:
        child.wait()
    with pytest.raises(NoSuchProcess):
        push(child.pid, memfd)


def test_thirty_two_bit_process_is_not_supported(spawn: Callable[..., Target], memfd: int, tmp_path: Path) -> None:
    exe = build_32bit_target(tmp_path)
    if exe is None:
        missing_tool("gcc -m32 cannot build a static 32-bit program here")
    target = spawn([str(exe)])
    assert target.line() == "ready"
    with pytest.raises(NotSupported, match="32-bit"):
        push(target.pid, memfd)
    assert_untraced(target.pid)


def build_32bit_target(tmp_path: Path) -> Path | None:
    """A libc-free i386 program (int $0x80 only): says ready, then blocks in read(0)."""
    source = tmp_path / "t32.c"
    source.write_text(
        "void _start(void) {\n"
        '    static const char msg[] = "ready\\n"; char buf[64]; int r;\n'
        '    __asm__ volatile("int $0x80" : "=a"(r) : "a"(4), "b"(1), "c"(msg), "d"(6) : "memory");\n'
        "    for (;;) {\n"
        '        __asm__ volatile("int $0x80" : "=a"(r) : "a"(3), "b"(0), "c"(buf), "d"(64) : "memory");\n'
        "        if (r == 0) break;\n"
        "    }\n"
        '    __asm__ volatile("int $0x80" : : "a"(1), "b"(0));\n'
        "}\n"
    )
    exe = tmp_path / "t32"
    built = subprocess.run(
        ["gcc", "-m32", "-static", "-nostdlib", "-O1", "-o", str(exe), str(source)], capture_output=True
    )
    return exe if built.returncode == 0 else None


def test_target_killed_while_held_is_a_typed_error_and_leaks_nothing(blocker: Callable[..., Target]) -> None:
    target = blocker("read")
    fd = sealed_memfd()
    pushed = push(target.pid, fd)
    fds_before, threads_before = own_fd_count(), own_threads()

    def kill_it(_local_fd: int) -> None:
        os.kill(target.pid, signal.SIGKILL)

    with pytest.raises(ProcessGone):
        inject.close_remote_fd(target.pid, pushed.fd, verify=kill_it, force=False, timeout=5)
    os.close(fd)
    assert own_fd_count() == fds_before - 1
    assert own_threads() == threads_before
    assert target.proc.wait(timeout=5) == -signal.SIGKILL  # the parent still gets its child's status


def test_target_exiting_by_itself_mid_stream_is_a_typed_error(blocker: Callable[..., Target], memfd: int) -> None:
    target = blocker("read", "--exit-after", "0.4")
    fds_before, threads_before = own_fd_count(), own_threads()
    pushes = 0
    with pytest.raises((ProcessGone, NoSuchProcess)):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pushed = push(target.pid, memfd)
            inject.close_remote_fd(target.pid, pushed.fd, verify=lambda _fd: None, force=False, timeout=5)
            pushes += 1
    assert pushes > 10
    assert own_fd_count() == fds_before and own_threads() == threads_before
    assert target.proc.wait(timeout=5) == 3


def test_ctrl_c_during_a_push_loop_restores_the_target(blocker: Callable[..., Target]) -> None:
    target = blocker("read")
    wait_blocked(target.pid, {SYS_read})
    fds = fd_count(target.pid)
    # Python drops a KeyboardInterrupt that its handler raises inside a weakref callback or __del__ ("Exception
    # ignored in ..."): the flag ends the loop after the current push in that case, instead of never. Whatever fd
    # the target still holds at the end must have been reported: by the Interrupted error of a push that finished
    # under the Ctrl-C, or because the loop was between its push and its close.
    code = (
        "import os, re, signal, sys\n"
        "from pss_cli.errors import Interrupted\n"
        "from pss_cli.platform.linux.inject import push_fd, close_remote_fd\n"
        "stop = False\n"
        "def on_int(signo, frame):\n"
        "    global stop\n"
        "    stop = True\n"
        "    raise KeyboardInterrupt\n"
        "signal.signal(signal.SIGINT, on_int)\n"
        "fd = os.memfd_create('x')\n"
        "n, kept = 0, -1\n"
        "print('started', flush=True)\n"
        "try:\n"
        "    while not stop:\n"
        f"        kept = push_fd({target.pid}, fd, cloexec=True, force=False, timeout=5).fd\n"
        f"        close_remote_fd({target.pid}, kept, verify=lambda f: None, force=False, timeout=5)\n"
        "        kept = -1\n"
        "        n += 1\n"
        "except Interrupted as exc:\n"
        "    if 'received it as fd' in str(exc):\n"
        "        kept = int(re.search(r'as fd (\\d+)', str(exc)).group(1))\n"
        "    elif 'fd' in str(exc) and 'was closed' in str(exc):\n"
        "        kept = -1\n"
        "except KeyboardInterrupt:\n"
        "    pass\n"
        "print('interrupted', n, kept, flush=True)\n"
        "sys.exit(130)\n"
    )
    kept_fds = []
    for delay in (0.3, 0.55, 0.8):
        tool = subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        )
        try:
            assert tool.stdout is not None
            assert tool.stdout.readline().strip() == "started"
            time.sleep(delay)
            tool.send_signal(signal.SIGINT)
            out, _ = tool.communicate(timeout=20)
        finally:
            if tool.poll() is None:  # never leave a looping tool behind: later tests count this process's children
                tool.kill()
            tool.wait(timeout=10)
            assert tool.stdout is not None
            tool.stdout.close()
        assert tool.returncode == 130, out
        _, count, kept = out.split()
        assert int(count) > 0
        if int(kept) >= 0:
            kept_fds.append(int(kept))
        assert_untraced(target.pid)
        assert state(target.pid) == "S"
        target.send(f"tick-{delay}")
        assert target.event("got")["line"] == f"tick-{delay}"
    assert_no_read_errors(target)
    held = set(os.listdir(f"/proc/{target.pid}/fd"))
    assert {str(fd) for fd in kept_fds} <= held
    assert fd_count(target.pid) == fds + len(kept_fds), "the target holds an fd nobody reported"


# ---- close / get / dry runs ---------------------------------------------------------------------------------


def test_close_remote_fd_verifies_then_closes(blocker: Callable[..., Target], memfd: int) -> None:
    target = blocker("read")
    pushed = push(target.pid, memfd)
    seen: list[tuple[int, int]] = []

    def refuse(local: int) -> None:
        st = os.fstat(local)
        seen.append((st.st_dev, st.st_ino))
        raise BadSnapshot("not one of ours")

    with pytest.raises(BadSnapshot):
        inject.close_remote_fd(target.pid, pushed.fd, verify=refuse, force=False, timeout=5)
    mine = os.fstat(memfd)
    assert seen == [(mine.st_dev, mine.st_ino)]
    assert os.path.exists(f"/proc/{target.pid}/fd/{pushed.fd}"), "a refused fd was closed"
    stopped = inject.close_remote_fd(target.pid, pushed.fd, verify=lambda _fd: None, force=False, timeout=5).stopped_ms
    assert 0 < stopped < 1000
    assert not os.path.exists(f"/proc/{target.pid}/fd/{pushed.fd}")
    with pytest.raises(NoSuchHandle, match=f"has no fd {pushed.fd}"):
        inject.close_remote_fd(target.pid, pushed.fd, verify=lambda _fd: None, force=False, timeout=5)
    assert_no_read_errors(target)


def test_get_remote_fd_returns_the_same_open_file(blocker: Callable[..., Target], memfd: int) -> None:
    target = blocker("read")
    pushed = push(target.pid, memfd)
    local = inject.get_remote_fd(target.pid, pushed.fd)
    try:
        assert os.fstat(local).st_ino == os.fstat(memfd).st_ino
        assert os.pread(local, len(PAYLOAD), 0) == PAYLOAD
    finally:
        os.close(local)
    with pytest.raises(NoSuchHandle, match="has no fd 999"):
        inject.get_remote_fd(target.pid, 999)


def test_dry_runs_check_everything_and_touch_nothing(blocker: Callable[..., Target], memfd: int) -> None:
    target = blocker("read")
    wait_blocked(target.pid, {SYS_read})
    pushed = push(target.pid, memfd)
    time.sleep(0.05)  # the released thread goes back to sleep in read(2): that is a context switch, not ours to count
    wait_blocked(target.pid, {SYS_read})
    switches = status_field(target.pid, "voluntary_ctxt_switches")
    fds = fd_count(target.pid)
    actions = inject.dry_run_push(target.pid, force=False)
    assert any("socketpair" in a for a in actions) and any(f"thread {target.pid}" in a for a in actions)
    closing = inject.dry_run_close(target.pid, pushed.fd, force=False)
    assert any(f"close({pushed.fd})" in a for a in closing)
    with pytest.raises(NoSuchHandle, match="has no fd 999"):
        inject.dry_run_close(target.pid, 999, force=False)
    time.sleep(0.05)
    assert status_field(target.pid, "voluntary_ctxt_switches") == switches, "the dry run woke the target"
    assert fd_count(target.pid) == fds


def test_dry_run_refuses_what_the_real_run_would(blocker: Callable[..., Target]) -> None:
    target = blocker("recv-timeout")
    wait_blocked(target.pid, {45})
    with pytest.raises(Refused):
        inject.dry_run_push(target.pid, force=False)
    assert any(a.startswith("warning:") for a in inject.dry_run_push(target.pid, force=True))


def test_unprivileged_tool_is_told_why_it_was_denied(blocker: Callable[..., Target]) -> None:
    target = blocker("read")
    code = (
        "from pss_cli.platform.linux import inject\nfrom pss_cli.errors import PssError\n"
        f"try:\n    inject.dry_run_push({target.pid}, force=False)\n"
        "except PssError as e:\n    print(type(e).__name__, e)\n"
    )
    result = run_tool(code, uid=65534)
    assert result.stdout.startswith(AccessDenied.__name__), result.stdout + result.stderr
    assert "uid 0" in result.stdout and "root (sudo)" in result.stdout


# ---- stress -------------------------------------------------------------------------------------------------


def test_five_hundred_push_and_close_cycles_leak_nothing(blocker: Callable[..., Target], memfd: int) -> None:
    target = blocker("read", "--threads", "2")
    wait_blocked(target.pid, {SYS_read})
    target_fds = fd_count(target.pid)
    for _ in range(20):  # warm up: imports, caches, allocator pools
        inject.close_remote_fd(target.pid, push(target.pid, memfd).fd, verify=lambda _fd: None, force=False, timeout=5)
    own_fds, rss = own_fd_count(), own_rss_kib()
    stops = []
    for _ in range(500):
        pushed = push(target.pid, memfd)
        stops.append(pushed.stopped_ms)
        inject.close_remote_fd(target.pid, pushed.fd, verify=lambda _fd: None, force=False, timeout=5)
    assert fd_count(target.pid) == target_fds
    assert own_fd_count() == own_fds
    assert own_rss_kib() - rss < 2048, "the tool's memory grew by more than 2 MiB over 500 cycles"
    assert statistics.median(stops) < 5  # the benchmark holds the real goal; this catches a gross regression
    assert_no_read_errors(target)
    assert_untraced(target.pid)

"""A test target that blocks in one system call, then reports from inside what it sees.

Every blocking call goes through raw libc with ctypes, so an EINTR reaches this program instead of being retried
away by CPython (PEP 475). Reports are JSON lines on stdout; commands are lines on stdin:

    python blocker.py MODE [ARG] [--threads N] [--spin] [--exit-after S] [--seccomp-kill-socketpair]

MODE is what the main thread blocks in first: read (stdin), nanosleep S, nanosleep-abs S, futex S, event S,
poll, accept PATH, epoll, semop, sigtimedwait, recv-timeout (SO_RCVTIMEO), inotify DIR. After that call returns
it reports {"event": "woke", ...} and serves commands with raw read(2) on stdin: `check FD` (read the fd's bytes,
seals and close-on-exec flag from inside), `fds`, `echo X`, `exit`. Every read in that loop that fails is
reported, so an EINTR leaked by a ptrace stop is visible.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import socket
import struct
import sys
import threading
import time

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

SYS_futex = 202
SYS_epoll_wait = 232
FUTEX_WAIT_PRIVATE = 128
CLOCK_REALTIME, CLOCK_MONOTONIC = 0, 1
TIMER_ABSTIME = 1
F_GET_SEALS = 1034


class timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class pollfd(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_int), ("events", ctypes.c_short), ("revents", ctypes.c_short)]


def report(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def seconds(value: float) -> timespec:
    return timespec(int(value), int((value % 1) * 1e9))


def block(mode: str, arg: str | None) -> dict[str, object]:
    """Run the mode's blocking call once; what it returned, its errno and how long it took."""
    started = time.monotonic()
    ret: int
    if mode == "nanosleep":
        ret = libc.nanosleep(ctypes.byref(seconds(float(arg or 0))), None)
    elif mode == "nanosleep-abs":
        now = timespec()
        libc.clock_gettime(CLOCK_MONOTONIC, ctypes.byref(now))
        target = seconds(now.tv_sec + now.tv_nsec / 1e9 + float(arg or 0))
        ret = libc.clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, ctypes.byref(target), None)
    elif mode == "futex":
        word = ctypes.c_int(0)
        timeout = seconds(float(arg or 0))
        ret = libc.syscall(SYS_futex, ctypes.byref(word), FUTEX_WAIT_PRIVATE, 0, ctypes.byref(timeout))
    elif mode == "event":
        ret = int(threading.Event().wait(float(arg or 0)))
    elif mode == "poll":
        fds = pollfd(0, 1, 0)
        ret = libc.poll(ctypes.byref(fds), 1, -1)
    elif mode == "accept":
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        assert arg is not None, "accept needs a socket path"
        listener.bind(arg)
        listener.listen(1)
        report(event="listening", path=arg)
        ret = libc.accept(listener.fileno(), None, None)
        if ret >= 0:
            os.close(ret)
    elif mode == "epoll":
        import select

        epoll = select.epoll()
        epoll.register(0, select.EPOLLIN)
        events = (ctypes.c_uint8 * 12)()
        ret = libc.syscall(SYS_epoll_wait, epoll.fileno(), events, 1, -1)
    elif mode == "semop":
        SYS_semget, SYS_semop, IPC_PRIVATE, IPC_RMID = 64, 65, 0, 0
        semid = libc.syscall(SYS_semget, IPC_PRIVATE, 1, 0o600)
        op = (ctypes.c_short * 3)(0, -1, 0)  # sem_num 0, sem_op -1 (blocks: the value is 0), sem_flg 0
        ret = libc.syscall(SYS_semop, semid, op, 1)
        err = ctypes.get_errno()
        libc.semctl(semid, 0, IPC_RMID)
        return {"ret": ret, "errno": err if ret == -1 else 0, "elapsed": time.monotonic() - started}
    elif mode == "sigtimedwait":
        SYS_rt_sigtimedwait = 128
        mask = ctypes.c_uint64(1 << (10 - 1))  # SIGUSR1, blocked below
        libc.syscall(14, 0, ctypes.byref(mask), None, 8)  # rt_sigprocmask(SIG_BLOCK)
        ret = libc.syscall(SYS_rt_sigtimedwait, ctypes.byref(mask), None, None, 8)
    elif mode == "recv-timeout":
        left, _right = socket.socketpair()  # the peer stays open: recv must block
        left.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@qq", 60, 0))
        buffer = ctypes.create_string_buffer(16)
        ret = libc.recv(left.fileno(), buffer, 16, 0)
    elif mode == "inotify":
        fd = libc.inotify_init()
        libc.inotify_add_watch(fd, (arg or "/tmp").encode(), 0x100)  # IN_CREATE
        buffer = ctypes.create_string_buffer(4096)
        ret = libc.read(fd, buffer, 4096)
    else:
        raise SystemExit(f"unknown mode {mode}")
    err = ctypes.get_errno() if ret == -1 else 0
    return {"ret": ret, "errno": err, "elapsed": time.monotonic() - started}


def check_fd(fd: int) -> dict[str, object]:
    """What this process sees through fd `fd`: its first bytes, its seals, its close-on-exec flag."""
    try:
        data = os.pread(fd, 64, 0)
        seals = fcntl.fcntl(fd, F_GET_SEALS)
        cloexec = bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)
        link = os.readlink(f"/proc/self/fd/{fd}")
    except OSError as exc:
        return {"fd": fd, "error": exc.errno}
    return {"fd": fd, "data": data.decode("latin-1"), "seals": seals, "cloexec": cloexec, "link": link}


def serve() -> None:
    """The command loop: raw read(2) on stdin; any failed read is reported (an EINTR must never show up)."""
    buffer = ctypes.create_string_buffer(4096)
    pending = b""
    while True:
        n = libc.read(0, buffer, 4096)
        if n < 0:
            report(event="read-error", errno=ctypes.get_errno())
            continue
        if n == 0:
            return
        pending += buffer.raw[:n]
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            command, _, rest = line.decode().partition(" ")
            if command == "check":
                report(event="check", **check_fd(int(rest)))
            elif command == "fds":
                report(event="fds", fds=sorted(int(f) for f in os.listdir("/proc/self/fd")))
            elif command == "exit":
                os._exit(0)
            else:
                report(event="got", line=line.decode())


def spin() -> None:
    while True:
        pass


def sleeper() -> None:
    while True:
        libc.nanosleep(ctypes.byref(seconds(1000)), None)


def install_seccomp_kill_socketpair() -> None:
    """A seccomp filter (mode 2) that kills the process if it ever calls socketpair(2) itself."""
    PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2

    class sock_filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]

    class sock_fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(sock_filter))]

    program = (sock_filter * 4)(
        sock_filter(0x20, 0, 0, 0),  # ld [0] (the system call number)
        sock_filter(0x15, 0, 1, 53),  # jeq #53 (socketpair)
        sock_filter(0x06, 0, 0, 0x80000000),  # ret SECCOMP_RET_KILL_PROCESS
        sock_filter(0x06, 0, 0, 0x7FFF0000),  # ret SECCOMP_RET_ALLOW
    )
    fprog = sock_fprog(4, program)
    assert libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
    assert libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) == 0


def main() -> None:
    args = sys.argv[1:]
    mode = args.pop(0)
    arg = args.pop(0) if args and not args[0].startswith("--") else None
    threads, spinner, exit_after, seccomp = 0, False, None, False
    while args:
        flag = args.pop(0)
        if flag == "--threads":
            threads = int(args.pop(0))
        elif flag == "--spin":
            spinner = True
        elif flag == "--exit-after":
            exit_after = float(args.pop(0))
        elif flag == "--seccomp-kill-socketpair":
            seccomp = True
    for _ in range(threads):
        threading.Thread(target=sleeper, daemon=True).start()
    if spinner:
        threading.Thread(target=spin, daemon=True).start()
    if exit_after is not None:
        threading.Timer(exit_after, os._exit, (3,)).start()
    if seccomp:
        install_seccomp_kill_socketpair()
    report(event="ready", pid=os.getpid(), mode=mode, fds=sorted(int(f) for f in os.listdir("/proc/self/fd")))
    if mode != "read":
        report(event="woke", mode=mode, **block(mode, arg))
    serve()


if __name__ == "__main__":
    main()

"""A capture target with known state: named threads, a file, a pipe, a listening socket, a mapped file, an
environment variable. Prints one JSON line with what it holds, then echoes stdin lines back until EOF."""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import socket
import sys
import tempfile
import threading

libc = ctypes.CDLL(None, use_errno=True)
PR_SET_NAME = 15


def name_thread(name: str) -> None:
    libc.prctl(PR_SET_NAME, name.encode(), 0, 0, 0)


def worker(name: str, ready: threading.Barrier, stop: threading.Event) -> None:
    name_thread(name)
    ready.wait()
    stop.wait()


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    extra_fds = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    stop = threading.Event()
    ready = threading.Barrier(count + 1)
    threads = [
        threading.Thread(target=worker, args=(f"pss-worker-{i}", ready, stop), daemon=True) for i in range(count)
    ]
    for t in threads:
        t.start()
    ready.wait()
    workdir = tempfile.mkdtemp(prefix="pss-target-")
    path = os.path.join(workdir, "held-file.txt")
    held = open(path, "w+")  # noqa: SIM115 - held open on purpose
    held.write("hello")
    held.flush()
    read_end, write_end = os.pipe()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    map_path = os.path.join(workdir, "mapped.bin")
    with open(map_path, "wb") as f:
        f.write(b"\0" * 65536)
    map_file = open(map_path, "r+b")  # noqa: SIM115
    mapped = mmap.mmap(map_file.fileno(), 65536)
    mapped[:5] = b"magic"
    if extra_fds:
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        assert hard >= extra_fds + 100, f"RLIMIT_NOFILE hard limit {hard} is too low for {extra_fds} fds"
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        null = os.open(os.devnull, os.O_RDONLY)
        extra = [os.dup(null) for _ in range(extra_fds)]
        assert len(extra) == extra_fds
    print(
        json.dumps(
            {
                "pid": os.getpid(),
                "file": path,
                "file_fd": held.fileno(),
                "pipe": [read_end, write_end],
                "socket_fd": listener.fileno(),
                "port": listener.getsockname()[1],
                "mapped": map_path,
                "threads": [f"pss-worker-{i}" for i in range(count)],
            }
        ),
        flush=True,
    )
    for line in sys.stdin:
        sys.stdout.write("echo:" + line)
        sys.stdout.flush()
    stop.set()


if __name__ == "__main__":
    main()

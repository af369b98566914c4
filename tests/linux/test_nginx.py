"""Issue 11's proof against a real server: Debian's nginx, under load, never sees an EINTR from pss-dup.

An nginx worker is a single-threaded event loop that sits in epoll_wait, with a finite timeout whenever a
keep-alive connection has a timer. A ptrace stop ends that call with EINTR, which nginx logs at `info` level
("epoll_wait() failed (4: Interrupted system call)"). The test starts its own nginx (own prefix, config, free port
on 127.0.0.1), keeps a bounded HTTP/1.1 keep-alive load on it, and captures, dumps, dups into and frees a worker
20 times each without --force; the error log must show no EINTR and the load no error.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import reap, run_cli
from tests.linux.conftest import children_of, fd_count, state, tracer_pids, wait_until

pytestmark = pytest.mark.skipif(
    os.uname().machine != "x86_64" or os.geteuid() != 0,
    reason="needs Linux x86_64 and root (ptrace of nginx's workers, which run as another user)",
)

ROUNDS = 20
WORKERS = 2
#: The load: this many keep-alive connections, each reopened after RECONNECT requests (so the worker also accepts
#: while pss-dup stops it), pausing PAUSE s between requests (so the worker keeps going back to epoll_wait).
CONNECTIONS, RECONNECT, PAUSE = 6, 50, 0.002
#: Bounds: no connection sends more than this many requests or runs longer than this.
MAX_REQUESTS, MAX_SECONDS = 200_000, 240.0
EINTR_MARKS = ("Interrupted system call", "EINTR")

CONFIG = """\
worker_processes {workers};
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log off;
    keepalive_timeout 75s;
    keepalive_requests 100000;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "$pid\\n"; }}
    }}
}}
"""


def nginx_binary() -> str:
    """Debian's nginx; without it the test skips, except under CI, where a missing tool is a failure."""
    found = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if found is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("nginx is not installed, and CI is set: .ci/run installs it (apt-get install nginx)")
        pytest.skip("nginx is not installed (apt-get install nginx); under CI=true this fails instead")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Nginx:
    """An nginx master the test started in the foreground (daemon off), with its own prefix, and its workers."""

    def __init__(self, binary: str, prefix: Path) -> None:
        self.prefix = prefix
        self.port = free_port()
        for sub in ("logs", "tmp"):
            (prefix / sub).mkdir()
        config = prefix / "nginx.conf"
        config.write_text(CONFIG.format(workers=WORKERS, prefix=prefix, port=self.port))
        argv = [binary, "-p", str(prefix), "-c", str(config)]
        if "-e filename" in subprocess.run([binary, "-h"], capture_output=True, text=True).stderr:
            argv += ["-e", str(self.log_path)]  # nginx >= 1.19.5: not even startup goes to /var/log/nginx
        with open(prefix / "nginx.out", "wb") as out:  # what it says before its error log is open
            self.proc = subprocess.Popen(argv, stdout=out, stderr=out)
        self.workers: list[int] = []

    @property
    def log_path(self) -> Path:
        return self.prefix / "logs" / "error.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else "(no error log)"

    def wait_ready(self) -> None:
        """Both workers are up and the port answers; a master that exits fails the test with its log."""

        def ready() -> bool:
            said = (self.prefix / "nginx.out").read_text(errors="replace")
            assert self.proc.poll() is None, f"nginx exited ({self.proc.returncode}): {said}\n{self.log()}"
            self.workers = sorted(children_of(self.proc.pid))
            if len(self.workers) < WORKERS:
                return False
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        wait_until(ready, timeout=20, what="nginx to listen with its workers")

    def stop(self) -> None:
        """SIGQUIT (graceful) to the master we started; failing that, SIGKILL to its workers (which it reaps), then
        to it. Only the PIDs this test started: the master, and the workers found as its children."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                for pid in self.workers:
                    if pid in children_of(self.proc.pid):
                        os.kill(pid, signal.SIGCONT)
                        os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(AssertionError):
                    wait_until(lambda: not children_of(self.proc.pid), timeout=5, what="the workers to be reaped")
        reap(self.proc)


class Load:
    """Bounded HTTP/1.1 keep-alive load from threads of the test process; every error is recorded, not raised."""

    def __init__(self, port: int, workers: list[int]) -> None:
        self.port = port
        self.workers = {str(pid).encode() for pid in workers}
        self.stop = threading.Event()
        self.errors: list[str] = []
        #: Answers per worker pid (nginx answers each request with its own pid).
        self.served: Counter[int] = Counter()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(CONNECTIONS)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in self._threads), "a load thread did not stop"

    def _run(self, n: int) -> None:
        deadline = time.monotonic() + MAX_SECONDS
        conn: http.client.HTTPConnection | None = None
        for count in range(MAX_REQUESTS):
            if self.stop.is_set() or time.monotonic() > deadline:
                break
            try:
                if conn is None or count % RECONNECT == 0:
                    if conn is not None:
                        conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", f"/{n}/{count}")
                response = conn.getresponse()
                body = response.read().strip()
                if response.status != 200 or body not in self.workers:
                    self._error(f"connection {n} request {count}: {response.status} {body!r}")
                else:
                    with self._lock:
                        self.served[int(body)] += 1
            except (OSError, http.client.HTTPException) as exc:
                self._error(f"connection {n} request {count}: {exc!r}")
                if conn is not None:
                    conn.close()
                conn = None
            time.sleep(PAUSE)
        if conn is not None:
            conn.close()

    def _error(self, what: str) -> None:
        with self._lock:
            self.errors.append(what)


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Nginx]:
    server = Nginx(nginx_binary(), tmp_path)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def cli_json(*args: str) -> dict[str, Any]:
    """Run pss-dup with a JSON report; it must exit 0 (no --force anywhere)."""
    result = run_cli(*args, "-o", "json")
    assert result.returncode == 0, f"pss-dup {' '.join(args)}: exit {result.returncode}: {result.stderr}"
    record: dict[str, Any] = json.loads(result.stdout)["results"][0]
    return record


def interruptions(record: Any) -> list[dict[str, Any]]:
    """Every `interruptions` entry anywhere in a JSON report."""
    found: list[dict[str, Any]] = []
    if isinstance(record, dict):
        for key, value in record.items():
            if key == "interruptions" and isinstance(value, list):
                found.extend(value)
            else:
                found.extend(interruptions(value))
    elif isinstance(record, list):
        for item in record:
            found.extend(interruptions(item))
    return found


def clock() -> str:
    """Wall-clock time as nginx's error log gives it, to match a log line with the command that caused it."""
    return time.strftime("%H:%M:%S")


def fd_links(pid: int) -> dict[int, str]:
    links = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            links[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
    return links


@pytest.mark.slow
@pytest.mark.timeout(300)  # about 40 s alone; twice that when the 2 CPUs are shared
def test_nginx_worker_under_load_never_sees_eintr_from_capture_dump_dup_and_free(
    nginx: Nginx, sleeper: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    """`sleeper` is the process whose snapshot `dup` hands to the worker."""
    before = {pid: fd_count(pid) for pid in nginx.workers}
    reports: list[tuple[str, list[dict[str, Any]]]] = []
    with Load(nginx.port, nginx.workers) as load:
        wait_until(lambda: sum(load.served.values()) >= 100, timeout=20, what="the load to get going")
        # The worker that serves most of the load is the one pss-dup works on.
        worker = load.served.most_common(1)[0][0]
        served_before = load.served[worker]
        core = tmp_path / "worker.core"
        for n in range(ROUNDS):
            reports.append((f"capture {n} {clock()}", interruptions(cli_json("capture", str(worker)))))
            reports.append((f"dump {n} {clock()}", interruptions(cli_json("dump", str(worker), str(core)))))
            core.unlink()
            what = f"dup {n} {clock()}"
            dup = cli_json("dup", str(sleeper.pid), str(worker))
            reports.append((what, interruptions(dup)))
            fd = dup["target"]["handle"]
            reports.append((f"free {n} {clock()}", interruptions(cli_json("free", str(worker), str(fd)))))
        served_during = load.served[worker] - served_before
    log = nginx.log()
    seen = [line for line in log.splitlines() if any(mark in line for mark in EINTR_MARKS)]
    said = "\n".join(f"{what}: {entries}" for what, entries in reports)
    eintrs = "\n".join(seen)
    assert not seen, f"nginx saw EINTR:\n{eintrs}\n--- pss-dup said ---\n{said}\n--- error log ---\n{log}"
    assert not load.errors, f"{len(load.errors)} load errors, first: {load.errors[:10]}\n--- error log ---\n{log}"
    assert served_during >= ROUNDS, f"worker {worker} served only {served_during} requests while pss-dup worked"
    shown = [(what, entry) for what, entries in reports for entry in entries if not entry["restarted"]]
    assert not shown, f"pss-dup reports EINTRs it let through: {shown}"
    # The keep-alive connections are closed now: each worker goes back to the fds it had before the load.
    for pid in nginx.workers:

        def settled(pid: int = pid) -> bool:
            return fd_count(pid) == before[pid]

        with contextlib.suppress(AssertionError):
            wait_until(settled, timeout=10)
        assert fd_count(pid) == before[pid], f"worker {pid} had {before[pid]} fds, now: {fd_links(pid)}"
        assert set(tracer_pids(pid).values()) == {0}, f"worker {pid} is still traced"
        assert state(pid) not in "Tt", f"worker {pid} is stopped"
        assert children_of(pid) == [], f"worker {pid} has children (a VA clone left behind?)"
    assert sum(1 for _, entries in reports for _ in entries) > 0, "pss-dup never interrupted a blocked call"

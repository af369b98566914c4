"""The process listing (`ps`, a TARGET given by name) reads /proc itself, and gives psutil's values field for field.

Children with tricky names and command lines are listed both ways and compared: the same name (comm, made whole
from argv[0] where comm was cut at 15), command line (psutil's splitting of a rewritten one), create_time (the same
float), user, uid, threads, fds, rss and executable; a zombie, a kernel thread (only read), a process gone before it
is read, and (as another user) what /proc refuses. `pss-dup ps -o json` gives the records psutil gave before.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from pss_cli import lookup
from pss_cli.model import ListedProcess
from pss_cli.platform import backend
from pss_cli.platform.linux import procfs
from pss_cli.record import fields
from tests.conftest import a_kernel_thread, reap, run_cli
from tests.linux.conftest import REPO

#: A child that renames itself (mode "comm": prctl PR_SET_NAME, bytes as given) or rewrites its command line over
#: its argv area through /proc/self/mem ("title": padded with spaces, argv's closing NUL kept; "proctitle": that NUL
#: overwritten too, as setproctitle(3) does, so that the kernel reads on into the environment), then waits on stdin.
TRICKY = r"""
import ctypes, os, sys
mode, value = sys.argv[1], os.fsencode(sys.argv[2])
if mode == "comm":
    ctypes.CDLL(None).prctl(15, value, 0, 0, 0)
else:
    fields = open("/proc/self/stat", "rb").read().rpartition(b")")[2].split()
    start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end: proc(5) fields 48 and 49
    size = end - start if mode == "proctitle" else end - start - 1
    with open("/proc/self/mem", "r+b", buffering=0) as mem:
        mem.seek(start)
        mem.write(value.ljust(size, b" "))
print("ready", flush=True)
sys.stdin.read()
"""
#: What psutil's as_dict gave `ps` before the listing read /proc, and what a name was matched against.
PSUTIL_ATTRS = ["ppid", "username", "name", "exe", "num_threads", "memory_info", "cmdline", "create_time", "num_fds",
                "uids"]  # fmt: skip
E_ACUTE = "\u00e9"


class Children:
    """Tricky children, by what makes each tricky; `tag` makes their names unique to this run."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.long = f"pssl-{self.tag}-a-name-longer-than-fifteen"
        self.started: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, what: str, argv0: str, mode: str, value: str | bytes, *extra: str | bytes, **popen: Any) -> None:
        proc = subprocess.Popen([argv0, "-c", TRICKY, mode, value, *extra], executable=sys.executable,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, **popen)  # fmt: skip
        self.started[what] = proc
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n", what

    def start_zombie(self) -> None:
        """A child that has exited and is not reaped yet."""
        proc = self.started["zombie"] = subprocess.Popen(["true"])
        deadline = time.monotonic() + 10
        while state_of(proc.pid) != "Z":
            assert time.monotonic() < deadline, "the child did not become a zombie"
            time.sleep(0.01)

    def pid(self, what: str) -> int:
        return self.started[what].pid

    @property
    def pids(self) -> list[int]:
        return sorted(proc.pid for proc in self.started.values())


def state_of(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rpartition(b")")[2].split()[0].decode()


@pytest.fixture
def children() -> Iterator[Children]:
    """The tricky children, all reaped after."""
    c = Children()
    tag, py = c.tag, sys.executable
    try:
        c.start("spaces and parentheses", py, "comm", f"ps l ({tag}) x")
        c.start("cut at 15, argv[0] whole", f"/nonexistent/{c.long}", "comm", c.long)
        c.start("renamed, cut at 15", py, "comm", c.long)
        c.start("a comm that is not UTF-8", py, "comm", b"pssl-\xff\xfe" + tag.encode())
        multibyte = f"pssl-{tag}-{E_ACUTE * 5}"  # cut at 15 bytes, in the middle of a character
        c.start("a multibyte comm cut mid-character", f"/x/{multibyte}", "comm", multibyte)
        c.start(
            "arguments with CR, CRLF and bytes", py, "comm", f"pssl-cr-{tag}", "a\rb", "c\r\nd", b"e\xff", "f g", ""
        )
        c.start("title with spaces, one NUL", py, "title", f"pssl {tag} title")
        c.start("setproctitle, no environment", py, "proctitle", f"pssl {tag} t", env={})
        c.start("setproctitle into the environment", py, "proctitle", f"pssl {tag} t", env={"PSSL": tag})
        c.start_zombie()
        yield c
    finally:
        for proc in c.started.values():
            reap(proc)


def psutil_view(pid: int) -> dict[str, Any] | None:
    """`pid` as psutil gives it (None once gone), in ListedProcess's terms."""
    try:
        info = psutil.Process(pid).as_dict(PSUTIL_ATTRS, ad_value=None)
    except psutil.NoSuchProcess:
        return None
    return {
        "pid": pid,
        "ppid": info["ppid"],
        "name": info["name"],
        "exe": info["exe"],
        "cmdline": tuple(info["cmdline"]) if info["cmdline"] is not None else None,
        "user": info["username"],
        "uid": info["uids"].real if info["uids"] is not None else None,
        "threads": info["num_threads"],
        "handles": info["num_fds"],
        "rss": info["memory_info"].rss if info["memory_info"] is not None else None,
        "create_time": info["create_time"],
    }


def listing_view(proc: ListedProcess | None) -> dict[str, Any] | None:
    return {name: getattr(proc, name) for name in fields(ListedProcess)} if proc is not None else None


def differences(pids: list[int]) -> tuple[list[str], int]:
    """Every field where the listing (and describe_process) and psutil disagree about `pids`, and how many fields
    /proc refused (None).

    Where the executable may not be read, psutil guesses it from an absolute argv[0]: the listing says None (a name
    is matched against argv[0]'s basename anyway).
    """
    listed = {p.pid: listing_view(p) for p in backend().list_processes(kernel_threads=True) if p.pid in pids}
    found, refused = [], 0
    for pid in pids:
        ours, theirs = listed.get(pid), psutil_view(pid)
        assert ours is not None and theirs is not None, pid
        assert listing_view(backend().describe_process(pid)) == ours, pid
        if ours["exe"] is None and theirs["exe"] is not None and ours["cmdline"]:
            assert theirs["exe"] == ours["cmdline"][0], pid
            theirs["exe"] = None
        found += [f"{pid} {k}: listing {ours[k]!r}, psutil {theirs[k]!r}" for k in ours if ours[k] != theirs[k]]
        refused += sum(value is None for value in ours.values())
    return found, refused


def settled_differences(pids: list[int]) -> list[str]:
    """differences(), looked at again if only create_time differed: a wall-clock step between the listing's and
    psutil's reads of the boot time moves every create_time (both read it afresh, as the kernel derives it from the
    wall clock); a second look after a step agrees."""
    found = differences(pids)[0]
    if found and all(" create_time: " in line for line in found):
        found = differences(pids)[0]
    return found


def listed_by_pid() -> dict[int, ListedProcess]:
    return {p.pid: p for p in backend().list_processes(kernel_threads=True)}


def test_the_listing_gives_psutils_values_for_tricky_processes(children: Children) -> None:
    assert settled_differences(children.pids) == []
    listed, tag = listed_by_pid(), children.tag
    by_what = {what: listed[children.pid(what)] for what in children.started}
    assert by_what["spaces and parentheses"].name == f"ps l ({tag}) x"
    assert by_what["cut at 15, argv[0] whole"].name == children.long
    assert by_what["renamed, cut at 15"].name == children.long[:15]
    assert by_what["a comm that is not UTF-8"].name == os.fsdecode(b"pssl-\xff\xfe" + tag.encode())
    assert by_what["a multibyte comm cut mid-character"].name == os.fsdecode(f"pssl-{tag}-{E_ACUTE * 5}".encode()[:15])
    assert (by_what["arguments with CR, CRLF and bytes"].cmdline or ())[-5:] == ("a\nb", "c\nd", os.fsdecode(b"e\xff"),
                                                                               "f g", "")  # fmt: skip
    assert (by_what["title with spaces, one NUL"].cmdline or ())[:3] == ("pssl", tag, "title")
    assert (by_what["setproctitle, no environment"].cmdline or ())[:3] == ("pssl", tag, "t")
    assert (by_what["setproctitle into the environment"].cmdline or ())[-1] == f"PSSL={tag}"
    zombie = by_what["zombie"]
    assert (zombie.name, zombie.cmdline, zombie.exe, zombie.rss, zombie.threads) == ("true", None, None, 0, 1)


def test_a_kernel_thread_is_listed_as_psutil_lists_it_only_when_asked() -> None:
    pid = a_kernel_thread()
    assert settled_differences([pid]) == []
    assert pid not in {p.pid for p in backend().list_processes()}


def test_a_process_gone_before_it_is_read_is_left_out() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert backend().describe_process(proc.pid) is None
    assert proc.pid not in listed_by_pid()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to list as another user")
def test_what_proc_refuses_another_user_is_none_as_psutil_gives_it(children: Children) -> None:
    code = f"import json, tests.linux.test_listing as t; print(json.dumps(t.differences({children.pids})))"
    result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
                            capture_output=True, text=True, cwd=REPO, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    found, refused = json.loads(result.stdout)
    assert found == []
    assert refused >= len(children.pids) - 1  # the fd count of each at least (a zombie's empty fd table is readable)


def old_find_by_name(wanted: str) -> list[tuple[int, str]]:
    """lookup.find_by_name as it was, over psutil."""
    found = []
    for proc in psutil.process_iter(["name", "exe", "cmdline"], ad_value=None):
        info = proc.info
        if proc.pid != os.getpid() and lookup.name_matches(wanted, info["name"], info["exe"], info["cmdline"]):
            found.append((proc.pid, " ".join(info["cmdline"] or []) or info["name"] or "?"))
    return sorted(found)


def test_a_name_resolves_to_what_psutil_resolved_it_to(children: Children) -> None:
    long, tag = children.long, children.tag
    for wanted in (long, long[:15], long + "-not", f"ps l ({tag}) x", f"pssl-cr-{tag}", "true"):
        assert lookup.find_by_name(wanted) == old_find_by_name(wanted), wanted
    assert lookup.resolve(long, all_matches=True) == [children.pid("cut at 15, argv[0] whole"),
                                                      children.pid("renamed, cut at 15")]  # fmt: skip


def test_ps_json_gives_the_records_psutil_gave(children: Children) -> None:
    result = run_cli("ps", "--parent", str(os.getpid()), "-o", "json")
    assert result.returncode == 0, result.stderr
    records = {r["pid"]: r for r in json.loads(result.stdout)["results"] if r["pid"] in children.pids}
    assert sorted(records) == children.pids
    for pid, record in records.items():
        theirs = psutil_view(pid)
        assert theirs is not None
        cmdline = list(theirs["cmdline"]) if theirs["cmdline"] is not None else None
        assert record == {"status": "ok", "pid": pid, "ppid": theirs["ppid"], "user": theirs["user"],
                          "name": theirs["name"], "threads": theirs["threads"], "handles": theirs["handles"],
                          "rss": theirs["rss"], "cmdline": cmdline, "create_time": theirs["create_time"],
                          "snapshots": [], "container": record["container"]}  # fmt: skip


def test_a_process_that_exits_while_it_is_read_is_left_out() -> None:
    """Its /proc directory is open (the listing holds it while reading one process) when it exits and is reaped:
    what is read next says it is gone, which read_listed turns into "left out", never into a record of Nones."""
    proc = subprocess.Popen(["sleep", "60"])
    try:
        with procfs.ProcDir(proc.pid) as opened:
            reap(proc)
            with pytest.raises((FileNotFoundError, ProcessLookupError)):
                procfs.read_listed_in(opened, True, {}, procfs.boot_time())
    finally:
        reap(proc)

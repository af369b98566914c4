"""Issue 15: containers. Built in the test run from real cgroups and namespaces (tests/linux/containers.py): where a
process lives in the model, `container:ID` targets, pss-dup inside a PID namespace, doctor there, and dumps written
into the container."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pss_cli import api
from pss_cli.errors import ExitCode, NoSuchProcess, OutputExists, UsageError
from pss_cli.model import CaptureFlags, DumpOutput
from pss_cli.platform import backend
from pss_cli.platform.linux import elfcore
from tests.conftest import PSS_DUP, need_tools, run_cli
from tests.linux.conftest import Target, children_of, state, tracer_pids
from tests.linux.containers import SECCOMP_DENY, fake_container, ns_inode

#: Namespaces, cgroups, chroot and nsenter all need root.
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="making namespaces and cgroups needs root")

SHAPES = [
    ("docker-{id}.scope", "docker"),
    ("docker/{id}", "docker"),
    ("cri-containerd-{id}.scope", "containerd"),
    ("kubepods/burstable/pod0f3e/{id}", "kubernetes"),
    ("crio-{id}.scope", "cri-o"),
    ("libpod-{id}.scope", "podman"),
    ("libpod-{id}.scope/container", "podman"),
]


@pytest.mark.parametrize(("leaf", "runtime"), SHAPES)
def test_capture_names_the_container_namespaces_and_cgroup(leaf: str, runtime: str) -> None:
    with fake_container(leaf) as box:
        snap = api.capture(box.init_pid, CaptureFlags.NONE)
        where = snap.process.location
        assert where is not None and where.container is not None
        assert (where.container.runtime, where.container.id, where.container.source) == (runtime, box.id, "cgroup")
        assert where.cgroup == box.cgroup_path
        assert where.ns_pids == (box.init_pid, 1)
        assert where.namespaces is not None
        for name in ("pid", "mnt", "net", "user", "cgroup"):
            assert getattr(where.namespaces, name) == ns_inode(box.init_pid, name)
        assert where.namespaces.pid != ns_inode(os.getpid(), "pid")
        assert where.namespaces.net != ns_inode(os.getpid(), "net")
        assert backend().container_of(box.init_pid) == where.container  # what ps reads, more cheaply


def test_nspawn_machine_name_is_unescaped() -> None:
    with fake_container(r"machine-pss\x2dbox.scope") as box:
        where = api.capture(box.sibling_pid, CaptureFlags.NONE).process.location
        assert where is not None and where.container is not None
        assert (where.container.runtime, where.container.id) == ("systemd-nspawn", "pss-box")
        assert where.ns_pids == (box.sibling_pid, box.sibling_ns_pid)


def test_podman_monitor_cgroup_is_not_the_container() -> None:
    with fake_container("libpod-conmon-{id}.scope") as box:
        where = api.capture(box.init_pid, CaptureFlags.NONE).process.location
        assert where is not None and where.container is None


def test_host_dumps_a_process_inside_a_pid_namespace(tmp_path: Path) -> None:
    """The injected clone() returns the clone's PID in the target's namespace; pss-dup must act on the PID it sees."""
    with fake_container("docker-{id}.scope") as box:
        core = tmp_path / "inside.core"
        snap = api.dump(box.sibling_pid, core, timeout=10)
        assert core.stat().st_size > 0 and snap.memory is not None and snap.memory.bytes_captured > 0
        assert children_of(box.sibling_pid) == []  # the clone was reaped in the source
        assert state(box.sibling_pid) in ("S", "R") and tracer_pids(box.sibling_pid) == {box.sibling_pid: 0}
        assert snap.process.location is not None and snap.process.location.ns_pids == (box.sibling_pid, 2)
        noted = elfcore.read_snapshot(core.read_bytes()).process.location  # the core's PSSDUP note says it too
        assert noted == snap.process.location and noted.container is not None and noted.container.id == box.id
        # and a dup from the host into the namespace's PID 1
        with contextlib.closing(api.capture_snapshot(box.sibling_pid)) as local:
            result = api.duplicate(local, box.sibling_pid, box.init_pid)
        assert result.target_handle is not None
        assert api.inspect(box.init_pid, result.target_handle).process.location == noted
        table = run_cli("capture", str(box.sibling_pid), "--threads")  # the report's summary
        assert table.returncode == 0, table.stderr
        assert f"{box.sibling_pid} → 2" in table.stdout and f"docker  id {box.id}" in table.stdout


def test_container_target_is_the_main_process_or_all_or_a_namespace_pid() -> None:
    with fake_container("docker-{id}.scope") as box:
        assert api.resolve(f"container:{box.id[:12]}") == [box.init_pid]
        assert api.resolve(f"container:{box.id}") == [box.init_pid]
        # --all: the container's every process, `unshare` (in the cgroup, outside the namespace) included
        assert api.resolve(f"container:{box.id[:8]}", all_matches=True) == sorted(
            [box.unshare.pid, box.init_pid, box.sibling_pid]
        )
        # namespace PID -> ours, and ours -> the namespace's (NSpid)
        assert api.resolve(f"container:{box.id[:12]}:{box.sibling_ns_pid}") == [box.sibling_pid]
        where = api.locate(box.sibling_pid)
        assert where is not None and where.inner_pid == box.sibling_ns_pid == 2
        with pytest.raises(NoSuchProcess, match="no process with PID 77 in the PID namespace"):
            api.resolve(f"container:{box.id[:12]}:77")


def test_container_target_unknown_or_ambiguous_lists_candidates() -> None:
    with (
        fake_container("docker-{id}.scope", prefix="abcd") as one,
        fake_container("libpod-{id}.scope", prefix="abce") as two,
    ):
        with pytest.raises(UsageError) as unknown:
            api.resolve("container:zz")
        assert "matches no container" in str(unknown.value)
        assert f"{one.id[:12]} (docker, main PID {one.init_pid}, 3 processes)" in str(unknown.value)
        assert f"{two.id[:12]} (podman, main PID {two.init_pid}, 3 processes)" in str(unknown.value)
        with pytest.raises(UsageError, match="'abc' matches several containers") as several:
            api.resolve("container:abc")
        assert one.id[:12] in str(several.value) and two.id[:12] in str(several.value)
        assert api.resolve("container:abce") == [two.init_pid]
        for bad in ("container:abc", "container:", "container:abcd:x"):
            result = run_cli("capture", bad)
            assert result.returncode == ExitCode.USAGE, result.stderr
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_ps_shows_and_filters_by_container() -> None:
    with fake_container("cri-containerd-{id}.scope") as box:
        result = run_cli("ps", "--container", box.id[:10], "-o", "json")
        assert result.returncode == 0, result.stderr
        records = json.loads(result.stdout)["results"]
        assert sorted(r["pid"] for r in records) == sorted([box.unshare.pid, box.init_pid, box.sibling_pid])
        assert {json.dumps(r["container"], sort_keys=True) for r in records} == {
            json.dumps({"runtime": "containerd", "id": box.id, "source": "cgroup"}, sort_keys=True)
        }
        table = run_cli("ps", "-C", box.id[:10])
        assert table.returncode == 0 and box.id[:12] in table.stdout and box.id[:13] not in table.stdout
        assert run_cli("ps", "-C", "nope").returncode == ExitCode.NO_PROCESS


def test_pss_dup_inside_the_pid_namespace_captures_dups_and_dumps_a_sibling(tmp_path: Path) -> None:
    """As in a debug container sharing the pod's PID namespace: every PID is the namespace's."""
    with fake_container("docker-{id}.scope") as box:
        inside = box.pss_dup("capture", str(box.sibling_ns_pid), "-o", "json")
        assert inside.returncode == 0, inside.stderr
        process = json.loads(inside.stdout)["results"][0]["snapshot"]["process"]
        assert process["pid"] == box.sibling_ns_pid == 2
        assert process["location"]["ns_pids"] == [2]  # the host's PID is not visible from inside
        assert process["location"]["container"] == {"runtime": "docker", "id": box.id, "source": "cgroup"}

        dup = box.pss_dup("dup", str(box.sibling_ns_pid), str(box.init_ns_pid), "-o", "json")
        assert dup.returncode == 0, dup.stderr
        handle = json.loads(dup.stdout)["results"][0]["target"]["handle"]
        held = box.pss_dup("inspect", "1", str(handle), "-o", "json")
        assert held.returncode == 0, held.stderr
        assert json.loads(held.stdout)["results"][0]["snapshot"]["process"]["pid"] == 2
        seen = api.inspect(box.init_pid, handle)  # and from the host: the same snapshot, namespace PIDs in it
        assert seen.process.pid == 2 and seen.process.location is not None

        core = tmp_path / "sibling.core"  # the mount namespace is a copy of ours: the same /tmp
        dumped = box.pss_dup("dump", str(box.sibling_ns_pid), str(core), "-o", "json")
        assert dumped.returncode == 0, dumped.stderr
        assert json.loads(dumped.stdout)["results"][0]["pid"] == 2 and core.stat().st_size > 0
        for pid in (box.init_pid, box.sibling_pid):
            assert state(pid) == "S" and set(tracer_pids(pid).values()) == {0}
        assert children_of(box.sibling_pid) == []


def test_without_cap_sys_ptrace_inside_a_container_capture_and_doctor_name_the_capability_and_fix() -> None:
    with fake_container("docker-{id}.scope") as box:
        denied = box.pss_dup("capture", "1", drop_ptrace=True)
        assert denied.returncode == ExitCode.ACCESS_DENIED, denied.stderr
        assert len(denied.stderr.strip().splitlines()) == 1
        assert "CAP_SYS_PTRACE" in denied.stderr and "--cap-add SYS_PTRACE" in denied.stderr
        assert state(box.init_pid) == "S" and tracer_pids(box.init_pid) == {box.init_pid: 0}

        doctor = box.pss_dup("doctor", "-o", "json", drop_ptrace=True)
        assert doctor.returncode == ExitCode.ACCESS_DENIED, doctor.stderr
        checks = {c["check"]: c for c in json.loads(doctor.stdout)["results"]}
        assert f"docker container {box.id[:12]}" in checks["container"]["detail"]
        privilege = checks["root or CAP_SYS_PTRACE"]
        assert privilege["result"] == "fail" and "without CAP_SYS_PTRACE" in privilege["detail"]
        for flag in ("docker run --cap-add SYS_PTRACE", "podman run --cap-add SYS_PTRACE",
                     'securityContext.capabilities.add: ["SYS_PTRACE"]'):  # fmt: skip
            assert flag in privilege["fix"]
        pid1 = checks["tracing PID 1"]
        assert pid1["result"] == "fail" and "CAP_SYS_PTRACE" in pid1["detail"]

        granted = box.pss_dup("doctor", "-o", "json")  # with the capability: nothing of the kind
        assert {c["check"]: c["result"] for c in json.loads(granted.stdout)["results"]}[
            "root or CAP_SYS_PTRACE"
        ] == "pass"


def test_doctor_under_a_seccomp_filter_names_the_denied_calls_and_the_profile_fix() -> None:
    with fake_container("libpod-{id}.scope") as box:
        filtered = box.inside(sys.executable, "-c", SECCOMP_DENY, sys.executable, "-m", "pss_cli", "doctor", "-o",
                              "json")  # fmt: skip
        assert filtered.returncode != 0, filtered.stderr
        checks = {c["check"]: c for c in json.loads(filtered.stdout)["results"]}
        seccomp = checks["seccomp (pss-dup itself)"]
        assert seccomp["result"] == "warn" and "mode 2" in seccomp["detail"]
        assert "--security-opt seccomp=" in seccomp["fix"] and "seccompProfile" in seccomp["fix"]
        for call in ("pidfd_getfd", "process_vm_readv", "ptrace"):
            assert checks[call]["result"] == "fail" and "EPERM" in checks[call]["detail"], checks[call]


#: A process in a root directory of its own (chroot), as a container's processes are, running as nobody.
CHROOTED = """
import os, sys
os.chroot(sys.argv[1]); os.chdir("/"); os.setgroups([]); os.setgid(65534); os.setuid(65534)
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def chrooted(tmp_path: Path, spawn: Callable[..., Target]) -> tuple[Target, Path]:
    root = tmp_path / "rootfs"
    (root / "tmp").mkdir(parents=True)
    (root / "etc").mkdir()
    target = spawn([sys.executable, "-c", CHROOTED, str(root)])
    target.expect("ready")
    return target, root


def test_dump_into_container_writes_in_the_targets_root_owned_by_its_user(chrooted: tuple[Target, Path]) -> None:
    target, root = chrooted
    result = run_cli("dump", str(target.pid), "/tmp/app.core", "--into-container", "-o", "json")
    assert result.returncode == 0, result.stderr
    core = root / "tmp" / "app.core"
    st = core.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (65534, 65534, 0o600)
    assert core.read_bytes()[:4] == b"\x7fELF" and st.st_size > 0
    assert json.loads(result.stdout)["results"][0]["file"] == f"/proc/{target.pid}/root/tmp/app.core"
    default = run_cli("dump", str(target.pid), "--into-container")  # default name, in the container's /tmp
    assert default.returncode == 0, default.stderr
    assert len(list((root / "tmp").glob("python*_*.core"))) == 1
    assert state(target.pid) == "S" and tracer_pids(target.pid) == {target.pid: 0}


def test_dump_into_container_never_follows_the_containers_symlinks_out(
    chrooted: tuple[Target, Path], tmp_path: Path
) -> None:
    target, root = chrooted
    host_dir = tmp_path / "host"
    host_dir.mkdir()
    (root / "tmp" / "out").symlink_to(host_dir)  # absolute: the host's path, which inside the root means nothing
    (root / "tmp" / "etc").symlink_to("/etc")  # absolute: inside the root, its own /etc
    victim = host_dir / "victim"
    victim.write_bytes(b"host data")
    (root / "tmp" / "planted.core").symlink_to(victim)

    with pytest.raises(OutputExists, match="cannot open /tmp/out"):
        api.dump(target.pid, "/tmp/out/x.core", into_container=True)
    assert list(host_dir.iterdir()) == [victim]

    api.dump(target.pid, "/tmp/etc/in-root.core", into_container=True)  # lands in the root's own /etc
    assert (root / "etc" / "in-root.core").is_file() and not Path("/etc/in-root.core").exists()

    api.dump(target.pid, "/../../../../tmp/dotdot.core", into_container=True)  # ".." stops at the root
    assert (root / "tmp" / "dotdot.core").is_file()

    with pytest.raises(OutputExists, match="exists; pass --force"):
        api.dump(target.pid, "/tmp/planted.core", into_container=True)
    api.dump(target.pid, "/tmp/planted.core", into_container=True, force=True)  # replaces the link, not its target
    assert victim.read_bytes() == b"host data" and not (root / "tmp" / "planted.core").is_symlink()
    assert victim.stat().st_uid == os.getuid()  # never chowned to the container's user
    assert state(target.pid) == "S" and tracer_pids(target.pid) == {target.pid: 0}


def test_dump_into_container_takes_name_and_compress_and_reports_the_file_it_wrote(
    chrooted: tuple[Target, Path],
) -> None:
    """--into-container with --name (FILE the directory there, /tmp by default) and --compress; the sizes reported
    are the container's file's (not a host path of the same name); - is refused, as a stream has no place there."""
    need_tools("zstd")
    target, root = chrooted
    result = run_cli("dump", str(target.pid), "--into-container", "--name", "{name}_{container}_{pid}.core",
                     "--compress", "zstd", "-o", "json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    [made] = (root / "tmp").glob(f"*_host_{target.pid}.core.zst")
    st = made.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (65534, 65534, 0o600)
    record = json.loads(result.stdout)["results"][0]
    assert record["file"] == f"/proc/{target.pid}/root/tmp/{made.name}"
    assert record["output"]["compression"] == "zstd" and record["output"]["written_bytes"] == st.st_size
    core = subprocess.run(["zstd", "-q", "-d", "-c", str(made)], capture_output=True, check=True).stdout
    assert core[:4] == b"\x7fELF" and len(core) == record["output"]["core_bytes"]

    outputs: list[DumpOutput] = []
    api.dump(target.pid, "/tmp/sparse.core", into_container=True, written=outputs.append)
    sparse = (root / "tmp" / "sparse.core").stat()
    assert not Path("/tmp/sparse.core").exists()
    assert (outputs[0].core_bytes, outputs[0].allocated_bytes) == (sparse.st_size, sparse.st_blocks * 512)

    for args in (("-",), ("--name", "-")):
        refused = run_cli("dump", str(target.pid), *args, "--into-container")
        assert refused.returncode == ExitCode.USAGE and "does not stream to stdout" in refused.stderr, refused.stderr
        assert refused.stderr.count("\n") == 1 and refused.stdout == ""
    with pytest.raises(UsageError, match="not a stream"):
        api.dump(target.pid, 1, into_container=True)
    assert state(target.pid) == "S" and tracer_pids(target.pid) == {target.pid: 0}


def test_dump_names_its_core_after_the_container(tmp_path: Path) -> None:
    with fake_container("docker-{id}.scope") as box:
        result = run_cli("dump", f"container:{box.id[:12]}", str(tmp_path), "--name", "{container}_{pid}.core")
        assert result.returncode == 0, result.stderr
        assert [p.name for p in tmp_path.iterdir()] == [f"{box.id[:12]}_{box.init_pid}.core"]


def test_without_openat2_the_path_walk_refuses_every_symlink_and_dotdot(tmp_path: Path) -> None:
    """The fallback where openat2 is filtered: stricter than RESOLVE_IN_ROOT, never looser."""
    from pss_cli.platform.linux import inroot

    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "a")
    root_fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        fd = inroot._walk_without_symlinks(root_fd, "/a/./b/", str(tmp_path), None)
        assert os.path.samestat(os.fstat(fd), (tmp_path / "a" / "b").stat())
        os.close(fd)
        for bad, reason in (("/link/b", "without following a symlink"), ("/a/../a", "'..' is refused")):
            with pytest.raises(OutputExists, match=reason):
                inroot._walk_without_symlinks(root_fd, bad, str(tmp_path), None)
    finally:
        os.close(root_fd)


def test_watch_names_its_core_after_the_container(tmp_path: Path) -> None:
    with fake_container("docker-{id}.scope") as box:
        result = run_cli("watch", f"container:{box.id[:12]}", "--dump", str(tmp_path), "--name",
                         "{container}_{pid}.core", "-o", "jsonl")  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert [p.name for p in tmp_path.iterdir()] == [f"{box.id[:12]}_{box.init_pid}.core"]


def test_the_container_variable_names_a_runtime_without_an_id(spawn: Callable[..., Target]) -> None:
    """podman and systemd-nspawn set container= for a container's init; a cgroup path that names none leaves that."""
    target = spawn(
        [sys.executable, "-c", "print('ready', flush=True); input()"], env={**os.environ, "container": "podman"}
    )
    target.expect("ready")
    where = api.capture(target.pid, CaptureFlags.NONE).process.location
    assert where is not None and where.container is not None
    assert (where.container.runtime, where.container.id, where.container.source) == ("podman", None, "environ")
    assert backend().container_of(target.pid) == where.container
    row = run_cli("ps", "--parent", str(os.getpid()))
    assert row.returncode == 0 and "(podman)" in row.stdout


def test_attached_watch_dumps_a_process_in_a_pid_namespace_from_its_clone(
    spawn: Callable[..., Target], tmp_path: Path
) -> None:
    """watch --on-signal makes its VA clone on the watch's own tracer thread: the clone it registers, holds and
    copies is the one that tracer sees (PTRACE_GETEVENTMSG), not clone()'s PID in the container's namespace, and
    the source reaps it by the PID it knows."""
    with fake_container("docker-{id}.scope") as box:
        w = spawn([PSS_DUP, "watch", str(box.sibling_pid), "--on-signal", "WINCH", "--dump", str(tmp_path),
                   "--clone-method", "clone", "-o", "jsonl"])  # fmt: skip
        w.event("started")
        os.kill(box.sibling_pid, signal.SIGWINCH)  # ignored by the sleeper: it runs on once let go
        finished = w.event("finished", 30)
        assert w.proc.wait(timeout=10) == finished["exit_code"] == 0, w.seen
        (action,) = [e for e in w.seen if isinstance(e, dict) and e.get("event") == "action"]
        assert action["method"] == "va-clone", action
        noted = elfcore.read_snapshot(Path(action["file"]).read_bytes()).process.location
        assert noted is not None and noted.ns_pids == (box.sibling_pid, box.sibling_ns_pid)
        assert children_of(box.sibling_pid) == []  # the clone was reaped in the source
        assert state(box.sibling_pid) in ("S", "R") and tracer_pids(box.sibling_pid) == {box.sibling_pid: 0}

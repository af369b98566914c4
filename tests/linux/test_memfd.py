"""The sealed memfd container: what sealing forbids, what verification refuses, and a receiver in another process."""

from __future__ import annotations

import errno
import fcntl
import json
import mmap
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pss_cli import serial
from pss_cli.errors import BadSnapshot, NoSuchHandle
from pss_cli.model import Snapshot
from pss_cli.platform.linux import elfcore, memfd
from pss_cli.platform.linux.elfcore import LoadSegment
from tests.linux import core_samples as cs

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="memfd is Linux")

F_SEAL_EXEC = 0x20


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def snapshot_fd() -> Iterator[tuple[int, Snapshot]]:
    snap = cs.snapshot(3)
    layout = elfcore.plan_core(snap, cs.auxv())
    fd = memfd.create_sealed(layout, lambda buf: elfcore.write_core(buf, layout))
    try:
        yield fd, snap
    finally:
        os.close(fd)


@pytest.fixture
def unsealed_core_fd() -> Iterator[int]:
    """A memfd holding a valid pss-dup core, sealable but not sealed."""
    fd = os.memfd_create("pss-snapshot", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.write(fd, elfcore.render_core(cs.snapshot(1)))
        yield fd
    finally:
        os.close(fd)


def test_created_snapshot_is_a_cloexec_memfd_with_every_seal(snapshot_fd: tuple[int, Snapshot]) -> None:
    fd, snap = snapshot_fd
    assert os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:pss-snapshot")
    assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    assert seals & memfd.SNAPSHOT_SEALS == memfd.SNAPSHOT_SEALS
    assert seals & F_SEAL_EXEC  # MFD_NOEXEC_SEAL: this kernel (6.3+) has it
    assert os.fstat(fd).st_mode & 0o111 == 0
    memfd.verify_snapshot_fd(fd)
    assert memfd.read_snapshot_fd(fd) == snap


def test_sealed_snapshot_cannot_be_changed(snapshot_fd: tuple[int, Snapshot]) -> None:
    fd, _ = snapshot_fd
    size = os.fstat(fd).st_size
    attempts: dict[str, Callable[[], object]] = {
        "write": lambda: os.pwrite(fd, b"x", 0),
        "append": lambda: os.pwrite(fd, b"x", size),
        "shrink": lambda: os.ftruncate(fd, 64),
        "grow": lambda: os.ftruncate(fd, size + 4096),
        "map writable": lambda: mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE),
        "unseal": lambda: fcntl.fcntl(fd, fcntl.F_ADD_SEALS, 0),
        "allocate": lambda: os.posix_fallocate(fd, 0, size + 4096),
    }
    for what, attempt in attempts.items():
        with pytest.raises(OSError) as info:
            attempt()
        assert info.value.errno == errno.EPERM, what
    assert os.fstat(fd).st_size == size
    assert memfd.read_snapshot_fd(fd) == cs.snapshot(3)


def test_verify_refuses_an_unsealed_memfd(unsealed_core_fd: int) -> None:
    with pytest.raises(BadSnapshot, match=r"not sealed \(missing seals F_SEAL_SEAL\|F_SEAL_SHRINK\|F_SEAL_GROW"):
        memfd.verify_snapshot_fd(unsealed_core_fd)
    with pytest.raises(BadSnapshot, match="not sealed"):
        memfd.read_snapshot_fd(unsealed_core_fd)


def test_verify_refuses_a_partly_sealed_memfd(unsealed_core_fd: int) -> None:
    fcntl.fcntl(unsealed_core_fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    with pytest.raises(BadSnapshot, match=r"missing seals F_SEAL_SEAL\|F_SEAL_WRITE\)$"):
        memfd.verify_snapshot_fd(unsealed_core_fd)


def test_verify_refuses_a_regular_file_holding_a_valid_core(tmp_path: Path) -> None:
    path = tmp_path / "snap.core"
    path.write_bytes(elfcore.render_core(cs.snapshot(1)))
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with pytest.raises(BadSnapshot, match=r"not a memfd \('/.*snap.core'\)"):
            memfd.verify_snapshot_fd(fd)
    finally:
        os.close(fd)


def test_verify_refuses_a_pipe_a_socket_and_a_closed_fd() -> None:
    read_end, write_end = os.pipe()
    left, right = socket.socketpair()
    try:
        with pytest.raises(BadSnapshot, match=r"not a regular file \(a pipe\)"):
            memfd.verify_snapshot_fd(read_end)
        with pytest.raises(BadSnapshot, match=r"not a regular file \(a socket\)"):
            memfd.verify_snapshot_fd(left.fileno())
    finally:
        os.close(read_end)
        os.close(write_end)
        left.close()
        right.close()
    with pytest.raises(NoSuchHandle, match="is not an open file descriptor"):
        memfd.verify_snapshot_fd(read_end)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\0" * 4096, "not an ELF file"),
        (cs.build_core([(b"CORE", elfcore.NT_PRPSINFO, bytes(136))]), "no PSSDUP version note"),
        (b"\x7fELF", "too short for an ELF core"),
    ],
)
def test_verify_refuses_a_sealed_memfd_that_is_not_a_snapshot(content: bytes, message: str) -> None:
    fd = os.memfd_create("pss-snapshot", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.write(fd, content)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, memfd.SNAPSHOT_SEALS)
        with pytest.raises(BadSnapshot, match=message):
            memfd.verify_snapshot_fd(fd)
    finally:
        os.close(fd)


def test_verify_reads_headers_only(snapshot_fd: tuple[int, Snapshot]) -> None:
    """A snapshot whose model note is corrupt still passes the cheap check, and fails the full parse."""
    fd, _ = snapshot_fd
    notes = cs.notes_of(os.pread(fd, os.fstat(fd).st_size, 0))
    core = cs.build_core(cs.replace_note(notes, elfcore.PSSDUP_OWNER, elfcore.NT_PSSDUP_MODEL, b"{"))
    layout = elfcore.CoreLayout(core, 0, 0, (), len(core))
    bad = memfd.create_sealed(layout, lambda buf: elfcore.write_core(buf, layout))
    try:
        memfd.verify_snapshot_fd(bad)
        with pytest.raises(BadSnapshot, match=rf"^fd {bad}: not a valid pss-dup snapshot: model note"):
            memfd.read_snapshot_fd(bad)
    finally:
        os.close(bad)


def test_fd_is_closed_when_filling_fails() -> None:
    layout = elfcore.plan_core(cs.snapshot(1))
    before = open_fds()

    def explode(buf: mmap.mmap) -> None:
        raise RuntimeError("copy failed")

    with pytest.raises(RuntimeError, match="copy failed"):
        memfd.create_sealed(layout, explode)
    assert open_fds() == before


def test_memory_segments_fill_a_prefaulted_memfd_in_place() -> None:
    snap = cs.snapshot(2)
    mib = 1 << 20
    segments = [LoadSegment(0x7F00_0000_0000 + i * 16 * mib, 8 * mib, 6, 8 * mib) for i in range(4)]
    layout = elfcore.plan_core(snap, cs.auxv(), segments)

    def fill(segment: LoadSegment, view: memoryview) -> None:
        view[:] = (segment.vaddr >> 24).to_bytes(8, "little") * (len(view) // 8)

    fd = memfd.create_sealed(layout, lambda buf: elfcore.write_core(buf, layout, fill), prefault=True)
    try:
        assert os.fstat(fd).st_size == layout.size
        parsed = memfd.read_core_fd(fd)
        assert parsed.snapshot == snap
        assert [p.segment for p in parsed.loads] == segments
        for p in parsed.loads:
            head = os.pread(fd, 8, p.offset)
            tail = os.pread(fd, 8, p.offset + p.segment.filesz - 8)
            assert head == tail == (p.segment.vaddr >> 24).to_bytes(8, "little")
    finally:
        os.close(fd)


RECEIVER = """
import json, sys
from pss_cli import serial
from pss_cli.platform.linux import memfd
snap = memfd.read_snapshot_fd(int(sys.argv[1]))
print(json.dumps(serial.to_dict(snap)))
"""


def test_another_process_reads_the_snapshot_it_was_handed(snapshot_fd: tuple[int, Snapshot]) -> None:
    fd, snap = snapshot_fd
    child = subprocess.run(
        [sys.executable, "-c", RECEIVER, str(fd)], pass_fds=(fd,), capture_output=True, text=True, timeout=60
    )
    assert child.returncode == 0, child.stderr
    assert serial.from_dict(Snapshot, json.loads(child.stdout)) == snap


def test_receiver_cannot_write_the_snapshot_either(snapshot_fd: tuple[int, Snapshot]) -> None:
    fd, _ = snapshot_fd
    code = "import os, sys\ntry:\n    os.pwrite(int(sys.argv[1]), b'x', 0)\nexcept PermissionError:\n    print('EPERM')"
    child = subprocess.run(
        [sys.executable, "-c", code, str(fd)], pass_fds=(fd,), capture_output=True, text=True, timeout=60
    )
    assert child.stdout.strip() == "EPERM"

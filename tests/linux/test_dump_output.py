"""What `pss-dup dump` writes and where: zero pages as holes of a sparse file, a zstd frame that `zstd -d` reads, a
stream to stdout through a pipe (never to a terminal), and names from --name templates; gdb reads every core."""

from __future__ import annotations

import json
import os
import pty
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PSS_DUP, need_tools, proc_status
from tests.linux.conftest import children_of, drain_terminal

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux only")

if sys.platform == "linux":
    from pss_cli.platform.linux import copyengine, elfcore

#: A known value on a page of its own right after a large region that is touched but zero (calloc, then memset 0,
#: as a JVM pre-touches its heap); a pointer into that region; a global.
ZEROS_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
long known_global = 0x5eed1234;
unsigned char *zeros;
char *beside;
int main(void) {
    size_t size = 32u << 20;
    zeros = aligned_alloc(4096, size + 4096);
    memset(zeros, 0, size);
    beside = (char *)zeros + size;
    strcpy(beside, "known value beside the zeros");
    printf("ready\n");
    fflush(stdout);
    char line[8];
    while (fgets(line, sizeof line, stdin)) {}
    return 0;
}
"""
ZERO_BYTES = 32 << 20


@pytest.fixture(scope="module")
def zeros_exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_tools("gcc", "gdb")
    work = tmp_path_factory.mktemp("zeros")
    (work / "zeros.c").write_text(ZEROS_C)
    subprocess.run(["gcc", "-g", "-O0", "-o", str(work / "zeros"), str(work / "zeros.c")], check=True)
    return work / "zeros"


@pytest.fixture
def target(zeros_exe: Path) -> Iterator[subprocess.Popen[str]]:
    """The target, without glibc's rseq registration: the kernel writes the CPU a thread last ran on into its rseq
    area, so two dumps of an idle process would differ there (the injected clone makes the thread run)."""
    env = {**os.environ, "GLIBC_TUNABLES": "glibc.pthread.rseq=0"}
    proc = subprocess.Popen([str(zeros_exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()
        assert children_of(proc.pid) == []


def pss_dup(*args: str, cwd: Path | None = None, shell: bool = False) -> subprocess.CompletedProcess[str]:
    command: Any = " ".join(args) if shell else [PSS_DUP, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=cwd, shell=shell)


def json_record(text: str) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(text)["results"][0]
    return record


def gdb_reads(exe: Path, core: Path) -> str:
    """What gdb prints of the known values and of two places inside the zero region."""
    commands = ["print known_global", "print beside", "print zeros[0]", "print zeros[12345678]"]
    argv = ["gdb", "-nx", "-batch", "-ex", "set debuginfod enabled off"]
    for command in commands:
        argv += ["-ex", command]
    result = subprocess.run([*argv, str(exe), str(core)], capture_output=True, text=True, timeout=120)
    return result.stdout + result.stderr


def assert_gdb_reads_the_values(exe: Path, core: Path) -> None:
    out = gdb_reads(exe, core)
    assert "$1 = 1592594996" in out, out  # 0x5eed1234
    assert '"known value beside the zeros"' in out, out
    assert "$3 = 0 '\\000'" in out and "$4 = 0 '\\000'" in out, out
    assert "Cannot access memory" not in out, out


def memory_of(core: Path) -> dict[int, bytes]:
    """Each PT_LOAD's bytes, by address."""
    data = core.read_bytes()
    loads = elfcore.read_core(data).loads
    return {p.segment.vaddr: data[p.offset : p.offset + p.segment.filesz] for p in loads if p.segment.filesz}


@pytest.mark.parametrize("method", ["clone", "copy"])
def test_zero_pages_are_holes_and_gdb_reads_them_as_zeros(
    target: subprocess.Popen[str], zeros_exe: Path, tmp_path: Path, method: str
) -> None:
    core = tmp_path / "sparse.core"
    result = pss_dup("dump", str(target.pid), str(core), "--clone-method", method, "-o", "json")
    assert result.returncode == 0, result.stderr
    st = core.stat()
    output = json_record(result.stdout)["output"]
    assert output["core_bytes"] == output["written_bytes"] == st.st_size > ZERO_BYTES
    assert output["allocated_bytes"] == st.st_blocks * 512
    assert st.st_blocks * 512 < st.st_size - ZERO_BYTES, "the zero region takes no room on disk"
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert_gdb_reads_the_values(zeros_exe, core)


def test_sparse_writes_skip_exactly_the_zero_pages(tmp_path: Path) -> None:
    """Page by page: a zero page is a hole; a page that holds one byte of data, first, last or where no sample
    looks, is written; the file reads back as the buffer."""
    page = copyengine.PAGE_SIZE
    zero, late, early = bytes(page), bytes(page - 1) + b"y", b"z" + bytes(page - 1)
    unsampled = bytes(100) + b"w" + bytes(page - 101)  # no sampled byte holds it: memcmp finds it
    kinds = [zero, b"x" * page, late, zero, zero, early, unsampled, zero]
    data = b"".join(kinds)
    path = tmp_path / "sparse"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, len(data) + page)
        with copyengine.FdSink(fd, bounce=len(data), sparse=True) as sink:
            _, view = sink.window(page, len(data))
            view[:] = data
            sink.commit(page, len(data))
        holes = [not _has_data(fd, page + i * page) for i in range(len(kinds))]
    finally:
        os.close(fd)
    assert path.read_bytes() == bytes(page) + data
    if holes[1]:  # a filesystem that reports no holes at all (SEEK_DATA unsupported) cannot show them
        pytest.skip("this filesystem reports no holes")
    assert holes == [True, False, False, True, True, False, False, True]


def _has_data(fd: int, offset: int) -> bool:
    try:
        return os.lseek(fd, offset, os.SEEK_DATA) == offset
    except OSError:  # ENXIO: only a hole from here on
        return False


def test_a_compressed_core_is_a_zstd_frame_holding_the_same_memory_as_a_stream_to_stdout(
    target: subprocess.Popen[str], zeros_exe: Path, tmp_path: Path
) -> None:
    need_tools("zstd")
    compressed = pss_dup("dump", str(target.pid), str(tmp_path / "c.core"), "--compress", "zstd", "-o", "json")
    assert compressed.returncode == 0, compressed.stderr
    zst = tmp_path / "c.core.zst"
    output = json_record(compressed.stdout)["output"]
    assert output["compression"] == "zstd" and output["written_bytes"] == zst.stat().st_size
    assert output["ratio"] > 20 and stat.S_IMODE(zst.stat().st_mode) == 0o600
    subprocess.run(["zstd", "-q", "-d", str(zst), "-o", str(tmp_path / "c.core")], check=True)
    assert (tmp_path / "c.core").stat().st_size == output["core_bytes"]
    plain = tmp_path / "plain.core"
    piped = pss_dup(PSS_DUP, "dump", str(target.pid), "-", "|", "cat", ">", str(plain), shell=True)
    assert piped.returncode == 0, piped.stderr
    # The same static process, the same layout: the same memory (the notes differ in times only).
    assert memory_of(tmp_path / "c.core") == memory_of(plain)
    assert_gdb_reads_the_values(zeros_exe, tmp_path / "c.core")


def test_a_core_streamed_through_a_pipe_opens_in_gdb_and_the_report_goes_to_stderr(
    target: subprocess.Popen[str], zeros_exe: Path, tmp_path: Path
) -> None:
    core = tmp_path / "piped.core"
    result = pss_dup(PSS_DUP, "dump", str(target.pid), "-", "-o", "json", "|", "cat", ">", str(core), shell=True)
    assert result.returncode == 0, result.stderr
    record = json_record(result.stderr)
    assert record["file"] is None and record["output"]["streamed"] is True
    assert record["output"]["written_bytes"] == core.stat().st_size
    assert_gdb_reads_the_values(zeros_exe, core)
    assert list(tmp_path.iterdir()) == [core]


def test_a_compressed_stream_decompresses_to_a_core_gdb_reads(
    target: subprocess.Popen[str], zeros_exe: Path, tmp_path: Path
) -> None:
    need_tools("zstd")
    core = tmp_path / "z.core"
    result = pss_dup(PSS_DUP, "dump", str(target.pid), "--name", "-", "--compress", "zstd", "|", "zstd", "-q", "-d",
                     "-o", str(core), shell=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert_gdb_reads_the_values(zeros_exe, core)


def test_streaming_to_a_terminal_is_refused_before_the_process_is_touched(
    target: subprocess.Popen[str], tmp_path: Path
) -> None:
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen([PSS_DUP, "dump", str(target.pid), "-"], stdout=follower, stderr=subprocess.PIPE,
                                text=True, cwd=tmp_path)  # fmt: skip
        os.close(follower)
        follower = -1
        _, err = proc.communicate(timeout=60)
        drawn = drain_terminal(leader)
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    assert proc.returncode == 2
    assert err.startswith("pss-dup: ") and "terminal" in err and err.count("\n") == 1, err
    assert drawn == b""
    assert list(tmp_path.iterdir()) == []
    status = proc_status(target.pid)
    assert status["TracerPid"] == "0" and status["State"][0] not in "tT"


def test_name_templates_make_safe_0600_files_and_never_replace_one_without_force(
    target: subprocess.Popen[str], tmp_path: Path
) -> None:
    pid = target.pid
    first = pss_dup("dump", str(pid), "--name", "{name}-{pid}-{trigger}.core", "-o", "json", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    made = tmp_path / f"zeros-{pid}-manual.core"
    assert json_record(first.stdout)["file"] == str(made)
    assert stat.S_IMODE(made.stat().st_mode) == 0o600
    size = made.stat().st_size
    again = pss_dup("dump", str(pid), "--name", "{name}-{pid}-{trigger}.core", cwd=tmp_path)
    assert again.returncode == 9 and "--force" in again.stderr and made.stat().st_size == size
    forced = pss_dup("dump", str(pid), "--name", "{name}-{pid}-{trigger}.core", "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert stat.S_IMODE(made.stat().st_mode) == 0o600
    into = tmp_path / "dir"
    into.mkdir()
    placed = pss_dup("dump", str(pid), str(into), "--name", "{host}_{time}.core", "--compress", "zstd", "-o", "json")
    assert placed.returncode == 0, placed.stderr
    [named] = into.iterdir()
    assert named.name.endswith(".core.zst") and json_record(placed.stdout)["file"] == str(named)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([made.name, "dir"])


@pytest.mark.parametrize(
    "template", ["../{name}.core", "{name}/x", "{name:/>70}", "{pid!r}", "a b{pid}", ".{pid}", "-x{pid}", "{n}", "{}"]
)
def test_unsafe_or_unknown_templates_are_refused_with_one_line_and_exit_2(
    target: subprocess.Popen[str], tmp_path: Path, template: str
) -> None:
    result = pss_dup("dump", str(target.pid), "--name", template, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("pss-dup: ") and result.stderr.count("\n") == 1, result.stderr
    assert list(tmp_path.iterdir()) == []

"""The output file of `dump` (pss_cli.outfile), on both of its paths: an unnamed file linked into place (Linux's
O_TMPFILE), and a named one created exclusively or beside the old file and renamed (Windows, and filesystems
without O_TMPFILE)."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from pss_cli.errors import OutputExists
from pss_cli.outfile import OutputFile

PATHS = ["unnamed", "named"] if sys.platform == "linux" else ["named"]


@pytest.fixture(params=PATHS)
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which path OutputFile takes. A kernel without O_TMPFILE sees only its O_DIRECTORY bit and answers EISDIR, which
    O_DIRECTORY alone draws from this kernel too: the named path, as Windows takes it."""
    if request.param == "named" and sys.platform == "linux":
        monkeypatch.setattr(os, "O_TMPFILE", os.O_DIRECTORY)
    return str(request.param)


def test_an_output_file_is_0600_and_never_replaces_a_file_without_force(tmp_path: Path, way: str) -> None:
    path = tmp_path / "x.core"
    with OutputFile(path, force=False) as out:
        os.write(out.fd, b"first")
        assert not path.exists() or way == "named", "the unnamed file has no name before it is complete"
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(OutputExists, match="exists; pass --force"), OutputFile(path, force=False):
        pass
    assert path.read_bytes() == b"first"
    with OutputFile(path, force=True) as out:
        os.write(out.fd, b"second")
        assert path.read_bytes() == b"first", "the old file stays whole until the new one is"
    assert path.read_bytes() == b"second"
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.core"]


def test_a_failed_write_leaves_neither_a_partial_file_nor_a_damaged_old_one(tmp_path: Path, way: str) -> None:
    path = tmp_path / "x.core"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), OutputFile(path, force=True) as out:
        os.write(out.fd, b"half")
        raise RuntimeError("copy failed")
    assert path.read_bytes() == b"old"
    with pytest.raises(RuntimeError), OutputFile(tmp_path / "new.core", force=False):
        raise RuntimeError("copy failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.core"]


def test_a_directory_is_never_an_output_file(tmp_path: Path, way: str) -> None:
    with pytest.raises(OutputExists, match="is a directory"), OutputFile(tmp_path, force=True):
        pass


def test_the_file_is_open_for_reading_back_what_was_written(tmp_path: Path, way: str) -> None:
    """A writer may read its output back before it is named (the Windows dump reads its minidump's memory list)."""
    with OutputFile(tmp_path / "x.dmp", force=False) as out:
        os.write(out.fd, b"MDMP and more")
        os.lseek(out.fd, 0, os.SEEK_SET)
        assert os.read(out.fd, 4) == b"MDMP"

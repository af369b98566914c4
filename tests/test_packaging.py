"""The wheel that `pip install .` builds: what a user gets is checked in the built archive, not in pyproject.toml."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import tomllib
import zipfile
from email.message import Message
from email.parser import HeaderParser
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pss_cli._version import __version__

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
#: Where each shell looks for a completion script once the wheel's data is installed under a prefix.
SHARE = {
    "pss-dup.bash": "share/bash-completion/completions/pss-dup",
    "_pss-dup": "share/zsh/site-functions/_pss-dup",
    "pss-dup.fish": "share/fish/vendor_completions.d/pss-dup.fish",
    "pss-dup.ps1": "share/pss-dup/completions/pss-dup.ps1",
}


class Wheel:
    """A built wheel, read the way an installer reads it."""

    def __init__(self, path: Path) -> None:
        self.zip = zipfile.ZipFile(path)
        self.names = set(self.zip.namelist())
        (self.dist_info,) = {n.split("/")[0] for n in self.names if n.split("/")[0].endswith(".dist-info")}
        self.data = self.dist_info.removesuffix(".dist-info") + ".data/data/"

    def read(self, name: str) -> bytes:
        return self.zip.read(name)

    def metadata(self) -> Message:
        return HeaderParser().parsestr(self.read(f"{self.dist_info}/METADATA").decode())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Wheel:
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (path,) = out.glob("*.whl")
    return Wheel(path)


def tracked(under: str) -> set[str]:
    listing = subprocess.run(["git", "ls-files", under], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(listing.stdout.split())


def test_the_console_script_names_a_callable_main(wheel: Wheel) -> None:
    entry_points = wheel.read(f"{wheel.dist_info}/entry_points.txt").decode().splitlines()
    section = entry_points[entry_points.index("[console_scripts]") + 1 :]
    scripts = dict(line.replace(" ", "").split("=") for line in section if "=" in line)
    assert list(scripts) == ["pss-dup"]
    module, _, attr = scripts["pss-dup"].partition(":")
    assert callable(getattr(importlib.import_module(module), attr))


def test_each_completion_script_lands_where_its_shell_looks(wheel: Wheel) -> None:
    shared = {name.removeprefix(wheel.data) for name in wheel.names if name.startswith(wheel.data)}
    assert shared == set(SHARE.values())
    for script, where in SHARE.items():
        assert wheel.read(wheel.data + where) == (ROOT / "completions" / script).read_bytes(), script


def test_the_wheel_holds_every_package_file_and_nothing_else(wheel: Wheel) -> None:
    package = {n for n in wheel.names if not n.startswith((wheel.dist_info + "/", wheel.data))}
    assert package == tracked("pss_cli")
    assert "pss_cli/py.typed" in package


def test_metadata_declares_every_third_party_module_the_package_imports(wheel: Wheel) -> None:
    metadata = wheel.metadata()
    runtime = {  # what this Python needs: markers such as python_version < '3.14' are evaluated, extras left out
        canonicalize_name(r.name)
        for r in map(Requirement, metadata.get_all("Requires-Dist", []))
        if r.marker is None or r.marker.evaluate({"extra": ""})
    }
    assert runtime == {
        canonicalize_name(r.name)
        for r in map(Requirement, PROJECT["dependencies"])
        if r.marker is None or r.marker.evaluate()
    }
    imported: set[str] = set()
    for source in tracked("pss_cli"):
        if source.endswith(".py"):
            for node in ast.walk(ast.parse((ROOT / source).read_text())):
                if isinstance(node, ast.Import):
                    imported.update(alias.name.partition(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported.add(node.module.partition(".")[0])
    # compression (compression.zstd) is the standard library's from 3.14 on, imported only there.
    third_party = imported - set(sys.stdlib_module_names) - {"pss_cli", "compression"}
    distributions = packages_distributions()
    assert {canonicalize_name(distributions[module][0]) for module in third_party} == runtime


def test_metadata_carries_the_license_version_and_python(wheel: Wheel) -> None:
    metadata = wheel.metadata()
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert wheel.read(f"{wheel.dist_info}/licenses/LICENSE") == (ROOT / "LICENSE").read_bytes()
    assert b"MIT License" in (ROOT / "LICENSE").read_bytes()
    assert metadata["Version"] == __version__
    assert metadata["Requires-Python"] == PROJECT["requires-python"]

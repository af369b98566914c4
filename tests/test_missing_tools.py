"""A test whose tool is missing skips on a developer's machine and fails under CI (CI=true), where a skipped proof
would pass unnoticed; the hypothesis profile follows the same variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INNER = """
from hypothesis import settings
from tests.conftest import need_tools

def test_profile():
    print("max_examples", settings.default.max_examples)

def test_uses_a_tool():
    need_tools("pss-dup-no-such-tool")
"""


def run_inner(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    """A pytest run of INNER with CI set to `ci` (or unset), importing the suite's tests/conftest.py."""
    (tmp_path / "test_inner.py").write_text(INNER)
    env = {name: value for name, value in os.environ.items() if name != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-rsf", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("ci", [None, "false"])
def test_a_missing_tool_skips_outside_ci_with_fewer_examples(tmp_path: Path, ci: str | None) -> None:
    result = run_inner(tmp_path, ci)
    assert result.returncode == 0, result.stdout
    assert "1 passed, 1 skipped" in result.stdout
    assert "needs pss-dup-no-such-tool" in result.stdout
    assert "max_examples 30" in result.stdout


@pytest.mark.parametrize("ci", ["true"])
def test_a_missing_tool_fails_under_ci_with_the_full_example_count(tmp_path: Path, ci: str) -> None:
    result = run_inner(tmp_path, ci)
    assert result.returncode == 1, result.stdout
    assert "1 failed, 1 passed" in result.stdout
    assert "needs pss-dup-no-such-tool (CI=true: install it in .ci/run)" in result.stdout
    assert "max_examples 300" in result.stdout

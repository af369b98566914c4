"""`.ci/run` is the project's CI: README's test command and the GitHub workflow install, check and run what it does."""

from __future__ import annotations

import re
from pathlib import Path

from tests.test_readme import apt_get_prefix, fenced_blocks

ROOT = Path(__file__).resolve().parent.parent
CI_RUN = (ROOT / ".ci" / "run").read_text()
WORKFLOW = (ROOT / ".github" / "workflows" / "ci.yml").read_text()
CHECKERS = (".venv/bin/ruff ", ".venv/bin/mypy ")


def ci_steps() -> list[str]:
    """.ci/run's commands, one a line, without comments."""
    return [line.strip() for line in CI_RUN.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def ci_packages() -> list[str]:
    (loop,) = [step for step in ci_steps() if step.startswith("for pkg in ")]
    return loop.removeprefix("for pkg in ").partition(";")[0].split()


def workflow_job(name: str) -> list[str]:
    """The lines of one job of the workflow (two-space indented job names under `jobs:`)."""
    jobs = WORKFLOW.partition("\njobs:\n")[2]
    body = re.split(r"^  (?=\S)", jobs, flags=re.M)
    (job,) = [part for part in body if part.startswith(f"{name}:")]
    return [line.strip() for line in job.splitlines()]


def test_readme_test_command_installs_and_runs_what_ci_run_does() -> None:
    (command,) = [b.strip() for b in fenced_blocks("bash") if "-m pytest" in b and "apt-get" in b]
    packages, rest = apt_get_prefix(command)
    assert packages == ci_packages()
    steps = rest.split(" && ")
    assert [step for step in ci_steps() if step in steps] == steps, "each step of README's command, in order"
    assert ci_steps()[-1] == steps[-1] == ".venv/bin/python -m pytest"
    (development,) = [b.strip() for b in fenced_blocks("bash") if b.startswith("python3 -m venv")]
    assert development == rest


def test_the_linux_workflow_job_installs_lints_type_checks_and_tests_like_ci_run() -> None:
    job = workflow_job("linux")
    assert [line for line in job if line.startswith(CHECKERS)] == [s for s in ci_steps() if s.startswith(CHECKERS)]
    (install,) = [line for line in job if "apt-get install" in line]
    assert install.split("--no-install-recommends")[1].split() == ci_packages()
    assert [line for line in job if "-m pytest" in line] == [f"run: sudo -E {ci_steps()[-1]}"]


def test_ci_run_checks_formatting_and_types_of_everything_it_lints() -> None:
    (lint,) = [s for s in ci_steps() if s.startswith(".venv/bin/ruff check ")]
    paths = lint.removeprefix(".venv/bin/ruff check ")
    assert f".venv/bin/ruff format --check {paths}" in ci_steps()
    assert f".venv/bin/mypy {paths}" in ci_steps()
    assert "CI=true" in next(s for s in ci_steps() if s.startswith("export "))

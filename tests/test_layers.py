"""The package's layers, read from the source with ast: cli -> api -> platform -> OS, render beside cli, model below.

Every import counts, at any depth (inside functions, under TYPE_CHECKING): a layer that reaches upwards only at type
checking time still ties the lower layer to the upper one.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pss_cli"
#: What pss_cli/cli may import of the package: the API, the shared records and errors, and the views.
CLI_MAY_IMPORT = ("pss_cli.api", "pss_cli.errors", "pss_cli.model", "pss_cli.render", "pss_cli.cli",
                  "pss_cli._version", "pss_cli.interrupts",
                  "pss_cli.watch",  # the watch rules: records and pure threshold logic, no I/O, as model
                  "pss_cli.naming",  # file names from templates: pure string logic, as watch
                  "pss_cli.compress")  # the --compress choices; its compressor loads zstd only when called  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(*roots: str) -> list[Path]:
    """The .py files of the package under each root (a directory or one file, relative to pss_cli/)."""
    found: list[Path] = []
    for root in roots:
        path = PACKAGE / root
        found.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    assert found, roots
    return found


def imported(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) for every import in the file; `from a import b` names a.b when b is a module of the package."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                as_path = PACKAGE.parent / candidate.replace(".", "/")
                is_module = as_path.with_suffix(".py").exists() or (as_path / "__init__.py").exists()
                yield node.lineno, candidate if is_module else base


def under(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}"
        for path in paths
        for line, name in imported(path)
        if under(name, *forbidden)
    ]


def test_the_import_walker_sees_imports_at_any_depth() -> None:
    """The walker itself: an import inside a function and one under TYPE_CHECKING are both found."""
    probe = PACKAGE / "render" / "jsonout.py"
    names = {name for _, name in imported(probe)}
    assert "pss_cli.render.console" in names  # under TYPE_CHECKING
    assert "pss_cli.serial" in {name for _, name in imported(PACKAGE / "render" / "report.py")}  # in a function


@pytest.mark.parametrize("root", ["platform", "render", "model.py"])
def test_nothing_below_the_cli_imports_it(root: str) -> None:
    assert violations(modules(root), ("pss_cli.cli",)) == []


def test_no_library_module_imports_the_cli() -> None:
    """The library (api, lookup, doctor, serial, errors...) works without click: only __main__ starts the CLI."""
    library = [p for p in modules(".") if not under(module_name(p), "pss_cli.cli", "pss_cli.__main__")]
    assert violations(library, ("pss_cli.cli",)) == []


def test_the_cli_reaches_below_only_through_the_api() -> None:
    """pss_cli/cli imports the API, the records, the errors and the views: no backend, no lookup, no psutil."""
    bad = [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}"
        for path in modules("cli")
        for line, name in imported(path)
        if (under(name, "pss_cli") and name != "pss_cli" and not under(name, *CLI_MAY_IMPORT)) or under(name, "psutil")
    ]
    assert bad == []


def test_the_cli_reads_no_proc_files() -> None:
    """Reading /proc is the platform's job (procfs), behind the API: no path into /proc is spelled in the CLI."""
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {node.value!r}"
        for path in modules("cli")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("/proc")
    ]
    assert found == []


def test_click_is_imported_only_by_the_cli_and_rich_only_by_the_cli_and_render() -> None:
    outside_cli = [p for p in modules(".") if not under(module_name(p), "pss_cli.cli")]
    assert violations(outside_cli, ("click",)) == []
    below = [p for p in outside_cli if not under(module_name(p), "pss_cli.render")]
    assert violations(below, ("rich",)) == []

"""The package's imports flow one way down its layers, with no cycle, and the core never imports
text (the contracts are in pyproject.toml, [tool.importlinter]; docs/architecture.md draws them)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports(package_parent: Path) -> subprocess.CompletedProcess:
    """lint-imports on the toughen package under ``package_parent``, with the project's contracts."""
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    command = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", command, "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
                          cwd=package_parent, env=env, capture_output=True, text=True, timeout=300)


def cycles(graph) -> list[list[str]]:
    """The import cycles of ``graph``: its strongly connected components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_the_layer_contracts_hold():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_no_module_imports_itself_through_others():
    assert cycles(grimp.build_graph("toughen")) == []


def test_the_cycle_check_finds_a_cycle():
    graph = grimp.build_graph("toughen")
    graph.add_import(importer="toughen.threat", imported="toughen.attacks.pgd")  # pgd imports threat
    assert any({"toughen.threat", "toughen.attacks.pgd"} <= set(c) for c in cycles(graph))


@pytest.mark.parametrize("module, line", [
    ("threat.py", "import toughen.train\n"),  # an upward import
    ("evaluation/suite.py", "import toughen.text\n"),  # the core importing text
])
def test_the_contracts_catch_a_wrong_import(tmp_path, module, line):
    shutil.copytree(ROOT / "toughen", tmp_path / "toughen", ignore=shutil.ignore_patterns("__pycache__"))
    path = tmp_path / "toughen" / module
    path.write_text(path.read_text() + line)
    result = _lint_imports(tmp_path)
    assert result.returncode != 0 and "BROKEN" in result.stdout, result.stdout + result.stderr

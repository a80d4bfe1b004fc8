"""ruff on everything, and flake8-qgis (the QGIS plugin checker) on the plugin."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True)


def test_ruff_passes_on_everything():
    done = _run("ruff", "check", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_flake8_qgis_passes_on_the_plugin():
    done = _run("flake8", "--select=QGS", "remoteclip_qgis")
    assert done.returncode == 0, done.stdout + done.stderr
    # The checker must really be loaded, or the line above proves nothing.
    plugins = _run("flake8", "--version").stdout
    assert "flake8-qgis" in plugins or "flake8_qgis" in plugins, plugins


def test_core_never_imports_qgis_or_torch_and_the_plugin_never_imports_training():
    offenders = []
    for path in (ROOT / "core").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if any(s in text for s in ("import torch", "from torch", "import qgis", "from qgis", "import open_clip")):
            offenders.append(str(path.relative_to(ROOT)))
    for path in (ROOT / "remoteclip_qgis").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if "import training" in text or "from training" in text:
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_core_imports_are_relative_so_it_can_be_vendored_in_the_plugin():
    import ast

    absolute = []
    for path in (ROOT / "core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):   # imports, not docstring examples
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            if any(n == "core" or n.startswith("core.") for n in names):
                absolute.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert absolute == []


def _training_imports() -> dict[str, set[str]]:
    """training module -> the training modules it imports, at the top or inside functions."""
    import ast

    graph = {}
    for path in (ROOT / "training").glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "training":
                    found |= {a.name for a in node.names}
                elif node.module.startswith("training."):
                    found.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("training.")}
        graph[path.stem] = found - {path.stem}
    return graph


def test_training_imports_run_one_way():
    graph = _training_imports()
    assert graph["export"] >= {"checkpoints", "parity"}  # the walk sees imports inside functions
    state: dict[str, str] = {}

    def visit(mod, trail):
        if state.get(mod) == "done":
            return
        assert state.get(mod) != "open", "import cycle: " + " -> ".join(trail + [mod])
        state[mod] = "open"
        for dep in sorted(graph.get(mod, ())):
            visit(dep, trail + [mod])
        state[mod] = "done"

    for mod in sorted(graph):
        visit(mod, [])

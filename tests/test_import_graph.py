"""No import cycles among the project's modules (core/, remoteclip_qgis/, training/): every import counts, those
inside functions too (a function-level import hides a loop, it does not remove it). ``remoteclip_qgis.core.X``
is ``core.X`` (the plugin's zip carries core inside); ``from . import sub`` is an edge to the submodule, not to
the package."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "remoteclip_qgis", "training")


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(current: str, is_package: bool, level: int, name: str | None) -> str:
    if not level:
        return name or ""
    base = current.split(".") if is_package else current.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def import_graph(root: Path, packages=PACKAGES) -> dict[str, set[str]]:
    """Module -> the project's modules it imports (anywhere in the file)."""
    modules = {_module_name(root, p): p for pkg in packages if (root / pkg).is_dir()
               for p in (root / pkg).rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for m, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(m, is_package, node.level, node.module)
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
                targets = subs + ([base] if len(subs) < len(node.names) else [])
            else:
                continue
            for t in targets:
                if t == "remoteclip_qgis.core" or t.startswith("remoteclip_qgis.core."):
                    t = t[len("remoteclip_qgis."):]   # the plugin's zip carries core inside
                while t and t not in modules:          # the longest project module that t names
                    t = t.rpartition(".")[0]
                if t and t != m:
                    edges[m].add(t)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_no_import_cycles():
    edges = import_graph(ROOT)
    assert {"core.pipeline.run", "core.tasks", "remoteclip_qgis.dock", "training.export"} <= set(edges)
    loops = cycles(edges)
    assert not loops, "import cycles (each: the modules that import one another):\n" + "\n".join(
        f"  {c}: " + "; ".join(f"{m} -> {sorted(edges[m] & set(c))}" for m in c) for c in loops)


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp_path


def test_a_loop_through_a_function_level_import_is_found(tmp_path):
    # core.a imports core.b inside a function, core.b imports core.a at the top: one cycle
    root = _tree(tmp_path, {"core/__init__.py": "", "core/a.py": "def f():\n    from .b import g\n",
                            "core/b.py": "from core.a import f\n", "core/c.py": "from . import a\n"})
    assert cycles(import_graph(root)) == [["core.a", "core.b"]]
    # a chain of three through the plugin's vendored core (remoteclip_qgis.core.X is core.X)
    root = _tree(tmp_path / "t2", {"core/__init__.py": "", "core/x.py": "import remoteclip_qgis.dock\n",
                                   "remoteclip_qgis/__init__.py": "",
                                   "remoteclip_qgis/dock.py": "def f():\n    from .core.y import z\n",
                                   "core/y.py": "from .x import *\n"})
    assert cycles(import_graph(root)) == [["core.x", "core.y", "remoteclip_qgis.dock"]]


def test_from_dot_import_sub_is_an_edge_to_the_submodule_not_the_package(tmp_path):
    # core/__init__ imports core.a; core.a's `from . import b` is an edge to core.b, not back to core: no cycle
    root = _tree(tmp_path, {"core/__init__.py": "from .a import f\n", "core/a.py": "from . import b\ndef f(): pass\n",
                            "core/b.py": "X = 1\n"})
    edges = import_graph(root)
    assert edges["core.a"] == {"core.b"} and edges["core"] == {"core.a"}
    assert cycles(edges) == []


def test_every_core_module_imports_first_on_its_own():
    """Each core module imported first in a fresh interpreter: a module that a package's __init__ imports
    while the module itself imports that package's submodule fails only when it is imported first (a partly
    initialised module), which the graph above does not model (core.change registered from core.tasks did)."""
    import subprocess
    import sys

    names = sorted(m for m in import_graph(ROOT, ("core",)) if not m.endswith("__main__"))
    script = ("import importlib, subprocess, sys\n"
              "bad = []\n"
              "for name in sys.argv[1:]:\n"
              "    r = subprocess.run([sys.executable, '-c', f'import {name}'], capture_output=True, text=True)\n"
              "    if r.returncode:\n"
              "        bad.append(name + ': ' + r.stderr.strip().splitlines()[-1])\n"
              "print('\\n'.join(bad))\n")
    done = subprocess.run([sys.executable, "-c", script, *names], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == ""
    assert len(names) > 40


def test_the_task_registry_loads_without_numpy():
    """The plugin imports the task registry when QGIS starts (forms, Processing): numpy and GDAL load with the
    first run, not then (core.tasks.change imported numpy at module level)."""
    import subprocess
    import sys

    code = "import sys, core.tasks; print(sorted(m for m in ('numpy', 'osgeo') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


# core's packages by concern, and the ones each may not reach (directly or through other modules, imports
# inside functions too): geodata (rasters, tiles, CRS, vector output) is the bottom layer; runtime (the model)
# sits on it (it reads an analyst's raster to measure int8 graphs on, core.runtime.quantize.raster_tiles);
# both are under the tasks, and the tasks are under the run pipeline that runs them.
LAYERS = {
    "core.geodata": ("core.runtime", "core.tasks", "core.pipeline"),
    "core.runtime": ("core.tasks", "core.pipeline"),
    "core.tasks": ("core.pipeline",),
}


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def layer_violations(edges: dict[str, set[str]], layers=LAYERS) -> list[str]:
    """'module -> ... -> forbidden' for each module of a package in ``layers`` that reaches a package it may
    not import (the shortest chain found)."""
    found = []
    for package, banned in layers.items():
        for start in sorted(m for m in edges if _within(m, package)):
            trail = {start: None}
            queue = [start]
            while queue:
                m = queue.pop(0)
                if any(_within(m, b) for b in banned):
                    chain = [m]
                    while trail[chain[-1]] is not None:
                        chain.append(trail[chain[-1]])
                    found.append(" -> ".join(reversed(chain)))
                    break
                for t in sorted(edges.get(m, ())):
                    if t not in trail:
                        trail[t] = m
                        queue.append(t)
    return found


def test_core_packages_import_one_way():
    edges = import_graph(ROOT, ("core",))
    assert {"core.geodata.tiles", "core.geodata.crs", "core.runtime.bundle", "core.runtime.convert"} <= set(edges)
    assert layer_violations(edges) == []


def test_a_layer_reached_through_a_top_level_module_inside_a_function_is_found(tmp_path):
    # geodata.tiles -> (in a function) core.outputs -> runtime.bundle: geodata reaches the runtime
    root = _tree(tmp_path, {"core/__init__.py": "", "core/geodata/__init__.py": "", "core/runtime/__init__.py": "",
                            "core/geodata/tiles.py": "def f():\n    from ..outputs import g\n",
                            "core/outputs.py": "from .runtime.bundle import X\n",
                            "core/runtime/bundle.py": "X = 1\n", "core/tasks/__init__.py": "",
                            "core/tasks/base.py": "from ..geodata import tiles\n"})
    edges = import_graph(root)
    assert layer_violations(edges) == ["core.geodata.tiles -> core.outputs -> core.runtime.bundle"]
    # the tasks may use both layers
    assert not [v for v in layer_violations(edges) if v.startswith("core.tasks")]

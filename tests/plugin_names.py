"""The Qt and QGIS names the plugin uses, read from its source (no import), for the Qt6/QGIS 4 checks.

A *use* is a dotted path rooted at a name imported from ``qgis.PyQt.QtX``, ``qgis.core`` or ``qgis.gui``:
``Qt.AlignmentFlag.AlignLeft`` in a file that did ``from qgis.PyQt.QtCore import Qt`` is the use
``("qgis.PyQt.QtCore", "Qt.AlignmentFlag.AlignLeft")``. Only the longest attribute chain counts
(``QgsProject.instance().mapLayers()`` is the use ``QgsProject.instance``: what a call returns is not a name).

Rules from QGIS's own Qt5-to-Qt6 migration script (scripts/pyqt5_to_pyqt6 in the QGIS repository), checked
here on the source (``qt6_hazards``): Qt comes through ``qgis.PyQt`` only, ``exec()`` not ``exec_()``, no
``QRegExp``, no compiled resources (``resources_rc``), no ``qApp``, no ``QDesktopWidget``/``desktop()``, no
``activated[str]``, no ``fontMetrics().width()``, no ``QVariant()`` as NULL and no ``QVariant.Int``-style
types (``QMetaType.Type`` in Qt6). Enum scoping is checked by resolving every use in PyQt6 (test_qt6.py) and
in each QGIS of the matrix (test_qgis_api.py).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DIR = ROOT / "remoteclip_qgis"
QT_PREFIX = "qgis.PyQt."
QGIS_MODULES = ("qgis.core", "qgis.gui")


@dataclass(frozen=True)
class Use:
    module: str     # "qgis.PyQt.QtCore", "qgis.core", ...
    path: str       # "Qt.AlignmentFlag.AlignLeft"
    where: str      # "remoteclip_qgis/dock.py:170"


def plugin_files(folder: Path = PLUGIN_DIR) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def _chain(node: ast.AST) -> list[str] | None:
    """Name.attr.attr... as a list, or None when the chain does not start at a plain name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return parts[::-1]


def _imports(tree: ast.AST) -> dict[str, tuple[str, str]]:
    """Local name -> (module, imported name) for the Qt and QGIS modules (from-imports anywhere in the file);
    ``from qgis.PyQt import QtCore`` maps QtCore -> ("qgis.PyQt.QtCore", "")."""
    names: dict[str, tuple[str, str]] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
            continue
        for alias in node.names:
            local = alias.asname or alias.name
            if node.module == "qgis.PyQt":
                names[local] = (f"qgis.PyQt.{alias.name}", "")
            elif node.module.startswith(QT_PREFIX) or node.module in QGIS_MODULES:
                names[local] = (node.module, alias.name)
    return names


def uses(files: list[Path] | None = None) -> list[Use]:
    found: set[Use] = set()
    for path in files or plugin_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        imported = _imports(tree)
        where = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)
        inner: set[int] = set()   # attribute nodes inside a longer chain
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute):
                inner.add(id(node.value))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and id(node) not in inner:
                parts = _chain(node)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                parts = [node.id]
            else:
                continue
            if not parts or parts[0] not in imported:
                continue
            module, name = imported[parts[0]]
            dotted = ".".join(([name] if name else []) + parts[1:])
            if dotted:
                found.add(Use(module, dotted, f"{where}:{node.lineno}"))
        for local, (module, name) in imported.items():   # an import that is never used still has to exist
            if name:
                found.add(Use(module, name, f"{where}: import {local}"))
    return sorted(found, key=lambda u: (u.module, u.path, u.where))


def qt6_hazards(files: list[Path] | None = None) -> list[str]:
    """Qt5-only constructs, as 'file:line: what' lines (empty when there are none)."""
    out: list[str] = []
    for path in files or plugin_files():
        rel = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            line = f"{rel}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] in ("PyQt5", "PyQt6", "sip", "PySide2", "PySide6"):
                        out.append(f"{line}: import {alias.name} (import Qt through qgis.PyQt)")
            elif isinstance(node, ast.ImportFrom):
                top = "" if node.level else (node.module or "").split(".")[0]
                if top in ("PyQt5", "PyQt6", "sip", "PySide2", "PySide6"):
                    out.append(f"{line}: from {node.module} (import Qt through qgis.PyQt)")
                for alias in node.names:
                    if alias.name in ("QRegExp", "QRegExpValidator"):
                        out.append(f"{line}: {alias.name} is gone in Qt6 (QRegularExpression)")
                    if alias.name == "qApp":
                        out.append(f"{line}: qApp is gone in PyQt6 (QApplication.instance())")
                    if alias.name == "QDesktopWidget":
                        out.append(f"{line}: QDesktopWidget is gone in Qt6 (QScreen)")
                    if alias.name.endswith("_rc"):
                        out.append(f"{line}: compiled resources ({alias.name}) are gone in Qt6 (load files by path)")
                if node.module == "qgis.PyQt.Qt":
                    out.append(f"{line}: qgis.PyQt.Qt (import from qgis.PyQt.QtCore etc.)")
            elif isinstance(node, ast.Attribute):
                if node.attr in ("exec_", "print_"):
                    out.append(f"{line}: {node.attr}() (PyQt6 has only {node.attr[:-1]}())")
                if isinstance(node.value, ast.Name) and node.value.id == "QVariant" and node.attr[:1].isupper():
                    out.append(f"{line}: QVariant.{node.attr} (a QMetaType.Type in Qt6)")
                if (node.attr == "width" and isinstance(node.value, ast.Call)
                        and isinstance(node.value.func, ast.Attribute) and node.value.func.attr == "fontMetrics"):
                    out.append(f"{line}: fontMetrics().width() is gone in Qt6 (horizontalAdvance())")
            elif isinstance(node, ast.FunctionDef) and node.name in ("exec_", "print_"):
                out.append(f"{line}: def {node.name} (Qt6 calls {node.name[:-1]})")
            elif isinstance(node, ast.Call):
                f = node.func
                if isinstance(f, ast.Name) and f.id == "QVariant" and (
                        not node.args or (isinstance(node.args[0], ast.Attribute) and _chain(node.args[0])
                                          and _chain(node.args[0])[0] == "QVariant")):
                    out.append(f"{line}: QVariant() as NULL (use qgis.core.NULL)")
                if isinstance(f, ast.Attribute) and f.attr == "desktop" and not node.args:
                    out.append(f"{line}: desktop() is gone in Qt6 (QScreen)")
            elif (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute)
                  and node.value.attr == "activated" and isinstance(node.slice, ast.Name) and node.slice.id == "str"):
                out.append(f"{line}: activated[str] is gone in Qt6 (textActivated)")
    return out

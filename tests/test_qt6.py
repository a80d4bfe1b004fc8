"""QGIS 4 runs on Qt6 (PyQt6). Every Qt name the plugin uses must resolve in PyQt6 as QGIS 4's qgis.PyQt
offers it, and the plugin must hold none of the Qt5-only constructs QGIS's migration script rewrites.

The PyQt6 side runs in Debian's own python3 with Debian's python3-pyqt6 (scripts/setup.sh installs it),
in a subprocess: PyQt5 (QGIS 3) and PyQt6 in one process do not mix.
"""

from __future__ import annotations

import configparser
import json
import subprocess
from pathlib import Path

from conftest import require
from plugin_names import ROOT, Use, qt6_hazards, uses

SYSTEM_PYTHON = "/usr/bin/python3"

# Resolve (module, dotted path) pairs in PyQt6. qgis.PyQt.QtX is PyQt6.QtX in QGIS 4, and QGIS's
# qgis/PyQt/QtWidgets.py adds QAction, QActionGroup and QShortcut from QtGui (they moved there in Qt6);
# QGIS 3.40's Qt5 build mirrors that in qgis.PyQt.QtGui.
RESOLVER = r"""
import importlib, json, sys
import PyQt6.QtCore
MOVED = {"QtWidgets": {"QAction": "QtGui", "QActionGroup": "QtGui", "QShortcut": "QtGui"}}
bad = []
for module, path in json.load(sys.stdin):
    sub = module.rsplit(".", 1)[1]
    first, *rest = path.split(".")
    try:
        obj = getattr(importlib.import_module("PyQt6." + MOVED.get(sub, {}).get(first, sub)), first)
        for part in rest:
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        bad.append(f"{module}.{path}: {type(e).__name__}: {e}")
print(json.dumps({"pyqt": PyQt6.QtCore.PYQT_VERSION_STR, "qt": PyQt6.QtCore.QT_VERSION_STR, "bad": bad}))
"""


def resolve_in_pyqt6(qt_uses: list[Use]) -> dict:
    have = subprocess.run([SYSTEM_PYTHON, "-c", "import PyQt6.QtWidgets"], capture_output=True, text=True)
    require(have.returncode == 0, f"PyQt6 is not importable by {SYSTEM_PYTHON} (apt install python3-pyqt6): "
                                  f"{have.stderr.strip()[-300:]}")
    pairs = sorted({(u.module, u.path) for u in qt_uses})
    done = subprocess.run([SYSTEM_PYTHON, "-c", RESOLVER], input=json.dumps(pairs), capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "QT_QPA_PLATFORM": "offscreen"})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def qt_only(found: list[Use]) -> list[Use]:
    return [u for u in found if u.module.startswith("qgis.PyQt.")]


def test_every_qt_name_the_plugin_uses_resolves_in_pyqt6():
    qt = qt_only(uses())
    assert len(qt) > 30, "the walker found too few Qt names to be reading the plugin"
    out = resolve_in_pyqt6(qt)
    assert out["bad"] == [], f"PyQt6 {out['pyqt']} (Qt {out['qt']}):\n" + "\n".join(out["bad"])


def test_the_pyqt6_check_refuses_unscoped_enums_and_accepts_qgis4_moves(tmp_path):
    source = tmp_path / "sample.py"
    source.write_text(
        "from qgis.PyQt import QtCore\n"
        "from qgis.PyQt.QtCore import Qt\n"
        "from qgis.PyQt.QtWidgets import QAction, QComboBox, QSizePolicy\n"
        "a = Qt.AlignLeft\n"
        "b = QComboBox.AdjustToContents\n"
        "c = QtCore.Qt.Checked\n"
        "d = Qt.AlignmentFlag.AlignLeft, QSizePolicy.Policy.Expanding, QtCore.Qt.CheckState.Checked\n"
        "e = QAction\n",
        encoding="utf-8")
    out = resolve_in_pyqt6(qt_only(uses([source])))
    assert sorted(b.split(":")[0] for b in out["bad"]) == [
        "qgis.PyQt.QtCore.Qt.AlignLeft", "qgis.PyQt.QtCore.Qt.Checked", "qgis.PyQt.QtWidgets.QComboBox.AdjustToContents"]


def test_the_plugin_has_no_qt5_only_constructs():
    assert qt6_hazards() == []


def test_the_hazard_check_finds_each_qt5_only_construct(tmp_path):
    source = tmp_path / "sample.py"
    source.write_text(
        "from PyQt5.QtCore import QRegExp\n"
        "from qgis.PyQt.QtWidgets import qApp\n"
        "from . import resources_rc\n"
        "import sip\n"
        "dialog.exec_()\n"
        "t = QVariant.Int\n"
        "n = QVariant()\n"
        "w = widget.fontMetrics().width('x')\n"
        "combo.activated[str].connect(f)\n"
        "QApplication.desktop()\n",
        encoding="utf-8")
    found = qt6_hazards([source])
    assert len(found) == 11, "\n".join(found)
    for needle in ("from PyQt5.QtCore", "QRegExp", "qApp", "resources_rc", "import sip", "exec_()", "QVariant.Int",
                   "QVariant() as NULL", "fontMetrics().width()", "activated[str]", "desktop()"):
        assert any(needle in line for line in found), needle


def test_metadata_declares_qt6_support_and_admits_qgis_4():
    meta = configparser.ConfigParser()
    meta.read(ROOT / "metadata.txt", encoding="utf-8")
    general = meta["general"]
    assert general.get("supportsQt6", "").strip() == "True"
    maximum = tuple(int(x) for x in general["qgisMaximumVersion"].split("."))
    assert maximum >= (4, 99), "QGIS 4.x must be admitted"
    assert Path(ROOT / "metadata.txt").is_file()

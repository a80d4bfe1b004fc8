"""Every Qt and QGIS name the plugin uses exists in the QGIS this runs in, and every enum value is reached
through its enum type (``QgsTask.Flag.CanCancel``, not ``QgsTask.CanCancel``).

Runs in each leg of the QGIS matrix (3.22 on the host, 3.40 and 3.44 in chroots: scripts/test.sh), so a
name QGIS renamed, moved or removed between versions fails here and not in an analyst's QGIS. Unscoped
values are refused on every version: PyQt6 (QGIS 4) has no unscoped Qt enums, and from QGIS 3.36 on some
of QGIS's own unscoped aliases changed meaning (``QgsPalLayerSettings.OverPoint`` became a
LabelPredefinedPointPosition where a LabelPlacement is expected).
"""

from __future__ import annotations

import enum
import importlib

import pytest
from plugin_names import Use, uses


def resolve(use: Use):
    obj = importlib.import_module(use.module)
    parent = None
    for part in use.path.split("."):
        parent, obj = obj, getattr(obj, part)
    return parent, obj


def is_enum_value(value) -> bool:
    """A Python enum member, or a sip enum value (PyQt5's and QGIS's Qt5 bindings: metatype sip.enumtype)."""
    return isinstance(value, enum.Enum) or type(type(value)).__name__ == "enumtype"


def unscoped(uses_: list[Use]) -> list[str]:
    out = []
    for use in uses_:
        parent, value = resolve(use)
        if is_enum_value(value) and not (isinstance(parent, type) and isinstance(value, parent)):
            out.append(f"{use.where}: {use.path} is a {type(value).__qualname__}: write it through its enum")
    return out


@pytest.fixture(scope="module")
def plugin_uses(qgis_app) -> list[Use]:
    found = uses()
    assert len(found) > 100, "the walker found too few names to be reading the plugin"
    return found


def test_every_qt_and_qgis_name_the_plugin_uses_exists_in_this_qgis(plugin_uses):
    from qgis.core import Qgis

    missing = []
    for use in plugin_uses:
        try:
            resolve(use)
        except (ImportError, AttributeError) as e:
            missing.append(f"{use.where}: {use.module}.{use.path} ({e})")
    assert missing == [], f"QGIS {Qgis.QGIS_VERSION}:\n" + "\n".join(missing)


def test_enum_values_are_reached_through_their_enum(plugin_uses):
    from qgis.core import Qgis

    assert unscoped(plugin_uses) == [], f"QGIS {Qgis.QGIS_VERSION}"


def test_the_scope_check_catches_unscoped_qt_and_qgis_values(tmp_path, qgis_app):
    source = tmp_path / "sample.py"
    source.write_text(
        "from qgis.core import Qgis, QgsPalLayerSettings, QgsProcessing, QgsTask\n"
        "from qgis.PyQt.QtCore import Qt\n"
        "a = QgsTask.CanCancel\n"                        # unscoped QGIS value
        "b = Qt.AlignLeft\n"                             # unscoped Qt value
        "c = Qgis.Warning\n"                             # unscoped, on the Qgis namespace
        "d = QgsPalLayerSettings.OverPoint\n"            # unscoped, and ambiguous from 3.36 on
        "e = QgsTask.Flag.CanCancel | Qt.AlignmentFlag.AlignLeft\n"
        "f = QgsPalLayerSettings.Placement.OverPoint, Qgis.MessageLevel.Warning, QgsProcessing.TEMPORARY_OUTPUT\n",
        encoding="utf-8")
    found = unscoped(uses([source]))
    assert sorted(line.split(": ")[1].split(" is a")[0] for line in found) == [
        "Qgis.Warning", "QgsPalLayerSettings.OverPoint", "QgsTask.CanCancel", "Qt.AlignLeft"]

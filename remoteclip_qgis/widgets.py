"""Small widgets that keep a narrow dock readable: a task picker instead of a tab bar, a path label
that elides in the middle, and the form settings that let rows wrap.

QGIS opens docks 300 px wide; a tab bar of four or five tasks, a long path or a row of two widgets
beside a label does not fit there, and a QScrollArea without a horizontal scroll bar cuts off what
does not fit. Everything here has a small minimum width and shows its full text in a tooltip.
"""

from __future__ import annotations

import re

from qgis.PyQt.QtCore import QEvent, QObject, Qt, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QAction,
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)


def compact(combo: QComboBox, chars: int = 6) -> None:
    """Long item texts must not widen the dock: the combo shrinks to ``chars`` characters (its items
    keep their tooltips)."""
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(chars)


def set_value(widget, value) -> None:
    """Set a spin box's or progress bar's value."""
    widget.setValue(value)  # noqa: QGS202 (a Qt widget setter: nothing to check)


def menu_action(menu, text: str, slot) -> QAction:
    """A menu entry calling ``slot`` (Qt6 has no addAction(text, slot))."""
    action = QAction(text, menu)
    action.triggered.connect(lambda _checked=False: slot())
    menu.addAction(action)
    return action


def fit_forms(root: QWidget) -> None:
    """Every form layout under ``root``: a field that does not fit beside its label goes below it, fields
    take the width there is, and row labels wrap."""
    for layout in root.findChildren(QFormLayout):
        layout.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        layout.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        for row in range(layout.rowCount()):
            item = layout.itemAt(row, QFormLayout.ItemRole.LabelRole)
            label = item.widget() if item is not None else None
            if isinstance(label, QLabel) and not label.wordWrap():
                label.setWordWrap(True)   # a long row label ("Select tiles with a similarity of at least") wraps


class PathLabel(QLabel):
    """A file or folder path shown in one line, elided in the middle when narrow; the tooltip has it whole."""

    def __init__(self, path: str = "", parent=None):
        super().__init__(parent)
        self._path = ""
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.setPath(path)

    def path(self) -> str:
        return self._path

    def setPath(self, path: str) -> None:  # noqa: N802 (Qt's naming)
        self._path = str(path)
        self.setToolTip(self._path)
        self._elide()

    def minimumSizeHint(self):  # noqa: N802 (Qt's name)
        hint = super().minimumSizeHint()
        hint.setWidth(self.fontMetrics().horizontalAdvance("…/…/…"))
        return hint

    def sizeHint(self):  # noqa: N802 (Qt's name)
        hint = super().sizeHint()
        hint.setWidth(min(self.fontMetrics().horizontalAdvance(self._path) + 4, 200))
        return hint

    def resizeEvent(self, event):  # noqa: N802 (Qt's name)
        super().resizeEvent(event)
        self._elide()

    def _elide(self) -> None:
        width = max(self.contentsRect().width(), 10)
        self.setText(self.fontMetrics().elidedText(self._path, Qt.TextElideMode.ElideMiddle, width))


class TaskPages(QWidget):
    """The task picker: a combo box (``combo``, placed by the dock in its form) and the chosen task's page
    below a one-line summary of it. A tab bar of the tasks is wider than QGIS's 300 px docks.

    Offers the calls of QTabWidget the dock makes: addTab, setTabToolTip, tabToolTip, tabText, count,
    widget, currentIndex, setCurrentIndex, currentWidget and the currentChanged signal."""

    currentChanged = pyqtSignal(int)   # noqa: N815 (QTabWidget's name)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.combo = QComboBox(parent)
        self.combo.setObjectName("task_combo")
        compact(self.combo, 8)
        self.combo.setToolTip("What to compute for each tile of the raster")
        col = QVBoxLayout(self)
        col.setContentsMargins(0, 0, 0, 0)
        self.summary = WrapLabel("", self)
        self.summary.setObjectName("task_summary")
        self.summary.setStyleSheet("color: palette(dark);")
        # the pages in a column, all but the chosen one hidden: a QStackedWidget is as tall as its tallest
        # page (QStackedLayout.heightForWidth asks every page), which left a gap under a short one
        self.stack = QWidget(self)
        self._pages = QVBoxLayout(self.stack)
        self._pages.setContentsMargins(0, 0, 0, 0)
        col.addWidget(self.summary)
        col.addWidget(self.stack)
        self.combo.currentIndexChanged.connect(self._show)

    def addTab(self, widget: QWidget, title: str) -> int:  # noqa: N802 (QTabWidget's name)
        index = self._pages.count()
        widget.setParent(self.stack)
        self._pages.addWidget(widget)
        widget.setVisible(False)
        self.combo.addItem(title)   # the first one becomes current: _show runs
        return index

    def setTabToolTip(self, index: int, tip: str) -> None:  # noqa: N802 (QTabWidget's name)
        self.combo.setItemData(index, tip, Qt.ItemDataRole.ToolTipRole)
        if index == self.currentIndex():
            self._show(index)

    def tabToolTip(self, index: int) -> str:  # noqa: N802 (QTabWidget's name)
        return self.combo.itemData(index, Qt.ItemDataRole.ToolTipRole) or ""

    def tabText(self, index: int) -> str:  # noqa: N802 (QTabWidget's name)
        return self.combo.itemText(index)

    def count(self) -> int:
        return self._pages.count()

    def widget(self, index: int) -> QWidget:
        item = self._pages.itemAt(index)
        return item.widget() if item is not None else None

    def currentWidget(self) -> QWidget:  # noqa: N802 (QTabWidget's name)
        return self.widget(self.currentIndex())

    def currentIndex(self) -> int:  # noqa: N802 (QTabWidget's name)
        return self.combo.currentIndex()

    def setCurrentIndex(self, index: int) -> None:  # noqa: N802 (QTabWidget's name)
        self.combo.setCurrentIndex(index)

    def _show(self, index: int) -> None:
        if index < 0:
            return
        for i in range(self.count()):
            self.widget(i).setVisible(i == index)
        tip = self.tabToolTip(index)
        self.summary.setText(tip)
        self.summary.setVisible(bool(tip))
        self.currentChanged.emit(index)


class _CheckText(QLabel):
    """The text of a check box, word-wrapped; a click on it toggles the box as a click on its own text would."""

    def __init__(self, text: str, check: QCheckBox, parent=None):
        super().__init__(text, parent)
        self.check = check
        self.setWordWrap(True)
        self.setToolTip(check.toolTip())
        self.setBuddy(check)

    def mouseReleaseEvent(self, event):  # noqa: N802 (Qt's name)
        if self.check.isEnabled() and event.button() == Qt.MouseButton.LeftButton:
            self.check.toggle()
        super().mouseReleaseEvent(event)


def wrap_check_box(check: QCheckBox) -> QLabel | None:
    """Move a check box's text into a word-wrapping label beside it (a QCheckBox's text never wraps, so a
    long one sets the dock's minimum width). The box stays the same object; returns the label."""
    text = check.text()
    parent = check.parentWidget()
    layout = _layout_of(parent.layout(), check) if parent is not None and parent.layout() is not None else None
    if not text or layout is None:
        return None
    row = QWidget(parent)
    h = QHBoxLayout(row)
    h.setContentsMargins(0, 0, 0, 0)
    label = _CheckText(text, check, row)
    label.setObjectName((check.objectName() or "check") + "_text")
    if isinstance(layout, QFormLayout):
        pos, role = layout.getWidgetPosition(check)
        layout.removeWidget(check)
        layout.setWidget(pos, role, row)
    else:
        layout.insertWidget(layout.indexOf(check), row)
        layout.removeWidget(check)
    check.setParent(row)
    check.setText("")
    check.setAccessibleName(text)
    check.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Fixed)
    h.addWidget(check, 0, Qt.AlignmentFlag.AlignTop)
    h.addWidget(label, 1)
    label.setEnabled(check.isEnabled())
    check.installEventFilter(_EnableMirror(label, check))
    return label


class _EnableMirror(QObject):
    """The label greys out with its check box."""

    def __init__(self, label: QLabel, check: QCheckBox):
        super().__init__(check)
        self.label = label

    def eventFilter(self, obj, event):  # noqa: N802 (Qt's name)
        if event.type() == QEvent.Type.EnabledChange:
            self.label.setEnabled(obj.isEnabled())
        return False


def _layout_of(layout, widget):
    """The layout (``layout`` or one nested in it) that holds ``widget`` directly."""
    if layout is None:
        return None
    if layout.indexOf(widget) >= 0:
        return layout
    for i in range(layout.count()):
        found = _layout_of(layout.itemAt(i).layout(), widget)
        if found is not None:
            return found
    return None


def wrap_check_boxes(root: QWidget) -> None:
    for check in root.findChildren(QCheckBox):
        wrap_check_box(check)


ZWSP = "\u200b"
_TAG = re.compile(r"(<[^>]*>)")
_LONG = re.compile(r"[^\s<>]{16,}")
_BREAK_AFTER = re.compile(r"([/\\_.\-:|,=&;])")


def breakable(text: str, rich: bool = False) -> str:
    """Long tokens (paths, file names, URLs) get break opportunities (zero-width spaces) after / \\ _ . -
    and the like, so a word-wrapped label wraps them instead of cutting them off. In rich text only the
    text between tags changes (HTML entities such as ``&amp;`` are kept whole)."""
    def fix(part: str) -> str:
        def token(m):
            word = m.group(0)
            if rich and "&" in word:   # keep entities intact: break only outside them
                return re.sub(r"(&[#\w]+;)|([/\\_.\-:|,=])", lambda e: e.group(1) or e.group(2) + ZWSP, word)
            return _BREAK_AFTER.sub(r"\1" + ZWSP, word)
        return _LONG.sub(token, part)

    if not rich:
        return fix(text)
    return "".join(p if p.startswith("<") else fix(p) for p in _TAG.split(text))


def looks_rich(text: str) -> bool:
    """What QLabel's AutoText takes for rich text: a tag in the first line (Qt.mightBeRichText, which Qt6's
    bindings lack)."""
    first = text.split("\n", 1)[0]
    return bool(re.search(r"<[A-Za-z!/][^<>]*>", first))


class WrapLabel(QLabel):
    """A word-wrapped label that also wraps long paths and names (it shows them with break opportunities;
    ``text()`` gives the text as set) and so never asks for more width than the dock has."""

    def __init__(self, text: str = "", parent=None):
        super().__init__(parent)
        self.setWordWrap(True)
        self._raw = ""
        self.setText(text)

    def setText(self, text: str) -> None:  # noqa: N802 (Qt's name)
        self._raw = text or ""
        rich = self.textFormat() == Qt.TextFormat.RichText or (
            self.textFormat() == Qt.TextFormat.AutoText and looks_rich(self._raw))
        super().setText(breakable(self._raw, rich))

    def text(self) -> str:
        return self._raw

    def minimumSizeHint(self):  # noqa: N802 (Qt's name)
        hint = super().minimumSizeHint()
        hint.setWidth(min(hint.width(), self.fontMetrics().horizontalAdvance("x" * 12)))
        return hint

    def resizeEvent(self, event):  # noqa: N802 (Qt's name)
        # a QFormLayout row asks a wrapped label's height at another width than it then gives it (a message
        # under a field, a report line lost its last line): at its real width it asks for what it needs
        super().resizeEvent(event)
        need = self.heightForWidth(self.width())
        if need > 0 and need != self.minimumHeight():
            self.setMinimumHeight(need)


def layer_filters(*names: str):
    """``QgsMapLayerComboBox.setFilters``' value for the layer kinds ``names`` ("RasterLayer", "PointLayer"…):
    ``Qgis.LayerFilter`` where QGIS has it (3.34+: the ``QgsMapLayerProxyModel.Filter`` flags are deprecated
    there, a DeprecationWarning at every use from 3.40), else ``QgsMapLayerProxyModel.Filter`` (3.22)."""
    from qgis.core import Qgis, QgsMapLayerProxyModel

    kinds = getattr(Qgis, "LayerFilter", None)   # by name: 3.22 has none (tests/test_qgis_api.py reads names)
    if kinds is not None:
        flags = getattr(Qgis, "LayerFilters", None)
    else:
        kinds, flags = QgsMapLayerProxyModel.Filter, getattr(QgsMapLayerProxyModel, "Filters", None)
    # the flags type, not a bare OR of members (which PyQt may turn into the deprecated overload's int)
    value = flags(getattr(kinds, names[0])) if flags is not None else getattr(kinds, names[0])
    for name in names[1:]:
        value = value | getattr(kinds, name)
    return value

"""How the dock shows a finished run: the Last result box (per class its tiles and ground area, core.summary,
each value named by its task: ``Task.value_text``) and a classify report (cross-validated accuracy, per-class
precision and recall, confusion) in the task's tab."""

from __future__ import annotations

import html

from qgis.gui import QgsCollapsibleGroupBox
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QColor, QFontDatabase, QIcon, QPixmap
from qgis.PyQt.QtWidgets import (
    QHeaderView,
    QPlainTextEdit,
    QSizePolicy,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
)

from .core.tasks import TASKS as TASK_CLASSES
from .widgets import WrapLabel

HEADINGS = {"categories": "Class", "counts": "Count", "graduated": "Selection"}   # by the task's renderer
SHOWN_ROWS = 10   # the table is as tall as its rows up to this many


class ResultBox(QgsCollapsibleGroupBox):
    """The last run's summary: per class its tiles and ground area (core.summary); hidden until a run has
    rows to show."""

    def __init__(self, parent):
        super().__init__("Last result", parent)
        self.setObjectName("result_group")
        v = QVBoxLayout(self)
        self.title = WrapLabel("", self)
        self.table = QTreeWidget(self)
        self.table.setObjectName("result_table")
        self.table.setRootIsDecorated(False)
        self.table.setColumnCount(3)
        self.table.setHeaderLabels(["", "Tiles", "Area"])
        self.table.setSelectionMode(QTreeWidget.SelectionMode.NoSelection)
        header = self.table.header()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        v.addWidget(self.title)
        v.addWidget(self.table)
        self.setVisible(False)

    def show_summary(self, kind: str, rows: list, task=None, colors: dict | None = None) -> None:
        """Fill the table: class (count, selection) | tiles | area, the most tiles first. ``task`` (the run's
        core task) names each value; without it a value reads as it is. ``colors`` (class -> colour, the
        layer's: layers.legend_colors) gives each class its swatch; without it the classes shown are coloured
        as one list (layers.class_colors)."""
        from .core.summary import format_area
        from .layers import class_colors

        if colors is None:
            colors = class_colors([task.value_text(r.value) if task is not None else str(r.value) for r in rows])

        self.table.clear()
        renderer = TASK_CLASSES[kind].style.renderer if kind in TASK_CLASSES else ""
        self.table.setHeaderLabels([HEADINGS.get(renderer, ""), "Tiles", "Area"])
        for row in rows:
            text = task.value_text(row.value) if task is not None else str(row.value)
            item = QTreeWidgetItem([text, f"{row.n_tiles:,}", format_area(row.area_m2)])
            item.setToolTip(0, text)
            item.setTextAlignment(1, int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter))
            item.setTextAlignment(2, int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter))
            if renderer == "categories":
                swatch = QPixmap(12, 12)
                swatch.fill(QColor(colors.get(text, colors.get(str(row.value), "#000000"))))
                item.setIcon(0, QIcon(swatch))
            self.table.addTopLevelItem(item)
        # as tall as its rows (up to SHOWN_ROWS): no scroll bar inside the dock's own
        shown = min(len(rows), SHOWN_ROWS)
        height = self.table.header().sizeHint().height() + 2 * self.table.frameWidth()
        if rows:
            height += shown * self.table.sizeHintForRow(0)
        self.table.setFixedHeight(height)
        self.setVisible(bool(rows))

    def top(self, n: int = 3) -> str:
        """The first ``n`` rows as 'value tiles, …' (for the message bar)."""
        return ", ".join(f"{self.table.topLevelItem(i).text(0)} {self.table.topLevelItem(i).text(1)}"
                         for i in range(min(self.table.topLevelItemCount(), n)))


def report_html(report: dict) -> str:
    """The report's first line (what the figures are), for the report label; the table goes to ``report_table``."""
    from .core.tasks import report_lines

    return f"<b>{html.escape(report_lines(report)[0])}</b>"


def report_table(parent) -> QPlainTextEdit:
    """The box for a report's per-class table: read-only, fixed-width font, lines kept whole; a table wider
    than the dock scrolls sideways inside it (the dock itself never gets wider than its view)."""
    box = QPlainTextEdit(parent)
    box.setObjectName("report_table")
    box.setReadOnly(True)
    box.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
    box.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
    box.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    box.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
    box.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)   # no minimum width from its text
    box.setVisible(False)
    return box


def show_report(label, report: dict | None, table=None) -> None:
    """A classify report in ``label`` (a task tab's report line) and its per-class table in ``table``
    (``report_table``); hidden when the run made none."""
    from .core.tasks import report_lines

    lines = report_lines(report) if report else []
    label.setVisible(bool(lines))
    if table is not None:
        table.setVisible(len(lines) > 1)
    if not lines:
        return
    label.setText(report_html(report))
    if table is not None and len(lines) > 1:
        table.setPlainText("\n".join(lines[1:]))
        rows = len(lines) - 1
        bar = table.horizontalScrollBar().sizeHint().height()
        table.setFixedHeight(rows * table.fontMetrics().lineSpacing() + 2 * table.frameWidth()
                             + 2 * int(table.document().documentMargin()) + bar + 4)

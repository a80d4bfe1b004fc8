"""Is anything of a panel cut off? Measures a shown widget tree the way a reader sees it.

``clipped(panel, viewport)`` lists, for every visible widget inside ``panel``:

* a widget whose left or right edge lies outside ``viewport`` (the scroll area's viewport: what is
  not inside it is not seen, as the horizontal scroll bar is off);
* a label whose text does not fit: a one-line label whose text (QFontMetrics.horizontalAdvance, or
  the laid out rich text) is wider than its contents, a wrapped label whose text needs more height
  than it has or holds a word wider than it is;
* a button or check box narrower than its text needs (its size hint).

Used by tests/test_dock_layout.py in the test QGIS and inside the real QGIS application.
"""

from __future__ import annotations


def _text_width(label) -> tuple[float, float]:
    """(width, height) the label's text needs, laid out at the label's contents width when it wraps."""
    from qgis.PyQt.QtCore import Qt
    from qgis.PyQt.QtGui import QTextDocument
    from qgis.PyQt.QtWidgets import QLabel

    from remoteclip_qgis.widgets import looks_rich

    text = QLabel.text(label)   # what it shows (a WrapLabel shows its text with break opportunities)
    rect = label.contentsRect()
    margin = 2 * label.margin()
    rich = label.textFormat() == Qt.TextFormat.RichText or (
        label.textFormat() == Qt.TextFormat.AutoText and looks_rich(text))
    if not rich and not label.wordWrap():
        fm = label.fontMetrics()
        lines = text.split("\n")
        return max(fm.horizontalAdvance(line) for line in lines) + margin, fm.height() * len(lines) + margin
    doc = QTextDocument()
    doc.setDefaultFont(label.font())
    doc.setDocumentMargin(0)
    if rich:
        doc.setHtml(text)
    else:
        doc.setPlainText(text)
    if label.wordWrap():
        doc.setTextWidth(max(rect.width() - margin, 1))
    return doc.idealWidth() + margin, doc.size().height() + margin


def clipped(panel, viewport) -> list[str]:
    """Problems in ``panel`` (a shown widget); widgets inside the scroll area whose ``viewport`` is given must
    lie within it, the others within ``panel``."""
    from qgis.PyQt.QtCore import QPoint
    from qgis.PyQt.QtWidgets import (
        QAbstractButton,
        QAbstractItemView,
        QAbstractScrollArea,
        QLabel,
        QWidget,
    )

    scroll = viewport.parentWidget()
    problems = []
    for w in panel.findChildren(QWidget):
        if not w.isVisible() or w.width() <= 0 or w.objectName().startswith("qt_scrollarea"):
            continue
        parent = w.parentWidget()
        inside_view = in_scroll = False
        while parent is not None and parent is not panel:
            if parent is viewport:
                in_scroll = True
            # what a list, table or text box shows scrolls inside it: only the box itself must fit
            elif isinstance(parent, QAbstractItemView | QAbstractScrollArea) and parent is not scroll:
                inside_view = True
            parent = parent.parentWidget()
        if inside_view:
            continue
        box = viewport if in_scroll else panel
        left = box.mapToGlobal(QPoint(0, 0)).x()
        right = left + box.width()
        name = f"{type(w).__name__} {w.objectName() or ''} {getattr(w, 'text', lambda: '')()!r}".strip()
        x0 = w.mapToGlobal(QPoint(0, 0)).x()
        if x0 < left - 1 or x0 + w.width() > right + 1:
            problems.append(f"{name}: spans x {x0 - left}..{x0 + w.width() - left}, the panel shows 0..{right - left}")
            continue
        if isinstance(w, QLabel) and w.text() and (w.pixmap() is None or w.pixmap().isNull()):
            need_w, need_h = _text_width(w)
            rect = w.contentsRect()
            if need_w > rect.width() + 1:
                problems.append(f"{name}: text needs {need_w:.0f} px, has {rect.width()}")
            elif w.wordWrap() and need_h > rect.height() + 1:
                problems.append(f"{name}: wrapped text needs {need_h:.0f} px high, has {rect.height()}")
        elif isinstance(w, QAbstractButton) and w.text() and w.sizeHint().width() > w.width() + 1:
            problems.append(f"{name}: needs {w.sizeHint().width()} px, has {w.width()}")
    return problems

"""The dock's task tabs, built from the task registry (core.tasks.TASKS): one form per task, one widget per
declared input (core.tasks.Param), so a new task in core gets its tab without dock code of its own.

``TaskForm.raw()`` hands the widgets' values to ``Task.from_inputs`` as typed (the task parses and checks
them, with the same rules as the command line and Processing); the only conversion done here is QGIS's:
a samples layer (and its selection) becomes core's ``Samples``.
"""

from __future__ import annotations

from qgis.core import QgsFieldProxyModel, QgsMapLayerProxyModel
from qgis.gui import QgsCollapsibleGroupBox, QgsFieldComboBox, QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QSpinBox,
    QWidget,
)

from .core.errors import RemoteClipError
from .core.prompts import COUNT_TEMPLATES, DEFAULT_TEMPLATES, PRESETS, split_names
from .widgets import WrapLabel, compact, set_value

BIG = 1_000_000   # the top of a spin box whose input has no upper limit
CUSTOM = "Custom"


def default_templates(task_cls) -> str:
    return "\n".join(COUNT_TEMPLATES if task_cls.kind == "count" else DEFAULT_TEMPLATES)


class TaskForm(QWidget):
    """The tab of one task: ``widgets[param.name]`` holds each input's widget."""

    def __init__(self, task_cls, parent=None):
        super().__init__(parent)
        self.task_cls = task_cls
        self.widgets: dict = {}
        self.selected_only: dict = {}
        self.map_labels = None
        self.errors: dict[str, QLabel] = {}   # the inline message under each input
        form = QFormLayout(self)
        # what is wrong with the inputs as a whole (the task's own checks), above them
        self.form_error = _error_label(self)
        self.form_error.setObjectName("form_error")
        form.addRow(self.form_error)
        advanced = None
        if any(p.advanced for p in task_cls.params):
            # below the everyday inputs, whatever the order of their declaration
            self.advanced_box = QgsCollapsibleGroupBox("Advanced", self)
            self.advanced_box.setCollapsed(True)
            advanced = QFormLayout(self.advanced_box)
        for prm in task_cls.params:
            if prm.kind == "preset":
                continue   # drawn with the names input it fills
            target = advanced if prm.advanced else form
            self._add(prm, target)
            if prm.name in self.widgets and prm.kind in ("names", "text"):
                self.errors[prm.name] = label = _error_label(self)
                target.addRow(label)
                _on_edit(self.widgets[prm.name], lambda _=None, n=prm.name: self.clear_error(n))
        if not task_cls.params:
            text = QLabel(task_cls.help, self)
            text.setWordWrap(True)
            form.addRow(text)
        if task_cls.style.map_labels_text:
            self.map_labels = QCheckBox(task_cls.style.map_labels_text, self)
            self.map_labels.setChecked(task_cls.style.map_labels_default)
            form.addRow(self.map_labels)
        if advanced is not None:
            form.addRow(self.advanced_box)
        self.report = QLabel(self)   # a run's report (results_view.show_report fills it)
        self.report.setObjectName("report_label")
        self.report.setWordWrap(True)
        self.report.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.report.setVisible(False)
        form.addRow(self.report)

    # ---------------------------------------------------------------------------------------- widgets

    def _add(self, prm, form: QFormLayout) -> None:
        w = None
        if prm.kind == "names":
            presets = [p for p in self.task_cls.params if p.kind == "preset" and p.fills == prm.name]
            if presets:
                combo = QComboBox(self)
                compact(combo)
                combo.addItem(CUSTOM)
                combo.addItems(list(presets[0].choices))
                combo.activated.connect(lambda i, c=combo, n=prm.name: self._apply_preset(c, n))
                self._preset_of = (combo, prm.name)
                combo.setToolTip(presets[0].help)
                form.addRow("Preset", combo)
                self.widgets[presets[0].name] = combo
            w = QPlainTextEdit(self)
            w.setPlaceholderText("one class per line (or separated by commas), e.g.\nbuildings\ntrees\nwater")
            w.setMaximumHeight(110)
            if presets:
                w.textChanged.connect(self._show_preset)
        elif prm.kind == "templates":
            # a group box title never wraps: the short name, the whole label in the tooltip
            box = QgsCollapsibleGroupBox(" ".join(prm.label.split(" (")[0].split()[:2]), self)
            box.setToolTip(prm.label)
            box.setCollapsed(True)
            inner = QFormLayout(box)
            w = QPlainTextEdit(box)
            w.setPlainText(default_templates(self.task_cls))
            w.setMaximumHeight(100)
            w.setToolTip("one template per line (or separated by |)")
            inner.addRow(w)
            form.addRow(box)
            self.widgets[prm.name] = w
            return
        elif prm.kind == "text":
            w = QLineEdit(self)
            if prm.start_value is not None:
                w.setText(str(prm.start_value))
            w.setPlaceholderText(prm.help)
        elif prm.kind == "int":
            w = QSpinBox(self)
            lo = int(prm.lo) if prm.lo is not None else 0
            w.setRange(lo - 1 if prm.optional else lo, int(prm.hi) if prm.hi is not None else BIG)
        elif prm.kind == "float":
            w = QDoubleSpinBox(self)
            w.setDecimals(3 if prm.lo is not None and prm.lo < 0 else 2)
            w.setRange(prm.lo if prm.lo is not None else -1e9, prm.hi if prm.hi is not None else 1e9)
            w.setSingleStep(0.05 if prm.lo is not None and prm.lo >= 0 else 0.01)
        elif prm.kind == "choice":
            w = QComboBox(self)
            compact(w)
            w.addItems([str(c) for c in prm.choices])
            w.setCurrentText(str(prm.default))
        elif prm.kind == "samples":
            w = QgsMapLayerComboBox(self)
            compact(w)
            w.setFilters(QgsMapLayerProxyModel.Filter.PointLayer | QgsMapLayerProxyModel.Filter.PolygonLayer)
            w.setAllowEmptyLayer(True)
            w.setToolTip("The analyst's samples: points or polygons, any CRS, with a class field")
            sel = QCheckBox("selected only", self)
            sel.setToolTip("Use the selected features of the layer only")
            self.selected_only[prm.name] = sel
            self.widgets[prm.name] = w
            # one under the other: side by side they are wider than a 300 px dock
            form.addRow(prm.label.split(" (")[0], w)
            form.addRow("", sel)
            return
        elif prm.kind == "field":
            w = QgsFieldComboBox(self)
            compact(w)
            w.setFilters(QgsFieldProxyModel.Filter.AllTypes)
            parent = self.widgets.get(prm.parent)
            if parent is not None:
                parent.layerChanged.connect(w.setLayer)
                w.setLayer(parent.currentLayer())
        elif prm.kind in ("file", "file_out"):
            w = QgsFileWidget(self)
            w.setStorageMode(QgsFileWidget.StorageMode.GetFile if prm.kind == "file"
                             else QgsFileWidget.StorageMode.SaveFile)
            if prm.kind == "file_out":
                w.setConfirmOverwrite(False)   # Run asks, and only when something would be replaced
            if prm.file_filter:
                w.setFilter(prm.file_filter)
        if w is None:
            return
        if prm.kind in ("int", "float"):
            if prm.optional:   # the bottom of the range reads "none"
                w.setSpecialValueText(prm.none_text or "none")
            start = prm.start_value
            set_value(w, (int if prm.kind == "int" else float)(start) if start is not None else w.minimum())
        if prm.help and prm.kind not in ("text",):
            w.setToolTip(prm.help)
        self.widgets[prm.name] = w
        form.addRow(prm.label, w)

    def _apply_preset(self, combo, names: str) -> None:
        name = combo.currentText()
        if name in PRESETS:
            self.widgets[names].setPlainText("\n".join(PRESETS[name]))

    def _show_preset(self) -> None:
        """The preset combo names the preset whose classes the box holds (typed, restored or chosen), else
        Custom."""
        combo, names = self._preset_of
        typed = split_names(self.widgets[names].toPlainText())
        match = next((name for name, classes in PRESETS.items() if list(classes) == typed), None)
        combo.setCurrentIndex(combo.findText(match) if match else 0)

    # ------------------------------------------------------------------------------------- checking

    def clear_error(self, name: str | None = None) -> None:
        for n, label in self.errors.items():
            if name is None or n == name:
                label.setVisible(False)
        if name is None:
            self.form_error.setVisible(False)

    def show_error(self, text: str, name: str | None = None) -> None:
        label = self.errors.get(name, self.form_error) if name else self.form_error
        label.setText(text)
        label.setVisible(True)

    def task(self):
        """The task the inputs describe, checked here before a run starts: a missing input is shown under its
        field, in the panel's words; what the task itself refuses (core's checks) above the fields. Raises
        RemoteClipError with the same text."""
        self.clear_error()
        for prm in self.task_cls.params:
            problem = self._missing(prm)
            if problem:
                self.show_error(problem, prm.name)
                raise RemoteClipError(problem, None)
        try:
            return self.task_cls.from_inputs(self.raw(), spell=lambda prm: f"“{prm.label}”")
        except RemoteClipError as e:
            self.show_error(e.problem + (f" {e.fix}" if e.fix else ""))
            raise

    def _missing(self, prm) -> str:
        """What is wrong with one input as typed ('' when nothing)."""
        w = self.widgets.get(prm.name)
        if w is None or prm.optional and prm.kind != "names":
            return ""
        if prm.kind == "names":
            if any(p.kind == "preset" and p.fills == prm.name for p in self.task_cls.params) or not prm.optional:
                names = [n for n in split_names(w.toPlainText()) if n]
                if not names:
                    return "Type the class names, one per line (or pick a preset above)."
                if len(names) == 1:
                    return (f"Only one class ({names[0]}): every tile would be 100 % {names[0]}. Type at least "
                            "two class names.")
            return ""
        if prm.kind == "text" and not w.text().strip():
            example = f" ({prm.help})" if prm.help else ""
            what = prm.label.split(" (")[0]
            return f"Type the {what[0].lower() + what[1:]}{example}."
        return ""

    # ----------------------------------------------------------------------------------------- values

    def raw(self) -> dict:
        """The widgets' values as ``Task.from_inputs`` takes them."""
        from .layer_source import samples_from_layer

        out = {}
        fields_of = {p.parent: p.name for p in self.task_cls.params if p.kind == "field"}
        for prm in self.task_cls.params:
            w = self.widgets.get(prm.name)
            if w is None or prm.kind in ("preset", "field"):
                continue   # a preset fills the names box; a field goes with its samples
            if prm.kind in ("names", "templates"):
                out[prm.name] = w.toPlainText()
            elif prm.kind == "text":
                out[prm.name] = w.text().strip()
            elif prm.kind in ("int", "float"):
                value = w.value()
                out[prm.name] = None if prm.optional and value <= w.minimum() else value
            elif prm.kind == "choice":
                out[prm.name] = w.currentText()
            elif prm.kind == "samples":
                layer = w.currentLayer()
                if layer is None:
                    out[prm.name] = None
                    continue
                field = self.widgets[fields_of[prm.name]].currentField() if prm.name in fields_of else ""
                out[prm.name] = samples_from_layer(layer, field, self.selected_only[prm.name].isChecked())
            elif prm.kind in ("file", "file_out"):
                out[prm.name] = w.filePath().strip() or None
        return out

    def show_labels(self) -> bool | None:
        return None if self.map_labels is None else self.map_labels.isChecked()


ERROR_STYLE = "color: #b00020;"


def _error_label(parent) -> QLabel:
    label = WrapLabel("", parent)
    label.setStyleSheet(ERROR_STYLE)
    label.setVisible(False)
    return label


def _on_edit(widget, slot) -> None:
    """Call ``slot`` when the user edits ``widget`` (a line or a text box)."""
    signal = getattr(widget, "textChanged", None)
    if signal is not None:
        signal.connect(slot)

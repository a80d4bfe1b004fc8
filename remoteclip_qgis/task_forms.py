"""The dock's task tabs, built from the task registry (core.tasks.TASKS): one form per task, one widget per
declared input (core.tasks.Param), so a new task in core gets its tab without dock code of its own.

Each ``Param.kind`` has its widget adapter in one table (``INPUTS``), as QGIS Processing's gui/wrappers.py
picks a wrapper by parameter type: it adds the input's widget to the form, reads its value and says what is
missing. ``TaskForm.raw()`` hands the widgets' values to ``Task.from_inputs`` as typed (the task parses and
checks them, with the same rules as the command line and Processing); the only conversion done here is
QGIS's: a samples layer (and its selection) becomes core's ``Samples``.
"""

from __future__ import annotations

from qgis.core import QgsFieldProxyModel
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

from .core.errors import InvalidInput, RemoteClipError
from .core.prompts import PRESETS, split_names
from .results_view import report_table
from .widgets import WrapLabel, compact, layer_filters, set_value

BIG = 1_000_000   # the top of a spin box whose input has no upper limit
CUSTOM = "Custom"


class TaskForm(QWidget):
    """The tab of one task: ``widgets[param.name]`` holds each input's widget."""

    def __init__(self, task_cls, parent=None):
        super().__init__(parent)
        self.task_cls = task_cls
        self.widgets: dict = {}
        self.selected_only: dict = {}
        self.map_labels = None
        self.map_picks = None   # search by example: the tiles picked on the map (example_picker.ExamplePicks)
        self.errors: dict[str, QLabel] = {}   # the inline message under each input
        form = QFormLayout(self)
        # what is wrong with the inputs as a whole (the task's own checks), above them
        self.form_error = error_label(self)
        self.form_error.setObjectName("form_error")
        form.addRow(self.form_error)
        advanced = None
        if any(p.advanced for p in task_cls.params):
            # below the everyday inputs, whatever the order of their declaration
            self.advanced_box = QgsCollapsibleGroupBox("Advanced", self)
            self.advanced_box.setCollapsed(True)
            advanced = QFormLayout(self.advanced_box)
        for prm in task_cls.params:
            target = advanced if prm.advanced else form
            INPUTS[prm.kind].add(self, prm, target)
            if prm.name in self.widgets and INPUTS[prm.kind].inline_error:
                self.errors[prm.name] = label = error_label(self)
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
        self.report = WrapLabel("", self)   # a run's report (results_view.show_report fills it)
        self.report.setObjectName("report_label")
        self.report.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.report.setVisible(False)
        form.addRow(self.report)
        self.report_table = report_table(self)   # its per-class table: scrolls sideways inside its own box
        form.addRow(self.report_table)

    # ---------------------------------------------------------------------------------------- widgets

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
                raise InvalidInput(problem, None, param=prm.name)
        try:
            return self.task_cls.from_inputs(self.raw(), spell=lambda prm: f"“{prm.label}”")
        except RemoteClipError as e:
            # under the input it names (an optional query left empty with no examples), else above the inputs
            where = getattr(e, "param", None)
            self.show_error(e.problem + (f" {e.fix}" if e.fix else ""), where if where in self.errors else None)
            raise

    def _missing(self, prm) -> str:
        """What is wrong with one input as typed ('' when nothing)."""
        w = self.widgets.get(prm.name)
        return "" if w is None else INPUTS[prm.kind].missing(self, prm, w)

    # ----------------------------------------------------------------------------------------- values

    def raw(self) -> dict:
        """The widgets' values as ``Task.from_inputs`` takes them."""
        out = {}
        for prm in self.task_cls.params:
            w = self.widgets.get(prm.name)
            if w is not None and INPUTS[prm.kind].reads:   # a preset fills the names box; a field goes with its samples
                out[prm.name] = INPUTS[prm.kind].value(self, prm, w)
        return out

    def show_labels(self) -> bool | None:
        return None if self.map_labels is None else self.map_labels.isChecked()


# ------------------------------------------------------------------------------------------ inputs

class _Input:
    """How a task's tab shows one kind of input (``INPUTS[param.kind]``): ``add`` makes its widget and puts it
    on ``layout`` (in ``form.widgets[param.name]``), ``value`` reads it as ``Task.from_inputs`` takes it,
    ``missing`` says what is wrong with it as typed ('' when nothing)."""
    inline_error = False   # an error line under the input (what is missing)
    reads = True           # False: another input's widget carries its value

    def add(self, form: TaskForm, prm, layout: QFormLayout) -> None:
        raise NotImplementedError

    def value(self, form: TaskForm, prm, w):
        raise NotImplementedError

    def missing(self, form: TaskForm, prm, w) -> str:
        return ""


def _row(form: TaskForm, prm, w, layout: QFormLayout, tooltip: bool = True, below: bool = False) -> None:
    """``w`` as the input's widget, on a row of its own with the input's label (its help as tooltip);
    ``below``: the label on a line above and the widget the row's whole width."""
    if prm.help and tooltip:
        w.setToolTip(prm.help)
    form.widgets[prm.name] = w
    if below:
        label = WrapLabel(prm.label, form)
        label.setBuddy(w)
        layout.addRow(label)
        layout.addRow(w)
    else:
        layout.addRow(prm.label, w)


class _Names(_Input):
    """Class names: a text box, with the preset combo of the ``preset`` input that fills it above."""
    inline_error = True

    def add(self, form, prm, layout):
        presets = [p for p in form.task_cls.params if p.kind == "preset" and p.fills == prm.name]
        if presets:
            combo = QComboBox(form)
            compact(combo)
            combo.addItem(CUSTOM)
            combo.addItems(list(presets[0].choices))
            combo.activated.connect(lambda i, c=combo, n=prm.name: form._apply_preset(c, n))
            form._preset_of = (combo, prm.name)
            combo.setToolTip(presets[0].help)
            layout.addRow("Preset", combo)
            form.widgets[presets[0].name] = combo
        w = QPlainTextEdit(form)
        w.setPlaceholderText("one class per line (or separated by commas), e.g.\nbuildings\ntrees\nwater")
        w.setMaximumHeight(110)
        if presets:
            w.textChanged.connect(form._show_preset)
        _row(form, prm, w, layout)

    def value(self, form, prm, w):
        return w.toPlainText()

    def missing(self, form, prm, w):
        if any(p.kind == "preset" and p.fills == prm.name for p in form.task_cls.params) or not prm.optional:
            names = [n for n in split_names(w.toPlainText()) if n]
            if not names:
                return "Type the class names, one per line (or pick a preset above)."
            if len(names) == 1:
                return (f"Only one class ({names[0]}): every tile would be 100 % {names[0]}. Type at least "
                        "two class names.")
        return ""


class _Preset(_Input):
    """Drawn (and read) with the names input it fills (_Names)."""
    reads = False

    def add(self, form, prm, layout):
        pass


class _Templates(_Input):
    """A collapsed box holding the task's default templates (``Task.default_templates``)."""

    def add(self, form, prm, layout):
        # a group box title never wraps: the short name, the whole label in the tooltip
        box = QgsCollapsibleGroupBox(" ".join(prm.label.split(" (")[0].split()[:2]), form)
        box.setToolTip(prm.label)
        box.setCollapsed(True)
        inner = QFormLayout(box)
        w = QPlainTextEdit(box)
        w.setPlainText("\n".join(form.task_cls.default_templates))
        w.setMaximumHeight(100)
        w.setToolTip("one template per line (or separated by |)")
        inner.addRow(w)
        layout.addRow(box)
        form.widgets[prm.name] = w

    def value(self, form, prm, w):
        return w.toPlainText()


class _Text(_Input):
    inline_error = True

    def add(self, form, prm, layout):
        w = QLineEdit(form)
        if prm.start_value is not None:
            w.setText(str(prm.start_value))
        w.setPlaceholderText(prm.help)
        _row(form, prm, w, layout, tooltip=False)

    def value(self, form, prm, w):
        return w.text().strip()

    def missing(self, form, prm, w):
        if prm.optional or w.text().strip():
            return ""
        example = f" ({prm.help})" if prm.help else ""
        what = prm.label.split(" (")[0]
        return f"Type the {what[0].lower() + what[1:]}{example}."


class _Number(_Input):
    """A spin box with the task's limits; an optional number's bottom reads "none" (``none_text``)."""

    def __init__(self, integer: bool):
        self.integer = integer

    def add(self, form, prm, layout):
        if self.integer:
            w = QSpinBox(form)
            lo = int(prm.lo) if prm.lo is not None else 0
            w.setRange(lo - 1 if prm.optional else lo, int(prm.hi) if prm.hi is not None else BIG)
        else:
            w = QDoubleSpinBox(form)
            w.setDecimals(3 if prm.lo is not None and prm.lo < 0 else 2)
            w.setRange(prm.lo if prm.lo is not None else -1e9, prm.hi if prm.hi is not None else 1e9)
            w.setSingleStep(0.05 if prm.lo is not None and prm.lo >= 0 else 0.01)
        if prm.optional:   # the bottom of the range reads "none"
            w.setSpecialValueText(prm.none_text or "none")
        start = prm.start_value
        set_value(w, (int if self.integer else float)(start) if start is not None else w.minimum())
        _row(form, prm, w, layout)

    def value(self, form, prm, w):
        value = w.value()
        return None if prm.optional and value <= w.minimum() else value


class _Choice(_Input):
    def add(self, form, prm, layout):
        w = QComboBox(form)
        compact(w)
        w.addItems([str(c) for c in prm.choices])
        w.setCurrentText(str(prm.default))
        _row(form, prm, w, layout)

    def value(self, form, prm, w):
        return w.currentText()


class _Samples(_Input):
    """A layer picker of points or polygons and its "selected only" box, read with the class field that
    names it as parent."""

    tooltip = "The analyst's samples: points or polygons, any CRS, with a class field"
    empty_first = False   # start on the empty entry rather than a layer

    def add(self, form, prm, layout):
        w = QgsMapLayerComboBox(form)
        compact(w)
        w.setFilters(layer_filters("PointLayer", "PolygonLayer"))
        w.setAllowEmptyLayer(True)
        if self.empty_first:
            w.setCurrentIndex(0)
        w.setToolTip(self.tooltip or prm.help)
        sel = QCheckBox("selected only", form)
        sel.setToolTip("Use the selected features of the layer only")
        form.selected_only[prm.name] = sel
        form.widgets[prm.name] = w
        # one under the other: side by side they are wider than a 300 px dock
        layout.addRow(prm.label.split(" (")[0], w)
        layout.addRow("", sel)

    def value(self, form, prm, w):
        from .layer_source import samples_from_layer

        layer = w.currentLayer()
        if layer is None:
            return None
        field = next((form.widgets[p.name].currentField() for p in form.task_cls.params
                      if p.kind == "field" and p.parent == prm.name and p.name in form.widgets), "")
        return samples_from_layer(layer, field, form.selected_only[prm.name].isChecked())


class _Field(_Input):
    """A field of the samples input ``prm.parent``, following its layer; read with those samples."""
    reads = False

    def add(self, form, prm, layout):
        w = QgsFieldComboBox(form)
        compact(w)
        w.setFilters(QgsFieldProxyModel.Filter.AllTypes)
        parent = form.widgets.get(prm.parent)
        if parent is not None:
            parent.layerChanged.connect(w.setLayer)
            w.setLayer(parent.currentLayer())
        _row(form, prm, w, layout)


class _File(_Input):
    def __init__(self, save: bool):
        self.save = save

    def add(self, form, prm, layout):
        w = QgsFileWidget(form)
        w.setStorageMode(QgsFileWidget.StorageMode.SaveFile if self.save else QgsFileWidget.StorageMode.GetFile)
        if self.save:
            w.setConfirmOverwrite(False)   # Run asks, and only when something would be replaced
        if prm.file_filter:
            w.setFilter(prm.file_filter)
        # a path needs the width, and a short label beside it left its browse button too narrow (1.5x font)
        _row(form, prm, w, layout, below=True)

    def value(self, form, prm, w):
        return w.filePath().strip() or None


class _Raster(_Input):
    """A second raster (core.tasks.change's AFTER): a raster layer picker, read as the layer's source (a file GDAL
    opens)."""
    inline_error = True

    def add(self, form, prm, layout):
        w = QgsMapLayerComboBox(form)
        compact(w)
        w.setFilters(layer_filters("RasterLayer"))
        w.setAllowEmptyLayer(True)
        w.setCurrentIndex(-1)
        _row(form, prm, w, layout)
        w.layerChanged.connect(lambda _=None, n=prm.name: form.clear_error(n))

    def value(self, form, prm, w):
        layer = w.currentLayer()
        return None if layer is None else layer.source()

    def missing(self, form, prm, w):
        return "" if prm.optional or w.currentLayer() is not None else f"Choose the {prm.label.split(' (')[0]} layer."


class _Flag(_Input):
    """On or off: a check box."""

    def add(self, form, prm, layout):
        w = QCheckBox(prm.label, form)
        w.setChecked(bool(prm.start_value))
        if prm.help:
            w.setToolTip(prm.help)
        form.widgets[prm.name] = w
        layout.addRow(w)

    def value(self, form, prm, w):
        return w.isChecked()


class _Examples(_Samples):
    """Example points or polygons (search by example): the samples' layer picker and "selected only" box; below
    the last of them, the buttons that pick example tiles on the map (example_picker.ExamplePicks; the dock
    attaches them to its canvas). The picks of an input, if any, are its value (a layer as well is refused)."""
    tooltip = ""   # the input's help
    empty_first = True   # examples are optional: none until a layer is chosen

    def add(self, form, prm, layout):
        super().add(form, prm, layout)
        if prm.name == [p.name for p in form.task_cls.params if p.kind == "examples"][-1]:
            from .example_picker import ExamplePicks

            form.map_picks = ExamplePicks(form)
            label = WrapLabel("Example tiles on the map (Shift+click: unlike)", form)
            layout.addRow(label)
            layout.addRow(form.map_picks)

    def value(self, form, prm, w):
        from .example_picker import check_one_source
        from .layer_source import examples_from_layer

        picked = form.map_picks.examples(prm.name) if form.map_picks is not None else None
        layer = w.currentLayer()
        chosen = None if layer is None else examples_from_layer(layer, form.selected_only[prm.name].isChecked(),
                                                                param=prm.name)
        return check_one_source(picked, chosen, prm.name)


class _Images(_Input):
    """Image files (search by example): a file picker of several files."""

    def add(self, form, prm, layout):
        w = QgsFileWidget(form)
        w.setStorageMode(QgsFileWidget.StorageMode.GetMultipleFiles)
        if prm.file_filter:
            w.setFilter(prm.file_filter)
        _row(form, prm, w, layout)

    def value(self, form, prm, w):
        text = w.filePath().strip()
        return [p for p in QgsFileWidget.splitFilePaths(text) if p.strip()] or None if text else None


INPUTS: dict[str, _Input] = {
    "names": _Names(),
    "preset": _Preset(),
    "templates": _Templates(),
    "text": _Text(),
    "int": _Number(integer=True),
    "float": _Number(integer=False),
    "choice": _Choice(),
    "samples": _Samples(),
    "field": _Field(),
    "file": _File(save=False),
    "file_out": _File(save=True),
    "raster": _Raster(),
    "flag": _Flag(),
    "examples": _Examples(),
    "images": _Images(),
}

ERROR_STYLE = "color: #b00020;"


def error_label(parent) -> QLabel:
    label = WrapLabel("", parent)
    label.setStyleSheet(ERROR_STYLE)
    label.setVisible(False)
    return label


def _on_edit(widget, slot) -> None:
    """Call ``slot`` when the user edits ``widget`` (a line or a text box)."""
    signal = getattr(widget, "textChanged", None)
    if signal is not None:
        signal.connect(slot)

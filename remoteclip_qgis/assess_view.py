"""The dock's "Accuracy and areas" box, on core.assess as ``remoteclip sample`` and ``remoteclip assess`` run it.

"Make a sample" (a reference sample): points per class (default 50) inside each class of a result layer, written to a
GeoPackage beside it (``MAP_reference.gpkg``), added to the project in editing mode, the reference field's
editor a list of the map's classes, to which "+" adds a class the map lacks (core.assess reports such
reference-only classes). "Assess the map" (with the reference points): the labelled points (unsaved edits
included) against the map: the report as a table (ReportDialog) and as JSON beside the points
(core.assess.report_beside). Layers are read as the Processing tools read them (layer_source.vector_file).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

from qgis.core import (
    QgsEditorWidgetSetup,
    QgsProject,
    QgsVectorLayer,
    QgsWkbTypes,
)
from qgis.gui import QgsCollapsibleGroupBox, QgsFieldComboBox, QgsMapLayerComboBox
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QVBoxLayout,
)

from .core.errors import InvalidInput, RemoteClipError
from .widgets import compact, layer_filters, set_value

DEFAULT_PER_CLASS = 50
HEADINGS = ("Class", "Map area ha", "Adjusted area ha ± CI", "User's accuracy ± CI", "Producer's accuracy ± CI")


class AssessBox(QgsCollapsibleGroupBox):
    """Map layer and class field, points per class and seed, "Make a reference sample"; the points layer and
    its reference field, "Assess with reference points"."""

    status = pyqtSignal(str)            # what the dock's status line says (HTML)
    problem = pyqtSignal(str, object)   # a refused step: the problem and its fix

    def __init__(self, parent):
        super().__init__("Accuracy and areas", parent)
        self.setObjectName("assess_group")
        self.setCollapsed(True)
        form = QFormLayout(self)
        self.map_combo = QgsMapLayerComboBox(self)
        self.map_combo.setFilters(layer_filters("PolygonLayer"))
        self.map_field = QgsFieldComboBox(self)
        self.per_class = QSpinBox(self)
        self.per_class.setRange(1, 100_000)
        set_value(self.per_class, DEFAULT_PER_CLASS)
        self.per_class.setToolTip("Points in each map class (50 to 100 is the usual rule for a rare class)")
        self.seed = QSpinBox(self)
        self.seed.setRange(0, 2 ** 31 - 1)
        self.seed.setToolTip("The same seed gives the same points (as remoteclip sample --seed)")
        # short texts: the dock is 300 px wide at 1.5x font (tests/test_dock_layout.py)
        self.sample_button = QPushButton("Make a sample", self)
        self.sample_button.setToolTip("Make a reference sample: random points in each class of the map, in a new "
                                      "layer beside it, for you to label")
        self.ref_combo = QgsMapLayerComboBox(self)
        self.ref_combo.setFilters(layer_filters("PointLayer"))
        self.ref_field = QgsFieldComboBox(self)
        self.add_class_button = QToolButton(self)
        self.add_class_button.setText("+")
        self.add_class_button.setObjectName("assess_add_class")
        self.add_class_button.setToolTip("Add a class the map does not have to the classes the reference field "
                                         "offers (the report lists it as a reference-only class)")
        self.assess_button = QPushButton("Assess the map", self)
        self.assess_button.setToolTip("Assess with reference points: accuracy and error-adjusted areas from the "
                                      "labelled points")
        for combo in (self.map_combo, self.map_field, self.ref_combo, self.ref_field):
            compact(combo)
        form.addRow("Map", self.map_combo)
        form.addRow("Class field", self.map_field)
        form.addRow("Points per class", self.per_class)
        form.addRow("Seed", self.seed)
        form.addRow(self.sample_button)
        form.addRow("Points", self.ref_combo)
        ref_row = QHBoxLayout()
        ref_row.addWidget(self.ref_field, 1)
        ref_row.addWidget(self.add_class_button)
        form.addRow("Reference field", ref_row)
        form.addRow(self.assess_button)
        self.map_combo.layerChanged.connect(self._map_changed)
        self.ref_combo.layerChanged.connect(self._ref_changed)
        self.sample_button.clicked.connect(self.make_sample)
        self.assess_button.clicked.connect(self.assess)
        self.add_class_button.clicked.connect(self._ask_class)
        self._map_changed(self.map_combo.currentLayer())
        self._ref_changed(self.ref_combo.currentLayer())
        self.dialog = None
        self.report = None

    def _map_changed(self, layer) -> None:
        self.map_field.setLayer(layer)
        if layer is not None and layer.fields().indexOf("label") >= 0:
            self.map_field.setField("label")

    def _ref_changed(self, layer) -> None:
        self.ref_field.setLayer(layer)
        if layer is not None and layer.fields().indexOf("reference") >= 0:
            self.ref_field.setField("reference")

    def set_map(self, layer) -> None:
        """A finished run's layer, when it is polygons: the map to check."""
        if isinstance(layer, QgsVectorLayer) and layer.geometryType() == QgsWkbTypes.GeometryType.PolygonGeometry:
            self.map_combo.setLayer(layer)

    # -------------------------------------------------------------------------------------- the steps

    def make_sample(self) -> QgsVectorLayer | None:
        """The sample of the chosen map as a project layer in editing mode (None when refused)."""
        try:
            with _busy():
                layer, sample = make_sample_layer(self.map_combo.currentLayer(), self.map_field.currentField(),
                                                  self.per_class.value(), self.seed.value())
        except RemoteClipError as e:
            self.problem.emit(e.problem, e.fix)
            return None
        self.ref_combo.setLayer(layer)
        self.ref_field.setField(sample.reference_field)
        self.status.emit(f"{sample.n_points} reference points in {os.path.basename(sample.output)}: pick each "
                         f"one's class in '{sample.reference_field}' (the layer is in editing mode), then Assess.")
        return layer

    def _ask_class(self) -> None:
        name, ok = QInputDialog.getText(self, "Reference class", "A class the map does not have:")
        if ok:
            self.add_class(name)

    def add_class(self, name: str) -> list[str] | None:
        """Offer ``name`` in the points' reference field (its value map); the classes offered, None when
        refused."""
        field = self.ref_field.currentField()
        try:
            classes = add_reference_class(self.ref_combo.currentLayer(), field, name)
        except RemoteClipError as e:
            self.problem.emit(e.problem, e.fix)
            return None
        finally:
            # QGIS 3.40's field combo resets to the first field when a field's editor widget changes
            self.ref_field.setField(field)
        if classes:
            self.status.emit(f"The reference field offers {len(classes)} classes, '{name.strip()}' among them.")
        else:
            self.status.emit("The reference field takes any text: type the class in the attribute table.")
        return classes

    def assess(self) -> dict | None:
        """The report of the chosen points against the map, shown in a ReportDialog and saved beside the
        points (None when refused)."""
        try:
            with _busy():
                report, path = assess_layers(self.map_combo.currentLayer(), self.map_field.currentField(),
                                             self.ref_combo.currentLayer(), self.ref_field.currentField())
        except RemoteClipError as e:
            self.problem.emit(e.problem, e.fix)
            return None
        self.report = report
        if self.dialog is not None:
            with contextlib.suppress(RuntimeError):   # already deleted with its parent
                self.dialog.close()
        self.dialog = ReportDialog(report, path, self.window())
        self.dialog.show()
        oa = report["overall_accuracy"]["estimate"]
        self.status.emit(f"Overall accuracy {oa:.1%} from {report['n']['used']} points; report saved to "
                         f"{os.path.basename(path)}.")
        return report


@contextlib.contextmanager
def _busy():
    QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
    try:
        yield
    finally:
        QApplication.restoreOverrideCursor()


@contextlib.contextmanager
def _scratch():
    folder = tempfile.mkdtemp(prefix="remoteclip_assess_")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _folder_beside(layer, inputs) -> tuple[str, str]:
    """(folder, stem) for what is written beside ``layer``: its file's, else the results folder's."""
    from .dock_settings import results_folder, slug

    origin = inputs[0][0].split("|")[0] if inputs else ""
    if origin and os.path.isfile(origin):
        return os.path.dirname(os.path.abspath(origin)), os.path.splitext(os.path.basename(origin))[0]
    folder = results_folder()
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder), slug(layer.name())


def sample_path(folder: str, stem: str) -> str:
    """``STEM_reference.gpkg`` in ``folder``, or ``STEM_reference_2.gpkg``... when taken: a new sample never
    replaces one an analyst may have labelled."""
    path, n = os.path.join(folder, f"{stem}_reference.gpkg"), 2
    while os.path.lexists(path):
        path, n = os.path.join(folder, f"{stem}_reference_{n}.gpkg"), n + 1
    return path


def make_sample_layer(map_layer, map_field: str, per_class: int, seed: int = 0):
    """(layer, core.assess.Sample): ``per_class`` points in each class of ``map_layer`` (core.assess.write_sample,
    the points of ``remoteclip sample --per-class N --seed S``) beside it, added to the project in editing
    mode with the reference field's editor a value map of the map's classes."""
    from .core.assess import write_sample
    from .layer_source import vector_file

    if not map_field:
        raise InvalidInput("No class field of the map is chosen.", "Pick the field that holds the map's classes.")
    with _scratch() as scratch:
        path, name, inputs = vector_file(map_layer, scratch, "map")
        folder, stem = _folder_beside(map_layer, inputs)
        sample = write_sample(path, sample_path(folder, stem), map_field, name, per_class=per_class, seed=seed,
                              inputs=inputs)
    layer = QgsVectorLayer(f"{sample.output}|layername={sample.layer}", f"{map_layer.name()} · reference sample",
                           "ogr")
    if not layer.isValid():
        raise InvalidInput(f"QGIS cannot open the sample {sample.output}.", "Open it with Layer > Add Layer.")
    idx = layer.fields().indexOf(sample.reference_field)
    classes = [{c: c} for c in sample.strata.classes]   # QGIS's value map: {description: value} items
    layer.setEditorWidgetSetup(idx, QgsEditorWidgetSetup("ValueMap", {"map": classes}))
    layer.renderer().setSymbol(sample_symbol())   # QGIS's random colour may vanish on the map's own colours
    if QgsProject.instance().addMapLayer(layer) is None or not layer.startEditing():
        raise InvalidInput(f"The sample {sample.output} was written but QGIS could not open it for editing.",
                           "Add it with Layer > Add Layer and toggle editing.", path=sample.output)
    return layer, sample


def add_reference_class(layer, field: str, name: str) -> list[str]:
    """Add ``name`` to the classes the reference field's value map offers (the analyst's label may be a class
    the map lacks); returns the classes offered. A field edited as free text takes any class already."""
    name = (name or "").strip()
    if not isinstance(layer, QgsVectorLayer) or not field or layer.fields().indexOf(field) < 0:
        raise InvalidInput("No reference points or reference field is chosen.",
                           "Pick the points layer and its reference field in the Accuracy and areas box.")
    if not name:
        raise InvalidInput("The class name is empty.", "Type the name of the class to add.")
    idx = layer.fields().indexOf(field)
    setup = layer.editorWidgetSetup(idx)
    if setup.type() != "ValueMap":
        return []
    config = dict(setup.config())
    items = config.get("map") or []
    if isinstance(items, dict):   # the older form of QGIS's value map: {description: value}
        items = [{k: v} for k, v in items.items()]
    items = list(items)
    values = [str(v) for item in items for v in item.values()]
    if name not in values:
        items.append({name: name})
        values.append(name)
        config["map"] = items
        layer.setEditorWidgetSetup(idx, QgsEditorWidgetSetup("ValueMap", config))
    return values


def assess_layers(map_layer, map_field: str, ref_layer, ref_field: str) -> tuple[dict, str]:
    """(report, JSON path): core.assess.assess of the points (their unsaved edits included) against the map,
    the report saved beside the points (replacing only an earlier accuracy report)."""
    from .core.assess import assess, check_report_outputs, is_report, report_beside, write_report_files
    from .layer_source import vector_file

    if not map_field or not ref_field:
        raise InvalidInput("The map's class field or the points' reference field is not chosen.",
                           "Pick both fields in the Accuracy and areas box.")
    with _scratch() as scratch:
        map_path, map_name, map_inputs = vector_file(map_layer, scratch, "map")
        ref_path, ref_name, ref_inputs = vector_file(ref_layer, scratch, "reference points")
        file, _, name = (ref_inputs[0][0] if ref_inputs else "").partition("|layername=")
        if file and os.path.isfile(file):
            out = report_beside(file, name or None)
        else:
            folder, stem = _folder_beside(ref_layer, ref_inputs)
            out = os.path.join(folder, stem + ".accuracy.json")
        check_report_outputs(out, None, [*map_inputs, *ref_inputs], overwrite=is_report(out))
        report = assess(map_path, ref_path, ref_field, map_field, map_name, ref_name)
        for key, layer, path in (("map", map_layer, map_path), ("reference", ref_layer, ref_path)):
            if path.startswith(scratch):   # a copy made for core: the report names the layer
                report[key] = layer.publicSource()
        write_report_files(report, out)
    return report, out


class ReportDialog(QDialog):
    """The report as a table: per class map area, adjusted area, user's and producer's accuracy, each with
    its 95 % confidence half-width (core.assess.report_rows); overall accuracy and notes above and below."""

    def __init__(self, report: dict, path: str, parent=None):
        from .core.assess import overall_text, report_notes, report_rows

        super().__init__(parent)
        self.setObjectName("assess_report")
        self.setWindowTitle("RemoteCLIP · accuracy and areas")
        v = QVBoxLayout(self)
        self.overall = QLabel(overall_text(report).replace("+/-", "±"), self)
        self.overall.setObjectName("assess_overall")
        v.addWidget(self.overall)
        rows = report_rows(report)
        self.table = QTableWidget(len(rows), len(HEADINGS), self)
        self.table.setObjectName("assess_table")
        self.table.setHorizontalHeaderLabels(list(HEADINGS))
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        for r, row in enumerate(rows):
            for c, text in enumerate(row):
                item = QTableWidgetItem(text.replace("+/-", "±"))
                if c:
                    item.setTextAlignment(int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter))
                self.table.setItem(r, c, item)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        v.addWidget(self.table)
        self.notes = QLabel("\n".join([*report_notes(report), f"Report: {path}"]), self)
        self.notes.setWordWrap(True)
        self.notes.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        v.addWidget(self.notes)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close, self)
        buttons.rejected.connect(self.close_report)
        v.addWidget(buttons)
        self.table.setMinimumHeight(table_height(self.table, 12))
        self.resize(max(760, self.sizeHint().width()), self.sizeHint().height())

    def close_report(self) -> None:
        self.close()

    def cell(self, row: int, column: int) -> str:
        return self.table.item(row, column).text()


def table_height(table, most_rows: int) -> int:
    """The height that shows the header and up to ``most_rows`` rows of ``table`` whole (more rows scroll)."""
    table.resizeRowsToContents()
    rows = sum(table.rowHeight(r) for r in range(min(table.rowCount(), most_rows)))
    scroll = table.horizontalScrollBar().sizeHint().height()   # room for a sideways scroll bar, should one show
    return table.horizontalHeader().sizeHint().height() + rows + 2 * table.frameWidth() + scroll


def sample_symbol():
    """Reference points that show on any map: white dots with a black ring."""
    from qgis.core import QgsMarkerSymbol

    return QgsMarkerSymbol.createSimple({"name": "circle", "color": "255,255,255,255", "outline_color": "0,0,0,255",
                                         "outline_width": "0.4", "size": "3"})

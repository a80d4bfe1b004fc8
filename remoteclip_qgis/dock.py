"""The RemoteCLIP dock: pick a raster and a model, describe the task, run it in the background,
get a styled layer; export result layers to Shapefile or GeoPackage.

The dock only turns widget values into a ``core.jobs.Job`` (``build_job``);
everything else is core's (``run_job``) or the shared result styling
(``layers.add_result_layer``), so the dock does exactly what the command line
and the Processing algorithms do.
"""

from __future__ import annotations

import contextlib
import html
import os
import re
import time
from pathlib import Path

import qgis.utils
from qgis.core import (
    Qgis,
    QgsApplication,
    QgsCoordinateTransform,
    QgsMapLayerProxyModel,
    QgsMessageLog,
    QgsProject,
    QgsProviderRegistry,
    QgsRasterDataProvider,
    QgsRasterLayer,
    QgsSettings,
    QgsVectorFileWriter,
    QgsVectorLayer,
)
from qgis.gui import QgsCollapsibleGroupBox, QgsDockWidget, QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)
from qgis.PyQt.QtXml import QDomDocument

from . import deps
from .core.bundle import DEMO_BUNDLE, PRECISIONS, bundle_path, default_bundle
from .core.errors import RemoteClipError
from .core.prompts import PRESETS
from .core.raster import parse_bands
from .core.tasks import TASKS as TASK_CLASSES
from .core.tiles import MAX_OVERLAP
from .model_picker import DEMO_NOTE, ModelRow, is_demo
from .task_forms import TaskForm

LOG_TAG = "RemoteCLIP"
SETTINGS = "RemoteCLIP/"
DEMO_MODEL = DEMO_BUNDLE   # the demo model shipped inside the plugin (models/ beside the vendored core)
RESULTS_FOLDER = "remoteclip_results"
TASKS = tuple(TASK_CLASSES)   # the tabs, in the registry's order
EXTENT_LAYER, EXTENT_CANVAS, EXTENT_FEATURES = "layer", "canvas", "features"
EXPORT_FORMATS = {"GeoPackage": ("GPKG", ".gpkg"), "ESRI Shapefile": ("ESRI Shapefile", ".shp")}


def default_model() -> str:
    """The model remembered from last time, else core's default (REMOTECLIP_MODEL, the demo model shipped
    inside the plugin), else ''."""
    saved = QgsSettings().value(SETTINGS + "model", "", type=str)
    if saved and os.path.exists(saved):
        return saved
    return default_bundle() or ""


def results_folder(project: QgsProject | None = None) -> Path:
    """Next to the saved project (remoteclip_results/), else in QGIS's settings folder."""
    project = project or QgsProject.instance()
    if project.fileName():
        return Path(project.absolutePath()) / RESULTS_FOLDER
    return Path(QgsApplication.qgisSettingsDirPath()) / RESULTS_FOLDER


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:40] or "raster"


def default_output(raster_name: str, kind: str, project: QgsProject | None = None) -> str:
    folder = results_folder(project)
    stem = f"{slug(raster_name)}_{kind}_{time.strftime('%Y%m%d_%H%M%S')}"
    path = folder / f"{stem}.gpkg"
    n = 2
    while path.exists():
        path = folder / f"{stem}_{n}.gpkg"
        n += 1
    return str(path)


def layers_showing(path: str, layer_name: str | None = None, project: QgsProject | None = None) -> list:
    """The project's layers whose data is the file ``path`` (of a GeoPackage: its layer ``layer_name``),
    whatever the spelling of their source (relative, symlink, hard link)."""
    from .core.vectors import same_file

    project = project or QgsProject.instance()
    gpkg = os.path.splitext(path)[1].lower() == ".gpkg"
    out = []
    for layer in project.mapLayers().values():
        parts = QgsProviderRegistry.instance().decodeUri(layer.providerType(), layer.source())
        src = parts.get("path") or ""
        if not src or not same_file(src, path):
            continue
        shown = parts.get("layerName") or None
        if gpkg and layer_name and shown and shown.lower() != layer_name.lower():
            continue   # another layer of that GeoPackage: it is kept, and SQLite lets QGIS read on
        out.append(layer)
    return out


def is_web_layer(layer: QgsRasterLayer) -> bool:
    """A raster without a pixel grid of its own (XYZ, WMS): it is read at a chosen extent and resolution."""
    provider = layer.dataProvider()
    return provider is not None and not (provider.capabilities() & QgsRasterDataProvider.Capability.Size
                                         and provider.xSize() > 0)


def set_value(widget, value) -> None:
    """Set a spin box's or progress bar's value."""
    widget.setValue(value)  # noqa: QGS202 (a Qt widget setter: nothing to check)


def _compact(combo) -> None:
    # long layer names must not widen the dock: combos elide instead
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(6)


def save_setting(key: str, value) -> None:
    QgsSettings().setValue(SETTINGS + key, value)  # noqa: QGS202 (QgsSettings.setValue returns nothing)


class RemoteClipDock(QgsDockWidget):
    """The panel. Uses ``qgis.utils.iface``: mapCanvas(), messageBar() and, if present, currentLayerChanged."""

    resultAdded = pyqtSignal(object)   # QgsVectorLayer

    def __init__(self, parent=None):
        super().__init__("RemoteCLIP", parent)
        self.setObjectName("RemoteClipDock")
        self.iface = qgis.utils.iface
        self.task = None
        self.install_task = None
        self.last_result = None
        self.last_layer = None
        self.last_dense_layer = None
        self.last_suggestions = None
        self.bundle = None
        self._kind = None
        self._name = ""
        self._output = None
        self._build()
        self._restore()
        self.refresh_dependencies()
        current = getattr(self.iface, "currentLayerChanged", None)
        if current is not None:
            with contextlib.suppress(TypeError):   # a test iface's signal may carry another type
                current.connect(self._follow_layer)

    # ------------------------------------------------------------------------------------ layout

    def _build(self) -> None:
        scroll = QScrollArea(self)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setMinimumWidth(300)
        body = QWidget(scroll)
        col = QVBoxLayout(body)
        col.setContentsMargins(6, 6, 6, 6)

        # missing packages banner
        self.banner = QFrame(body)
        self.banner.setObjectName("deps_banner")
        self.banner.setStyleSheet("#deps_banner { background: #fff4ce; border: 1px solid #e0b000; "
                                  "border-radius: 3px; }")
        b = QVBoxLayout(self.banner)
        self.banner_label = QLabel(self.banner)
        self.banner_label.setWordWrap(True)
        self.banner_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.install_button = QPushButton("Install dependencies", self.banner)
        self.install_button.clicked.connect(self.install_dependencies)
        b.addWidget(self.banner_label)
        b.addWidget(self.install_button)
        col.addWidget(self.banner)

        # input
        form = QFormLayout()
        self.layer_combo = QgsMapLayerComboBox(body)
        _compact(self.layer_combo)
        self.layer_combo.setFilters(QgsMapLayerProxyModel.Filter.RasterLayer)
        self.layer_combo.setToolTip("The raster to tile (follows the active layer)")
        form.addRow("Raster", self.layer_combo)
        # the model row (model_picker.ModelRow): local bundles and catalogue models with Get
        self.model_row = ModelRow(body)
        self.model_widget = self.model_row.file_widget
        self.model_widget.fileChanged.connect(self._model_changed)
        self.model_info = self.model_row.info
        self.model_row.message.connect(lambda text, level: self.iface.messageBar().pushMessage(
            "RemoteCLIP", text, Qgis.MessageLevel(level), 10))
        form.addRow("Model", self.model_row)
        device_row = QHBoxLayout()
        self.device_combo = QComboBox(body)
        _compact(self.device_combo)
        self.device_combo.addItems(["auto", "cpu", "cuda"])
        self.device_combo.setToolTip("auto: the GPU when onnxruntime-gpu and CUDA work, else the CPU")
        self.provider_label = QLabel("ran on: not run yet", body)
        self.provider_label.setObjectName("provider_label")
        self.provider_label.setWordWrap(True)
        self.provider_label.setToolTip("The onnxruntime execution provider that really ran the last job")
        device_row.addWidget(self.device_combo)
        device_row.addWidget(self.provider_label, 1)
        form.addRow("Device", device_row)
        col.addLayout(form)

        # task tabs
        self.tabs = QTabWidget(body)
        self.forms: dict[str, TaskForm] = {}
        for kind, cls in TASK_CLASSES.items():
            self.forms[kind] = TaskForm(cls, self.tabs)
            self.tabs.addTab(self.forms[kind], cls.title)
            self.tabs.setTabToolTip(self.tabs.count() - 1, cls.summary)
        self._name_widgets()
        col.addWidget(self.tabs)

        col.addWidget(self._tiles_group(body))
        col.addWidget(self._run_group(body))
        col.addWidget(self._output_group(body))

        col.addWidget(self._export_group(body))
        col.addStretch(1)
        scroll.setWidget(body)

        # Run, progress and status stay in view below the scrolling settings
        outer = QWidget(self)
        outer_col = QVBoxLayout(outer)
        outer_col.setContentsMargins(0, 0, 0, 6)
        outer_col.addWidget(scroll, 1)
        bar = QVBoxLayout()
        bar.setContentsMargins(6, 0, 6, 0)
        buttons = QHBoxLayout()
        self.run_button = QPushButton("Run", outer)
        self.run_button.setObjectName("remoteclip_run")
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel", outer)
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        bar.addLayout(buttons)
        self.progress = QProgressBar(outer)
        self.progress.setRange(0, 100)
        set_value(self.progress, 0)
        bar.addWidget(self.progress)
        self.status = QLabel("Ready.", outer)
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        bar.addWidget(self.status)
        outer_col.addLayout(bar)
        self.setWidget(outer)

    def _name_widgets(self) -> None:
        """The generated widgets under the names the rest of the dock (and its tests) use."""
        label, count, search = (self.forms[k].widgets for k in ("label", "count", "search"))
        self.preset_combo, self.labels_edit, self.templates_edit = label["preset"], label["labels"], label["templates"]
        self.label_topk, self.label_threshold = label["top_k"], label["threshold"]
        self.label_map_labels = self.forms["label"].map_labels
        self.count_object, self.count_max = count["object_name"], count["max_count"]
        self.search_query, self.search_topk, self.search_threshold = search["query"], search["top_k"], search["threshold"]
        self.search_map_labels = self.forms["search"].map_labels

    def _tiles_group(self, parent) -> QWidget:
        box = QgsCollapsibleGroupBox("Tiles", parent)
        form = QFormLayout(box)
        row = QHBoxLayout()
        self.tile_size = QDoubleSpinBox(box)
        self.tile_size.setRange(1.0, 1e6)
        self.tile_size.setDecimals(1)
        set_value(self.tile_size, 224)
        self.tile_unit = QComboBox(box)
        _compact(self.tile_unit)
        self.tile_unit.addItem("pixels", "px")
        self.tile_unit.addItem("metres", "m")
        row.addWidget(self.tile_size, 1)
        row.addWidget(self.tile_unit)
        form.addRow("Tile size", row)
        self.overlap = QSpinBox(box)
        self.overlap.setRange(0, int(round(MAX_OVERLAP * 100)))
        self.overlap.setSingleStep(10)
        self.overlap.setSuffix(" %")
        form.addRow("Overlap", self.overlap)
        self.extent_combo = QComboBox(box)
        _compact(self.extent_combo)
        self.extent_combo.addItem("Whole layer", EXTENT_LAYER)
        self.extent_combo.addItem("Current map view", EXTENT_CANVAS)
        self.extent_combo.addItem("Polygons of a layer", EXTENT_FEATURES)
        self.extent_combo.currentIndexChanged.connect(self._extent_changed)
        form.addRow("Extent", self.extent_combo)
        poly_row = QHBoxLayout()
        self.polygon_combo = QgsMapLayerComboBox(box)
        _compact(self.polygon_combo)
        self.polygon_combo.setFilters(QgsMapLayerProxyModel.Filter.PolygonLayer)
        self.selected_only = QCheckBox("selected only", box)
        self.selected_only.setChecked(True)
        poly_row.addWidget(self.polygon_combo, 1)
        poly_row.addWidget(self.selected_only)
        form.addRow("Polygons", poly_row)
        self.bands_edit = QLineEdit(box)
        self.bands_edit.setPlaceholderText("auto (RGB by colour interpretation)")
        form.addRow("Bands", self.bands_edit)
        self._extent_changed()
        return box

    def _run_group(self, parent) -> QWidget:
        box = QgsCollapsibleGroupBox("Model run", parent)
        box.setCollapsed(True)
        form = QFormLayout(box)
        self.batch_size = QSpinBox(box)
        self.batch_size.setRange(1, 4096)
        set_value(self.batch_size, 32)
        form.addRow("Batch size", self.batch_size)
        self.precision_combo = QComboBox(box)
        _compact(self.precision_combo)
        self.precision_combo.addItems(list(PRECISIONS))   # then the chosen bundle's own (_model_changed)
        self.precision_combo.setToolTip("fp32: exact; fp16: for GPUs; int8: CPUs, about twice as fast (bundles "
                                        "converted with --int8; their agreement with fp32 is in the manifest)")
        form.addRow("Precision", self.precision_combo)
        self.use_cache = QCheckBox("Reuse cached tile embeddings", box)
        self.use_cache.setChecked(True)
        form.addRow(self.use_cache)
        return box

    def _output_group(self, parent) -> QWidget:
        box = QgsCollapsibleGroupBox("Output", parent)
        form = QFormLayout(box)
        self.output_widget = QgsFileWidget(box)
        self.output_widget.setStorageMode(QgsFileWidget.StorageMode.SaveFile)
        self.output_widget.setConfirmOverwrite(False)   # Run asks, and only when something would be replaced
        self.output_widget.setFilter("GeoPackage (*.gpkg);;ESRI Shapefile (*.shp)")
        self.output_widget.lineEdit().setPlaceholderText(f"auto: {results_folder()}/…gpkg")
        form.addRow("File", self.output_widget)
        self.dissolve = QCheckBox("Dissolve equal neighbours", box)
        self.dissolve.setToolTip("Merge touching tiles with the same label / count / selection into one polygon")
        form.addRow(self.dissolve)
        self.raster_output_widget = QgsFileWidget(box)
        self.raster_output_widget.setStorageMode(QgsFileWidget.StorageMode.SaveFile)
        self.raster_output_widget.setConfirmOverwrite(False)   # Run asks, and only when something would be replaced
        self.raster_output_widget.setFilter("GeoTIFF (*.tif)")
        self.raster_output_widget.lineEdit().setPlaceholderText("none (optional: a heat map GeoTIFF)")
        self.raster_output_widget.setToolTip("Also write the per-class probabilities (or the search similarity) "
                                             "as a GeoTIFF at tile resolution; with overlap it is a smooth heat map")
        form.addRow("Heat map", self.raster_output_widget)
        self.tabs.currentChanged.connect(self._kind_changed)
        self._kind_changed()
        return box

    def _kind_changed(self, _index=None) -> None:
        self.raster_output_widget.setEnabled(TASK_CLASSES[self.current_kind()].dense)

    def _export_group(self, parent) -> QWidget:
        box = QgsCollapsibleGroupBox("Export a result layer", parent)
        box.setCollapsed(True)
        form = QFormLayout(box)
        self.export_layer_combo = QgsMapLayerComboBox(box)
        _compact(self.export_layer_combo)
        self.export_layer_combo.setFilters(QgsMapLayerProxyModel.Filter.VectorLayer)
        form.addRow("Layer", self.export_layer_combo)
        self.export_format = QComboBox(box)
        _compact(self.export_format)
        self.export_format.addItems(list(EXPORT_FORMATS))
        form.addRow("Format", self.export_format)
        self.export_widget = QgsFileWidget(box)
        self.export_widget.setStorageMode(QgsFileWidget.StorageMode.SaveFile)
        self.export_widget.setConfirmOverwrite(False)   # Export asks, and only when something would be replaced
        self.export_widget.setFilter("GeoPackage (*.gpkg);;ESRI Shapefile (*.shp)")
        form.addRow("File", self.export_widget)
        self.export_button = QPushButton("Export", box)
        self.export_button.clicked.connect(self.export_clicked)
        form.addRow(self.export_button)
        return box

    # ----------------------------------------------------------------------------- settings, model

    def _restore(self) -> None:
        s = QgsSettings()
        model = default_model()
        if model:
            self.model_widget.setFilePath(model)
        self._model_changed(self.model_widget.filePath())
        labels = s.value(SETTINGS + "labels", "", type=str)
        self.labels_edit.setPlainText(labels or "\n".join(PRESETS["land-cover"]))
        set_value(self.tile_size, s.value(SETTINGS + "tile_size", 224.0, type=float))
        self.tile_unit.setCurrentIndex(max(self.tile_unit.findData(s.value(SETTINGS + "tile_unit", "px")), 0))
        set_value(self.batch_size, s.value(SETTINGS + "batch_size", 32, type=int))
        self.device_combo.setCurrentText(s.value(SETTINGS + "device", "auto", type=str))

    def _remember(self) -> None:
        save_setting("model", self.model_path())
        save_setting("labels", self.labels_edit.toPlainText())
        save_setting("tile_size", self.tile_size.value())
        save_setting("tile_unit", self.tile_unit.currentData())
        save_setting("batch_size", self.batch_size.value())
        save_setting("device", self.device_combo.currentText())

    def model_path(self) -> str:
        return bundle_path(self.model_widget.filePath())

    def _model_changed(self, _path=None) -> None:
        path = self.model_path()
        self.bundle = None
        if not path:
            self.model_info.setText("<i>No model: choose a bundle folder or .zip.</i>")
            return
        try:
            from .core.bundle import load_bundle

            b = load_bundle(path)
        except Exception as e:
            self.model_info.setText(f"<span style='color:#b00020'>{_html(str(e))}</span>")
            return
        self.bundle = b   # parsed once, here; handed to the job
        self.model_info.setText(f"<b>{_html(b.name)}</b> · {_html(b.architecture)} · {_html(b.activation)} · "
                                f"{b.embed_dim}-d" + (f"<br><i>{DEMO_NOTE}</i>" if is_demo(path) else ""))
        current = self.precision_combo.currentText()
        self.precision_combo.clear()
        self.precision_combo.addItems(list(b.precisions))
        if current in b.precisions:
            self.precision_combo.setCurrentText(current)
        save_setting("model", path)

    def _extent_changed(self, _index=None) -> None:
        on = self.extent_combo.currentData() == EXTENT_FEATURES
        self.polygon_combo.setEnabled(on)
        self.selected_only.setEnabled(on)

    def _follow_layer(self, layer) -> None:
        if isinstance(layer, QgsRasterLayer):
            self.layer_combo.setLayer(layer)

    # --------------------------------------------------------------------------------- dependencies

    def refresh_dependencies(self) -> list[str]:
        missing = deps.missing_modules()
        if missing:
            plan_text = ""
            with contextlib.suppress(FileNotFoundError):   # no python found: the banner still says what is missing
                plan_text = deps.make_plan(missing).manual_command()
            self.banner_label.setText(
                f"<b>Missing Python packages: {', '.join(missing)}.</b> RemoteCLIP needs them to run models. "
                f"Click the button to install them into {deps.deps_dir()} (QGIS's numpy is kept)"
                + (f", or run by hand:<br><code>{_html(plan_text)}</code>" if plan_text else "."))
        self.banner.setVisible(bool(missing))
        self.run_button.setEnabled(not missing and self.task is None)
        self.run_button.setToolTip("Install the missing packages first" if missing else "")
        return missing

    def install_dependencies(self) -> None:
        if self.install_task is not None:
            return
        plan = deps.make_plan()
        if not plan.attempts:
            self.refresh_dependencies()
            return
        self.install_task = deps.InstallTask(plan)
        self.install_task.done.connect(self._install_done)
        self.install_button.setEnabled(False)
        self.install_button.setText("Installing… (see the log panel, tab RemoteCLIP)")
        QgsApplication.taskManager().addTask(self.install_task)

    def _install_done(self, ok: bool, summary: str, manual: str) -> None:
        self.install_task = None
        self.install_button.setEnabled(True)
        self.install_button.setText("Install dependencies")
        missing = self.refresh_dependencies()
        bar = self.iface.messageBar()
        if ok and not missing:
            bar.pushMessage("RemoteCLIP", f"Dependencies installed: {summary}.", Qgis.MessageLevel.Success, 10)
        else:
            QgsMessageLog.logMessage(f"Installing dependencies failed: {summary}\nRun by hand:\n{manual}",
                                     LOG_TAG, Qgis.MessageLevel.Critical)
            bar.pushMessage("RemoteCLIP", f"Installing dependencies failed ({summary}). Run by hand: {manual}",
                            Qgis.MessageLevel.Critical, 0)

    # ------------------------------------------------------------------------------------- the job

    def current_kind(self) -> str:
        return TASKS[self.tabs.currentIndex()]

    def set_kind(self, kind: str) -> None:
        self.tabs.setCurrentIndex(TASKS.index(kind))

    def _task(self):
        """The current tab's task, parsed by its class from the widgets' values (as typed)."""
        cls = TASK_CLASSES[self.current_kind()]
        return cls.from_inputs(self.forms[cls.kind].raw(), spell=lambda prm: prm.label)

    def _extent(self, layer: QgsRasterLayer):
        from .layer_source import extent_from_features, extent_from_rectangle

        mode = self.extent_combo.currentData()
        if mode == EXTENT_CANVAS or (mode == EXTENT_LAYER and is_web_layer(layer)):
            # a web layer (XYZ, WMS) covers the world: "whole layer" means what the map shows
            canvas = self.iface.mapCanvas()
            return extent_from_rectangle(canvas.extent(), canvas.mapSettings().destinationCrs())
        if mode == EXTENT_FEATURES:
            poly = self.polygon_combo.currentLayer()
            if poly is None:
                raise RemoteClipError("No polygon layer is chosen for the extent.",
                                      "Pick a polygon layer under Tiles > Polygons, or use the whole layer.")
            return extent_from_features(poly, self.selected_only.isChecked())
        return None

    def _pixel_size(self, layer: QgsRasterLayer) -> float | None:
        """Web layers are read at the map's current resolution (what the user sees is what is analysed)."""
        if not is_web_layer(layer):
            return None
        canvas = self.iface.mapCanvas()
        ext, crs = canvas.extent(), canvas.mapSettings().destinationCrs()
        if crs != layer.crs():
            ext = QgsCoordinateTransform(crs, layer.crs(), QgsProject.instance()).transformBoundingBox(ext)
        return ext.width() / max(canvas.width(), 1)

    def build_job(self):
        """The core Job the widgets describe, its style kind and the name of the layer to add."""
        from .core.jobs import Job, RunOptions, TileSpec
        from .layer_source import raster_for_layer

        layer = self.layer_combo.currentLayer()
        if not isinstance(layer, QgsRasterLayer) or not layer.isValid():
            raise RemoteClipError("No raster layer is chosen.", "Add a raster to the project and pick it in "
                                  "the RemoteCLIP panel.")
        model = self.model_path()
        if not model:
            raise RemoteClipError("No model bundle is chosen.",
                                  "Choose a bundle folder (with manifest.json) or a bundle .zip under Model.")
        kind = self.current_kind()
        extent = self._extent(layer)
        raster = raster_for_layer(layer, pixel_size=self._pixel_size(layer), extent=extent)
        output = self.output_widget.filePath().strip() or default_output(layer.name(), kind)
        if not os.path.splitext(output)[1]:
            output += ".gpkg"
        tiles = TileSpec(size=self.tile_size.value(), unit=self.tile_unit.currentData(),
                         overlap=self.overlap.value() / 100.0, extent=extent,
                         bands=parse_bands(self.bands_edit.text()))
        run = RunOptions(model=self._loaded_bundle(model), device=self.device_combo.currentText(),
                         precision=self.precision_combo.currentText() or "fp32",
                         batch_size=self.batch_size.value(), cache_dir=None if self.use_cache.isChecked() else "")
        dense = self.raster_output_widget.filePath().strip() if TASK_CLASSES[kind].dense else ""
        if dense and not os.path.splitext(dense)[1]:
            dense += ".tif"
        job = Job(raster=raster, task=self._task(), run=run, tiles=tiles, output=output,
                  dissolve=self.dissolve.isChecked(), raster_output=dense or None)
        return job, kind, job.task.layer_title(layer.name())

    def _loaded_bundle(self, model: str):
        """The bundle the model row loaded (the worker need not read the manifest again), else the path."""
        b = self.bundle
        if b is not None and os.path.normpath(str(b.source)) == os.path.normpath(model):
            return b
        return model

    def run(self):
        """Start the job as a QgsTask; returns the task (None when the input is refused)."""
        if self.task is not None:
            return None
        missing = self.refresh_dependencies()
        if missing:
            self._report_error("Missing Python packages: " + ", ".join(missing) + ".",
                               "Click 'Install dependencies' in the RemoteCLIP panel.")
            return None
        try:
            job, kind, name = self.build_job()
            if not self._may_write(job):
                return None
        except RemoteClipError as e:
            self._report_error(e.problem, e.fix)
            return None
        if not self._confirm_plan(job):
            return None
        from .task import RemoteClipTask

        if not self.output_widget.filePath().strip():
            Path(job.output).parent.mkdir(parents=True, exist_ok=True)   # the default results folder
        self._remember()
        self._kind, self._name, self._output = kind, name, job.output
        self.task = RemoteClipTask(job, f"RemoteCLIP {kind}: {name}")
        self.task.progressChanged.connect(lambda p: set_value(self.progress, int(p)))
        self.task.statusChanged.connect(self.status.setText)
        self.task.succeeded.connect(self._succeeded)
        self.task.failed.connect(self._failed)
        self.task.cancelled.connect(self._cancelled)
        self._set_running(True)
        self.status.setText(f"Running {kind} on {name.split(' · ')[0]}…")
        QgsApplication.taskManager().addTask(self.task)
        return self.task

    def _confirm_plan(self, job) -> bool:
        """A plan above core's tile limit runs only when the user says so (the command line's --yes)."""
        from .core.jobs import plan_job

        try:
            plan = plan_job(job)
        except RemoteClipError as e:
            self._report_error(e.problem, e.fix)
            return False
        self.status.setText(f"Plan: {plan.describe()}.")
        if job.max_tiles is None or plan.n_tiles <= job.max_tiles:
            return True
        answer = QMessageBox.question(
            self, "RemoteCLIP", f"This run has {plan.describe()}.\n\nRun it anyway? (Larger tiles, less "
            "overlap or a smaller extent make fewer tiles.)", QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No)
        if answer != QMessageBox.StandardButton.Yes:
            return False
        job.max_tiles = None
        return True

    def _may_write(self, job) -> bool:
        """Refuse an output a project layer shows; ask before replacing one (then ``job.overwrite``): the vector
        output, the heat map and a saved classifier."""
        from .core.jobs import output_layer_name
        from .core.vectors import output_exists

        layer_name = output_layer_name(job)
        files = [(job.output, layer_name)] + [(p, None) for p in (job.raster_output, *[f for f, _ in
                                                                                       job.task.files_out()]) if p]
        replaced = []
        for path, lname in files:
            shown = layers_showing(path, lname)
            if shown:
                raise RemoteClipError(
                    f"The output {path} is shown in this project by the layer “{shown[0].name()}”.",
                    "Remove that layer from the Layers panel first, or choose another output file.")
            what = output_exists(path, lname) if lname else (f"the file {path}" if os.path.lexists(path) else None)
            if what is not None:
                replaced.append(what)
        if not replaced:
            return True
        what = " and ".join(replaced)
        if not self.confirm_replace(what):
            self.status.setText(f"Not run: {_html(what)} was kept. Choose another output file or replace it.")
            return False
        job.overwrite = True
        return True

    def confirm_replace(self, what: str) -> bool:
        kept = " Its other layers are kept." if what.startswith("the layer ") else ""
        answer = QMessageBox.question(self, "RemoteCLIP", f"Replace {what}?{kept}",
                                      QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                      QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes

    def cancel(self) -> None:
        if self.task is not None:
            self.status.setText("Cancelling after the current batch…")
            self.task.cancel()

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        if running:
            set_value(self.progress, 0)

    def _finish(self) -> None:
        self.task = None
        self._set_running(False)
        self.refresh_dependencies()

    def _succeeded(self, result) -> None:
        from .layers import add_dense_layer, add_result_layer, add_suggestions_layer

        self._finish()
        set_value(self.progress, 100)
        self.last_result = result
        form = self.forms.get(self._kind)
        try:
            layer = add_result_layer(result, self._kind, self._name,
                                     show_labels=form.show_labels() if form is not None else None)
        except RemoteClipError as e:
            self._report_error(e.problem, e.fix)
            return
        try:   # the result is written and shown; these extras must not turn it into a failure
            if result.raster_output:
                self.last_dense_layer = add_dense_layer(result.raster_output, self._kind, self._name + " · heat map")
            self.last_suggestions = add_suggestions_layer(result, self._name) if any(
                r.get("suggest") for r in result.records) else None
        except Exception as e:   # noqa: BLE001 (reported, and the run's layer stays)
            problem, fix = (e.problem, e.fix) if isinstance(e, RemoteClipError) else (f"{type(e).__name__}: {e}", None)
            self._report_error(problem, fix)
        if form is not None:
            form.show_report(result.report)
        self.last_layer = layer
        self.export_layer_combo.setLayer(layer)
        cache = " · from cache" if result.cache_hit else ""
        self.provider_label.setText("ran on: " + result.provider
                                    + (" · tile embeddings from cache" if result.cache_hit else ""))
        summary = f"{result.n_tiles} tiles in {result.seconds:.1f} s on {result.provider}{cache}"
        cv = (result.report or {}).get("cv")
        if cv:
            summary += f" · cross-validated accuracy {cv['accuracy']:.0%}"
        self.status.setText(f"Done: {summary}. Saved to {result.output}")
        for w in result.warnings:
            self.iface.messageBar().pushMessage("RemoteCLIP", w, Qgis.MessageLevel.Warning, 10)
        self.iface.messageBar().pushMessage("RemoteCLIP", f"{self._name}: {result.n_tiles} tiles{cache}.",
                                            Qgis.MessageLevel.Success, 5)
        self.resultAdded.emit(layer)

    def _failed(self, error: str, details: str) -> None:
        self._finish()
        set_value(self.progress, 0)
        self.status.setText(f"<span style='color:#b00020'>Failed: {_html(error)}</span>")
        self.iface.messageBar().pushMessage("RemoteCLIP", f"{error} (details: View > Panels > Log Messages, "
                                            f"tab {LOG_TAG})", Qgis.MessageLevel.Critical, 0)

    def _cancelled(self) -> None:
        self._finish()
        set_value(self.progress, 0)
        self.status.setText("Cancelled; nothing was written.")

    def _report_error(self, problem: str, fix: str | None) -> None:
        text = problem + (f" Fix: {fix}" if fix else "")
        self.status.setText(f"<span style='color:#b00020'>{_html(text)}</span>")
        QgsMessageLog.logMessage(text, LOG_TAG, Qgis.MessageLevel.Warning)
        self.iface.messageBar().pushMessage("RemoteCLIP", text, Qgis.MessageLevel.Warning, 10)

    # ------------------------------------------------------------------------------------- export

    def export_clicked(self) -> None:
        layer = self.export_layer_combo.currentLayer()
        path = self.export_widget.filePath().strip()
        try:
            target, layer_name = export_target(layer, path, self.export_format.currentText())
            shown = layers_showing(target, layer_name)
            if shown:
                raise RemoteClipError(f"{target} is shown in this project by the layer “{shown[0].name()}”.",
                                      "Remove that layer from the Layers panel first, or export to another file.")
            from .core.vectors import output_exists

            what = output_exists(target, layer_name)
            if what is not None and not self.confirm_replace(what):
                self.status.setText(f"Not exported: {_html(what)} was kept.")
                return
            out = export_layer(layer, path, self.export_format.currentText())
        except RemoteClipError as e:
            self._report_error(e.problem, e.fix)
            return
        self.status.setText(f"Exported {layer.name()} to {out}")
        self.iface.messageBar().pushMessage("RemoteCLIP", f"Exported {layer.name()} to {out}", Qgis.MessageLevel.Success, 5)

    def unload(self) -> None:
        """Stop what runs: a task left running would call back into a deleted dock."""
        self.model_row.unload()
        for t in (self.task, self.install_task):
            if t is not None:
                with contextlib.suppress(RuntimeError):   # already deleted by the task manager
                    t.cancel()
        current = getattr(self.iface, "currentLayerChanged", None)
        if current is not None:
            with contextlib.suppress(TypeError, RuntimeError):
                current.disconnect(self._follow_layer)


def export_target(layer: QgsVectorLayer, path: str, format_name: str = "GeoPackage") -> tuple[str, str]:
    """(file, layer name) ``export_layer`` writes, or the error that says why it cannot."""
    if not isinstance(layer, QgsVectorLayer) or not layer.isValid():
        raise RemoteClipError("No vector layer is chosen to export.", "Pick a result layer under Export.")
    if not path:
        raise RemoteClipError("No export file is given.", "Choose where to save the layer under Export > File.")
    if format_name not in EXPORT_FORMATS:
        raise RemoteClipError(f"Unknown export format {format_name!r}.", "Choose GeoPackage or ESRI Shapefile.")
    _, ext = EXPORT_FORMATS[format_name]
    if os.path.splitext(path)[1].lower() != ext:
        path = os.path.splitext(path)[0] + ext
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise RemoteClipError(f"The folder {folder} does not exist.", "Choose an existing folder.")
    return path, slug(layer.name()).lower()


def export_layer(layer: QgsVectorLayer, path: str, format_name: str = "GeoPackage") -> str:
    """Write ``layer`` to a GeoPackage (as a layer of it: an existing GeoPackage keeps its other layers) or a
    Shapefile, with its style (a .qml beside a Shapefile, stored inside a GeoPackage); returns the path."""
    path, layer_name = export_target(layer, path, format_name)
    driver, _ = EXPORT_FORMATS[format_name]
    if driver == "ESRI Shapefile":
        from .core.vectors import read_sidecar, sidecar_path

        side = sidecar_path(path)
        if os.path.lexists(side) and not read_sidecar(path):
            raise RemoteClipError(f"{side} exists and was not written by RemoteCLIP.",
                                  "Move that file away or export to another name.")
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = driver
    options.fileEncoding = "UTF-8"
    options.layerName = layer_name
    if driver == "GPKG" and os.path.isfile(path):
        options.actionOnExistingFile = QgsVectorFileWriter.ActionOnExistingFile.CreateOrOverwriteLayer
    err, message, new_file, _new_layer = QgsVectorFileWriter.writeAsVectorFormatV3(
        layer, path, QgsProject.instance().transformContext(), options)
    if err != QgsVectorFileWriter.WriterError.NoError:
        raise RemoteClipError(f"Writing {path} failed: {message}", "Check the folder is writable and the file "
                              "is not open in another program.")
    out = new_file or path
    if driver != "ESRI Shapefile":
        # in the GeoPackage itself: a .qml beside it would be a file nobody asked for, applied to every layer
        exported = QgsVectorLayer(f"{out}|layername={layer_name}", layer_name, "ogr")
        doc = QDomDocument()
        layer.exportNamedStyle(doc)
        ok, error = exported.importNamedStyle(doc)
        if ok:
            # the replaced layer's style goes with it (else QGIS would stop and ask about a style of this name)
            related, ids, names, _, _ = exported.listStylesInDatabase()
            for style_id, name in zip(ids[:related], names[:related], strict=True):
                if name == layer_name:
                    ok, error = exported.deleteStyleFromDatabase(style_id)
            error = exported.saveStyleToDatabase(layer_name, "RemoteCLIP result style", True, "")
        if error:   # the data is written; only its look is missing
            QgsMessageLog.logMessage(f"The style of {layer.name()} was not stored in {out}: {error}", LOG_TAG,
                                     Qgis.MessageLevel.Warning)
        return out
    # the style travels with the file: QGIS applies a same-named .qml when it opens a Shapefile
    layer.saveNamedStyle(os.path.splitext(out)[0] + ".qml")
    from .core.vectors import write_sidecar
    from .layers import read_metadata, source_of

    meta = read_metadata(*source_of(layer))
    if meta:  # the class names behind p_* fields, as core writes them for its own Shapefiles
        write_sidecar(out, meta)
    return out


def _html(text: str) -> str:
    return html.escape(text, quote=False)

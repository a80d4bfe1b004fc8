"""The RemoteCLIP dock: pick a raster and a model, describe the task, run it in the background,
get a styled layer; export result layers to Shapefile or GeoPackage.

The dock only turns widget values into a ``core.pipeline.Job`` (``build_job``);
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
    QgsField,
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
from qgis.PyQt.QtCore import (
    QMetaType,
    QObject,
    QRunnable,
    QStandardPaths,
    Qt,
    QThreadPool,
    QTimer,
    QUrl,
    pyqtSignal,
)
from qgis.PyQt.QtGui import QColor, QDesktopServices, QIcon, QPixmap
from qgis.PyQt.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QHeaderView,
    QLineEdit,
    QMenu,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QToolButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)
from qgis.PyQt.QtXml import QDomDocument

from . import deps
from .core.bundle import DEMO_BUNDLE, DEMO_FIGURE, PRECISIONS, bundle_path, default_bundle
from .core.errors import InvalidInput, ModelError, OutputExists, OutputRefused, RemoteClipError, WriteFailed
from .core.prompts import PRESETS
from .core.raster import parse_bands
from .core.tasks import TASKS as TASK_CLASSES
from .core.tiles import MAX_OVERLAP
from .model_picker import DEMO_NOTE, ModelRow, is_demo
from .task_forms import TaskForm
from .widgets import (
    PathLabel,
    TaskPages,
    WrapLabel,
    compact,
    fit_forms,
    menu_action,
    set_value,
    wrap_check_boxes,
)

LOG_TAG = "RemoteCLIP"
SETTINGS = "RemoteCLIP/"
DEMO_MODEL = DEMO_BUNDLE   # the demo model shipped inside the plugin (models/ beside the vendored core)
RESULTS_FOLDER = "remoteclip_results"
UNSAVED_RESULTS_FOLDER = "RemoteCLIP results"
REAL_MODEL = "RemoteCLIP-ViT-B-32"   # what the demo banner offers to get
PLAN_DELAY_MS = 400                  # the plan is worked out once the user stops typing for this long
TASKS = tuple(TASK_CLASSES)   # the task pages, in the registry's order
EXTENT_LAYER, EXTENT_CANVAS, EXTENT_FEATURES = "layer", "canvas", "features"
EXPORT_FORMATS = {"GeoPackage": ("GPKG", ".gpkg"), "ESRI Shapefile": ("ESRI Shapefile", ".shp")}


def default_model() -> str:
    """The model remembered from last time, else core's default (REMOTECLIP_MODEL, the demo model shipped
    inside the plugin), else ''."""
    saved = QgsSettings().value(SETTINGS + "model", "", type=str)
    if saved and os.path.exists(saved):
        return saved
    return default_bundle() or ""


def results_folder_setting() -> str:
    return QgsSettings().value(SETTINGS + "results_dir", "", type=str)


def results_folder(project: QgsProject | None = None) -> Path:
    """Where runs without an output file save their GeoPackage: the folder chosen in the panel, else
    remoteclip_results/ next to the saved project, else "RemoteCLIP results" in the Documents folder
    (visible, not inside QGIS's profile)."""
    chosen = results_folder_setting()
    if chosen:
        return Path(chosen)
    project = project or QgsProject.instance()
    if project.fileName():
        return Path(project.absolutePath()) / RESULTS_FOLDER
    documents = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.DocumentsLocation)
    return Path(documents or Path.home()) / UNSAVED_RESULTS_FOLDER


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
        self._plan_generation = 0
        self._demo_run = False
        self.plan = None
        self._missing: list[str] = []
        self._command_pending = False
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
        scroll.setObjectName("remoteclip_scroll")
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scroll = scroll
        self.setMinimumWidth(300)   # QGIS's own default dock width: everything is laid out to fit it
        body = QWidget(scroll)
        col = QVBoxLayout(body)
        col.setContentsMargins(6, 6, 6, 6)

        col.addWidget(self._deps_banner(body))
        col.addWidget(self._demo_banner(body))

        # input
        form = QFormLayout()
        self.layer_combo = QgsMapLayerComboBox(body)
        compact(self.layer_combo)
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
        self.device_combo = QComboBox(body)
        compact(self.device_combo)
        self.device_combo.addItems(["auto", "cpu", "cuda"])
        self.device_combo.setToolTip("auto: the GPU when onnxruntime-gpu and CUDA work, else the CPU")
        form.addRow("Device", self.device_combo)
        self.provider_label = WrapLabel("ran on: not run yet", body)
        self.provider_label.setObjectName("provider_label")
        self.provider_label.setToolTip("The onnxruntime execution provider that really ran the last job")
        form.addRow("", self.provider_label)

        # the task: a combo and its page (a tab bar of the tasks is wider than the dock); a page per
        # registered task (task_forms)
        self.tabs = TaskPages(body)
        form.addRow("Task", self.tabs.combo)
        col.addLayout(form)
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
        col.addWidget(self._result_group(body))

        col.addWidget(self._export_group(body))
        col.addStretch(1)
        scroll.setWidget(body)

        # the plan, Run, progress and status stay in view below the scrolling settings
        outer = QWidget(self)
        outer_col = QVBoxLayout(outer)
        outer_col.setContentsMargins(0, 0, 0, 6)
        outer_col.addWidget(scroll, 1)
        bar = QVBoxLayout()
        bar.setContentsMargins(6, 0, 6, 0)
        self.plan_label = WrapLabel("", outer)
        self.plan_label.setObjectName("plan_label")
        self.plan_label.setToolTip("How many tiles the run will have and, once this model has run here, how "
                                   "long it takes. Follows the tile size, overlap and extent.")
        bar.addWidget(self.plan_label)
        buttons = QHBoxLayout()
        self.run_button = QPushButton("Run", outer)
        self.run_button.setObjectName("remoteclip_run")
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel", outer)
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.help_button = QToolButton(outer)
        self.help_button.setObjectName("remoteclip_help")
        self.help_button.setIcon(QgsApplication.getThemeIcon("/mActionHelpContents.svg"))
        self.help_button.setText("Help")
        self.help_button.setToolTip("Open the RemoteCLIP documentation (in the web browser)")
        self.help_button.clicked.connect(self.open_help)
        buttons.addWidget(self.run_button, 1)
        buttons.addWidget(self.cancel_button, 1)
        buttons.addWidget(self.help_button)
        bar.addLayout(buttons)
        self.progress = QProgressBar(outer)
        self.progress.setRange(0, 100)
        set_value(self.progress, 0)
        bar.addWidget(self.progress)
        self.status = WrapLabel("Ready.", outer)
        self.status.setObjectName("status_label")
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        bar.addWidget(self.status)
        outer_col.addLayout(bar)
        self.setWidget(outer)
        fit_forms(outer)
        wrap_check_boxes(outer)
        self._plan_timer = QTimer(self)
        self._plan_timer.setSingleShot(True)
        self._plan_timer.setInterval(PLAN_DELAY_MS)
        self._plan_timer.timeout.connect(self.update_plan)
        self._planner = _PlanRelay(self)
        self._planner.planned.connect(self._show_plan)
        for signal in (self.layer_combo.layerChanged, self.tile_size.valueChanged, self.tile_unit.currentIndexChanged,
                       self.overlap.valueChanged, self.extent_combo.currentIndexChanged, self.polygon_combo.layerChanged,
                       self.selected_only.toggled, self.bands_edit.textChanged, self.model_widget.fileChanged,
                       self.device_combo.currentIndexChanged, self.precision_combo.currentIndexChanged):
            signal.connect(self.schedule_plan)
        canvas = self.iface.mapCanvas() if self.iface is not None else None
        if canvas is not None and hasattr(canvas, "extentsChanged"):
            canvas.extentsChanged.connect(self._canvas_moved)

    def _deps_banner(self, body) -> QWidget:
        """Missing packages: what, where they go, the Install button and the command to run by hand."""
        self.banner, b = _banner_frame(body, "deps_banner", "#fff4ce", "#e0b000")
        self.banner_label = WrapLabel("", self.banner)
        self.banner_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        # a command line has no spaces to wrap at: a read-only line (scrolls, selects, copies) holds it
        self.manual_edit = QLineEdit(self.banner)
        self.manual_edit.setObjectName("deps_manual_command")
        self.manual_edit.setReadOnly(True)
        self.manual_edit.setToolTip("The command that installs them by hand, in a terminal")
        self.install_button = QPushButton("Install dependencies", self.banner)
        self.install_button.clicked.connect(self.install_dependencies)
        copy = QToolButton(self.banner)
        copy.setText("Copy")
        copy.setToolTip("Copy the command to the clipboard")
        copy.clicked.connect(lambda: QApplication.clipboard().setText(self.manual_edit.text()))
        self.copy_command_button = copy
        row = QHBoxLayout()
        row.addWidget(self.manual_edit, 1)
        row.addWidget(copy)
        b.addWidget(self.banner_label)
        b.addLayout(row)
        b.addWidget(self.install_button)
        return self.banner

    def _demo_banner(self, body) -> QWidget:
        """While the demo model is chosen: say plainly that its results are not credible, and offer Get."""
        self.demo_banner, b = _banner_frame(body, "demo_banner", "#e8f1fb", "#4e79a7")
        self.demo_label = WrapLabel("<b>Demo model</b>: for trying the plugin only (30.5 % top-1 on RSSCN7 images "
                                    "it never saw, chance 14 %). Its results look like a map but are not credible: "
                                    "get RemoteCLIP for real work.", self.demo_banner)
        self.demo_label.setToolTip(f"Demo model: {DEMO_FIGURE}. {REAL_MODEL}: 605 MB, downloaded and converted "
                                   "here, no PyTorch needed")
        self.demo_get_button = QPushButton("Get RemoteCLIP", self.demo_banner)
        self.demo_get_button.setObjectName("demo_get")
        self.demo_get_button.setToolTip(f"Chooses {REAL_MODEL} in the Model list and starts its download and "
                                        "conversion")
        self.demo_get_button.clicked.connect(self.get_real_model)
        b.addWidget(self.demo_label)
        b.addWidget(self.demo_get_button)
        self.demo_banner.setVisible(False)
        return self.demo_banner

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
        self.tile_size.setRange(1.0, 1e5)
        self.tile_size.setDecimals(1)
        set_value(self.tile_size, 224)
        self.tile_unit = QComboBox(box)
        compact(self.tile_unit, 4)
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
        compact(self.extent_combo)
        self.extent_combo.addItem("Whole layer", EXTENT_LAYER)
        self.extent_combo.addItem("Current map view", EXTENT_CANVAS)
        self.extent_combo.addItem("Polygons of a layer", EXTENT_FEATURES)
        self.extent_combo.currentIndexChanged.connect(self._extent_changed)
        form.addRow("Extent", self.extent_combo)
        self.polygon_combo = QgsMapLayerComboBox(box)
        compact(self.polygon_combo)
        self.polygon_combo.setFilters(QgsMapLayerProxyModel.Filter.PolygonLayer)
        form.addRow("Polygons", self.polygon_combo)
        self.selected_only = QCheckBox("Selected polygons only", box)
        self.selected_only.setChecked(True)
        form.addRow("", self.selected_only)
        self.bands_edit = QLineEdit(box)
        self.bands_edit.setPlaceholderText("auto (RGB by colour interpretation)")
        form.addRow("Bands", self.bands_edit)
        self._extent_changed()
        return box

    def show_results_folder(self) -> None:
        """The folder runs without an output file write to, and why there."""
        folder = results_folder()
        self.folder_label.setPath(str(folder))
        why = ("chosen in the panel" if results_folder_setting() else "next to the saved project"
               if QgsProject.instance().fileName() else "the project is not saved yet")
        self.folder_label.setToolTip(f"{folder}\n({why}; Change… chooses another)")

    def choose_results_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Folder for RemoteCLIP results", str(results_folder()))
        if path:
            self.set_results_folder(path)

    def set_results_folder(self, path: str) -> None:
        """'' goes back to automatic: next to the saved project, else the Documents folder."""
        save_setting("results_dir", path)
        self.show_results_folder()

    def open_results_folder(self) -> None:
        folder = results_folder()
        folder.mkdir(parents=True, exist_ok=True)   # the user asked to see it
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder)))

    def _run_group(self, parent) -> QWidget:
        box = QgsCollapsibleGroupBox("Model run", parent)
        box.setCollapsed(True)
        form = QFormLayout(box)
        self.batch_size = QSpinBox(box)
        self.batch_size.setRange(1, 4096)
        set_value(self.batch_size, 32)
        form.addRow("Batch size", self.batch_size)
        self.precision_combo = QComboBox(box)
        compact(self.precision_combo)
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
        self.output_widget = _save_file_widget(
            box, "GeoPackage (*.gpkg);;ESRI Shapefile (*.shp)", "automatic (in the folder below)",
            "Where this run's result is saved. Empty: a new GeoPackage, named after the raster, the task and the "
            "time, in the results folder")
        form.addRow("File", self.output_widget)
        self.folder_label = PathLabel("", box)
        self.folder_label.setObjectName("results_folder")
        self.folder_button = QToolButton(box)
        self.folder_button.setText("Change…")
        self.folder_button.setToolTip("Choose the results folder, or open it")
        self.folder_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        menu = QMenu(self.folder_button)
        menu_action(menu, "Choose the results folder…", self.choose_results_folder)
        menu_action(menu, "Next to the saved project (automatic)", lambda: self.set_results_folder(""))
        menu_action(menu, "Open the results folder", self.open_results_folder)
        self.folder_button.setMenu(menu)
        form.addRow("Folder", self.folder_button)
        form.addRow(self.folder_label)   # the whole width: a path needs it
        self.show_results_folder()
        self.dissolve = QCheckBox("Dissolve equal neighbours", box)
        self.dissolve.setToolTip("Merge touching tiles with the same label / count / selection into one polygon")
        form.addRow(self.dissolve)
        self.raster_output_widget = _save_file_widget(
            box, "GeoTIFF (*.tif)", "none (optional: a heat map GeoTIFF)",
            "Also write the per-class probabilities (or the search similarity) as a GeoTIFF at tile resolution; "
            "with overlap it is a smooth heat map")
        form.addRow("Heat map", self.raster_output_widget)
        self.tabs.currentChanged.connect(self._kind_changed)
        self._kind_changed()
        return box

    def _result_group(self, parent) -> QWidget:
        """The last run's summary: per class its tiles and ground area (core.summary)."""
        box = QgsCollapsibleGroupBox("Last result", parent)
        box.setObjectName("result_group")
        v = QVBoxLayout(box)
        self.result_title = WrapLabel("", box)
        self.result_table = QTreeWidget(box)
        self.result_table.setObjectName("result_table")
        self.result_table.setRootIsDecorated(False)
        self.result_table.setColumnCount(3)
        self.result_table.setHeaderLabels(["", "Tiles", "Area"])
        self.result_table.setSelectionMode(QTreeWidget.SelectionMode.NoSelection)
        header = self.result_table.header()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        v.addWidget(self.result_title)
        v.addWidget(self.result_table)
        self.result_box = box
        box.setVisible(False)
        return box

    def show_summary(self, kind: str, rows: list, task=None) -> None:
        """Fill the Last result table: class (count, selection) | tiles | area, the most tiles first."""
        from .core.summary import format_area
        from .layers import class_color, count_label

        self.result_table.clear()
        renderer = TASK_CLASSES[kind].style.renderer if kind in TASK_CLASSES else ""
        heading = {"categories": "Class", "counts": "Count", "graduated": "Selection"}.get(renderer, "")
        self.result_table.setHeaderLabels([heading, "Tiles", "Area"])
        for row in rows:
            if renderer == "counts":
                text = count_label(int(row.value), getattr(task, "object_name", None), getattr(task, "max_count", None))
            elif renderer == "graduated":
                text = "selected" if row.value else "not selected"
            else:
                text = str(row.value)
            item = QTreeWidgetItem([text, f"{row.n_tiles:,}", format_area(row.area_m2)])
            item.setToolTip(0, text)
            item.setTextAlignment(1, int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter))
            item.setTextAlignment(2, int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter))
            if renderer == "categories":
                swatch = QPixmap(12, 12)
                swatch.fill(QColor(class_color(text)))
                item.setIcon(0, QIcon(swatch))
            self.result_table.addTopLevelItem(item)
        # as tall as its rows (up to 10): no scroll bar inside the dock's own
        shown = min(len(rows), 10)
        height = self.result_table.header().sizeHint().height() + 2 * self.result_table.frameWidth()
        if rows:
            height += shown * self.result_table.sizeHintForRow(0)
        self.result_table.setFixedHeight(height)
        self.result_box.setVisible(bool(rows))

    def _kind_changed(self, _index=None) -> None:
        self.raster_output_widget.setEnabled(TASK_CLASSES[self.current_kind()].dense)

    def _export_group(self, parent) -> QWidget:
        box = QgsCollapsibleGroupBox("Export a result layer", parent)
        box.setCollapsed(True)
        form = QFormLayout(box)
        self.export_layer_combo = QgsMapLayerComboBox(box)
        compact(self.export_layer_combo)
        self.export_layer_combo.setFilters(QgsMapLayerProxyModel.Filter.VectorLayer)
        form.addRow("Layer", self.export_layer_combo)
        self.export_format = QComboBox(box)
        compact(self.export_format)
        self.export_format.addItems(list(EXPORT_FORMATS))
        form.addRow("Format", self.export_format)
        self.export_widget = _save_file_widget(box, "GeoPackage (*.gpkg);;ESRI Shapefile (*.shp)")
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
        self.demo_banner.setVisible(bool(path) and is_demo(path))
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
                                f"{b.embed_dim}-d")
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
        self._missing = missing
        if missing:
            self._fill_banner(missing, with_command=False)
            # the terminal command needs QGIS's interpreter found (a Python started) and nvidia-smi asked:
            # worked out when the panel shows, not while QGIS starts with the panel closed
            self._command_pending = True
            if self.isVisible():
                self._fill_install_command()
        self.banner.setVisible(bool(missing))
        self.run_button.setEnabled(not missing and self.task is None)
        self.run_button.setToolTip("Install the missing packages first" if missing else "")
        return missing

    def _fill_banner(self, missing: list[str], with_command: bool, problem: str = "") -> None:
        self.banner_label.setText(
            f"<b>Missing Python packages: {', '.join(missing)}.</b> RemoteCLIP needs them to run models. "
            "Install them into a folder of your QGIS profile (QGIS's own numpy is kept)"
            + (", or run this in a terminal:" if with_command else f". {_html(problem)}" if problem else "."))
        self.banner_label.setToolTip(str(deps.deps_dir()))
        self.manual_edit.setVisible(with_command)
        self.copy_command_button.setVisible(with_command)

    def _fill_install_command(self) -> None:
        self._command_pending = False
        if not self._missing:
            return
        plan_text, problem = "", ""
        try:
            plan_text = deps.make_plan(self._missing).manual_command()
        except FileNotFoundError as e:   # no python found: the banner still says what is missing
            problem = str(e)
        self.manual_edit.setText(plan_text)
        self.manual_edit.setCursorPosition(0)
        self._fill_banner(self._missing, bool(plan_text), problem)

    def showEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        super().showEvent(event)
        if self._command_pending:
            self._fill_install_command()

    def install_dependencies(self) -> None:
        if self.install_task is not None:
            return
        try:
            plan = deps.make_plan()
        except FileNotFoundError as e:
            self._report_error(str(e), "Install onnxruntime, ftfy and regex with the Python QGIS runs on (OSGeo4W "
                               "Shell on Windows), or ask your administrator.")
            return
        if not plan.attempts:
            self.refresh_dependencies()
            return
        self.install_task = deps.InstallTask(plan)
        self.install_task.done.connect(self._install_done)
        self.install_button.setEnabled(False)
        self.install_button.setText("Installing…")
        self.install_button.setToolTip("pip's output: View > Panels > Log Messages, tab RemoteCLIP")
        QgsApplication.taskManager().addTask(self.install_task)

    def _install_done(self, ok: bool, summary: str, manual: str) -> None:
        self.install_task = None
        self.install_button.setEnabled(True)
        self.install_button.setText("Install dependencies")
        self.install_button.setToolTip("")
        missing = self.refresh_dependencies()
        bar = self.iface.messageBar()
        if ok and not missing:
            bar.pushMessage("RemoteCLIP", f"Dependencies installed: {summary}.", Qgis.MessageLevel.Success, 10)
        else:
            QgsMessageLog.logMessage(f"Installing dependencies failed: {summary}\nRun by hand:\n{manual}",
                                     LOG_TAG, Qgis.MessageLevel.Critical)
            bar.pushMessage("RemoteCLIP", f"Installing dependencies failed ({summary}). Run by hand: {manual}",
                            Qgis.MessageLevel.Critical, 0)

    # ---------------------------------------------------------------------------------- demo, help

    def get_real_model(self) -> None:
        """The demo banner's button: choose RemoteCLIP in the model list and Get it (or just choose it when it
        is here already)."""
        if self.model_row.select_entry(REAL_MODEL) < 0:
            self._report_error(f"{REAL_MODEL} is not in the model catalogue.", "Refresh the list (Model > …) or "
                               "choose a bundle folder.")
            return
        if self.model_row.current_entry() is not None:
            self.model_row.get()

    def open_help(self) -> bool:
        return QDesktopServices.openUrl(QUrl(help_url()))

    # ------------------------------------------------------------------------------------ the plan

    def schedule_plan(self, *_args) -> None:
        """Work the plan out again once the inputs have stopped changing for PLAN_DELAY_MS."""
        self._plan_timer.start()

    def _canvas_moved(self) -> None:
        layer = self.layer_combo.currentLayer()
        if self.extent_combo.currentData() == EXTENT_CANVAS or (isinstance(layer, QgsRasterLayer) and is_web_layer(layer)):
            self.schedule_plan()

    def update_plan(self) -> None:
        """The plan of what Run would do (core.pipeline.plan_job: tiles and time, no pixel read, no model run),
        worked out in a worker thread and shown above Run; input problems are shown there too."""
        from .core.pipeline import EmbedTask, Job

        self._plan_generation += 1
        generation = self._plan_generation
        try:
            _layer, raster, tiles, run = self._inputs()
            job = Job(raster=raster, task=EmbedTask(), run=run, tiles=tiles, max_tiles=None)
        except RemoteClipError as e:
            self._show_plan(generation, None, e.problem)
            return
        self.plan_label.setText("Plan: counting tiles…")
        QThreadPool.globalInstance().start(_PlanRun(self._planner, generation, job))

    def _show_plan(self, generation: int, plan, problem: str) -> None:
        if generation != self._plan_generation:
            return   # the inputs changed since: a newer plan is on its way
        self.plan = plan
        if plan is None:
            self.plan_label.setText(f"<span style='color:#8a6d00'>Plan: {_html(problem)}</span>")
            return
        from .core.pipeline import MAX_TILES, duration_text

        text = f"Plan: {plan.n_tiles:,} tiles of {plan.tile_px[0]} × {plan.tile_px[1]} px"
        if plan.seconds is not None:
            text += f", {duration_text(plan.seconds)} ({plan.rate:.1f} tiles/s measured here)"
        else:
            text += " (the time is known after a first run of this model here)"
        if plan.n_tiles > MAX_TILES:
            text += ". That is many: Run asks first"
        self.plan_label.setText(_html(text) + ".")

    # ------------------------------------------------------------------------------------- the job

    def current_kind(self) -> str:
        return TASKS[self.tabs.currentIndex()]

    def set_kind(self, kind: str) -> None:
        self.tabs.setCurrentIndex(TASKS.index(kind))

    def _task(self):
        """The current tab's task, parsed by its class from the widgets' values (as typed)."""
        return self.forms[self.current_kind()].task()

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
                raise InvalidInput("No polygon layer is chosen for the extent.",
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

    def _inputs(self):
        """(layer, raster, TileSpec, RunOptions): what the dock's jobs and its plan share."""
        from .core.pipeline import RunOptions, TileSpec
        from .layer_source import raster_for_layer

        layer = self.layer_combo.currentLayer()
        if not isinstance(layer, QgsRasterLayer) or not layer.isValid():
            raise InvalidInput("No raster layer is chosen.", "Add a raster to the project and pick it in "
                                  "the RemoteCLIP panel.")
        model = self.model_path()
        if not model:
            raise ModelError("No model bundle is chosen.",
                                  "Choose a bundle folder (with manifest.json) or a bundle .zip under Model.")
        extent = self._extent(layer)
        raster = raster_for_layer(layer, pixel_size=self._pixel_size(layer), extent=extent)
        tiles = TileSpec(size=self.tile_size.value(), unit=self.tile_unit.currentData(),
                         overlap=self.overlap.value() / 100.0, extent=extent,
                         bands=parse_bands(self.bands_edit.text()))
        run = RunOptions(model=self._loaded_bundle(model), device=self.device_combo.currentText(),
                         precision=self.precision_combo.currentText() or "fp32",
                         batch_size=self.batch_size.value(), cache_dir=None if self.use_cache.isChecked() else "")
        return layer, raster, tiles, run

    def build_job(self):
        """The core Job the widgets describe, its style kind and the name of the layer to add."""
        from .core.pipeline import Job

        layer, raster, tiles, run = self._inputs()
        kind = self.current_kind()
        output = self.output_widget.filePath().strip() or default_output(layer.name(), kind)
        if not os.path.splitext(output)[1]:
            output += ".gpkg"
        dense = self.raster_output_widget.filePath().strip() if TASK_CLASSES[kind].dense else ""
        if dense and not os.path.splitext(dense)[1]:
            dense += ".tif"
        job = Job(raster=raster, task=self._task(), run=run, tiles=tiles, output=output,
                  dissolve=self.dissolve.isChecked(), raster_output=dense or None)
        return job, kind, run_title(job.task.layer_title(layer.name()), tiles)

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
        form = self.forms[self.current_kind()]
        try:
            form.task()
        except RemoteClipError as e:
            # shown under the field (task_forms): the panel says where, no message bar for a typo
            self.status.setText(f"<span style='color:#b00020'>Check the {_html(form.task_cls.title)} settings: "
                                f"{_html(e.problem)}</span>")
            self.status.setToolTip("")
            for label in (*form.errors.values(), form.form_error):
                if label.isVisibleTo(self):
                    self.scroll.ensureWidgetVisible(label)
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
        self._demo_run = is_demo(self.model_path())
        self.provider_label.setText(f"ran on: … (running, device {job.run.device})")
        self.status.setText(f"Running {kind} on {_html(name.split(' · ')[0])}…")
        self.status.setToolTip("")
        QgsApplication.taskManager().addTask(self.task)
        return self.task

    def _confirm_plan(self, job) -> bool:
        """A plan above core's tile limit runs only when the user says so (the command line's --yes)."""
        from .core.pipeline import plan_job

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
        from .core.pipeline import output_layer_name
        from .core.vectors import output_exists

        layer_name = output_layer_name(job)
        files = [(job.output, layer_name)] + [(p, None) for p in (job.raster_output, *[f for f, _ in
                                                                                       job.task.files_out()]) if p]
        replaced = []
        for path, lname in files:
            shown = layers_showing(path, lname)
            if shown:
                raise OutputRefused(
                    f"The output {path} is shown in this project by the layer “{shown[0].name()}”.",
                    "Remove that layer from the Layers panel first, or choose another output file.", path=path)
            what = output_exists(path, lname) if lname else (f"the file {path}" if os.path.lexists(path) else None)
            if what is not None:
                replaced.append(what)
        if not replaced:
            return True
        what = " and ".join(replaced)
        if not self.confirm_replace(what, any(getattr(r, "layer", False) for r in replaced)):
            self.status.setText(f"Not run: {_html(what)} was kept. Choose another output file or replace it.")
            return False
        job.overwrite = True
        return True

    def confirm_replace(self, what: str, layer: bool = False) -> bool:
        """Ask before replacing ``what``; ``layer``: it is a layer of a GeoPackage whose other layers stay."""
        kept = " Its other layers are kept." if layer else ""
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
        self.schedule_plan()   # the run may have measured this model's speed here

    def _succeeded(self, result) -> None:
        from .layers import add_dense_layer, add_result_layer, add_suggestions_layer

        rows = list(getattr(self.task, "summary", []) or [])
        job = getattr(self.task, "job", None)
        task = job.task if job is not None else None
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
        self.status.setText(f"Done: {summary}. Saved to {_html(os.path.basename(result.output))}.")
        self.status.setToolTip(f"Saved to {result.output}")
        self.show_results_folder()
        for w in result.warnings:
            self.iface.messageBar().pushMessage("RemoteCLIP", w, Qgis.MessageLevel.Warning, 10)
        self.show_summary(self._kind, rows, task)
        self.result_title.setText(f"{_html(self._name)}: {result.n_tiles:,} tiles")
        top = ", ".join(f"{self.result_table.topLevelItem(i).text(0)} {self.result_table.topLevelItem(i).text(1)}"
                        for i in range(min(self.result_table.topLevelItemCount(), 3)))
        self.iface.messageBar().pushMessage("RemoteCLIP", f"{self._name}: {result.n_tiles} tiles{cache}"
                                            + (f" · {top}" if top else "") + ".", Qgis.MessageLevel.Success, 5)
        if self._demo_run:
            self._demo_message()
        self.resultAdded.emit(layer)

    def _demo_message(self) -> None:
        """After a run with the demo model: say so on the message bar, with the button that gets RemoteCLIP."""
        bar = self.iface.messageBar()
        text = DEMO_NOTE[0].upper() + DEMO_NOTE[1:] + "."
        try:
            item = bar.createMessage("RemoteCLIP", text)
            button = QPushButton(f"Get {REAL_MODEL}", item)
            button.clicked.connect(self.get_real_model)
            item.layout().addWidget(button)
            bar.pushWidget(item, Qgis.MessageLevel.Info, 15)
        except (AttributeError, TypeError):   # a message bar without widgets (a test's iface)
            bar.pushMessage("RemoteCLIP", text, Qgis.MessageLevel.Info, 15)

    def _failed(self, error: str, details: str) -> None:
        """A run that stopped: input the user can fix (no details) is a warning that goes away; a bug (its
        traceback in the log panel) stays on the message bar until closed."""
        self._finish()
        set_value(self.progress, 0)
        self.provider_label.setText("ran on: – (the last run failed)")
        self.status.setText(f"<span style='color:#b00020'>Failed: {_html(error)}</span>")
        if details:
            self.iface.messageBar().pushMessage(
                "RemoteCLIP", f"The run stopped on an error in RemoteCLIP: {error} (the details for a bug report: "
                f"View > Panels > Log Messages, tab {LOG_TAG})", Qgis.MessageLevel.Critical, 0)
        else:
            self.iface.messageBar().pushMessage("RemoteCLIP", error, Qgis.MessageLevel.Warning, 15)

    def _cancelled(self) -> None:
        self._finish()
        set_value(self.progress, 0)
        self.provider_label.setText("ran on: – (the last run was cancelled)")
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
                raise OutputRefused(f"{target} is shown in this project by the layer “{shown[0].name()}”.",
                                      "Remove that layer from the Layers panel first, or export to another file.", path=target)
            from .core.vectors import output_exists

            what = output_exists(target, layer_name)
            if what is not None and not self.confirm_replace(what, what.layer):
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
        self._plan_timer.stop()
        self._plan_generation += 1   # a plan still being worked out is dropped
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
        raise InvalidInput("No vector layer is chosen to export.", "Pick a result layer under Export.")
    if not path:
        raise InvalidInput("No export file is given.", "Choose where to save the layer under Export > File.")
    if format_name not in EXPORT_FORMATS:
        raise InvalidInput(f"Unknown export format {format_name!r}.", "Choose GeoPackage or ESRI Shapefile.")
    _, ext = EXPORT_FORMATS[format_name]
    if os.path.splitext(path)[1].lower() != ext:
        path = os.path.splitext(path)[0] + ext
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise OutputRefused(f"The folder {folder} does not exist.", "Choose an existing folder.", path=folder)
    return path, slug(layer.name()).lower()


def export_layer(layer: QgsVectorLayer, path: str, format_name: str = "GeoPackage") -> str:
    """Write ``layer`` to a GeoPackage (as a layer of it: an existing GeoPackage keeps its other layers) or a
    Shapefile, with its style (a .qml beside a Shapefile, stored inside a GeoPackage); returns the path."""
    path, layer_name = export_target(layer, path, format_name)
    driver, _ = EXPORT_FORMATS[format_name]
    if driver == "ESRI Shapefile":
        from .core.vectors import output_exists, read_sidecar, sidecar_path

        side = sidecar_path(path)
        if os.path.lexists(side) and not read_sidecar(path):
            raise OutputExists(f"{side} exists and was not written by RemoteCLIP.",
                                  "Move that file away or export to another name.", path=side)
        # a .qml beside a Shapefile being replaced goes with it (the replacement was confirmed); one beside
        # no Shapefile of this name is somebody's style file
        qml = os.path.splitext(path)[0] + ".qml"
        if os.path.lexists(qml) and output_exists(path) is None:
            raise OutputExists(f"{qml} exists and belongs to no Shapefile of that name: exporting would "
                                  "replace it with this layer's style.",
                                  "Move that file away or export to another name.", path=qml)
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = driver
    options.fileEncoding = "UTF-8"
    options.layerName = layer_name
    if driver == "GPKG" and os.path.isfile(path):
        options.actionOnExistingFile = QgsVectorFileWriter.ActionOnExistingFile.CreateOrOverwriteLayer
    converter = None
    if driver == "ESRI Shapefile":
        # the GeoPackage's feature id is not an attribute of the result, and a .dbf text field holds 254 bytes
        keys = set(layer.dataProvider().pkAttributeIndexes())
        options.attributes = [i for i in range(layer.fields().count()) if i not in keys]
        converter = ShapefileFields()
        options.fieldValueConverter = converter
    err, message, new_file, _new_layer = QgsVectorFileWriter.writeAsVectorFormatV3(
        layer, path, QgsProject.instance().transformContext(), options)
    if err != QgsVectorFileWriter.WriterError.NoError:
        raise WriteFailed(f"Writing {path} failed: {message}", "Check the folder is writable and the file "
                              "is not open in another program.", path=path)
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


class ShapefileFields(QgsVectorFileWriter.FieldValueConverter):
    """Text fields as wide as a .dbf allows (254), declared so: GDAL then has nothing to truncate or warn."""

    def fieldDefinition(self, field):  # noqa: N802 (QGIS's name)
        out = QgsField(field)
        if out.type() == QMetaType.Type.QString and not 0 < out.length() <= DBF_TEXT_WIDTH:
            out.setLength(DBF_TEXT_WIDTH)
        return out

    def convert(self, index, value):
        return value

    def clone(self):
        return ShapefileFields()


DBF_TEXT_WIDTH = 254


def _save_file_widget(parent, file_filter: str, placeholder: str = "", tooltip: str = "") -> QgsFileWidget:
    """A file widget that picks where to save; it does not ask about replacing: Run (or Export) asks, and
    only when something would be replaced."""
    w = QgsFileWidget(parent)
    w.setStorageMode(QgsFileWidget.StorageMode.SaveFile)
    w.setConfirmOverwrite(False)
    w.setFilter(file_filter)
    if placeholder:
        w.lineEdit().setPlaceholderText(placeholder)
    if tooltip:
        w.setToolTip(tooltip)
    return w


def run_title(task_title: str, tiles) -> str:
    """The name of a run's layer: the task's title (task, classes, object or query), the tile size and the
    time, so that two runs of one afternoon read apart in the Layers panel."""
    unit = "px" if tiles.unit == "px" else "m"
    return f"{task_title} · {tiles.size:g} {unit} · {time.strftime('%H:%M')}"


def _banner_frame(parent, name: str, background: str, border: str) -> tuple[QFrame, QVBoxLayout]:
    """A coloured, framed box (object name ``name``) for a message across the dock, and its layout."""
    frame = QFrame(parent)
    frame.setObjectName(name)
    frame.setStyleSheet(f"#{name} {{ background: {background}; border: 1px solid {border}; border-radius: 3px; }}")
    return frame, QVBoxLayout(frame)


def _html(text: str) -> str:
    return html.escape(text, quote=False)


def help_url() -> str:
    """The documentation: the project's page (metadata.txt's homepage), its "In QGIS" section."""
    import configparser

    here = Path(__file__).resolve().parent
    meta = configparser.ConfigParser()
    for candidate in (here / "metadata.txt", here.parent / "metadata.txt"):
        if candidate.is_file() and meta.read(candidate, encoding="utf-8"):
            break
    home = meta["general"].get("homepage", "") if meta.has_section("general") else ""
    return (home or "https://github.com/remoteclip-qgis/remoteclip-qgis") + "#in-qgis"


class _PlanRun(QRunnable):
    def __init__(self, relay, generation: int, job):
        super().__init__()
        self.relay, self.generation, self.job = relay, generation, job

    def run(self) -> None:
        self.relay.work(self.generation, self.job)


class _PlanRelay(QObject):
    """Works a plan out in a worker thread and hands it to the dock's thread (a queued signal)."""

    planned = pyqtSignal(int, object, str)   # generation, core.pipeline.Plan or None, the problem

    def work(self, generation: int, job) -> None:
        from .core.pipeline import plan_job

        try:
            plan, problem = plan_job(job), ""
        except RemoteClipError as e:
            plan, problem = None, e.problem
        except Exception as e:  # a bug: the plan line says so; Run reports it in full
            plan, problem = None, f"could not be worked out ({type(e).__name__}: {e})"
        with contextlib.suppress(RuntimeError):   # the dock was closed meanwhile
            self.planned.emit(generation, plan, problem)

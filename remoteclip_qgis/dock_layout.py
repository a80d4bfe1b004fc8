"""The dock's layout: its widgets, built and named, and nothing they do (``dock.RemoteClipDock`` wires them
to the run controller, the plan, the model and the settings). Laid out for QGIS's 300 px docks at 1x and 1.5x
font: a task combo instead of tabs, wrapping rows and texts, paths elided in the middle (tests/test_dock_layout.py
measures it)."""

from __future__ import annotations

from qgis.core import QgsApplication, QgsProject
from qgis.gui import QgsCollapsibleGroupBox, QgsDockWidget, QgsMapLayerComboBox
from qgis.PyQt.QtCore import Qt, QUrl
from qgis.PyQt.QtGui import QDesktopServices
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLineEdit,
    QMenu,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from .assess_view import AssessBox
from .core.geodata.tiles import MAX_OVERLAP
from .core.runtime.bundle import INT8_USABLE_TOP1, PRECISION_CHOICES
from .core.tasks import TASKS as TASK_CLASSES
from .dock_banners import DemoBanner, DependencyBanner
from .dock_export import ExportBox, save_file_widget
from .dock_settings import results_folder, results_folder_setting, save_setting
from .model_picker import ModelRow
from .results_view import ResultBox
from .task_forms import TaskForm, error_label
from .widgets import (
    PathLabel,
    TaskPages,
    WrapLabel,
    compact,
    fit_forms,
    layer_filters,
    menu_action,
    set_value,
    wrap_check_boxes,
)

TASKS = tuple(TASK_CLASSES)   # the task pages, in the registry's order
EXTENT_LAYER, EXTENT_CANVAS, EXTENT_FEATURES = "layer", "canvas", "features"


class DockLayout(QgsDockWidget):
    """The panel's widgets (``_build``), under the names the dock, its tests and the screenshots use."""

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

        self.deps_banner = DependencyBanner(body, self)
        col.addWidget(self.deps_banner)
        self.demo_banner = DemoBanner(body)
        col.addWidget(self.demo_banner)
        self._name_banners()

        # input
        form = QFormLayout()
        self.layer_combo = QgsMapLayerComboBox(body)
        compact(self.layer_combo)
        self.layer_combo.setFilters(layer_filters("RasterLayer"))
        self.layer_combo.setToolTip("The raster to tile (follows the active layer)")
        form.addRow("Raster", self.layer_combo)
        # the model row (model_picker.ModelRow): local bundles and catalogue models with Get
        self.model_row = ModelRow(body)
        self.model_widget = self.model_row.file_widget
        self.model_info = self.model_row.info
        form.addRow("Model", self.model_row)
        self.demo_banner.model_row = self.model_row
        self.device_combo = QComboBox(body)
        compact(self.device_combo)
        self.device_combo.addItems(["auto", "cpu", "cuda"])
        self.device_combo.setToolTip("auto: the GPU when onnxruntime-gpu and CUDA work, else the CPU")
        form.addRow("Device", self.device_combo)
        self.provider_label = WrapLabel("ran on: not run yet", body)
        self.provider_label.setObjectName("provider_label")
        self.provider_label.setToolTip("What really ran the last job: CPU or GPU")
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
        self.result_box = ResultBox(body)
        self.result_title, self.result_table = self.result_box.title, self.result_box.table
        col.addWidget(self.result_box)

        self.export_box = ExportBox(body)
        self.export_layer_combo, self.export_format = self.export_box.layer_combo, self.export_box.format_combo
        self.export_widget, self.export_button = self.export_box.file_widget, self.export_box.button
        col.addWidget(self.export_box)
        self.assess_box = AssessBox(body)   # accuracy and areas of a result (assess_view)
        col.addWidget(self.assess_box)
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
        self.cancel_button = QPushButton("Cancel", outer)
        self.cancel_button.setEnabled(False)
        self.help_button = QToolButton(outer)
        self.help_button.setObjectName("remoteclip_help")
        self.help_button.setIcon(QgsApplication.getThemeIcon("/mActionHelpContents.svg"))
        self.help_button.setText("Help")
        self.help_button.setToolTip("Open the RemoteCLIP documentation (in the web browser)")
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

    def _name_banners(self) -> None:
        """The banners' widgets under the names the dock's tests use."""
        self.banner = self.deps_banner
        self.banner_label, self.manual_edit = self.deps_banner.label, self.deps_banner.manual_edit
        self.install_button, self.copy_command_button = self.deps_banner.install_button, self.deps_banner.copy_button
        self.demo_label, self.demo_get_button = self.demo_banner.label, self.demo_banner.get_button

    def _name_widgets(self) -> None:
        """The generated widgets under the names each task gives them (``Task.widget_names``: the dock's
        ``labels_edit``, ``count_object``, …)."""
        for kind, cls in TASK_CLASSES.items():
            form = self.forms[kind]
            for name, attr in cls.widget_names.items():
                setattr(self, attr, form.map_labels if name == "map_labels" else form.widgets[name])

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
        self.polygon_combo.setFilters(layer_filters("PolygonLayer"))
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
        self.precision_combo.addItems(list(PRECISION_CHOICES))   # then auto and the bundle's own (_model_changed)
        self.precision_combo.setToolTip(
            "auto: int8 on a CPU when the model has int8 graphs that give fp32's label on at least "
            f"{INT8_USABLE_TOP1:.0%} of the tiles (recorded in its manifest), else fp32; the result says which ran "
            "and why. fp32: exact; fp16: for GPUs; int8: CPUs, faster (bundles converted with --int8)")
        form.addRow("Precision", self.precision_combo)
        self.use_cache = QCheckBox("Reuse cached tile embeddings", box)
        self.use_cache.setChecked(True)
        form.addRow(self.use_cache)
        return box

    def _output_group(self, parent) -> QWidget:
        box = QgsCollapsibleGroupBox("Output", parent)
        form = QFormLayout(box)
        self.output_widget = save_file_widget(
            box, "GeoPackage (*.gpkg);;ESRI Shapefile (*.shp)", "automatic (in the folder below)",
            "Where this run's result is saved. Empty: a new GeoPackage, named after the raster, the task and the "
            "time, in the results folder")
        form.addRow("File", self.output_widget)
        self.output_error = error_label(box)   # the output refused: said here, not only in the status line
        form.addRow(self.output_error)
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
        self.raster_output_widget = save_file_widget(
            box, "GeoTIFF (*.tif)", "none (optional: a heat map GeoTIFF)",
            "Also write the per-class probabilities (or the search similarity) as a GeoTIFF at tile resolution; "
            "with overlap it is a smooth heat map")
        form.addRow("Heat map", self.raster_output_widget)
        self.tabs.currentChanged.connect(self._kind_changed)
        self._kind_changed()
        return box

    def show_summary(self, kind: str, rows: list, task=None, colors: dict | None = None) -> None:
        """Fill the Last result table (results_view.ResultBox.show_summary)."""
        self.result_box.show_summary(kind, rows, task, colors)

    def _kind_changed(self, _index=None) -> None:
        self.raster_output_widget.setEnabled(TASK_CLASSES[self.current_kind()].dense)


    def _extent_changed(self, _index=None) -> None:
        on = self.extent_combo.currentData() == EXTENT_FEATURES
        self.polygon_combo.setEnabled(on)
        self.selected_only.setEnabled(on)

    def current_kind(self) -> str:
        return TASKS[self.tabs.currentIndex()]

    def set_kind(self, kind: str) -> None:
        self.tabs.setCurrentIndex(TASKS.index(kind))


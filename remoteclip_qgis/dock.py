"""The RemoteCLIP dock: pick a raster and a model, describe the task, run it in the background,
get a styled layer; export result layers to Shapefile or GeoPackage.

The dock lays the widgets out and collects them into a run: ``build_job`` turns their values into a
``core.pipeline.Job``, ``run`` hands it to the run controller (``run_controller``: confirms, runs the QgsTask,
turns the result into layers) and shows what the controller says. Everything else is core's (``run_job``)
or the shared result styling (``layers.add_result_layer``), so the dock does exactly what the command line
and the Processing algorithms do. Its other parts: ``dock_settings`` (what it remembers), ``dock_banners``
(missing packages, the demo model), ``dock_export``, ``dock_plan`` (the plan line) and ``results_view``
(the last result's summary, a classify report).
"""

from __future__ import annotations

import contextlib
import html
import os
import time
from pathlib import Path

import qgis.utils
from qgis.core import (
    Qgis,
    QgsCoordinateTransform,
    QgsMessageLog,
    QgsProject,
    QgsRasterDataProvider,
    QgsRasterLayer,
)
from qgis.PyQt.QtCore import QThreadPool, QTimer, QUrl, pyqtSignal
from qgis.PyQt.QtGui import QDesktopServices

from . import dock_settings
from .core.errors import InvalidInput, ModelError, RemoteClipError
from .core.geodata.raster import parse_bands
from .core.runtime.bundle import DEMO_BUNDLE, bundle_path
from .core.tasks import TASKS as TASK_CLASSES
from .core.tasks import tile_size_text
from .dock_export import (  # noqa: F401 (imported from here by tests and scripts)
    DBF_TEXT_WIDTH,
    EXPORT_FORMATS,
    ExportBox,
    ShapefileFields,
    export_layer,
    export_target,
    layers_showing,
    save_file_widget,
)
from .dock_layout import EXTENT_CANVAS, EXTENT_FEATURES, EXTENT_LAYER, TASKS, DockLayout  # noqa: F401
from .dock_plan import PlanRelay, PlanRun, plan_html
from .dock_settings import (  # noqa: F401 (imported from here by tests and scripts)
    RESULTS_FOLDER,
    SETTINGS,
    UNSAVED_RESULTS_FOLDER,
    default_model,
    default_output,
    results_folder,
    results_folder_setting,
    save_setting,
    slug,
)
from .layers import legend_colors
from .model_picker import is_demo
from .results_view import show_report
from .run_controller import RunController, RunRequest
from .widgets import set_value

LOG_TAG = "RemoteCLIP"
DEMO_MODEL = DEMO_BUNDLE   # the demo model shipped inside the plugin (models/ beside the vendored core)
PLAN_DELAY_MS = 400                  # the plan is worked out once the user stops typing for this long


def is_web_layer(layer: QgsRasterLayer) -> bool:
    """A raster without a pixel grid of its own (XYZ, WMS): it is read at a chosen extent and resolution."""
    provider = layer.dataProvider()
    return provider is not None and not (provider.capabilities() & QgsRasterDataProvider.Capability.Size
                                         and provider.xSize() > 0)


DEVICES = {"CPUExecutionProvider": "CPU", "CUDAExecutionProvider": "GPU (CUDA)",
           "TensorrtExecutionProvider": "GPU (TensorRT)", "DmlExecutionProvider": "GPU (DirectML)",
           "CoreMLExecutionProvider": "Apple (Core ML)", "ROCMExecutionProvider": "GPU (ROCm)",
           "OpenVINOExecutionProvider": "OpenVINO"}


def device_text(provider: str | None) -> str:
    """What ran a job, in an analyst's words: CPU, GPU (CUDA), … (onnxruntime's provider names are its own)."""
    if not provider:
        return "–"
    return DEVICES.get(provider, provider.removesuffix("ExecutionProvider"))


def precision_text(result) -> str:
    """Which graphs ran and why, for the status lines: " · int8 (auto: int8 agrees 99.85 % with fp32 ...)"."""
    if not getattr(result, "precision", ""):
        return ""
    return f" · {result.precision}" + (f" ({result.precision_reason})" if result.precision_reason else "")


class RemoteClipDock(DockLayout):
    """The panel. Uses ``qgis.utils.iface``: mapCanvas(), messageBar() and, if present, currentLayerChanged."""

    resultAdded = pyqtSignal(object)   # QgsVectorLayer

    def __init__(self, parent=None):
        super().__init__("RemoteCLIP", parent)
        self.setObjectName("RemoteClipDock")
        self.iface = qgis.utils.iface
        self.runner = RunController(self)
        self.bundle = None
        self._plan_generation = 0
        self.plan = None
        self._build()
        self._wire()
        dock_settings.restore(self)
        self.refresh_dependencies()
        current = getattr(self.iface, "currentLayerChanged", None)
        if current is not None:
            with contextlib.suppress(TypeError):   # a test iface's signal may carry another type
                current.connect(self._follow_layer)

    def _wire(self) -> None:
        """The widgets (dock_layout) to what they do."""
        self.deps_banner.changed.connect(self._deps_changed)
        self._form_error_kind = None
        self.tabs.currentChanged.connect(self._clear_form_status)
        self.deps_banner.problem.connect(self._report_error)
        self.demo_banner.problem.connect(self._report_error)
        self.model_widget.fileChanged.connect(self._model_changed)
        self.model_row.message.connect(lambda text, level: self.iface.messageBar().pushMessage(
            "RemoteCLIP", text, Qgis.MessageLevel(level), 10))
        self.export_box.status.connect(self.status_text)
        self.export_box.problem.connect(self._report_error)
        self.assess_box.status.connect(self.status_text)
        self.assess_box.problem.connect(self._report_error)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.help_button.clicked.connect(self.open_help)
        self._plan_timer = QTimer(self)
        self._plan_timer.setSingleShot(True)
        self._plan_timer.setInterval(PLAN_DELAY_MS)
        self._plan_timer.timeout.connect(self.update_plan)
        self._planner = PlanRelay(self)
        self._planner.planned.connect(self._show_plan)
        for signal in (self.layer_combo.layerChanged, self.tile_size.valueChanged, self.tile_unit.currentIndexChanged,
                       self.overlap.valueChanged, self.extent_combo.currentIndexChanged, self.polygon_combo.layerChanged,
                       self.selected_only.toggled, self.bands_edit.textChanged, self.model_widget.fileChanged,
                       self.device_combo.currentIndexChanged, self.precision_combo.currentIndexChanged):
            signal.connect(self.schedule_plan)
        canvas = self.iface.mapCanvas() if self.iface is not None else None
        if canvas is not None and hasattr(canvas, "extentsChanged"):
            canvas.extentsChanged.connect(self._canvas_moved)
        self._wire_picks(canvas)
        r = self.runner
        r.started.connect(self._started)
        r.progress.connect(lambda p: set_value(self.progress, p))
        r.status.connect(self.status_text)
        r.problem.connect(self._report_error)
        r.output_problem.connect(self._show_output_error)
        r.started.connect(lambda _request: self._show_output_error(""))
        self.output_widget.fileChanged.connect(lambda _path: self._show_output_error(""))
        r.finished.connect(self._finish)
        r.succeeded.connect(self._show_result)
        r.failed.connect(self._show_failed)
        r.cancelled.connect(self._show_cancelled)

    def _wire_picks(self, canvas) -> None:
        """The Search tab's "pick on the map" buttons (example_picker) on the map canvas: the picks are tiles of
        the chosen raster's grid at the tile size and overlap set here, cleared when any of them changes."""
        for form in self.forms.values():
            picks = form.map_picks
            if picks is None or canvas is None or not hasattr(canvas, "setMapTool"):
                continue
            picks.attach(canvas, self._pick_grid)
            for signal in (self.layer_combo.layerChanged, self.tile_size.valueChanged,
                           self.tile_unit.currentIndexChanged, self.overlap.valueChanged):
                signal.connect(picks.reset)
            picks.problem.connect(lambda text: self._report_error(text, None))

    def _pick_grid(self):
        """(core.geodata.tiles.TileGrid, CRS WKT, QgsCoordinateReferenceSystem): the chosen raster's tiles at the tile size
        and overlap set here, as a job uses them (core.examples.raster_grid)."""
        from .core.examples import raster_grid
        from .core.pipeline import TileSpec
        from .layer_source import raster_for_layer

        layer = self.layer_combo.currentLayer()
        if not isinstance(layer, QgsRasterLayer) or not layer.isValid():
            raise InvalidInput("No raster layer is chosen to pick tiles on.",
                               "Pick the raster in the RemoteCLIP panel first.")
        if is_web_layer(layer):
            raise InvalidInput("Tiles can be picked on a raster file only (a web layer's tiles follow the map).",
                               "Give the examples as a point layer, or search a raster file.")
        spec = TileSpec(size=self.tile_size.value(), unit=self.tile_unit.currentData(),
                        overlap=self.overlap.value() / 100.0)
        grid, wkt = raster_grid(raster_for_layer(layer), spec)
        return grid, wkt, layer.crs()

    # the run controller's state, as the dock has always shown it
    task = property(lambda self: self.runner.task, doc="The running RemoteClipTask, else None.")
    last_result = property(lambda self: self.runner.last_result)
    last_layer = property(lambda self: self.runner.last_layer)
    last_dense_layer = property(lambda self: self.runner.last_dense_layer)
    last_suggestions = property(lambda self: self.runner.last_suggestions)
    install_task = property(lambda self: self.deps_banner.install_task)

    # ----------------------------------------------------------------------------- settings, model

    def model_path(self) -> str:
        return bundle_path(self.model_widget.filePath())

    def _model_changed(self, _path=None) -> None:
        path = self.model_path()
        self.demo_banner.show_for(path)
        self.bundle = None
        if not path:
            self.model_info.setText("<i>No model: choose a bundle folder or .zip.</i>")
            return
        try:
            from .core.runtime.bundle import load_bundle

            b = load_bundle(path)
        except Exception as e:
            self.model_info.setText(f"<span style='color:#b00020'>{_html(str(e))}</span>")
            return
        self.bundle = b   # parsed once, here; handed to the job
        self.model_info.setText(f"<b>{_html(b.name)}</b> · {_html(b.architecture)} · {_html(b.activation)} · "
                                f"{b.embed_dim}-d")
        current = self.precision_combo.currentText()
        self.precision_combo.clear()
        self.precision_combo.addItems(["auto", *b.precisions])
        if current in b.precisions:
            self.precision_combo.setCurrentText(current)
        save_setting("model", path)

    def _follow_layer(self, layer) -> None:
        if isinstance(layer, QgsRasterLayer):
            self.layer_combo.setLayer(layer)

    # --------------------------------------------------------------------------------- dependencies

    def refresh_dependencies(self) -> list[str]:
        """Look for missing packages again (the banner shows them; Run waits for them)."""
        return self.deps_banner.refresh()

    def _deps_changed(self, missing: list) -> None:
        self.run_button.setEnabled(not missing and self.task is None)
        self.run_button.setToolTip("Install the missing packages first" if missing else "")

    def showEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        super().showEvent(event)
        if self.deps_banner.command_pending:
            self.deps_banner.fill_install_command()

    def install_dependencies(self) -> None:
        self.deps_banner.install()

    # ---------------------------------------------------------------------------------- demo, help

    def get_real_model(self) -> None:
        """The demo banner's button: choose RemoteCLIP in the model list and Get it."""
        self.demo_banner.get_real_model()

    def open_help(self) -> bool:
        """The documentation in the web browser; where none opens (no browser, a locked-down desktop), the
        status line says where the help is, selectable to copy."""
        url = help_url()
        if QDesktopServices.openUrl(QUrl(url)):
            return True
        self.status.setText(f"No web browser opened. The help is at {_html(url)} (select it to copy it).")
        QgsMessageLog.logMessage(f"No web browser opened for the help: {url}", LOG_TAG, Qgis.MessageLevel.Info)
        return False

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
        QThreadPool.globalInstance().start(PlanRun(self._planner, generation, job))

    def _show_plan(self, generation: int, plan, problem: str) -> None:
        if generation != self._plan_generation:
            return   # the inputs changed since: a newer plan is on its way
        self.plan = plan
        if plan is None:
            self.plan_label.setText(f"<span style='color:#8a6d00'>Plan: {_html(problem)}</span>")
            return
        self.plan_label.setText(plan_html(plan))

    # ------------------------------------------------------------------------------------- the job

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
        wanted = self.model_row.current_entry()
        if not model and wanted is not None:
            raise ModelError(f"The model {wanted} is not here yet.",
                             "Click Get beside the model list to download it, or choose a model that is here.")
        if not model:
            raise ModelError("No model bundle is chosen.",
                                  "Choose a bundle folder (with manifest.json) or a bundle .zip under Model.")
        extent = self._extent(layer)
        raster = raster_for_layer(layer, pixel_size=self._pixel_size(layer), extent=extent)
        tiles = TileSpec(size=self.tile_size.value(), unit=self.tile_unit.currentData(),
                         overlap=self.overlap.value() / 100.0, extent=extent,
                         bands=parse_bands(self.bands_edit.text()))
        run = RunOptions(model=self._loaded_bundle(model), device=self.device_combo.currentText(),
                         precision=self.precision_combo.currentText() or "auto",
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
        """Start the job the widgets describe (the run controller checks, asks and runs it); returns the task
        (None when the input is refused)."""
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
            # shown under the field (task_forms): the panel says where, no message bar for a typo; the last
            # run's full progress bar would read as if this one had run
            set_value(self.progress, 0)
            self._form_error_kind = form.task_cls.kind
            self.status.setText(f"<span style='color:#b00020'>Check the {_html(form.task_cls.title)} settings: "
                                f"{_html(e.problem)}</span>")
            self.status.setToolTip("")
            for label in (*form.errors.values(), form.form_error):
                if label.isVisibleTo(self):
                    self.scroll.ensureWidgetVisible(label)
            return None
        self._form_error_kind = None
        try:
            job, kind, name = self.build_job()
        except RemoteClipError as e:
            self._report_error(e.problem, e.fix)
            return None
        request = RunRequest(job, kind, name, show_labels=form.show_labels, demo=is_demo(self.model_path()),
                             automatic_output=not self.output_widget.filePath().strip())
        return self.runner.start(request)

    def cancel(self) -> None:
        self.runner.cancel()

    # ------------------------------------------------------------------------- what the run says

    def status_text(self, text: str) -> None:
        self.status.setText(text)

    def _started(self, request) -> None:
        dock_settings.remember(self)
        self._set_running(True)
        self.provider_label.setText(f"ran on: … (running, device {request.job.run.device})")
        self.status.setText(f"Running {request.kind} on {_html(request.name.split(' · ')[0])}…")
        self.status.setToolTip("")

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        if running:
            set_value(self.progress, 0)

    def _finish(self) -> None:
        self._set_running(False)
        self.refresh_dependencies()
        self.schedule_plan()   # the run may have measured this model's speed here

    def _show_result(self, outcome) -> None:
        request, result, layer = outcome.request, outcome.result, outcome.layer
        form = self.forms.get(request.kind)
        if form is not None:
            show_report(form.report, result.report, form.report_table)
        self.export_layer_combo.setLayer(layer)
        self.assess_box.set_map(layer)
        cache = " · from cache" if result.cache_hit else ""
        self.provider_label.setText("ran on: " + device_text(result.provider) + precision_text(result)
                                    + (" · tile embeddings from cache" if result.cache_hit else ""))
        at = f", {result.precision}" if getattr(result, "precision", "") else ""
        summary = f"{result.n_tiles} tiles in {result.seconds:.1f} s on {device_text(result.provider)}{at}{cache}"
        cv = (result.report or {}).get("cv")
        if cv:
            summary += f" · cross-validated accuracy {cv['accuracy']:.0%}"
        self.status.setText(f"Done: {summary}. Saved to {_html(os.path.basename(result.output))}.")
        self.status.setToolTip(f"Saved to {result.output}")
        self.show_results_folder()
        for w in result.warnings:
            self.iface.messageBar().pushMessage("RemoteCLIP", w, Qgis.MessageLevel.Warning, 10)
        self.show_summary(request.kind, outcome.rows, outcome.task, legend_colors(layer))
        self.result_title.setText(f"{_html(request.name)}: {result.n_tiles:,} tiles")
        top = self.result_box.top()
        self.iface.messageBar().pushMessage("RemoteCLIP", f"{request.name}: {result.n_tiles} tiles{cache}"
                                            + (f" · {top}" if top else "") + ".", Qgis.MessageLevel.Success, 5)
        if request.demo:
            self.demo_banner.message(self.iface.messageBar())
        self.resultAdded.emit(layer)

    def _show_failed(self, error: str) -> None:
        set_value(self.progress, 0)
        self.provider_label.setText("ran on: – (the last run failed)")
        self.status.setText(f"<span style='color:#b00020'>Failed: {_html(error)}</span>")

    def _show_cancelled(self) -> None:
        set_value(self.progress, 0)
        self.provider_label.setText("ran on: – (the last run was cancelled)")
        self.status.setText("Cancelled; nothing was written.")

    def _clear_form_status(self, _index=None) -> None:
        """Another task chosen: the status line's complaint about the last one's settings goes."""
        if getattr(self, "_form_error_kind", None) not in (None, self.current_kind()):
            self._form_error_kind = None
            self.status.setText("")
            self.status.setToolTip("")

    def _show_output_error(self, text: str) -> None:
        """The output refused, said under the File field ('' hides it: a new file chosen, a run started)."""
        self.output_error.setText(text)
        self.output_error.setVisible(bool(text))

    def _report_error(self, problem: str, fix: str | None) -> None:
        text = problem + (f" Fix: {fix}" if fix else "")
        if self.task is None:   # a new error, not this run's: the last run's progress is not shown with it
            set_value(self.progress, 0)
        self.status.setText(f"<span style='color:#b00020'>{_html(text)}</span>")
        QgsMessageLog.logMessage(text, LOG_TAG, Qgis.MessageLevel.Warning)
        self.iface.messageBar().pushMessage("RemoteCLIP", text, Qgis.MessageLevel.Warning, 10)

    # ------------------------------------------------------------------------------------- export

    def export_clicked(self) -> None:
        self.export_box.export()

    def unload(self) -> None:
        """Stop what runs: a task left running would call back into a deleted dock."""
        self._plan_timer.stop()
        self._plan_generation += 1   # a plan still being worked out is dropped
        self.model_row.unload()
        self.runner.unload()
        for form in self.forms.values():
            if form.map_picks is not None:
                form.map_picks.detach()
        if self.deps_banner.install_task is not None:
            with contextlib.suppress(RuntimeError):   # already deleted by the task manager
                self.deps_banner.install_task.cancel()
        current = getattr(self.iface, "currentLayerChanged", None)
        if current is not None:
            with contextlib.suppress(TypeError, RuntimeError):
                current.disconnect(self._follow_layer)


def run_title(task_title: str, tiles) -> str:
    """The name of a run's layer: the task's title (task, classes, object or query), the tile size and the
    time, so that two runs of one afternoon read apart in the Layers panel."""
    return f"{task_title} · {tile_size_text(tiles)} · {time.strftime('%H:%M')}"


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

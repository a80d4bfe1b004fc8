"""What the RemoteCLIP algorithms share: raster, model, tiles, run options and the output; and their task
parameters, declared once in core (core.tasks: each task's ``params``) and turned into Processing
parameters by processing/parameters.py. The algorithms themselves are made from the task registry
(provider.algorithm_class: one subclass per task of core.tasks.TASKS, which only names its ``task_kind``).

``prepareAlgorithm`` (QGIS calls it in the main thread) turns the parameters
into a core ``Job``: layers are read there, and a web or database raster gets
a QgisRasterSource whose provider is cloned there. ``processAlgorithm`` (a
background thread in the GUI) runs ``core.pipeline.run_job`` with the feedback as
progress and cancel callbacks. A cancelled run raises and leaves no output.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile

from qgis.core import (
    QgsCoordinateTransform,
    QgsFeatureRequest,
    QgsGeometry,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputBoolean,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterBand,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
    QgsProcessingUtils,
)
from qgis.PyQt.QtCore import QCoreApplication

from ..core.errors import Cancelled, InvalidInput, ModelError, OutputRefused, RemoteClipError
from ..core.geodata.tiles import MAX_OVERLAP
from ..core.runtime.bundle import PRECISIONS as _PRECISIONS
from ..core.runtime.bundle import bundle_path, default_bundle
from ..core.tasks import TASKS
from .destination import EXTENSION_DRIVERS, convert_output, ogr_destination
from .parameters import adapter, decimals, param_help

UNITS = ["px", "m"]
DEVICES = ["auto", "cpu", "cuda"]
PRECISIONS = [*_PRECISIONS, "auto"]   # fp32, fp16, int8: the enum's indices stay those of earlier versions
_KEEP_ALIVE: list = []   # post-processors QGIS calls after the run; Python must keep them referenced


class StyleOutput(QgsProcessingLayerPostProcessorInterface):
    """Styles the output layer QGIS loads after a run, as the dock does (layers.style_layer)."""

    def __init__(self, kind: str, field_map: dict[str, str]):
        super().__init__()
        self.kind, self.field_map = kind, dict(field_map)

    def postProcessLayer(self, layer, context, feedback):
        try:
            from ..layers import style_layer
        except ImportError:   # the plugin's GUI part is not there (bare core install): keep QGIS's style
            return
        try:
            style_layer(layer, self.kind, self.field_map)
        except Exception as e:  # a style must never turn a finished run into a failure
            feedback.pushWarning(f"RemoteCLIP could not style {layer.name()}: {e}")


class StyleDense(QgsProcessingLayerPostProcessorInterface):
    """Styles the heat map QGIS loads after a run, as the dock does (layers.style_dense_layer)."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def postProcessLayer(self, layer, context, feedback):
        try:
            from ..layers import style_dense_layer
        except ImportError:
            return
        try:
            style_dense_layer(layer, self.kind)
        except Exception as e:  # a style must never turn a finished run into a failure
            feedback.pushWarning(f"RemoteCLIP could not style {layer.name()}: {e}")


class Declaring(QgsProcessingAlgorithm):
    """An algorithm whose parameters and outputs are declared through ``add``/``add_output``: a refused one (a
    duplicate name) stops the declaration instead of vanishing."""

    def add(self, param):
        if not self.addParameter(param):
            raise QgsProcessingException(f"Parameter {param.name()} could not be added (a duplicate name?).")

    def add_output(self, output):
        if not self.addOutput(output):
            raise QgsProcessingException(f"Output {output.name()} could not be added (a duplicate name?).")


class RemoteClipAlgorithm(Declaring):
    """Base class; a subclass (provider.algorithm_class) names its task (``task_kind``, a key of
    core.tasks.TASKS): the name, help, group, task parameters, cache rule and the task itself come from the
    task class."""

    INPUT = "INPUT"
    MODEL = "MODEL"
    TILE_SIZE = "TILE_SIZE"
    TILE_UNIT = "TILE_UNIT"
    OVERLAP = "OVERLAP"
    EXTENT = "EXTENT"
    MASK = "MASK"
    BANDS = "BANDS"
    PIXEL_SIZE = "PIXEL_SIZE"
    BATCH_SIZE = "BATCH_SIZE"
    DEVICE = "DEVICE"
    PRECISION = "PRECISION"
    DASK = "DASK"
    USE_CACHE = "USE_CACHE"
    DISSOLVE = "DISSOLVE"
    OUTPUT = "OUTPUT"
    RASTER_OUTPUT = "RASTER_OUTPUT"
    PROVIDER = "PROVIDER"
    PRECISION_RAN = "PRECISION_RAN"
    N_TILES = "N_TILES"
    CACHE_HIT = "CACHE_HIT"
    ACCURACY = "ACCURACY"
    REPORT = "REPORT"

    task_kind = "embed"     # the task (core.tasks.TASKS)

    @property
    def task_cls(self):
        return TASKS[self.task_kind]

    @property
    def can_skip_cache(self) -> bool:   # USE_CACHE is offered (computeembeddings always caches)
        return self.task_cls.can_skip_cache

    @property
    def kind(self) -> str:   # result style (layers.KINDS)
        return self.task_kind

    @property
    def can_dissolve(self) -> bool:
        return self.task_cls.dissolve_field is not None

    def tr(self, text):
        return QCoreApplication.translate("RemoteClipAlgorithm", text)

    def createInstance(self):
        return type(self)()

    def name(self):
        return self.task_cls.algorithm

    def displayName(self):
        return self.tr(self.task_cls.algorithm_title)

    def shortHelpString(self):
        """The task's help, then what each field means (the task's inputs declare their help)."""
        import html

        rows = [(self.tr(label), self.tr(text)) for label, text in COMMON_HELP[:2]]   # raster, model
        rows += [(self.tr(p.label), self.tr(param_help(p))) for p in self.task_cls.params]
        rows += [(self.tr(label), self.tr(text)) for label, text in COMMON_HELP[2:]
                 if label != "Dissolve" or self.can_dissolve]
        if self.task_cls.dense:
            rows.append((self.tr("Heat map"), self.tr(DENSE_HELP)))
        items = "".join(f"<li><b>{html.escape(k, False)}</b>: {html.escape(v, False)}</li>" for k, v in rows)
        return f"<p>{html.escape(self.tr(self.task_cls.help), False)}</p><ul>{items}</ul>"

    def group(self):
        return self.tr(self.task_cls.group)

    def groupId(self):
        return {"Zero-shot analysis": "analysis"}.get(self.task_cls.group, re.sub(r"\W+", "", self.task_cls.group.lower()))

    def helpUrl(self):
        return "https://github.com/remoteclip-qgis/remoteclip-qgis#readme"

    # ------------------------------------------------------------------------------------ parameters

    def initAlgorithm(self, config=None):
        self.add(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("Raster layer")))
        # "(*)" and not QGIS's default "(*.*)", which would refuse a bundle folder (no extension)
        self.add(QgsProcessingParameterFile(
            self.MODEL, self.tr("Model bundle (folder, its manifest.json, or .rclip.zip)"),
            behavior=QgsProcessingParameterFile.Behavior.File,
            fileFilter=self.tr("RemoteCLIP bundles (manifest.json *.rclip.zip *.zip);;All files (*)"),
            defaultValue=default_bundle(), optional=default_bundle() is not None))
        self.init_task_parameters()
        self.add(decimals(QgsProcessingParameterNumber(
            self.TILE_SIZE, self.tr("Tile size"), QgsProcessingParameterNumber.Type.Double, defaultValue=224,
            minValue=0.01), 1))
        self.add(QgsProcessingParameterEnum(
            self.TILE_UNIT, self.tr("Tile size unit"), options=[self.tr("pixels"), self.tr("metres")],
            defaultValue=0))
        self.add(decimals(QgsProcessingParameterNumber(
            self.OVERLAP, self.tr("Overlap (fraction of the tile edge shared with the neighbour)"),
            QgsProcessingParameterNumber.Type.Double, defaultValue=0.0, minValue=0.0, maxValue=MAX_OVERLAP), 2))
        self.add(QgsProcessingParameterExtent(
            self.EXTENT, self.tr("Extent (only tiles inside it; needed for XYZ/WMS layers)"), optional=True))
        self.add(QgsProcessingParameterFeatureSource(
            self.MASK, self.tr("Mask polygons (only tiles touching them)"),
            [QgsProcessing.SourceType.TypeVectorPolygon], optional=True))
        self.add(QgsProcessingParameterBand(
            self.BANDS, self.tr("Bands (three as R,G,B or one as grey; default: RGB by colour)"),
            parentLayerParameterName=self.INPUT, optional=True, allowMultiple=True))
        advanced = [
            QgsProcessingParameterNumber(
                self.PIXEL_SIZE, self.tr("Pixel size to read at, in layer units (0: native; XYZ: deepest zoom)"),
                QgsProcessingParameterNumber.Type.Double, defaultValue=0.0, minValue=0.0),
            QgsProcessingParameterNumber(
                self.BATCH_SIZE, self.tr("Batch size"), QgsProcessingParameterNumber.Type.Integer, defaultValue=32,
                minValue=1, maxValue=4096),
            QgsProcessingParameterEnum(self.DEVICE, self.tr("Device"), options=DEVICES, defaultValue=0),
            QgsProcessingParameterEnum(self.PRECISION, self.tr("Precision (auto: int8 on a CPU where the model's int8 "
                                                                "graphs agree with fp32, else fp32)"),
                                       options=PRECISIONS, defaultValue=PRECISIONS.index("auto")),
            QgsProcessingParameterString(
                self.DASK, self.tr("Dask scheduler (tls://host:8786; tcp:// only on a trusted private "
                                   "network; local:N for N worker processes here; empty: this process)"), optional=True),
        ]
        if self.can_skip_cache:
            advanced.append(QgsProcessingParameterBoolean(
                self.USE_CACHE, self.tr("Use the embedding cache"), defaultValue=True))
        if self.can_dissolve:
            advanced.append(QgsProcessingParameterBoolean(
                self.DISSOLVE, self.tr("Dissolve touching tiles with the same result"), defaultValue=False))
        for p in advanced:
            p.setFlags(p.flags() | QgsProcessingParameterDefinition.Flag.FlagAdvanced)
            self.add(p)
        out = QgsProcessingParameterVectorDestination(
            self.OUTPUT, self.tr(self.task_cls.output_title), type=QgsProcessing.SourceType.TypeVectorPolygon)
        out.setSupportsNonFileBasedOutput(False)
        self.add(out)
        if self.task_cls.dense:
            dense = QgsProcessingParameterRasterDestination(
                self.RASTER_OUTPUT, self.tr("Heat map (GeoTIFF at tile resolution, overlapping tiles averaged)"),
                optional=True, createByDefault=False)
            dense.setSupportsNonFileBasedOutput(False)
            self.add(dense)
        self.add_output(QgsProcessingOutputString(self.PROVIDER, self.tr("onnxruntime provider that ran")))
        self.add_output(QgsProcessingOutputString(self.PRECISION_RAN, self.tr("Precision that ran, and why")))
        self.add_output(QgsProcessingOutputNumber(self.N_TILES, self.tr("Number of tiles")))
        self.add_output(QgsProcessingOutputBoolean(self.CACHE_HIT, self.tr("Embeddings came from the cache")))
        if self.task_cls.reports:
            self.add_output(QgsProcessingOutputNumber(self.ACCURACY, self.tr("Cross-validated accuracy")))
            self.add_output(QgsProcessingOutputString(self.REPORT, self.tr("Classification report (JSON file)")))

    def init_task_parameters(self):
        """The task's declared inputs (core.tasks.Param) as Processing parameters."""
        for prm in self.task_cls.params:
            p = adapter(prm).make(self, prm)
            if prm.advanced:
                p.setFlags(p.flags() | QgsProcessingParameterDefinition.Flag.FlagAdvanced)
            self.add(p)

    def make_task(self, parameters, context):
        """The core task from the parameters, parsed by the task class (errors name the parameters)."""
        raw = {prm.name: adapter(prm).read(self, prm, parameters, context) for prm in self.task_cls.params}
        for prm in self.task_cls.params:
            if prm.kind == "preset" and raw.get(prm.fills) is not None:
                raw[prm.name] = None   # the class names typed win over the (default) preset
        return self.task_cls.from_inputs(raw, spell=lambda p: p.processing_key)

    # -------------------------------------------------------------------------------- helpers

    def _extent_and_mask(self, parameters, context, layer):
        """TileSpec extent in the layer's CRS: mask polygons (clipped to EXTENT), EXTENT, or None."""
        from ..core.geodata.tiles import Polygons

        lcrs = layer.crs()
        rect = None
        if parameters.get(self.EXTENT) not in (None, ""):
            rect = self.parameterAsExtent(parameters, self.EXTENT, context, lcrs)
            if rect is None or rect.isNull() or rect.isEmpty():
                rect = None
        mask = self.parameterAsSource(parameters, self.MASK, context) \
            if parameters.get(self.MASK) not in (None, "") else None
        if mask is None:
            if rect is None:
                return None
            from ..layer_source import extent_from_rectangle  # numpy: imported when a run needs it

            return extent_from_rectangle(rect, lcrs)
        ct = QgsCoordinateTransform(mask.sourceCrs(), lcrs, context.transformContext())
        clip = QgsGeometry.fromRect(rect) if rect is not None else None
        wkts = []
        for f in mask.getFeatures(QgsFeatureRequest().setNoAttributes()):
            g = QgsGeometry(f.geometry())
            if g.isNull() or g.isEmpty():
                continue
            if mask.sourceCrs().isValid() and lcrs.isValid() and mask.sourceCrs() != lcrs \
                    and g.transform(ct) != QgsGeometry.OperationResult.Success:
                raise InvalidInput("A mask polygon cannot be transformed to the raster's CRS.",
                                      "Check the mask layer's CRS.")
            if clip is not None:
                g = g.intersection(clip)
                if g.isNull() or g.isEmpty():
                    continue
            wkts.append(g.asWkt())
        if not wkts:
            raise InvalidInput("The mask has no polygons" + (" inside the extent." if rect else "."),
                                  "Choose a mask layer with polygons over the raster (or no mask).")
        from ..layer_source import crs_wkt, vector_origin

        return Polygons(wkts, crs_wkt(lcrs), vector_origin(self.parameterAsVectorLayer(parameters, self.MASK,
                                                                                      context)))

    def _destination(self, parameters, context) -> tuple[str, str, str | None, str | None]:
        """(destination as QGIS knows it, file core writes, layer name, OGR driver to convert to or None)."""
        from ..core.geodata.vectors import DRIVERS

        dest = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        if not dest or dest == QgsProcessing.TEMPORARY_OUTPUT:
            dest = os.path.join(QgsProcessingUtils.tempFolder(), f"{self.name()}.gpkg")
        if dest.startswith(("memory:", "postgres:", "postgis:", "spatialite:", "mssql:", "oracle:")):
            raise OutputRefused(f"RemoteCLIP writes files, not {dest.split(':')[0]} layers.",
                                  "Save the output to a .gpkg or .shp file (or a temporary layer).")
        path, layer_name = ogr_destination(dest)
        ext = os.path.splitext(path)[1].lower()
        if ext in DRIVERS:   # written as they are; any other OGR file format is converted from a GeoPackage
            return dest, path, layer_name, None
        from osgeo import ogr

        driver = EXTENSION_DRIVERS.get(ext)
        if driver is None or ogr.GetDriverByName(driver) is None:
            raise OutputRefused(f"The output {path} has a format RemoteCLIP cannot write ({ext or 'no extension'}).",
                                  "Name the output .gpkg or .shp (or another OGR vector format such as .geojson).", path=path)
        return dest, path, layer_name, driver

    # -------------------------------------------------------------------------------- the run

    def _bands(self, parameters, context) -> list[int] | None:
        """The band numbers, also as users type them on the command line: QGIS reads a string only as
        "3;2;1" (and "3,2,1" as band 0); the dock's and the command line's rule reads commas and spaces too."""
        from ..core.geodata.raster import parse_bands

        raw = parameters.get(self.BANDS)
        if isinstance(raw, str):
            return parse_bands(raw.replace(";", ","), "Bands (BANDS)")
        return self.parameterAsInts(parameters, self.BANDS, context) or None

    def prepareAlgorithm(self, parameters, context, feedback):
        from ..core.pipeline import Job, RunOptions, TileSpec
        from ..layer_source import raster_for_layer

        self._error = None
        try:
            layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
            if layer is None:
                raise InvalidInput("No raster layer was given (INPUT).",
                                      "Choose a raster layer or give a raster file path.", param="INPUT")
            model = bundle_path(self.parameterAsFile(parameters, self.MODEL, context) or default_bundle() or "")
            if not model:
                raise ModelError("No model bundle was given (MODEL) and the plugin has no demo model.",
                                      "Choose a bundle folder or .rclip.zip, or set REMOTECLIP_MODEL.")
            task = self.make_task(parameters, context)
            extent = self._extent_and_mask(parameters, context, layer)
            pixel_size = self.parameterAsDouble(parameters, self.PIXEL_SIZE, context) or None
            raster = raster_for_layer(layer, pixel_size=pixel_size, extent=extent)
            use_cache = not self.can_skip_cache or self.parameterAsBool(parameters, self.USE_CACHE, context)
            bands = self._bands(parameters, context)
            tiles = TileSpec(size=self.parameterAsDouble(parameters, self.TILE_SIZE, context),
                             unit=UNITS[self.parameterAsEnum(parameters, self.TILE_UNIT, context)],
                             overlap=self.parameterAsDouble(parameters, self.OVERLAP, context),
                             extent=extent, bands=bands)
            run = RunOptions(model=model,
                             device=DEVICES[self.parameterAsEnum(parameters, self.DEVICE, context)],
                             precision=PRECISIONS[self.parameterAsEnum(parameters, self.PRECISION, context)],
                             batch_size=self.parameterAsInt(parameters, self.BATCH_SIZE, context),
                             cache_dir=None if use_cache else "")
            self._dest, path, layer_name, self._convert = self._destination(parameters, context)
            # what the dock names its layers: raster, task, classes (or object, query), tile size
            self._title = task.result_title(layer.name(), tiles)
            self._final = path
            inputs = []
            if self._convert:   # core checks what it writes; the converted file is checked here, by core's rule
                from ..core.geodata.vectors import check_folder_writable, check_not_input
                from ..core.pipeline import job_inputs

                inputs = job_inputs(Job(raster=raster, task=task, run=run, tiles=tiles))
                check_not_input(path, inputs)
                check_folder_writable(os.path.dirname(os.path.abspath(path)))
            dissolve = self.can_dissolve and self.parameterAsBool(parameters, self.DISSOLVE, context)
            dask = (self.parameterAsString(parameters, self.DASK, context) or "").strip() or None
            if dask and not isinstance(raster, str):
                raise InvalidInput(f"The layer {layer.name()} is read through QGIS ({layer.providerType()} "
                                      "provider); Dask workers read raster files themselves.",
                                      "Leave the Dask scheduler empty, or save the layer as a GeoTIFF first "
                                      "(Export > Save As) and run on that file.", param="DASK")
            self._dense = None
            if self.task_cls.dense and parameters.get(self.RASTER_OUTPUT) not in (None, ""):
                self._dense = self.parameterAsOutputLayer(parameters, self.RASTER_OUTPUT, context) or None
            if self._convert and self.task_cls.reports:
                from ..core.outputs import check_report_path, report_path

                report = report_path(path, layer_name or os.path.splitext(os.path.basename(path))[0])
                check_not_input(report, inputs)
                check_report_path(report)
        except RemoteClipError as e:
            # QGIS turns an exception here into a bare "There were errors executing the algorithm" for
            # processing.run(); raised from processAlgorithm the message reaches every caller
            self._error = str(e)
            return True
        write = path
        if self._convert:
            self._tmpdir = tempfile.mkdtemp(prefix="remoteclip_", dir=QgsProcessingUtils.tempFolder())
            write = os.path.join(self._tmpdir, "result.gpkg")
        # QGIS's convention: the destination widget asked before an existing file was chosen, outputs are
        # overwritten (core still keeps a GeoPackage's other layers). Processing runs are deliberate (batch,
        # models, qgis_process): no tile limit; the plan is reported.
        self._job = Job(raster=raster, task=task, run=run, tiles=tiles, output=write, layer_name=layer_name,
                        dissolve=dissolve, overwrite=True, max_tiles=None, raster_output=self._dense, dask=dask)
        if dask:   # a plain tcp:// scheduler off this machine: said before anything is sent
            from ..core.pipeline.distributed import plain_tcp_warning

            warning = plain_tcp_warning(dask)
            if warning:
                (getattr(feedback, "pushWarning", None) or feedback.pushInfo)(warning)   # QGIS 3.22: pushInfo
        if not isinstance(raster, str):
            feedback.pushInfo(f"Reading {layer.name()} through QGIS ({layer.providerType()} provider) at "
                              f"{raster.width} x {raster.height} pixels.")
        return True

    def processAlgorithm(self, parameters, context, feedback):
        from ..core.pipeline import run_job

        if self._error:
            raise QgsProcessingException(self._error)
        _add_plugin_deps()
        job = self._job
        try:
            result = run_job(job, progress=lambda f, msg: _progress(feedback, f, msg),
                             is_cancelled=feedback.isCanceled,
                             on_plan=lambda plan: feedback.pushInfo(f"Plan: {plan.describe()}."))
            if feedback.isCanceled():
                raise Cancelled("cancelled")
            if self._convert:
                convert_output(job.output, self._final, self._convert, result.layer_name)
                if result.report is not None:   # beside the converted file, not the staging GeoPackage
                    from ..core.outputs import check_report_path, report_path, write_report

                    result.report_output = write_report(
                        check_report_path(report_path(self._final, os.path.splitext(os.path.basename(self._final))[0])),
                        {**result.report, "output": self._final})
        except Cancelled:
            raise QgsProcessingException(self.tr("Cancelled: no output was written.")) from None
        except RemoteClipError as e:
            raise QgsProcessingException(str(e)) from None
        except ImportError as e:
            raise QgsProcessingException(
                f"A Python package RemoteCLIP needs is missing: {e}. Fix: install it from the RemoteCLIP "
                "menu (Install dependencies) or with pip into QGIS's Python (onnxruntime, ftfy, regex).") from None
        finally:
            if getattr(self, "_tmpdir", None):
                shutil.rmtree(self._tmpdir, ignore_errors=True)
            close = getattr(job.raster, "close", None)
            if close is not None:
                close()
        feedback.pushInfo(f"{result.n_tiles} tiles on {result.provider}"
                          + (" (embeddings from the cache)" if result.cache_hit else "")
                          + f" in {result.seconds:.1f} s.")
        feedback.pushInfo(f"Precision: {result.precision} ({result.precision_reason}).")
        for w in result.warnings:
            feedback.pushWarning(w)
        from ..core.runtime.bundle import DEMO_NAME, DEMO_NOTE

        if result.model == DEMO_NAME:
            feedback.pushWarning(f"Note: {DEMO_NOTE}.")
        self._style_on_load(context, result)
        out = {self.OUTPUT: self._dest, self.PROVIDER: result.provider, self.N_TILES: result.n_tiles,
               self.PRECISION_RAN: f"{result.precision} ({result.precision_reason})",
               self.CACHE_HIT: bool(result.cache_hit)}
        if self.task_cls.dense:
            out[self.RASTER_OUTPUT] = result.raster_output
        for prm in self.task_cls.params:
            out.update(adapter(prm).outputs(prm, job.task))
        if self.task_cls.reports:
            from ..core.tasks import report_lines

            for line in report_lines(result.report):
                feedback.pushInfo(line)
            cv = (result.report or {}).get("cv") or {}
            out[self.ACCURACY] = cv.get("accuracy")
            out[self.REPORT] = result.report_output
        return out

    def _style_on_load(self, context, result):
        for dest, processor in ((self._dest, StyleOutput(self.kind, result.field_map)),
                                (result.raster_output, StyleDense(self.kind))):
            if not dest or not context.willLoadLayerOnCompletion(dest):
                continue
            details = context.layerToLoadOnCompletionDetails(dest)
            # the layer's name says what it holds; a file the analyst named keeps QGIS's rule (its file name
            # where "Prefer output filename for layer names" is on), a temporary output's file name means nothing
            details.name = self._title if dest == self._dest else self.task_cls.dense_title(self._title)
            if _in_folder(dest.split("|")[0], QgsProcessingUtils.tempFolder()):   # a temporary output
                details.forceName = True
            _KEEP_ALIVE.append(processor)
            del _KEEP_ALIVE[:-16]
            details.setPostProcessor(processor)


# ------------------------------------------------------------------------------------------ helpers

def _in_folder(path: str, folder: str) -> bool:
    try:
        return os.path.commonpath([os.path.realpath(path), os.path.realpath(folder)]) == os.path.realpath(folder)
    except ValueError:   # another drive
        return False


def _progress(feedback, fraction, message):
    feedback.setProgress(100.0 * max(0.0, min(1.0, fraction)))
    if message:
        feedback.setProgressText(message)


def _add_plugin_deps():
    # onnxruntime may live in the plugin's private package folder (qgis_process never ran the GUI)
    try:
        from ..deps import add_deps_to_path
    except ImportError:
        return
    # a missing folder is reported by the import that needs it
    with contextlib.suppress(Exception):
        add_deps_to_path()


COMMON_HELP = (
    ("Raster layer", "the image to tile: a GeoTIFF or any raster QGIS opens (XYZ and WMS layers need an extent)"),
    ("Model bundle", "a RemoteCLIP model: its folder, its manifest.json or a .rclip.zip; empty: the demo model "
                     "shipped with the plugin, for trying it only"),
    ("Tile size", "the edge of a square tile, in the unit below; each tile gets one result"),
    ("Tile size unit", "pixels of the raster, or metres on the ground (the raster's CRS may be in degrees)"),
    ("Overlap", f"the fraction of a tile's edge shared with its neighbour (0 to {MAX_OVERLAP:g}); more overlap, "
                "more tiles and a smoother heat map"),
    ("Extent", "only tiles inside it; needed for XYZ and WMS layers, which cover the world"),
    ("Mask polygons", "only tiles touching these polygons"),
    ("Bands", "three band numbers read as red, green, blue (e.g. 3,2,1), or one read as grey; default: the "
              "bands whose colour interpretation is red, green, blue, else the first three"),
    ("Pixel size", "read the raster at this resolution, in layer units; 0: native (XYZ: the deepest zoom)"),
    ("Batch size", "tiles encoded at once; smaller needs less memory"),
    ("Device", "auto: the GPU when onnxruntime-gpu and CUDA work, else the CPU"),
    ("Precision", "fp32, or fp16 when the model bundle has it (GPU)"),
    ("Use the embedding cache", "a later run on the same raster, tiles and model reads no pixels"),
    ("Dissolve", "merge touching tiles with the same result into one polygon (n_tiles says how many tiles)"),
    ("Output", "a GeoPackage or Shapefile (other OGR formats are converted; CSV gets the polygons as WKT)"),
)
DENSE_HELP = "optional GeoTIFF at tile resolution: per-class probabilities or the similarity; overlapping tiles " \
             "averaged"

"""The provider's accuracy tools, on core.assess as ``remoteclip sample`` and ``remoteclip assess`` run it:
``remoteclip:referencesample`` (a stratified random sample of a map's classes, for the analyst to label) and
``remoteclip:assessaccuracy`` (Olofsson et al. 2014's accuracy and error-adjusted areas from the labelled
points). The provider adds every class of ``TOOLS``.

A layer is read from its own file when it has one (layer_source.vector_file); a filtered or edited layer,
or one from another provider (memory, database), is first copied to a GeoPackage in a temporary folder.
Layers are read in ``prepareAlgorithm`` (QGIS's main thread); errors reach ``processAlgorithm``, whose
message every caller sees. No output may be an input: core refuses it by the layers' files.
"""

from __future__ import annotations

import html
import os
import shutil
import tempfile

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterEnum,
    QgsProcessingParameterField,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
    QgsProcessingParameterVectorLayer,
    QgsProcessingUtils,
)
from qgis.PyQt.QtCore import QCoreApplication

from ..core.errors import InvalidInput, OutputRefused, RemoteClipError
from .base import Declaring

ALLOCATIONS = ["proportional", "equal"]


class AssessmentAlgorithm(Declaring):
    """What the accuracy tools share: name, group, help, the map inputs, and the prepare/process split."""

    MAP = "MAP"
    MAP_FIELD = "MAP_FIELD"
    REFERENCE_FIELD = "REFERENCE_FIELD"
    OUTPUT = "OUTPUT"
    N_POINTS = "N_POINTS"

    algorithm = ""   # the id after "remoteclip:"
    title = ""
    help = ""
    field_help: tuple[tuple[str, str], ...] = ()

    def tr(self, text):
        return QCoreApplication.translate("AssessmentAlgorithm", text)

    def createInstance(self):
        return type(self)()

    def name(self):
        return self.algorithm

    def displayName(self):
        return self.tr(self.title)

    def group(self):
        return self.tr("Accuracy assessment")

    def groupId(self):
        return "accuracy"

    def helpUrl(self):
        return "https://github.com/remoteclip-qgis/remoteclip-qgis/blob/main/docs/assessment.md"

    def shortHelpString(self):
        items = "".join(f"<li><b>{html.escape(self.tr(k), False)}</b>: {html.escape(self.tr(v), False)}</li>"
                        for k, v in self.field_help)
        return f"<p>{html.escape(self.tr(self.help), False)}</p><ul>{items}</ul>"

    def add_map_parameters(self):
        self.add(QgsProcessingParameterVectorLayer(
            self.MAP, self.tr("Map (polygons with a class field: label, classify or change results)"),
            [QgsProcessing.SourceType.TypeVectorPolygon]))
        self.add(QgsProcessingParameterField(self.MAP_FIELD, self.tr("Map class field"), defaultValue="label",
                                             parentLayerParameterName=self.MAP, optional=True))

    # ------------------------------------------------------------------------------------------ the run

    def prepareAlgorithm(self, parameters, context, feedback):
        self._error = None
        self._tmpdir = tempfile.mkdtemp(prefix="remoteclip_", dir=QgsProcessingUtils.tempFolder())
        try:
            self.prepare(parameters, context)
        except RemoteClipError as e:
            # raised here QGIS would say only "There were errors executing the algorithm" (see base.py)
            self._error = str(e)
        return True

    def processAlgorithm(self, parameters, context, feedback):
        try:
            if self._error:
                raise QgsProcessingException(self._error)
            return self.process(feedback)
        except RemoteClipError as e:
            raise QgsProcessingException(str(e)) from None
        finally:
            shutil.rmtree(self._tmpdir, ignore_errors=True)

    def prepare(self, parameters, context) -> None:
        raise NotImplementedError

    def process(self, feedback) -> dict:
        raise NotImplementedError

    def read_layer(self, parameters, name: str, context, what: str):
        """(file, layer name, inputs, layer) of a layer parameter, as core reads it (layer_source.vector_file)."""
        from ..layer_source import vector_file

        layer = self.parameterAsVectorLayer(parameters, name, context)
        if layer is None:
            raise InvalidInput(f"No {what} layer was given ({name}).", f"Choose the {what} layer.", param=name)
        path, layer_name, inputs = vector_file(layer, self._tmpdir, what)
        return path, layer_name, inputs, layer

    def field(self, parameters, name: str, context) -> str:
        """A field parameter's value, else its default (the fields are optional only because QGIS 3.22 would
        not fill a left-out field with its default: ``label``, ``reference``)."""
        # parameterAsStrings from QGIS 3.32, where parameterAsFields is deprecated; 3.22 has only the latter
        read = getattr(self, "parameterAsStrings", None) or self.parameterAsFields
        fields = read(parameters, name, context)
        return fields[0] if fields else self.parameterDefinition(name).defaultValue()


class ReferenceSampleAlgorithm(AssessmentAlgorithm):
    """remoteclip:referencesample: ``remoteclip sample`` (core.assess.write_sample)."""

    PER_CLASS = "PER_CLASS"
    TOTAL = "TOTAL"
    ALLOCATION = "ALLOCATION"
    SEED = "SEED"

    algorithm = "referencesample"
    title = "Make a reference sample"
    help = ("Random points inside each class of a map (the strata), for an analyst to label by looking at the "
            "imagery; then Assess accuracy and areas. The same map, numbers and seed give the same points as "
            "`remoteclip sample`.")
    field_help = (
        ("Map", "a polygon layer with a class field; overlapping tiles are counted once"),
        ("Points per class", "points in each class (equal allocation); used when Total is 0"),
        ("Total points", "points in all, shared by Allocation; 0: Points per class in every class"),
        ("Allocation", "with a total: in proportion to each class's map area, or equally"),
        ("Seed", "the same seed, the same points"),
        ("Reference field", "the empty field the analyst fills with each point's true class"),
        ("Output", "a GeoPackage (a layer of it) or a Shapefile; never the map's own layer"),
    )

    def initAlgorithm(self, config=None):
        self.add_map_parameters()
        self.add(QgsProcessingParameterNumber(self.PER_CLASS, self.tr("Points per class"),
                                              QgsProcessingParameterNumber.Type.Integer, defaultValue=50, minValue=1))
        self.add(QgsProcessingParameterNumber(self.TOTAL, self.tr("Total points (0: points per class)"),
                                              QgsProcessingParameterNumber.Type.Integer, defaultValue=0, minValue=0))
        self.add(QgsProcessingParameterEnum(self.ALLOCATION, self.tr("Allocation of the total"),
                                            options=ALLOCATIONS, defaultValue=0))
        self.add(QgsProcessingParameterNumber(self.SEED, self.tr("Random seed"),
                                              QgsProcessingParameterNumber.Type.Integer, defaultValue=0, minValue=0))
        self.add(QgsProcessingParameterString(self.REFERENCE_FIELD, self.tr("Reference field (left empty)"),
                                              defaultValue="reference"))
        out = QgsProcessingParameterVectorDestination(self.OUTPUT, self.tr("Reference sample"),
                                                      type=QgsProcessing.SourceType.TypeVectorPoint)
        out.setSupportsNonFileBasedOutput(False)
        self.add(out)
        self.add_output(QgsProcessingOutputNumber(self.N_POINTS, self.tr("Number of points")))

    def prepare(self, parameters, context):
        from ..core.geodata.vectors import DRIVERS
        from .base import ogr_destination

        map_path, map_layer, inputs, _ = self.read_layer(parameters, self.MAP, context, "map")
        dest = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        if not dest or dest == QgsProcessing.TEMPORARY_OUTPUT:
            dest = os.path.join(tempfile.mkdtemp(dir=QgsProcessingUtils.tempFolder()), "reference_sample.gpkg")
        path, layer_name = ogr_destination(dest)
        if dest.startswith(("memory:", "postgres:", "postgis:", "spatialite:", "mssql:", "oracle:")) \
                or os.path.splitext(path)[1].lower() not in DRIVERS:
            raise OutputRefused(f"The reference sample {dest} is no GeoPackage or Shapefile.",
                                "Save it to a .gpkg or .shp file (or a temporary layer).", path=path)
        if path.lower().endswith(".gpkg") and not layer_name:
            layer_name = os.path.splitext(os.path.basename(path))[0]   # as the tile tasks name theirs
        total = self.parameterAsInt(parameters, self.TOTAL, context)
        self._dest = dest
        # QGIS's convention: the destination widget asked before an existing file was chosen
        self._args = dict(map_path=map_path, output=path, map_field=self.field(parameters, self.MAP_FIELD, context),
                          layer=map_layer, per_class=None if total else self.parameterAsInt(parameters, self.PER_CLASS,
                                                                                            context),
                          total=total or None, allocation=ALLOCATIONS[self.parameterAsEnum(parameters, self.ALLOCATION,
                                                                                           context)],
                          seed=self.parameterAsInt(parameters, self.SEED, context),
                          reference_field=self.parameterAsString(parameters, self.REFERENCE_FIELD, context),
                          out_layer=layer_name, overwrite=True, inputs=inputs)

    def process(self, feedback):
        from ..core.assess import write_sample

        s = write_sample(**self._args)
        per = ", ".join(f"{c} {k}" for c, k in zip(s.strata.classes, s.per_class, strict=True))
        feedback.pushInfo(f"{s.n_points} points ({per}). Next: type each point's true class into "
                          f"'{s.reference_field}', then run Assess accuracy and areas.")
        return {self.OUTPUT: self._dest, self.N_POINTS: s.n_points}


class AssessAccuracyAlgorithm(AssessmentAlgorithm):
    """remoteclip:assessaccuracy: ``remoteclip assess`` (core.assess.assess and its report files)."""

    REFERENCE = "REFERENCE"
    CSV = "CSV"
    OVERALL_ACCURACY = "OVERALL_ACCURACY"
    OVERALL_ACCURACY_CI95 = "OVERALL_ACCURACY_CI95"
    TABLE = "TABLE"

    algorithm = "assessaccuracy"
    title = "Assess accuracy and areas"
    help = ("Olofsson et al. (2014) estimates from a stratified sample whose points the analyst labelled: "
            "overall, user's and producer's accuracy and each class's error-adjusted area, each with its 95 % "
            "confidence half-width (ci95), as `remoteclip assess` writes them.")
    field_help = (
        ("Map", "the map the sample was drawn from (its classes are the strata)"),
        ("Reference points", "the labelled points, any CRS; points without a reference value are left out"),
        ("Reference field", "the points' true-class field"),
        ("Report", "the report as JSON (docs/assessment.md lists its keys)"),
        ("CSV table", "optional: per class its areas and accuracies with their ci95"),
    )

    def initAlgorithm(self, config=None):
        self.add_map_parameters()
        self.add(QgsProcessingParameterVectorLayer(self.REFERENCE, self.tr("Reference points (labelled)"),
                                                   [QgsProcessing.SourceType.TypeVectorPoint]))
        self.add(QgsProcessingParameterField(self.REFERENCE_FIELD, self.tr("Reference field"),
                                             defaultValue="reference", parentLayerParameterName=self.REFERENCE,
                                             optional=True))
        self.add(QgsProcessingParameterFileDestination(self.OUTPUT, self.tr("Accuracy report (JSON)"),
                                                       fileFilter="JSON files (*.json)"))
        self.add(QgsProcessingParameterFileDestination(self.CSV, self.tr("Per-class table (CSV)"),
                                                       fileFilter="CSV files (*.csv)", optional=True,
                                                       createByDefault=False))
        self.add_output(QgsProcessingOutputNumber(self.OVERALL_ACCURACY, self.tr("Overall accuracy")))
        self.add_output(QgsProcessingOutputNumber(self.OVERALL_ACCURACY_CI95,
                                                  self.tr("Overall accuracy, 95 % confidence half-width")))
        self.add_output(QgsProcessingOutputNumber(self.N_POINTS, self.tr("Reference points used")))
        self.add_output(QgsProcessingOutputString(self.TABLE, self.tr("The report as a plain table")))

    def prepare(self, parameters, context):
        from ..core.assess import check_report_outputs

        map_path, map_layer, map_inputs, self._map = self.read_layer(parameters, self.MAP, context, "map")
        ref_path, ref_layer, ref_inputs, self._ref = self.read_layer(parameters, self.REFERENCE, context,
                                                                     "reference points")
        self._json = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        self._csv = self.parameterAsFileOutput(parameters, self.CSV, context) \
            if parameters.get(self.CSV) not in (None, "") else None
        inputs = [(f"{map_path}|layername={map_layer}" if map_layer else map_path, "map"),
                  (f"{ref_path}|layername={ref_layer}" if ref_layer else ref_path, "reference points"),
                  *map_inputs, *ref_inputs]
        check_report_outputs(self._json, self._csv, inputs, overwrite=True)
        self._args = (map_path, ref_path, self.field(parameters, self.REFERENCE_FIELD, context),
                      self.field(parameters, self.MAP_FIELD, context), map_layer, ref_layer)

    def process(self, feedback):
        from ..core.assess import assess, report_table, write_report_files

        report = assess(*self._args)
        # a copy made for core is no file the analyst knows: the report names the layers' sources
        for key, layer in (("map", self._map), ("reference", self._ref)):
            if report[key].startswith(os.path.realpath(self._tmpdir)) or report[key].startswith(self._tmpdir):
                report[key] = layer.publicSource()
        write_report_files(report, self._json, self._csv)
        for line in report_table(report).splitlines():
            feedback.pushInfo(line)
        oa = report["overall_accuracy"]
        out = {self.OUTPUT: self._json, self.OVERALL_ACCURACY: oa["estimate"],
               self.OVERALL_ACCURACY_CI95: oa["ci95"], self.N_POINTS: report["n"]["used"],
               self.TABLE: report_table(report)}
        if self._csv:
            out[self.CSV] = self._csv
        return out


TOOLS = (ReferenceSampleAlgorithm, AssessAccuracyAlgorithm)   # the provider adds one of each

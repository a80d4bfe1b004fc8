"""A task's inputs (core.tasks.Param) as Processing parameters: one adapter per ``Param.kind`` in one table
(``PARAMETERS``), as QGIS Processing's gui/wrappers.py picks a widget wrapper by parameter type.

An adapter makes the QgsProcessingParameter of an input (``make``: the task's label, limits, default and
optional flag) and reads it back as the raw value ``Task.from_inputs`` takes (``read``); a file written
besides the job's outputs is also an output of the algorithm (``outputs``).
"""

from __future__ import annotations

from qgis.core import (
    QgsProcessing,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)

DEFAULT_PRESET = "land-cover"


class Adapter:
    """How Processing shows and reads one kind of task input; ``alg`` is the RemoteClipAlgorithm."""

    def make(self, alg, prm):
        raise NotImplementedError

    def read(self, alg, prm, parameters, context):
        return None

    def outputs(self, prm, task) -> dict:
        """Outputs of the algorithm that this input names (a file the task wrote)."""
        return {}


class _List(Adapter):
    """Class names or templates: a multi-line text, None when empty (the task's default)."""

    def __init__(self, hint: str):
        self.hint = hint

    def make(self, alg, prm):
        return QgsProcessingParameterString(prm.processing_key, alg.tr(prm.label + self.hint), multiLine=True,
                                            optional=True)

    def read(self, alg, prm, parameters, context):
        value = alg.parameterAsString(parameters, prm.processing_key, context)
        return value.strip() if value.strip() else None


class _Preset(Adapter):
    """A preset of class names: an enum with "(none)" first; a default preset lets the algorithm run with
    its default values, class names typed win over it (RemoteClipAlgorithm.make_task)."""

    def make(self, alg, prm):
        default = prm.choices.index(DEFAULT_PRESET) + 1 if DEFAULT_PRESET in prm.choices else 0
        return QgsProcessingParameterEnum(prm.processing_key, alg.tr(prm.label + " (used when no class names are "
                                                                                 "given)"),
                                          options=[alg.tr("(none)"), *prm.choices], defaultValue=default)

    def read(self, alg, prm, parameters, context):
        i = alg.parameterAsEnum(parameters, prm.processing_key, context)
        return prm.choices[i - 1] if i else None


class _Text(Adapter):
    def make(self, alg, prm):
        return QgsProcessingParameterString(prm.processing_key, alg.tr(prm.label), optional=prm.optional)

    def read(self, alg, prm, parameters, context):
        return alg.parameterAsString(parameters, prm.processing_key, context).strip()


class _Number(Adapter):
    """An int or a float with the task's limits; the dialog starts where the dock does (search: top 20,
    standing out); an unset optional number is None."""

    def __init__(self, integer: bool):
        self.integer = integer

    def make(self, alg, prm):
        number = QgsProcessingParameterNumber
        kwargs = {"optional": prm.optional}
        if prm.start_value is not None:
            kwargs["defaultValue"] = prm.start_value
        if prm.lo is not None:
            kwargs["minValue"] = prm.lo
        if prm.hi is not None:
            kwargs["maxValue"] = prm.hi
        p = number(prm.processing_key, alg.tr(prm.label), number.Type.Integer if self.integer else number.Type.Double,
                   **kwargs)
        return p if self.integer else decimals(p, 3)

    def read(self, alg, prm, parameters, context):
        key = prm.processing_key
        if prm.optional:
            return optional_number(alg, parameters, key, context, integer=self.integer)
        return alg.parameterAsInt(parameters, key, context) if self.integer \
            else alg.parameterAsDouble(parameters, key, context)


class _Choice(Adapter):
    def make(self, alg, prm):
        return QgsProcessingParameterEnum(prm.processing_key, alg.tr(prm.label), options=list(prm.choices),
                                          defaultValue=list(prm.choices).index(prm.default))

    def read(self, alg, prm, parameters, context):
        return prm.choices[alg.parameterAsEnum(parameters, prm.processing_key, context)]


class _Samples(Adapter):
    """Sample points or polygons: a feature source, read with the class field that names it as parent
    (QGIS's "selected features only" applies)."""

    def make(self, alg, prm):
        return QgsProcessingParameterFeatureSource(
            prm.processing_key, alg.tr(prm.label),
            [QgsProcessing.SourceType.TypeVectorPoint, QgsProcessing.SourceType.TypeVectorPolygon],
            optional=prm.optional)

    def read(self, alg, prm, parameters, context):
        from ..layer_source import samples_from_layer, vector_origin

        key = prm.processing_key
        source = alg.parameterAsSource(parameters, key, context) if parameters.get(key) not in (None, "") else None
        field = next((alg.parameterAsString(parameters, f.processing_key, context)
                      for f in alg.task_cls.params if f.kind == "field" and f.parent == prm.name), "")
        if source is None:
            return None
        samples = samples_from_layer(source, field)
        # the file behind the source: no output may replace it
        samples.origin = vector_origin(alg.parameterAsVectorLayer(parameters, key, context))
        return samples


class _Field(Adapter):
    """A field of the samples input ``prm.parent``; read with those samples."""

    def make(self, alg, prm):
        parent = alg.task_cls.param(prm.parent).processing_key
        return QgsProcessingParameterField(prm.processing_key, alg.tr(prm.label), parentLayerParameterName=parent,
                                           optional=prm.optional)


class _File(Adapter):
    def make(self, alg, prm):
        return QgsProcessingParameterFile(prm.processing_key, alg.tr(prm.label),
                                          behavior=QgsProcessingParameterFile.Behavior.File,
                                          fileFilter=prm.file_filter or "All files (*)", optional=prm.optional)

    def read(self, alg, prm, parameters, context):
        return alg.parameterAsFile(parameters, prm.processing_key, context) or None


class _FileOut(Adapter):
    def make(self, alg, prm):
        return QgsProcessingParameterFileDestination(prm.processing_key, alg.tr(prm.label),
                                                     fileFilter=prm.file_filter or "All files (*)",
                                                     optional=prm.optional, createByDefault=False)

    def read(self, alg, prm, parameters, context):
        return alg.parameterAsFileOutput(parameters, prm.processing_key, context) or None

    def outputs(self, prm, task):
        return {prm.processing_key: getattr(task, prm.name, None)}


class _Raster(Adapter):
    """A second raster (core.tasks.change's AFTER): a raster layer or file, read as its source (a file GDAL opens)."""

    def make(self, alg, prm):
        return QgsProcessingParameterRasterLayer(prm.processing_key, alg.tr(prm.label), optional=prm.optional)

    def read(self, alg, prm, parameters, context):
        layer = alg.parameterAsRasterLayer(parameters, prm.processing_key, context)
        return None if layer is None else layer.source()


class _Flag(Adapter):
    def make(self, alg, prm):
        return QgsProcessingParameterBoolean(prm.processing_key, alg.tr(prm.label), defaultValue=bool(prm.default),
                                             optional=True)

    def read(self, alg, prm, parameters, context):
        return alg.parameterAsBoolean(parameters, prm.processing_key, context)


class _Examples(_Samples):
    """Example points or polygons (search by example): the samples' feature source (QGIS's "selected features
    only" applies), read as core.examples.Examples."""

    def read(self, alg, prm, parameters, context):
        from ..layer_source import examples_from_layer, vector_origin

        key = prm.processing_key
        if parameters.get(key) in (None, ""):
            return None
        source = alg.parameterAsSource(parameters, key, context)
        if source is None:
            return None
        examples = examples_from_layer(source, param=prm.name)
        examples.origin = vector_origin(alg.parameterAsVectorLayer(parameters, key, context))
        return examples


class _Images(Adapter):
    """Image files (search by example): several files (a multiple-layers parameter of files, which the dialog,
    models and qgis_process take as a list of paths)."""

    def make(self, alg, prm):
        return QgsProcessingParameterMultipleLayers(prm.processing_key, alg.tr(prm.label),
                                                    QgsProcessing.SourceType.TypeFile, optional=prm.optional)

    def read(self, alg, prm, parameters, context):
        if parameters.get(prm.processing_key) in (None, "", []):
            return None
        return [p for p in alg.parameterAsFileList(parameters, prm.processing_key, context) if p.strip()] or None


PARAMETERS: dict[str, Adapter] = {
    "names": _List(" (separated by commas or new lines)"),
    "preset": _Preset(),
    "templates": _List("; separated by new lines or |"),
    "text": _Text(),
    "int": _Number(integer=True),
    "float": _Number(integer=False),
    "choice": _Choice(),
    "samples": _Samples(),
    "field": _Field(),
    "file": _File(),
    "file_out": _FileOut(),
    "raster": _Raster(),
    "flag": _Flag(),
    "examples": _Examples(),
    "images": _Images(),
}


def adapter(prm) -> Adapter:
    if prm.kind not in PARAMETERS:
        raise ValueError(f"no Processing parameter for {prm.kind!r}")
    return PARAMETERS[prm.kind]


# ------------------------------------------------------------------------------------------ helpers

def optional_number(alg, parameters, name, context, integer=False):
    """None when an optional number is not set (parameterAsDouble would say 0)."""
    value = parameters.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if integer:
        return alg.parameterAsInt(parameters, name, context)
    return alg.parameterAsDouble(parameters, name, context)


def decimals(param, n: int):
    """The dialog shows ``n`` decimals ("224.0", not "224.000000")."""
    param.setMetadata({"widget_wrapper": {"decimals": n}})
    return param


def param_help(prm) -> str:
    """What a task input means, with its limits and default."""
    text = prm.help or prm.label
    limits = []
    if prm.kind in ("int", "float") and (prm.lo is not None or prm.hi is not None):
        lo = "" if prm.lo is None else f"{prm.lo:g}"
        hi = "" if prm.hi is None else f"{prm.hi:g}"
        limits.append(f"from {lo} to {hi}" if lo and hi else f"at least {lo}" if lo else f"at most {hi}")
    if prm.optional and prm.kind in ("int", "float"):
        limits.append(f"empty: {prm.none_text or 'none'}")
    elif prm.default is not None and prm.kind not in ("preset",):
        limits.append(f"default {prm.default}")
    if prm.kind == "preset":
        limits.append(f"default {DEFAULT_PRESET}; class names typed win over it; one of " + ", ".join(prm.choices))
    return text + (f" ({'; '.join(limits)})" if limits else "")

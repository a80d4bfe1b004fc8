"""remoteclip:labeltiles: a zero-shot label per tile from a list of class names."""

from __future__ import annotations

from qgis.core import (
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from ..core.errors import RemoteClipError
from .base import RemoteClipAlgorithm, split_list


def preset_names() -> list[str]:
    from ..core.prompts import PRESETS

    return list(PRESETS)


class LabelTilesAlgorithm(RemoteClipAlgorithm):
    LABELS = "LABELS"
    PRESET = "PRESET"
    TEMPLATES = "TEMPLATES"
    TOP_K = "TOP_K"
    THRESHOLD = "THRESHOLD"

    kind = "label"
    output_name = "Labelled tiles"

    def name(self):
        return "labeltiles"

    def displayName(self):
        return self.tr("Label tiles")

    def shortHelpString(self):
        return self.tr(
            "Cuts the raster into tiles and gives each tile the class name it matches best (zero-shot "
            "classification with a RemoteCLIP model). Give the classes as LABELS (comma or newline "
            "separated) or pick a PRESET, not both. Each class is matched through an ensemble of prompt "
            "TEMPLATES ({} stands for the class; one per line or separated by |; default: remote sensing "
            "phrasings of CLIP's templates). The output has one polygon per tile with label, score (its "
            "probability), the TOP_K labels and scores, and p_<class> probabilities; a tile whose best "
            "probability is below THRESHOLD is labelled 'unknown'.")

    def init_task_parameters(self):
        self.add(QgsProcessingParameterString(
            self.LABELS, self.tr("Class names (comma or newline separated)"), multiLine=True, optional=True))
        self.add(QgsProcessingParameterEnum(
            self.PRESET, self.tr("Or a preset class list"), options=[self.tr("(none)"), *preset_names()],
            defaultValue=0))
        self.add(QgsProcessingParameterString(
            self.TEMPLATES, self.tr("Prompt templates ({} = class; one per line or |-separated)"),
            multiLine=True, optional=True))
        self.add(QgsProcessingParameterNumber(
            self.TOP_K, self.tr("Top labels to store per tile"), QgsProcessingParameterNumber.Type.Integer,
            defaultValue=3, minValue=1))
        threshold = QgsProcessingParameterNumber(
            self.THRESHOLD, self.tr("Minimum probability (below: 'unknown')"), QgsProcessingParameterNumber.Type.Double,
            optional=True, minValue=0.0, maxValue=1.0)
        threshold.setFlags(threshold.flags() | QgsProcessingParameterDefinition.Flag.FlagAdvanced)
        self.add(threshold)

    def make_task(self, parameters, context):
        from ..core import prompts
        from ..core.jobs import LabelTask

        labels = split_list(self.parameterAsString(parameters, self.LABELS, context))
        preset = self.parameterAsEnum(parameters, self.PRESET, context)
        if labels and preset:
            raise RemoteClipError("Both LABELS and PRESET were given.", "Use one of them.")
        if preset:
            labels = prompts.preset(preset_names()[preset - 1])
        if not labels:
            raise RemoteClipError("No classes given.", "Type class names in LABELS (e.g. 'buildings, trees, "
                                  "water') or pick a PRESET (" + ", ".join(preset_names()) + ").")
        templates = split_list(self.parameterAsString(parameters, self.TEMPLATES, context), "\n|") or None
        return LabelTask(prompts.check_labels(labels), templates,
                         self.parameterAsInt(parameters, self.TOP_K, context),
                         self.optional_number(parameters, self.THRESHOLD, context))

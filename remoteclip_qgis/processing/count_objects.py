"""remoteclip:countobjects: how many of an object each tile shows (RemoteCount captions)."""

from __future__ import annotations

from qgis.core import QgsProcessingParameterNumber, QgsProcessingParameterString

from .base import RemoteClipAlgorithm, split_list


class CountObjectsAlgorithm(RemoteClipAlgorithm):
    OBJECT = "OBJECT"
    MAX_COUNT = "MAX_COUNT"
    TEMPLATES = "TEMPLATES"

    kind = "count"
    output_name = "Object counts"

    def name(self):
        return "countobjects"

    def displayName(self):
        return self.tr("Count objects")

    def shortHelpString(self):
        return self.tr(
            "Estimates per tile how many of an OBJECT (singular, e.g. 'car') it shows, from 1 to MAX_COUNT, "
            "by matching one caption per count ('There are two cars in the image.', RemoteCLIP's "
            "RemoteCount). TEMPLATES replace that caption: use {count}, {object} and {is} (one per line or "
            "separated by |). The output has one polygon per tile with count and count_conf (the "
            "probability of that count).")

    def init_task_parameters(self):
        self.add(QgsProcessingParameterString(self.OBJECT, self.tr("Object to count (singular)")))
        self.add(QgsProcessingParameterNumber(
            self.MAX_COUNT, self.tr("Largest count"), QgsProcessingParameterNumber.Type.Integer, defaultValue=10,
            minValue=1, maxValue=100))
        self.add(QgsProcessingParameterString(
            self.TEMPLATES, self.tr("Count captions ({count}, {object}, {is}; one per line or |-separated)"),
            multiLine=True, optional=True))

    def make_task(self, parameters, context):
        from ..core.jobs import CountTask

        templates = split_list(self.parameterAsString(parameters, self.TEMPLATES, context), "\n|") or None
        return CountTask(self.parameterAsString(parameters, self.OBJECT, context).strip(),
                         self.parameterAsInt(parameters, self.MAX_COUNT, context), templates)

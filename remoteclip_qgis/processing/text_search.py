"""remoteclip:textsearch: how well each tile matches a text query."""

from __future__ import annotations

from qgis.core import QgsProcessingParameterNumber, QgsProcessingParameterString

from .base import RemoteClipAlgorithm


class TextSearchAlgorithm(RemoteClipAlgorithm):
    QUERY = "QUERY"
    TOP_K = "TOP_K"
    THRESHOLD = "THRESHOLD"

    kind = "search"
    output_name = "Search results"

    def name(self):
        return "textsearch"

    def displayName(self):
        return self.tr("Text search")

    def shortHelpString(self):
        return self.tr(
            "Scores every tile by the cosine similarity of its image embedding to a text QUERY (e.g. 'a "
            "swimming pool'). Every tile is kept with similarity and rank (1 = best); selected is 1 for the "
            "TOP_K best tiles whose similarity is at least THRESHOLD (both optional; neither selects all).")

    def init_task_parameters(self):
        self.add(QgsProcessingParameterString(self.QUERY, self.tr("Query")))
        self.add(QgsProcessingParameterNumber(
            self.TOP_K, self.tr("Select the best K tiles"), QgsProcessingParameterNumber.Type.Integer,
            optional=True, minValue=1))
        self.add(QgsProcessingParameterNumber(
            self.THRESHOLD, self.tr("Select tiles with a similarity of at least"),
            QgsProcessingParameterNumber.Type.Double, optional=True, minValue=-1.0, maxValue=1.0))

    def make_task(self, parameters, context):
        from ..core.jobs import SearchTask

        return SearchTask(self.parameterAsString(parameters, self.QUERY, context).strip(),
                          self.optional_number(parameters, self.TOP_K, context, integer=True),
                          self.optional_number(parameters, self.THRESHOLD, context))

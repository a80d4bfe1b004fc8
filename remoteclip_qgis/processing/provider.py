"""The "remoteclip" Processing provider."""

from __future__ import annotations

import os

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .classify_samples import ClassifyFromSamplesAlgorithm
from .compute_embeddings import ComputeEmbeddingsAlgorithm
from .count_objects import CountObjectsAlgorithm
from .label_tiles import LabelTilesAlgorithm
from .text_search import TextSearchAlgorithm

ICON = os.path.join(os.path.dirname(os.path.dirname(__file__)), "resources", "icon.svg")


class RemoteClipProvider(QgsProcessingProvider):
    """Algorithms ``remoteclip:labeltiles``, ``countobjects``, ``textsearch``, ``classifyfromsamples`` and
    ``computeembeddings``: one per task of core.tasks.TASKS."""

    def loadAlgorithms(self):
        for alg in (LabelTilesAlgorithm(), CountObjectsAlgorithm(), TextSearchAlgorithm(),
                    ClassifyFromSamplesAlgorithm(), ComputeEmbeddingsAlgorithm()):
            self.addAlgorithm(alg)

    def id(self):
        return "remoteclip"

    def name(self):
        return "RemoteCLIP"

    def longName(self):
        return "RemoteCLIP (zero-shot labels, counts, text search and few-shot classification on raster tiles)"

    def icon(self):
        return QIcon(ICON) if os.path.isfile(ICON) else QgsProcessingProvider.icon(self)

    def svgIconPath(self):
        return ICON if os.path.isfile(ICON) else QgsProcessingProvider.svgIconPath(self)

    def defaultVectorFileExtension(self, hasGeometry=True):
        return "gpkg"

"""The "remoteclip" Processing provider, its algorithms made from the task registry (core.tasks.TASKS)."""

from __future__ import annotations

import os
import re

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from ..core.tasks import TASKS
from .assessment import TOOLS
from .base import RemoteClipAlgorithm

ICON = os.path.join(os.path.dirname(os.path.dirname(__file__)), "resources", "icon.svg")
_CLASSES: dict[type, type] = {}


def algorithm_class(task_cls) -> type[RemoteClipAlgorithm]:
    """The Processing algorithm of a registered task (core.tasks.TASKS): a RemoteClipAlgorithm subclass that
    names it ('Label tiles' -> LabelTilesAlgorithm), made once per task class, so that ``createInstance``
    makes another of the same class."""
    cls = _CLASSES.get(task_cls)
    if cls is None:
        words = re.split(r"\W+", task_cls.algorithm_title or task_cls.kind)
        cls = _CLASSES[task_cls] = type(
            "".join(w[:1].upper() + w[1:] for w in words) + "Algorithm", (RemoteClipAlgorithm,),
            {"task_kind": task_cls.kind, "__module__": __name__,
             "__doc__": f"remoteclip:{task_cls.algorithm}: {task_cls.summary} ({task_cls.__name__})."})
    return cls


class RemoteClipProvider(QgsProcessingProvider):
    """One algorithm per task of the registry (core.tasks.TASKS, in its order), made by
    :func:`algorithm_class`: ``remoteclip:labeltiles``, ``countobjects``, ``textsearch``,
    ``classifyfromsamples`` and ``computeembeddings``, and any task registered before the provider loads; then
    the tools that run no model (assessment.TOOLS: ``referencesample``, ``assessaccuracy``)."""

    def loadAlgorithms(self):
        for task_cls in TASKS.values():
            self.addAlgorithm(algorithm_class(task_cls)())
        for tool_cls in TOOLS:
            self.addAlgorithm(tool_cls())

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

"""remoteclip:classifyfromsamples: the analyst's classes learnt from sample points or polygons
(core.tasks.ClassifyTask); outputs the cross-validated accuracy and the report's path besides the layer."""

from __future__ import annotations

from .base import RemoteClipAlgorithm


class ClassifyFromSamplesAlgorithm(RemoteClipAlgorithm):
    task_kind = "classify"

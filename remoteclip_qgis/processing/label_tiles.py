"""remoteclip:labeltiles: a zero-shot label per tile from a list of class names (core.tasks.LabelTask)."""

from __future__ import annotations

from .base import RemoteClipAlgorithm


class LabelTilesAlgorithm(RemoteClipAlgorithm):
    task_kind = "label"

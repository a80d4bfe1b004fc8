"""remoteclip:countobjects: how many of an object each tile shows, RemoteCount captions (core.tasks.CountTask)."""

from __future__ import annotations

from .base import RemoteClipAlgorithm


class CountObjectsAlgorithm(RemoteClipAlgorithm):
    task_kind = "count"

"""remoteclip:textsearch: how well each tile matches a text query (core.tasks.SearchTask)."""

from __future__ import annotations

from .base import RemoteClipAlgorithm


class TextSearchAlgorithm(RemoteClipAlgorithm):
    task_kind = "search"

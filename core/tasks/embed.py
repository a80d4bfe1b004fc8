"""Embed: compute and cache the tile embeddings (the output holds the tile polygons)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import Task, register


@register
@dataclass
class EmbedTask(Task):
    kind: ClassVar[str] = "embed"
    title: ClassVar[str] = "Embed"
    summary: ClassVar[str] = "compute and cache the tile embeddings"
    algorithm: ClassVar[str] = "computeembeddings"
    algorithm_title: ClassVar[str] = "Compute embeddings"
    group: ClassVar[str] = "Embeddings"
    can_skip_cache: ClassVar[bool] = False   # the cache is its point
    help: ClassVar[str] = (
        "Runs the image encoder over every tile and stores the embeddings in the cache, so that labelling, "
        "counting, searching and classifying the same raster with the same tiles and model read no pixels "
        "and run only the text encoder. The output holds the tile polygons (row, col).")

    def layer_name(self):
        return "tiles"

"""remoteclip:computeembeddings: fill the embedding cache; later runs on the raster read no pixels
(core.tasks.EmbedTask)."""

from __future__ import annotations

from .base import RemoteClipAlgorithm


class ComputeEmbeddingsAlgorithm(RemoteClipAlgorithm):
    task_kind = "embed"
    can_skip_cache = False   # the whole point is the cache

"""remoteclip:computeembeddings: fill the embedding cache; later runs on the raster read no pixels."""

from __future__ import annotations

from .base import RemoteClipAlgorithm


class ComputeEmbeddingsAlgorithm(RemoteClipAlgorithm):
    kind = "embed"
    output_name = "Tiles"
    can_dissolve = False
    can_skip_cache = False   # the whole point is the cache

    def name(self):
        return "computeembeddings"

    def displayName(self):
        return self.tr("Compute embeddings")

    def group(self):
        return self.tr("Embeddings")

    def groupId(self):
        return "embeddings"

    def shortHelpString(self):
        return self.tr(
            "Runs the image encoder over every tile and stores the embeddings in the cache, so that "
            "labelling, counting and searching the same raster with the same tiles and model read no "
            "pixels and run only the text encoder. The output holds the tile polygons (row, col).")

    def make_task(self, parameters, context):
        from ..core.jobs import EmbedTask

        return EmbedTask()

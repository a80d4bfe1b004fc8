"""RemoteCLIP's Processing provider: label tiles, count objects, text search, classify from samples,
compute embeddings (one algorithm per task of core.tasks.TASKS).

Every algorithm builds a core ``Job`` from its parameters and runs
``core.pipeline.run_job``, as the dock and the ``remoteclip`` command line do.
"""

from .provider import RemoteClipProvider

__all__ = ["RemoteClipProvider"]

"""RemoteCLIP's Processing provider: label tiles, count objects, text search, compute embeddings.

Every algorithm builds a core ``Job`` from its parameters and runs
``core.jobs.run_job``, as the dock and the ``remoteclip`` command line do.
"""

from .provider import RemoteClipProvider

__all__ = ["RemoteClipProvider"]

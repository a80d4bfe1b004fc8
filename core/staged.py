"""The two-phase form of the output writers (core.geodata.vectors ``stage_vector``, core.geodata.dense ``stage_dense``,
core.outputs ``stage_text_file`` / ``stage_report``): each output written completely to its temporary and
checked, then all published together (:func:`publish_all`), so a run's outputs are one set
(core.pipeline.write ``write_outputs``)."""

from __future__ import annotations

import contextlib

__all__ = ["Staged", "publish_all", "discard_all"]


class Staged:
    """An output written completely to its temporary and checked, not yet in place (the two-phase form of the
    writers: ``stage_*`` -> :meth:`publish` or :meth:`discard`). ``publish`` renames the temporary into place
    (a rename needs no space); ``writes``: publishing still writes (a layer into an existing GeoPackage, in
    one SQLite transaction of that file), so :func:`publish_all` does it first. ``discard`` removes the
    temporary and leaves the old file as it was; both are done at most once."""

    def __init__(self, path, publish, discard=None, writes: bool = False):
        self.path, self.writes = path, writes
        self._publish, self._discard = publish, discard
        self.done = False

    def publish(self):
        if not self.done:
            self._publish()
            self.done = True
        return self.path

    def discard(self) -> None:
        if not self.done:
            self.done = True
            if self._discard is not None:
                self._discard()

    def commit(self):
        """Publish, or on any failure discard: the one-phase writers (``write_*``)."""
        try:
            return self.publish()
        except BaseException:
            self.discard()
            raise


def publish_all(staged: list[Staged]) -> None:
    """Put every staged output in place: first those whose publishing still writes (an existing GeoPackage's
    transaction, which may fail and then changes nothing), then the renames. A failure before the renames
    discards every temporary, so the old files all stay; what remains: a crash (or an output that appeared
    meanwhile, without overwrite) between two renames leaves the outputs published so far."""
    try:
        for s in sorted(staged, key=lambda s: not s.writes):
            s.publish()
    except BaseException:
        discard_all(staged)
        raise


def discard_all(staged: list[Staged]) -> None:
    for s in staged:
        with contextlib.suppress(OSError):
            s.discard()

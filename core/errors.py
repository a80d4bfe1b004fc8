"""The errors users see. Each names the problem and the fix (``str(err)`` reads "problem Fix: what to do").

``RemoteClipError`` is the root; its few kinds are what callers tell apart, and each is also the built-in
exception it means (as rasterio's errors are), so ``except ValueError`` or ``except OSError`` still works:

- ``InvalidInput`` (``ValueError``): a parameter or an input's content is wrong (a band list, a class field,
  a JSON file that is not what it should be). ``param`` names the option when one is to blame.
- ``SourceUnreadable`` (``OSError``): an input file, layer or URL cannot be opened or read.
- ``ModelError``: a model bundle, checkpoint or catalogue is missing, broken or does not fit the job.
- ``OutputRefused``: the output may not be written as asked; ``OutputExists`` (``FileExistsError``) when it
  exists and overwriting was not asked for, ``OutputIsInput`` (``ValueError``) when it is one of the job's inputs.
- ``WriteFailed`` (``OSError``): writing failed (disk full, permissions); the old file, if any, is kept.
- ``MissingDependency`` (``ImportError``): an optional package is not installed.
- ``DownloadFailed`` (``OSError``): a download did not complete; ``VerificationFailed`` when the bytes came but
  are not the ones the catalogue names.

Every kind carries ``problem``, ``fix`` and ``path`` (the file concerned, or None). ``InvalidInput.param``
names the option to blame as the Job and the command line know it, without dashes and with ``_`` for ``-``
(``bands``, ``split_file``), so a front-end can show the error under that field.
"""

import contextlib


class RemoteClipError(Exception):
    """A problem the user can fix. ``str(err)`` reads "problem Fix: what to do"."""

    def __init__(self, problem: str, fix: str | None = None, *, path=None):
        super().__init__(problem if not fix else f"{problem} Fix: {fix}")
        # after the built-in's __init__: ImportError's sets its own ``path`` to None
        self.problem = problem
        self.fix = fix
        self.path = None if path is None else str(path)

    def __reduce__(self):
        # Dask sends errors between processes: keep the fields, not just the message
        # (ImportError keeps ``path`` outside __dict__)
        return (_rebuild, (type(self), self.problem, self.fix, self.path, dict(self.__dict__)))


def _rebuild(cls, problem, fix, path, state):
    err = cls.__new__(cls)
    RemoteClipError.__init__(err, problem, fix, path=path)
    err.__dict__.update(state)
    return err


class InvalidInput(RemoteClipError, ValueError):
    """A parameter or an input's content is wrong."""

    def __init__(self, problem: str, fix: str | None = None, *, path=None, param: str | None = None):
        super().__init__(problem, fix, path=path)
        self.param = param


class SourceUnreadable(RemoteClipError, OSError):
    """An input file, layer or URL cannot be opened or read."""


class ModelError(RemoteClipError):
    """A model bundle, checkpoint or catalogue is missing, broken or does not fit the job."""


class OutputRefused(RemoteClipError):
    """The output may not be written as asked."""


class OutputExists(OutputRefused, FileExistsError):
    """The output exists and overwriting was not asked for."""


class OutputIsInput(OutputRefused, ValueError):
    """The output names one of the job's inputs: writing it would destroy the input."""


class WriteFailed(RemoteClipError, OSError):
    """Writing an output failed; the file that was there before (if any) is kept."""


class MissingDependency(RemoteClipError, ImportError):
    """An optional package is not installed."""


class DownloadFailed(RemoteClipError, OSError):
    """A download did not complete."""


class VerificationFailed(DownloadFailed):
    """Downloaded bytes are not the ones the catalogue names (size or sha256)."""


class Cancelled(Exception):
    """Raised inside a run when the caller's cancel callback says stop."""


@contextlib.contextmanager
def gdal_return_codes():
    """Inside (a ``with`` block or a decorated function), GDAL, OGR and OSR report failures by return value
    (None, non-zero codes), which is what core checks, whatever mode the caller set.

    QGIS 3.40 and later turn GDAL's Python exceptions on for the whole process (its Processing framework
    calls ``gdal.UseExceptions()``), so inside QGIS a bad CRS or WKT became a raw RuntimeError instead of a
    RemoteClipError. From GDAL 3.7 on the mode is set for this thread only (``ExceptionMgr``); older GDAL
    has no per-thread mode and is switched and restored globally.
    """
    try:
        from osgeo import gdal, ogr, osr
    except ImportError:
        yield
        return
    modules = (gdal, ogr, osr)
    with contextlib.ExitStack() as stack:
        if all(hasattr(m, "ExceptionMgr") for m in modules):
            for m in modules:
                stack.enter_context(m.ExceptionMgr(useExceptions=False))
        else:
            # Before GDAL 3.7 each module's UseExceptions() pushed an error handler, and they come off in
            # the reverse order only: switch off whichever is on top until none is left, restore in reverse.
            on = [m for m in modules if m.GetUseExceptions()]
            while on:
                for m in on:
                    try:
                        m.DontUseExceptions()
                    except RuntimeError:
                        continue
                    stack.callback(m.UseExceptions)
                    on.remove(m)
                    break
                else:
                    break
        yield

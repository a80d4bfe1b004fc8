"""The one error type users see: it names the problem and the fix."""

import contextlib


class RemoteClipError(Exception):
    """A problem the user can fix. ``str(err)`` reads "problem Fix: what to do"."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if not fix else f"{problem} Fix: {fix}")


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

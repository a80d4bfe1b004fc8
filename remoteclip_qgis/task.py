"""A RemoteCLIP job as a QgsTask: QGIS stays responsive, the task manager shows progress.

``run()`` works in a worker thread and touches no layer or widget: it runs
``core.pipeline.run_job`` with the task's own progress and cancel flag (core checks
it once per batch, so Cancel stops within one batch and leaves no file).
``finished()`` runs back on the main thread and emits ``succeeded``,
``failed`` or ``cancelled`` for the dock to add the layer or report the error.

A problem with the input (``RemoteClipError``: a damaged model, an unreadable
raster) is the user's to fix: its one line goes to the log panel as a warning,
no traceback, and ``failed`` carries empty details. Anything else is a bug: its
traceback goes to the log panel (tag RemoteCLIP) as critical, and ``failed``
carries it.
"""

from __future__ import annotations

import traceback

from qgis.core import Qgis, QgsMessageLog, QgsTask
from qgis.PyQt.QtCore import pyqtSignal

LOG_TAG = "RemoteCLIP"


class RemoteClipTask(QgsTask):
    succeeded = pyqtSignal(object)        # core.pipeline.JobResult
    failed = pyqtSignal(str, str)         # message for the user, the traceback of a bug ("" for bad input)
    cancelled = pyqtSignal()
    statusChanged = pyqtSignal(str)       # core's progress messages ("96/240 tiles")

    def __init__(self, job, description: str = "RemoteCLIP"):
        super().__init__(description, QgsTask.Flag.CanCancel)
        self.job = job
        self.result = None
        self.error: str | None = None
        self.details: str | None = None
        self.summary: list = []               # core.summary.SummaryRow per class of the result
        self.was_cancelled = False

    def _progress(self, fraction: float, message: str) -> None:
        self.setProgress(max(0.0, min(100.0, 100.0 * float(fraction))))
        self.statusChanged.emit(message)

    def run(self) -> bool:
        from .core.errors import Cancelled, RemoteClipError
        from .core.pipeline import run_job

        try:
            self.result = run_job(self.job, progress=self._progress, is_cancelled=self.isCanceled)
            self.summary = self._summarize(self.result, getattr(self.job.task, "dissolve_field", None))
            return True
        except Cancelled:
            self.was_cancelled = True
            return False
        except RemoteClipError as e:
            self.error = str(e)
            self.details = ""   # the user's to fix: no traceback
            return False
        except Exception as e:  # anything else is a bug: the traceback goes to the log panel
            self.error = f"{type(e).__name__}: {e}"
            self.details = traceback.format_exc()
            return False

    @staticmethod
    def _summarize(result, field: str | None = None) -> list:
        """Tiles and ground area per value of ``field`` (the task's dissolve field: label, count, selected),
        worked out here, off the GUI thread (core.summary); [] on failure (the result itself is fine)."""
        from .core.summary import summarize, summary_field

        field = field or summary_field(result.records)
        if field is None or not result.records or field not in result.records[0]:
            return []
        try:
            return summarize(result.records, field, result.crs_wkt)
        except Exception as e:  # a summary is a courtesy: its failure must not lose the result
            QgsMessageLog.logMessage(f"The result's summary failed: {type(e).__name__}: {e}", LOG_TAG,
                                     Qgis.MessageLevel.Warning)
            return []

    def finished(self, ok: bool) -> None:
        if ok and self.result is not None:
            for w in self.result.warnings:
                QgsMessageLog.logMessage(w, LOG_TAG, Qgis.MessageLevel.Warning)
            self.succeeded.emit(self.result)
        elif self.was_cancelled or (self.isCanceled() and self.error is None):
            self.was_cancelled = True
            self.cancelled.emit()
        else:
            error = self.error or "The task stopped without a result."
            details = self.details if self.details is not None else error
            if details:
                QgsMessageLog.logMessage(f"{self.description()} failed:\n{details}", LOG_TAG,
                                         Qgis.MessageLevel.Critical)
            else:
                QgsMessageLog.logMessage(f"{self.description()}: {error}", LOG_TAG, Qgis.MessageLevel.Warning)
            self.failed.emit(error, details)

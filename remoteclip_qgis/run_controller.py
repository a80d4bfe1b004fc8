"""The dock's runs: the dock collects a ``RunRequest`` (a core Job and how to show its result); the controller
checks its outputs (refuses one a project layer shows, asks before replacing one), asks before a plan above
core's tile limit, runs the job as a ``task.RemoteClipTask``, turns its result into layers
(``layers.add_result_layer``, the heat map, the suggestions) and says what happened through its signals,
which the dock shows. It owns the running task; the dock touches none."""

from __future__ import annotations

import contextlib
import html
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import qgis.utils
from qgis.core import Qgis, QgsApplication
from qgis.PyQt.QtCore import QObject, pyqtSignal
from qgis.PyQt.QtWidgets import QMessageBox

from .core.errors import OutputRefused, RemoteClipError
from .core.tasks import Task
from .dock_export import confirm_replace, layers_showing

LOG_TAG = "RemoteCLIP"


def _html(text: str) -> str:
    return html.escape(text, quote=False)


@dataclass
class RunRequest:
    """One run as the dock collected it."""
    job: Any                        # core.pipeline.Job
    kind: str                       # the task's kind (the result's style)
    name: str                       # the result layer's name
    # the task tab's "show labels on the map", read when the result is added (None: the style's default)
    show_labels: Callable[[], bool | None] | None = None
    demo: bool = False              # run with the demo model (the message bar says so afterwards)
    automatic_output: bool = False  # the output is the automatic one: its folder is made


@dataclass
class RunOutcome:
    """A finished run's result and the layers made of it."""
    request: RunRequest
    result: Any                     # core.pipeline.JobResult
    rows: list                      # core.summary.SummaryRow per value of the task's dissolve field
    task: Any                       # the job's core task (names the summary's values)
    layer: Any                      # the result's QgsVectorLayer


class RunController(QObject):
    """Start, confirm, success, failure and cancel of the dock's runs (one at a time)."""

    started = pyqtSignal(object)        # the RunRequest, once its task is handed to the task manager
    progress = pyqtSignal(int)          # percent
    status = pyqtSignal(str)            # the status line (HTML)
    problem = pyqtSignal(str, object)   # a refused input or a failed step: the problem and its fix
    output_problem = pyqtSignal(str)    # the run's output file refused: the text, for under the File field
    finished = pyqtSignal()             # the run ended, whichever way (before succeeded, failed, cancelled)
    succeeded = pyqtSignal(object)      # RunOutcome
    failed = pyqtSignal(str)            # the error
    cancelled = pyqtSignal()

    def __init__(self, parent):
        """``parent``: the widget the questions are asked over (the dock)."""
        super().__init__(parent)
        self.widget, self.iface = parent, qgis.utils.iface
        self.task = None
        self.request: RunRequest | None = None
        self.last_result = None
        self.last_layer = None
        self._style_file = None
        self.last_dense_layer = None
        self.last_suggestions = None

    # ------------------------------------------------------------------------------------- start

    def start(self, request: RunRequest):
        """Check, confirm and start ``request``; returns the task (None when refused or not confirmed)."""
        if self.task is not None:
            return None
        job = request.job
        if request.automatic_output:
            Path(job.output).parent.mkdir(parents=True, exist_ok=True)   # the default results folder
        try:
            if not self._may_write(job):
                return None
        except RemoteClipError as e:
            self.problem.emit(e.problem, e.fix)
            if isinstance(e, OutputRefused) and about_output(e.path, job.output):
                self.output_problem.emit(e.problem + (f" Fix: {e.fix}" if e.fix else ""))
            return None
        if not self._confirm_plan(job):
            return None
        from .task import RemoteClipTask

        self.request = request
        # a run into a Shapefile gets its style beside it (as Export does), unless a .qml there is somebody's:
        # one beside no Shapefile of that name before the run
        self._style_file = style_beside(job.output)
        self.task = RemoteClipTask(job, f"RemoteCLIP {request.kind}: {request.name}")
        self.task.progressChanged.connect(lambda p: self.progress.emit(int(p)))
        self.task.statusChanged.connect(self.status.emit)
        self.task.succeeded.connect(self._succeeded)
        self.task.failed.connect(self._failed)
        self.task.cancelled.connect(self._cancelled)
        self.started.emit(request)
        QgsApplication.taskManager().addTask(self.task)
        return self.task

    def _confirm_plan(self, job) -> bool:
        """A plan above core's tile limit runs only when the user says so (the command line's --yes)."""
        from .core.pipeline import plan_job

        try:
            plan = plan_job(job)
        except RemoteClipError as e:
            self.problem.emit(e.problem, e.fix)
            return False
        self.status.emit(f"Plan: {plan.describe()}.")
        if job.max_tiles is None or plan.n_tiles <= job.max_tiles:
            return True
        answer = QMessageBox.question(
            self.widget, "RemoteCLIP", f"This run has {plan.describe()}.\n\nRun it anyway? (Larger tiles, less "
            "overlap or a smaller extent make fewer tiles.)", QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No)
        if answer != QMessageBox.StandardButton.Yes:
            return False
        job.max_tiles = None
        return True

    def _may_write(self, job) -> bool:
        """Refuse an output a project layer shows; ask before replacing one (then ``job.overwrite``): the vector
        output, the heat map and a saved classifier."""
        from .core.geodata.vectors import output_exists
        from .core.pipeline import output_layer_name

        layer_name = output_layer_name(job)
        files = [(job.output, layer_name)] + [(p, None) for p in (job.raster_output, *[f for f, _ in
                                                                                       job.task.files_out()]) if p]
        replaced = []
        for path, lname in files:
            shown = layers_showing(path, lname)
            if shown:
                raise OutputRefused(
                    f"The output {path} is shown in this project by the layer “{shown[0].name()}”.",
                    "Remove that layer from the Layers panel first, or choose another output file.", path=path)
            what = output_exists(path, lname) if lname else (f"the file {path}" if os.path.lexists(path) else None)
            if what is not None:
                replaced.append(what)
        if not replaced:
            return self._outputs_checked(job)
        what = " and ".join(replaced)
        if not confirm_replace(self.widget, what, any(getattr(r, "layer", False) for r in replaced)):
            self.status.emit(f"Not run: {_html(what)} was kept. Choose another output file or replace it.")
            return False
        job.overwrite = True
        return self._outputs_checked(job)

    @staticmethod
    def _outputs_checked(job) -> bool:
        """Core's own checks of every file the run writes (an input named as output, a user's sidecar files), so
        a refusal comes now, beside the File field, not from the running task."""
        from .core.pipeline.write import check_outputs

        check_outputs(job)
        return True

    def cancel(self) -> None:
        if self.task is not None:
            self.status.emit("Cancelling after the current batch…")
            self.task.cancel()

    def unload(self) -> None:
        """Stop the running task: left running it would call back into a deleted dock."""
        if self.task is not None:
            with contextlib.suppress(RuntimeError):   # already deleted by the task manager
                self.task.cancel()

    # ------------------------------------------------------------------------------------ the end

    def _end(self) -> None:
        self.task = None
        self.finished.emit()

    def _succeeded(self, result) -> None:
        """The result becomes layers: the styled result, its heat map, the suggestions to label next."""
        from .layers import add_dense_layer, add_result_layer, add_suggestions_layer

        rows = list(getattr(self.task, "summary", []) or [])
        job = getattr(self.task, "job", None)
        task = job.task if job is not None else None
        request = self.request
        self._end()
        self.progress.emit(100)
        self.last_result = result
        try:
            labels = request.show_labels() if request.show_labels is not None else None
            layer = add_result_layer(result, request.kind, request.name, show_labels=labels)
        except RemoteClipError as e:
            self.problem.emit(e.problem, e.fix)
            return
        try:   # the result is written and shown; these extras must not turn it into a failure
            if result.raster_output:
                self.last_dense_layer = add_dense_layer(result.raster_output, request.kind,
                                                        Task.dense_title(request.name))
            self.last_suggestions = add_suggestions_layer(result, request.name) if any(
                r.get("suggest") for r in result.records) else None
        except Exception as e:   # noqa: BLE001 (reported, and the run's layer stays)
            problem, fix = (e.problem, e.fix) if isinstance(e, RemoteClipError) else (f"{type(e).__name__}: {e}", None)
            self.problem.emit(problem, fix)
        if self._style_file:
            layer.saveNamedStyle(self._style_file)
        self.last_layer = layer
        self.succeeded.emit(RunOutcome(request, result, rows, task, layer))

    def _failed(self, error: str, details: str) -> None:
        """A run that stopped: input the user can fix (no details) is a warning that goes away; a bug (its
        traceback in the log panel) stays on the message bar until closed."""
        self._end()
        self.failed.emit(error)
        if details:
            self.iface.messageBar().pushMessage(
                "RemoteCLIP", f"The run stopped on an error in RemoteCLIP: {error} (the details for a bug report: "
                f"View > Panels > Log Messages, tab {LOG_TAG})", Qgis.MessageLevel.Critical, 0)
        else:
            self.iface.messageBar().pushMessage("RemoteCLIP", error, Qgis.MessageLevel.Warning, 15)

    def _cancelled(self) -> None:
        self._end()
        self.cancelled.emit()


def style_beside(output) -> str | None:
    """The .qml a run into the Shapefile ``output`` writes after it (QGIS applies a same-named .qml when it opens
    a Shapefile), or None: not a Shapefile, or a .qml there that belongs to no Shapefile of that name."""
    if not output or os.path.splitext(os.fspath(output))[1].lower() != ".shp":
        return None
    qml = os.path.splitext(os.fspath(output))[0] + ".qml"
    return qml if not os.path.lexists(qml) or os.path.lexists(output) else None


def about_output(path, output) -> bool:
    """Whether a refusal naming ``path`` is about the run's ``output`` file: the file, one of its sidecar files
    (a Shapefile's .cpg, .prj ...) or its folder."""
    if not path or not output:
        return False
    path, output = os.path.abspath(os.fspath(path)), os.path.abspath(os.fspath(output))
    return path == os.path.dirname(output) or os.path.splitext(path)[0] == os.path.splitext(output)[0]

"""The dock's model row: pick a local bundle or a catalogue model, and Get the latter (download and
convert in the background, with progress and cancel), or point at any bundle folder or zip.

The list comes from ``core.runtime.catalog.list_models`` (the same as ``remoteclip models list``); Get runs
``core.runtime.models.pull`` through ``model_download.PullTask``. The models folder is the QGIS setting
``RemoteCLIP/models_dir`` when set, else core's default (``REMOTECLIP_MODELS`` or the user data folder).
"""

from __future__ import annotations

import contextlib
import html
import os
from pathlib import Path

from qgis.core import Qgis, QgsApplication, QgsMessageLog, QgsSettings
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QMenu,
    QProgressBar,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from . import deps
from .core.errors import RemoteClipError
from .core.runtime import catalog as cat
from .core.runtime.bundle import DEMO_BUNDLE, bundle_path
from .widgets import WrapLabel, menu_action

LOG_TAG = "RemoteCLIP"
SETTING_DIR = "RemoteCLIP/models_dir"
DEMO_NOTE = "demo model: for trying the plugin; get RemoteCLIP for real work"


def models_folder() -> Path:
    saved = QgsSettings().value(SETTING_DIR, "", type=str)
    return Path(saved) if saved else cat.models_dir()


def _is_bundle(path) -> bool:
    """A bundle folder (with manifest.json) or a bundle zip: what the path field may point at."""
    p = Path(bundle_path(path)) if path else None
    return p is not None and ((p / "manifest.json").is_file() or (p.suffix.lower() == ".zip" and p.is_file()))


def _same(a: str, b: str) -> bool:
    try:
        return bool(a) and bool(b) and Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


class ModelRow(QWidget):
    """Combo of models (local bundles, then catalogue entries with size and state) + Get, the bundle path
    (``file_widget``, a folder or a .zip), progress and cancel of a running Get, and ``info``."""

    pulled = pyqtSignal(str)          # the new bundle folder, already selected
    message = pyqtSignal(str, int)    # text, Qgis level: for the dock's message bar

    def __init__(self, parent=None):
        super().__init__(parent)
        self.task = None
        self.install_task = None
        self._choosing = False
        self._elsewhere: list[str] = []   # bundles chosen outside the models folder, listed after its own
        col = QVBoxLayout(self)
        col.setContentsMargins(0, 0, 0, 0)

        row = QHBoxLayout()
        self.combo = QComboBox(self)
        self.combo.setObjectName("model_combo")
        # long names must not widen the dock: the combo elides instead
        self.combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.combo.setMinimumContentsLength(6)
        self.combo.setToolTip("Models in the models folder, then the catalogue's models you can get")
        self.combo.activated.connect(self._chosen)
        # tool buttons: a push button's style minimum (80 px) would crowd the dock's 300 px
        self.get_button = QToolButton(self)
        self.get_button.setText("Get")
        self.get_button.setObjectName("model_get")
        self.get_button.setToolTip("Download this model and convert it for RemoteCLIP (no PyTorch needed)")
        self.get_button.clicked.connect(self.get)
        self.more_button = QToolButton(self)
        self.more_button.setText("…")
        self.more_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        menu = QMenu(self.more_button)
        menu_action(menu, "Refresh the list", self.refresh)
        menu_action(menu, "Choose the models folder…", self._choose_folder)
        menu_action(menu, "Choose a zipped bundle (.rclip.zip)…", self._choose_zip)
        menu_action(menu, "Convert a checkpoint file…", self._choose_checkpoint)
        self.more_button.setMenu(menu)
        row.addWidget(self.combo, 1)
        row.addWidget(self.get_button)
        row.addWidget(self.more_button)
        col.addLayout(row)

        self.file_widget = QgsFileWidget(self)
        self.file_widget.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.file_widget.setDialogTitle("RemoteCLIP model bundle folder")
        self.file_widget.setToolTip("A bundle folder (with manifest.json) or a bundle .zip")
        self.file_widget.fileChanged.connect(self._path_changed)
        col.addWidget(self.file_widget)

        prow = QHBoxLayout()
        self.progress = QProgressBar(self)
        self.progress.setRange(0, 100)
        self.cancel_button = QToolButton(self)
        self.cancel_button.setText("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        prow.addWidget(self.progress, 1)
        prow.addWidget(self.cancel_button)
        col.addLayout(prow)
        self.status = WrapLabel("", self)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        col.addWidget(self.status)
        self.info = WrapLabel("", self)
        col.addWidget(self.info)
        self._show_progress(False)
        self.status.setVisible(False)
        self.refresh()

    # --------------------------------------------------------------------------------- the list

    def refresh(self) -> None:
        """List the demo, the models folder's bundles and the catalogue (size and state of each)."""
        keep = self.current_entry()   # a model still to Get stays chosen (the path field is empty for it)
        self.combo.blockSignals(True)
        self.combo.clear()
        if DEMO_BUNDLE.is_dir():
            self.combo.addItem("remoteclip-demo · demo", {"path": str(DEMO_BUNDLE)})
            self.combo.setItemData(0, DEMO_NOTE, Qt.ItemDataRole.ToolTipRole)
        try:
            rows = cat.list_models(models_folder())
        except RemoteClipError as e:
            rows = []
            self._say(str(e), error=True)
        for m in rows:
            size = cat.format_size(m.size)
            if m.state == "converted":
                text, data = f"{m.name} · {size}", {"path": str(m.path)}
            elif m.state == "downloaded":
                text, data = f"{m.name} · downloaded, Get converts it", {"entry": m.name}
            elif m.state == "partial":
                text, data = f"{m.name} · Get resumes ({cat.format_size(m.done_bytes)} of {size})", {"entry": m.name}
            else:
                text, data = f"{m.name} · Get {size}", {"entry": m.name}
            self.combo.addItem(text, data)
            tip = m.description
            if m.entry is not None:
                tip += f"\n{m.entry.architecture}, {m.entry.activation}; licence: {m.entry.licence}"
                if m.entry.verified.get("status") != "verified":
                    tip += f"\ncatalogue entry {m.entry.verified.get('status', 'unverified')}: {m.entry.verified.get('what', '')}"
            self.combo.setItemData(self.combo.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        # a models folder that is itself a bundle, and bundles picked elsewhere: listed by their own path
        for other in [str(models_folder()), *self._elsewhere]:
            if _is_bundle(other) and self._path_index(other) < 0:
                self._add_elsewhere(other)
        self.combo.blockSignals(False)
        path = self.file_widget.filePath()
        if not path and keep is not None:
            self.combo.setCurrentIndex(self._entry_index(keep))
            self._update_get()
            return
        self._select_path(path)

    def _path_index(self, path: str) -> int:
        for i in range(self.combo.count()):
            data = self.combo.itemData(i) or {}
            if _same(data.get("path", ""), bundle_path(path)):
                return i
        return -1

    def _add_elsewhere(self, path: str) -> int:
        """A bundle outside the models folder as an entry of its own (name · folder), at the list's end."""
        path = bundle_path(path)
        where = Path(path)
        self.combo.addItem(f"{where.name} · {where.parent}", {"path": path})
        self.combo.setItemData(self.combo.count() - 1, f"bundle outside the models folder: {path}",
                               Qt.ItemDataRole.ToolTipRole)
        return self.combo.count() - 1

    def _select_path(self, path: str) -> None:
        i = self._path_index(path)
        if i < 0 and _is_bundle(path):   # a bundle elsewhere: listed, not an empty list
            if bundle_path(path) not in self._elsewhere:
                self._elsewhere.append(bundle_path(path))
            i = self._add_elsewhere(path)
        self.combo.setCurrentIndex(i)
        self._update_get()

    def _entry_index(self, name: str) -> int:
        for i in range(self.combo.count()):
            data = self.combo.itemData(i) or {}
            if data.get("entry", "").lower() == name.lower() or Path(data.get("path", "x")).name == name:
                return i
        return -1

    def select_entry(self, name: str) -> int:
        """Make the catalogue entry ``name`` current (as if the user chose it); returns its index or -1."""
        i = self._entry_index(name)
        if i >= 0:
            self.combo.setCurrentIndex(i)
            self._chosen(i)
        return i

    def current_entry(self) -> str | None:
        data = self.combo.currentData() or {}
        return data.get("entry")

    def _chosen(self, index: int) -> None:
        """The list is the one source of truth for the model that runs: a model that is here puts its folder
        in the path field; one still to Get empties it (Run then asks for Get, never runs the one before)."""
        data = self.combo.itemData(index) or {}
        self._choosing = True
        try:
            self.file_widget.setFilePath(data.get("path", ""))
        finally:
            self._choosing = False
        self._update_get()
        if "entry" in data:
            self.info.setText(f"<b>{html.escape(data['entry'])}</b> is not here yet: "
                              "<b>Get</b> downloads and converts it.<br>"
                              + html.escape(self.combo.itemData(index, Qt.ItemDataRole.ToolTipRole) or "").replace("\n", "<br>"))

    def _update_get(self) -> None:
        busy = self.task is not None or self.install_task is not None
        self.get_button.setEnabled(not busy and self.current_entry() is not None)

    def _path_changed(self, path: str) -> None:
        if not self._choosing:   # a path typed or browsed: the list follows it
            self._select_path(path)

    def _choose_zip(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "RemoteCLIP model bundle (zip)", self.file_widget.filePath(),
                                              "Model bundles (*.zip)")
        if path:
            self.file_widget.setFilePath(path)

    def _choose_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Folder for RemoteCLIP models", str(models_folder()))
        if path:
            QgsSettings().setValue(SETTING_DIR, path)  # noqa: QGS202 (QgsSettings.setValue returns nothing)
            self.refresh()

    # ------------------------------------------------------------------------------------- Get

    def get(self):
        """Get the current catalogue entry: install onnx first when missing, then download and convert."""
        name = self.current_entry()
        if name is None or self.task is not None or self.install_task is not None:
            return None
        return self._with_converter(lambda: self._start(name))

    def _choose_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "OpenCLIP checkpoint to convert", str(models_folder()),
                                              "Checkpoints (*.pt *.pth *.bin *.ckpt);;All files (*)")
        if path:
            self.convert_file(path)

    def convert_file(self, checkpoint: str):
        """Convert a checkpoint file the analyst has into ``<models folder>/<its name>`` and select it (the
        catalogue's activation when the file is a catalogue model's, by its file name)."""
        if self.task is not None or self.install_task is not None:
            return None
        from .model_download import ConvertTask

        path = Path(checkpoint)
        activation = "quick_gelu"
        try:
            entries = cat.load_catalog(models_folder()).values()
        except RemoteClipError as e:   # a damaged catalogue: said, and the default activation used
            self.message.emit(f"{e.problem} The checkpoint is converted with quick_gelu.",
                              int(Qgis.MessageLevel.Warning))
            entries = ()
        for entry in entries:
            if entry.file == path.name:
                activation = entry.activation
        out = models_folder() / path.stem
        return self._with_converter(lambda: self._launch(ConvertTask(path, out, activation),
                                                         f"Converting {path.name} into {out}…"))

    def _with_converter(self, then):
        """Run ``then`` (which starts a conversion) once onnx is here: installed first when missing."""
        missing = deps.missing_for_conversion()
        if missing:
            try:
                plan = deps.make_plan(missing)
            except FileNotFoundError as e:   # no interpreter pip can run (the dock's Install says the same)
                self._say(f"{e} Install {', '.join(missing)} with the Python QGIS runs on (OSGeo4W Shell on "
                          "Windows), then Get again.", error=True)
                return None
            self.install_task = deps.InstallTask(plan)
            self.install_task.done.connect(lambda ok, summary, manual: self._installed(ok, summary, manual, then))
            self._say(f"Installing {', '.join(plan.attempts[0][0])} (needed once to convert models)…")
            self._show_progress(True)
            self.progress.setRange(0, 0)
            self._update_get()
            QgsApplication.taskManager().addTask(self.install_task)
            return self.install_task
        return then()

    def _installed(self, ok: bool, summary: str, manual: str, then) -> None:
        self.install_task = None
        self.progress.setRange(0, 100)
        if ok and not deps.missing_for_conversion():
            then()
            return
        self._show_progress(False)
        self._update_get()
        if summary.startswith(deps.NO_NETWORK):
            self._say(f"The network is down: installing the converter's package (needed once to convert models) "
                      f"could not reach the package index. Connect to the internet, then Get again. Details: "
                      f"{summary.removeprefix(deps.NO_NETWORK).strip()}", error=True)
            return
        self._say(f"Installing the converter's packages failed ({summary}). Run by hand: {manual}", error=True)

    def _start(self, name: str):
        from .model_download import PullTask

        folder = models_folder()
        return self._launch(PullTask(name, folder), f"Getting {name} into {folder}…")

    def _launch(self, task, text: str):
        self.task = task
        self.task.progressChanged.connect(lambda p: self.progress.setValue(int(p)))  # noqa: QGS202
        self.task.statusChanged.connect(self._say)
        self.task.pulled.connect(self._pulled)
        self.task.failed.connect(self._failed)
        self.task.cancelledByUser.connect(self._cancelled)
        self._show_progress(True)
        self.progress.setValue(0)  # noqa: QGS202 (a Qt setter)
        self._say(text)
        self._update_get()
        QgsApplication.taskManager().addTask(self.task)
        return self.task

    def cancel(self) -> None:
        if self.task is not None:
            self._say("Cancelling… (the part downloaded so far is kept; Get resumes it)")
            self.task.cancel()

    def _done(self) -> None:
        self.task = None
        self._show_progress(False)
        self.refresh()

    def _pulled(self, bundle: str) -> None:
        self._done()
        self.file_widget.setFilePath(bundle)
        self._select_path(bundle)
        self._say(f"{Path(bundle).name} is ready: {bundle}")
        self.message.emit(f"{Path(bundle).name} is ready and selected.", int(Qgis.MessageLevel.Success))
        self.pulled.emit(bundle)

    def _failed(self, error: str, _details: str) -> None:
        name = self.task.name
        self._done()
        self.select_entry(name)       # ready to try again
        self._say(error, error=True)
        self.message.emit(error, int(Qgis.MessageLevel.Critical))

    def _cancelled(self) -> None:
        name = self.task.name
        converting = getattr(self.task, "checkpoint", None) is not None
        self._done()
        if converting:
            self._say("Cancelled; no bundle was written.")
            return
        self.select_entry(name)       # Get resumes it
        self._say("Cancelled. Get again resumes the download.")

    def _show_progress(self, on: bool) -> None:
        self.progress.setVisible(on)
        self.cancel_button.setVisible(on)

    def _say(self, text: str, error: bool = False) -> None:
        self.status.setVisible(bool(text))
        esc = html.escape(text, quote=False)
        self.status.setText(f"<span style='color:#b00020'>{esc}</span>" if error else esc)
        if error:
            QgsMessageLog.logMessage(text, LOG_TAG, Qgis.MessageLevel.Warning)

    def unload(self) -> None:
        for t in (self.task, self.install_task):
            if t is not None:
                with contextlib.suppress(RuntimeError):   # already deleted by the task manager
                    t.cancel()


def is_demo(path: str) -> bool:
    return _same(path, str(DEMO_BUNDLE)) or _same(path, str(DEMO_BUNDLE.with_suffix(".rclip.zip"))) \
        or os.path.basename(os.path.normpath(path or "")) == DEMO_BUNDLE.name

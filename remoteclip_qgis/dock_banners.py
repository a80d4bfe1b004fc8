"""The dock's two banners: the missing Python packages (what, where they go, Install and the command to run by
hand) and, while the demo model is chosen, that its results are not credible (its button Gets RemoteCLIP)."""

from __future__ import annotations

import html

import qgis.utils
from qgis.core import Qgis, QgsApplication, QgsMessageLog
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QApplication,
    QFrame,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QToolButton,
    QVBoxLayout,
)

from . import deps
from .core.runtime.bundle import DEMO_FIGURE
from .model_picker import DEMO_NOTE, is_demo
from .widgets import WrapLabel

LOG_TAG = "RemoteCLIP"
REAL_MODEL = "RemoteCLIP-ViT-B-32"   # what the demo banner offers to get


def _framed(frame: QFrame, name: str, background: str, border: str) -> QVBoxLayout:
    """``frame`` as a coloured, framed box (object name ``name``) for a message across the dock; its layout."""
    frame.setObjectName(name)
    frame.setStyleSheet(f"#{name} {{ background: {background}; border: 1px solid {border}; border-radius: 3px; }}")
    return QVBoxLayout(frame)


def _html(text: str) -> str:
    return html.escape(text, quote=False)


class DependencyBanner(QFrame):
    """Missing packages: what, where they go, the Install button and the command to run by hand. ``host`` is
    the dock: the command is worked out once it shows."""

    changed = pyqtSignal(list)          # the missing packages, after each look
    problem = pyqtSignal(str, object)   # the problem and its fix

    def __init__(self, parent, host):
        super().__init__(parent)
        self.iface, self.host = qgis.utils.iface, host
        self.install_task = None
        self.missing: list[str] = []
        self.command_pending = False
        b = _framed(self, "deps_banner", "#fff4ce", "#e0b000")
        self.label = WrapLabel("", self)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        # a command line has no spaces to wrap at: a read-only line (scrolls, selects, copies) holds it
        self.manual_edit = QLineEdit(self)
        self.manual_edit.setObjectName("deps_manual_command")
        self.manual_edit.setReadOnly(True)
        self.manual_edit.setToolTip("The command that installs them by hand, in a terminal")
        self.install_button = QPushButton("Install dependencies", self)
        self.install_button.clicked.connect(self.install)
        copy = QToolButton(self)
        copy.setText("Copy")
        copy.setToolTip("Copy the command to the clipboard")
        copy.clicked.connect(lambda: QApplication.clipboard().setText(self.manual_edit.text()))
        self.copy_button = copy
        row = QHBoxLayout()
        row.addWidget(self.manual_edit, 1)
        row.addWidget(copy)
        b.addWidget(self.label)
        b.addLayout(row)
        b.addWidget(self.install_button)

    def refresh(self) -> list[str]:
        missing = deps.missing_modules()
        self.missing = missing
        if missing:
            self._fill(missing, with_command=False)
            # the terminal command needs QGIS's interpreter found (a Python started) and nvidia-smi asked:
            # worked out when the panel shows, not while QGIS starts with the panel closed
            self.command_pending = True
            if self.host.isVisible():
                self.fill_install_command()
        self.setVisible(bool(missing))
        self.changed.emit(missing)
        return missing

    def _fill(self, missing: list[str], with_command: bool, problem: str = "") -> None:
        self.label.setText(
            f"<b>Missing Python packages: {', '.join(missing)}.</b> RemoteCLIP needs them to run models. "
            "Install them into a folder of your QGIS profile (QGIS's own numpy is kept)"
            + (", or run this in a terminal:" if with_command else f". {_html(problem)}" if problem else "."))
        self.label.setToolTip(str(deps.deps_dir()))
        self.manual_edit.setVisible(with_command)
        self.copy_button.setVisible(with_command)

    def fill_install_command(self) -> None:
        self.command_pending = False
        if not self.missing:
            return
        plan_text, problem = "", ""
        try:
            plan_text = deps.make_plan(self.missing).manual_command()
        except FileNotFoundError as e:   # no python found: the banner still says what is missing
            problem = str(e)
        self.manual_edit.setText(plan_text)
        self.manual_edit.setCursorPosition(0)
        self._fill(self.missing, bool(plan_text), problem)

    def install(self) -> None:
        if self.install_task is not None:
            return
        try:
            plan = deps.make_plan()
        except FileNotFoundError as e:
            self.problem.emit(str(e), "Install onnxruntime, ftfy and regex with the Python QGIS runs on (OSGeo4W "
                              "Shell on Windows), or ask your administrator.")
            return
        if not plan.attempts:
            self.refresh()
            return
        self.install_task = deps.InstallTask(plan)
        self.install_task.done.connect(self._install_done)
        self.install_button.setEnabled(False)
        self.install_button.setText("Installing…")
        self.install_button.setToolTip("pip's output: View > Panels > Log Messages, tab RemoteCLIP")
        QgsApplication.taskManager().addTask(self.install_task)

    def _install_done(self, ok: bool, summary: str, manual: str) -> None:
        self.install_task = None
        self.install_button.setEnabled(True)
        self.install_button.setText("Install dependencies")
        self.install_button.setToolTip("")
        missing = self.refresh()
        bar = self.iface.messageBar()
        if ok and not missing:
            bar.pushMessage("RemoteCLIP", f"Dependencies installed: {summary}.", Qgis.MessageLevel.Success, 10)
        else:
            QgsMessageLog.logMessage(f"Installing dependencies failed: {summary}\nRun by hand:\n{manual}",
                                     LOG_TAG, Qgis.MessageLevel.Critical)
            bar.pushMessage("RemoteCLIP", f"Installing dependencies failed ({summary}). Run by hand: {manual}",
                            Qgis.MessageLevel.Critical, 0)


class DemoBanner(QFrame):
    """While the demo model is chosen: say plainly that its results are not credible, and offer Get."""

    problem = pyqtSignal(str, object)   # the problem and its fix

    def __init__(self, parent, model_row=None):
        super().__init__(parent)
        self.model_row = model_row   # the dock's model row (set once it is built)
        b = _framed(self, "demo_banner", "#e8f1fb", "#4e79a7")
        self.label = WrapLabel("<b>Demo model</b>: for trying the plugin only (30.5 % top-1 on RSSCN7 images "
                               "it never saw, chance 14 %). Its results look like a map "
                               "but are not credible: get RemoteCLIP for real work.", self)
        self.label.setToolTip(f"Demo model: {DEMO_FIGURE}. {REAL_MODEL}: 605 MB, downloaded and converted here, "
                              "no PyTorch needed")
        self.get_button = QPushButton("Get RemoteCLIP", self)
        self.get_button.setObjectName("demo_get")
        self.get_button.setToolTip(f"Chooses {REAL_MODEL} in the Model list and starts its download and "
                                   "conversion")
        self.get_button.clicked.connect(self.get_real_model)
        b.addWidget(self.label)
        b.addWidget(self.get_button)
        self.setVisible(False)

    def show_for(self, path: str) -> None:
        """Shown while ``path`` (the chosen model) is the demo model."""
        self.setVisible(bool(path) and is_demo(path))

    def get_real_model(self) -> None:
        """The button: choose RemoteCLIP in the model list and Get it (or just choose it when it is here
        already)."""
        if self.model_row.select_entry(REAL_MODEL) < 0:
            self.problem.emit(f"{REAL_MODEL} is not in the model catalogue.", "Refresh the list (Model > …) or "
                              "choose a bundle folder.")
            return
        if self.model_row.current_entry() is not None:
            self.model_row.get()

    said = False   # the message after a demo run: once per QGIS session (the banner stays in the panel)

    def message(self, bar) -> None:
        """After the session's first run with the demo model: say so on the message bar ``bar``, with the button
        that gets RemoteCLIP."""
        if DemoBanner.said:
            return
        DemoBanner.said = True
        text = DEMO_NOTE[0].upper() + DEMO_NOTE[1:] + "."
        try:
            item = bar.createMessage("RemoteCLIP", text)
            button = QPushButton(f"Get {REAL_MODEL}", item)
            button.clicked.connect(self.get_real_model)
            item.layout().addWidget(button)
            bar.pushWidget(item, Qgis.MessageLevel.Info, 15)
        except (AttributeError, TypeError):   # a message bar without widgets (a test's iface)
            bar.pushMessage("RemoteCLIP", text, Qgis.MessageLevel.Info, 15)

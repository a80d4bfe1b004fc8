"""Plugin entry: a button on the Plugins toolbar, the Raster > RemoteCLIP menu, the dock, the Processing
provider, the dependency check."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import qgis.utils
from qgis.core import Qgis, QgsApplication, QgsMessageLog, QgsSettings
from qgis.PyQt.QtCore import Qt, QTimer
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction, QPushButton

from . import deps

LOG_TAG = "RemoteCLIP"
MENU = "&RemoteCLIP"
PLUGIN_DIR = Path(__file__).resolve().parent
# whether the analyst left the panel open: QGIS restores only docks that exist when it restores the window,
# and ours is built on first use (the dock's other settings live in dock_settings, which QGIS need not load)
DOCK_OPEN_SETTING = "RemoteCLIP/dock_open"


def icon_path(name: str = "icon.svg") -> str:
    """Resources sit in the plugin's resources/ (packaged) or the repository's resources/ (development)."""
    for folder in (PLUGIN_DIR / "resources", PLUGIN_DIR.parent / "resources"):
        if (folder / name).is_file():
            return str(folder / name)
    return ""


class RemoteClipPlugin:
    def __init__(self):
        self.iface = qgis.utils.iface
        self.provider = None
        self._dock = None
        self.actions: list[QAction] = []
        self.dock_action = None
        deps.add_deps_to_path()
        self.missing: list[str] = []
        self._message = None

    # ------------------------------------------------------------------------------ processing

    def initProcessing(self) -> None:  # noqa: N802 (QGIS's name)
        if self.provider is not None:
            return
        try:
            from .processing.provider import RemoteClipProvider

            provider = RemoteClipProvider()
            if QgsApplication.processingRegistry().addProvider(provider):
                self.provider = provider
        except Exception as e:  # the dock must still work when Processing cannot load
            QgsMessageLog.logMessage(f"The RemoteCLIP Processing provider could not load: "
                                     f"{type(e).__name__}: {e}", LOG_TAG, Qgis.MessageLevel.Warning)

    # --------------------------------------------------------------------------------------- GUI

    def initGui(self) -> None:  # noqa: N802 (QGIS's name)
        self.initProcessing()
        window = self.iface.mainWindow()
        icon = QIcon(icon_path())

        self.dock_action = QAction(icon, "RemoteCLIP", window)
        self.dock_action.setObjectName("remoteclip_dock_action")
        self.dock_action.setToolTip("RemoteCLIP: label, count and search raster tiles with a vision-language model")
        # the dock (and what it imports) is built on the first click, not while QGIS starts
        self.dock_action.setCheckable(True)
        self.dock_action.toggled.connect(self._first_open)
        self.dock_action.toggled.connect(self._remember_open)
        # the Plugins toolbar: a fresh profile shows it (QGIS hides the Raster toolbar by default)
        self.iface.addToolBarIcon(self.dock_action)
        self.iface.addPluginToRasterMenu(MENU, self.dock_action)

        diag = QAction(QgsApplication.getThemeIcon("/mActionPropertiesWidget.svg"), "Diagnostics…", window)
        diag.setObjectName("remoteclip_diagnostics_action")
        diag.triggered.connect(self.show_diagnostics)
        self.iface.addPluginToRasterMenu(MENU, diag)

        install = QAction("Install dependencies…", window)
        install.setObjectName("remoteclip_install_action")
        install.triggered.connect(self.install_dependencies)
        self.iface.addPluginToRasterMenu(MENU, install)
        self.actions = [self.dock_action, diag, install]
        self.check_dependencies()
        if QgsSettings().value(DOCK_OPEN_SETTING, False, type=bool):
            # after QGIS has started (or the plugin was reinstalled over itself): the panel as it was left
            QTimer.singleShot(0, self._reopen)

    @property
    def dock(self):
        """The dock, built on first use (the toolbar button's first click, Install dependencies…): QGIS
        starts without importing it."""
        if self._dock is None and self.dock_action is not None:
            from .dock import RemoteClipDock

            dock = RemoteClipDock(self.iface.mainWindow())
            self.iface.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
            dock.hide()
            self._dock = dock
            # the action is checked while the dock is open, and opens/closes it (QGIS's own pattern)
            dock.setToggleVisibilityAction(self.dock_action)
        return self._dock

    def _first_open(self, checked: bool) -> None:
        if checked and self._dock is None:
            self.dock.setUserVisible(True)

    def _remember_open(self, checked: bool) -> None:
        # a main window being hidden (QGIS closing) hides the dock too: that is not the analyst closing it
        try:
            shown = self.iface.mainWindow().isVisible()
        except RuntimeError:   # the main window is already deleted: QGIS is quitting
            return
        if shown:
            QgsSettings().setValue(DOCK_OPEN_SETTING, checked)  # noqa: QGS202 (returns nothing)

    def _reopen(self) -> None:
        if self.dock_action is not None and self._dock is None:   # not unloaded meanwhile, not opened by hand
            self.dock.setUserVisible(True)

    def check_dependencies(self) -> list[str]:
        """Say on the message bar what is missing and how to get it (the dock's banner says it already)."""
        self.missing = deps.missing_modules()
        if not self.missing:
            return []
        text = (f"RemoteCLIP needs Python packages QGIS does not have: {', '.join(self.missing)}. "
                f"Install them from the RemoteCLIP panel (into {deps.deps_dir()}).")
        QgsMessageLog.logMessage(text, LOG_TAG, Qgis.MessageLevel.Warning)
        bar = self.iface.messageBar()
        try:
            item = bar.createMessage("RemoteCLIP", text)
            button = QPushButton("Install dependencies", item)
            button.clicked.connect(self.install_dependencies)
            item.layout().addWidget(button)
            self._message = bar.pushWidget(item, Qgis.MessageLevel.Warning)
        except (AttributeError, TypeError):
            bar.pushMessage("RemoteCLIP", text, Qgis.MessageLevel.Warning, 0)
        return self.missing

    def install_dependencies(self) -> None:
        if self.dock is None:
            return
        self.dock.setUserVisible(True)
        self.dock.install_dependencies()

    def show_diagnostics(self) -> None:
        from .diagnostics import DiagnosticsDialog, diagnostics_text

        model = self._dock.model_path() if self._dock is not None else None
        DiagnosticsDialog(diagnostics_text(model), self.iface.mainWindow()).exec()

    # ------------------------------------------------------------------------------------ unload

    def unload(self) -> None:
        if self.dock_action is not None:   # taking the dock down below is not the analyst closing it
            self.dock_action.toggled.disconnect(self._remember_open)
        inference = sys.modules.get(f"{__package__}.core.runtime.inference")   # not imported: no model loaded
        if inference is not None:
            inference.release_sessions()   # the model's memory goes with the plugin
        if self.provider is not None:
            if not QgsApplication.processingRegistry().removeProvider(self.provider):
                QgsMessageLog.logMessage("The RemoteCLIP Processing provider was already gone.", LOG_TAG, Qgis.MessageLevel.Info)
            self.provider = None
        for action in self.actions:
            self.iface.removePluginRasterMenu(MENU, action)
            self.iface.removeToolBarIcon(action)
            # off the main window now, not at the next event loop: QGIS may reload the plugin at once
            action.setParent(None)
            action.deleteLater()
        self.actions = []
        self.dock_action = None
        if self._message is not None:
            with contextlib.suppress(RuntimeError, TypeError):   # the user may have closed it already
                self.iface.messageBar().popWidget(self._message)
            self._message = None
        if self._dock is not None:
            self._dock.unload()
            self.iface.removeDockWidget(self._dock)
            self._dock.setParent(None)
            self._dock.deleteLater()
            self._dock = None

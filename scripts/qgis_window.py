"""A small real QGIS main window for running the plugin outside the QGIS application.

``QgisWindow`` is a QMainWindow with a map canvas, a layer tree (legend) bound
to the project, a message bar, a Raster menu, the Plugins toolbar and a hidden
Raster toolbar (as a fresh QGIS profile has them), and the part of QgisInterface
the plugin calls (mainWindow, mapCanvas, messageBar, add/remove raster menu
entries, toolbar icons and dock widgets, activeLayer, currentLayerChanged). Used by scripts/screenshot.py and by the test that
loads the plugin in a fresh Python without onnxruntime.
"""

from __future__ import annotations

from qgis.core import QgsProject
from qgis.gui import QgsLayerTreeMapCanvasBridge, QgsLayerTreeView, QgsMapCanvas, QgsMessageBar
from qgis.PyQt.QtCore import QObject, Qt, pyqtSignal
from qgis.PyQt.QtWidgets import QDockWidget, QMainWindow, QVBoxLayout, QWidget


class QgisWindow(QObject):
    currentLayerChanged = pyqtSignal(object)  # noqa: N815 (QgisInterface's name)

    def __init__(self, title: str = "QGIS"):
        super().__init__()
        from qgis.core import QgsLayerTreeModel

        self.window = QMainWindow()
        self.window.setWindowTitle(title)
        central = QWidget(self.window)
        col = QVBoxLayout(central)
        col.setContentsMargins(0, 0, 0, 0)
        col.setSpacing(0)
        self.bar = QgsMessageBar(central)
        self.canvas = QgsMapCanvas(central)
        self.canvas.setCanvasColor(Qt.white)
        col.addWidget(self.bar)
        col.addWidget(self.canvas, 1)
        self.window.setCentralWidget(central)

        project = QgsProject.instance()
        self.model = QgsLayerTreeModel(project.layerTreeRoot(), self.window)
        self.model.setFlag(QgsLayerTreeModel.AllowNodeChangeVisibility)
        self.model.setFlag(QgsLayerTreeModel.ShowLegendAsTree)
        self.tree = QgsLayerTreeView(self.window)
        self.tree.setModel(self.model)
        self.bridge = QgsLayerTreeMapCanvasBridge(project.layerTreeRoot(), self.canvas, self.window)
        self.tree.currentLayerChanged.connect(self.currentLayerChanged.emit)
        self.layers_dock = QDockWidget("Layers", self.window)
        self.layers_dock.setObjectName("Layers")
        self.layers_dock.setWidget(self.tree)
        self.window.addDockWidget(Qt.LeftDockWidgetArea, self.layers_dock)

        self.raster_menu = self.window.menuBar().addMenu("&Raster")
        self.plugin_toolbar = self.window.addToolBar("Plugins Toolbar")
        self.plugin_toolbar.setObjectName("mPluginToolBar")
        self.raster_toolbar = self.window.addToolBar("Raster Toolbar")
        self.raster_toolbar.setObjectName("mRasterToolBar")
        self.raster_toolbar.setVisible(False)   # as in a fresh QGIS profile
        self._submenus = {}

    # -- the QgisInterface calls the plugin makes
    def mainWindow(self):  # noqa: N802
        return self.window

    def mapCanvas(self):  # noqa: N802
        return self.canvas

    def messageBar(self):  # noqa: N802
        return self.bar

    def activeLayer(self):  # noqa: N802
        return self.tree.currentLayer()

    def setActiveLayer(self, layer) -> None:  # noqa: N802
        self.tree.setCurrentLayer(layer)

    def addToolBarIcon(self, action) -> None:  # noqa: N802
        self.plugin_toolbar.addAction(action)

    def removeToolBarIcon(self, action) -> None:  # noqa: N802
        self.plugin_toolbar.removeAction(action)

    def addRasterToolBarIcon(self, action) -> None:  # noqa: N802
        self.raster_toolbar.addAction(action)

    def removeRasterToolBarIcon(self, action) -> None:  # noqa: N802
        self.raster_toolbar.removeAction(action)

    def addPluginToRasterMenu(self, name: str, action) -> None:  # noqa: N802
        menu = self._submenus.get(name)
        if menu is None:
            menu = self._submenus[name] = self.raster_menu.addMenu(name)
        menu.addAction(action)

    def removePluginRasterMenu(self, name: str, action) -> None:  # noqa: N802
        menu = self._submenus.get(name)
        if menu is None:
            return
        menu.removeAction(action)
        if menu.isEmpty():
            self.raster_menu.removeAction(menu.menuAction())
            del self._submenus[name]
            menu.setParent(None)
            menu.deleteLater()

    def addDockWidget(self, area, dock) -> None:  # noqa: N802
        self.window.addDockWidget(area, dock)

    def removeDockWidget(self, dock) -> None:  # noqa: N802
        self.window.removeDockWidget(dock)

    def close(self) -> None:
        """Tear down before QgsApplication.exitQgis(): canvas and tree first, or exit crashes."""
        self.bridge.deleteLater()
        self.tree.setModel(None)
        self.canvas.setLayers([])
        self.window.close()
        self.window.deleteLater()

"""Export of a result layer (the dock's "Export a result layer" box): into a GeoPackage as one more layer of it,
its style stored inside, or to a Shapefile with a .qml and the sidecar; and the output checks a run shares with
it (a file a project layer shows is refused, a replacement is asked about)."""

from __future__ import annotations

import html
import os

import qgis.utils
from qgis.core import (
    Qgis,
    QgsField,
    QgsMessageLog,
    QgsProject,
    QgsProviderRegistry,
    QgsVectorFileWriter,
    QgsVectorLayer,
)
from qgis.gui import QgsCollapsibleGroupBox, QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtCore import QMetaType, pyqtSignal
from qgis.PyQt.QtWidgets import QComboBox, QFormLayout, QMessageBox, QPushButton
from qgis.PyQt.QtXml import QDomDocument

from .core.errors import InvalidInput, OutputExists, OutputRefused, RemoteClipError, WriteFailed
from .dock_settings import slug
from .widgets import compact, layer_filters

LOG_TAG = "RemoteCLIP"
EXPORT_FORMATS = {"GeoPackage": ("GPKG", ".gpkg"), "ESRI Shapefile": ("ESRI Shapefile", ".shp")}


def layers_showing(path: str, layer_name: str | None = None, project: QgsProject | None = None) -> list:
    """The project's layers whose data is the file ``path`` (of a GeoPackage: its layer ``layer_name``),
    whatever the spelling of their source (relative, symlink, hard link)."""
    from .core.geodata.vectors import same_file

    project = project or QgsProject.instance()
    gpkg = os.path.splitext(path)[1].lower() == ".gpkg"
    out = []
    for layer in project.mapLayers().values():
        parts = QgsProviderRegistry.instance().decodeUri(layer.providerType(), layer.source())
        src = parts.get("path") or ""
        if not src or not same_file(src, path):
            continue
        shown = parts.get("layerName") or None
        if gpkg and layer_name and shown and shown.lower() != layer_name.lower():
            continue   # another layer of that GeoPackage: it is kept, and SQLite lets QGIS read on
        out.append(layer)
    return out


def confirm_replace(parent, what: str, layer: bool = False) -> bool:
    """Ask before replacing ``what`` (core.geodata.vectors.output_exists's words: a file, or a GeoPackage's layer)."""
    kept = " Its other layers are kept." if layer else ""   # a GeoPackage layer: the file's others stay
    answer = QMessageBox.question(parent, "RemoteCLIP", f"Replace {what}?{kept}",
                                  QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                  QMessageBox.StandardButton.No)
    return answer == QMessageBox.StandardButton.Yes


class ExportBox(QgsCollapsibleGroupBox):
    """The Export box: a vector layer, a format, a file, and Export (which asks before replacing)."""

    status = pyqtSignal(str)            # what the dock's status line says (HTML)
    problem = pyqtSignal(str, object)   # a refused export: the problem and its fix

    def __init__(self, parent):
        super().__init__("Export a result layer", parent)
        self.iface = qgis.utils.iface
        self.setCollapsed(True)
        form = QFormLayout(self)
        self.layer_combo = QgsMapLayerComboBox(self)
        compact(self.layer_combo)
        self.layer_combo.setFilters(layer_filters("VectorLayer"))
        form.addRow("Layer", self.layer_combo)
        self.format_combo = QComboBox(self)
        compact(self.format_combo)
        self.format_combo.addItems(list(EXPORT_FORMATS))
        form.addRow("Format", self.format_combo)
        self.file_widget = save_file_widget(self, "GeoPackage (*.gpkg);;ESRI Shapefile (*.shp)")
        form.addRow("File", self.file_widget)
        self.button = QPushButton("Export", self)
        self.button.clicked.connect(self.export)
        form.addRow(self.button)

    def export(self) -> None:
        layer = self.layer_combo.currentLayer()
        path = self.file_widget.filePath().strip()
        try:
            target, layer_name = export_target(layer, path, self.format_combo.currentText())
            shown = layers_showing(target, layer_name)
            if shown:
                raise OutputRefused(f"{target} is shown in this project by the layer “{shown[0].name()}”.",
                                    "Remove that layer from the Layers panel first, or export to another file.",
                                    path=target)
            from .core.geodata.vectors import output_exists

            what = output_exists(target, layer_name)
            if what is not None and not confirm_replace(self, what, what.layer):
                self.status.emit(f"Not exported: {html.escape(what, quote=False)} was kept.")
                return
            out = export_layer(layer, path, self.format_combo.currentText())
        except RemoteClipError as e:
            self.problem.emit(e.problem, e.fix)
            return
        self.status.emit(f"Exported {layer.name()} to {out}")
        self.iface.messageBar().pushMessage("RemoteCLIP", f"Exported {layer.name()} to {out}", Qgis.MessageLevel.Success, 5)


def export_target(layer: QgsVectorLayer, path: str, format_name: str = "GeoPackage") -> tuple[str, str]:
    """(file, layer name) ``export_layer`` writes, or the error that says why it cannot."""
    if not isinstance(layer, QgsVectorLayer) or not layer.isValid():
        raise InvalidInput("No vector layer is chosen to export.", "Pick a result layer under Export.")
    if not path:
        raise InvalidInput("No export file is given.", "Choose where to save the layer under Export > File.")
    if format_name not in EXPORT_FORMATS:
        raise InvalidInput(f"Unknown export format {format_name!r}.", "Choose GeoPackage or ESRI Shapefile.")
    _, ext = EXPORT_FORMATS[format_name]
    if os.path.splitext(path)[1].lower() != ext:
        path = os.path.splitext(path)[0] + ext
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise OutputRefused(f"The folder {folder} does not exist.", "Choose an existing folder.", path=folder)
    return path, slug(layer.name()).lower()


def export_layer(layer: QgsVectorLayer, path: str, format_name: str = "GeoPackage") -> str:
    """Write ``layer`` to a GeoPackage (as a layer of it: an existing GeoPackage keeps its other layers) or a
    Shapefile, with its style (a .qml beside a Shapefile, stored inside a GeoPackage); returns the path."""
    path, layer_name = export_target(layer, path, format_name)
    driver, _ = EXPORT_FORMATS[format_name]
    if driver == "ESRI Shapefile":
        from .core.geodata.vectors import output_exists, read_sidecar, sidecar_path

        side = sidecar_path(path)
        if os.path.lexists(side) and not read_sidecar(path):
            raise OutputExists(f"{side} exists and was not written by RemoteCLIP.",
                               "Move that file away or export to another name.", path=side)
        # a .qml beside a Shapefile being replaced goes with it (the replacement was confirmed); one beside
        # no Shapefile of this name is somebody's style file
        qml = os.path.splitext(path)[0] + ".qml"
        if os.path.lexists(qml) and output_exists(path) is None:
            raise OutputExists(f"{qml} exists and belongs to no Shapefile of that name: exporting would "
                               "replace it with this layer's style.",
                               "Move that file away or export to another name.", path=qml)
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = driver
    options.fileEncoding = "UTF-8"
    options.layerName = layer_name
    if driver == "GPKG" and os.path.isfile(path):
        options.actionOnExistingFile = QgsVectorFileWriter.ActionOnExistingFile.CreateOrOverwriteLayer
    converter = None
    if driver == "ESRI Shapefile":
        # the GeoPackage's feature id is not an attribute of the result, and a .dbf text field holds 254 bytes
        keys = set(layer.dataProvider().pkAttributeIndexes())
        options.attributes = [i for i in range(layer.fields().count()) if i not in keys]
        converter = ShapefileFields()
        options.fieldValueConverter = converter
    err, message, new_file, _new_layer = QgsVectorFileWriter.writeAsVectorFormatV3(
        layer, path, QgsProject.instance().transformContext(), options)
    if err != QgsVectorFileWriter.WriterError.NoError:
        raise WriteFailed(f"Writing {path} failed: {message}", "Check the folder is writable and the file "
                          "is not open in another program.", path=path)
    out = new_file or path
    if driver != "ESRI Shapefile":
        # in the GeoPackage itself: a .qml beside it would be a file nobody asked for, applied to every layer
        exported = QgsVectorLayer(f"{out}|layername={layer_name}", layer_name, "ogr")
        doc = QDomDocument()
        layer.exportNamedStyle(doc)
        ok, error = exported.importNamedStyle(doc)
        if ok:
            # the replaced layer's style goes with it (else QGIS would stop and ask about a style of this name)
            related, ids, names, _, _ = exported.listStylesInDatabase()
            for style_id, name in zip(ids[:related], names[:related], strict=True):
                if name == layer_name:
                    ok, error = exported.deleteStyleFromDatabase(style_id)
            if hasattr(exported, "saveStyleToDatabaseV2"):   # QGIS 3.42 on; the old call is deprecated there
                _, error = exported.saveStyleToDatabaseV2(layer_name, "RemoteCLIP result style", True, "")
            else:
                error = exported.saveStyleToDatabase(layer_name, "RemoteCLIP result style", True, "")
        if error:   # the data is written; only its look is missing
            QgsMessageLog.logMessage(f"The style of {layer.name()} was not stored in {out}: {error}", LOG_TAG,
                                     Qgis.MessageLevel.Warning)
        return out
    # the style travels with the file: QGIS applies a same-named .qml when it opens a Shapefile
    layer.saveNamedStyle(os.path.splitext(out)[0] + ".qml")
    from .core.geodata.vectors import write_sidecar
    from .layers import read_metadata, source_of

    meta = read_metadata(*source_of(layer))
    if meta:  # the class names behind p_* fields, as core writes them for its own Shapefiles
        write_sidecar(out, meta)
    return out


class ShapefileFields(QgsVectorFileWriter.FieldValueConverter):
    """Text fields as wide as a .dbf allows (254), declared so: GDAL then has nothing to truncate or warn."""

    def fieldDefinition(self, field):  # noqa: N802 (QGIS's name)
        out = QgsField(field)
        if out.type() == QMetaType.Type.QString and not 0 < out.length() <= DBF_TEXT_WIDTH:
            out.setLength(DBF_TEXT_WIDTH)
        return out

    def convert(self, index, value):
        return value

    def clone(self):
        return ShapefileFields()


DBF_TEXT_WIDTH = 254


def save_file_widget(parent, file_filter: str, placeholder: str = "", tooltip: str = "") -> QgsFileWidget:
    """A file widget that picks where to save; it does not ask about replacing: Run (or Export) asks, and
    only when something would be replaced."""
    w = QgsFileWidget(parent)
    w.setStorageMode(QgsFileWidget.StorageMode.SaveFile)
    w.setConfirmOverwrite(False)
    w.setFilter(file_filter)
    if placeholder:
        w.lineEdit().setPlaceholderText(placeholder)
    if tooltip:
        w.setToolTip(tooltip)
    return w

"""QGIS layers as core inputs: rasters, extents and polygons.

``raster_for_layer`` hands core a file path when the layer is a plain local
file read by GDAL (core then reads it with rasterio and the embedding cache
keys it by path), and otherwise a :class:`QgisRasterSource` that reads through
the layer's own QgsRasterDataProvider (XYZ, WMS, GeoPackage rasters, virtual
files...). ``extent_from_rectangle`` and ``extent_from_features`` turn what a
user drew or selected into core's ``BBox`` and ``Polygons``.
"""

from __future__ import annotations

import importlib.util
import math
import os
import threading

import numpy as np
from qgis.core import (
    Qgis,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsFeatureRequest,
    QgsGeometry,
    QgsProject,
    QgsProviderRegistry,
    QgsRaster,
    QgsRasterDataProvider,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
    QgsWkbTypes,
)

from .core.errors import InvalidInput, SourceUnreadable
from .core.geodata.crs import crs_text
from .core.geodata.raster import nodata_valid
from .core.geodata.tiles import BBox, Polygons

__all__ = ["QgisRasterSource", "raster_for_layer", "extent_from_rectangle", "extent_from_features",
           "layer_file_path", "is_xyz_layer", "crs_wkt", "vector_origin", "vector_file", "examples_from_layer"]

# Qgis.DataType -> numpy; ARGB32 (XYZ/WMS tiles) is unpacked to RGB by the source itself.
_DTYPES = {
    Qgis.DataType.Byte: "uint8",
    Qgis.DataType.UInt16: "uint16",
    Qgis.DataType.Int16: "int16",
    Qgis.DataType.UInt32: "uint32",
    Qgis.DataType.Int32: "int32",
    Qgis.DataType.Float32: "float32",
    Qgis.DataType.Float64: "float64",
}
_ARGB = (Qgis.DataType.ARGB32, Qgis.DataType.ARGB32_Premultiplied)
_COLORINTERP = {
    QgsRaster.ColorInterpretation.GrayIndex: "gray",
    QgsRaster.ColorInterpretation.PaletteIndex: "palette",
    QgsRaster.ColorInterpretation.RedBand: "red",
    QgsRaster.ColorInterpretation.GreenBand: "green",
    QgsRaster.ColorInterpretation.BlueBand: "blue",
    QgsRaster.ColorInterpretation.AlphaBand: "alpha",
}
# Web Mercator: the XYZ tile scheme's world edge and ground size of one pixel at zoom 0 (256 px tiles)
_MERCATOR_EDGE = 20037508.342789244
_Z0_PIXEL = 2 * _MERCATOR_EDGE / 256
_MAX_PIXELS = 40000 * 40000   # a virtual grid larger than this is a mistake (pixel size far too small)


def crs_wkt(crs: QgsCoordinateReferenceSystem) -> str:
    """WKT that GDAL/OGR and rasterio read back as the same CRS ("" for an invalid CRS)."""
    if not crs.isValid():
        return ""
    return crs.toWkt(QgsCoordinateReferenceSystem.WktVariant.WKT_PREFERRED_GDAL)


def layer_file_path(layer: QgsRasterLayer) -> str | None:
    """The local file behind a GDAL layer, or None (other provider, sub-dataset, /vsi path, URL)."""
    if layer.providerType() != "gdal":
        return None
    parts = QgsProviderRegistry.instance().decodeUri("gdal", layer.source())
    path = parts.get("path") or ""
    if parts.get("layerName") or parts.get("vsiPrefix") or not path or not os.path.isfile(path):
        return None
    return path


def is_xyz_layer(layer: QgsRasterLayer) -> bool:
    if layer.providerType() != "wms":
        return False
    return QgsProviderRegistry.instance().decodeUri("wms", layer.source()).get("type") == "xyz"


def _xyz_pixel_size(layer: QgsRasterLayer) -> float:
    """Ground size of a pixel at the layer's deepest zoom (zmax, default 18) in Web Mercator metres."""
    parts = QgsProviderRegistry.instance().decodeUri("wms", layer.source())
    try:
        zmax = int(parts.get("zmax") or 18)
    except (TypeError, ValueError):
        zmax = 18
    return _Z0_PIXEL / 2 ** zmax


def _extent_rect(extent, crs: QgsCoordinateReferenceSystem) -> QgsRectangle:
    """A core BBox/Polygons extent as a rectangle in ``crs`` (the bounding box for polygons)."""
    if isinstance(extent, QgsRectangle):
        return QgsRectangle(extent)
    if isinstance(extent, Polygons):
        rect = None   # QgsRectangle.setMinimal() is deprecated from QGIS 3.40 on, setNull() is missing in 3.22
        for wkt in extent.wkts:
            box = QgsGeometry.fromWkt(wkt).boundingBox()
            if rect is None:
                rect = QgsRectangle(box)
            else:
                rect.combineExtentWith(box)
        rect = rect if rect is not None else QgsRectangle()
        src_crs = extent.crs
    elif isinstance(extent, BBox):
        rect = QgsRectangle(extent.xmin, extent.ymin, extent.xmax, extent.ymax)
        src_crs = extent.crs
    else:
        raise InvalidInput(f"Extent {extent!r} is neither a BBox nor Polygons.",
                              "Pass core.geodata.tiles.BBox or core.geodata.tiles.Polygons.")
    qcrs = _qgs_crs(src_crs) if src_crs else crs
    if qcrs.isValid() and crs.isValid() and qcrs != crs:
        rect = QgsCoordinateTransform(qcrs, crs, QgsProject.instance()).transformBoundingBox(rect)
    return rect


def _qgs_crs(value) -> QgsCoordinateReferenceSystem:
    """A core extent's CRS (as core.geodata.crs.srs_from reads it: EPSG:n, n, WKT) as QGIS's."""
    if isinstance(value, QgsCoordinateReferenceSystem):
        return value
    text = crs_text(value)
    if text.upper().startswith(("EPSG:", "ESRI:", "IGNF:", "OGC:")):
        return QgsCoordinateReferenceSystem(text)
    return QgsCoordinateReferenceSystem.fromWkt(text)


class QgisRasterSource:
    """core's RasterSource over a QgsRasterDataProvider, on a regular grid of square pixels.

    The grid covers the layer's extent, or ``extent`` for layers without a size
    of their own (XYZ, WMS: they need one), at ``pixel_size`` layer-CRS units
    (square; the provider's native pixel size when None, which may differ in x
    and y). Its origin is
    snapped to whole pixels from the layer extent's top-left corner, so XYZ
    reads at the native zoom line up with the tile pixels and GDAL reads at the
    native size return the file's own pixels.

    The provider is cloned in the constructor (the calling thread, normally the
    one that owns the layer) and only that clone is used afterwards, behind a
    lock: core reads from a worker thread while QGIS keeps using the layer.
    """

    def __init__(self, layer: QgsRasterLayer, pixel_size: float | None = None, extent=None):
        if not layer or not layer.isValid():
            raise SourceUnreadable("The raster layer is not valid (its source cannot be read).",
                                  "Check the layer's source in QGIS (Layer Properties > Information).")
        provider = layer.dataProvider()
        if provider is None:
            raise SourceUnreadable(f"Layer {layer.name()!r} has no data provider.", "Reload the layer.")
        self._provider: QgsRasterDataProvider = provider.clone()
        self._lock = threading.Lock()
        self.name = layer.source()
        self.path = layer_file_path(layer)   # the cache then also keys on the file's size and mtime
        self.crs_wkt = crs_wkt(layer.crs())
        self.xyz = is_xyz_layer(layer)
        has_size = bool(provider.capabilities() & QgsRasterDataProvider.Capability.Size) and provider.xSize() > 0
        full = QgsRectangle(provider.extent())

        if pixel_size is not None and pixel_size > 0:
            px = py = float(pixel_size)
        elif has_size:
            px, py = full.width() / provider.xSize(), full.height() / provider.ySize()
        elif self.xyz:
            px = py = _xyz_pixel_size(layer)
        else:
            raise InvalidInput(f"Layer {layer.name()!r} ({layer.providerType()}) has no native pixel size.",
                                  "Give a pixel size in layer units (Processing: PIXEL_SIZE; the dock uses "
                                  "the map's current resolution).")

        if has_size:
            # a raster with its own size keeps its whole grid, so tiles sit where the command line puts
            # them; the extent then only selects tiles (TileSpec.extent)
            area = full
        elif extent is None:
            raise InvalidInput(
                f"Layer {layer.name()!r} is a web or tiled layer that covers the whole world.",
                "Choose an extent: draw or type a bounding box (Processing: EXTENT) or select "
                "polygons (MASK), so only that area is read.", param="extent")
        else:
            area = _extent_rect(extent, layer.crs()).intersect(full)
            if area.isEmpty():
                raise InvalidInput(f"The extent does not overlap layer {layer.name()!r}.",
                                      "Choose an extent inside the layer.")

        # snap to the pixel grid anchored at the layer's top-left corner
        ox, oy = full.xMinimum(), full.yMaximum()
        c0 = math.floor((area.xMinimum() - ox) / px + 1e-6)
        c1 = math.ceil((area.xMaximum() - ox) / px - 1e-6)
        r0 = math.floor((oy - area.yMaximum()) / py + 1e-6)
        r1 = math.ceil((oy - area.yMinimum()) / py - 1e-6)
        self.width, self.height = max(c1 - c0, 1), max(r1 - r0, 1)
        if self.width * self.height > _MAX_PIXELS:
            raise InvalidInput(
                f"Reading layer {layer.name()!r} at {px:g} units per pixel gives a {self.width} x {self.height} "
                "pixel raster.", "Choose a smaller extent or a larger pixel size.")
        self.transform = (px, 0.0, ox + c0 * px, 0.0, -py, oy - r0 * py)
        self.pixel_size = (px, py)

        dt = provider.dataType(1)
        if dt in _ARGB:
            self.count, self.dtype = 3, "uint8"
            self.colorinterp = ["red", "green", "blue"]
            self.nodata = None
            self._nodatavals = [None, None, None]
            self._argb = True
        elif dt in _DTYPES:
            self.count, self.dtype = provider.bandCount(), _DTYPES[dt]
            self.colorinterp = [_COLORINTERP.get(provider.colorInterpretation(b), "undefined")
                                for b in range(1, self.count + 1)]
            self._nodatavals = [float(provider.sourceNoDataValue(b))
                                if provider.sourceHasNoDataValue(b) and provider.useSourceNoDataValue(b) else None
                                for b in range(1, self.count + 1)]
            self.nodata = self._nodatavals[0]
            self._argb = False
        else:
            raise InvalidInput(f"Layer {layer.name()!r} has an unsupported data type ({dt}).",
                                  "Convert it to an integer or float raster (Raster > Conversion > Translate).")

    # -------------------------------------------------------------------------------- RasterSource

    def window_extent(self, window) -> QgsRectangle:
        col, row, w, h = window
        a, _, c, _, e, f = self.transform
        return QgsRectangle(c + col * a, f + (row + h) * e, c + (col + w) * a, f + row * e)

    def read(self, bands, window, out_shape=None):
        col, row, w, h = (int(v) for v in window)
        oh, ow = (int(out_shape[0]), int(out_shape[1])) if out_shape is not None else (h, w)
        rect = self.window_extent((col, row, w, h))
        if self._argb:
            return self._read_argb(bands, rect, ow, oh)
        data = np.empty((len(bands), oh, ow), dtype=self.dtype)
        with self._lock:
            for i, b in enumerate(bands):
                if not 1 <= b <= self.count:
                    raise InvalidInput(f"Band {b} does not exist: {self.name} has {self.count} band(s).",
                                          f"Use band numbers from 1 to {self.count}.", param="bands")
                data[i] = self._block_array(self._provider.block(int(b), rect, ow, oh), self.dtype, oh, ow)
            alpha = self.colorinterp.index("alpha") + 1 if "alpha" in self.colorinterp else None
            if alpha is not None:  # an alpha band is the one mask for every band (as GDAL's per-dataset mask)
                a = self._block_array(self._provider.block(alpha, rect, ow, oh), self.dtype, oh, ow)
                return data, a > 0
        return data, self._valid(bands, data)

    def _valid(self, bands, data) -> np.ndarray:
        return nodata_valid(data, [self._nodatavals[b - 1] for b in bands])

    def _read_argb(self, bands, rect, ow, oh):
        with self._lock:
            block = self._provider.block(1, rect, ow, oh)
            argb = self._block_array(block, "uint32", oh, ow)
        a = (argb >> 24).astype(np.uint8)
        rgb = np.stack([(argb >> 16) & 0xFF, (argb >> 8) & 0xFF, argb & 0xFF]).astype(np.uint8)
        if block.dataType() == Qgis.DataType.ARGB32_Premultiplied:
            part = (a > 0) & (a < 255)
            if part.any():
                scale = 255.0 / np.maximum(a, 1)
                rgb = np.where(part, np.clip(rgb * scale + 0.5, 0, 255), rgb).astype(np.uint8)
        for b in bands:
            if not 1 <= b <= 3:
                raise InvalidInput(f"Band {b} does not exist; a web tile layer has 3 (RGB).",
                                      "Use bands 1,2,3 or leave bands empty.", param="bands")
        return rgb[[b - 1 for b in bands]], a > 0

    @staticmethod
    def _block_array(block, dtype: str, h: int, w: int) -> np.ndarray:
        if block is None or not block.isValid():
            raise SourceUnreadable("The layer's data provider returned no pixels for a tile.",
                                  "Check that the layer draws in QGIS (network, credentials) and try again.")
        buf = bytes(block.data())
        arr = np.frombuffer(buf, dtype=dtype)
        if arr.size != h * w:
            raise SourceUnreadable(f"The data provider returned {arr.size} pixels instead of {h * w}.",
                                  "Try another pixel size or save the layer as a GeoTIFF first.")
        return arr.reshape(h, w)

    def colormap(self, band: int) -> dict[int, tuple[int, int, int]] | None:
        """The band's colour table {index: (r, g, b)} (core looks palette bands up in it), or None."""
        with self._lock:
            if self._provider is None:
                return None
            items = self._provider.colorTable(int(band))
        table = {int(it.value): (it.color.red(), it.color.green(), it.color.blue()) for it in items}
        return table or None

    def close(self) -> None:
        with self._lock:
            self._provider = None

    def __repr__(self) -> str:
        return f"QgisRasterSource({self.name!r}, {self.width}x{self.height}, {self.count} bands)"


def raster_for_layer(layer: QgsRasterLayer, pixel_size: float | None = None, extent=None, force_provider=False):
    """What core reads for ``layer``: the file path of a local GDAL file, else a QgisRasterSource.

    A file goes to core as a path (read with rasterio) only where rasterio is
    installed; QGIS does not ship it, and then the file is read through QGIS.

    ``pixel_size`` (layer units) resamples; a file is then read through QGIS too.
    ``extent`` (core BBox/Polygons or QgsRectangle in the layer CRS) limits what
    a provider source covers; web layers (XYZ/WMS) need it. ``force_provider``
    reads a file through QGIS anyway (tests, or to honour the layer's provider).
    """
    if layer is None or not layer.isValid():
        raise InvalidInput("No valid raster layer was given.", "Choose a raster layer that draws in QGIS.")
    path = layer_file_path(layer)
    if path and not force_provider and not (pixel_size and pixel_size > 0) and _has_rasterio():
        return path
    return QgisRasterSource(layer, pixel_size=pixel_size, extent=extent)


def _has_rasterio() -> bool:
    # QGIS does not ship rasterio; without it files are read through QGIS's own GDAL provider
    try:
        return importlib.util.find_spec("rasterio") is not None
    except (ImportError, ValueError):
        return False


def extent_from_rectangle(rect: QgsRectangle, crs: QgsCoordinateReferenceSystem) -> BBox:
    """A drawn or typed rectangle as core's BBox (CRS as WKT)."""
    if rect is None or rect.isNull() or rect.isEmpty():
        raise InvalidInput("The extent is empty.", "Draw or type a rectangle with a width and a height.",
                           param="extent")
    return BBox(rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum(), crs_wkt(crs))


def vector_origin(layer) -> str:
    """The file a vector layer reads, as core names an input (``FILE|layername=NAME`` for one layer of a
    GeoPackage), so that no output of a job replaces it; "" for a layer that is no file (memory, database)
    or a Processing feature source."""
    if not isinstance(layer, QgsVectorLayer) or layer.providerType() != "ogr":
        return ""
    parts = QgsProviderRegistry.instance().decodeUri("ogr", layer.source())
    path = parts.get("path") or ""
    if not path:
        return ""
    name = parts.get("layerName")
    return f"{path}|layername={name}" if name else path


def extent_from_features(layer: QgsVectorLayer, selected_only: bool = True) -> Polygons:
    """The (selected) polygons of ``layer`` as core's Polygons in the layer CRS."""
    if layer is None or not layer.isValid():
        raise InvalidInput("The polygon layer is not valid.", "Choose a polygon layer that draws in QGIS.")
    if layer.geometryType() != QgsWkbTypes.GeometryType.PolygonGeometry:
        raise InvalidInput(f"Layer {layer.name()!r} has no polygons.",
                              "Choose a polygon layer to limit the tiles to.", param="polygons")
    if selected_only:
        if layer.selectedFeatureCount() == 0:
            raise InvalidInput(f"No features are selected in layer {layer.name()!r}.",
                                  "Select the polygons to analyse (or use all features).", param="polygons")
        features = layer.getSelectedFeatures()
    else:
        features = layer.getFeatures(QgsFeatureRequest().setNoAttributes())
    wkts = [f.geometry().asWkt() for f in features if f.hasGeometry() and not f.geometry().isEmpty()]
    if not wkts:
        raise InvalidInput(f"Layer {layer.name()!r} has no polygon geometries to use.",
                              "Choose features with geometries.")
    return Polygons(wkts, crs_wkt(layer.crs()), vector_origin(layer))


def samples_from_layer(source, class_field: str, selected_only: bool = False, crs=None):
    """An analyst's samples as core's Samples: the points or polygons of a vector layer (or a Processing
    feature source; ``selected_only`` for a layer's selection) with the value of ``class_field``, in the
    layer's CRS (``crs`` for a feature source: its ``sourceCrs()``)."""
    from .core.samples import Samples

    if source is None or (isinstance(source, QgsVectorLayer) and not source.isValid()):
        raise InvalidInput("No samples layer is chosen.", "Pick a point or polygon layer with the samples.")
    name = source.name() if hasattr(source, "name") else source.sourceName()
    kind = QgsWkbTypes.geometryType(source.wkbType())
    if kind not in (QgsWkbTypes.GeometryType.PointGeometry, QgsWkbTypes.GeometryType.PolygonGeometry):
        raise InvalidInput(f"The samples layer {name!r} has neither points nor polygons.",
                              "Choose a point or polygon layer with the samples.")
    if not class_field:
        raise InvalidInput("No class field is chosen for the samples.",
                              f"Pick the attribute of {name!r} that holds each sample's class.", param="class_field")
    idx = source.fields().indexOf(class_field)
    if idx < 0:
        raise InvalidInput(f"The samples layer {name!r} has no field {class_field!r}.",
                              "Pick the attribute that holds each sample's class.")
    request = QgsFeatureRequest().setSubsetOfAttributes([idx])
    if selected_only:
        if source.selectedFeatureCount() == 0:
            raise InvalidInput(f"No samples are selected in {name!r}.",
                                  "Select the samples to use, or untick 'selected features only'.")
        features = source.getSelectedFeatures(request)
    else:
        features = source.getFeatures(request)
    wkts, classes, ids = [], [], []
    for f in features:
        if not f.hasGeometry() or f.geometry().isEmpty():
            continue
        value = f.attribute(idx)
        wkts.append(f.geometry().asWkt())
        classes.append(None if value is None or (hasattr(value, "isNull") and value.isNull()) else value)
        ids.append(f.id())
    if not wkts:
        raise InvalidInput(f"The samples layer {name!r} has no geometries to learn from.",
                              "Draw points or polygons with a class.")
    if crs is None:
        crs = source.crs() if hasattr(source, "crs") else source.sourceCrs()
    return Samples(wkts, classes, crs_wkt(crs) or None, ids, name, vector_origin(source))


def examples_from_layer(source, selected_only: bool = False, crs=None, param: str = "like"):
    """Search-by-example examples as core's Examples: the points or polygons of a vector layer (or a Processing
    feature source; ``selected_only`` for a layer's selection), in the layer's CRS."""
    from .core.examples import Examples

    if source is None or (isinstance(source, QgsVectorLayer) and not source.isValid()):
        raise InvalidInput("No examples layer is chosen.", "Pick a point or polygon layer with the examples.",
                           param=param)
    name = source.name() if hasattr(source, "name") else source.sourceName()
    kind = QgsWkbTypes.geometryType(source.wkbType())
    if kind not in (QgsWkbTypes.GeometryType.PointGeometry, QgsWkbTypes.GeometryType.PolygonGeometry):
        raise InvalidInput(f"The examples layer {name!r} has neither points nor polygons.",
                           "Choose a point or polygon layer with the examples.", param=param)
    request = QgsFeatureRequest().setNoAttributes()
    if selected_only:
        if source.selectedFeatureCount() == 0:
            raise InvalidInput(f"No examples are selected in {name!r}.",
                               "Select the examples to use, or untick 'selected only'.", param=param)
        features = source.getSelectedFeatures(request)
    else:
        features = source.getFeatures(request)
    wkts, ids = [], []
    for f in features:
        if f.hasGeometry() and not f.geometry().isEmpty():
            wkts.append(f.geometry().asWkt())
            ids.append(f.id())
    if crs is None:
        crs = source.crs() if hasattr(source, "crs") else source.sourceCrs()
    return Examples(wkts, crs_wkt(crs) or None, ids, name, vector_origin(source), param)


def vector_file(layer, folder: str, what: str) -> tuple[str, str | None, list]:
    """(file, layer name, inputs) for core to read a vector layer: the layer's own file when it is a plain
    OGR file layer with no filter and no unsaved edits, else a GeoPackage of its features (edits included)
    written into ``folder``. ``inputs``: the (spec, what) pairs no output may replace (the layer's file)."""
    from qgis.core import QgsVectorFileWriter

    from .core.errors import WriteFailed

    if not isinstance(layer, QgsVectorLayer) or not layer.isValid():
        raise InvalidInput(f"No valid {what} layer is chosen.", f"Pick the {what} layer (one that draws in QGIS).")
    origin = vector_origin(layer)
    inputs = [(origin, what)] if origin else []
    path, _, name = origin.partition("|layername=")
    if origin and os.path.isfile(path) and not layer.subsetString() and not layer.isModified():
        return path, name or None, inputs
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GPKG"
    options.fileEncoding = "UTF-8"
    options.layerName = "layer"
    copy = os.path.join(folder, what.replace(" ", "_") + ".gpkg")   # a fresh folder per run
    err, message, new_file, _ = QgsVectorFileWriter.writeAsVectorFormatV3(
        layer, copy, QgsProject.instance().transformContext(), options)
    if err != QgsVectorFileWriter.WriterError.NoError:
        raise WriteFailed(f"The {what} layer {layer.name()!r} could not be copied to {copy}: {message}",
                          "Save the layer to a GeoPackage (Export > Save Features As) and use that.", path=copy)
    return new_file or copy, "layer", inputs

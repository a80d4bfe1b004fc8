"""Where a Processing algorithm's output goes: its destination as QGIS spells it (``ogr:dbname=...``,
``file|layername=...``), and converting the GeoPackage core wrote into another OGR format (GeoJSON,
FlatGeobuf, CSV...), staged beside the output and renamed when complete."""

from __future__ import annotations

import os
import re
import shutil
import tempfile

from ..core.errors import OutputRefused, WriteFailed


def ogr_destination(dest: str) -> tuple[str, str | None]:
    """(file path, layer name) of a destination; "ogr:dbname='x.gpkg' table="t" (geom)" included."""
    if dest.startswith("ogr:"):
        m = re.search(r"dbname='([^']*)'", dest) or re.search(r"dbname=(\S+)", dest)
        t = re.search(r'table="([^"]*)"', dest) or re.search(r"table=(\S+)", dest)
        if m:
            return m.group(1), (t.group(1) if t else None)
    path, _, rest = dest.partition("|")
    name = re.search(r"layername=([^|]+)", rest)
    return path, (name.group(1) if name else None)


EXTENSION_DRIVERS = {".geojson": "GeoJSON", ".json": "GeoJSON", ".fgb": "FlatGeobuf", ".gml": "GML",
                      ".kml": "KML", ".sqlite": "SQLite", ".csv": "CSV", ".tab": "MapInfo File",
                      ".mif": "MapInfo File", ".gmt": "OGR_GMT", ".dxf": "DXF"}   # spreadsheets would drop the tiles
# layer options of a converted output: a CSV keeps the tile polygons as WKT (its default drops the geometry)
LAYER_OPTIONS = {"CSV": ["GEOMETRY=AS_WKT"]}


STAGE_PATTERN = r"\.remoteclip_(\d+)_[a-z0-9_]{8}"   # staging folders: .remoteclip_PID_ + mkdtemp's 8 characters


def convert_output(src: str, dest: str, driver: str, layer_name: str | None) -> None:
    """GeoPackage ``src`` -> ``dest`` in ``driver``'s format, written beside it and renamed when complete."""
    from osgeo import gdal

    from ..core.geodata.vectors import remove_dead_temps

    folder = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(folder):
        raise OutputRefused(f"The output folder {folder} does not exist.", "Create it or choose another.", path=folder)
    remove_dead_temps(folder, STAGE_PATTERN)   # left by a run that was killed while converting
    stage = tempfile.mkdtemp(prefix=f".remoteclip_{os.getpid()}_", dir=folder)
    try:
        staged = os.path.join(stage, os.path.basename(dest))
        gdal.UseExceptions()
        opts = gdal.VectorTranslateOptions(format=driver, layerName=layer_name,
                                           layerCreationOptions=LAYER_OPTIONS.get(driver))
        if gdal.VectorTranslate(staged, src, options=opts) is None:
            raise WriteFailed(f"Converting the result to {driver} failed.", "Save it as .gpkg or .shp.")
        stem = os.path.splitext(os.path.basename(dest))[0]
        for name in os.listdir(stage):   # multi-file formats (.tab + .dat + ...) move together
            if name.startswith(stem):
                os.replace(os.path.join(stage, name), os.path.join(folder, name))
    except RuntimeError as e:
        raise WriteFailed(f"Converting the result to {driver} failed: {e}.", "Save it as .gpkg or .shp.") \
            from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)

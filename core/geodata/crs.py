"""Coordinate reference systems, the one place core reads, names, compares and transforms them.

* ``crs_text`` / ``srs_from``: a CRS as the user gives it (``EPSG:n``, ``n``, WKT, anything OSR reads) as
  text, and as an ``osr.SpatialReference`` in GIS axis order (x = easting/longitude), refused with the fix
  when GDAL does not know it; ``gis_order`` sets that order on one made elsewhere;
* ``crs_name`` (EPSG:n or the CRS's name), ``same_crs``, ``require_crs`` (a raster without one is refused);
* ``transformation`` (refused when none is defined), ``wgs84``, ``to_lonlat``;
* ``laea`` / ``equal_area_at``: the Lambert azimuthal equal-area projection on WGS 84 centred on a place,
  where ground areas are measured (the summary's areas, change's tile areas, the accuracy assessment's strata).

GDAL's osr loads inside the functions: importing this module loads no GDAL.
"""

from __future__ import annotations

from ..errors import InvalidInput, gdal_return_codes

__all__ = ["crs_text", "srs_from", "gis_order", "crs_name", "same_crs", "require_crs", "transformation",
           "wgs84", "to_lonlat", "laea", "equal_area_at"]


def crs_text(crs) -> str:
    """A CRS as text that OSR (and QGIS) read: ``n`` or ``"n"`` -> ``"EPSG:n"``, anything else stripped."""
    text = f"EPSG:{crs}" if isinstance(crs, int) else str(crs).strip()
    return f"EPSG:{text}" if text.isdigit() else text


def gis_order(srs):
    """``srs`` with x = easting/longitude, y = northing/latitude (GDAL 3 otherwise follows the authority)."""
    from osgeo import osr

    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


@gdal_return_codes()
def srs_from(crs, what: str = "CRS", param: str | None = None):
    """osr.SpatialReference from WKT / "EPSG:n" / n, with x = easting/longitude axis order; ``param`` names
    the option the CRS came from in the InvalidInput a CRS GDAL does not know raises."""
    from osgeo import osr

    srs = osr.SpatialReference()
    text = crs_text(crs)
    if not text or srs.SetFromUserInput(text) != 0:
        raise InvalidInput(f"The {what} {str(crs)[:80]!r} is not a coordinate reference system GDAL knows.",
                              "Give it as EPSG:XXXX or WKT.", param=param)
    return gis_order(srs)


def crs_name(wkt: str) -> str:
    """A CRS as people name it: EPSG:n when it has an authority code, else its name."""
    srs = srs_from(wkt, "output CRS")
    srs.AutoIdentifyEPSG()
    auth, code = srs.GetAuthorityName(None), srs.GetAuthorityCode(None)
    return f"{auth}:{code}" if auth and code else (srs.GetName() or "custom CRS")


def same_crs(a: str, b: str) -> bool:
    return bool(srs_from(a, "raster's CRS").IsSame(srs_from(b, "output CRS")))


def require_crs(src) -> None:
    """Tiles are placed on a map: a raster without a CRS is refused with the fix."""
    if not getattr(src, "crs_wkt", ""):
        raise InvalidInput(f"Raster {src.name} has no coordinate reference system.",
                              "Assign one first (QGIS: Raster > Projections > Assign Projection; GDAL: "
                              "gdal_edit.py -a_srs EPSG:XXXX FILE), so tiles can be placed on a map.")


@gdal_return_codes()
def transformation(src, dst):
    """osr.CoordinateTransformation from ``src`` to ``dst``, refused with the fix when none is defined."""
    from osgeo import osr

    tr = osr.CoordinateTransformation(src, dst)
    if tr is None:
        raise InvalidInput("No coordinate transformation between the layers' CRSs is defined.",
                           "Reproject one layer to the other's CRS in QGIS first.")
    return tr


def wgs84():
    """WGS 84 longitude/latitude (EPSG:4326) in GIS axis order."""
    from osgeo import osr

    srs = osr.SpatialReference()
    srs.ImportFromEPSG(4326)
    return gis_order(srs)


def to_lonlat(srs, x: float, y: float) -> tuple[float, float]:
    """The point (x, y) of ``srs`` as WGS 84 (longitude, latitude)."""
    lon, lat, _ = transformation(srs, wgs84()).TransformPoint(x, y)
    return lon, lat


def laea(lon: float, lat: float):
    """The Lambert azimuthal equal-area projection on WGS 84 centred on (lon, lat), in metres."""
    from osgeo import osr

    srs = osr.SpatialReference()
    srs.ImportFromProj4(f"+proj=laea +lat_0={lat:.6f} +lon_0={lon:.6f} +x_0=0 +y_0=0 +datum=WGS84 +units=m "
                        "+no_defs")
    return gis_order(srs)


def equal_area_at(srs, lon: float, lat: float):
    """The transformation from ``srs`` into :func:`laea` centred on (lon, lat): areas there are ground areas."""
    return transformation(srs, laea(lon, lat))

"""What a result holds, per class: tiles and ground area, as analysts expect after a classification.

``summarize(records, field, crs_wkt)`` groups a job's per-tile records by ``field`` (label, count,
selected) and returns, per value, the number of tiles and the ground area they cover in square
metres. The area is that of the union of the group's tiles (tiles that overlap, with overlap > 0 or
the last row and column moved inside the raster, are not counted twice), measured in a Lambert
azimuthal equal-area projection centred on the result, so it is the area on the ground whatever the
raster's CRS (degrees, Web Mercator, UTM). ``format_area`` writes it as m², ha or km².
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SummaryRow", "summarize", "format_area", "summary_field"]


@dataclass
class SummaryRow:
    value: object
    n_tiles: int
    area_m2: float | None     # None when the CRS cannot be measured in (no CRS)


def summary_field(records: list[dict]) -> str | None:
    """The field a result's summary groups by: label, count or selected (None for embed)."""
    first = records[0] if records else {}
    return next((f for f in ("label", "count", "selected") if f in first), None)


def summarize(records: list[dict], field: str, crs_wkt: str) -> list[SummaryRow]:
    """Per value of ``field``: tiles and ground area; the most tiles first (ties by value)."""
    from osgeo import ogr

    groups: dict = {}
    for r in records:
        groups.setdefault(r.get(field), []).append(r["geometry"])
    to_area = _equal_area(crs_wkt, [g for gs in groups.values() for g in gs[:1]])
    rows = []
    for value, wkts in groups.items():
        area = None
        if to_area is not None:
            union = ogr.Geometry(ogr.wkbMultiPolygon)
            for wkt in wkts:
                union.AddGeometry(ogr.CreateGeometryFromWkt(wkt))
            merged = union.UnionCascaded()
            merged.Transform(to_area)
            area = float(merged.GetArea())
        rows.append(SummaryRow(value, len(wkts), area))
    return sorted(rows, key=lambda r: (-r.n_tiles, str(r.value)))


def _equal_area(crs_wkt: str, sample_wkts: list[str]):
    """A transformation from the result's CRS to an equal-area projection centred on it, or None."""
    if not crs_wkt or not sample_wkts:
        return None
    from osgeo import ogr

    from .geodata.crs import equal_area_at, srs_from, transformation, wgs84

    try:
        src = srs_from(crs_wkt)
    except Exception:   # no usable CRS: tiles are counted, areas not
        return None
    xs, ys = [], []
    to_geo = transformation(src, wgs84())
    for wkt in sample_wkts:
        c = ogr.CreateGeometryFromWkt(wkt).Centroid()
        c.Transform(to_geo)
        xs.append(c.GetX())
        ys.append(c.GetY())
    return equal_area_at(src, sum(xs) / len(xs), sum(ys) / len(ys))


def format_area(m2: float | None) -> str:
    if m2 is None:
        return "?"
    if m2 < 10_000:
        return f"{m2:,.0f} m²"
    if m2 < 1_000_000:
        return f"{m2 / 10_000:,.2f} ha"
    return f"{m2 / 1_000_000:,.2f} km²"

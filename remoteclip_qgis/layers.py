"""Result layers: load a job's vector file into the project, in a "RemoteCLIP" group, styled.

Each task's ``style`` (core.tasks.Style) says how its layer looks; the renderers:

* ``categories`` (label, classify): by the style's ``field`` (``label``), one colour per class (``class_colors``:
  the same list gets the same colours in every run and project, every two classes distinct as drawn, common
  names in the hue family a reader expects; ``unknown`` is light grey), legend
  entries with tile counts, optional map labels; classify's sample tiles drawn with a thick red outline;
* ``counts`` (count): the count on a sequential ramp, legend entries that name the object ("3 buildings",
  "10 or more buildings" at the largest count), the count written on each tile;
* ``graduated`` (search): the similarity in quantile classes (light to dark), and the tiles inside
  top-k/threshold (``selected`` = 1) drawn with a thick red outline that the legend explains; optionally
  their rank written on them;
* ``outline`` (embed): outlines only.

Also: the dense GeoTIFF of a job (``add_dense_layer``: a pseudocolour heat map of its first band)
and classify's tiles to label next (``add_suggestions_layer``: a temporary layer).

Legends count tiles, also on dissolved layers (whose features carry ``n_tiles``). Result layers are drawn
half transparent as a whole (the layer's opacity, fills opaque): the imagery shows through, and tiles that
overlap (overlap > 0, or the last row and column moved inside the raster) do not draw darker strips.

Used by the dock and by the Processing algorithms (the same look everywhere).
"""

from __future__ import annotations

import json
import os

from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsClassificationQuantile,
    QgsFillSymbol,
    QgsGradientColorRamp,
    QgsGraduatedSymbolRenderer,
    QgsPalLayerSettings,
    QgsProject,
    QgsProperty,
    QgsRendererCategory,
    QgsSymbolLayer,
    QgsTextBufferSettings,
    QgsTextFormat,
    QgsVectorLayer,
    QgsVectorLayerSimpleLabeling,
)
from qgis.PyQt.QtGui import QColor

from .core.errors import InvalidInput, SourceUnreadable, WriteFailed
from .core.prompts import object_nouns
from .core.tasks import TASKS
from .palette import (  # noqa: F401 (the class colours, imported from here by the dock and tests)
    LAYER_OPACITY,
    MIN_DELTA_E,
    NAMED_COLORS,
    PALETTE,
    UNKNOWN,
    UNKNOWN_COLOR,
    class_color,
    class_colors,
    delta_e,
    drawn_lab,
)

KINDS = tuple(TASKS)
GROUP = "RemoteCLIP"
FILL_ALPHA = 255            # fills are opaque; the layer as a whole is drawn at LAYER_OPACITY
HIGHLIGHT = "#d7191c"       # the outline of selected search tiles
COUNT_RAMP = ("#fff5eb", "#7f2704")      # oranges, light to dark
SEARCH_RAMP = ("#f7fcb9", "#004529")     # yellow-green, low to high similarity
HEAT_RAMP = ("#0d0887", "#7e03a8", "#cc4778", "#f89540", "#f0f921")   # plasma: dark (low) to bright (high)
SUGGEST_COLOR = "#ff7f00"
SUGGESTIONS = "label these next"


def layer_uri(path: str, layer_name: str | None = None) -> str:
    """OGR data source for one layer of a GeoPackage (or a Shapefile)."""
    if layer_name and os.path.splitext(path)[1].lower() == ".gpkg":
        return f"{path}|layername={layer_name}"
    return path


def read_metadata(path: str, layer_name: str | None = None) -> dict:
    """The JSON core stored with a result: GeoPackage layer metadata item REMOTECLIP, or the Shapefile's
    NAME.remoteclip.json sidecar (a file of that name without core's marker is ignored)."""
    if os.path.splitext(path)[1].lower() != ".gpkg":
        from .core.geodata.vectors import read_sidecar

        return read_sidecar(path)
    from osgeo import ogr

    ds = ogr.Open(path)
    if ds is None:
        return {}
    lyr = ds.GetLayerByName(layer_name) if layer_name else ds.GetLayer(0)
    text = lyr.GetMetadataItem("REMOTECLIP") if lyr is not None else None
    ds = None
    try:
        meta = json.loads(text) if text else {}
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def read_field_map(path: str, layer_name: str | None = None) -> dict[str, str]:
    """``p_<slug>`` field -> class name, as core stored it with the result."""
    fields = read_metadata(path, layer_name).get("fields")
    return {str(k): str(v) for k, v in fields.items()} if isinstance(fields, dict) else {}


def source_of(layer: QgsVectorLayer) -> tuple[str, str | None]:
    """(file path, GeoPackage layer name or None) behind an OGR layer."""
    from qgis.core import QgsProviderRegistry

    parts = QgsProviderRegistry.instance().decodeUri("ogr", layer.source())
    return parts.get("path") or "", parts.get("layerName") or None


def add_result_layer(result_or_path, kind: str, name: str | None = None, group_name: str = GROUP,
                     project: QgsProject | None = None, field_map: dict[str, str] | None = None,
                     show_labels: bool | None = None) -> QgsVectorLayer:
    """Load a job's output (a core JobResult or a .gpkg/.shp path) as a styled layer on top of ``group_name``."""
    if kind not in TASKS:   # the registry now: a task registered after this import is styled too
        raise ValueError(f"kind must be one of {tuple(TASKS)}, not {kind!r}")
    project = project or QgsProject.instance()
    layer_name = None
    if isinstance(result_or_path, str | os.PathLike):
        path = os.fspath(result_or_path)
        if "|layername=" in path:
            path, layer_name = path.split("|layername=", 1)
    else:
        path = result_or_path.output
        layer_name = result_or_path.layer_name
        if field_map is None:
            field_map = dict(getattr(result_or_path, "field_map", None) or {})
        if not path:
            raise InvalidInput("The job wrote no file, so there is nothing to add to the map.",
                                  "Give the job an output (.gpkg or .shp).")
    if not os.path.isfile(path):
        raise SourceUnreadable(f"The result file {path} does not exist.", "Run the job again.", path=path)
    if field_map is None:
        field_map = read_field_map(path, layer_name)

    layer = QgsVectorLayer(layer_uri(path, layer_name), name or layer_name or os.path.basename(path), "ogr")
    if not layer.isValid():
        raise SourceUnreadable(f"QGIS cannot open the result {path} (layer {layer_name}).",
                              "Open it with Layer > Add Layer > Add Vector Layer to see GDAL's message.", path=path)
    style_layer(layer, kind, field_map, show_labels=show_labels)
    if project.addMapLayer(layer, False) is None:
        raise WriteFailed(f"QGIS refused to add the result layer {layer.name()!r} to the project.",
                              f"Add {path} by hand (Layer > Add Layer > Add Vector Layer).", path=path)
    root = project.layerTreeRoot()
    group = root.findGroup(group_name) or root.insertGroup(0, group_name)
    group.insertLayer(0, layer)
    return layer


# -------------------------------------------------------------------------------------------- styles

def style_layer(layer: QgsVectorLayer, kind: str, field_map: dict[str, str] | None = None,
                show_labels: bool | None = None) -> None:
    """Give ``layer`` the renderer (and labels) its task's style asks for; see the module docstring."""
    if kind not in TASKS:   # the registry now: a task registered after this import is styled too
        raise ValueError(f"kind must be one of {tuple(TASKS)}, not {kind!r}")
    style = TASKS[kind].style
    field_map = field_map or {}
    names = set(layer.fields().names())
    for fname, cls in field_map.items():
        idx = layer.fields().indexOf(fname)
        if idx >= 0:
            layer.setFieldAlias(idx, f"P({cls})")
    meta = read_metadata(*source_of(layer)) if layer.providerType() == "ogr" else {}
    shown = style.map_labels_default if show_labels is None else bool(show_labels)
    if style.field in names and style.renderer == "categories":
        layer.setRenderer(label_renderer(layer, style.field, list(field_map.values()), _highlight(style, names)))
    elif style.field in names and style.renderer == "counts":
        layer.setRenderer(count_renderer(layer, meta.get("object"), meta.get("max_count")))
    elif style.field in names and style.renderer == "graduated":
        layer.setRenderer(search_renderer(layer, top_k=meta.get("top_k"), threshold=meta.get("threshold"),
                                          highlight=_highlight(style, names), stand_out=meta.get("stand_out")))
    else:
        # embed, or a dissolved layer that lost the field to style by
        symbol = _fill("#000000", alpha=0, stroke="#ffd400", stroke_width=0.3)
        from qgis.core import QgsSingleSymbolRenderer

        layer.setRenderer(QgsSingleSymbolRenderer(symbol))
        layer.setLabelsEnabled(False)
        layer.setOpacity(1.0)
        layer.triggerRepaint()
        return
    layer.setOpacity(LAYER_OPACITY)
    _set_labels(layer, style.map_labels, shown and bool(style.map_labels))
    layer.triggerRepaint()


def _highlight(style, names) -> str | None:
    """The style's highlight expression, if the layer has the fields it reads."""
    import re

    expr = style.highlight
    if not expr:
        return None
    return expr if all(f in names for f in re.findall(r'"([^"]+)"', expr)) else None


def _outline(symbol, expression: str | None) -> None:
    """Tiles where ``expression`` holds get a thick red outline."""
    if not expression:
        return
    sl = symbol.symbolLayer(0)
    sl.setDataDefinedProperty(QgsSymbolLayer.Property.PropertyStrokeWidth,
                              QgsProperty.fromExpression(f"if({expression}, 0.8, 0.1)"))
    sl.setDataDefinedProperty(QgsSymbolLayer.Property.PropertyStrokeColor,
                              QgsProperty.fromExpression(f"if({expression}, '{HIGHLIGHT}', '#ffffff')"))


def _fill(color: str, alpha: int = FILL_ALPHA, stroke: str = "#ffffff", stroke_width: float = 0.15) -> QgsFillSymbol:
    fill = QColor(color)
    line = QColor(stroke)
    return QgsFillSymbol.createSimple({
        "color": f"{fill.red()},{fill.green()},{fill.blue()},{alpha}",
        "outline_color": f"{line.red()},{line.green()},{line.blue()},255",
        "outline_width": str(stroke_width), "outline_width_unit": "MM"})


def legend_colors(layer) -> dict[str, str]:
    """Class -> fill colour of a layer drawn by categories (what its legend shows); empty for other renderers."""
    renderer = layer.renderer() if layer is not None else None
    if not isinstance(renderer, QgsCategorizedSymbolRenderer):
        return {}
    return {str(cat.value()): cat.symbol().color().name() for cat in renderer.categories()}


def _unique(layer: QgsVectorLayer, field: str) -> list:
    idx = layer.fields().indexOf(field)
    return [v for v in layer.uniqueValues(idx) if v is not None and v != ""] if idx >= 0 else []


def _counts(layer: QgsVectorLayer, field: str) -> dict:
    """Tiles per value of ``field``: features, or on a dissolved layer the sum of their ``n_tiles``."""
    counts: dict = {}
    idx = layer.fields().indexOf(field)
    n_idx = layer.fields().indexOf("n_tiles")
    from qgis.core import QgsFeatureRequest

    wanted = [idx] + ([n_idx] if n_idx >= 0 else [])
    req = QgsFeatureRequest().setFlags(QgsFeatureRequest.Flag.NoGeometry).setSubsetOfAttributes(wanted)
    for f in layer.getFeatures(req):
        v = f.attribute(idx)
        n = f.attribute(n_idx) if n_idx >= 0 else 1
        counts[v] = counts.get(v, 0) + (int(n) if isinstance(n, int | float) and n > 0 else 1)
    return counts


def _tiles(n: int) -> str:
    return f"{n} tile{'s' if n != 1 else ''}"


def label_renderer(layer: QgsVectorLayer, field: str, classes: list[str], highlight: str | None = None
                   ) -> QgsCategorizedSymbolRenderer:
    """One category per class present in ``field`` (the task's ``Style.field``), in label-list order, legend
    'class (n tiles)'; tiles where ``highlight`` holds (classify's samples) get a thick red outline."""
    present = _counts(layer, field)
    order = [c for c in classes if c in present]
    order += sorted(str(v) for v in present if v not in order and v != UNKNOWN)
    if UNKNOWN in present:
        order.append(UNKNOWN)
    colors = class_colors([*classes, *order])
    cats = []
    for c in order:
        symbol = _fill(colors[c])
        _outline(symbol, highlight)
        cats.append(QgsRendererCategory(c, symbol, f"{c} ({_tiles(present.get(c, 0))})"))
    return QgsCategorizedSymbolRenderer(field, cats)


def _ramp_color(a: str, b: str, t: float) -> QColor:
    return QgsGradientColorRamp(QColor(a), QColor(b)).color(min(max(t, 0.0), 1.0))


def count_label(value: int, object_name: str | None, max_count: int | None) -> str:
    """'1 building', '3 buildings', and at the largest count the model can tell, '10 or more buildings'
    (the count task's own words: its result summary says the same)."""
    from .core.tasks import CountTask

    return CountTask.count_text(value, object_name, max_count)


COUNT_CATEGORIES = 8   # more distinct counts than this are grouped into ranges


def count_renderer(layer: QgsVectorLayer, object_name: str | None = None, max_count: int | None = None):
    """The count light to dark, legend entries that name the object and its tiles: one per count, or ranges
    ("4–6 buildings") when there are more than COUNT_CATEGORIES counts; the largest count the task could
    give reads "N or more"."""
    present = {int(v): n for v, n in _counts(layer, "count").items() if v is not None}
    values = sorted(present)
    hi = max([*values, int(max_count or 0), 1])

    def color(v: float) -> str:
        return _ramp_color(*COUNT_RAMP, 0.15 + 0.85 * v / hi).name()

    if len(values) <= COUNT_CATEGORIES:
        cats = [QgsRendererCategory(v, _fill(color(v)), f"{count_label(v, object_name, max_count)} "
                                                        f"({_tiles(present[v])})") for v in values]
        return QgsCategorizedSymbolRenderer("count", cats)
    from qgis.core import QgsRendererRange

    bins = _count_bins(values, COUNT_CATEGORIES - 2)
    ranges = []
    for lo, up in bins:
        n = sum(present[v] for v in values if lo <= v <= up)
        if lo == up:
            text = count_label(lo, object_name, max_count)
        else:
            one, many = object_nouns(object_name)
            top = count_label(up, object_name, max_count)
            text = f"{lo}–{top}" if "or more" in top else f"{lo}–{up} {many}"
        ranges.append(QgsRendererRange(lo - 0.5, up + 0.5, _fill(color((lo + up) / 2)), f"{text} ({_tiles(n)})"))
    return QgsGraduatedSymbolRenderer("count", ranges)


def _count_bins(values: list[int], n_bins: int) -> list[tuple[int, int]]:
    """Consecutive ranges of the counts present, about equally filled, the largest count alone."""
    if len(values) <= n_bins:
        return [(v, v) for v in values]
    *rest, last = values
    size = -(-len(rest) // (n_bins - 1))
    return [(chunk[0], chunk[-1]) for chunk in (rest[i:i + size] for i in range(0, len(rest), size))] + [(last, last)]


def search_renderer(layer: QgsVectorLayer, classes: int = 5, top_k: int | None = None,
                    threshold: float | None = None, highlight: str | None = '"selected" = 1',
                    stand_out: float | None = None):
    """Similarity in quantile classes, light to dark; tiles where ``highlight`` holds (inside top-k/threshold)
    drawn on top with a thick red outline, a legend entry of its own saying what it marks."""
    from qgis.core import QgsRuleBasedRenderer

    graduated = QgsGraduatedSymbolRenderer("similarity")
    graduated.setSourceSymbol(_fill(SEARCH_RAMP[1]))
    graduated.setSourceColorRamp(QgsGradientColorRamp(QColor(SEARCH_RAMP[0]), QColor(SEARCH_RAMP[1])))
    graduated.setClassificationMethod(QgsClassificationQuantile())
    n = min(classes, max(len(_unique(layer, "similarity")), 1))
    graduated.updateClasses(layer, n)
    graduated.classificationMethod().setLabelPrecision(3)
    graduated.updateRangeLabels()
    root = QgsRuleBasedRenderer.Rule(None)
    ranges = graduated.ranges()
    for i, r in enumerate(ranges):
        op = ">=" if i == 0 else ">"
        rule = QgsRuleBasedRenderer.Rule(r.symbol().clone(), 0, 0, f'"similarity" {op} {r.lowerValue()!r} AND "similarity" <= '
                                         f'{r.upperValue()!r}', f"similarity {r.label()}")
        root.appendChild(rule)
    if highlight and "selected" in layer.fields().names():
        outline = _fill("#000000", alpha=0, stroke=HIGHLIGHT, stroke_width=0.9)
        outline.symbolLayer(0).setRenderingPass(1)   # over every fill, also the neighbours' drawn later
        root.appendChild(QgsRuleBasedRenderer.Rule(outline, 0, 0, highlight, selection_legend(
            _counts(layer, "selected").get(1, 0), top_k, threshold, stand_out)))
    renderer = QgsRuleBasedRenderer(root)
    renderer.setUsingSymbolLevels(True)
    return renderer


def selection_legend(n_selected: int, top_k: int | None, threshold: float | None,
                     stand_out: float | None = None) -> str:
    """What the red outline marks, as the legend says it (the similarity the selection took, and where it came
    from when the stand-out rule made it)."""
    why = []
    if top_k:
        why.append(f"the best {top_k}")
    if threshold is not None:
        rule = f" (mean + {float(stand_out):g} sd or more)" if stand_out is not None else ""
        why.append(f"similarity ≥ {float(threshold):.3f}{rule}")
    rule = " with ".join(why) if why else "all tiles"
    return f"red outline: selected, {rule} ({_tiles(n_selected)})"


def _set_labels(layer: QgsVectorLayer, expression: str, enabled: bool) -> None:
    if not enabled:
        layer.setLabelsEnabled(False)
        return
    settings = QgsPalLayerSettings()
    settings.fieldName = expression
    settings.isExpression = True
    settings.placement = QgsPalLayerSettings.Placement.OverPoint
    fmt = QgsTextFormat()
    fmt.setSize(8)
    _set_color(fmt, "#202020")
    buf = QgsTextBufferSettings()
    buf.setEnabled(True)
    buf.setSize(0.8)
    _set_color(buf, "#ffffff")
    fmt.setBuffer(buf)
    settings.setFormat(fmt)
    layer.setLabeling(QgsVectorLayerSimpleLabeling(settings))
    layer.setLabelsEnabled(True)


def _set_color(obj, color: str) -> None:
    obj.setColor(QColor(color))  # noqa: QGS202 (text format and buffer colour setters return nothing)


# ------------------------------------------------------------------------------------------ dense maps

def add_dense_layer(path: str, kind: str, name: str, group_name: str = GROUP, project: QgsProject | None = None,
                    band: int = 1):
    """Load a job's dense GeoTIFF (``--raster-output``) as a heat map below the newest result layer: a
    pseudocolour ramp over ``band`` (the first class's probability, or the search similarity), from 0 to 1
    for probabilities and over the data's range for similarities, partly transparent over the imagery."""
    from qgis.core import QgsRasterLayer

    project = project or QgsProject.instance()
    layer = QgsRasterLayer(path, name, "gdal")
    if not layer.isValid():
        raise SourceUnreadable(f"QGIS cannot open the heat map {path}.", "Open it with Layer > Add Raster Layer "
                                                                        "to see GDAL's message.", path=path)
    from osgeo import gdal

    ds = gdal.Open(path)
    desc = ds.GetRasterBand(band).GetDescription() if ds is not None and ds.RasterCount >= band else ""
    ds = None
    if desc:
        layer.setName(f"{name} ({desc})")
    style_dense_layer(layer, kind, band)
    if project.addMapLayer(layer, False) is None:
        raise WriteFailed(f"QGIS refused to add the heat map {layer.name()!r} to the project.",
                              f"Add {path} by hand (Layer > Add Layer > Add Raster Layer).", path=path)
    root = project.layerTreeRoot()
    group = root.findGroup(group_name) or root.insertGroup(0, group_name)
    group.insertLayer(min(1, len(group.children())), layer)
    return layer


def style_dense_layer(layer, kind: str, band: int = 1) -> None:
    from qgis.core import (
        QgsColorRampShader,
        QgsRasterBandStats,
        QgsRasterShader,
        QgsSingleBandPseudoColorRenderer,
    )

    rng = TASKS[kind].style.dense_range if kind in TASKS else None
    if rng is None:
        stats = layer.dataProvider().bandStatistics(band, QgsRasterBandStats.Stats.Min | QgsRasterBandStats.Stats.Max)
        rng = (stats.minimumValue, stats.maximumValue)
    lo, hi = float(rng[0]), float(rng[1])
    if not hi > lo:
        hi = lo + 1e-6
    ramp = QgsColorRampShader(lo, hi)
    ramp.setColorRampType(QgsColorRampShader.Type.Interpolated)
    n = len(HEAT_RAMP) - 1
    values = [lo + (hi - lo) * i / n for i in range(n + 1)]
    ramp.setColorRampItemList([QgsColorRampShader.ColorRampItem(v, QColor(c), f"{v:.2f}")
                               for v, c in zip(values, HEAT_RAMP, strict=True)])
    shader = QgsRasterShader()
    shader.setRasterShaderFunction(ramp)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), band, shader)
    renderer.setClassificationMin(lo)
    renderer.setClassificationMax(hi)
    layer.setRenderer(renderer)
    layer.setOpacity(0.7)   # the imagery shows through
    layer.triggerRepaint()


# ------------------------------------------------------------------------------------- suggestions

def add_suggestions_layer(result, title: str = "", group_name: str = GROUP, project: QgsProject | None = None):
    """classify's tiles to label next (records with ``suggest`` > 0) as a temporary layer "label these next",
    most uncertain first, each with its rank written on it."""
    from qgis.core import QgsCoordinateReferenceSystem, QgsFeature, QgsGeometry, QgsSingleSymbolRenderer

    project = project or QgsProject.instance()
    picks = sorted((r for r in result.records if r.get("suggest")), key=lambda r: r["suggest"])
    fields = "&".join(f"field={n}:{t}" for n, t in (("suggest", "integer"), ("row", "integer"), ("col", "integer"),
                                                   ("label", "string"), ("score", "double"),
                                                   ("uncertainty", "double")))
    layer = QgsVectorLayer(f"Polygon?{fields}", SUGGESTIONS if not title else f"{SUGGESTIONS} · {title}", "memory")
    layer.setCrs(QgsCoordinateReferenceSystem.fromWkt(result.crs_wkt))
    provider = layer.dataProvider()
    feats = []
    for r in picks:
        f = QgsFeature(layer.fields())
        f.setGeometry(QgsGeometry.fromWkt(r["geometry"]))
        f.setAttributes([int(r["suggest"]), int(r["row"]), int(r["col"]), str(r["label"]), float(r["score"]),
                         float(r["uncertainty"])])
        feats.append(f)
    if not provider.addFeatures(feats)[0]:
        raise WriteFailed("QGIS could not hold the suggested tiles in a temporary layer.",
                              "Read them from the result layer: the field suggest ranks them.")
    layer.updateExtents()
    layer.setRenderer(QgsSingleSymbolRenderer(_fill("#000000", alpha=0, stroke=SUGGEST_COLOR, stroke_width=0.8)))
    _set_labels(layer, '"suggest"', True)
    if project.addMapLayer(layer, False) is None:
        raise WriteFailed("QGIS refused to add the layer of tiles to label next.",
                              "Read them from the result layer: the field suggest ranks them.")
    root = project.layerTreeRoot()
    group = root.findGroup(group_name) or root.insertGroup(0, group_name)
    group.insertLayer(0, layer)
    return layer

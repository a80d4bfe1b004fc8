"""Result layers as a reader sees them in real QGIS: legends that count tiles (also when dissolved) and
name the counted object, a search legend that explains its red outline, class colours that belong to the
name, and layers drawn so the imagery shows through without darker strips where tiles overlap (rendered
with QGIS's map renderer over the real Kampala mosaic)."""

from __future__ import annotations

import pytest

KAMPALA = "orthomosaic/kampala_oam_z20_mosaic_1536x1024.tif"


def _grid_records(src_path, size: int, values: dict[tuple[int, int], dict], edge: str = "shift") -> tuple:
    """Records for the tiles (row, col) -> fields of a real grid of the raster."""
    from remoteclip_qgis.core.geodata.raster import open_raster
    from remoteclip_qgis.core.geodata.tiles import TileSpec, make_grid

    src = open_raster(str(src_path))
    try:
        grid = {(t.row, t.col): t for t in make_grid(src, TileSpec(size=size, edge=edge))}
        crs = src.crs_wkt
    finally:
        src.close()
    return [{"row": r, "col": c, **v, "geometry": grid[(r, c)].polygon_wkt} for (r, c), v in values.items()], crs


def _write(tmp_path, name, records, fields, crs, dissolve_by=None, metadata=None) -> str:
    from remoteclip_qgis.core.geodata.vectors import Field, write_vector

    path = tmp_path / f"{name}.gpkg"
    write_vector(str(path), records, [Field(n, t) for n, t in fields], crs, layer_name=name,
                 dissolve_by=dissolve_by, metadata=metadata)
    return f"{path}|layername={name}"


def _legend(layer) -> list[str]:
    return [item.label() for item in layer.renderer().legendSymbolItems()]


@pytest.fixture
def mosaic(data_dir):
    return data_dir / KAMPALA


# ----------------------------------------------------------------------------------------- legends

def test_a_dissolved_label_layer_counts_tiles_from_n_tiles(rc, qgis_new_project, mosaic, tmp_path):
    """32 building tiles in one block dissolve into one polygon: its legend says 32 tiles, not 1."""
    from remoteclip_qgis.layers import add_result_layer

    values = {(r, c): {"label": "buildings", "score": 0.9} for r in range(4) for c in range(8)}
    values.update({(6, 0): {"label": "grass", "score": 0.6}, (6, 5): {"label": "grass", "score": 0.7}})
    records, crs = _grid_records(mosaic, 128, values)
    uri = _write(tmp_path, "labels", records, [("row", "int"), ("col", "int"), ("label", "str"), ("score", "float")],
                 crs, dissolve_by="label")
    layer = add_result_layer(uri, "label", "dissolved")
    assert sorted(f["n_tiles"] for f in layer.getFeatures()) == [1, 1, 32]
    assert _legend(layer) == ["buildings (32 tiles)", "grass (2 tiles)"]
    # not dissolved: one feature per tile, the same legend
    plain = add_result_layer(_write(tmp_path, "plain", records, [("row", "int"), ("col", "int"), ("label", "str"),
                                                                  ("score", "float")], crs), "label", "plain")
    assert _legend(plain) == ["buildings (32 tiles)", "grass (2 tiles)"]


def test_class_layers_are_drawn_by_the_field_their_task_s_style_names(rc, qgis_new_project, mosaic, tmp_path):
    """A task whose classes are in another field than ``label`` (Style.field) gets its categories and legend
    from that field; the ``label`` field beside it is not read."""
    from dataclasses import dataclass
    from typing import ClassVar

    from remoteclip_qgis.core.tasks import TASKS, Style, Task, register
    from remoteclip_qgis.layers import add_result_layer

    @dataclass
    class ZoneTask(Task):
        kind: ClassVar[str] = "zone"
        style: ClassVar[Style] = Style("categories", "zone")

    values = {(0, c): {"zone": "harbour" if c < 3 else "market", "label": "water"} for c in range(5)}
    records, crs = _grid_records(mosaic, 128, values)
    uri = _write(tmp_path, "zones", records, [("row", "int"), ("col", "int"), ("zone", "str"), ("label", "str")], crs)
    register(ZoneTask)
    try:
        layer = add_result_layer(uri, "zone", "zones")
    finally:
        del TASKS["zone"]
    assert layer.renderer().classAttribute() == "zone"
    assert _legend(layer) == ["harbour (3 tiles)", "market (2 tiles)"]


def test_count_legends_name_the_object_and_the_cap(rc, qgis_new_project, mosaic, tmp_path):
    from remoteclip_qgis.layers import add_result_layer

    counts = {(0, 0): 2, (0, 1): 7, (0, 2): 8, (0, 3): 10, (1, 0): 10, (1, 1): 1}
    records, crs = _grid_records(mosaic, 128, {k: {"count": v, "count_conf": 0.5} for k, v in counts.items()})
    fields = [("row", "int"), ("col", "int"), ("count", "int"), ("count_conf", "float")]
    meta = {"object": "building", "max_count": 10}
    layer = add_result_layer(_write(tmp_path, "count", records, fields, crs, metadata=meta), "count", "count")
    assert _legend(layer) == ["1 building (1 tile)", "2 buildings (1 tile)", "7 buildings (1 tile)",
                              "8 buildings (1 tile)", "10 or more buildings (2 tiles)"]
    # typed in the plural, and dissolved (the two 10s touch): the same words, tiles from n_tiles
    meta = {"object": "storage tanks", "max_count": 10}
    layer = add_result_layer(_write(tmp_path, "tanks", records, fields, crs, dissolve_by="count", metadata=meta),
                             "count", "tanks")
    assert _legend(layer)[0] == "1 storage tank (1 tile)"
    assert _legend(layer)[-1] == "10 or more storage tanks (2 tiles)"
    # many counts: ranges, the cap alone
    many = {(r, c): {"count": 1 + (r * 8 + c) % 20, "count_conf": 0.5} for r in range(3) for c in range(8)}
    records, crs = _grid_records(mosaic, 128, many)
    layer = add_result_layer(_write(tmp_path, "cars", records, fields, crs, metadata={"object": "car", "max_count": 20}),
                             "count", "cars")
    legend = _legend(layer)
    assert layer.renderer().type() == "graduatedSymbol" and len(legend) <= 8
    assert legend[0].startswith("1–") and " cars (" in legend[0]
    assert legend[-1] == "20 or more cars (1 tile)"
    assert sum(int(t.split("(")[1].split()[0]) for t in legend) == 24


def test_a_count_run_stores_what_its_legend_needs(rc, qgis_new_project, mosaic, tiny_bundle, tmp_path):
    from remoteclip_qgis.core.pipeline import CountTask, Job, RunOptions, TileSpec, run_job
    from remoteclip_qgis.layers import add_result_layer

    res = run_job(Job(raster=str(mosaic), task=CountTask("ship", max_count=3), tiles=TileSpec(size=512),
                      run=RunOptions(model=str(tiny_bundle), cache_dir=""), output=str(tmp_path / "ships.gpkg")))
    layer = add_result_layer(res, "count", "ships")
    legend = _legend(layer)
    assert legend and all(" ship" in t for t in legend), legend
    assert all(t.startswith("3 or more ships") for t in legend if t.startswith("3 "))


def test_the_search_legend_explains_the_red_outline(rc, qgis_new_project, mosaic, tmp_path):
    from remoteclip_qgis.layers import add_result_layer

    sims = {(r, c): 0.1 + 0.01 * (r * 12 + c) for r in range(2) for c in range(12)}
    ranked = sorted(sims, key=sims.get, reverse=True)
    values = {k: {"similarity": v, "rank": ranked.index(k) + 1, "selected": int(ranked.index(k) < 5)}
              for k, v in sims.items()}
    records, crs = _grid_records(mosaic, 128, values)
    fields = [("row", "int"), ("col", "int"), ("similarity", "float"), ("rank", "int"), ("selected", "int")]
    layer = add_result_layer(_write(tmp_path, "search", records, fields, crs,
                                    metadata={"query": "a red roof", "top_k": 5, "threshold": 0.2}), "search", "s")
    legend = _legend(layer)
    assert legend[-1] == "red outline: selected, the best 5 with similarity ≥ 0.200 (5 tiles)"
    assert len(legend) == 6 and all(t.startswith("similarity ") for t in legend[:-1])
    outline = [r for r in layer.renderer().rootRule().children() if r.filterExpression() == '"selected" = 1']
    assert len(outline) == 1 and outline[0].symbol().color().alpha() == 0


# ------------------------------------------------------------------------------------------ colours

TYPED_LISTS = [
    ["water", "trees", "dense residential area", "sparse residential area", "road", "bare soil", "grass"],
    ["resident", "grass", "trees", "road"],                       # classify samples typed by an analyst
    ["buildings", "swimming pool", "tennis court", "trees", "road", "parking lot", "bare soil", "water", "grass",
     "farmland", "shadow", "cars"],                               # twelve classes
    ["river", "lake", "sea", "pond", "reservoir"],                 # one family only
]


def _all_lists():
    from core.prompts import PRESETS

    return [*PRESETS.values(), *TYPED_LISTS]


def test_every_two_classes_of_a_layer_look_different_as_drawn(rc):
    """Pairwise CIE76 delta-E of the fills as drawn (LAYER_OPACITY over white), unknown's grey included, over every
    preset and typed lists: the urban preset had three near-identical reds and two classes of one colour."""
    import itertools

    from remoteclip_qgis.layers import LAYER_OPACITY, MIN_DELTA_E, class_colors, delta_e

    assert MIN_DELTA_E >= 20 and LAYER_OPACITY == 0.5
    for classes in _all_lists():
        colors = class_colors(classes)
        for a, b in itertools.combinations(colors, 2):
            assert delta_e(colors[a], colors[b]) >= MIN_DELTA_E, (classes, a, colors[a], b, colors[b])
    # the measure itself: the same colour is 0, black and white as drawn at 50 % are far apart, and the urban
    # preset's old reds (#bd5549, #f2414e, #cf7469) were well under the rule
    assert delta_e("#cf7469", "#cf7469") == 0
    assert delta_e("#000000", "#ffffff") > 40
    assert max(delta_e(a, b) for a, b in itertools.combinations(["#bd5549", "#f2414e", "#cf7469"], 2)) < MIN_DELTA_E


def test_common_names_keep_their_colour_family_and_a_list_its_colours(rc):
    from remoteclip_qgis.layers import UNKNOWN, UNKNOWN_COLOR, class_color, class_colors

    land = class_colors(["buildings", "road", "trees", "water", "bare soil"])
    assert (land["water"], land["trees"], land["buildings"], land["road"]) == ("#3a7dc9", "#2e7d32", "#e15759",
                                                                                "#5f5f5f")
    assert land[UNKNOWN] == UNKNOWN_COLOR
    # the same list (whatever its order, case or spacing) gets the same colours: pinned, so no per-process seed
    urban = class_colors(["dense residential area", "industrial area", "road", "park"])
    typed = class_colors(["Park", "road", "industrial  area", "dense residential area"])
    assert (typed["Park"], typed["industrial  area"]) == (urban["park"], urban["industrial area"])
    again = class_colors(["park", "road", "industrial area", "dense residential area"])
    assert again == urban
    assert class_colors(["Parking  Lot"])["Parking  Lot"] == class_color("parking lot")
    # a family's other names take a tone of its hue: the residential classes stay red-ish, the water classes blue
    from qgis.PyQt.QtGui import QColor

    def hue(c):
        return QColor(c).hslHue()

    assert hue(urban["dense residential area"]) in range(0, 20) or hue(urban["dense residential area"]) > 330
    waters = class_colors(["river", "lake", "sea"])
    assert all(180 <= hue(waters[c]) <= 260 for c in ("river", "lake", "sea")), waters
    assert len({waters[c] for c in ("river", "lake", "sea")}) == 3


# ------------------------------------------------------------------------------------------ drawing

def _render(layers, extent, size=(768, 512)):
    from qgis.core import QgsMapRendererSequentialJob, QgsMapSettings
    from qgis.PyQt.QtCore import QSize
    from qgis.PyQt.QtGui import QColor

    settings = QgsMapSettings()
    settings.setLayers(layers)
    settings.setDestinationCrs(layers[-1].crs())
    settings.setExtent(extent)
    settings.setOutputSize(QSize(*size))
    settings.setBackgroundColor(QColor("white"))
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    return job.renderedImage()


def _gray(image, x0, y0, x1, y1):
    import numpy as np
    from qgis.PyQt.QtGui import QColor

    return np.array([[QColor(image.pixel(x, y)).lightness() for x in range(x0, x1)] for y in range(y0, y1)], float)


@pytest.mark.parametrize("kind", ["search", "label"])
def test_the_imagery_shows_through_a_result_layer(rc, qgis_new_project, mosaic, tmp_path, kind):
    """Rendered over the mosaic, a tile's pixels still follow the imagery under it (an opaque fill would make
    them one flat colour)."""
    import numpy as np
    from qgis.core import QgsRasterLayer

    from remoteclip_qgis.layers import add_result_layer

    raster = QgsRasterLayer(str(mosaic), "mosaic")
    values = {(r, c): ({"similarity": 0.1 * c, "rank": 12 - c, "selected": int(c > 8)} if kind == "search"
                       else {"label": "buildings" if c % 2 else "parking lot", "score": 0.5})
              for r in range(8) for c in range(12)}
    records, crs = _grid_records(mosaic, 128, values)
    fields = ([("similarity", "float"), ("rank", "int"), ("selected", "int")] if kind == "search"
              else [("label", "str"), ("score", "float")])
    layer = add_result_layer(_write(tmp_path, kind, records, [("row", "int"), ("col", "int"), *fields], crs),
                             kind, kind)
    under = _gray(_render([raster], raster.extent()), 20, 20, 700, 490)
    over = _gray(_render([layer, raster], raster.extent()), 20, 20, 700, 490)
    corr = np.corrcoef(under.ravel(), over.ravel())[0, 1]
    assert corr > 0.5, f"the imagery is hidden (correlation {corr:.2f})"
    assert np.abs(over - under).mean() > 5, "the layer is not drawn at all"


def test_overlapping_edge_tiles_draw_no_darker_strip(rc, qgis_new_project, mosaic, tmp_path):
    """400 px tiles on the 1536 px mosaic: the last column is moved inside the raster and overlaps its
    neighbour by 64 px. With one class everywhere, the overlap looks like the rest of the tile."""
    from qgis.core import QgsRasterLayer

    from remoteclip_qgis.layers import add_result_layer

    raster = QgsRasterLayer(str(mosaic), "mosaic")
    values = {(r, c): {"label": "buildings", "score": 0.5} for r in range(3) for c in range(4)}
    records, crs = _grid_records(mosaic, 400, values)
    uri = _write(tmp_path, "edge", records, [("row", "int"), ("col", "int"), ("label", "str"), ("score", "float")], crs)
    layer = add_result_layer(uri, "label", "edge")
    image = _render([layer], raster.extent(), size=(1536, 1024))
    # x 1136..1200 is covered by the tiles of columns 2 and 3; 1000..1100 by column 2 alone
    strip = _gray(image, 1150, 100, 1190, 300).mean()
    single = _gray(image, 1020, 100, 1100, 300).mean()
    assert abs(strip - single) < 2, f"the overlap is darker ({strip:.0f} vs {single:.0f})"

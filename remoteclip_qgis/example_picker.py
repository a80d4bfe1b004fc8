"""Search by example on the map: the Search tab's "Pick on the map" buttons and their map tool.

A click on the canvas picks the tile under it (core.examples.tile_at on the raster's own grid at the panel's tile
size and overlap, core.examples.raster_grid); a click on a picked tile removes it. A pick is the tile's centre
point in the raster's CRS, and the picks of each kind (like, unlike) reach the job as core's Examples, the path a
layer of example points takes (core.tasks.search); the outlines drawn are the tiles core's rule picks for those
points (core.examples.tiles_of). The picks are cleared when the raster, the tile size, its unit or the overlap
change (a pick is a tile of one grid).
"""

from __future__ import annotations

from qgis.core import QgsCoordinateTransform, QgsGeometry, QgsProject, QgsWkbTypes
from qgis.gui import QgsMapTool, QgsRubberBand
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtGui import QColor
from qgis.PyQt.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from .core.errors import InvalidInput, RemoteClipError

LIKE, UNLIKE = "like", "unlike"
COLORS = {LIKE: QColor(0, 160, 60), UNLIKE: QColor(200, 30, 30)}
STYLES = {LIKE: Qt.PenStyle.SolidLine, UNLIKE: Qt.PenStyle.DashLine}


class TilePickTool(QgsMapTool):
    """Click: pick (or un-pick) the tile under the cursor; Shift+click picks the other kind."""

    def __init__(self, canvas, picks: ExamplePicks, kind: str):
        super().__init__(canvas)
        self.picks, self.kind = picks, kind
        self.setCursor(Qt.CursorShape.CrossCursor)

    def canvasReleaseEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        if event.button() != Qt.MouseButton.LeftButton:
            return
        kind = self.kind
        if event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
            kind = UNLIKE if kind == LIKE else LIKE
        self.picks.click(event.mapPoint(), kind)

    def deactivate(self) -> None:
        super().deactivate()
        self.picks.tool_off(self)


class ExamplePicks(QWidget):
    """The buttons (pick like, pick unlike, clear), the picks and their outlines on the canvas.

    ``attach(canvas, grid_of)`` makes it work: ``grid_of()`` gives (core.geodata.tiles.TileGrid, the raster's CRS as WKT,
    its QgsCoordinateReferenceSystem) for the panel's raster and tile settings, or raises RemoteClipError."""

    changed = pyqtSignal()
    problem = pyqtSignal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("example_picks")
        self.canvas = None
        self._grid_of = None
        self._grid = None          # (grid, crs_wkt, QgsCoordinateReferenceSystem), made on the first click
        self.picks: dict[tuple[int, int], tuple[str, str]] = {}   # (row, col) -> (kind, centre WKT)
        self.bands: dict[str, QgsRubberBand] = {}
        self.tools: dict[str, TilePickTool] = {}
        col = QVBoxLayout(self)
        col.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        col.addLayout(row)
        self.like_button = QPushButton("Pick like", self)
        self.like_button.setObjectName("pick_like")
        self.like_button.setToolTip("Click tiles on the map to find more like them (click again to remove; "
                                    "Shift+click: less like)")
        self.unlike_button = QPushButton("Pick unlike", self)
        self.unlike_button.setObjectName("pick_unlike")
        self.unlike_button.setToolTip("Click tiles on the map to push the search away from (click again to remove)")
        self.clear_button = QPushButton("Clear", self)
        self.clear_button.setObjectName("pick_clear")
        self.clear_button.setToolTip("Forget the tiles picked on the map")
        for b in (self.like_button, self.unlike_button):
            b.setCheckable(True)
            b.setEnabled(False)
        self.like_button.toggled.connect(lambda on: self._toggle_tool(LIKE, on))
        self.unlike_button.toggled.connect(lambda on: self._toggle_tool(UNLIKE, on))
        self.clear_button.clicked.connect(self.clear)
        self.count_label = QLabel("", self)
        for w in (self.like_button, self.unlike_button):
            row.addWidget(w)
        row.addStretch(1)
        below = QHBoxLayout()   # three buttons side by side are wider than a 300 px dock
        col.addLayout(below)
        below.addWidget(self.count_label)
        below.addStretch(1)
        below.addWidget(self.clear_button)
        self._show_count()

    # ------------------------------------------------------------------------------------- set up

    def attach(self, canvas, grid_of) -> None:
        self.canvas, self._grid_of = canvas, grid_of
        for kind in (LIKE, UNLIKE):
            band = QgsRubberBand(canvas, QgsWkbTypes.GeometryType.PolygonGeometry)
            band.setStrokeColor(COLORS[kind])
            band.setFillColor(QColor(0, 0, 0, 0))
            band.setWidth(3 if kind == LIKE else 2)
            band.setLineStyle(STYLES[kind])
            self.bands[kind] = band
            self.tools[kind] = TilePickTool(canvas, self, kind)
        self.like_button.setEnabled(True)
        self.unlike_button.setEnabled(True)

    def detach(self) -> None:
        for tool in self.tools.values():
            if self.canvas is not None and self.canvas.mapTool() is tool:
                self.canvas.unsetMapTool(tool)
        for band in self.bands.values():
            band.reset(QgsWkbTypes.GeometryType.PolygonGeometry)
            if self.canvas is not None and self.canvas.scene() is not None:
                self.canvas.scene().removeItem(band)
        self.bands, self.tools, self.canvas = {}, {}, None

    def _toggle_tool(self, kind: str, on: bool) -> None:
        if self.canvas is None:
            return
        tool = self.tools[kind]
        if on:
            other = self.unlike_button if kind == LIKE else self.like_button
            other.setChecked(False)
            self.canvas.setMapTool(tool)
        elif self.canvas.mapTool() is tool:
            self.canvas.unsetMapTool(tool)

    def tool_off(self, tool) -> None:
        """Another map tool took over: the buttons say so."""
        for kind, t in self.tools.items():
            if t is tool:
                button = self.like_button if kind == LIKE else self.unlike_button
                button.blockSignals(True)
                button.setChecked(False)
                button.blockSignals(False)

    # ------------------------------------------------------------------------------------- picks

    def reset(self, *_args) -> None:
        """The raster or the tiles changed: the grid is made again and the picks (tiles of the old grid) go."""
        self._grid = None
        self.clear()

    def clear(self) -> None:
        self.picks.clear()
        self._redraw()

    def grid(self):
        if self._grid is None:
            self._grid = self._grid_of()
        return self._grid

    def click(self, point, kind: str) -> bool:
        """A click at ``point`` (the canvas's CRS): picks the tile under it as ``kind``, or removes the pick
        there. False (and ``problem`` says why) when no tile is there."""
        from .core.examples import tile_at, tile_centre_wkt

        try:
            grid, _wkt, crs = self.grid()
        except RemoteClipError as e:
            self.problem.emit(f"{e.problem} {e.fix or ''}".strip())
            return False
        p = QgsCoordinateTransform(self.canvas.mapSettings().destinationCrs(), crs,
                                   QgsProject.instance()).transform(point)
        i = tile_at(grid, p.x(), p.y())
        if i is None:
            self.problem.emit("No tile there: click on the raster.")
            return False
        (r,), (c,) = grid.rows_cols([i])
        key = (int(r), int(c))
        if key in self.picks:
            del self.picks[key]
        else:
            self.picks[key] = (kind, tile_centre_wkt(grid, i))
        self._redraw()
        return True

    def examples(self, kind: str):
        """The picks of ``kind`` as core.examples.Examples (the tiles' centres in the raster's CRS), or None."""
        from .core.examples import Examples

        picked = [(key, wkt) for key, (k, wkt) in sorted(self.picks.items()) if k == kind]
        if not picked:
            return None
        return Examples([wkt for _, wkt in picked], self.grid()[1], [f"tile {r},{c}" for (r, c), _ in picked],
                        "tiles picked on the map", "", kind)

    def drawn(self, kind: str) -> list:
        """The tile outlines drawn for ``kind`` (QgsGeometry polygons in the canvas's CRS)."""
        band = self.bands.get(kind)
        if band is None or band.numberOfVertices() == 0:
            return []
        return [QgsGeometry.fromPolygonXY(p) for p in band.asGeometry().asMultiPolygon()]

    def _redraw(self) -> None:
        from .core.examples import tiles_of

        for kind, band in self.bands.items():
            band.reset(QgsWkbTypes.GeometryType.PolygonGeometry)
            ex = self.examples(kind)
            if ex is None:
                continue
            grid, wkt, crs = self.grid()
            for i in tiles_of(ex, grid, wkt):
                band.addGeometry(QgsGeometry.fromWkt(grid[int(i)].polygon_wkt), crs, False)  # noqa: QGS202 (QgsRubberBand.addGeometry returns nothing)
            band.updatePosition()
            band.update()
        self._show_count()
        self.changed.emit()

    def _show_count(self) -> None:
        n = {k: sum(1 for kind, _ in self.picks.values() if kind == k) for k in (LIKE, UNLIKE)}
        self.count_label.setText(f"{n[LIKE]} like, {n[UNLIKE]} unlike tiles picked" if any(n.values())
                                 else "none picked")
        self.clear_button.setEnabled(bool(self.picks))


def check_one_source(picked, layer_value, param: str):
    """Examples from the map or from a layer, not both (which would the user mean?)."""
    if picked is not None and layer_value is not None:
        raise InvalidInput(f"Examples ({param}) were both picked on the map and chosen as a layer.",
                           "Clear the tiles picked on the map, or empty the layer picker.", param=param)
    return picked if picked is not None else layer_value

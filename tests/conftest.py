"""Shared fixtures.

The whole session runs inside a real QgsApplication (pytest-qgis starts it,
offscreen). Real data comes from REMOTECLIP_DATA (default ../shared/data beside
the repository). Outside CI a missing data folder skips the tests that need it;
in CI (CI=true) it fails them, as a missing QGIS does.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import io
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _data_dir() -> Path:
    return Path(os.environ.get("REMOTECLIP_DATA", ROOT.parent / "shared" / "data")).resolve()


def require(condition: bool, reason: str) -> None:
    """Skip outside CI, fail in CI: CI must never hide a missing dependency."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: missing dependencies fail instead of skipping)")
    pytest.skip(reason, allow_module_level=True)


@pytest.fixture(scope="session", autouse=True)
def free_layers_before_qgis_exits(qgis_app):
    """Free the QGIS layers that finished frames still hold, while QGIS is up.

    A Python exception raised in a Processing algorithm (called from C++) keeps its traceback, and
    through it every calling frame with its locals (layers, processing contexts), alive past the
    run. Destroyed after exitQgis(), a QgsVectorLayer closes its OGR dataset through a provider
    registry that is gone, and the interpreter segfaults at exit: the suite passes and the run fails.
    """
    yield
    for obj in gc.get_objects():
        if type(obj) is types.FrameType and not obj.f_code.co_flags & inspect.CO_GENERATOR:
            with contextlib.suppress(RuntimeError):  # a frame still executing cannot be cleared
                obj.clear()
    gc.collect()


class CountingSource:
    """A real RasterSource over core.geodata.raster's reader that counts pixel reads (for cache tests)."""

    def __init__(self, path):
        from core.geodata.raster import open_raster

        self._src = open_raster(path)
        self.reads = 0

    def __getattr__(self, name):
        return getattr(self._src, name)

    def read(self, bands, window, out_shape=None):
        self.reads += 1
        return self._src.read(bands, window, out_shape)

    def close(self):
        self._src.close()


def edge_groups(values: dict) -> list[tuple]:
    """Dissolve by hand: (value, number of tiles) per group of same-value grid tiles joined by an edge."""
    seen, out = set(), []
    for start, v in values.items():
        if start in seen:
            continue
        stack, n = [start], 0
        seen.add(start)
        while stack:
            r, c = stack.pop()
            n += 1
            for nb in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                if nb in values and nb not in seen and values[nb] == v:
                    seen.add(nb)
                    stack.append(nb)
        out.append((v, n))
    return sorted(out)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = _data_dir()
    require((path / "README.md").is_file(), f"real test data not found at {path}; set REMOTECLIP_DATA")
    return path


@pytest.fixture
def polygon_layer():
    """Factory: a memory polygon layer (QGIS) holding the given WKT polygons."""

    def make(wkts, crs: str = "EPSG:4326", name: str = "polygons"):
        from qgis.core import QgsFeature, QgsGeometry, QgsVectorLayer

        layer = QgsVectorLayer(f"Polygon?crs={crs}", name, "memory")
        feats = []
        for wkt in wkts:
            f = QgsFeature()
            f.setGeometry(QgsGeometry.fromWkt(wkt))
            feats.append(f)
        assert layer.dataProvider().addFeatures(feats)[0]
        layer.updateExtents()
        return layer

    return make


@pytest.fixture(scope="session")
def palette_tif(data_dir, tmp_path_factory) -> tuple[str, dict]:
    """A one-band colour-table GeoTIFF: the Kampala mosaic's red band as palette indices, with the
    table v -> (v, 255 - v, v // 2). Returns (path, table)."""
    from osgeo import gdal

    table = {v: (v, 255 - v, v // 2) for v in range(256)}
    mem = gdal.Translate("", str(data_dir / "orthomosaic" / "kampala_oam_z20_mosaic_1536x1024.tif"),
                         format="MEM", bandList=[1])
    colors = gdal.ColorTable()
    for v, rgb in table.items():
        colors.SetColorEntry(v, (*rgb, 255))
    band = mem.GetRasterBand(1)
    band.SetRasterColorTable(colors)
    band.SetRasterColorInterpretation(gdal.GCI_PaletteIndex)
    out = tmp_path_factory.mktemp("palette") / "palette.tif"
    gdal.GetDriverByName("GTiff").CreateCopy(str(out), mem)
    return str(out), table


def tiles_sharing_area(raster, geojson, size: int) -> set[tuple[int, int]]:
    """(row, col) of the ``size`` px tiles of ``raster`` (whose sides ``size`` divides) that share area with a
    polygon of ``geojson``, by shapely and rasterio alone; both files in the same CRS, x = lon/easting."""
    import json

    import rasterio
    from shapely.geometry import box, shape

    polys = [shape(f["geometry"]) for f in json.loads(Path(geojson).read_text())["features"]]
    with rasterio.open(raster) as ds:
        t, width, height = ds.transform, ds.width, ds.height
    assert width % size == 0 and height % size == 0
    keep = set()
    for row in range(height // size):
        for col in range(width // size):
            (x0, y0), (x1, y1) = t * (col * size, row * size), t * ((col + 1) * size, (row + 1) * size)
            tile = box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
            if any(p.intersection(tile).area > 0 for p in polys):
                keep.add((row, col))
    return keep


@pytest.fixture(scope="session")
def building_tiles(data_dir) -> set[tuple[int, int]]:
    """(row, col) of the 128 px tiles of the Kampala z20 mosaic (12 x 8 of them) that share area with one of
    the real building outlines (the GeoJSON's CRS84 is the mosaic's EPSG:4326 in x=lon, y=lat order)."""
    folder = data_dir / "orthomosaic"
    return tiles_sharing_area(folder / "kampala_oam_z20_mosaic_1536x1024.tif",
                              folder / "kampala_buildings_z21_chips.geojson", 128)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A tiny random open_clip model exported as an fp32+fp16 bundle (made once per session).

    Where torch cannot be installed (the QGIS matrix chroots, scripts/qgis_matrix.sh) the bundle is
    made on the host by the same function and handed over in REMOTECLIP_TEST_BUNDLE."""
    given = os.environ.get("REMOTECLIP_TEST_BUNDLE")
    if given:
        assert (Path(given) / "manifest.json").is_file(), f"REMOTECLIP_TEST_BUNDLE={given} is not a model bundle"
        return Path(given)
    from training.export import export_tiny_test_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    export_tiny_test_bundle(out)
    return out


@pytest.fixture(scope="session")
def int8_bundle(tmp_path_factory, tiny_bundle) -> Path:
    """The tiny bundle with int8 graphs added (core.runtime.quantize.quantize_bundle), made once per session."""
    from core.runtime.quantize import quantize_bundle

    return quantize_bundle(tiny_bundle, tmp_path_factory.mktemp("bundles") / "tiny-int8")


def save_random_checkpoint(arch: str, path, seed: int = 0, skyclip: bool = False, dtype=None) -> Path:
    """Random open_clip weights (reference_pipeline.trained_looking) saved like RemoteCLIP's release
    (``torch.save(model.state_dict(), path)``), or like SkyCLIP's training checkpoints
    (``{"state_dict": {"module." + key: ...}, "epoch": ...}``); ``dtype`` (e.g. torch.bfloat16) casts the
    floating point tensors first."""
    import open_clip
    import torch

    from training.checkpoints import register_local_configs
    from training.reference_pipeline import trained_looking

    register_local_configs()
    torch.manual_seed(seed)
    sd = trained_looking(open_clip.create_model(arch, pretrained=None).state_dict(), seed)
    if dtype is not None:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    if skyclip:
        torch.save({"epoch": 5, "name": "skyclip-test", "state_dict": {"module." + k: v for k, v in sd.items()}},
                   path)
    else:
        torch.save(sd, path)
    return Path(path)


@pytest.fixture(scope="session")
def real_checkpoint(tmp_path_factory):
    """arch -> checkpoint file with random weights (seed 0), made once per session."""
    cache = {}
    folder = tmp_path_factory.mktemp("checkpoints")

    def get(arch):
        if arch not in cache:
            cache[arch] = save_random_checkpoint(arch, folder / f"RemoteCLIP-{arch}.pt")
        return cache[arch]

    yield get
    shutil.rmtree(folder, ignore_errors=True)  # up to 1.7 GB per architecture


@pytest.fixture(scope="session")
def real_export(tmp_path_factory, real_checkpoint, data_dir):
    """arch -> (bundle folder, printed parity table, exit code) of training.export `--fp16 --verify`, once per
    session."""
    from training.export import main as export_main

    cache = {}
    folder = tmp_path_factory.mktemp("real_bundles")

    def get(arch):
        if arch not in cache:
            out = folder / f"RemoteCLIP-{arch}"
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                rc = export_main(["--arch", arch, "--checkpoint", str(real_checkpoint(arch)), "--out", str(out),
                                  "--fp16", "--verify", "--data", str(data_dir)])
            cache[arch] = (out, buf.getvalue(), rc)
        return cache[arch]

    yield get
    shutil.rmtree(folder, ignore_errors=True)


def check_io_contract(bundle, embed_dim: int) -> None:
    """The bundle's graphs have the documented names, float32/int64 types, a dynamic batch and unit outputs."""
    import numpy as np
    import onnxruntime as ort

    for precision in bundle.precisions:
        s = ort.InferenceSession(str(bundle.graph_path("image", precision)), providers=["CPUExecutionProvider"])
        (i,), (o,) = s.get_inputs(), s.get_outputs()
        assert (i.name, i.type, o.name, o.type) == ("pixel_values", "tensor(float)", "image_embeds", "tensor(float)")
        assert not isinstance(i.shape[0], int)  # dynamic batch
        s = ort.InferenceSession(str(bundle.graph_path("text", precision)), providers=["CPUExecutionProvider"])
        (i,), (o,) = s.get_inputs(), s.get_outputs()
        assert (i.name, i.type, o.name, o.type) == ("input_ids", "tensor(int64)", "text_embeds", "tensor(float)")
        ids = np.zeros((3, 77), np.int64)
        ids[:, 0] = 49406
        ids[[0, 1, 2], [1, 5, 76]] = 49407
        e = s.run(None, {"input_ids": ids})[0]
        assert e.shape == (3, embed_dim)
        np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1, atol=1e-3)


@pytest.fixture(scope="session")
def built_plugin(tmp_path_factory) -> Path:
    """The plugin folder as `make package` lays it out (core vendored inside).

    Returns the folder that *contains* remoteclip_qgis/, ready for sys.path or a
    QGIS profile's python/plugins.
    """
    out = tmp_path_factory.mktemp("plugin")
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "package.py"), "--folder-only", "--out", str(out)],
        check=True,
    )
    assert (out / "remoteclip_qgis" / "core" / "__init__.py").is_file()
    return out




PLUGIN = "remoteclip_qgis"


def forget_plugin_modules() -> None:
    for name in [m for m in sys.modules if m == PLUGIN or m.startswith(PLUGIN + ".")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def rc(built_plugin):
    """The built plugin package (core vendored inside), imported from the build folder."""
    forget_plugin_modules()
    sys.path.insert(0, str(built_plugin))
    import remoteclip_qgis

    assert Path(remoteclip_qgis.__file__).resolve().is_relative_to(built_plugin.resolve())
    yield remoteclip_qgis
    sys.path.remove(str(built_plugin))
    forget_plugin_modules()

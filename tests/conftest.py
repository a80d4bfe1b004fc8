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
import os
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

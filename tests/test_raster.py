"""core.geodata.raster on the real rasters: reading, validity masks, band choice, the stretch, formats, errors."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from osgeo import gdal

from core.errors import InvalidInput, SourceUnreadable
from core.geodata.raster import (
    STRETCH_SAMPLE_PX,
    RasterSource,
    Stretch,
    check_bands,
    default_bands,
    open_raster,
    read_rgb,
)


@pytest.fixture(scope="module")
def paths(data_dir):
    return {"kampala": str(data_dir / "orthomosaic" / "kampala_oam_z20_mosaic_1536x1024.tif"),
            "landsat": str(data_dir / "geotiff" / "rasterio_RGB.byte.tif"),
            "shade": str(data_dir / "geotiff" / "rasterio_shade.tif"),
            "pan": str(data_dir / "geotiff" / "solaris_sample_geotiff.tif"),
            "png": str(data_dir / "counting" / "dota" / "images" / "P1888.png")}


@pytest.mark.parametrize("name", ["kampala", "landsat", "shade", "pan"])
def test_source_describes_the_raster_as_gdal_does(paths, name):
    src = open_raster(paths[name])
    try:
        assert isinstance(src, RasterSource)
        ds = gdal.Open(paths[name])
        assert (src.width, src.height, src.count) == (ds.RasterXSize, ds.RasterYSize, ds.RasterCount)
        gt = ds.GetGeoTransform()
        assert src.transform == (gt[1], gt[2], gt[0], gt[4], gt[5], gt[3])
        assert src.dtype == gdal.GetDataTypeName(ds.GetRasterBand(1).DataType).lower().replace("byte", "uint8")
        assert src.nodata == ds.GetRasterBand(1).GetNoDataValue()
        from osgeo import osr

        a, b = osr.SpatialReference(), osr.SpatialReference()
        a.ImportFromWkt(src.crs_wkt)
        b.ImportFromWkt(ds.GetProjection())
        assert a.IsSame(b)
        assert src.name == paths[name]
        # a window read is the same pixels as GDAL's
        data, valid = src.read([1], (100, 50, 64, 32))
        np.testing.assert_array_equal(data[0], ds.GetRasterBand(1).ReadAsArray(100, 50, 64, 32))
        assert valid.shape == (32, 64) and valid.dtype == bool
    finally:
        src.close()


def test_default_bands(paths, tmp_path):
    with open_raster(paths["landsat"]) as src:
        assert src.colorinterp == ["red", "green", "blue"] and default_bands(src) == [1, 2, 3]
    with open_raster(paths["shade"]) as src:
        assert default_bands(src) == [1, 1, 1]
    # B, G, R order with colour interpretation: RGB is found by name
    bgr = str(tmp_path / "bgr.vrt")
    gdal.Translate(bgr, paths["landsat"], format="VRT", bandList=[3, 2, 1])
    ds = gdal.Open(bgr, gdal.GA_Update)
    for i, ci in enumerate((gdal.GCI_BlueBand, gdal.GCI_GreenBand, gdal.GCI_RedBand), 1):
        ds.GetRasterBand(i).SetColorInterpretation(ci)
    ds = None
    with open_raster(bgr) as src:
        assert default_bands(src) == [3, 2, 1]
    # four undefined bands: the first three
    four = str(tmp_path / "four.vrt")
    gdal.Translate(four, paths["landsat"], format="VRT", bandList=[1, 2, 3, 1])
    ds = gdal.Open(four, gdal.GA_Update)
    for i in range(1, 5):
        ds.GetRasterBand(i).SetColorInterpretation(gdal.GCI_Undefined)
    ds = None
    with open_raster(four) as src:
        assert default_bands(src) == [1, 2, 3]
        assert check_bands(src, [4, 3, 2]) == [4, 3, 2] and check_bands(src, [2]) == [2, 2, 2]
        with pytest.raises(InvalidInput) as err:
            check_bands(src, [5, 3, 2])
        assert err.value.param == "bands" and "5" in err.value.problem.replace(str(four), "")
        with pytest.raises(InvalidInput) as err:
            check_bands(src, [1, 2])
        assert err.value.param == "bands" and "[1, 2]" in err.value.problem


def test_nodata_mask_is_every_band_nodata(paths):
    """Landsat scene with nodata 0 around a rotated footprint: valid equals rasterio's dataset mask."""
    with open_raster(paths["landsat"]) as src:
        data, valid = src.read([1, 2, 3], (0, 0, src.width, src.height))
    with rasterio.open(paths["landsat"]) as ds:
        want = ds.dataset_mask() > 0
    np.testing.assert_array_equal(valid, want)
    assert not valid[0, 0] and not valid[-1, -1] and valid[359, 395]
    # nodata only where all three bands are 0; a zero in one band alone stays valid
    assert ((data == 0).all(axis=0) == ~valid).all()
    assert ((data == 0).any(axis=0) & valid).sum() > 0


def test_hillshade_nodata_and_one_band_as_grey(paths):
    with open_raster(paths["shade"]) as src:
        st = Stretch.from_source(src, [1, 1, 1])
        assert st.identity
        rgb, valid = read_rgb(src, default_bands(src), (0, 0, 256, 256), st)
        data, _ = src.read([1], (0, 0, 256, 256))
    assert rgb.shape == (256, 256, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(valid, data[0] != 255)
    assert valid.any() and not valid.all()
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    np.testing.assert_array_equal(rgb[..., 0][valid], data[0][valid])
    assert (rgb[~valid] == 0).all()


def test_alpha_band_decides_validity(paths, tmp_path):
    """An RGBA GeoTIFF (real Kampala pixels, alpha cut out in one corner) is masked by its alpha."""
    rgba = str(tmp_path / "rgba.tif")
    src_ds = gdal.Open(paths["kampala"])
    ds = gdal.GetDriverByName("GTiff").Create(rgba, 512, 256, 4, gdal.GDT_Byte, ["ALPHA=YES"])
    ds.SetGeoTransform(src_ds.GetGeoTransform())
    ds.SetProjection(src_ds.GetProjection())
    for b in range(1, 4):
        ds.GetRasterBand(b).WriteArray(src_ds.GetRasterBand(b).ReadAsArray(0, 0, 512, 256))
    alpha = np.full((256, 512), 255, np.uint8)
    alpha[:100, :200] = 0
    ds.GetRasterBand(4).WriteArray(alpha)
    ds = None
    with open_raster(rgba) as src:
        assert src.colorinterp[3] == "alpha" and default_bands(src) == [1, 2, 3]
        rgb, valid = read_rgb(src, [1, 2, 3], (0, 0, 256, 256), Stretch())
        np.testing.assert_array_equal(valid, alpha[:, :256] > 0)
        _, valid = src.read([1, 2, 3], (300, 0, 200, 200))
        assert valid.all()


def test_stretch_uint16_is_one_percentile_stretch_per_raster(paths):
    with open_raster(paths["pan"]) as src:
        st = Stretch.from_source(src, [1, 1, 1])
        assert st.params["kind"] == "linear"
        full, fvalid = src.read([1], (0, 0, src.width, src.height))
        # the decimated sample's 2-98 % are close to the full raster's
        lo, hi = np.percentile(full[0][fvalid].astype(float), [2, 98])
        span = float(full.max()) - float(full.min())
        assert abs(st.lo[0] - lo) < 0.02 * span and abs(st.hi[0] - hi) < 0.02 * span
        assert st.lo == (st.lo[0],) * 3 and st.hi[0] > st.lo[0]
        # the same stretch for every tile: a tile is the slice of the whole raster's stretched image
        whole, _ = read_rgb(src, [1, 1, 1], (0, 0, src.width, src.height), st)
        tile, _ = read_rgb(src, [1, 1, 1], (300, 400, 100, 100), st)
        np.testing.assert_array_equal(tile, whole[400:500, 300:400])
        assert st.key() == Stretch.from_source(src, [1, 1, 1]).key()
        out = st.apply(np.array([[[st.lo[0] - 5, st.lo[0], st.hi[0], st.hi[0] + 50]]] * 3, dtype=np.uint16))
        assert out.dtype == np.uint8 and out[0, 0].tolist() == [0, 0, 255, 255]
    with open_raster(paths["landsat"]) as other:
        assert Stretch.from_source(other, [1, 2, 3]).key() != st.key()


class RecordingSource:
    """core's own reader over a real raster, recording the shapes it is asked for."""

    def __init__(self, path):
        self._src = open_raster(path)
        self.calls = []

    def __getattr__(self, name):
        return getattr(self._src, name)

    def read(self, bands, window, out_shape=None):
        self.calls.append((tuple(window), out_shape))
        return self._src.read(bands, window, out_shape)


def test_stretch_reads_a_decimated_overview_of_a_large_raster(paths, tmp_path):
    """A 9000 x 9000 uint16 VRT of the real SpaceNet tile: the stretch reads at most 1024 px a side."""
    big = tmp_path / "big.vrt"
    ds = gdal.Open(paths["pan"])
    gt, srs = ds.GetGeoTransform(), ds.GetProjection()
    ds = None
    sources = "".join(
        f'<ComplexSource><SourceFilename relativeToVRT="0">{paths["pan"]}</SourceFilename><SourceBand>1</SourceBand>'
        f'<SrcRect xOff="0" yOff="0" xSize="900" ySize="900"/>'
        f'<DstRect xOff="{c * 900}" yOff="{r * 900}" xSize="900" ySize="900"/><NODATA>0</NODATA></ComplexSource>'
        for r in range(10) for c in range(10))
    big.write_text(f'<VRTDataset rasterXSize="9000" rasterYSize="9000"><SRS>{srs}</SRS>'
                   f"<GeoTransform>{', '.join(repr(v) for v in gt)}</GeoTransform>"
                   f'<VRTRasterBand dataType="UInt16" band="1"><NoDataValue>0</NoDataValue>{sources}'
                   "</VRTRasterBand></VRTDataset>")
    src = RecordingSource(str(big))
    try:
        assert (src.width, src.height) == (9000, 9000)
        st = Stretch.from_source(src, [1, 1, 1])
        assert len(src.calls) == 1
        window, shape = src.calls[0]
        assert window == (0, 0, 9000, 9000) and max(shape) <= STRETCH_SAMPLE_PX
        with open_raster(paths["pan"]) as small:
            ref = Stretch.from_source(small, [1, 1, 1])
        # the repeated tile has (nearly) the same distribution
        assert abs(st.lo[0] - ref.lo[0]) < 20 and abs(st.hi[0] - ref.hi[0]) < 40
        # a window far inside the raster reads just that window
        rgb, valid = read_rgb(src, [1, 1, 1], (8000, 8000, 224, 224), st)
        assert rgb.shape == (224, 224, 3)
    finally:
        src.close()


def test_float_raster_with_nan(paths, tmp_path):
    flt = str(tmp_path / "float.tif")
    gdal.Translate(flt, paths["pan"], outputType=gdal.GDT_Float32, noData="none")
    ds = gdal.Open(flt, gdal.GA_Update)
    a = ds.GetRasterBand(1).ReadAsArray().astype(np.float32)
    a[:50, :] = np.nan
    ds.GetRasterBand(1).WriteArray(a)
    ds = None
    with open_raster(flt) as src:
        assert src.dtype == "float32" and src.nodata is None
        st = Stretch.from_source(src, [1, 1, 1])
        assert np.isfinite(st.lo[0]) and np.isfinite(st.hi[0])
        rgb, valid = read_rgb(src, [1, 1, 1], (0, 0, 100, 100), st)
        assert not valid[:50].any() and valid[50:].all() and (rgb[:50] == 0).all()


def test_pad_window_reaches_past_the_raster(paths):
    with open_raster(paths["landsat"]) as src:
        rgb, valid = read_rgb(src, [1, 2, 3], (700, 650, 128, 128), Stretch())
        inside, ivalid = src.read([1, 2, 3], (700, 650, 91, 68))
    assert rgb.shape == (128, 128, 3)
    assert not valid[68:].any() and not valid[:, 91:].any()
    np.testing.assert_array_equal(valid[:68, :91], ivalid)
    np.testing.assert_array_equal(rgb[:68, :91][ivalid], np.moveaxis(inside, 0, -1)[ivalid])


def test_formats_vrt_jpeg2000_png(paths, tmp_path):
    """The same real pixels read back from a VRT, a lossless JPEG2000 and a georeferenced PNG."""
    crop = dict(srcWin=[256, 128, 512, 384])
    ref = str(tmp_path / "ref.tif")
    gdal.Translate(ref, paths["kampala"], **crop)
    outs = {"vrt": gdal.BuildVRT(str(tmp_path / "k.vrt"), [ref]),
            "jp2": gdal.Translate(str(tmp_path / "k.jp2"), ref, format="JP2OpenJPEG",
                                  creationOptions=["REVERSIBLE=YES", "QUALITY=100"]),
            "png": gdal.Translate(str(tmp_path / "k.png"), ref, format="PNG")}
    for ds in outs.values():
        ds.FlushCache()
    outs = {k: ds.GetDescription() for k, ds in outs.items()}  # closes below
    with open_raster(ref) as src:
        want, _ = read_rgb(src, [1, 2, 3], (0, 0, 512, 384), Stretch())
        want_t = src.transform
    for fmt, path in outs.items():
        with open_raster(path) as src:
            assert src.crs_wkt, fmt
            assert src.transform == pytest.approx(want_t, rel=1e-9), fmt
            got, valid = read_rgb(src, default_bands(src), (0, 0, 512, 384), Stretch.from_source(src, [1, 2, 3]))
            np.testing.assert_array_equal(got, want, err_msg=fmt)


def test_errors(paths, tmp_path):
    with pytest.raises(SourceUnreadable) as e:
        open_raster(tmp_path / "missing.tif")
    assert e.value.path == str(tmp_path / "missing.tif") and e.value.fix
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"II*\x00 this is not a GeoTIFF" * 20)
    with pytest.raises(SourceUnreadable) as e:
        open_raster(junk)
    assert e.value.path == str(junk) and e.value.fix
    with pytest.raises(SourceUnreadable) as e:
        open_raster(tmp_path)
    assert e.value.path == str(tmp_path) and e.value.fix
    # a real PNG without georeferencing: its pixels have no place on a map
    with pytest.raises(InvalidInput) as e:
        open_raster(paths["png"])
    assert e.value.path == str(paths["png"]) and e.value.param is None and e.value.fix
    # a GeoTIFF cut in half opens (its header is whole); the tiles before the cut read as the original's, a
    # window past it fails naming the file, the window and what to do
    cut = tmp_path / "cut.tif"
    gdal.Translate(str(cut), paths["kampala"], creationOptions=["TILED=YES", "COMPRESS=DEFLATE"])
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with open_raster(cut) as src, open_raster(paths["kampala"]) as whole:
        first, _ = src.read([1, 2, 3], (0, 0, 256, 256))
        np.testing.assert_array_equal(first, whole.read([1, 2, 3], (0, 0, 256, 256))[0])
        with pytest.raises(SourceUnreadable) as e:
            src.read([1, 2, 3], (0, 768, 256, 256))
    assert e.value.path == str(cut) and "(0, 768, 256, 256)" in e.value.problem and "gdalinfo" in e.value.fix


def test_gdal_virtual_paths_open(paths, tmp_path):
    import zipfile

    from core.geodata.raster import is_gdal_uri

    assert is_gdal_uri("/vsizip/a.zip/b.tif") and is_gdal_uri("https://example.org/a.tif")
    assert is_gdal_uri("NETCDF:file.nc:var") and not is_gdal_uri("C:\\data\\a.tif")
    assert not is_gdal_uri("results/a.tif")
    z = tmp_path / "scene.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(paths["landsat"], "scene.tif")
    with open_raster(f"/vsizip/{z}/scene.tif") as src:
        assert (src.width, src.height) == (791, 718) and src.name == f"/vsizip/{z}/scene.tif"
    with pytest.raises(SourceUnreadable) as e:
        open_raster(f"/vsizip/{z}/other.tif")
    assert e.value.path == f"/vsizip/{z}/other.tif"


def test_a_palette_band_is_read_through_its_colour_table(paths, palette_tif):
    path, table = palette_tif
    src = open_raster(path)
    try:
        assert src.colorinterp == ["palette"] and default_bands(src) == [1, 1, 1]
        assert src.colormap(1)[200] == table[200]
        stretch = Stretch.from_source(src, [1, 1, 1])
        assert stretch.params["kind"] == "palette" and stretch.key() != Stretch().key()
        window = (300, 300, 128, 96)
        rgb, valid = read_rgb(src, [1, 1, 1], window, stretch)
        index, ok = src.read([1], window)
        want = np.array([table.get(int(v), (0, 0, 0)) for v in index[0].ravel()], np.uint8).reshape(96, 128, 3)
        want[~ok] = 0
        assert rgb.shape == (96, 128, 3) and np.array_equal(rgb, want)
        assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 20     # colours, not three equal grey channels
    finally:
        src.close()
    # a grey band without a table is not a palette
    with open_raster(paths["shade"]) as grey:
        assert Stretch.from_source(grey, [1, 1, 1]).params["kind"] == "identity"


def test_nodata_rule_every_band_nodata_nan_float32_and_out_of_range_values():
    from core.geodata.raster import nodata_valid

    two = np.array([[[0, 5], [0, 0]], [[0, 0], [7, 0]]], dtype=np.uint8)
    assert nodata_valid(two, [0, 0]).tolist() == [[False, True], [True, False]]   # nodata in every band
    assert nodata_valid(two, [0, None]).all()          # a band without nodata is valid everywhere
    assert nodata_valid(two[:1], [-1]).all()           # -1 is no uint8 value: nothing is nodata (no wrap to 255)
    f32 = np.array([[[np.float32(-3.4e38), 1.0, np.nan]]], dtype=np.float32)
    assert nodata_valid(f32, [-3.4e38]).tolist() == [[False, True, False]]   # nodata as stored in float32
    assert nodata_valid(f32, [None]).tolist() == [[True, True, False]]      # NaN is nodata in floats


# ------------------------------------------------------------------- the stretch, computed by hand

def _write_tif(path, bands: np.ndarray, nodata) -> str:
    from rasterio.transform import from_origin

    count, height, width = bands.shape
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=count, dtype=bands.dtype,
                       nodata=nodata, crs="EPSG:32636", transform=from_origin(450000, 40000, 0.5, 0.5)) as ds:
        ds.write(bands)
    return str(path)


def _by_hand(band: np.ndarray, valid: np.ndarray) -> tuple[float, float, np.ndarray]:
    """np.percentile (2, 98) over the valid pixels only, then 0..255 rounded half up: floor(x + 0.5)."""
    lo, hi = np.percentile(band[valid].astype(np.float64), [2, 98])
    x = np.clip((band.astype(np.float64) - lo) * 255.0 / (hi - lo), 0, 255)
    out = np.floor(x + 0.5)
    out[~valid] = 0
    return lo, hi, out.astype(np.uint8)


def _placed(values, n_nodata: int, shape, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``values`` and ``n_nodata`` holes scattered over a grid: (positions of the values, valid mask)."""
    order = np.random.default_rng(seed).permutation(shape[0] * shape[1])
    valid = np.zeros(shape[0] * shape[1], bool)
    valid[order[:len(values)]] = True
    return order[:len(values)], valid.reshape(shape)


def test_stretch_uint16_by_hand_ignores_nodata_and_rounds(tmp_path):
    """51 valid values and 9 nodata (0) pixels: the 2nd and 98th percentiles fall exactly on the 2nd and 50th
    sorted valid values (1010 and 1520 in band 1, a 255/510 = 0.5 scale), so 1013 -> 1.5 -> 2 and
    1015 -> 2.5 -> 3 (truncation gives 1 and 2, numpy's round-half-even 2 and 2); with the nodata zeros
    counted, the 2nd percentile would be 0."""
    v = np.array([1000, 1010, 1013, 1015, *range(1020, 1470, 10), 1520, 2000], dtype=np.float64)
    assert len(v) == 51
    pos, valid = _placed(v, 9, (6, 10), seed=1)
    bands = np.zeros((3, 60), np.uint16)
    for b, values in enumerate((v, 3000 - v, 2 * v - 1500)):   # three bands, three different stretches
        bands[b, pos] = values
    bands = bands.reshape(3, 6, 10)
    path = _write_tif(tmp_path / "u16.tif", bands, nodata=0)
    with open_raster(path) as src:
        st = Stretch.from_source(src, [1, 2, 3])
        rgb, got_valid = read_rgb(src, [1, 2, 3], (0, 0, 10, 6), st)
    np.testing.assert_array_equal(got_valid, valid)
    hand = [_by_hand(bands[b], valid) for b in range(3)]
    assert (hand[0][0], hand[0][1]) == (1010, 1520)
    assert st.lo == tuple(h[0] for h in hand) and st.hi == tuple(h[1] for h in hand)
    np.testing.assert_array_equal(rgb, np.stack([h[2] for h in hand], axis=-1))
    # what the case tells apart
    px = {int(bands[0].flat[i]): rgb[..., 0].flat[i] for i in np.flatnonzero(valid)}
    assert (px[1013], px[1015], px[1000], px[1520], px[2000]) == (2, 3, 0, 255, 255)
    assert np.percentile(bands[0].astype(float), 2) == 0          # nodata counted: another lo
    assert int(np.round(2.5)) == 2                               # half-even would give 2 for 1015


def test_stretch_float32_by_hand_ignores_nodata_and_nan(tmp_path):
    """A float32 band with a nodata value (-9999) and NaN holes: neither enters the percentiles, both come
    out 0 and invalid; values between round half up."""
    rng = np.random.default_rng(7)
    middle = rng.uniform(0.05, 10.15, 47)
    v = np.array([-5.0, 0.0, *middle, 10.2, 50.0], dtype=np.float32)
    pos, valid = _placed(v, 9, (6, 10), seed=2)
    band = np.full(60, -9999.0, np.float32)
    band[pos] = v
    holes = np.flatnonzero(~valid.ravel())
    band[holes[:5]] = np.nan
    band = band.reshape(1, 6, 10)
    path = _write_tif(tmp_path / "f32.tif", band, nodata=-9999.0)
    with open_raster(path) as src:
        st = Stretch.from_source(src, [1, 1, 1])
        rgb, got_valid = read_rgb(src, [1, 1, 1], (0, 0, 10, 6), st)
    np.testing.assert_array_equal(got_valid, valid)
    lo, hi, want = _by_hand(band[0], valid)
    assert lo == 0.0 and hi == pytest.approx(10.2) and st.lo == (lo,) * 3 and st.hi == (hi,) * 3
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], want)
    # what the case tells apart: nodata counted moves lo to -9999; truncation changes some pixels
    finite = band[0][np.isfinite(band[0])].astype(float)
    assert np.percentile(finite, 2) == -9999
    x = (band[0][valid].astype(np.float64) - lo) * 255.0 / (hi - lo)
    frac = x - np.floor(x)
    assert ((frac > 0.5) & (x < 255)).sum() >= 10 and np.abs(frac - 0.5).min() > 1e-3

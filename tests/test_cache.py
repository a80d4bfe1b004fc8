"""The embedding cache key: what makes a second run reuse a raster's tile embeddings, and what must not.

Through run_job on a real GeoTIFF (a crop of the Kampala mosaic): the same inputs hit; an edited raster at the
same path (other pixels, with the same size or the same modification time, or both: an edit in place whose
time was set back) and another model (another bundle,
another precision) miss and run the image encoder again. On the key itself: bands, stretch and every part of
the grid (size, unit, overlap, edge, extent) change it, and so does an edit of any file GDAL reads for the
raster (a VRT's source, the .aux.xml, the .msk).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

from core.cache import EmbeddingCache
from core.geodata.raster import Stretch, open_raster
from core.geodata.tiles import BBox, Polygons
from core.pipeline import EmbedTask, Job, RunOptions, TileSpec, run_job

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "models" / "remoteclip-demo"


@pytest.fixture
def scene(data_dir, tmp_path) -> Path:
    """512 x 256 px of the real Kampala mosaic as an uncompressed GeoTIFF: 8 tiles of 128 px."""
    out = tmp_path / "scene.tif"
    gdal.Translate(str(out), str(data_dir / "orthomosaic" / "kampala_oam_z20_mosaic_1536x1024.tif"),
                   srcWin=[0, 0, 512, 256])
    return out


def _rewrite(path: Path, data_dir, col_off: int, compress: bool = False) -> None:
    """Put other pixels of the mosaic into ``path`` (same shape, georeferencing and type): in place, or as a
    new DEFLATE-compressed file at the same path."""
    mosaic = gdal.Open(str(data_dir / "orthomosaic" / "kampala_oam_z20_mosaic_1536x1024.tif"))
    pixels = [mosaic.GetRasterBand(b).ReadAsArray(col_off, 512, 512, 256) for b in (1, 2, 3)]
    if compress:
        ds = gdal.GetDriverByName("MEM").CreateCopy("", gdal.Open(str(path)))
    else:
        ds = gdal.Open(str(path), gdal.GA_Update)
    for b, a in enumerate(pixels, 1):
        ds.GetRasterBand(b).WriteArray(a)
    if compress:
        gdal.GetDriverByName("GTiff").CreateCopy(str(path), ds, options=["COMPRESS=DEFLATE"])
    ds = None


def _embed(raster, bundle, cache, precision="fp32"):
    return run_job(Job(raster=str(raster), task=EmbedTask(), tiles=TileSpec(size=128),
                       run=RunOptions(model=str(bundle), precision=precision, cache_dir=str(cache), batch_size=8)))


def _hit(res) -> bool:
    assert res.n_tiles == 8
    if res.cache_hit:
        assert res.images_encoded == 0
    else:
        assert res.images_encoded == 8
    return res.cache_hit


def test_the_same_raster_and_model_hit(scene, tiny_bundle, tmp_path):
    cache = tmp_path / "cache"
    first = _embed(scene, tiny_bundle, cache)
    assert not _hit(first)
    again = _embed(scene, tiny_bundle, cache)
    assert _hit(again)
    np.testing.assert_array_equal(again.embeddings, first.embeddings)
    # a copy of the bundle at another path is the same model (the key holds its digest, not its path)
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in tiny_bundle.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    assert _hit(_embed(scene, copy, cache))


def test_an_edited_raster_at_the_same_path_misses(scene, tiny_bundle, data_dir, tmp_path):
    cache = tmp_path / "cache"
    first = _embed(scene, tiny_bundle, cache)
    st = scene.stat()
    # other pixels, same byte size (uncompressed, same shape): only the modification time tells
    _rewrite(scene, data_dir, 512)
    assert scene.stat().st_size == st.st_size
    os.utime(scene, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    edited = _embed(scene, tiny_bundle, cache)
    assert not _hit(edited)
    assert not np.allclose(edited.embeddings, first.embeddings)
    assert _hit(_embed(scene, tiny_bundle, cache))
    # other pixels again, another byte size (compressed), the modification time set back: only the size tells
    st = scene.stat()
    _rewrite(scene, data_dir, 1024, compress=True)
    assert scene.stat().st_size != st.st_size
    os.utime(scene, ns=(st.st_atime_ns, st.st_mtime_ns))
    resized = _embed(scene, tiny_bundle, cache)
    assert not _hit(resized)
    assert not np.allclose(resized.embeddings, edited.embeddings)
    assert _hit(_embed(scene, tiny_bundle, cache))


def test_another_model_or_precision_misses(scene, tiny_bundle, tmp_path):
    cache = tmp_path / "cache"
    tiny = _embed(scene, tiny_bundle, cache)
    assert not _hit(tiny)
    half = _embed(scene, tiny_bundle, cache, precision="fp16")
    assert not _hit(half)
    demo = _embed(scene, DEMO, cache)   # the shipped demo model: another bundle, another embedding size
    assert not _hit(demo) and demo.embeddings.shape[1] != tiny.embeddings.shape[1]
    assert _hit(_embed(scene, tiny_bundle, cache)) and _hit(_embed(scene, tiny_bundle, cache, precision="fp16"))
    assert _hit(_embed(scene, DEMO, cache))


def test_bands_stretch_and_every_part_of_the_grid_change_the_key(scene, tmp_path):
    cache = EmbeddingCache(tmp_path / "cache")
    with open_raster(scene) as src:
        a, _, c, _, e, f = src.transform
        box = BBox(c, f + e * 100, c + a * 100, f, None)
        def square(px):
            return f"POLYGON (({c} {f}, {c + a * px} {f}, {c + a * px} {f + e * px}, {c} {f + e * px}, {c} {f}))"

        base = dict(spec=TileSpec(size=128), bands=[1, 2, 3], stretch=Stretch(), model="sha:fp32")
        variants = {
            "same": {},
            "size": dict(spec=TileSpec(size=129)),
            "unit": dict(spec=TileSpec(size=128, unit="m")),
            "overlap": dict(spec=TileSpec(size=128, overlap=0.25)),
            "edge": dict(spec=TileSpec(size=128, edge="pad")),
            "bbox": dict(spec=TileSpec(size=128, extent=box)),
            "other bbox": dict(spec=TileSpec(size=128, extent=BBox(box.xmin, box.ymin, box.xmax + a, box.ymax))),
            "polygons": dict(spec=TileSpec(size=128, extent=Polygons([square(50)]))),
            "other polygons": dict(spec=TileSpec(size=128, extent=Polygons([square(60)]))),
            "bands": dict(bands=[3, 2, 1]),
            "grey": dict(bands=[1, 1, 1]),
            "stretch": dict(stretch=Stretch((0.0, 0.0, 0.0), (255.0, 255.0, 255.0))),
            "other stretch": dict(stretch=Stretch((0.0, 0.0, 0.0), (254.0, 255.0, 255.0))),
            "model": dict(model="sha:fp16"),
        }
        keys = {}
        for name, change in variants.items():
            v = {**base, **change}
            keys[name] = cache.key(src, v["spec"], v["bands"], v["stretch"], v["model"])
    with open_raster(scene) as again:   # a key is a function of its inputs, not of the object or the call
        assert keys["same"] == cache.key(again, TileSpec(size=128), [1, 2, 3], Stretch(), "sha:fp32")
    assert len(set(keys.values())) == len(keys), {k: v[:8] for k, v in keys.items()}


# ------------------------------------------------------------------------------------------- size

def _unit(n: int, d: int = 64, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _key(i: int) -> str:
    return f"{i:064x}"


def test_the_cache_keeps_to_its_limit_removing_the_entries_used_longest_ago(tmp_path):
    folder = tmp_path / "cache"
    unlimited = EmbeddingCache(folder, max_bytes=None)
    for i in range(4):   # four entries of the same size, written in order, a minute apart
        unlimited.save(_key(i), np.arange(100), _unit(100, seed=i))
        os.utime(folder / f"{_key(i)}.npz", (1000 + 60 * i, 1000 + 60 * i))
    one = unlimited.entries()[0].bytes
    assert [e.key for e in unlimited.entries()] == [_key(i) for i in range(4)] and unlimited.size() == 4 * one
    (folder / "rates.json").write_text("{}")          # not an entry: never counted or removed
    (folder / "notes.txt").write_text("the user's")

    cache = EmbeddingCache(folder, max_bytes=3 * one + one // 2)
    assert cache.load(_key(0), n_grid=100, embed_dim=64) is not None   # a hit: entry 0 is used now
    cache.save(_key(9), np.arange(100), _unit(100, seed=9))          # five entries: two over the limit
    # 1 and 2 were used longest ago (0 was just read): they go
    assert [e.key for e in cache.entries()] == [_key(3), _key(0), _key(9)]
    assert cache.size() <= cache.max_bytes
    assert (folder / "rates.json").is_file() and (folder / "notes.txt").read_text() == "the user's"
    assert not (folder / f"{_key(1)}.json").exists()

    # the entry just written stays even when it alone is over the limit
    tiny = EmbeddingCache(folder, max_bytes=10)
    tiny.save(_key(10), np.arange(100), _unit(100, seed=10))
    assert [e.key for e in tiny.entries()] == [_key(10)]

    # clear: every entry (and a sidecar whose .npz never came), nothing else
    (folder / f"{_key(11)}.json").write_text("{}")
    n, freed = tiny.clear()
    assert n == 1 and freed > 0 and tiny.entries() == []
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "rates.json"]


def test_run_job_keeps_the_default_cache_to_remoteclip_cache_max(scene, tiny_bundle, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("REMOTECLIP_CACHE", str(cache))
    monkeypatch.setenv("REMOTECLIP_CACHE_MAX", "1k")   # smaller than one entry: only the newest stays
    for size in (128, 64):
        run_job(Job(raster=str(scene), task=EmbedTask(), tiles=TileSpec(size=size),
                    run=RunOptions(model=str(tiny_bundle), batch_size=8)))
    assert len(EmbeddingCache().entries()) == 1
    res = run_job(Job(raster=str(scene), task=EmbedTask(), tiles=TileSpec(size=64),
                      run=RunOptions(model=str(tiny_bundle), batch_size=8)))
    assert res.cache_hit, "the newest entry was evicted instead of the older one"
    monkeypatch.setenv("REMOTECLIP_CACHE_MAX", "none")
    assert EmbeddingCache().max_bytes is None


def test_sizes_are_read_as_people_write_them():
    from core.cache import DEFAULT_MAX_BYTES, default_max_bytes, parse_size
    from core.errors import InvalidInput

    assert parse_size("500M") == 500 * 1024 ** 2 and parse_size("2G") == parse_size("2 GB") == 2 * 1024 ** 3
    assert parse_size("1.5g") == int(1.5 * 1024 ** 3) and parse_size("4096") == 4096 and parse_size(0) == 0
    assert parse_size("none") is None and parse_size("unlimited") is None
    for bad in ("two gigs", "-1G", "5 parsecs"):
        with pytest.raises(InvalidInput) as err:
            parse_size(bad)
        assert repr(bad) in err.value.problem and err.value.fix
    os.environ.pop("REMOTECLIP_CACHE_MAX", None)
    assert default_max_bytes() == DEFAULT_MAX_BYTES == 2 * 1024 ** 3


def test_an_edit_in_place_whose_modification_time_is_set_back_misses(scene, tiny_bundle, data_dir, tmp_path):
    cache = tmp_path / "cache"
    first = _embed(scene, tiny_bundle, cache)
    st = scene.stat()
    _rewrite(scene, data_dir, 512)   # other pixels in place: same size, same inode
    os.utime(scene, ns=(st.st_atime_ns, st.st_mtime_ns))   # as touch -r or a tool that keeps times
    assert (scene.stat().st_size, scene.stat().st_mtime_ns, scene.stat().st_ino) == \
        (st.st_size, st.st_mtime_ns, st.st_ino)
    edited = _embed(scene, tiny_bundle, cache)
    assert not _hit(edited)
    assert not np.allclose(edited.embeddings, first.embeddings)
    assert _hit(_embed(scene, tiny_bundle, cache))


# ------------------------------------------------------------- every file GDAL reads for the raster

def _raster_key(raster, cache) -> str:
    with open_raster(raster) as src:
        return cache.key(src, TileSpec(size=128), [1, 2, 3], Stretch(), "sha:fp32")


def _edit_keeping_times(path: Path, edit) -> None:
    """``edit(path)``, its modification time set back as it was."""
    st = path.stat()
    edit(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _replace_bytes(old: bytes, new: bytes):
    def edit(path: Path):
        data = path.read_bytes()
        assert len(old) == len(new) and data.count(old) == 1
        with open(path, "r+b") as f:   # in place, as an editor saving over the file
            f.write(data.replace(old, new))
    return edit


def test_a_vrts_source_its_aux_xml_and_its_mask_are_part_of_the_key(scene, data_dir, tmp_path):
    cache = EmbeddingCache(tmp_path / "cache")
    # a VRT over the scene: editing the source (the VRT untouched) is another key
    vrt = tmp_path / "scene.vrt"
    gdal.BuildVRT(str(vrt), [str(scene)])
    before = _raster_key(vrt, cache)
    assert _raster_key(vrt, cache) == before
    _edit_keeping_times(scene, lambda p: _rewrite(p, data_dir, 512))
    assert _raster_key(vrt, cache) != before

    # a nodata value set in the .aux.xml (the GeoTIFF untouched): an edit of it is another key
    aux = Path(str(scene) + ".aux.xml")
    aux.write_text('<PAMDataset><PAMRasterBand band="1"><NoDataValue>10</NoDataValue></PAMRasterBand></PAMDataset>')
    assert gdal.Open(str(scene)).GetRasterBand(1).GetNoDataValue() == 10
    before = _raster_key(scene, cache)
    _edit_keeping_times(aux, _replace_bytes(b"<NoDataValue>10<", b"<NoDataValue>20<"))
    assert gdal.Open(str(scene)).GetRasterBand(1).GetNoDataValue() == 20
    assert _raster_key(scene, cache) != before

    # an external mask (.msk): an edit of it is another key
    gdal.SetConfigOption("GDAL_TIFF_INTERNAL_MASK", "NO")
    try:
        ds = gdal.Open(str(scene), gdal.GA_Update)
        ds.CreateMaskBand(gdal.GMF_PER_DATASET)
        ds.GetRasterBand(1).GetMaskBand().Fill(255)
        ds = None
    finally:
        gdal.SetConfigOption("GDAL_TIFF_INTERNAL_MASK", None)
    msk = Path(str(scene) + ".msk")
    assert msk.is_file()
    before = _raster_key(scene, cache)

    def clear_a_corner(p):
        ds = gdal.Open(str(p), gdal.GA_Update)
        ds.GetRasterBand(1).WriteArray(np.zeros((16, 16), np.uint8))
        ds = None
    _edit_keeping_times(msk, clear_a_corner)
    assert _raster_key(scene, cache) != before


# ------------------------------------------------------------------------------------- damage

def test_rows_moved_inside_an_entry_are_a_miss(tmp_path):
    cache = EmbeddingCache(tmp_path / "cache", max_bytes=None)
    kept, emb = np.arange(0, 40, 2), _unit(20, seed=3)
    cache.save(_key(1), kept, emb)
    got = cache.load(_key(1), n_grid=40, embed_dim=64)
    assert got is not None and np.array_equal(got[1], emb)
    npz = tmp_path / "cache" / f"{_key(1)}.npz"
    with np.load(npz) as z:
        check = z["check"]
    # the rows of two tiles swapped, everything else as written (still sorted indices, unit vectors)
    swapped = emb.copy()
    swapped[[4, 5]] = emb[[5, 4]]
    np.savez(npz, kept=kept, emb=swapped, check=check)
    assert cache.load(_key(1), n_grid=40, embed_dim=64) is None


def test_temporaries_of_killed_writers_go_when_the_cache_opens(tmp_path):
    import subprocess
    import sys
    import time

    folder = tmp_path / "cache"
    folder.mkdir()
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    day_ago = time.time() - 2 * 24 * 3600
    gone = [folder / f".tmp-{dead}-k3y_9abc{_key(5)[-5:]}", folder / f".tmp-{dead}-abcd1234.json",
            folder / ".tmp-a1b2c3d4x.npz"]                      # an earlier version's, two days old
    stay = [folder / f".tmp-{os.getppid()}-abcd1234.npz",      # a writer that still runs
            folder / ".tmp-e5f6g7h8x.npz",                      # an earlier version's, just written
            folder / "notes.tmp-1-abcd1234.txt"]                # not a temporary of the cache
    for p in gone + stay:
        p.write_bytes(b"half an entry")
    os.utime(gone[2], (day_ago, day_ago))
    EmbeddingCache(folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in stay)
    os.utime(stay[1], (day_ago, day_ago))
    EmbeddingCache(folder).prune(10 ** 9)
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in (stay[0], stay[2]))

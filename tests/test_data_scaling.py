"""Data scaling converters: box-to-caption on the real DOTA labels, mask-to-box on a real rasterised footprint
mask and on hand-made masks, COCO/YOLO/Karpathy/folder fixtures, and the caption words checked by hand."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.errors import InvalidInput
from training import data_scaling as ds
from training.pretrain import read_captions


def _table(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _image(path: Path, size=(64, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), 120, np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def dota(data_dir) -> Path:
    return data_dir / "counting" / "dota"


# --- words --------------------------------------------------------------------------------------------------

def test_number_words_plurals_and_articles():
    assert [ds.number_word(n) for n in (1, 2, 5, 10, 11, 15, 531)] == \
        ["one", "two", "five", "ten", "11", "15", "531"]
    assert ds.plural("ship") == "ships"
    assert ds.plural("large vehicle") == "large vehicles"
    assert ds.plural("bus") == "buses"
    assert ds.plural("baseball diamond") == "baseball diamonds"
    assert ds.plural("ferry") == "ferries"
    assert ds.plural("aircraft") == "aircraft"  # the paper's "aircrafts", made English
    assert ds.plural("person") == "people"
    assert ds.count_phrase(1, "small vehicle") == "a small vehicle"
    assert ds.count_phrase(1, "airplane") == "an airplane"
    assert ds.count_phrase(1, "oil tank") == "an oil tank"
    assert ds.count_phrase(1, "unit") == "a unit"
    assert ds.count_phrase(4, "large vehicle") == "four large vehicles"
    assert ds.count_phrase(15, "aircraft") == "15 aircraft"
    assert ds.count_phrase(15, "ship", many=True) == "many ships"
    assert ds.count_phrase(10, "ship", many=True) == "ten ships"
    assert ds.join_phrases(["four large vehicles", "a small vehicle", "five planes"]) == \
        "four large vehicles, a small vehicle and five planes"
    assert ds.join_phrases(["a ship", "two harbors"]) == "a ship and two harbors"
    assert ds.object_name("small-vehicle") == "small vehicle"
    assert ds.object_name("Ground_Track_Field") == "ground track field"


def test_box_captions_paper_style_and_deterministic():
    boxes = [ds.Box("large-vehicle", 0, 0, 2, 2)] * 4 + [ds.Box("small-vehicle", 0, 0, 2, 2)] + \
        [ds.Box("plane", 45, 45, 55, 55)] * 15
    caps = ds.box_captions(boxes, (100, 100), n=20, rng=np.random.default_rng(3))
    assert caps[0] == "There are 15 planes, four large vehicles and a small vehicle in the image."
    assert len(caps) == len(set(caps)) > 5
    assert "There are 15 planes in the center of the image." in caps  # only the planes lie in the middle
    assert "There are 15 planes in the image." in caps  # single categories
    assert any("many planes" in c for c in caps)
    assert all((c[0].isupper() or c[0].isdigit()) and c.endswith(".") for c in caps)
    assert ds.box_captions([ds.Box("ship", 0, 0, 1, 1)], n=1) == ["There is a ship in the image."]
    assert ds.box_captions([], n=5) == []
    # same seed and name -> same captions, whatever else was drawn before
    a = ds.box_captions(boxes, (100, 100), 3, ds.image_rng(0, "x.png"))
    assert a == ds.box_captions(boxes, (100, 100), 3, ds.image_rng(0, "x.png"))
    assert len(a) == 3
    renamed = ds.box_captions(boxes, None, 1, rename={"small vehicle": "car", "large vehicle": "truck"})
    assert renamed == ["There are 15 planes, four trucks and a car in the image."]


# --- DOTA (real labels) -----------------------------------------------------------------------------------

def test_dota_real_labels_counts(dota):
    items = {Path(it.image).stem: it for it in ds.read_dota(dota / "labels", dota / "images")}
    assert set(items) == {"P0706", "P1888"}
    assert ds.count_objects(items["P1888"].boxes) == [("large vehicle", 50), ("small vehicle", 14)]
    assert ds.count_objects(items["P0706"].boxes) == [("ship", 531), ("harbor", 5)]
    assert items["P1888"].size == (712, 557)
    # first label line: 674 375 683 375 684 394 675 395 small-vehicle -> its axis-aligned box
    b = ds.read_dota_labels(dota / "labels" / "P1888.txt")[0]
    assert (b.label, b.x0, b.y0, b.x1, b.y1) == ("small-vehicle", 674, 375, 684, 395)
    hard = sum(1 for ln in (dota / "labels" / "P0706.txt").read_text().splitlines()[2:] if ln.split()[9] == "1")
    easy = ds.read_dota_labels(dota / "labels" / "P0706.txt", skip_difficult=True)
    assert hard > 0 and len(easy) == 536 - hard


def test_dota_cli_writes_a_pretrain_table(dota, tmp_path):
    out = tmp_path / "tables" / "dota.csv"
    argv = ["dota", "--labels", str(dota / "labels"), "--images", str(dota / "images"), "--out", str(out),
            "--boxes", str(tmp_path / "boxes.csv")]
    assert ds.main(argv) == 0
    rows = _table(out)
    assert list(rows[0]) == ["image", "caption", "source", "split"]
    by_image = {}
    for r in rows:
        by_image.setdefault(Path(r["image"]).stem, []).append(r["caption"])
    assert by_image["P1888"][0] == "There are 50 large vehicles and 14 small vehicles in the image."
    assert by_image["P0706"][0] == "There are 531 ships and five harbors in the image."
    assert all(len(c) == 5 == len(set(c)) for c in by_image.values())
    assert {r["source"] for r in rows} == {"dota"}
    pairs = read_captions(out)  # what training.pretrain reads: absolute, existing paths
    assert len(pairs) == 10 and all(Path(p).is_file() for p, _ in pairs)
    assert len(_table(tmp_path / "boxes.csv")) == 600
    first = out.read_bytes()
    assert ds.main(argv) == 0 and out.read_bytes() == first  # deterministic
    assert ds.main(argv[:-2] + ["--seed", "7"]) == 0 and out.read_bytes() != first


def test_dota_tiles_count_each_box_once(dota, tmp_path):
    item = [it for it in ds.read_dota(dota / "labels", dota / "images") if it.image.endswith("P0706.png")][0]
    w, h = item.size
    parts = [(0, 0, 500, 600), (500, 0, w - 500, 600), (0, 600, 500, h - 600), (500, 600, w - 500, h - 600)]
    assert sum(len(ds.boxes_in_window(item.boxes, win)) for win in parts) == 536
    wins = ds.tile_windows(w, h, 400)
    cover = np.zeros((h, w), bool)
    for c, r, tw, th in wins:
        assert 0 <= c <= w - tw and 0 <= r <= h - th and (tw, th) == (400, 400)
        cover[r:r + th, c:c + tw] = True
    assert cover.all()
    out = tmp_path / "t.csv"
    assert ds.main(["dota", "--labels", str(dota / "labels"), "--images", str(dota / "images"), "--out", str(out),
                    "--tile", "400", "--captions-per-image", "1", "--rename", "small-vehicle=car"]) == 0
    rows = _table(out)
    assert all(r["image"].startswith("t_tiles/") for r in rows)  # inside the CSV's folder: relative
    with Image.open(out.parent / rows[0]["image"]) as im:
        assert im.size == (400, 400)
    assert any("cars" in r["caption"] for r in rows) and not any("small vehicle" in r["caption"] for r in rows)


def test_dota_bad_line_is_a_clear_error(tmp_path):
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("imagesource:x\ngsd:0.3\n1 2 3 ship 0\n")
    with pytest.raises(InvalidInput) as err:
        ds.read_dota_labels(tmp_path / "labels" / "a.txt")
    assert err.value.path == str(tmp_path / "labels" / "a.txt") and "'1 2 3 ship 0'" in err.value.problem
    _image(tmp_path / "other" / "b.png")
    with pytest.raises(InvalidInput) as err:
        ds.read_dota(tmp_path / "labels", tmp_path / "other")
    assert err.value.param == "images" and str(tmp_path / "other") in err.value.problem


# --- COCO / YOLO fixtures -----------------------------------------------------------------------------------

def test_coco_fixture(tmp_path):
    _image(tmp_path / "imgs" / "a.png", (100, 80))
    _image(tmp_path / "imgs" / "sub" / "b.png", (100, 80))
    _image(tmp_path / "imgs" / "c.png", (100, 80))
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 100, "height": 80},
                       {"id": 2, "file_name": "sub/b.png", "width": 100, "height": 80},
                       {"id": 3, "file_name": "c.png", "width": 100, "height": 80}],
            "categories": [{"id": 5, "name": "airplane"}, {"id": 9, "name": "storage tank"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [10, 10, 20, 10], "iscrowd": 0},
                            {"id": 2, "image_id": 1, "category_id": 9, "bbox": [50, 40, 5, 5], "iscrowd": 0},
                            {"id": 3, "image_id": 1, "category_id": 9, "bbox": [60, 40, 5, 5], "iscrowd": 0},
                            {"id": 4, "image_id": 2, "category_id": 9, "bbox": [0, 0, 5, 5], "iscrowd": 1}]}
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(coco))
    items = {Path(it.image).name: it for it in ds.read_coco(ann, tmp_path / "imgs")}
    assert ds.count_objects(items["a.png"].boxes) == [("storage tank", 2), ("airplane", 1)]
    b = items["a.png"].boxes[0]
    assert (b.x0, b.y0, b.x1, b.y1) == (10, 10, 30, 20)
    assert items["b.png"].boxes == [] and items["c.png"].boxes == []  # crowd regions skipped
    crowd = {Path(it.image).name: it for it in ds.read_coco(ann, tmp_path / "imgs", include_crowd=True)}
    assert len(crowd["b.png"].boxes) == 1
    out = tmp_path / "coco.csv"
    assert ds.main(["coco", "--annotations", str(ann), "--images", str(tmp_path / "imgs"), "--out", str(out)]) == 0
    rows = _table(out)
    assert {r["image"] for r in rows} == {"imgs/a.png"}  # images without objects get no caption
    assert rows[0]["caption"] == "There are two storage tanks and an airplane in the image."
    with pytest.raises(InvalidInput) as err:
        ds.read_coco(ann, tmp_path)
    assert err.value.param == "images" and err.value.path == str(ann)


def test_yolo_fixture(tmp_path):
    _image(tmp_path / "images" / "t1.jpg", (200, 100))
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "t1.txt").write_text(
        "0 0.5 0.5 0.1 0.2\n0 0.25 0.25 0.1 0.1\n1 0.1 0.1 0.2 0.1 0.2 0.3 0.1 0.3\n")
    (tmp_path / "data.yaml").write_text("path: .\nnames:\n  0: swimming pool\n  1: tennis court\n")
    (tmp_path / "names.txt").write_text("swimming pool\ntennis court\n")
    for names in (tmp_path / "data.yaml", tmp_path / "names.txt", "swimming pool,tennis court"):
        (item,) = ds.read_yolo(tmp_path / "labels", tmp_path / "images", ds.read_names(names))
        assert ds.count_objects(item.boxes) == [("swimming pool", 2), ("tennis court", 1)]
    b0, _, b2 = item.boxes
    assert (b0.x0, b0.y0, b0.x1, b0.y1) == pytest.approx((90, 40, 110, 60))
    assert (b2.x0, b2.y0, b2.x1, b2.y1) == pytest.approx((20, 10, 40, 30))  # oriented box -> its extent
    out = tmp_path / "y.csv"
    assert ds.main(["yolo", "--labels", str(tmp_path / "labels"), "--images", str(tmp_path / "images"),
                    "--names", str(tmp_path / "data.yaml"), "--out", str(out), "--captions-per-image", "2"]) == 0
    rows = _table(out)
    assert [r["caption"] for r in rows][0] == "There are two swimming pools and a tennis court in the image."
    assert len(rows) == 2
    with pytest.raises(InvalidInput) as err:
        ds.read_yolo(tmp_path / "labels", tmp_path / "images", ["swimming pool"])
    assert err.value.param == "names" and err.value.path == str(tmp_path / "labels" / "t1.txt")


# --- masks ----------------------------------------------------------------------------------------------------

def _flood_labels(binary: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    """Reference labelling by flood fill, components numbered in raster order of their first pixel. It needs
    no scipy: scipy is optional (not in requirements), and without it label_components *is* _label_runs."""
    steps = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if connectivity == 8:
        steps += [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    h, w = binary.shape
    labels = np.zeros(binary.shape, np.int32)
    n = 0
    for r, c in np.argwhere(binary):  # row-major order
        if labels[r, c]:
            continue
        n += 1
        labels[r, c] = n
        todo = [(r, c)]
        while todo:
            y, x = todo.pop()
            for dy, dx in steps:
                yy, xx = y + dy, x + dx
                if 0 <= yy < h and 0 <= xx < w and binary[yy, xx] and not labels[yy, xx]:
                    labels[yy, xx] = n
                    todo.append((yy, xx))
    return labels, n


def _assert_labelled_as_flood_fill(binary: np.ndarray, connectivity: int) -> None:
    ref, n = _flood_labels(binary, connectivity)
    for got, m in (ds.label_components(binary, connectivity), ds._label_runs(binary, connectivity)):
        assert m == n and np.array_equal(got, ref)


def test_mask_to_boxes_hand_made():
    m = np.zeros((10, 12), np.uint8)
    m[1:3, 1:4] = 1          # building A: rows 1-2, cols 1-3
    m[3, 4] = 1              # touches A only at a corner: same building with 8-connectivity
    m[6:9, 8:11] = 1         # building B
    m[0, 11] = 1             # a one-pixel speck
    m[5:7, 0:3] = 2          # a road piece
    m[9, :] = 255            # ignore value
    classes = {1: "building", 2: "road"}
    boxes8 = ds.mask_to_boxes(m, classes)
    assert [(b.label, b.x0, b.y0, b.x1, b.y1) for b in boxes8] == [  # per class, in raster order
        ("building", 11, 0, 12, 1), ("building", 1, 1, 5, 4), ("building", 8, 6, 11, 9), ("road", 0, 5, 3, 7)]
    assert len(ds.mask_to_boxes(m, classes, connectivity=4)) == 5  # the corner pixel is its own component
    assert [b.label for b in ds.mask_to_boxes(m, classes, min_area=2)] == ["building", "building", "road"]
    assert ds.box_captions(ds.mask_to_boxes(m, classes, min_area=2), n=1) == \
        ["There are two buildings and a road in the image."]
    # scipy (when installed) and the numpy fallback both label exactly as a flood fill does
    rng = np.random.default_rng(0)
    for conn in (4, 8):
        for _ in range(5):
            _assert_labelled_as_flood_fill(rng.random((40, 37)) < 0.45, conn)
    with pytest.raises(InvalidInput) as err:
        ds.mask_to_boxes(np.zeros((4, 4, 3)), classes)
    assert "(4, 4, 3)" in err.value.problem and err.value.fix   # the mask's shape is shown
    assert ds.parse_classes("1=building, 2=road") == classes
    with pytest.raises(InvalidInput) as err:
        ds.parse_classes("building")
    assert err.value.param == "classes" and "'building'" in err.value.problem


@pytest.fixture(scope="module")
def solaris_mask(data_dir, tmp_path_factory) -> tuple[Path, Path, np.ndarray]:
    """The 43 SpaceNet footprints burnt (value 1) onto the solaris tile's grid with gdal.Rasterize."""
    from osgeo import gdal

    gdal.UseExceptions()
    tif = data_dir / "geotiff" / "solaris_sample_geotiff.tif"
    src = gdal.Open(str(tif))
    out = tmp_path_factory.mktemp("masks") / "solaris_sample_geotiff.tif"
    dst = gdal.GetDriverByName("GTiff").Create(str(out), src.RasterXSize, src.RasterYSize, 1, gdal.GDT_Byte)
    dst.SetGeoTransform(src.GetGeoTransform())
    dst.SetProjection(src.GetProjection())
    gdal.Rasterize(dst, str(data_dir / "geotiff" / "solaris_geotiff_labels.geojson"), burnValues=[1])
    mask = dst.ReadAsArray()
    dst = src = None  # close (flush) both
    return tif, out, mask


def test_mask_to_boxes_real_footprints(solaris_mask, data_dir):
    from osgeo import gdal, ogr

    tif, _, mask = solaris_mask
    assert mask.max() == 1 and mask.sum() == 33818
    boxes = ds.mask_to_boxes(mask, {1: "building"})
    # 43 footprints, 43 components with 8-connectivity (the default); with 4-connectivity one rasterised pixel
    # of one footprint, joined to the rest of it only by a corner, is a component of its own
    assert len(boxes) == 43
    assert len(ds.mask_to_boxes(mask, {1: "building"}, connectivity=4)) == 44
    for conn in (4, 8):
        _assert_labelled_as_flood_fill(mask == 1, conn)
    # every footprint whose centroid is on the tile lies in one of the boxes
    gt = gdal.Open(str(tif)).GetGeoTransform()
    vec = ogr.Open(str(data_dir / "geotiff" / "solaris_geotiff_labels.geojson"))
    layer = vec.GetLayer()  # (vec must stay referenced while the layer is used)
    assert layer.GetFeatureCount() == 43
    inside = 0
    for f in layer:
        c = f.GetGeometryRef().Centroid()
        col, row = (c.GetX() - gt[0]) / gt[1], (c.GetY() - gt[3]) / gt[5]
        if 0 <= col < mask.shape[1] and 0 <= row < mask.shape[0]:
            inside += 1
            assert any(b.x0 <= col <= b.x1 and b.y0 <= row <= b.y1 for b in boxes), (col, row)
    assert inside == 43


def test_masks_cli_on_real_mask(solaris_mask, tmp_path):
    tif, mask_tif, mask = solaris_mask
    out = tmp_path / "m.csv"
    assert ds.main(["masks", "--masks", str(mask_tif.parent), "--images", str(tif.parent), "--classes", "1=building",
                    "--min-area", "50", "--out", str(out), "--captions-per-image", "3"]) == 0
    rows = _table(out)
    n = len(ds.mask_to_boxes(mask, {1: "building"}, min_area=50))
    assert rows[0]["caption"] == f"There are {n} buildings in the image."
    assert len(rows) == 3 and Path(rows[0]["image"]).name == tif.name
    assert rows[0]["source"] == "masks"
    bad = tmp_path / "bad"
    bad.mkdir()
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(bad / "solaris_sample_geotiff.png")
    with pytest.raises(InvalidInput) as err:
        ds.read_masks(bad, tif.parent, {1: "building"})
    assert err.value.path == str(bad / "solaris_sample_geotiff.png") and "5x5" in err.value.problem
    (tmp_path / "no-images").mkdir()
    with pytest.raises(InvalidInput) as err:   # masks beside no image of their name: --images is to blame
        ds.read_masks(bad, tmp_path / "no-images", {1: "building"})
    assert err.value.param == "images" and str(tmp_path / "no-images") in err.value.problem


# --- classification folders and Karpathy JSON --------------------------------------------------------------

def test_folders(tmp_path):
    for cls in ("aGrass", "dRiverLake", "storage_tanks"):
        for i in range(2):
            _image(tmp_path / "ds" / cls / f"{i}.jpg")
    out = tmp_path / "f.csv"
    assert ds.main(["folders", "--root", str(tmp_path / "ds"), "--out", str(out), "--captions-per-image", "3"]) == 0
    rows = _table(out)
    assert len(rows) == 18
    caps = {}
    for r in rows:
        caps.setdefault(r["image"].split("/")[1], set()).add(r["caption"])
    assert all(("grass" in c) for c in caps["aGrass"]) and all("river lake" in c for c in caps["dRiverLake"])
    assert all("storage tanks" in c for c in caps["storage_tanks"])
    assert {r["source"] for r in rows} == {"ds"}
    tpl = tmp_path / "t.txt"
    tpl.write_text("# mine\nan image of {c}.\n")
    assert ds.main(["folders", "--root", str(tmp_path / "ds"), "--out", str(out), "--templates", str(tpl)]) == 0
    assert {r["caption"] for r in _table(out)} == {"an image of grass.", "an image of river lake.",
                                                   "an image of storage tanks."}


def test_karpathy_json_read_as_it_is(tmp_path):
    for n in ("a.jpg", "b.jpg", "c.jpg"):
        _image(tmp_path / "images" / n)
    data = {"dataset": "rsicd", "images": [
        {"filename": "a.jpg", "split": "train", "sentences": [{"raw": "many planes at an airport ."},
                                                              {"raw": "an airport with planes ."}]},
        {"filename": "b.jpg", "split": "restval", "sentences": [{"raw": "a bridge over a river ."}]},
        {"filename": "c.jpg", "split": "test", "sentences": [{"raw": "green trees ."}, {"raw": " "}]}]}
    js = tmp_path / "meta" / "dataset_rsicd.json"
    js.parent.mkdir()
    js.write_text(json.dumps(data))
    out = tmp_path / "k.csv"
    assert ds.main(["karpathy", "--json", str(js), "--images", str(tmp_path / "images"), "--out", str(out)]) == 0
    rows = _table(out)
    assert [(r["image"], r["caption"], r["source"], r["split"]) for r in rows] == [
        ("images/a.jpg", "many planes at an airport .", "rsicd", "train"),
        ("images/a.jpg", "an airport with planes .", "rsicd", "train"),
        ("images/b.jpg", "a bridge over a river .", "rsicd", "train"),
        ("images/c.jpg", "green trees .", "rsicd", "test")]
    assert [c for _, c in read_captions(out, ("train", ""))] == [r["caption"] for r in rows[:3]]
    assert [c for _, c in read_captions(out, ("val", "test", ""))] == ["green trees ."]
    assert ds.main(["karpathy", "--json", str(js), "--out", str(tmp_path / "x.csv")]) == 2  # images not beside it
    assert not (tmp_path / "x.csv").exists()

"""Caption tables for the demo model, made from the real data in ``../shared/data``.

    python -m training.demo_data --data ../shared/data --out runs/demo-data

Writes OUT/rsscn7_split.json (per-class block split, see ``scene_disjoint_split``: the first 14
images of each class by file name train, the last 6 test), OUT/train.csv and OUT/val.csv
(``image,caption,source,split``): RSSCN7 *train* images captioned through templates (test images only in
val.csv, for the validation loss), plus, when present, DOTA and Kampala crops captioned by box-to-caption
over their boxes (crops written under OUT/crops/). The captions come from training.data_scaling, the
converters any dataset goes through. Deterministic for a given seed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from core.errors import InvalidInput
from training.data_scaling import (
    Box,
    box_captions,
    boxes_in_window,
    image_rng,
    read_dota,
    scene_captions,
    write_table,
)
from training.evaluate import class_name, list_folder

# DOTA's vehicle classes in the words a user types when counting (core's count captions: "There are 3 cars")
DOTA_OBJECTS = {"small vehicle": "car", "large vehicle": "truck"}


def data_dir(path=None) -> Path:
    root = Path(__file__).resolve().parents[1]
    return Path(path or os.environ.get("REMOTECLIP_DATA", root.parent / "shared" / "data")).resolve()


def scene_disjoint_split(folder, n_test: int = 6) -> dict:
    """Per class, the last ``n_test`` images by file name are the test images and the rest train.

    RSSCN7's images come in runs cut from the same large scenes, numbered in order: a random pick of test
    images leaves each one between training neighbours from its own scene. Contiguous blocks avoid that, but
    in a folder of the first 20 images per class (``../shared/data``) the test block still comes from the same
    runs as the training images: neighbours of training scenes, not unseen scenes, so the test accuracy
    flatters the model. No seed: the rule is the split.
    """
    classes, paths, labels = list_folder(folder)
    train, test = [], []
    for i in range(len(classes)):
        members = sorted(paths[j] for j in np.flatnonzero(labels == i))
        k = min(int(n_test), len(members) - 1)
        if k < 1:
            raise InvalidInput(f"Class {classes[i]} of {folder} has {len(members)} image: too few to split.",
                                  "Give every class at least two images.", path=folder)
        train += members[:len(members) - k]
        test += members[len(members) - k:]
    return {"rule": f"blocks: per class, the last {n_test} images by file name are test, the rest train "
                    "(the same scene runs as the training images, not unseen scenes)",
            "n_test_per_class": n_test, "classes": classes, "train": sorted(train), "test": sorted(test)}


def rsscn7_rows(folder: Path, split: dict, captions_per_image: int, seed: int) -> list[dict]:
    """Scene captions for the train images (split ``train``) and the test images (split ``val``: only the
    validation loss sees them)."""
    rows = []
    for part in ("train", "test"):
        for rel in split[part]:
            for cap in scene_captions(class_name(rel.split("/")[0]), captions_per_image, image_rng(seed, rel)):
                rows.append({"image": str(folder / rel), "caption": cap, "source": "rsscn7",
                             "split": "train" if part == "train" else "val"})
    return rows


def _crop_rows(im, boxes, out: Path, prefix: str, source: str, rng, crop: int, per_image: int,
               captions: int, empty_caption: str | None = None) -> list[dict]:
    """Random square crops captioned by box-to-caption over the boxes whose centre lies inside."""
    rows = []
    w, h = im.size
    for k in range(per_image):
        x0, y0 = int(rng.integers(0, w - crop)), int(rng.integers(0, h - crop))
        name = f"{prefix}_{k:03d}.png"
        caps = box_captions(boxes_in_window(boxes, (x0, y0, crop, crop)), (crop, crop), captions,
                            image_rng(int(rng.integers(1 << 31)), name), DOTA_OBJECTS)
        if not caps and empty_caption:
            caps = [empty_caption]
        if not caps:
            continue
        p = out / "crops" / name
        im.crop((x0, y0, x0 + crop, y0 + crop)).save(p)
        rows += [{"image": str(p), "caption": c, "source": source, "split": "train"} for c in caps]
    return rows


def dota_rows(dota: Path, out: Path, seed: int, crop: int = 160, per_image: int = 40, captions: int = 2) -> list[dict]:
    """Random crops of the DOTA images, captioned from their oriented boxes (training.data_scaling)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows = []
    for item in read_dota(dota / "labels", dota / "images"):
        with Image.open(item.image) as im:
            rows += _crop_rows(im.convert("RGB"), item.boxes, out, f"dota_{Path(item.image).stem}", "dota", rng,
                               crop, per_image, captions)
    return rows


def kampala_rows(data: Path, out: Path, seed: int, crop: int = 256, per_image: int = 40, captions: int = 2) -> list[dict]:
    """Crops of the Kampala z21 mosaic captioned by the building outlines whose centroid is inside."""
    import rasterio
    from PIL import Image
    from shapely.geometry import shape

    tif = data / "orthomosaic" / "kampala_oam_z21_mosaic_3072x2048.tif"
    gj = data / "orthomosaic" / "kampala_buildings_z21_chips.geojson"
    if not (tif.is_file() and gj.is_file()):
        return []
    with rasterio.open(tif) as src:
        rgb = np.moveaxis(src.read([1, 2, 3]), 0, -1)
        inv = ~src.transform
    boxes = []
    for f in json.loads(gj.read_text())["features"]:
        c = shape(f["geometry"]).centroid
        col, row = inv * (c.x, c.y)
        boxes.append(Box("building", col, row, col, row))  # only the centre counts
    return _crop_rows(Image.fromarray(rgb), boxes, out, "kampala", "kampala", np.random.default_rng(seed), crop,
                      per_image, captions, empty_caption="An aerial image of land without buildings.")


def build(data=None, out="runs/demo-data", n_test: int = 6, seed: int = 0, captions_per_image: int = 3,
          extras: bool = True) -> dict:
    data = data_dir(data)
    out = Path(out)
    (out / "crops").mkdir(parents=True, exist_ok=True)
    folder = data / "scenes" / "rsscn7"
    split = scene_disjoint_split(folder, n_test)
    (out / "rsscn7_split.json").write_text(json.dumps(split, indent=1) + "\n")
    rows = rsscn7_rows(folder, split, captions_per_image, seed)
    if extras:
        if (data / "counting" / "dota").is_dir():
            rows += dota_rows(data / "counting" / "dota", out, seed)
        rows += kampala_rows(data, out, seed)
    counts = {}
    for name, part in (("train.csv", "train"), ("val.csv", "val")):
        sel = [r for r in rows if r["split"] == part]
        write_table(sel, out / name)  # crops inside OUT get paths relative to it, the RSSCN7 images absolute ones
        counts[name] = {s: sum(1 for r in sel if r["source"] == s) for s in sorted({r["source"] for r in sel})}
    return {"out": str(out), "rows": counts, "split": str(out / "rsscn7_split.json")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.demo_data", description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="real data folder (default $REMOTECLIP_DATA or ../shared/data)")
    ap.add_argument("--out", default="runs/demo-data")
    ap.add_argument("--test-per-class", type=int, default=6)
    ap.add_argument("--captions-per-image", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-extras", action="store_true", help="RSSCN7 only (no DOTA/Kampala crops)")
    a = ap.parse_args(argv)
    print(json.dumps(build(a.data, a.out, a.test_per_class, a.seed, a.captions_per_image, not a.no_extras), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Caption tables for the demo model, made from the real data in ``../shared/data``.

    python -m training.demo_data --data ../shared/data --out runs/demo-data

Writes OUT/rsscn7_split.json (fixed-seed per-class split: 14 train / 6 test images per class),
OUT/train.csv and OUT/val.csv (``image,caption,source,split``): RSSCN7 *train* images captioned through
templates (test images never appear), plus, when present, DOTA and Kampala crops captioned by counting
their boxes (crops written under OUT/crops/). Deterministic for a given seed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import numpy as np

from training.evaluate import RS_TEMPLATES, class_name, make_split

TRAIN_TEMPLATES = RS_TEMPLATES + ["{c}.", "a photo of {c}.", "an overhead image of {c}.", "a remote sensing image of {c}."]
DOTA_OBJECTS = {"small-vehicle": "car", "large-vehicle": "truck", "ship": "ship", "harbor": "harbor"}


def data_dir(path=None) -> Path:
    root = Path(__file__).resolve().parents[1]
    return Path(path or os.environ.get("REMOTECLIP_DATA", root.parent / "shared" / "data")).resolve()


def rsscn7_rows(folder: Path, split: dict, captions_per_image: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for part in ("train", "test"):
        for rel in split[part]:
            name = class_name(rel.split("/")[0])
            picks = rng.choice(len(TRAIN_TEMPLATES), size=captions_per_image, replace=False)
            for t in picks:
                rows.append({"image": str(folder / rel), "caption": TRAIN_TEMPLATES[t].replace("{c}", name),
                             "source": "rsscn7", "split": "train" if part == "train" else "val"})
    return rows


def _number(n: int) -> str:
    from core.prompts import NUMBER_WORDS

    return NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)


def dota_rows(dota: Path, out: Path, seed: int, crop: int = 160, per_image: int = 40) -> list[dict]:
    """Random square crops of the DOTA images; caption counts the boxes whose centre lies inside."""
    from PIL import Image

    from core.prompts import plural

    rng = np.random.default_rng(seed)
    rows = []
    for lab in sorted((dota / "labels").glob("*.txt")):
        img_path = dota / "images" / (lab.stem + ".png")
        if not img_path.is_file():
            continue
        boxes = []
        for line in lab.read_text().splitlines():
            parts = line.split()
            if len(parts) < 9 or parts[8] not in DOTA_OBJECTS:
                continue
            xy = np.asarray(parts[:8], dtype=float).reshape(4, 2)
            boxes.append((xy.mean(0), DOTA_OBJECTS[parts[8]]))
        with Image.open(img_path) as im:
            im = im.convert("RGB")
            for k in range(per_image):
                x0 = int(rng.integers(0, im.width - crop))
                y0 = int(rng.integers(0, im.height - crop))
                counts = {}
                for (cx, cy), obj in boxes:
                    if x0 <= cx < x0 + crop and y0 <= cy < y0 + crop:
                        counts[obj] = counts.get(obj, 0) + 1
                if not counts:
                    continue
                obj, n = max(counts.items(), key=lambda kv: kv[1])
                if n > 10:
                    cap = f"many {plural(obj)} in an aerial image."
                else:
                    cap = f"There {'is' if n == 1 else 'are'} {_number(n)} {obj if n == 1 else plural(obj)} in the image."
                p = out / "crops" / f"dota_{lab.stem}_{k:03d}.png"
                im.crop((x0, y0, x0 + crop, y0 + crop)).save(p)
                rows.append({"image": str(p.relative_to(out)), "caption": cap, "source": "dota", "split": "train"})
    return rows


def kampala_rows(data: Path, out: Path, seed: int, crop: int = 256, per_image: int = 40) -> list[dict]:
    """Crops of the Kampala z21 mosaic captioned by the number of building outlines whose centroid is inside."""
    import rasterio
    from PIL import Image
    from shapely.geometry import shape

    tif = data / "orthomosaic" / "kampala_oam_z21_mosaic_3072x2048.tif"
    gj = data / "orthomosaic" / "kampala_buildings_z21_chips.geojson"
    if not (tif.is_file() and gj.is_file()):
        return []
    rng = np.random.default_rng(seed)
    with rasterio.open(tif) as src:
        rgb = np.moveaxis(src.read([1, 2, 3]), 0, -1)
        inv = ~src.transform
    cents = []
    for f in json.loads(gj.read_text())["features"]:
        c = shape(f["geometry"]).centroid
        col, row = inv * (c.x, c.y)
        cents.append((col, row))
    cents = np.asarray(cents)
    h, w = rgb.shape[:2]
    rows = []
    for k in range(per_image):
        x0, y0 = int(rng.integers(0, w - crop)), int(rng.integers(0, h - crop))
        n = int(np.sum((cents[:, 0] >= x0) & (cents[:, 0] < x0 + crop) & (cents[:, 1] >= y0) & (cents[:, 1] < y0 + crop)))
        if n == 0:
            cap = "an aerial image of land without buildings."
        elif n > 10:
            cap = "many buildings in a dense residential area."
        else:
            cap = f"There {'is' if n == 1 else 'are'} {_number(n)} {'building' if n == 1 else 'buildings'} in the image."
        p = out / "crops" / f"kampala_{k:03d}.png"
        Image.fromarray(rgb[y0:y0 + crop, x0:x0 + crop]).save(p)
        rows.append({"image": str(p.relative_to(out)), "caption": cap, "source": "kampala", "split": "train"})
    return rows


def build(data=None, out="runs/demo-data", n_test: int = 6, seed: int = 0, captions_per_image: int = 3,
          extras: bool = True) -> dict:
    data = data_dir(data)
    out = Path(out)
    (out / "crops").mkdir(parents=True, exist_ok=True)
    folder = data / "scenes" / "rsscn7"
    split = make_split(folder, n_test, seed)
    (out / "rsscn7_split.json").write_text(json.dumps(split, indent=1) + "\n")
    rows = rsscn7_rows(folder, split, captions_per_image, seed)
    if extras:
        if (data / "counting" / "dota").is_dir():
            rows += dota_rows(data / "counting" / "dota", out, seed)
        rows += kampala_rows(data, out, seed)
    counts = {}
    for name, part in (("train.csv", ("train",)), ("val.csv", ("val",))):
        sel = [r for r in rows if r["split"] in part]
        with open(out / name, "w", newline="", encoding="utf-8") as f:
            wr = csv.DictWriter(f, fieldnames=["image", "caption", "source", "split"])
            wr.writeheader()
            wr.writerows(sel)
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

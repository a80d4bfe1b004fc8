"""Data scaling (RemoteCLIP, Sec. 3.2): detection, segmentation, classification and captioning datasets
turned into one caption table for ``training.pretrain``.

    python -m training.data_scaling dota  --labels DOTA/labelTxt --images DOTA/images --out dota.csv
    python -m training.data_scaling coco  --annotations instances_train.json --images train/ --out coco.csv
    python -m training.data_scaling yolo  --labels labels/ --images images/ --names data.yaml --out yolo.csv
    python -m training.data_scaling masks --masks masks/ --images images/ --classes 1=building,2=road --out m.csv
    python -m training.data_scaling folders  --root UCMerced_LandUse/Images --out ucm.csv
    python -m training.data_scaling karpathy --json dataset_rsicd.json --images RSICD/RSICD_images --out rsicd.csv

Caption table (what ``training.pretrain.read_captions`` reads): CSV ``image,caption,source,split``, one row
per caption; image paths are relative to the CSV's folder for images inside it, absolute otherwise; ``split``
is empty unless the source has one (Karpathy JSON), and an empty split counts as training data. Files are
written atomically.

Box-to-caption (B2C): objects are counted per category and written as RemoteCLIP's rule-based captions
("There are 15 planes on the ground", "4 large vehicles, a small vehicle and 5 planes"): number words up
to ten, digits above, "a"/"an" for one, English plurals. Each image gets several different captions from
templates (the full inventory, single categories, "many" for crowds, what lies in the centre), picked by a
random generator seeded from ``--seed`` and the image's name, so a table is the same on every run.
Mask-to-box (M2B): connected components of each class of a segmentation mask become boxes, then B2C.
Large scenes can be cut into tiles (``--tile``) captioned by the boxes whose centre lies inside.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.errors import InvalidInput, MissingDependency, RemoteClipError, SourceUnreadable
from core.prompts import count_word, read_lines
from core.prompts import plural as regular_plural
from training.evaluate import IMAGE_EXTS, RS_TEMPLATES

COLUMNS = ["image", "caption", "source", "split"]

# Scene captions for classification datasets: clip_benchmark's remote-sensing zero-shot templates (the ones
# training.evaluate scores with) plus a few plainer phrasings for training.
SCENE_TEMPLATES = RS_TEMPLATES + ["{c}.", "a photo of {c}.", "an overhead image of {c}.",
                                  "a remote sensing image of {c}."]

# Box-to-caption templates: {objects} is an inventory ("four ships and a harbor"), {is} agrees with its first
# item. The first is RemoteCount's phrasing and always comes first in an image's captions.
COUNT_TEMPLATES = [
    "There {is} {objects} in the image.",
    "An aerial image with {objects}.",
    "A satellite image showing {objects}.",
    "{objects} seen from above.",
    "This remote sensing image contains {objects}.",
    "In this aerial image there {is} {objects}.",
]
CENTER_TEMPLATE = "There {is} {objects} in the center of the image."
MANY = 10  # above this, the "many" caption is offered too ("many ships")

# Nouns whose plural is not the regular English one (core.prompts.plural covers -s/-x/-ch/-sh/-y).
IRREGULAR_PLURALS = {
    "aircraft": "aircraft", "cattle": "cattle", "deer": "deer", "fish": "fish", "sheep": "sheep",
    "person": "people", "people": "people", "child": "children", "man": "men", "woman": "women",
    "series": "series", "species": "species", "roof": "roofs", "leaf": "leaves", "shelf": "shelves",
}


# --- words ----------------------------------------------------------------------------------------------------

def number_word(n: int) -> str:
    """"one" .. "ten" as words, larger counts as digits ("15")."""
    return count_word(n) if n <= 10 else str(n)


def plural(noun: str) -> str:
    """Plural of the last word: irregular nouns from a table, the rest by core.prompts.plural."""
    head, _, last = noun.strip().rpartition(" ")
    low = last.lower()
    if low in IRREGULAR_PLURALS:
        last = IRREGULAR_PLURALS[low] if last == low else IRREGULAR_PLURALS[low].capitalize()
        return f"{head} {last}".strip()
    return regular_plural(noun)


def article(noun: str) -> str:
    low = noun.lower()
    vowel = low[:1] in ("a", "e", "i", "o", "u") and not low.startswith(("one", "uni", "use", "usu", "eu"))
    return "an" if vowel or low.startswith(("hour", "honest")) else "a"


def count_phrase(n: int, noun: str, many: bool = False) -> str:
    """``a ship`` / ``an airplane`` / ``four ships`` / ``15 ships`` (``many ships`` with ``many`` and n > 10)."""
    if n < 1:
        raise ValueError(f"count must be at least 1, not {n}")
    if n == 1:
        return f"{article(noun)} {noun}"
    return f"{'many' if many and n > MANY else number_word(n)} {plural(noun)}"


def join_phrases(parts: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c`` (no serial comma, as in the paper's captions)."""
    if not parts:
        return ""
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def object_name(label: str) -> str:
    """Readable object name from a dataset label: ``small-vehicle`` -> ``small vehicle``."""
    return re.sub(r"\s+", " ", re.sub(r"[_\-]+", " ", str(label))).strip().lower()


def _fill(template: str, items: list[tuple[str, int]], many: bool = False) -> str:
    objects = join_phrases([count_phrase(n, name, many) for name, n in items])
    text = template.replace("{is}", "is" if items[0][1] == 1 else "are").replace("{objects}", objects)
    return text[0].upper() + text[1:]


# --- boxes and captions -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixels (x to the right, y down; x1/y1 exclusive)."""

    label: str
    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def center(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2


@dataclass
class Annotated:
    """One image and its boxes; ``size`` is (width, height) when known."""

    image: str
    boxes: list[Box]
    size: tuple[int, int] | None = None
    extra: dict = field(default_factory=dict)


def count_objects(boxes, rename: dict | None = None) -> list[tuple[str, int]]:
    """(object name, count) per category, most frequent first (ties by name)."""
    rename = rename or {}
    c = Counter(rename.get(object_name(b.label), object_name(b.label)) for b in boxes)
    return sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))


def image_rng(seed: int, key: str) -> np.random.Generator:
    """A generator that depends on the seed and the image's name only, not on the order images come in."""
    return np.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))])


def box_captions(boxes, size: tuple[int, int] | None = None, n: int = 5, rng=None,
                 rename: dict | None = None) -> list[str]:
    """Up to ``n`` different captions for one image's boxes (empty list when there are none).

    The first is always the full inventory in RemoteCount's phrasing ("There are 50 large vehicles and 14
    small vehicles in the image."); the others are drawn by ``rng`` from: the inventory in the other templates
    (categories in a random order), each category on its own, "many" for categories above ten, and the
    objects whose centre lies in the middle third of the image (when ``size`` is known).
    """
    items = count_objects(boxes, rename)
    if not items or n < 1:
        return []
    rng = rng if rng is not None else np.random.default_rng(0)
    first = _fill(COUNT_TEMPLATES[0], items)
    pool = []
    for t in COUNT_TEMPLATES[1:]:
        order = [items[i] for i in rng.permutation(len(items))]
        pool.append(_fill(t, order))
    if any(k > MANY for _, k in items):
        pool.append(_fill(COUNT_TEMPLATES[int(rng.integers(len(COUNT_TEMPLATES)))], items, many=True))
    if len(items) > 1:
        for it in items[:3]:
            pool.append(_fill(COUNT_TEMPLATES[0], [it]))
    if size:
        w, h = size
        mid = [b for b in boxes if w / 3 <= b.center[0] < 2 * w / 3 and h / 3 <= b.center[1] < 2 * h / 3]
        if mid:
            pool.append(_fill(CENTER_TEMPLATE, count_objects(mid, rename)))
    out = [first]
    for i in rng.permutation(len(pool)):
        if len(out) >= n:
            break
        if pool[i] not in out:
            out.append(pool[i])
    return out


def boxes_in_window(boxes, window: tuple[int, int, int, int]) -> list[Box]:
    """Boxes whose centre lies in ``window`` (col, row, width, height), in the window's pixel coordinates."""
    c0, r0, w, h = window
    out = []
    for b in boxes:
        cx, cy = b.center
        if c0 <= cx < c0 + w and r0 <= cy < r0 + h:
            out.append(Box(b.label, b.x0 - c0, b.y0 - r0, b.x1 - c0, b.y1 - r0))
    return out


def tile_windows(width: int, height: int, size: int, overlap: float = 0.0) -> list[tuple[int, int, int, int]]:
    """Square windows covering the image; the last row/column is shifted inside (no padding)."""
    if size < 1 or not 0 <= overlap < 1:
        raise InvalidInput(f"Tile size {size} / overlap {overlap} is not usable.",
                              "Use --tile of at least 1 pixel and --overlap in [0, 1).")
    step = max(1, round(size * (1 - overlap)))

    def starts(n):
        if n <= size:
            return [0]
        s = list(range(0, n - size + 1, step))
        return s if s[-1] == n - size else s + [n - size]

    return [(c, r, min(size, width), min(size, height)) for r in starts(height) for c in starts(width)]


# --- segmentation masks (M2B) ---------------------------------------------------------------------------

def label_components(binary: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, int]:
    """Connected components of a boolean image: (int32 labels 1..n, 0 background; n).

    scipy.ndimage.label where scipy is installed; otherwise a run-length union-find in numpy that gives the
    same components (numbered in the same raster order).
    """
    binary = np.asarray(binary, dtype=bool)
    if connectivity not in (4, 8):
        raise InvalidInput(f"Connectivity {connectivity} is not 4 or 8.", "Use --connectivity 4 or 8.")
    try:
        from scipy import ndimage
    except ImportError:
        return _label_runs(binary, connectivity)
    structure = np.ones((3, 3), bool) if connectivity == 8 else None
    labels, n = ndimage.label(binary, structure=structure)
    return labels.astype(np.int32), int(n)


def _label_runs(binary: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, int]:
    """Two-pass labelling over horizontal runs: runs of adjacent rows that touch are merged (union-find)."""
    h, _ = binary.shape
    padded = np.zeros((h, binary.shape[1] + 2), np.int8)
    padded[:, 1:-1] = binary
    d = np.diff(padded, axis=1)
    runs = []  # (row, start, stop)
    row_runs = []
    for r in range(h):
        s, e = np.flatnonzero(d[r] == 1), np.flatnonzero(d[r] == -1)
        row_runs.append(list(range(len(runs), len(runs) + len(s))))
        runs += [(r, int(a), int(b)) for a, b in zip(s, e, strict=True)]
    parent = list(range(len(runs)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    reach = 1 if connectivity == 8 else 0
    for r in range(1, h):
        prev = row_runs[r - 1]
        j = 0
        for i in row_runs[r]:
            _, a, b = runs[i]
            while j < len(prev) and runs[prev[j]][2] + reach <= a:
                j += 1
            k = j
            while k < len(prev) and runs[prev[k]][1] < b + reach:
                ri, rj = find(i), find(prev[k])
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
                k += 1
    labels = np.zeros(binary.shape, np.int32)
    ids = {}
    for i, (r, a, b) in enumerate(runs):  # raster order, so numbering matches scipy's
        root = find(i)
        if root not in ids:
            ids[root] = len(ids) + 1
        labels[r, a:b] = ids[root]
    return labels, len(ids)


def mask_to_boxes(mask: np.ndarray, classes: dict[int, str], min_area: int = 1,
                  connectivity: int = 8) -> list[Box]:
    """One box per connected component of each class value in ``mask`` (values not in ``classes`` are
    background or ignore); components smaller than ``min_area`` pixels are dropped as speckle."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InvalidInput(f"A mask must be one band of class values, this one has shape {mask.shape}.",
                              "Convert colour masks to class-index masks (one value per class).")
    boxes = []
    for value, name in sorted(classes.items()):
        labels, n = label_components(mask == value, connectivity)
        if n == 0:
            continue
        idx = np.arange(1, n + 1)
        areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        rows, cols = np.nonzero(labels)
        lab = labels[rows, cols]
        r0 = np.full(n + 1, np.iinfo(np.int64).max)
        c0 = r0.copy()
        r1 = np.full(n + 1, -1)
        c1 = r1.copy()
        np.minimum.at(r0, lab, rows)
        np.minimum.at(c0, lab, cols)
        np.maximum.at(r1, lab, rows)
        np.maximum.at(c1, lab, cols)
        for i in idx[areas >= min_area]:
            boxes.append(Box(name, float(c0[i]), float(r0[i]), float(c1[i] + 1), float(r1[i] + 1)))
    return boxes


def read_mask(path) -> np.ndarray:
    """A class-index mask from an image file (PNG/TIFF/...); three equal bands count as one."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except (OSError, ValueError):
        import rasterio

        with rasterio.open(path) as src:
            arr = src.read()
            arr = arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)
    if arr.ndim == 3:
        if arr.shape[2] >= 3 and np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
            arr = arr[..., 0]
        else:
            raise InvalidInput(f"Mask {path} is a colour image.",
                                  "Give class-index masks: one band whose values are class ids (--classes).", path=path)
    return arr


def parse_classes(spec: str) -> dict[int, str]:
    """``1=building,2=road`` (or a file with one ``value=name`` per line) -> {1: "building", 2: "road"}."""
    text = Path(spec).read_text(encoding="utf-8") if os.path.isfile(spec) else spec
    out = {}
    for part in re.split(r"[,\n]", text):
        part = part.strip()
        if not part or part.startswith("#"):
            continue
        value, sep, name = part.partition("=")
        if not sep or not name.strip() or not value.strip().lstrip("-").isdigit():
            raise InvalidInput(f"Class entry {part!r} is not VALUE=NAME.",
                                  "Write e.g. --classes 1=building,2=road (255=building for 0/255 masks).",
                               param="classes")
        out[int(value)] = name.strip()
    if not out:
        raise InvalidInput("No classes given.", "Write e.g. --classes 1=building,2=road.")
    return out


# --- readers ------------------------------------------------------------------------------------------------

def image_size(path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError):
        import rasterio

        with rasterio.open(path) as src:
            return src.width, src.height


def find_image(folder: Path, stem: str) -> Path | None:
    for ext in IMAGE_EXTS + tuple(e.upper() for e in IMAGE_EXTS):
        p = folder / (stem + ext)
        if p.is_file():
            return p
    return None


def _pair_images(label_files, images: Path, what: str) -> list[tuple[Path, Path]]:
    pairs, missing = [], []
    for lab in label_files:
        img = find_image(images, lab.stem)
        (pairs.append((lab, img)) if img else missing.append(lab.stem))
    if missing:
        raise InvalidInput(f"{len(missing)} {what} files have no image of the same name in {images}, "
                              f"e.g. {missing[0]}.", "Point --images at the folder that holds the images.",
                           param="images")
    return pairs


def _label_files(folder, ext: str, what: str) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise SourceUnreadable(f"{what} folder {folder} not found.", "Check the path given to --labels/--masks.", path=folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in ext.split("|"))
    if not files:
        raise InvalidInput(f"No {what} files ({ext}) in {folder}.", "Check the path given to --labels/--masks.", path=folder)
    return files


def read_dota_labels(path, skip_difficult: bool = False) -> list[Box]:
    """DOTA ``x1 y1 x2 y2 x3 y3 x4 y4 class difficult`` lines (after the optional ``imagesource:``/``gsd:``
    header lines) as the axis-aligned boxes around the oriented ones."""
    boxes = []
    for no, line in enumerate(Path(path).read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].endswith(":") or ":" in parts[0]:
            continue
        if len(parts) < 9:
            raise InvalidInput(f"{path}, line {no}: {line!r} is not 'x1 y1 ... x4 y4 class [difficult]'.",
                                  "Give DOTA-format label files (labelTxt).", path=path)
        try:
            xy = np.asarray(parts[:8], dtype=float).reshape(4, 2)
        except ValueError:
            raise InvalidInput(f"{path}, line {no}: coordinates {parts[:8]} are not numbers.",
                                  "Give DOTA-format label files (labelTxt).", path=path) from None
        if skip_difficult and len(parts) > 9 and parts[9] == "1":
            continue
        boxes.append(Box(parts[8], *xy.min(0), *xy.max(0)))
    return boxes


def read_dota(labels, images, skip_difficult: bool = False) -> list[Annotated]:
    files = _label_files(labels, ".txt", "DOTA label")
    return [Annotated(str(img), read_dota_labels(lab, skip_difficult), image_size(img))
            for lab, img in _pair_images(files, Path(images), "label")]


def read_coco(annotations, images=None, include_crowd: bool = False) -> list[Annotated]:
    """COCO detection JSON: ``images`` (id, file_name), ``annotations`` (image_id, category_id, bbox x,y,w,h),
    ``categories`` (id, name). Crowd regions are skipped unless ``include_crowd`` (they hold many objects)."""
    path = Path(annotations)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        cats = {c["id"]: c["name"] for c in data["categories"]}
        imgs = {i["id"]: i for i in data["images"]}
        anns = data.get("annotations", [])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SourceUnreadable(f"Cannot read COCO annotations {path}: {e!r}.",
                              "Give a COCO JSON with images, annotations and categories.", path=path) from None
    root = Path(images) if images else path.parent
    boxes: dict = {k: [] for k in imgs}
    for a in anns:
        if a.get("iscrowd") and not include_crowd:
            continue
        if a["image_id"] not in imgs or a["category_id"] not in cats:
            raise InvalidInput(f"{path}: annotation {a.get('id')} points at an unknown image or category.",
                                  "Fix the annotation file.", path=path)
        x, y, w, h = (float(v) for v in a["bbox"])
        boxes[a["image_id"]].append(Box(cats[a["category_id"]], x, y, x + w, y + h))
    out, missing = [], []
    for k, info in sorted(imgs.items(), key=lambda kv: kv[1]["file_name"]):
        p = root / info["file_name"]
        if not p.is_file():
            missing.append(info["file_name"])
            continue
        size = (int(info["width"]), int(info["height"])) if "width" in info and "height" in info else image_size(p)
        out.append(Annotated(str(p), boxes[k], size))
    if missing:
        raise InvalidInput(f"{len(missing)} images of {path} are not in {root}, e.g. {missing[0]}.",
                              "Point --images at the folder that holds the file_name paths.", path=path,
                           param="images")
    return out


def read_names(spec) -> list[str]:
    """Class names for YOLO: a data.yaml (``names:`` list or {id: name}), a text file (one per line) or an
    inline comma-separated list."""
    p = Path(spec)
    if p.is_file():
        text = p.read_text(encoding="utf-8")
        if p.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise MissingDependency("Reading a YAML names file needs PyYAML.",
                                      "Pass --names as a text file with one class per line.") from None
            names = (yaml.safe_load(text) or {}).get("names")
            if isinstance(names, dict):
                names = [names[k] for k in sorted(names, key=int)]
            if not isinstance(names, list):
                raise InvalidInput(f"{p} has no 'names:' list.", "Add names: [class0, class1, ...].", path=p)
            return [str(n) for n in names]
        return [ln.strip() for ln in text.splitlines() if ln.strip()]
    return [n.strip() for n in str(spec).split(",") if n.strip()]


def read_yolo_labels(path, names: list[str], size: tuple[int, int]) -> list[Box]:
    """YOLO ``class cx cy w h`` (normalised) or oriented ``class x1 y1 ... x4 y4`` (normalised) lines."""
    w, h = size
    boxes = []
    for no, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            cls, vals = int(parts[0]), [float(v) for v in parts[1:]]
        except ValueError:
            raise InvalidInput(f"{path}, line {no}: {line!r} is not 'class cx cy w h'.",
                                  "Give YOLO label files (normalised coordinates).", path=path) from None
        if not 0 <= cls < len(names):
            raise InvalidInput(f"{path}, line {no}: class {cls} is not among the {len(names)} names.",
                                  "Pass the names list the labels were made with (--names).", path=path,
                               param="names")
        if len(vals) in (4, 5):  # a fifth value is a confidence in prediction files
            cx, cy, bw, bh = vals[:4]
            boxes.append(Box(names[cls], (cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h))
        elif len(vals) == 8:
            xy = np.asarray(vals).reshape(4, 2) * (w, h)
            boxes.append(Box(names[cls], *xy.min(0), *xy.max(0)))
        else:
            raise InvalidInput(f"{path}, line {no}: {len(vals)} numbers after the class, not 4 or 8.",
                                  "Give YOLO label files (cx cy w h, or x1 y1 ... x4 y4 for oriented boxes).", path=path)
    return boxes


def read_yolo(labels, images, names) -> list[Annotated]:
    names = read_names(names) if not isinstance(names, list) else names
    if not names:
        raise InvalidInput("No YOLO class names.", "Pass --names data.yaml, a names file or 'car,truck'.")
    out = []
    for lab, img in _pair_images(_label_files(labels, ".txt", "YOLO label"), Path(images), "label"):
        size = image_size(img)
        out.append(Annotated(str(img), read_yolo_labels(lab, names, size), size))
    return out


def read_masks(masks, images, classes: dict[int, str], min_area: int = 1, connectivity: int = 8,
               mask_suffix: str = "") -> list[Annotated]:
    files = _label_files(masks, "|".join(IMAGE_EXTS), "mask")
    out, missing = [], []
    for m in files:
        stem = m.stem[: -len(mask_suffix)] if mask_suffix and m.stem.endswith(mask_suffix) else m.stem
        img = find_image(Path(images), stem)
        if img is None:
            missing.append(m.name)
            continue
        mask = read_mask(m)
        size = image_size(img)
        if (mask.shape[1], mask.shape[0]) != size:
            raise InvalidInput(f"Mask {m} is {mask.shape[1]}x{mask.shape[0]} but its image {img} is "
                                  f"{size[0]}x{size[1]}.", "Masks must have the same pixel grid as their images.", path=m)
        out.append(Annotated(str(img), mask_to_boxes(mask, classes, min_area, connectivity), size))
    if missing:
        raise InvalidInput(f"{len(missing)} masks have no image of the same name in {images}, e.g. {missing[0]}.",
                              "Point --images at the image folder (and set --mask-suffix if masks are named "
                              "e.g. tile_mask.png).", param="images")
    return out


# --- rows -----------------------------------------------------------------------------------------------------

def box_rows(items: list[Annotated], source: str, n: int = 5, seed: int = 0, rename: dict | None = None,
             tile: int = 0, overlap: float = 0.0, tile_dir=None) -> tuple[list[dict], dict]:
    """Caption rows (image, caption, source, split) from annotated images; with ``tile`` the images are cut
    into tiles written to ``tile_dir`` and each tile is captioned by its own boxes. Images or tiles without
    boxes get no caption (counted in the returned stats)."""
    rows, stats = [], {"images": len(items), "boxes": 0, "captioned": 0, "empty": 0}
    for it in items:
        stats["boxes"] += len(it.boxes)
        if not tile:
            caps = box_captions(it.boxes, it.size, n, image_rng(seed, Path(it.image).name), rename)
            stats["captioned" if caps else "empty"] += 1
            rows += [{"image": it.image, "caption": c, "source": source, "split": ""} for c in caps]
            continue
        from PIL import Image

        if tile_dir is None:
            raise InvalidInput("Tiling needs a folder for the tiles.", "Pass tile_dir / --tile-dir.")
        Path(tile_dir).mkdir(parents=True, exist_ok=True)
        with Image.open(it.image) as im:
            im = im.convert("RGB")
            for win in tile_windows(im.width, im.height, tile, overlap):
                sub = boxes_in_window(it.boxes, win)
                name = f"{Path(it.image).stem}_{win[0]}_{win[1]}.png"
                caps = box_captions(sub, win[2:], n, image_rng(seed, name), rename)
                stats["captioned" if caps else "empty"] += 1
                if not caps:
                    continue
                p = Path(tile_dir) / name
                im.crop((win[0], win[1], win[0] + win[2], win[1] + win[3])).save(p)
                rows += [{"image": str(p), "caption": c, "source": source, "split": ""} for c in caps]
    return rows, stats


def scene_captions(name: str, n: int, rng, templates=None) -> list[str]:
    """``n`` different scene captions for a class name, templates drawn by ``rng``."""
    templates = list(templates or SCENE_TEMPLATES)
    picks = rng.choice(len(templates), size=min(n, len(templates)), replace=False)
    return [templates[t].replace("{c}", name).replace("{}", name) for t in picks]


def folder_rows(root, n: int = 3, seed: int = 0, templates=None, classnames: dict | None = None,
                source: str | None = None) -> tuple[list[dict], dict]:
    """Classification folders (one subfolder per class) -> scene captions through templates."""
    from training.evaluate import class_name, list_folder

    classes, paths, labels = list_folder(root)
    names = [(classnames or {}).get(c, class_name(c)) for c in classes]
    source = source or Path(root).name.lower()
    rows = []
    for rel, lab in zip(paths, labels, strict=True):
        for c in scene_captions(names[lab], n, image_rng(seed, rel), templates):
            rows.append({"image": str(Path(root) / rel), "caption": c, "source": source, "split": ""})
    return rows, {"images": len(paths), "classes": dict(zip(classes, names, strict=True))}


def karpathy_rows(json_path, images=None, source: str | None = None) -> tuple[list[dict], dict]:
    """Karpathy-style caption JSON (RSICD, RSITMD, UCM-captions, Sydney-captions) read as it is: every sentence
    of every image, with the image's split."""
    path = Path(json_path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        entries = data["images"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SourceUnreadable(f"Cannot read caption JSON {path}: {e!r}.",
                              'Give a Karpathy-style JSON: {"images": [{"filename", "sentences": [{"raw"}], '
                              '"split"}]}.', path=path) from None
    root = Path(images) if images else path.parent
    source = source or str(data.get("dataset") or path.stem).lower()
    rows, missing, splits = [], [], Counter()
    for e in entries:
        p = Path(e.get("filepath", "")) / e["filename"]
        p = p if p.is_absolute() else root / p
        if not p.is_file():
            missing.append(str(p))
            continue
        split = {"restval": "train"}.get(e.get("split", ""), e.get("split", ""))
        splits[split] += 1
        for s in e.get("sentences", []):
            raw = (s.get("raw", "") if isinstance(s, dict) else str(s)).strip()
            if raw:
                rows.append({"image": str(p), "caption": raw, "source": source, "split": split})
    if missing:
        raise InvalidInput(f"{len(missing)} images of {path} are not under {root}, e.g. {missing[0]}.",
                              "Point --images at the dataset's image folder.", path=path)
    return rows, {"images": len(entries), "splits": dict(splits)}


def write_table(rows: list[dict], out) -> Path:
    """Write a caption table atomically. Images inside the CSV's folder get paths relative to it (the folder can
    move as a whole), others absolute ones (the CSV can move on its own)."""
    out = Path(out)
    if not rows:
        raise InvalidInput(f"No captions to write to {out}.", "Check that the input has annotated images.", path=out)
    out.parent.mkdir(parents=True, exist_ok=True)
    base = out.parent.resolve()
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        wr = csv.DictWriter(f, fieldnames=COLUMNS)
        wr.writeheader()
        for r in rows:
            img = Path(r["image"]).resolve()
            rel = img.is_relative_to(base)
            wr.writerow({**{k: r.get(k, "") for k in COLUMNS}, "image": img.relative_to(base) if rel else img})
    os.replace(tmp, out)
    return out


def write_boxes(items: list[Annotated], out) -> Path:
    """The boxes behind the captions (image,label,x0,y0,x1,y1), for checking a conversion."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        wr = csv.writer(f)
        wr.writerow(["image", "label", "x0", "y0", "x1", "y1"])
        for it in items:
            for b in it.boxes:
                wr.writerow([it.image, b.label] + [round(v, 2) for v in (b.x0, b.y0, b.x1, b.y1)])
    os.replace(tmp, out)
    return out


# --- command line -----------------------------------------------------------------------------------------

def _rename(specs) -> dict:
    out = {}
    for s in specs or []:
        a, sep, b = s.partition("=")
        if not sep or not a.strip() or not b.strip():
            raise InvalidInput(f"--rename {s!r} is not LABEL=NAME.", "Write e.g. --rename small-vehicle=car.")
        out[object_name(a)] = b.strip()
    return out


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m training.data_scaling",
                                 description="Turn detection, segmentation, classification and caption datasets "
                                             "into one caption table (image,caption,source,split).")
    sub = ap.add_subparsers(dest="kind", required=True)

    def common(p, boxes=True):
        p.add_argument("--out", required=True, help="caption table CSV to write")
        p.add_argument("--source", help="value of the source column (default: the format or dataset name)")
        p.add_argument("--seed", type=int, default=0, help="caption choice (with the image name)")
        if boxes:
            p.add_argument("--captions-per-image", type=int, default=5)
            p.add_argument("--rename", nargs="*", metavar="LABEL=NAME", help="object names, e.g. plane=airplane")
            p.add_argument("--tile", type=int, default=0, help="cut images into tiles of this many pixels")
            p.add_argument("--overlap", type=float, default=0.0, help="tile overlap fraction")
            p.add_argument("--tile-dir", help="folder for the tiles (default: OUT's name + _tiles)")
            p.add_argument("--boxes", help="also write the boxes (image,label,x0,y0,x1,y1) to this CSV")

    p = sub.add_parser("dota", help="DOTA labelTxt files (oriented boxes) -> box-to-caption")
    p.add_argument("--labels", required=True)
    p.add_argument("--images", required=True)
    p.add_argument("--skip-difficult", action="store_true")
    common(p)
    p = sub.add_parser("coco", help="COCO detection JSON -> box-to-caption")
    p.add_argument("--annotations", required=True)
    p.add_argument("--images", help="image folder (default: the JSON's folder)")
    p.add_argument("--include-crowd", action="store_true")
    common(p)
    p = sub.add_parser("yolo", help="YOLO label files + class names -> box-to-caption")
    p.add_argument("--labels", required=True)
    p.add_argument("--images", required=True)
    p.add_argument("--names", required=True, help="data.yaml, a file with one name per line, or 'car,truck'")
    common(p)
    p = sub.add_parser("masks", help="segmentation masks -> boxes (connected components) -> box-to-caption")
    p.add_argument("--masks", required=True)
    p.add_argument("--images", required=True)
    p.add_argument("--classes", required=True, help="VALUE=NAME list, e.g. 1=building,2=road, or such a file")
    p.add_argument("--min-area", type=int, default=1, help="drop components smaller than this (pixels)")
    p.add_argument("--connectivity", type=int, choices=(4, 8), default=8)
    p.add_argument("--mask-suffix", default="", help="mask names are image name + this, e.g. _mask")
    common(p)
    p = sub.add_parser("folders", help="classification folders (one per class) -> template captions")
    p.add_argument("--root", required=True)
    p.add_argument("--captions-per-image", type=int, default=3)
    p.add_argument("--templates", help="file with one template per line ({c} = class name)")
    common(p, boxes=False)
    p = sub.add_parser("karpathy", help="Karpathy-style caption JSON (RSICD, RSITMD, UCM) as it is")
    p.add_argument("--json", required=True)
    p.add_argument("--images", help="image folder (default: the JSON's folder)")
    common(p, boxes=False)
    return ap


def convert(a) -> dict:
    """Run one conversion as parsed by ``parser()``; returns a summary."""
    if a.kind in ("folders", "karpathy"):
        if a.kind == "folders":
            templates = read_lines(a.templates) if a.templates else None
            rows, stats = folder_rows(a.root, a.captions_per_image, a.seed, templates, source=a.source)
        else:
            rows, stats = karpathy_rows(a.json, a.images, a.source)
    else:
        if a.kind == "dota":
            items = read_dota(a.labels, a.images, a.skip_difficult)
        elif a.kind == "coco":
            items = read_coco(a.annotations, a.images, a.include_crowd)
        elif a.kind == "yolo":
            items = read_yolo(a.labels, a.images, a.names)
        else:
            items = read_masks(a.masks, a.images, parse_classes(a.classes), a.min_area, a.connectivity,
                               a.mask_suffix)
        tile_dir = a.tile_dir or Path(a.out).with_name(Path(a.out).stem + "_tiles")
        rows, stats = box_rows(items, a.source or a.kind, a.captions_per_image, a.seed, _rename(a.rename),
                               a.tile, a.overlap, tile_dir)
        if a.boxes:
            write_boxes(items, a.boxes)
    write_table(rows, a.out)
    return {"out": str(a.out), "rows": len(rows), **stats}


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    try:
        summary = convert(a)
    except RemoteClipError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

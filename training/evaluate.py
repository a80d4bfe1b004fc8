"""Evaluation suite for a checkpoint (open_clip in torch) or a model bundle (onnxruntime, through core).

    python -m training.evaluate --checkpoint runs/demo/model.pt --arch small-vit \
        --zeroshot ../shared/data/scenes/rsscn7 --split-file models/remoteclip-demo.rsscn7_split.json \
        --linear-probe --knn 5 --few-shot 1 5 --retrieval karpathy.json --counting counts.csv --out results/ckpt
    python -m training.evaluate --bundle models/remoteclip-demo --zeroshot ... --out results/bundle

Same images, prompts and metrics on both paths, so a bundle's figures can be compared with its checkpoint's.

Folder dataset: one subfolder per class (sorted; ``aGrass`` -> ``grass``, ``dRiverLake`` -> ``river lake``).
Split file (JSON): ``{"classes": [...], "train": [relative paths], "test": [relative paths]}`` as written by
``make_split``; without one, zero-shot uses every image and the feature probes are skipped.
Retrieval: Karpathy-style JSON ``{"images": [{"filename", "filepath"?, "split", "sentences": [{"raw"}]}]}``.
Counting: CSV ``image,object,count`` (count 1..10), scored with RemoteCount captions (core.prompts).

Writes OUT/results.json and OUT/results.md (atomically).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
from pathlib import Path

import numpy as np

from core.errors import InvalidInput, RemoteClipError, SourceUnreadable
from training import metrics

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")

# clip_benchmark's zero-shot templates for remote-sensing scene datasets (its "resisc45"/"eurosat" family)
RS_TEMPLATES = [
    "satellite imagery of {c}.", "aerial imagery of {c}.", "satellite photo of {c}.", "aerial photo of {c}.",
    "satellite view of {c}.", "aerial view of {c}.", "satellite imagery of a {c}.", "aerial imagery of a {c}.",
    "satellite photo of a {c}.", "aerial photo of a {c}.", "satellite view of a {c}.", "aerial view of a {c}.",
    "satellite imagery of the {c}.", "aerial imagery of the {c}.", "satellite photo of the {c}.",
    "aerial photo of the {c}.", "satellite view of the {c}.", "aerial view of the {c}.",
]


# --- datasets ---------------------------------------------------------------------------------------------

def class_name(folder: str) -> str:
    """Readable class name from a folder name: drop RSSCN7's ordering letter, split CamelCase and _/-."""
    name = re.sub(r"^[a-z](?=[A-Z])", "", folder)
    name = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name)
    return re.sub(r"[_\-]+", " ", name).strip().lower()


def list_folder(folder) -> tuple[list[str], list[str], np.ndarray]:
    """(class folder names, image paths relative to folder, labels) of a folder dataset, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SourceUnreadable(f"Dataset folder {folder} not found.", "Give a folder with one subfolder per class.", path=folder)
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    paths, labels = [], []
    for i, c in enumerate(classes):
        for p in sorted((folder / c).iterdir()):
            if p.suffix.lower() in IMAGE_EXTS:
                paths.append(f"{c}/{p.name}")
                labels.append(i)
    if not paths:
        raise InvalidInput(f"No images found in class subfolders of {folder}.",
                              f"Put images ({', '.join(IMAGE_EXTS)}) in one subfolder per class.", path=folder)
    return classes, paths, np.asarray(labels)


def make_split(folder, n_test: int = 6, seed: int = 0) -> dict:
    """Fixed-seed per-class random split: ``n_test`` test images per class, the rest train. For independent
    images only: where images are cut in runs from the same scenes (RSSCN7), random test images sit between
    training neighbours; use ``training.demo_data.scene_disjoint_split`` there."""
    classes, paths, labels = list_folder(folder)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for i in range(len(classes)):
        members = [paths[j] for j in np.flatnonzero(labels == i)]
        chosen = set(rng.choice(len(members), size=min(n_test, len(members) - 1), replace=False).tolist())
        test += [m for j, m in enumerate(members) if j in chosen]
        train += [m for j, m in enumerate(members) if j not in chosen]
    return {"seed": seed, "n_test_per_class": n_test, "classes": classes, "train": sorted(train), "test": sorted(test)}


def load_split(folder, split_file, split: str) -> tuple[list[str], list[str], np.ndarray]:
    """(classes, absolute image paths, labels) for one split ("train"/"test") or all images (no split file)."""
    classes, paths, labels = list_folder(folder)
    if split_file:
        s = read_split(split_file)
        if split not in s:
            raise InvalidInput(f"Split file {split_file} has no {split!r} list.", "Write it with make_split.", path=split_file)
        keep = set(s[split])
        unknown = keep - set(paths)
        if unknown:
            raise InvalidInput(f"{len(unknown)} images of split file {split_file} are not in {folder}, "
                                  f"e.g. {sorted(unknown)[0]}.", "Use the split file made for this folder.", path=split_file)
        sel = [i for i, p in enumerate(paths) if p in keep]
        paths, labels = [paths[i] for i in sel], labels[sel]
    return classes, [str(Path(folder) / p) for p in paths], labels


def read_split(split_file) -> dict:
    """A split file written by make_split (``{"train": [...], "test": [...]}``); anything else is refused."""
    try:
        text = Path(split_file).read_text(encoding="utf-8")
    except OSError as e:
        raise SourceUnreadable(f"Split file {split_file} cannot be read ({e.strerror or e}).",
                               "Check the path (--split-file).", path=split_file) from None
    except UnicodeDecodeError:
        text = None
    try:
        s = json.loads(text) if text is not None else None
    except (ValueError, RecursionError):
        s = None
    if not isinstance(s, dict) or not all(isinstance(v, list) and all(isinstance(p, str) for p in v)
                                          for k, v in s.items() if k in ("train", "test")):
        raise InvalidInput(f"Split file {split_file} is not a split (JSON {{\"train\": [...], \"test\": [...]}} of "
                           "image paths).", "Write one with --make-split FILE --zeroshot FOLDER.", path=split_file,
                           param="split_file")
    return s


def open_rgb(path):
    """The image at ``path`` as an RGB PIL image; a missing or unreadable file is a RemoteClipError."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise SourceUnreadable(f"Image not found: {path}.", "Check the dataset folder or table.", path=path) from None
    except Image.DecompressionBombError as e:   # PIL's guard: more than twice Image.MAX_IMAGE_PIXELS
        raise InvalidInput(f"Image {path} is too large to be a benchmark image ({e}).",
                           "Remove it from the dataset, or scale it down (a benchmark scene is a few hundred "
                           "pixels a side).", path=path) from None
    except (UnidentifiedImageError, OSError) as e:
        raise SourceUnreadable(f"Image {path} cannot be read ({e}).",
                              "Remove or replace the damaged file; images must be JPEG, PNG or TIFF.", path=path) from None


def read_rgb(path) -> np.ndarray:
    return np.asarray(open_rgb(path))


# --- models -------------------------------------------------------------------------------------------------

class TorchModel:
    """open_clip model in torch: open_clip's eval transform and tokenizer."""

    def __init__(self, model, preprocess_cfg: dict, arch: str, device="cpu", batch_size: int = 64):
        import open_clip

        from training.checkpoints import eval_transform

        self.model, self.device, self.batch_size = model, device, batch_size
        self.transform = eval_transform(preprocess_cfg)
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.logit_scale = float(model.logit_scale.detach().exp())
        self.name = f"checkpoint ({arch})"

    @classmethod
    def from_checkpoint(cls, path, arch: str, activation: str = "quick_gelu", device="cpu"):
        from training import checkpoints

        model, pp, _ = checkpoints.build_model(arch, checkpoints.read_state_dict(path), activation)
        m = cls(model.to(device), pp, arch, device)
        m.name = f"checkpoint {Path(path).name} ({arch})"
        return m

    def encode_images(self, paths) -> np.ndarray:
        import torch

        self.model.eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(paths), self.batch_size):
                batch = []
                for p in paths[i:i + self.batch_size]:
                    batch.append(self.transform(open_rgb(p)))
                x = torch.stack(batch).to(self.device)
                out.append(torch.nn.functional.normalize(self.model.encode_image(x).float(), dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 1), np.float32)

    def encode_texts(self, texts) -> np.ndarray:
        import torch

        self.model.eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), 256):
                ids = self.tokenizer(list(texts[i:i + 256])).to(self.device)
                out.append(torch.nn.functional.normalize(self.model.encode_text(ids).float(), dim=-1).cpu().numpy())
        return np.concatenate(out)


class BundleModel:
    """A model bundle through core: core.runtime.preprocess + core.runtime.inference.Encoder (onnxruntime)."""

    def __init__(self, bundle, precision: str = "fp32", device: str = "auto", batch_size: int = 64):
        from core.runtime.inference import Encoder

        self.encoder = Encoder(bundle, device=device, precision=precision, batch_size=batch_size)
        self.image_cfg = self.encoder.bundle.image
        self.logit_scale = float(self.encoder.bundle.logit_scale)
        self.name = f"bundle {self.encoder.bundle.name} ({precision}, {self.encoder.provider})"

    def encode_images(self, paths) -> np.ndarray:
        from core.runtime.preprocess import preprocess_batch

        out = []
        for i in range(0, len(paths), 64):
            out.append(self.encoder.encode_images(preprocess_batch([read_rgb(p) for p in paths[i:i + 64]],
                                                                   self.image_cfg)))
        return np.concatenate(out)

    def encode_texts(self, texts) -> np.ndarray:
        return self.encoder.encode_texts(list(texts))


# --- tasks ------------------------------------------------------------------------------------------------------

def zeroshot(model, folder, split_file=None, split: str = "test", templates=None, classnames=None) -> dict:
    """Zero-shot classification: template-ensembled class embeddings, top-1/top-5/mean per-class recall."""
    classes, paths, labels = load_split(folder, split_file, split if split_file else "all")
    names = list(classnames) if classnames else [class_name(c) for c in classes]
    templates = list(templates or RS_TEMPLATES)
    prompts = [t.replace("{c}", n).replace("{}", n) for n in names for t in templates]
    cls = metrics.class_embeddings(model.encode_texts(prompts), len(names), len(templates))
    scores = metrics.zeroshot_scores(model.encode_images(paths), cls)
    rep = metrics.classification_report(scores, labels)
    pred = scores.argmax(1)
    rep["per_class_recall"] = {n: float(np.mean(pred[labels == i] == i)) for i, n in enumerate(names)
                               if np.any(labels == i)}
    rep["classes"] = names
    rep["templates"] = len(templates)
    rep["chance_top1"] = 1.0 / len(names)
    return rep


def folder_features(model, folder, split_file) -> dict:
    """Image embeddings of the train and test split (cached per model object)."""
    cache = getattr(model, "_feature_cache", None)
    key = (str(folder), str(split_file))
    if cache and key in cache:
        return cache[key]
    feats = {}
    for split in ("train", "test"):
        classes, paths, labels = load_split(folder, split_file, split)
        feats[split] = (model.encode_images(paths), labels)
    feats["n_classes"] = len(classes)
    model._feature_cache = {key: feats}
    return feats


def retrieval(model, karpathy_json, split: str = "test") -> dict:
    """Image<->text retrieval on a Karpathy-style JSON (images of ``split``; every caption of each)."""
    path = Path(karpathy_json)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SourceUnreadable(f"Cannot read retrieval file {path}: {e}.", "Give a Karpathy-style JSON file.", path=path) from e
    entries = [e for e in data.get("images", []) if e.get("split", split) == split]
    if not entries:
        raise InvalidInput(f"{path} has no images with split {split!r}.", "Check its 'split' fields.", path=path)
    paths, texts, t2i = [], [], []
    for i, e in enumerate(entries):
        p = Path(e.get("filepath", "")) / e["filename"]
        paths.append(str(p if p.is_absolute() else path.parent / p))
        for s in e["sentences"]:
            texts.append(s["raw"] if isinstance(s, dict) else s)
            t2i.append(i)
    res = metrics.retrieval_recalls(model.encode_images(paths), model.encode_texts(texts), t2i)
    res.update({"images": len(paths), "texts": len(texts)})
    return res


def counting(model, counts_csv, max_count: int = 10) -> dict:
    """RemoteCount-style counting: the best of the captions for 1..max_count is the predicted count."""
    from core.prompts import count_captions

    path = Path(counts_csv)
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"image", "object", "count"} <= set(rows[0]):
        raise InvalidInput(f"Counting table {path} needs columns image,object,count.",
                              "Write one row per image with its object name and true count (1..10).", path=path)
    imgs = model.encode_images([str(Path(r["image"]) if Path(r["image"]).is_absolute() else path.parent / r["image"])
                                for r in rows])
    preds = []
    text_cache = {}
    for r, emb in zip(rows, imgs, strict=True):
        obj = r["object"]
        if obj not in text_cache:
            caps = count_captions(obj, max_count)
            text_cache[obj] = metrics.class_embeddings(model.encode_texts([c for per in caps for c in per]),
                                                       max_count, len(caps[0]))
        preds.append(int(np.argmax(text_cache[obj] @ emb)) + 1)
    res = metrics.counting_accuracy(preds, [int(r["count"]) for r in rows])
    res["chance_accuracy"] = 1.0 / max_count
    return res


def run(model, args) -> dict:
    results = {"model": model.name}
    if args.zeroshot:
        results["zeroshot"] = zeroshot(model, args.zeroshot, args.split_file, "test")
        needs_split = args.linear_probe or args.knn or args.few_shot
        if needs_split and not args.split_file:
            raise InvalidInput("Linear probe, k-NN and few-shot need a train/test split.",
                                  "Pass --split-file (write one with --make-split).")
        if needs_split:
            f = folder_features(model, args.zeroshot, args.split_file)
            (xtr, ytr), (xte, yte), nc = f["train"], f["test"], f["n_classes"]
            if args.linear_probe:
                results["linear_probe"] = metrics.linear_probe(xtr, ytr, xte, yte, nc)
            if args.knn:
                pred = metrics.knn_predict(xtr, ytr, xte, k=args.knn, n_classes=nc)
                results["knn"] = {"k": args.knn, "top1": float(np.mean(pred == yte)),
                                  "mean_per_class_recall": metrics.mean_per_class_recall(pred, yte, nc)}
            for k in args.few_shot or []:
                results[f"few_shot_{k}"] = metrics.few_shot(xtr, ytr, xte, yte, k, n_classes=nc)
    if args.retrieval:
        results["retrieval"] = retrieval(model, args.retrieval)
    if args.counting:
        results["counting"] = counting(model, args.counting)
    return results


def markdown(results: dict) -> str:
    """One table: task | metric | value (percent)."""
    lines = [f"Model: {results['model']}", "", "| task | metric | value |", "|---|---|---|"]

    def pct(v):
        return f"{100 * v:.1f}%"

    z = results.get("zeroshot")
    if z:
        ci = z.get("top1_ci95")
        lines += [f"| zero-shot ({z['n']} images, {len(z['classes'])} classes) | top-1 | {pct(z['top1'])} |"]
        if ci:
            lines += [f"| | top-1 95% CI (Wilson) | {pct(ci[0])} – {pct(ci[1])} |"]
        lines += [f"| | top-5 | {pct(z['top5'])} |",
                  f"| | mean per-class recall | {pct(z['mean_per_class_recall'])} |",
                  f"| | chance top-1 | {pct(z['chance_top1'])} |"]
    if "linear_probe" in results:
        lp = results["linear_probe"]
        lines += [f"| linear probe | top-1 | {pct(lp['top1'])} |",
                  f"| | mean per-class recall | {pct(lp['mean_per_class_recall'])} |"]
    if "knn" in results:
        lines += [f"| k-NN (k={results['knn']['k']}) | top-1 | {pct(results['knn']['top1'])} |"]
    for key, v in results.items():
        if key.startswith("few_shot_"):
            lines += [f"| few-shot ({v['k']}-shot, {v['seeds']} seeds) | top-1 (± std) | {pct(v['top1'])} "
                      f"± {100 * v['std']:.1f} |"]
    r = results.get("retrieval")
    if r:
        lines += [f"| retrieval ({r['images']} images, {r['texts']} texts) | image→text R@1/5/10 | "
                  f"{r['image_to_text_R@1']:.1f} / {r['image_to_text_R@5']:.1f} / {r['image_to_text_R@10']:.1f} |",
                  f"| | text→image R@1/5/10 | {r['text_to_image_R@1']:.1f} / {r['text_to_image_R@5']:.1f} / "
                  f"{r['text_to_image_R@10']:.1f} |",
                  f"| | mean recall | {r['mean_recall']:.1f} |"]
    c = results.get("counting")
    if c:
        lines += [f"| counting ({c['n']} images, 1–10) | accuracy | {pct(c['accuracy'])} |",
                  f"| | within ±1 | {pct(c['within_1'])} |", f"| | mean abs. error | {c['mae']:.2f} |"]
    return "\n".join(lines) + "\n"


def write_results(results: dict, out) -> tuple[Path, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in (("results.json", json.dumps(results, indent=2) + "\n"), ("results.md", markdown(results))):
        p = out / name
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, p)
        paths.append(p)
    return paths[0], paths[1]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m training.evaluate",
                                 description="Zero-shot, retrieval, linear probe, k-NN, few-shot and counting "
                                             "evaluation of a checkpoint or a bundle.")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="OpenCLIP-format checkpoint (with --arch)")
    src.add_argument("--bundle", help="model bundle folder or .rclip.zip")
    ap.add_argument("--arch", help="open_clip architecture of --checkpoint (small-vit, ViT-B-32, ...)")
    ap.add_argument("--activation", choices=("quick_gelu", "gelu"), default="quick_gelu")
    ap.add_argument("--precision", choices=("fp32", "fp16"), default="fp32", help="bundle graphs to use")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ap.add_argument("--zeroshot", help="folder dataset (one subfolder per class)")
    ap.add_argument("--split-file", help="JSON split of the folder dataset (test: evaluated; train: probes)")
    ap.add_argument("--make-split", metavar="FILE",
                    help="write a fixed-seed per-class split of --zeroshot to FILE (and exit)")
    ap.add_argument("--test-per-class", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--retrieval", help="Karpathy-style JSON (its test split)")
    ap.add_argument("--linear-probe", action="store_true")
    ap.add_argument("--knn", type=int, nargs="?", const=5, default=0, help="k-NN with k neighbours (default 5)")
    ap.add_argument("--few-shot", type=int, nargs="*", default=[], help="k-shot linear probes, e.g. 1 5")
    ap.add_argument("--counting", help="CSV image,object,count")
    ap.add_argument("--out", help="folder for results.md and results.json")
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.make_split:
            if not args.zeroshot:
                raise InvalidInput("--make-split needs --zeroshot FOLDER.", "Name the folder dataset to split.")
            s = make_split(args.zeroshot, args.test_per_class, args.seed)
            Path(args.make_split).write_text(json.dumps(s, indent=1) + "\n")
            print(f"{len(s['train'])} train / {len(s['test'])} test images -> {args.make_split}")
            return 0
        if not (args.zeroshot or args.retrieval or args.counting):
            raise InvalidInput("No evaluation was asked for.",
                                  "Pass --zeroshot FOLDER, --retrieval FILE or --counting CSV.")
        if args.checkpoint:
            if not args.arch:
                raise InvalidInput("--checkpoint needs --arch.", "Add e.g. --arch ViT-B-32.")
            model = TorchModel.from_checkpoint(args.checkpoint, args.arch, args.activation,
                                               "cuda" if args.device == "cuda" else "cpu")
        elif args.bundle:
            model = BundleModel(args.bundle, args.precision, args.device)
        else:
            raise InvalidInput("No model given.", "Pass --checkpoint FILE --arch ARCH or --bundle DIR.")
        results = run(model, args)
        print(markdown(results))
        if args.out:
            j, m = write_results(results, args.out)
            print(f"wrote {j} and {m}", file=sys.stderr)
        return 0
    except RemoteClipError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

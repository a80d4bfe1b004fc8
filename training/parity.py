"""Parity of a bundle against the open_clip model it came from, on real images and prompts.

Both sides get the same pixels (open_clip's own eval transform from the model's PreprocessCfg),
so the table measures the graphs, not two resizing implementations. The text side checks the
torch-free tokenizer too: the bundle is fed by core.runtime.tokenizer, open_clip by its own tokenizer.

Thresholds: per-embedding cosine >= 0.99999 (fp32), >= 0.999 (fp16), and the same top-1 label
for every image over the label set.
"""

from __future__ import annotations

import os
from pathlib import Path

from core.errors import ModelError, SourceUnreadable

THRESHOLDS = {"fp32": 0.99999, "fp16": 0.999}
# RSSCN7 folder -> class name used in prompts
RSSCN7_CLASSES = {"aGrass": "grass", "bField": "field", "cIndustry": "industry", "dRiverLake": "river or lake",
                  "eForest": "forest", "fResident": "residential area", "gParking": "parking lot"}
TEMPLATE = "a satellite photo of {}."
EXTRA_PROMPTS = [
    "An aerial image of many cars parked in rows next to a large building.",
    "Dense residential houses with red roofs along narrow streets",
    "a river crossing green farmland, seen from above",
    "Industrial area with storage tanks & warehouses (high resolution)",
    "",
    "Ein Wald mit Nadelbäumen; vue aérienne d'une forêt — 森林",
    "12 ships in a harbor",
]


def default_data_dir() -> Path:
    root = Path(__file__).resolve().parents[1]
    return Path(os.environ.get("REMOTECLIP_DATA", root.parent / "shared" / "data")).resolve()


def rsscn7_images(data_dir=None, per_class: int = 2) -> list[tuple[Path, str]]:
    """(image path, class name) pairs, the first ``per_class`` images of each RSSCN7 class."""
    root = Path(data_dir or default_data_dir()) / "scenes" / "rsscn7"
    if not root.is_dir():
        raise SourceUnreadable(f"Real test images not found at {root}.",
                              "Set REMOTECLIP_DATA to the shared data folder (it holds scenes/rsscn7).", path=root)
    out = []
    for folder, name in RSSCN7_CLASSES.items():
        files = sorted((root / folder).glob("*.jpg"))[:per_class]
        out += [(f, name) for f in files]
    if not out:
        raise SourceUnreadable(f"No RSSCN7 images under {root}.", "Check the shared data folder.", path=root)
    return out


def _cos_rows(a, b):
    import numpy as np

    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def verify_bundle(bundle_dir, model, preprocess_cfg: dict, arch: str | None = None, data_dir=None,
                  per_class: int = 2, precisions=None, write: bool = True) -> dict:
    """Compare the bundle's graphs with the torch model; return {precision: row} (and write it into the manifest).

    Each row: image_cos_min, text_cos_min, top1_agree (fraction of images), n_images, n_texts, passed.
    """
    import numpy as np
    import onnxruntime as ort
    import open_clip
    import torch
    import torch.nn.functional as F
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from PIL import Image

    from core.runtime.bundle import load_bundle, write_manifest
    from core.runtime.tokenizer import Tokenizer

    bundle = load_bundle(bundle_dir)
    pairs = rsscn7_images(data_dir, per_class)
    labels = list(dict.fromkeys(RSSCN7_CLASSES.values()))
    prompts = [TEMPLATE.format(c) for c in labels]
    texts = prompts + EXTRA_PROMPTS

    pp = PreprocessCfg(**{k: v for k, v in preprocess_cfg.items() if k in PreprocessCfg.__dataclass_fields__})
    transform = image_transform_v2(pp, is_train=False)
    pixels = torch.stack([transform(Image.open(p).convert("RGB")) for p, _ in pairs])

    model = model.float().eval()
    ref_tok = open_clip.get_tokenizer(arch) if arch and arch in open_clip.list_models() else open_clip.tokenize
    ids_ref = ref_tok(texts)
    ids = Tokenizer.from_bundle(bundle)(texts)
    if not np.array_equal(ids, ids_ref.numpy()):
        raise ModelError("The bundle's tokenizer gives other ids than open_clip's.",
                              "Report this as a bug: core.runtime.tokenizer must match open_clip exactly.")
    with torch.no_grad():
        img_ref = F.normalize(model.encode_image(pixels), dim=-1).numpy()
        txt_ref = F.normalize(model.encode_text(ids_ref), dim=-1).numpy()
    scale = bundle.logit_scale
    top_ref = (scale * img_ref @ txt_ref[: len(labels)].T).argmax(axis=1)

    results = {}
    so = ort.SessionOptions()
    so.log_severity_level = 3
    # int8 graphs are approximations by design: their agreement with fp32 is measured when they are made
    # (manifest "quantization"), not held to these bars
    for precision in precisions or [p for p in bundle.precisions if p in THRESHOLDS]:
        img_s = ort.InferenceSession(str(bundle.graph_path("image", precision)), so,
                                     providers=["CPUExecutionProvider"])
        txt_s = ort.InferenceSession(str(bundle.graph_path("text", precision)), so,
                                     providers=["CPUExecutionProvider"])
        img = img_s.run(None, {"pixel_values": pixels.numpy()})[0]
        txt = txt_s.run(None, {"input_ids": ids})[0]
        top = (scale * img @ txt[: len(labels)].T).argmax(axis=1)
        row = {
            "image_cos_min": float(_cos_rows(img, img_ref).min()),
            "text_cos_min": float(_cos_rows(txt, txt_ref).min()),
            "top1_agree": float((top == top_ref).mean()),
            "n_images": len(pairs),
            "n_texts": len(texts),
        }
        row["passed"] = bool(row["image_cos_min"] >= THRESHOLDS[precision]
                             and row["text_cos_min"] >= THRESHOLDS[precision] and row["top1_agree"] == 1.0)
        results[precision] = row
    if write:
        manifest = dict(bundle.manifest)
        manifest["parity"] = {"images": f"RSSCN7 x{len(pairs)}", "labels": labels, "template": TEMPLATE,
                              "thresholds": THRESHOLDS, **results}
        write_manifest(bundle.path, manifest)
    return results


def format_table(results: dict) -> str:
    lines = [f"{'precision':<10} {'image cos min':>14} {'text cos min':>13} {'top-1 agree':>12} "
             f"{'threshold':>10}  result"]
    for precision, r in results.items():
        lines.append(f"{precision:<10} {r['image_cos_min']:>14.7f} {r['text_cos_min']:>13.7f} "
                     f"{r['top1_agree'] * 100:>11.1f}% {THRESHOLDS[precision]:>10}  "
                     f"{'PASS' if r['passed'] else 'FAIL'}  ({r['n_images']} images, {r['n_texts']} texts)")
    return "\n".join(lines)

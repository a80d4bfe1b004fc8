"""The reference pipeline that core's ONNX pipeline is checked and benchmarked against.

Same tiles, same stretch to 8 bits, then everything the usual open_clip way:
one rasterio read of the area the tiles cover, a PIL image of it, PIL crops of
the tile windows, open_clip's own ``image_transform`` and the torch model, and
text features from ``open_clip.tokenize`` with the same template ensemble.
Nothing of core's preprocessing or inference is used: an error there shows up
as a disagreement.

Also makes the random-weight models the tests and benchmarks use (there are no
pretrained CLIP weights on these machines): ``random_model`` and
``random_bundle`` (the same weights exported as a bundle).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from training.checkpoints import eval_transform as transform  # open_clip's eval transform, not core's


def random_model(arch: str = "ViT-B-32", seed: int = 0, activation: str = "quick_gelu"):
    """(model, preprocess_cfg, model_config) with seeded random weights; ``tiny-test`` is the unit-test model."""
    import torch

    from training import export

    if arch == "tiny-test":
        model, cfg, pp = export.tiny_model(seed, activation)  # that one returns (model, config, preprocess)
        return model, pp, cfg
    from training import checkpoints

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return checkpoints.build_model(arch, None, activation)


def random_bundle(arch: str, out_dir, seed: int = 0, activation: str = "quick_gelu", fp16: bool = False) -> Path:
    """Export ``random_model(arch, seed)`` as a bundle (reused when ``out_dir`` already holds that export)."""
    from training import export

    out_dir = Path(out_dir)
    origin = f"random-init seed={seed}"
    man = out_dir / "manifest.json"
    if man.is_file():
        m = json.loads(man.read_text())
        if m.get("architecture") == arch and m.get("source", {}).get("origin") == origin \
                and m.get("activation") == activation:
            return out_dir
    model, pp, cfg = random_model(arch, seed, activation)
    return export.export_bundle(model, pp, out_dir, architecture=arch, model_config=cfg, activation=activation,
                                name=f"{arch}-random-{seed}", fp16=fp16,
                                source={"checkpoint": None, "sha256": None, "origin": origin})


def text_features(model, class_prompts: list[list[str]]):
    """clip_benchmark's ensemble: normalise, average over templates, renormalise. (C, D) torch tensor."""
    import open_clip
    import torch

    feats = []
    with torch.no_grad():
        for prompts in class_prompts:
            e = model.encode_text(open_clip.tokenize(prompts))
            e = e / e.norm(dim=-1, keepdim=True)
            m = e.mean(dim=0)
            feats.append(m / m.norm())
    return torch.stack(feats)


def _tile_window_image(src_path: str, bands, stretch, grid, fill_color: int):
    """One rasterio read of the tiles' bounding window -> (PIL RGB image, valid mask, (col0, row0))."""
    import rasterio
    from PIL import Image
    from rasterio.windows import Window

    c0 = min(t.window[0] for t in grid)
    r0 = min(t.window[1] for t in grid)
    c1 = max(t.window[0] + t.window[2] for t in grid)
    r1 = max(t.window[1] + t.window[3] for t in grid)
    with rasterio.open(src_path) as ds:
        win = Window(c0, r0, c1 - c0, r1 - r0)
        data = ds.read(list(bands), window=win, boundless=True, fill_value=ds.nodata or 0)
        mask = ds.read_masks(list(bands), window=win, boundless=True)
    # core's rule (core/raster.py): nodata only where every band read is nodata, as rasterio's dataset_mask
    valid = (mask > 0).any(axis=0)
    rgb = stretch.apply(data, valid)
    if rgb.shape[0] == 3:  # CHW -> HWC
        rgb = np.ascontiguousarray(rgb.transpose(1, 2, 0))
    rgb = rgb.copy()
    rgb[~valid] = fill_color
    return Image.fromarray(rgb), valid, (c0, r0)


def reference_embeddings(raster: str, model, preprocess_cfg: dict, tiles=None, batch_size: int = 32,
                         bands=None):
    """Tile embeddings the open_clip way. Returns (tiles kept (not all nodata), (n, D) numpy float32)."""
    import torch

    from core.raster import Stretch, default_bands, open_raster
    from core.tiles import TileSpec, make_grid

    tiles = tiles or TileSpec()
    src = open_raster(raster)
    try:
        bands = list(bands or tiles.bands or default_bands(src))
        grid = make_grid(src, tiles)
        stretch = Stretch.from_source(src, bands)
    finally:
        src.close()
    tf = transform(preprocess_cfg)
    img, valid, (c0, r0) = _tile_window_image(raster, bands, stretch, grid, int(preprocess_cfg.get("fill_color", 0)))
    kept, out, batch = [], [], []

    def flush():
        with torch.no_grad():
            e = model.encode_image(torch.stack(batch))
            out.append((e / e.norm(dim=-1, keepdim=True)).float().numpy())
        batch.clear()

    for t in grid:
        c, r, w, h = t.window
        if not valid[r - r0:r - r0 + h, c - c0:c - c0 + w].any():
            continue
        crop = img.crop((c - c0, r - r0, c - c0 + w, r - r0 + h))
        batch.append(tf(crop))
        kept.append(t)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    emb = np.concatenate(out) if out else np.zeros((0, int(model.text_projection.shape[-1])), np.float32)
    return kept, emb


def reference_labels(raster: str, model, preprocess_cfg: dict, labels: list[str], templates=None, tiles=None,
                     batch_size: int = 32, logit_scale: float | None = None) -> dict:
    """{(row, col): (top-1 label, top-1 probability)} for the raster's tiles, all in torch/open_clip."""
    from core.prompts import label_prompts

    t0 = time.perf_counter()
    kept, emb = reference_embeddings(raster, model, preprocess_cfg, tiles, batch_size)
    text = text_features(model, label_prompts(labels, templates)).float().numpy()
    scale = float(model.logit_scale.exp().item()) if logit_scale is None else logit_scale
    logits = scale * emb @ text.T
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    best = probs.argmax(axis=1)
    out = {(t.row, t.col): (labels[b], float(probs[i, b])) for i, (t, b) in enumerate(zip(kept, best, strict=True))}
    reference_labels.last_seconds = time.perf_counter() - t0
    return out

"""The reference pipeline that core's ONNX pipeline is checked and benchmarked against.

The documented rules (docs/ARCHITECTURE.md) written again, the plain way: the
tile grid, the band choice and the percentile stretch from rasterio windows
and numpy, one rasterio read of the area the tiles cover, a PIL image of it,
PIL crops of the tile windows, open_clip's own ``image_transform`` and the
torch model, and text features from ``open_clip.tokenize`` over its own copy
of the default templates. Nothing of core is imported: a bug in core's grid,
bands, stretch, prompts, preprocessing or inference shows up as a
disagreement. (Pixel tile sizes and bounding boxes in the raster's CRS only.)

Also makes the random-weight models the tests and benchmarks use (there are no
pretrained CLIP weights on these machines): ``random_model`` and
``random_bundle`` (the same weights exported as a bundle), and ``trained_looking`` (random weights
without the constants of a fresh initialisation).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
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


def trained_looking(sd: dict, seed: int = 0) -> dict:
    """Random weights without the constants of a fresh initialisation, which hide mistakes: open_clip starts
    attention biases and LayerNorm biases at 0, LayerNorm and BatchNorm scales at 1 (RN50's last BatchNorm of
    each block at 0, which switches the residual branch off) and BatchNorm statistics at 0 and 1. Trained
    checkpoints have none of that; here constant tensors get noise and BatchNorm variances spread over
    0.1..2 (log-uniform), so that a dropped bias, a wrong epsilon or a dead branch changes the output."""
    import torch

    gen = torch.Generator().manual_seed(1000 + seed)
    out = {}
    for k, v in sd.items():
        if v.is_floating_point() and v.dim() > 0:
            if k.endswith("running_var"):
                v = torch.exp(torch.empty(v.shape).uniform_(-2.3, 0.7, generator=gen))
            elif k.endswith("running_mean"):
                v = 0.1 * torch.randn(v.shape, generator=gen)
            elif k.endswith(".weight") and (".bn" in k or "downsample.1" in k):  # BatchNorm scales
                v = 1 + 0.1 * torch.randn(v.shape, generator=gen)
            elif bool((v == v.flatten()[0]).all()):  # other constants: biases, LayerNorm
                v = v + (0.1 if float(v.flatten()[0]) else 0.02) * torch.randn(v.shape, generator=gen)
        out[k] = v.contiguous()
    return out


def text_tokens_dynamic(bundle_dir) -> bool:
    """Whether the bundle's fp32 text graph takes any number of tokens (exports since the dynamic token axis);
    an older export declares 77 and encodes every prompt at 77 tokens, several times the work, so a bundle
    reused for timing must be re-exported."""
    import onnx

    path = Path(bundle_dir) / "text_fp32.onnx"
    if not path.is_file():
        return False
    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return len(dims) == 2 and not dims[1].HasField("dim_value")


def random_bundle(arch: str, out_dir, seed: int = 0, activation: str = "quick_gelu", fp16: bool = False) -> Path:
    """Export ``random_model(arch, seed)`` as a bundle (reused when ``out_dir`` already holds that export)."""
    from training import export

    out_dir = Path(out_dir)
    origin = f"random-init seed={seed}"
    man = out_dir / "manifest.json"
    if man.is_file():
        m = json.loads(man.read_text())
        if m.get("architecture") == arch and m.get("source", {}).get("origin") == origin \
                and m.get("activation") == activation and text_tokens_dynamic(out_dir):
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


# --- the reference's own reading, stretch and grid (rasterio + numpy; nothing from core) ------------------

# The plugin's default zero-shot templates (those of core.prompts.DEFAULT_TEMPLATES), written out here again
# so that a change in core's prompts shows up as a disagreement.
TEMPLATES = ["a satellite photo of {}.", "an aerial photo of {}.", "a remote sensing image of {}.",
             "a top-down view of {}.", "an aerial image showing {}."]
PERCENTILES = (2.0, 98.0)
SAMPLE_PX = 1024   # long side of the decimated read the percentiles come from


@dataclass(frozen=True)
class RefTile:
    row: int
    col: int
    window: tuple[int, int, int, int]   # (col_off, row_off, width, height)


def rgb_bands(ds) -> list[int]:
    """Red, green, blue by colour interpretation, else the first three non-alpha bands, else band 1 three times."""
    ci = [c.name for c in ds.colorinterp]
    if all(c in ci for c in ("red", "green", "blue")):
        return [ci.index("red") + 1, ci.index("green") + 1, ci.index("blue") + 1]
    usable = [i + 1 for i, c in enumerate(ci) if c != "alpha"] or [1]
    return usable[:3] if len(usable) >= 3 else [usable[0]] * 3


def _starts(length: int, tile: int, step: int, edge: str) -> list[int]:
    starts = list(range(0, length - tile + 1, step))
    if starts[-1] + tile < length:
        if edge == "shift":
            starts.append(length - tile)
        elif edge == "pad":
            starts.append(starts[-1] + step)
    return starts


def tile_grid(ds, tiles) -> list[RefTile]:
    """The documented grid (docs/ARCHITECTURE.md, "Tiles"): whole-pixel tiles anchored at the top-left pixel,
    stepping by round(size * (1 - overlap)), the last one shifted inside, padded past the edge or dropped; a
    bounding box in the raster's CRS keeps the tiles whose windows overlap it. Pixel units only."""
    from rasterio.transform import rowcol

    size = getattr(tiles, "size", 224)
    if (getattr(tiles, "unit", "px") or "px") != "px" or size != int(size):
        raise ValueError("the reference grid takes whole pixels only")
    size = int(size)
    step = max(1, round(size * (1 - float(getattr(tiles, "overlap", 0.0) or 0.0))))
    edge = getattr(tiles, "edge", "shift") or "shift"
    cols = _starts(ds.width, size, step, edge)
    rows = _starts(ds.height, size, step, edge)
    ext = getattr(tiles, "extent", None)
    if ext is not None:
        if getattr(ext, "crs", None) is not None or not hasattr(ext, "xmin"):
            raise ValueError("the reference grid takes a bounding box in the raster's CRS only")
        corners = [rowcol(ds.transform, x, y, op=lambda v: v) for x in (ext.xmin, ext.xmax) for y in (ext.ymin, ext.ymax)]
        r0, r1 = min(r for r, _ in corners), max(r for r, _ in corners)
        c0, c1 = min(c for _, c in corners), max(c for _, c in corners)
        keep_c = [j for j, c in enumerate(cols) if c < c1 and c + size > c0]
        keep_r = [i for i, r in enumerate(rows) if r < r1 and r + size > r0]
    else:
        keep_c, keep_r = range(len(cols)), range(len(rows))
    return [RefTile(i, j, (cols[j], rows[i], size, size)) for i in keep_r for j in keep_c]


def _valid(data: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Valid where any band read is valid by GDAL's mask (alpha, mask file or nodata) and, for floats, not NaN."""
    ok = masks > 0
    if data.dtype.kind == "f":
        ok &= ~np.isnan(data)
    return ok.any(axis=0)


class RefStretch:
    """The documented stretch to 8 bits: a colour table looked up, uint8 as it is, anything else linear per
    band between its 2nd and 98th percentiles of the valid pixels of a decimated read (nearest, at most
    SAMPLE_PX a side), rounded half up and clipped."""

    def __init__(self, ds, bands):
        from rasterio.enums import Resampling

        self.table = self.lo = self.hi = None
        if len(set(bands)) == 1 and ds.colorinterp[bands[0] - 1].name == "palette":
            cmap = ds.colormap(bands[0])
            self.table = np.zeros((max(cmap) + 1, 3), np.uint8)
            for i, rgba in cmap.items():
                self.table[i] = rgba[:3]
            return
        if ds.dtypes[bands[0] - 1] == "uint8":
            return
        scale = min(1.0, SAMPLE_PX / max(ds.width, ds.height))
        shape = (len(bands), max(1, math.ceil(ds.height * scale)), max(1, math.ceil(ds.width * scale)))
        data = ds.read(bands, out_shape=shape, resampling=Resampling.nearest)
        masks = ds.read_masks(bands, out_shape=shape, resampling=Resampling.nearest)
        valid = _valid(data, masks)
        self.lo, self.hi = [], []
        for band in data:
            v = band[valid].astype(np.float64)
            v = v[np.isfinite(v)]
            lo, hi = np.percentile(v, PERCENTILES) if v.size else (0.0, 1.0)
            if not hi > lo:
                lo, hi = lo - 0.5, lo + 0.5
            self.lo.append(float(lo))
            self.hi.append(float(hi))

    def apply(self, data: np.ndarray) -> np.ndarray:
        if self.table is not None:
            return np.moveaxis(self.table[np.clip(data[0].astype(np.int64), 0, len(self.table) - 1)], -1, 0)
        if self.lo is None:
            return data.astype(np.uint8)
        lo = np.asarray(self.lo)[:, None, None]
        hi = np.asarray(self.hi)[:, None, None]
        x = np.nan_to_num((data.astype(np.float64) - lo) / (hi - lo) * 255.0, nan=0.0)
        return np.floor(np.clip(x, 0, 255) + 0.5).astype(np.uint8)


def _tile_window_image(ds, bands, stretch: RefStretch, grid, fill_color: int):
    """One rasterio read of the tiles' bounding window -> (PIL RGB image, valid mask, (col0, row0))."""
    from PIL import Image
    from rasterio.windows import Window

    c0 = min(t.window[0] for t in grid)
    r0 = min(t.window[1] for t in grid)
    c1 = max(t.window[0] + t.window[2] for t in grid)
    r1 = max(t.window[1] + t.window[3] for t in grid)
    win = Window(c0, r0, c1 - c0, r1 - r0)
    data = ds.read(list(bands), window=win, boundless=True, fill_value=ds.nodata or 0)
    masks = ds.read_masks(list(bands), window=win, boundless=True)
    valid = _valid(data, masks)
    rgb = np.ascontiguousarray(stretch.apply(data).transpose(1, 2, 0))
    rgb[~valid] = fill_color
    return Image.fromarray(rgb), valid, (c0, r0)


class _TileDataset:
    """The tiles one by one for a torch DataLoader: each worker opens the raster itself (a GDAL dataset is
    not shared between processes), reads a tile's window (boundless, as the one-read path does), stretches,
    fills nodata and applies open_clip's transform. Items: (pixels, any pixel valid)."""

    def __init__(self, raster: str, bands, stretch: RefStretch, grid, preprocess_cfg: dict):
        self.raster, self.bands, self.stretch, self.grid = raster, list(bands), stretch, grid
        self.tf = transform(preprocess_cfg)
        self.fill = int(preprocess_cfg.get("fill_color", 0))
        self.ds = None

    def __len__(self):
        return len(self.grid)

    def __getitem__(self, i):
        import rasterio
        from PIL import Image
        from rasterio.windows import Window

        if self.ds is None:
            self.ds = rasterio.open(self.raster)
        win = Window(*self.grid[i].window)
        data = self.ds.read(self.bands, window=win, boundless=True, fill_value=self.ds.nodata or 0)
        valid = _valid(data, self.ds.read_masks(self.bands, window=win, boundless=True))
        rgb = np.ascontiguousarray(self.stretch.apply(data).transpose(1, 2, 0))
        rgb[~valid] = self.fill
        return self.tf(Image.fromarray(rgb)), bool(valid.any())


def reference_embeddings(raster: str, model, preprocess_cfg: dict, tiles=None, batch_size: int = 32,
                         bands=None, workers: int = 0):
    """Tile embeddings the open_clip way. Returns (tiles kept (not all nodata), (n, D) numpy float32).

    ``tiles`` is anything with core.geodata.tiles.TileSpec's attributes (size, unit, overlap, extent, bands, edge).
    ``workers`` > 0 reads and transforms tiles in that many torch DataLoader worker processes while the model
    encodes (the pipelined reference); 0 reads the tiles' area once and crops it, serially."""
    import rasterio
    import torch

    tf = transform(preprocess_cfg)
    with rasterio.open(raster) as ds:
        bands = list(bands or getattr(tiles, "bands", None) or rgb_bands(ds))
        if len(bands) == 1:
            bands = bands * 3
        grid = tile_grid(ds, tiles)
        stretch = RefStretch(ds, bands)
        if workers > 0:
            img = None
        else:
            img, valid, (c0, r0) = _tile_window_image(ds, bands, stretch, grid,
                                                      int(preprocess_cfg.get("fill_color", 0)))
    if img is None:
        return _embeddings_loader(raster, model, preprocess_cfg, grid, bands, stretch, batch_size, workers)
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


def _embeddings_loader(raster, model, preprocess_cfg, grid, bands, stretch, batch_size, workers):
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(_TileDataset(raster, bands, stretch, grid, preprocess_cfg), batch_size=batch_size,
                        num_workers=workers, shuffle=False)
    kept, out = [], []
    start = 0
    with torch.no_grad():
        for pixels, any_valid in loader:
            batch = grid[start:start + len(pixels)]
            start += len(pixels)
            keep = any_valid.bool()
            if not bool(keep.any()):
                continue
            e = model.encode_image(pixels[keep])
            out.append((e / e.norm(dim=-1, keepdim=True)).float().numpy())
            kept += [t for t, k in zip(batch, keep.tolist(), strict=True) if k]
    emb = np.concatenate(out) if out else np.zeros((0, int(model.text_projection.shape[-1])), np.float32)
    return kept, emb


def reference_labels(raster: str, model, preprocess_cfg: dict, labels: list[str], templates=None, tiles=None,
                     batch_size: int = 32, logit_scale: float | None = None, workers: int = 0) -> dict:
    """{(row, col): (top-1 label, top-1 probability)} for the raster's tiles, all in torch/open_clip
    (``workers``: see reference_embeddings)."""
    t0 = time.perf_counter()
    kept, emb = reference_embeddings(raster, model, preprocess_cfg, tiles, batch_size, workers=workers)
    prompts = [[t.replace("{}", name) for t in (templates or TEMPLATES)] for name in labels]
    text = text_features(model, prompts).float().numpy()
    scale = float(model.logit_scale.exp().item()) if logit_scale is None else logit_scale
    logits = scale * emb @ text.T
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    best = probs.argmax(axis=1)
    out = {(t.row, t.col): (labels[b], float(probs[i, b])) for i, (t, b) in enumerate(zip(kept, best, strict=True))}
    reference_labels.last_seconds = time.perf_counter() - t0
    return out

"""Manifest-driven image preprocessing, the numpy twin of open_clip's ``image_transform``.

The bundle's ``image`` section says how the model saw images in training:
``resize_mode`` ``shortest`` (resize the short side to the model size, then
center-crop), ``longest`` (fit the long side, then center-crop-or-pad with
``fill_color``) or ``squash`` (resize both sides), an ``interpolation``, and the
``mean``/``std`` used to normalise. Resizing goes through Pillow, as open_clip's
torchvision transform does for PIL images, so the pixels match the reference
pipeline.

Nodata: pixels that are not valid (``valid`` False) are set to ``fill_color``
*before* resizing, so the model sees a flat fill instead of the raster's
arbitrary nodata value, the same fill open_clip pads with.
"""

from __future__ import annotations

import functools

import numpy as np

from ..errors import ModelError

_RESAMPLE = {"bicubic": 3, "bilinear": 2, "nearest": 0, "lanczos": 1, "box": 4, "hamming": 5}  # PIL codes


def _size(image_cfg: dict) -> tuple[int, int]:
    size = image_cfg["size"]
    if isinstance(size, int | float):
        return int(size), int(size)
    h, w = (int(s) for s in size)
    return h, w


def _resample(image_cfg: dict) -> int:
    name = str(image_cfg.get("interpolation", "bicubic")).lower()
    if name not in _RESAMPLE:
        raise ModelError(f"Unknown interpolation {name!r} in the bundle manifest.",
                              f"Use one of {', '.join(sorted(_RESAMPLE))} in manifest.json's image section.")
    return _RESAMPLE[name]


def _fill_rgb(image_cfg: dict) -> tuple[int, int, int]:
    fill = image_cfg.get("fill_color", 0)
    if isinstance(fill, int | float):
        return (int(fill),) * 3
    vals = [int(v) for v in fill]
    return tuple((vals * 3)[:3])


def _center_crop_or_pad(img, out_w: int, out_h: int, fill):
    """torchvision CenterCrop (pads with ``fill`` when the image is smaller), same rounding."""
    from PIL import Image

    w, h = img.size
    if w < out_w or h < out_h:
        padded = Image.new("RGB", (max(w, out_w), max(h, out_h)), fill)
        left = (max(w, out_w) - w) // 2
        top = (max(h, out_h) - h) // 2
        padded.paste(img, (left, top))
        img = padded
        w, h = img.size
    top = int(round((h - out_h) / 2.0))
    left = int(round((w - out_w) / 2.0))
    if (left, top, w, h) == (0, 0, out_w, out_h):
        return img
    return img.crop((left, top, left + out_w, top + out_h))


def resize_crop(rgb: np.ndarray, image_cfg: dict, valid: np.ndarray | None = None):
    """HxWx3 uint8 -> PIL image of the model's size (resize + crop as the manifest says)."""
    from PIL import Image

    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 array, got shape {rgb.shape}")
    if rgb.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {rgb.dtype}")
    fill = _fill_rgb(image_cfg)
    if valid is not None and not valid.all():
        rgb = rgb.copy()
        rgb[~valid] = fill
    out_h, out_w = _size(image_cfg)
    resample = _resample(image_cfg)
    mode = image_cfg.get("resize_mode", "shortest")
    img = Image.fromarray(np.ascontiguousarray(rgb))
    w, h = img.size
    if mode == "shortest":
        # torchvision Resize(int): the short side becomes the target, the long side int(target * long / short)
        # (open_clip passes a non-square size as a tuple, which torchvision resizes to exactly)
        target = out_h
        if out_h != out_w:
            new_w, new_h = out_w, out_h
        elif w <= h:
            new_w, new_h = target, int(target * h / w)
        else:
            new_w, new_h = int(target * w / h), target
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), resample)
        return _center_crop_or_pad(img, out_w, out_h, fill)
    if mode == "longest":
        # open_clip ResizeKeepRatio(longest=1) then CenterCropOrPad(fill)
        ratio = max(w / out_w, h / out_h)
        new_w, new_h = max(1, round(w / ratio)), max(1, round(h / ratio))
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), resample)
        return _center_crop_or_pad(img, out_w, out_h, fill)
    if mode == "squash":
        if (w, h) != (out_w, out_h):
            img = img.resize((out_w, out_h), resample)
        return img
    raise ModelError(f"Unknown resize_mode {mode!r} in the bundle manifest.",
                          "Use shortest, longest or squash in manifest.json's image section.")


@functools.lru_cache(maxsize=8)
def _channel_tables(mean: tuple, std: tuple) -> np.ndarray:
    """(3, 256) float32: every uint8 value of each channel already normalised, by the very float32
    operations of ToTensor + Normalize (so a table lookup gives the same bits as computing each pixel)."""
    v = np.arange(256, dtype=np.float32) / np.float32(255.0)
    m = np.asarray(mean, dtype=np.float32)[:, None]
    s = np.asarray(std, dtype=np.float32)[:, None]
    return (v[None, :] - m) / s


def normalize(img_hwc_uint8: np.ndarray, image_cfg: dict, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 HWC -> float32 CHW in [0, 1], minus mean, over std (ToTensor + Normalize), by table lookup: a
    pixel has 256 possible values per channel, and the reader thread must keep up with an int8 encoder on
    the same cores. ``out``: a (3, H, W) float32 array to fill (a slot of the batch)."""
    img = np.asarray(img_hwc_uint8)
    if img.dtype != np.uint8:   # not pixels as read: compute them
        x = np.asarray(img, dtype=np.float32) / np.float32(255.0)
        x = (x - np.asarray(image_cfg["mean"], np.float32)) / np.asarray(image_cfg["std"], np.float32)
        res = np.ascontiguousarray(x.transpose(2, 0, 1))
        if out is None:
            return res
        out[...] = res
        return out
    tables = _channel_tables(tuple(float(v) for v in image_cfg["mean"]), tuple(float(v) for v in image_cfg["std"]))
    if out is None:
        out = np.empty((3, *img.shape[:2]), dtype=np.float32)
    for c in range(3):
        np.take(tables[c], img[:, :, c], out=out[c])
    return out


def preprocess(rgb_uint8_hwc: np.ndarray, image_cfg: dict, valid: np.ndarray | None = None,
               out: np.ndarray | None = None) -> np.ndarray:
    """One tile (HxWx3 uint8) -> the model's input (3, H, W) float32 (written into ``out`` if given)."""
    img = resize_crop(rgb_uint8_hwc, image_cfg, valid)
    return normalize(np.asarray(img), image_cfg, out)


def preprocess_batch(images, image_cfg: dict, valids=None) -> np.ndarray:
    """A list of HxWx3 uint8 tiles -> (N, 3, H, W) float32."""
    out_h, out_w = _size(image_cfg)
    out = np.empty((len(images), 3, out_h, out_w), dtype=np.float32)
    for i, rgb in enumerate(images):
        preprocess(rgb, image_cfg, None if valids is None else valids[i], out[i])
    return out


def output_size(image_cfg: dict) -> tuple[int, int]:
    """(height, width) of the model input."""
    return _size(image_cfg)

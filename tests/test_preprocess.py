"""core.runtime.preprocess against open_clip's own eval transform, on real images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.errors import ModelError, RemoteClipError
from core.runtime.preprocess import output_size, preprocess, preprocess_batch
from training.reference_pipeline import transform

MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]


def _cfg(size=224, mode="shortest", interp="bicubic", fill=0):
    return {"size": [size, size] if isinstance(size, int) else list(size), "mean": MEAN, "std": STD,
            "resize_mode": mode, "interpolation": interp, "crop": "none" if mode == "squash" else "center",
            "fill_color": fill}


def _pp(cfg):
    size = cfg["size"]
    return {"size": size[0] if size[0] == size[1] else tuple(size), "mean": MEAN, "std": STD,
            "resize_mode": cfg["resize_mode"], "interpolation": cfg["interpolation"], "fill_color": cfg["fill_color"]}


@pytest.fixture(scope="module")
def real_crops(data_dir):
    """Real pixels of several shapes: RSSCN7 scenes (400x400) and crops of the Kampala mosaic."""
    scenes = sorted((data_dir / "scenes" / "rsscn7").glob("*/*.jpg"))[::20][:6]
    out = [np.asarray(Image.open(p).convert("RGB")) for p in scenes]
    mosaic = np.asarray(Image.open(data_dir / "orthomosaic" / "kampala_oam_z20_mosaic_1536x1024.tif").convert("RGB"))
    for (r, c, h, w) in [(0, 0, 256, 256), (100, 300, 224, 224), (500, 700, 300, 180), (10, 20, 97, 141),
                         (600, 900, 512, 512), (40, 40, 224, 300)]:
        out.append(np.ascontiguousarray(mosaic[r:r + h, c:c + w]))
    return out


@pytest.mark.parametrize("mode,size,interp", [("shortest", 224, "bicubic"), ("shortest", 64, "bicubic"),
                                              ("squash", 224, "bilinear"), ("longest", 224, "bicubic"),
                                              ("shortest", 336, "bicubic")])
def test_matches_open_clip_transform(real_crops, mode, size, interp):
    cfg = _cfg(size, mode, interp)
    tf = transform(_pp(cfg))
    for rgb in real_crops:
        ours = preprocess(rgb, cfg)
        ref = tf(Image.fromarray(rgb)).numpy()
        assert ours.shape == ref.shape == (3, size, size)
        assert ours.dtype == np.float32
        np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_batch_and_nodata_fill(real_crops):
    cfg = _cfg(64, fill=0)
    rgb = real_crops[6]
    valid = np.ones(rgb.shape[:2], bool)
    valid[:, : rgb.shape[1] // 2] = False
    batch = preprocess_batch([rgb, rgb], cfg, [None, valid])
    assert batch.shape == (2, 3, 64, 64)
    np.testing.assert_array_equal(batch[0], preprocess(rgb, cfg))
    filled = rgb.copy()
    filled[~valid] = 0
    np.testing.assert_array_equal(batch[1], preprocess(filled, cfg))
    assert not np.allclose(batch[0], batch[1])
    # fill 0 normalised is -mean/std in every channel: the left edge column is exactly that
    np.testing.assert_allclose(batch[1][:, 10, 0], -np.array(MEAN) / np.array(STD), rtol=1e-5)


def test_bad_config_and_input():
    rgb = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(ModelError) as err:
        preprocess(rgb, _cfg(mode="stretchy"))
    assert "'stretchy'" in err.value.problem and err.value.fix
    with pytest.raises(ModelError) as err:
        preprocess(rgb, _cfg(interp="magic"))
    assert "'magic'" in err.value.problem and err.value.fix
    with pytest.raises(ValueError) as err:   # a caller's bug, not a user's input: a plain ValueError
        preprocess(rgb.astype(np.float32), _cfg())
    assert not isinstance(err.value, RemoteClipError) and "float32" in str(err.value)
    assert output_size(_cfg((224, 320))) == (224, 320)


@pytest.mark.parametrize("mean, std", [(MEAN, STD), ([0.5, 0.25, 0.0], [0.5, 0.125, 1.0 / 3.0])])
def test_normalize_by_table_is_the_arithmetic_bit_for_bit(mean, std):
    """The lookup table holds every uint8 value of each channel normalised by the float32 operations of
    ToTensor + Normalize: a table built in float64, or with the channels swapped, would differ here."""
    from core.runtime.preprocess import normalize

    cfg = {"mean": mean, "std": std}
    every = np.stack(np.meshgrid(np.arange(256), np.arange(256), indexing="ij"), -1)[:, :, :1].repeat(3, 2)
    every = np.ascontiguousarray(every.astype(np.uint8))
    every[:, :, 1] = every[:, :, 1][::-1]            # each channel sees every value, in different places
    every[:, :, 2] = every[:, :, 2].T
    x = every.astype(np.float32) / np.float32(255.0)
    want = np.ascontiguousarray(((x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).transpose(2, 0, 1))
    got = normalize(every, cfg)
    assert got.dtype == np.float32 and got.shape == (3, 256, 256)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    slot = np.full((3, 256, 256), np.nan, np.float32)
    assert normalize(every, cfg, slot) is slot
    np.testing.assert_array_equal(slot, want)
    # values that are not uint8 pixels are computed, not looked up
    np.testing.assert_array_equal(normalize(every.astype(np.float64), cfg), want)

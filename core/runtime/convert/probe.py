"""What a conversion's self-check and the int8 agreement check feed both sides: prompts (through the
bundle's own tokenizer) and seeded images. A leaf module: core.runtime.convert and core.runtime.quantize both read it."""

from __future__ import annotations

import numpy as np

CHECK_PROMPTS = ["a satellite photo of a river.", "a satellite photo of a forest.",
                 "a satellite photo of a parking lot.", "a satellite photo of residential area.",
                 "an aerial image of farmland with a road", "12 ships in a harbor", ""]
CHECK_IMAGES = 4


def check_images(size: int, n: int = CHECK_IMAGES) -> np.ndarray:
    """Seeded (n, 3, size, size) float32 inputs in the range of normalised photos: smooth colour fields
    with edges and noise, so that every layer sees structure, not only white noise."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for i in range(n):
        f = 2 + 3 * i
        base = np.stack([np.sin(f * xx + c) * np.cos(f * yy - c) for c in (0.0, 1.0, 2.0)])
        base = base + 0.8 * (((xx * (i + 2)).astype(int) + (yy * (i + 3)).astype(int)) % 2)
        out.append(base + 0.3 * rng.standard_normal((3, size, size)))
    return np.stack(out).astype(np.float32)

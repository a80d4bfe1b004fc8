"""Per-tile AUC of the change task's ``change`` against LEVIR-CD's building-change masks (docs/change.md).

    .venv/bin/python scripts/measure_change.py [--data /work/shared/data] [--model models/remoteclip-demo]
        [--random-vit] [--tile 64]

Each of the 11 LEVIR-CD pairs (256 x 256 px, 0.5 m, no geo-reference) is written to a temporary GeoTIFF with a
made-up UTM geotransform and run through ``core.pipeline.run_job`` with the change task. A tile is changed
with >= 25 % changed pixels in the mask, unchanged with none; tiles in between are left out. Baseline: the mean
absolute pixel difference of the two dates per tile. Each is measured as it is, with a simulated lighting
change (AFTER * 0.6 + 30 per band), and with that change and --match-histograms (the pixel baseline with the
same per-band histogram matching).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHANGED, TILE_SHARE = 255, 0.25


def write_tif(path, arr):
    from osgeo import gdal, osr

    h, w = arr.shape[:2]
    ds = gdal.GetDriverByName("GTiff").Create(path, w, h, 3, gdal.GDT_Byte)
    ds.SetGeoTransform((500000.0, 0.5, 0, 3300000.0, 0, -0.5))
    s = osr.SpatialReference()
    s.ImportFromEPSG(32614)
    ds.SetProjection(s.ExportToWkt())
    for i in range(3):
        ds.GetRasterBand(i + 1).WriteArray(arr[..., i])
    ds = None
    return path


def auc(scores, truth) -> float:
    """Mann-Whitney AUC (ties count half)."""
    from scipy.stats import rankdata

    scores, truth = np.asarray(scores, float), np.asarray(truth, bool)
    pos, neg = truth.sum(), (~truth).sum()
    if not pos or not neg:
        return float("nan")
    r = rankdata(scores)
    return float((r[truth].sum() - pos * (pos + 1) / 2) / (pos * neg))


def light(a):
    return np.clip(a.astype(np.float64) * 0.6 + 30, 0, 255).astype(np.uint8)


def matched(before, after):
    from core.tasks.change import match_luts

    luts = match_luts(np.moveaxis(before, -1, 0), np.moveaxis(after, -1, 0), np.ones(before.shape[:2], bool))
    return np.stack([np.asarray(luts[i], np.uint8)[after[..., i]] for i in range(3)], -1)


def main(argv=None) -> int:
    from PIL import Image

    from core.pipeline import Job, RunOptions, TileSpec, run_job
    from core.tasks.change import ChangeTask

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.environ.get("REMOTECLIP_DATA", "/work/shared/data"))
    ap.add_argument("--model", action="append", help="model bundle(s) (default models/remoteclip-demo)")
    ap.add_argument("--random-vit", action="store_true", help="also a random-weight ViT-B-32 (needs torch)")
    ap.add_argument("--tile", type=int, default=64)
    args = ap.parse_args(argv)
    folder = os.path.join(args.data, "change", "levir-cd")
    names = sorted(os.listdir(os.path.join(folder, "A")))
    tmp = tempfile.mkdtemp(prefix="measure-change-")
    models = list(args.model or ["models/remoteclip-demo"])
    if args.random_vit:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
        from conftest import save_random_checkpoint

        from training.export import main as export

        ckpt = save_random_checkpoint("ViT-B-32", os.path.join(tmp, "vit.pt"))
        out = os.path.join(tmp, "random-vit-b-32")
        export(["--arch", "ViT-B-32", "--checkpoint", str(ckpt), "--out", out])
        models.append(out)
    t = args.tile
    settings = (("as is", False, False), ("lighting change", True, False), ("lighting + matching", True, True))
    truth: list[bool] = []
    scores: dict[tuple[str, str], list[float]] = {}
    for name in names:
        a = np.array(Image.open(os.path.join(folder, "A", name)).convert("RGB"))
        b = np.array(Image.open(os.path.join(folder, "B", name)).convert("RGB"))
        mask = np.array(Image.open(os.path.join(folder, "label", name)).convert("L")) == CHANGED
        tiles = [(r, c) for r in range(a.shape[0] // t) for c in range(a.shape[1] // t)]
        share = {rc: mask[rc[0] * t:(rc[0] + 1) * t, rc[1] * t:(rc[1] + 1) * t].mean() for rc in tiles}
        keep = [rc for rc in tiles if share[rc] >= TILE_SHARE or share[rc] == 0]
        truth += [share[rc] >= TILE_SHARE for rc in keep]
        before = write_tif(os.path.join(tmp, "a.tif"), a)
        for label, lit, match in settings:
            after_px = light(b) if lit else b
            after = write_tif(os.path.join(tmp, "b.tif"), after_px)
            base = matched(a, after_px) if match else after_px
            diff = {rc: float(np.abs(a[rc[0] * t:(rc[0] + 1) * t, rc[1] * t:(rc[1] + 1) * t].astype(int)
                                     - base[rc[0] * t:(rc[0] + 1) * t, rc[1] * t:(rc[1] + 1) * t].astype(int)).mean())
                    for rc in keep}
            scores.setdefault(("pixel difference", label), []).extend(diff[rc] for rc in keep)
            for model in models:
                res = run_job(Job(raster=before, task=ChangeTask(after=after, match_histograms=match),
                                  run=RunOptions(model=model, cache_dir=""), tiles=TileSpec(size=t)))
                got = {(r["row"], r["col"]): r["change"] for r in res.records}
                scores.setdefault((os.path.basename(model.rstrip("/")), label), []).extend(got[rc] for rc in keep)
    print(f"{len(names)} pairs, {t} px tiles: {sum(truth)} changed, {len(truth) - sum(truth)} unchanged "
          f"(changed: >= {TILE_SHARE:.0%} changed pixels; unchanged: none)")
    print(f"{'method':<28} " + " ".join(f"{s[0]:>20}" for s in settings))
    for method in dict.fromkeys(m for m, _ in scores):
        print(f"{method:<28} " + " ".join(f"{auc(scores[(method, s[0])], truth):>20.3f}" for s in settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())

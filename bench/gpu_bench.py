"""GPU benchmark (run by bench/gpu.sh on a machine with an NVIDIA GPU): onnxruntime's CUDA provider with the
fp32 and fp16 graphs of one bundle against torch on CUDA with the same weights, same tiles, same run.

    python bench/gpu_bench.py                      # device cuda (fails clearly without one)
    python bench/gpu_bench.py --device cpu --tiles 64 --e2e-size 2240   # the same code paths on a CPU

Measured (3 repeats, median and spread):
* encoder tiles/s on real Kampala tiles, preprocessed once: onnxruntime fp32 and fp16 through core's Encoder
  (I/O binding, batch chosen from free memory, reported), torch fp32 and fp16 (model.half()) at that batch;
* agreement: cosine of onnxruntime fp32/fp16 embeddings with torch fp32 (same weights);
* end to end: core's run_job (labels) on a VRT that repeats the mosaic, fp16, auto batch, its reader threads.

Not run on a GPU yet (none in development): see docs/performance.md. Writes bench-results/gpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = Path(os.environ.get("REMOTECLIP_DATA", ROOT.parent / "shared" / "data")).resolve()
MOSAIC = DATA / "orthomosaic" / "kampala_oam_z21_mosaic_3072x2048.tif"
OUT = ROOT / "bench-results"
LABELS = ["buildings", "road", "trees", "grass", "bare soil", "water", "cars", "roofs"]
REPEATS = 3


def mosaic_vrt(path: Path, size: int) -> Path:
    """A size x size VRT repeating the mosaic (written from rasterio's metadata: no GDAL bindings needed)."""
    import rasterio

    with rasterio.open(MOSAIC) as ds:
        w, h, n = ds.width, ds.height, ds.count
        gt = ds.transform.to_gdal()
        wkt = ds.crs.to_wkt()
        interps = [c.name.capitalize() for c in ds.colorinterp]
    bands = []
    for b in range(1, n + 1):
        src = "".join(
            f'<SimpleSource><SourceFilename relativeToVRT="0">{MOSAIC}</SourceFilename><SourceBand>{b}</SourceBand>'
            f'<SrcRect xOff="0" yOff="0" xSize="{min(w, size - c0)}" ySize="{min(h, size - r0)}"/>'
            f'<DstRect xOff="{c0}" yOff="{r0}" xSize="{min(w, size - c0)}" ySize="{min(h, size - r0)}"/>'
            "</SimpleSource>" for r0 in range(0, size, h) for c0 in range(0, size, w))
        bands.append(f'<VRTRasterBand dataType="Byte" band="{b}"><ColorInterp>{interps[b - 1]}</ColorInterp>'
                     f"{src}</VRTRasterBand>")
    path.write_text(f'<VRTDataset rasterXSize="{size}" rasterYSize="{size}"><SRS>{wkt}</SRS>'
                    f"<GeoTransform>{', '.join(repr(v) for v in gt)}</GeoTransform>{''.join(bands)}</VRTDataset>")
    return path


def real_pixels(image_cfg: dict, n: int):
    import numpy as np

    from core.geodata.raster import Stretch, default_bands, open_raster, read_rgb
    from core.runtime.preprocess import preprocess

    src = open_raster(str(MOSAIC))
    bands = default_bands(src)
    stretch = Stretch.from_source(src, bands)
    tiles = []
    for i in range(n):   # the mosaic's 112 px tiles, round and round
        r, c = divmod(i % (18 * 27), 27)
        rgb, valid = read_rgb(src, bands, (c * 112, r * 112, 112, 112), stretch)
        tiles.append(preprocess(rgb, image_cfg, valid))
    src.close()
    return np.stack(tiles)


def _rate(fn, n: int, sync=lambda: None) -> dict:
    fn()
    sync()
    rates = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        fn()
        sync()
        rates.append(n / (time.perf_counter() - t0))
    return {"median": round(statistics.median(rates), 1), "min": round(min(rates), 1), "max": round(max(rates), 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--tiles", type=int, default=2048, help="tiles for the encoder measurements")
    ap.add_argument("--e2e-size", type=int, default=20160, help="side of the end-to-end VRT in pixels")
    args = ap.parse_args(argv)
    import numpy as np
    import onnxruntime as ort
    import torch

    from core.pipeline import Job, LabelTask, RunOptions, TileSpec, run_job
    from core.runtime.inference import Encoder, cuda_available, gpu_memory, release_sessions
    from training.reference_pipeline import random_bundle, random_model

    if args.device == "cuda":
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()   # CUDA and cuDNN from the nvidia-* wheels
        if not cuda_available() or not torch.cuda.is_available():
            print(f"gpu_bench: no CUDA here (onnxruntime providers {ort.get_available_providers()}, torch cuda "
                  f"{torch.cuda.is_available()}); run bench/gpu.sh on a machine with an NVIDIA GPU", file=sys.stderr)
            return 1
    OUT.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    bundle = random_bundle("ViT-B-32", OUT / "models" / "ViT-B-32-random-0-fp16", seed=0, fp16=True)
    export_s = time.perf_counter() - t0
    model, pp, _ = random_model("ViT-B-32", seed=0)
    model = model.eval().to(args.device)
    results = {"device": args.device, "onnxruntime": ort.__version__, "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
               "gpu_memory_free_total": gpu_memory() if args.device == "cuda" else None,
               "bundle_export_s": round(export_s, 1), "tiles": args.tiles, "encoder": {}}
    from core.runtime.bundle import load_bundle

    pixels = real_pixels(load_bundle(bundle).image, args.tiles)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    embs = {}
    batch = None
    for precision in ("fp32", "fp16"):
        enc = Encoder(bundle, device=args.device, precision=precision, batch_size=None)
        chosen = enc.plan_batch(pixels)
        batch = batch or chosen
        embs[f"onnxruntime_{precision}"] = enc.encode_images(pixels)
        results["encoder"][f"onnxruntime_{precision}"] = {
            "tiles_per_s": _rate(lambda enc=enc: enc.encode_images(pixels), len(pixels)),
            "provider": enc.provider, "auto_batch": chosen, "io_binding": enc.on_gpu if enc.io_binding is None
            else enc.io_binding}
        release_sessions()
    for precision, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
        m = model.to(dtype)

        def run(m=m, dtype=dtype):
            out = []
            with torch.no_grad():
                for i in range(0, len(pixels), batch):
                    x = torch.from_numpy(pixels[i:i + batch]).to(args.device, dtype, non_blocking=True)
                    e = m.encode_image(x).float()
                    out.append(torch.nn.functional.normalize(e, dim=-1).cpu().numpy())
            return np.concatenate(out)

        embs[f"torch_{precision}"] = run()
        results["encoder"][f"torch_{precision}"] = {"tiles_per_s": _rate(run, len(pixels), sync), "batch": batch}
    model = model.float()
    ref = embs["torch_fp32"]
    results["cosine_vs_torch_fp32"] = {k: round(float((v * ref).sum(axis=1).min()), 6) for k, v in embs.items()}
    with tempfile.TemporaryDirectory() as tmp:
        vrt = mosaic_vrt(Path(tmp) / "big.vrt", args.e2e_size)
        job = Job(raster=str(vrt), task=LabelTask(LABELS), tiles=TileSpec(size=224), max_tiles=None,
                  run=RunOptions(model=str(bundle), device=args.device, precision="fp16", batch_size=None,
                                 cache_dir=""))
        run_job(job)   # warm: sessions and the auto batch
        t0 = time.perf_counter()
        res = run_job(job)
        secs = time.perf_counter() - t0
    results["end_to_end_fp16"] = {"tiles": res.n_tiles, "seconds": round(secs, 2),
                                  "tiles_per_s": round(res.n_tiles / secs, 1), "provider": res.provider,
                                  "phases_s": {k: round(v, 2) for k, v in res.timings.items()}}
    (OUT / "gpu.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"{results['gpu'] or 'CPU'}; onnxruntime {ort.__version__}, torch {torch.__version__}; auto batch {batch}")
    print(f"{'encoder':22} {'tiles/s':>9} {'min..max':>16} {'cos vs torch fp32':>18}")
    for k, v in results["encoder"].items():
        t = v["tiles_per_s"]
        print(f"{k:22} {t['median']:>9} {str(t['min']) + '..' + str(t['max']):>16} "
              f"{results['cosine_vs_torch_fp32'][k]:>18}")
    e = results["end_to_end_fp16"]
    print(f"end to end (run_job, fp16): {e['tiles']} tiles in {e['seconds']} s = {e['tiles_per_s']} tiles/s on "
          f"{e['provider']}; phases {e['phases_s']}")
    print(f"written {OUT / 'gpu.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

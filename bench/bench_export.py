"""Export benchmark: export time and bundle size per architecture, and image-encoding throughput of
the ONNX bundle (onnxruntime, CPU) against open_clip in torch, same weights, same inputs, same run.

    python bench/bench_export.py              # ViT-B-32 and RN50
    python bench/bench_export.py --large      # also ViT-L-14 (slow: minutes, ~3 GB of disk)

Weights are random (no pretrained weights on these machines), saved exactly like RemoteCLIP's
release files; speed and size do not depend on the values. Results: bench-results/export.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from results_file import machine, write_json  # noqa: E402  (bench/, beside this script)


def _dir_size(path: Path, names) -> int:
    return sum((path / n).stat().st_size for n in names)


def _throughput(fn, batch, repeats: int) -> float:
    fn(batch)  # warm-up: allocations, kernel selection
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn(batch)
    return repeats * len(batch) / (time.perf_counter() - t0)


def bench_arch(arch: str, work: Path, batch_size: int, repeats: int, threads: int) -> dict:
    import numpy as np
    import onnxruntime as ort
    import open_clip
    import torch

    from core.runtime.bundle import load_bundle
    from training import checkpoints
    from training.export import export_bundle

    torch.manual_seed(0)
    ckpt = work / f"RemoteCLIP-{arch}.pt"
    torch.save(open_clip.create_model(arch, pretrained=None).state_dict(), ckpt)

    t0 = time.perf_counter()
    model, pp, cfg, source = checkpoints.load_checkpoint_model(arch, str(ckpt))
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = export_bundle(model, pp, work / f"RemoteCLIP-{arch}", architecture=arch, model_config=cfg,
                        activation="quick_gelu", fp16=True, source=source)
    t_export = time.perf_counter() - t0
    b = load_bundle(out)
    size = {p: _dir_size(b.path, [b.manifest["graphs"][p]["image"], b.manifest["graphs"][p]["text"]])
            for p in b.precisions}

    h, w = b.image["size"]
    x = np.random.default_rng(0).standard_normal((batch_size, 3, h, w)).astype(np.float32)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(b.graph_path("image", "fp32")), so, providers=["CPUExecutionProvider"])
    torch.set_num_threads(threads)
    model = model.float().eval()
    xt = torch.from_numpy(x)

    def run_torch(batch):
        with torch.inference_mode():
            return torch.nn.functional.normalize(model.encode_image(batch), dim=-1)

    ips_torch = _throughput(run_torch, xt, repeats)
    ips_onnx = _throughput(lambda batch: sess.run(None, {"pixel_values": batch}), x, repeats)
    same = float((sess.run(None, {"pixel_values": x})[0] * run_torch(xt).numpy()).sum(1).min())
    return {
        "arch": arch,
        "load_s": round(t_load, 2),
        "export_s": round(t_export, 2),
        "bundle_mb": {p: round(s / 2**20, 1) for p, s in size.items()},
        "checkpoint_mb": round(ckpt.stat().st_size / 2**20, 1),
        "batch": batch_size,
        "images_per_s_onnx_fp32": round(ips_onnx, 2),
        "images_per_s_torch_fp32": round(ips_torch, 2),
        "onnx_over_torch": round(ips_onnx / ips_torch, 3),
        "image_cos_min": same,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--large", action="store_true", help="also ViT-L-14")
    ap.add_argument("--archs", nargs="+", help="override the architecture list")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--out", default=str(ROOT / "bench-results" / "export.json"))
    args = ap.parse_args(argv)
    archs = args.archs or (["ViT-B-32", "RN50"] + (["ViT-L-14"] if args.large else []))

    import warnings

    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger().setLevel(logging.ERROR)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        for arch in archs:
            print(f"... {arch}", file=sys.stderr, flush=True)
            rows.append(bench_arch(arch, Path(tmp), args.batch, args.repeats, args.threads))
            for f in Path(tmp).iterdir():  # one architecture's files at a time on disk
                if f.is_file():
                    f.unlink()

    head = (f"{'arch':<10} {'export s':>9} {'fp32 MB':>8} {'fp16 MB':>8} {'onnx img/s':>11} "
            f"{'torch img/s':>12} {'onnx/torch':>11}")
    print(head)
    for r in rows:
        print(f"{r['arch']:<10} {r['export_s']:>9.1f} {r['bundle_mb']['fp32']:>8.1f} "
              f"{r['bundle_mb'].get('fp16', float('nan')):>8.1f} {r['images_per_s_onnx_fp32']:>11.2f} "
              f"{r['images_per_s_torch_fp32']:>12.2f} {r['onnx_over_torch']:>11.3f}")
    import onnxruntime
    import open_clip
    import torch

    result = {
        "benchmark": "export",
        "what": "export time (fp32+fp16), bundle size (image+text graphs), CPU image-encoding throughput of the "
                "fp32 ONNX image graph vs open_clip encode_image in torch, same weights and inputs",
        "machine": machine(args.threads),
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                     "open_clip": open_clip.__version__},
        "rows": rows,
    }
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Torch-free conversion (core.runtime.convert) against the torch exporter (training.export), same checkpoint, same run:
conversion time and peak memory of each (a fresh process each, VmHWM), onnxruntime CPU throughput of the
converted graphs over the exported ones (ratio converted/exported; the aim is within 10%), and the parity of
the converted bundle against open_clip in torch on real images and prompts.

    python bench/bench_convert.py              # ViT-B-32 and RN50
    python bench/bench_convert.py --large      # also ViT-L-14 (slow: minutes, ~5 GB of disk)

Weights are random (no pretrained weights on these machines; training.reference_pipeline.trained_looking: no
constant biases, scales or BatchNorm statistics), saved exactly like RemoteCLIP's release files
(``torch.save(model.state_dict(), path)``). Both sides write fp32 and fp16 graphs; the converter also runs its
numpy self-check (part of its time). Results: bench-results/convert.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from results_file import machine, write_json  # noqa: E402  (bench/, beside this script)

# the converter runs where torch cannot be imported, as on a plugin user's machine
CONVERT = """
import sys, time, json
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "open_clip", "torchvision"):
            raise ImportError(name + " is blocked")
sys.meta_path.insert(0, _NoTorch())
from core.runtime.convert import convert_checkpoint
t0 = time.perf_counter()
convert_checkpoint(sys.argv[1], sys.argv[2], fp16=True)
seconds = time.perf_counter() - t0
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
print(json.dumps({"seconds": seconds, "peak_mb": hwm / 1024}))
"""
EXPORT = """
import sys, time, json, contextlib, io
from training.export import main
t0 = time.perf_counter()
with contextlib.redirect_stderr(io.StringIO()):
    rc = main(["--arch", sys.argv[3], "--checkpoint", sys.argv[1], "--out", sys.argv[2], "--fp16"])
assert rc == 0
seconds = time.perf_counter() - t0
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
print(json.dumps({"seconds": seconds, "peak_mb": hwm / 1024}))
"""


def _child(code: str, *args) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env,
                       cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"child failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _throughput(sessions: dict, feed: dict, rounds: int, repeats: int) -> dict:
    """Items per second of each session, measured in alternating rounds (median), so that load from other
    processes hits both sides alike."""
    for s in sessions.values():
        s.run(None, feed)  # warm-up: allocations, kernel selection
    n = len(next(iter(feed.values())))
    rates = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            for _ in range(repeats):
                s.run(None, feed)
            rates[k].append(repeats * n / (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in rates.items()}


def bench_arch(arch: str, work: Path, args) -> dict:
    import numpy as np
    import onnxruntime as ort
    import open_clip
    import torch

    from core.runtime.bundle import load_bundle
    from core.runtime.tokenizer import Tokenizer
    from training import checkpoints
    from training.parity import verify_bundle
    from training.reference_pipeline import trained_looking

    torch.manual_seed(0)
    ckpt = work / f"RemoteCLIP-{arch}.pt"
    torch.save(trained_looking(open_clip.create_model(arch, pretrained=None).state_dict()), ckpt)
    conv = _child(CONVERT, ckpt, work / "converted")
    exp = _child(EXPORT, ckpt, work / "exported", arch)
    cb, eb = load_bundle(work / "converted"), load_bundle(work / "exported")

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.log_severity_level = 3
    h, w = cb.image["size"]
    pixels = np.random.default_rng(0).standard_normal((args.batch, 3, h, w)).astype(np.float32)
    ids = Tokenizer.from_bundle(cb)([f"a satellite photo of {i} cars in a parking lot" for i in range(args.batch)])
    speed = {}
    for kind, feed in (("image", {"pixel_values": pixels}), ("text", {"input_ids": ids})):
        sessions = {side: ort.InferenceSession(str(b.graph_path(kind, "fp32")), so, providers=["CPUExecutionProvider"])
                    for side, b in (("converted", cb), ("exported", eb))}
        rate = _throughput(sessions, feed, args.rounds, args.repeats)
        speed[kind] = {"converted_per_s": round(rate["converted"], 2), "exported_per_s": round(rate["exported"], 2),
                       "ratio": round(rate["converted"] / rate["exported"], 3)}
        del sessions

    model, pp, _ = checkpoints.build_model(arch, checkpoints.read_state_dict(ckpt), "quick_gelu")
    parity = verify_bundle(cb.path, model, pp, arch=arch, data_dir=args.data, write=False)
    size = {p: round(sum((cb.path / f).stat().st_size for f in cb.manifest["graphs"][p].values()) / 2**20, 1)
            for p in cb.precisions}
    return {
        "arch": arch,
        "checkpoint_mb": round(ckpt.stat().st_size / 2**20, 1),
        "convert": {"seconds": round(conv["seconds"], 1), "peak_mb": round(conv["peak_mb"]),
                    "graph_seconds": {k: v for k, v in cb.manifest["exporter"].items() if k.endswith("_s")}},
        "export": {"seconds": round(exp["seconds"], 1), "peak_mb": round(exp["peak_mb"])},
        "bundle_mb": size,
        "onnxruntime_fp32": speed,
        "batch": args.batch,
        "parity_vs_open_clip": parity,
        "parity_self_check": {p: cb.manifest["parity"][p] for p in cb.precisions},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--large", action="store_true", help="also ViT-L-14")
    ap.add_argument("--archs", nargs="+", help="override the architecture list")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--data", default=os.environ.get("REMOTECLIP_DATA", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--out", default=str(ROOT / "bench-results" / "convert.json"))
    args = ap.parse_args(argv)
    archs = args.archs or (["ViT-B-32", "RN50"] + (["ViT-L-14"] if args.large else []))

    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    rows = []
    for arch in archs:
        print(f"... {arch}", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(prefix="bench-convert-") as tmp:  # one architecture on disk at a time
            rows.append(bench_arch(arch, Path(tmp), args))

    print(f"{'arch':<9} {'ckpt MB':>8} {'convert s':>10} {'peak MB':>8} {'export s':>9} {'peak MB':>8} "
          f"{'image conv/exp':>15} {'text conv/exp':>14}")
    for r in rows:
        s = r["onnxruntime_fp32"]
        print(f"{r['arch']:<9} {r['checkpoint_mb']:>8.0f} {r['convert']['seconds']:>10.1f} "
              f"{r['convert']['peak_mb']:>8} {r['export']['seconds']:>9.1f} {r['export']['peak_mb']:>8} "
              f"{s['image']['ratio']:>15.3f} {s['text']['ratio']:>14.3f}")
    print()
    print(f"{'arch':<9} {'precision':<9} {'vs':<10} {'image cos min':>14} {'text cos min':>13} {'top-1 agree':>12}")
    for r in rows:
        for vs, table in (("open_clip", r["parity_vs_open_clip"]), ("numpy ref", r["parity_self_check"])):
            for p, row in table.items():
                print(f"{r['arch']:<9} {p:<9} {vs:<10} {row['image_cos_min']:>14.7f} {row['text_cos_min']:>13.7f} "
                      f"{row['top1_agree'] * 100:>11.1f}%")

    import numpy
    import onnx
    import onnxruntime
    import torch

    result = {
        "benchmark": "convert",
        "what": "core.runtime.convert (torch blocked) vs training.export on the same random-weight checkpoint: wall time "
                "and VmHWM of each in a fresh process (fp32+fp16 graphs; the converter's time includes its numpy "
                "self-check), onnxruntime CPU throughput of the fp32 graphs (median of alternating rounds), parity "
                "of the converted bundle vs open_clip (RSSCN7 images, real prompts) and its own self-check",
        "machine": machine(args.threads),
        "versions": {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__,
                     "torch": torch.__version__},
        "rows": rows,
    }
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

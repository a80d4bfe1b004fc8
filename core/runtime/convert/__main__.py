"""``python -m core.runtime.convert CHECKPOINT --out DIR [--arch auto] [--fp16] [--int8] [--name N]``: a thin entry for tests
and scripts (the `remoteclip models convert` command calls the same convert_checkpoint)."""

from __future__ import annotations

import argparse
import sys

from ...errors import Cancelled, RemoteClipError
from . import ACTIVATIONS, convert_checkpoint, known_architectures


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m core.runtime.convert",
        description="Convert an OpenCLIP-format checkpoint (RemoteCLIP, GeoRSCLIP, SkyCLIP) into a model bundle, "
                    "without PyTorch.")
    ap.add_argument("checkpoint", help=".pt / .bin (torch.save) or .safetensors file")
    ap.add_argument("--out", required=True, help="bundle folder to write")
    ap.add_argument("--arch", default="auto", help=f"auto (default) or one of {', '.join(known_architectures())}")
    ap.add_argument("--activation", choices=ACTIVATIONS, default="quick_gelu",
                    help="MLP activation; quick_gelu (default) matches RemoteCLIP's official evaluation")
    ap.add_argument("--fp16", action="store_true", help="also write fp16 graphs")
    ap.add_argument("--int8", action="store_true", help="also write int8 graphs (dynamic quantisation)")
    ap.add_argument("--name", help="bundle name (default: the --out folder name)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out")
    ap.add_argument("--no-verify", dest="verify", action="store_false",
                    help="skip the check against a numpy forward pass (faster, nothing measured)")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    args = ap.parse_args(argv)

    def progress(fraction, message):
        if not args.quiet:
            print(f"[{fraction * 100:5.1f}%] {message}", file=sys.stderr, flush=True)

    try:
        out = convert_checkpoint(args.checkpoint, args.out, arch=args.arch, activation=args.activation,
                                 fp16=args.fp16, int8=args.int8, name=args.name, overwrite=args.overwrite, progress=progress,
                                 verify=args.verify)
    except RemoteClipError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (Cancelled, KeyboardInterrupt):
        print("cancelled; nothing was written", file=sys.stderr)
        return 130
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

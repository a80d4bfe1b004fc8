"""``remoteclip label|count|search|embed RASTER --model BUNDLE ... -o OUT.gpkg``.

An existing output is replaced only with --overwrite (a GeoPackage keeps its
other layers either way). Bad input ends with exit code 2 and a one-line error
naming the problem and the fix (no traceback); Ctrl+C ends with 130 and no
output file.
"""

from __future__ import annotations

import argparse
import os
import sys

from .bundle import PRECISIONS
from .errors import Cancelled, RemoteClipError

MAX_TILES = 50_000   # core.jobs.MAX_TILES (not imported here: `remoteclip --help` stays light)


def _default_model() -> str:
    from .bundle import default_bundle

    model = default_bundle()
    if model:
        return model
    raise RemoteClipError(
        "No model bundle given and the demo bundle models/remoteclip-demo is not there.",
        "Pass --model BUNDLE (a folder with manifest.json or a .rclip.zip), set REMOTECLIP_MODEL, or make one: "
        "`python -m training.export --arch ViT-B-32 --checkpoint RemoteCLIP-ViT-B-32.pt --out models/NAME`.")


def _floats(text: str, what: str, n: tuple[int, ...]) -> list[str]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in n:
        raise RemoteClipError(f"{what} {text!r} has {len(parts)} values.",
                              f"Write {what} as xmin,ymin,xmax,ymax[,EPSG].")
    return parts


def _bbox(text: str):
    from .tiles import BBox

    parts = _floats(text, "--bbox", (4, 5))
    try:
        xmin, ymin, xmax, ymax = (float(p) for p in parts[:4])
    except ValueError:
        raise RemoteClipError(f"--bbox {text!r} has a value that is not a number.",
                              "Write --bbox xmin,ymin,xmax,ymax[,EPSG], e.g. 32.58,0.33,32.59,0.34,4326.") from None
    crs = None
    if len(parts) == 5:
        c = parts[4].upper().removeprefix("EPSG:")
        crs = f"EPSG:{c}" if c.isdigit() else parts[4]
    if xmin >= xmax or ymin >= ymax:
        raise RemoteClipError(f"--bbox {text!r} is empty (xmin >= xmax or ymin >= ymax).",
                              "Write --bbox xmin,ymin,xmax,ymax with xmin < xmax and ymin < ymax.")
    return BBox(xmin, ymin, xmax, ymax, crs)


def _polygons(path: str):
    """Polygons (WKT + CRS) from any OGR-readable vector file."""
    from .tiles import Polygons

    try:
        from osgeo import ogr
    except ImportError:
        raise RemoteClipError("GDAL's Python bindings (osgeo) are needed for --polygons.",
                              "Install python3-gdal, or use --bbox.") from None
    from .checks import path_text
    from .raster import is_gdal_uri

    path = path_text(path, "--polygons file")
    if not is_gdal_uri(path) and not os.path.exists(path):
        raise RemoteClipError(f"--polygons {path}: file not found.", "Check the path.")
    ds = ogr.Open(path)
    if ds is None:
        raise RemoteClipError(f"--polygons {path}: not a vector file OGR can open.",
                              "Give a GeoPackage, Shapefile or GeoJSON with polygons.")
    layer = ds.GetLayer(0)
    srs = layer.GetSpatialRef()
    wkts = [f.GetGeometryRef().ExportToWkt() for f in layer if f.GetGeometryRef() is not None]
    if not wkts:
        raise RemoteClipError(f"--polygons {path} holds no geometries.", "Give a file with polygons.")
    return Polygons(wkts, srs.ExportToWkt() if srs is not None else None)


class _Parser(argparse.ArgumentParser):
    """argparse's errors in our form: one line with the fix (the sub-command's --help)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}. Fix: see `{self.prog} --help`.\n")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("raster", help="GeoTIFF or any raster GDAL reads")
    common.add_argument("--model", help="model bundle folder or .rclip.zip (default: models/remoteclip-demo, "
                                        "or $REMOTECLIP_MODEL)")
    common.add_argument("-o", "--output", help="output vector file (.gpkg or .shp), written atomically")
    common.add_argument("--layer", help="layer name in the output (default: the task)")
    common.add_argument("--overwrite", action="store_true",
                        help="replace an existing output (in a GeoPackage: the layer of that name; its other "
                             "layers are kept)")
    g = common.add_argument_group("tiles")
    g.add_argument("--tile-size", type=float, default=224, help="tile edge (default 224)")
    g.add_argument("--tile-unit", choices=("px", "m"), default="px", help="unit of --tile-size (default px)")
    g.add_argument("--overlap", type=float, default=0.0, help="fraction of a tile shared with its neighbour, 0..<1")
    g.add_argument("--bbox", help="only tiles in xmin,ymin,xmax,ymax[,EPSG] (default CRS: the raster's)")
    g.add_argument("--polygons", help="only tiles touching the polygons of this vector file")
    g.add_argument("--bands", help="three 1-based band numbers, e.g. 4,3,2 (default: RGB by colour "
                                   "interpretation, else the first three)")
    r = common.add_argument_group("run")
    r.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    r.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="graphs to run: fp32, fp16 (GPUs) or int8 (CPUs, about twice as fast; the bundle needs "
                        "them: models convert/pull --int8)")
    r.add_argument("--batch-size", type=int, default=None,
                   help="tiles per batch (default: 32 on a CPU; on a GPU what its free memory holds)")
    r.add_argument("--cache-dir", help="embedding cache folder (default ~/.cache/remoteclip/embeddings)")
    r.add_argument("--no-cache", action="store_true", help="neither read nor write the embedding cache")
    r.add_argument("--dissolve", action="store_true", help="merge touching tiles with the same result")
    r.add_argument("-y", "--yes", action="store_true", help=f"run a plan of more than {MAX_TILES:,} tiles "
                   "(refused without it)")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no plan line")

    ap = _Parser(prog="remoteclip", description="RemoteCLIP on rasters: zero-shot tile labels, "
                                 "object counts, text search and tile embeddings.")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("label", parents=[common], help="zero-shot labels per tile")
    p.add_argument("--labels", help="comma-separated class names, e.g. 'buildings,trees,water'")
    p.add_argument("--labels-file", help="class names, one per line (or a JSON list)")
    p.add_argument("--preset", help="a built-in class list: " + ", ".join(_preset_names()))
    p.add_argument("--templates-file", help="prompt templates with {} for the class, one per line")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--threshold", type=float, help="tiles whose best probability is lower are 'unknown'")
    p = sub.add_parser("count", parents=[common], help="count an object class per tile (RemoteCount captions)")
    p.add_argument("--object", required=True, help="singular object name, e.g. car")
    p.add_argument("--max-count", type=int, default=10)
    p.add_argument("--templates-file", help="count templates with {count}, {object} and {is}")
    p = sub.add_parser("search", parents=[common], help="similarity of every tile to a text query")
    p.add_argument("--query", required=True)
    p.add_argument("--top-k", type=int, help="select the K best tiles")
    p.add_argument("--threshold", type=float, help="select tiles with a cosine similarity at least this")
    sub.add_parser("embed", parents=[common], help="compute and cache the tile embeddings")
    from .models import add_parser as add_models_parser

    add_models_parser(sub)
    return ap


def _preset_names():
    from .prompts import PRESETS

    return list(PRESETS)


def _job(args):
    from . import prompts
    from .jobs import CountTask, EmbedTask, Job, LabelTask, RunOptions, SearchTask, TileSpec

    if args.command == "label":
        given = [x for x in (args.labels, args.labels_file, args.preset) if x is not None]
        if len(given) > 1:
            raise RemoteClipError("More than one of --labels, --labels-file and --preset was given.",
                                  "Use one of them.")
        if args.labels is not None:
            labels = args.labels.split(",")
        elif args.labels_file:
            labels = prompts.read_lines(args.labels_file, "class names")
        elif args.preset:
            labels = prompts.preset(args.preset)
        else:
            raise RemoteClipError("No classes given.", "Use --labels a,b,c, --labels-file FILE or --preset "
                                  "(" + ", ".join(prompts.PRESETS) + ").")
        templates = prompts.read_lines(args.templates_file, "templates") if args.templates_file else None
        task = LabelTask(prompts.check_labels(labels), templates, args.top_k, args.threshold)
    elif args.command == "count":
        templates = prompts.read_lines(args.templates_file, "templates") if args.templates_file else None
        task = CountTask(args.object, args.max_count, templates)
    elif args.command == "search":
        task = SearchTask(args.query, args.top_k, args.threshold)
    else:
        task = EmbedTask()
    if args.bbox and args.polygons:
        raise RemoteClipError("Both --bbox and --polygons were given.", "Use one of them.")
    extent = _bbox(args.bbox) if args.bbox else _polygons(args.polygons) if args.polygons else None
    from .raster import parse_bands

    bands = parse_bands(args.bands, "--bands") if args.bands else None
    if args.tile_size <= 0:
        raise RemoteClipError(f"--tile-size {args.tile_size:g} is not positive.", "Use e.g. --tile-size 224.")
    if not 0 <= args.overlap < 1:
        raise RemoteClipError(f"--overlap {args.overlap:g} is outside 0..1.", "Use e.g. --overlap 0.25.")
    if args.batch_size is not None and args.batch_size < 1:
        raise RemoteClipError(f"--batch-size {args.batch_size} is below 1.", "Use e.g. --batch-size 32.")
    cache_dir = "" if args.no_cache else args.cache_dir
    run = RunOptions(model=args.model or _default_model(), device=args.device, precision=args.precision,
                     batch_size=args.batch_size, cache_dir=cache_dir)
    tiles = TileSpec(size=args.tile_size, unit=args.tile_unit, overlap=args.overlap, extent=extent, bands=bands)
    return Job(raster=args.raster, task=task, run=run, tiles=tiles, output=args.output, layer_name=args.layer,
               dissolve=args.dissolve, overwrite=args.overwrite, max_tiles=None if args.yes else MAX_TILES)


class _Bar:
    def __init__(self, quiet: bool):
        self.bar = None
        if not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=1000, file=sys.stderr, unit="‰", bar_format="{l_bar}{bar}| {elapsed} {postfix}",
                            dynamic_ncols=True)

    def __call__(self, fraction: float, message: str):
        if self.bar is None:
            return
        self.bar.n = int(round(1000 * max(0.0, min(1.0, fraction))))
        self.bar.set_postfix_str(message, refresh=False)
        self.bar.refresh()

    def write(self, line: str):
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _summary(res, args) -> str:
    lines = [f"{res.n_tiles} tiles in {res.seconds:.1f} s on {res.provider}"
             + (" (embeddings from the cache)" if res.cache_hit else "")]
    recs = res.records
    if args.command == "label" and recs:
        from collections import Counter

        top = Counter(r["label"] for r in recs).most_common(5)
        lines.append("labels: " + ", ".join(f"{k} {v}" for k, v in top))
    elif args.command == "count" and recs:
        lines.append(f"total {args.object} count: {sum(r['count'] for r in recs)}")
    elif args.command == "search" and recs:
        best = sorted(recs, key=lambda r: r["rank"])[:3]
        lines.append("best tiles (row,col similarity): " + ", ".join(
            f"({r['row']},{r['col']} {r['similarity']:.3f})" for r in best)
            + f"; selected {sum(r['selected'] for r in recs)}")
    for w in res.warnings:
        lines.append(f"warning: {w}")
    lines.append(f"output: {res.output}" if res.output else "output: none (give -o OUT.gpkg to write one)")
    return "\n".join(lines)


def _join_negative_values(argv: list[str]) -> list[str]:
    """``--bbox -11858000,...`` as ``--bbox=-11858000,...``: argparse takes a value that starts with '-'
    and is not a plain number for an option."""
    out: list[str] = []
    it = iter(argv)
    for a in it:
        if a in _NEGATIVE_OK:
            nxt = next(it, None)
            if nxt is not None and nxt.startswith("-") and len(nxt) > 1 and (nxt[1].isdigit() or nxt[1] == "."):
                out.append(f"{a}={nxt}")
                continue
            out.append(a)
            if nxt is not None:
                out.append(nxt)
            continue
        out.append(a)
    return out


_NEGATIVE_OK = ("--bbox",)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(_join_negative_values([str(a) for a in argv]))
    bar = None
    try:
        if args.command == "models":
            from .models import run as run_models

            return run_models(args, _Bar)
        job = _job(args)
        from .jobs import run_job

        bar = _Bar(args.quiet)

        def show_plan(plan):
            if not args.quiet:
                bar.write(f"plan: {plan.describe()}")

        res = run_job(job, progress=bar, on_plan=show_plan)
        bar.close()
        bar = None
        print(_summary(res, args))
        return 0
    except RemoteClipError as e:
        if bar is not None:
            bar.close()
        print(f"remoteclip: error: {e}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Cancelled):
        if bar is not None:
            bar.close()
        print("remoteclip: cancelled; no output written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

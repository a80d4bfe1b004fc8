"""``remoteclip label|count|search|embed|classify RASTER --model BUNDLE ... -o OUT.gpkg``.

The sub-commands and their options come from the task registry (core.tasks.TASKS): each task's
declared inputs become options (``--labels`` and ``--labels-file`` for class names, ``--templates`` and
``--templates-file`` for templates, numbers with the task's defaults), parsed by the task itself.

An existing output is replaced only with --overwrite (a GeoPackage keeps its
other layers either way). Bad input ends with exit code 2 and a one-line error
naming the problem and the fix (no traceback); Ctrl+C ends with 130 and no
output file.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from .checks import MAX_TILES
from .errors import (
    Cancelled,
    InvalidInput,
    MissingDependency,
    ModelError,
    RemoteClipError,
    SourceUnreadable,
    gdal_return_codes,
)
from .runtime.bundle import INT8_USABLE_TOP1, PRECISION_CHOICES


def _default_model() -> str:
    from .runtime.bundle import default_bundle

    model = default_bundle()
    if model:
        return model
    raise ModelError(
        "No model bundle given and the demo bundle models/remoteclip-demo is not there.",
        "Pass --model BUNDLE (a folder with manifest.json or a .rclip.zip), set REMOTECLIP_MODEL, or make one: "
        "`python -m training.export --arch ViT-B-32 --checkpoint RemoteCLIP-ViT-B-32.pt --out models/NAME`.")


def _floats(text: str, what: str, n: tuple[int, ...]) -> list[str]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in n:
        raise InvalidInput(f"{what} {text!r} has {len(parts)} values.",
                              f"Write {what} as xmin,ymin,xmax,ymax[,EPSG].")
    return parts


def _bbox(text: str):
    from .geodata.tiles import BBox

    parts = _floats(text, "--bbox", (4, 5))
    try:
        xmin, ymin, xmax, ymax = (float(p) for p in parts[:4])
    except ValueError:
        raise InvalidInput(f"--bbox {text!r} has a value that is not a number.",
                              "Write --bbox xmin,ymin,xmax,ymax[,EPSG], e.g. 32.58,0.33,32.59,0.34,4326.", param="bbox") from None
    crs = None
    if len(parts) == 5:
        c = parts[4].upper().removeprefix("EPSG:")
        crs = f"EPSG:{c}" if c.isdigit() else parts[4]
    if xmin >= xmax or ymin >= ymax:
        raise InvalidInput(f"--bbox {text!r} is empty (xmin >= xmax or ymin >= ymax).",
                              "Write --bbox xmin,ymin,xmax,ymax with xmin < xmax and ymin < ymax.", param="bbox")
    return BBox(xmin, ymin, xmax, ymax, crs)


@gdal_return_codes()
def _polygons(path: str):
    """Polygons (WKT + CRS) from any OGR-readable vector file."""
    from .geodata.tiles import Polygons

    try:
        from osgeo import ogr
    except ImportError:
        raise MissingDependency("GDAL's Python bindings (osgeo) are needed for --polygons.",
                              "Install python3-gdal, or use --bbox.") from None
    from .checks import path_text
    from .geodata.raster import is_gdal_uri

    path = path_text(path, "--polygons file")
    if not is_gdal_uri(path) and not os.path.exists(path):
        raise SourceUnreadable(f"--polygons {path}: file not found.", "Check the path.", path=path)
    ds = ogr.Open(path)
    if ds is None:
        raise SourceUnreadable(f"--polygons {path}: not a vector file OGR can open.",
                              "Give a GeoPackage, Shapefile or GeoJSON with polygons.", path=path)
    layer = ds.GetLayer(0)
    srs = layer.GetSpatialRef()
    wkts = [f.GetGeometryRef().ExportToWkt() for f in layer if f.GetGeometryRef() is not None]
    if not wkts:
        raise InvalidInput(f"--polygons {path} holds no geometries.", "Give a file with polygons.", path=path,
                           param="polygons")
    return Polygons(wkts, srs.ExportToWkt() if srs is not None else None, f"{path}|layername={layer.GetName()}")


class _Parser(argparse.ArgumentParser):
    """argparse's errors in our form: one line with the fix (the sub-command's --help)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}. Fix: see `{self.prog} --help`.\n")


def _parser() -> argparse.ArgumentParser:
    from .geodata.tiles import MAX_OVERLAP

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("raster", nargs="+", help="GeoTIFF or any raster GDAL reads; several rasters make one "
                        "output with a source field: files, globs ('sheets/*.tif'), folders, a .txt list of paths, "
                        "URLs of cloud-optimised GeoTIFFs")
    common.add_argument("--model", help="model bundle folder or .rclip.zip (default: models/remoteclip-demo, "
                                        "or $REMOTECLIP_MODEL)")
    common.add_argument("-o", "--output", help="output vector file (.gpkg or .shp), written atomically")
    common.add_argument("--layer", help="layer name in the output (default: the task)")
    common.add_argument("--overwrite", action="store_true",
                        help="replace existing outputs (in a GeoPackage: the layer of that name; its other "
                             "layers are kept; also --raster-output and --head-out)")
    g = common.add_argument_group("tiles")
    g.add_argument("--tile-size", type=float, default=224, help="tile edge (default 224)")
    g.add_argument("--tile-unit", choices=("px", "m"), default="px", help="unit of --tile-size (default px)")
    g.add_argument("--overlap", type=float, default=0.0,
                   help=f"fraction of a tile shared with its neighbour, 0..{MAX_OVERLAP:g}")
    g.add_argument("--bbox", help="only tiles in xmin,ymin,xmax,ymax[,EPSG] (default CRS: the raster's)")
    g.add_argument("--polygons", help="only tiles touching the polygons of this vector file")
    g.add_argument("--bands", help="three 1-based band numbers, e.g. 4,3,2 (default: RGB by colour "
                                   "interpretation, else the first three)")
    r = common.add_argument_group("run")
    r.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    r.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                   help="graphs to run: auto (default: int8 on a CPU when the bundle has int8 graphs that agree "
                        f"with fp32 on at least {INT8_USABLE_TOP1:.0%}% of the labels, as recorded in its manifest, "   # argparse: %% is a %
                        "else fp32), fp32, fp16 "
                        "(GPUs) or int8 (CPUs, faster; the bundle needs them: models convert/pull --int8)")
    r.add_argument("--batch-size", type=int, default=None,
                   help="tiles per batch (default: 32 on a CPU; on a GPU what its free memory holds)")
    r.add_argument("--cache-dir", help="embedding cache folder (default ~/.cache/remoteclip/embeddings)")
    r.add_argument("--no-cache", action="store_true", help="neither read nor write the embedding cache")
    r.add_argument("--dissolve", action="store_true", help="merge touching tiles with the same result")
    r.add_argument("-y", "--yes", action="store_true", help=f"run a plan of more than {MAX_TILES:,} tiles "
                   "(refused without it)")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no plan line")
    m = common.add_argument_group("many rasters")
    m.add_argument("--out-crs", metavar="CRS", help="output CRS for several rasters, EPSG:n or WKT (default: the "
                   "first raster's); tiles are reprojected exactly")
    m.add_argument("--strict", action="store_true", help="stop at an unreadable raster (default: skip it and "
                   "name it in the summary)")
    m.add_argument("--dask", metavar="ADDRESS", help="run on a Dask cluster: its scheduler address "
                   "(tls://HOST:8786 with Dask's TLS configuration; tcp:// only on a trusted private network), "
                   "or local:N for N worker processes on this machine (needs requirements/distributed.txt)")

    from .tasks import TASKS

    ap = _Parser(prog="remoteclip", description="RemoteCLIP on rasters: zero-shot tile labels, object counts, "
                 "text search, few-shot classification from samples and tile embeddings.")
    sub = ap.add_subparsers(dest="command", required=True)
    for kind, cls in TASKS.items():
        p = sub.add_parser(kind, parents=[common], help=cls.summary, description=cls.help)
        _task_options(p, cls)
    from .runtime.models import add_parser as add_models_parser

    add_models_parser(sub)
    from .assess_cli import add_parsers as add_assess_parsers

    add_assess_parsers(sub)
    return ap


@dataclass(frozen=True)
class _Option:
    """How the command line offers one kind of task input (``_OPTIONS[param.kind]``): ``add(parser, param)``
    adds its option(s); a typed list (``what``) can also come from FLAG-file, read by core.prompts.read_lines
    with the list's rule (``split``, a function of core.prompts)."""
    add: Callable
    what: str = ""
    split: str = ""


def _default(prm) -> str:
    return f" (default {prm.default})" if prm.default is not None else ""


def _list_option(p, prm) -> None:
    p.add_argument(prm.cli_flag, dest=prm.name, help=prm.help)
    p.add_argument(prm.cli_flag + "-file", dest=prm.name + "_file", metavar="FILE",
                   help=f"{_OPTIONS[prm.kind].what} from a UTF-8 file (the same separators, '#' comments) or a JSON "
                        "list")


def _preset_option(p, prm) -> None:
    p.add_argument(prm.cli_flag, dest=prm.name, help=f"{prm.help}: " + ", ".join(prm.choices))


def _text_option(p, prm) -> None:
    p.add_argument(prm.cli_flag, dest=prm.name, required=not prm.optional, help=prm.help)


def _number_option(p, prm, type_) -> None:
    lim = f" ({'' if prm.lo is None else f'{prm.lo:g}'}..{'' if prm.hi is None else f'{prm.hi:g}'})"
    p.add_argument(prm.cli_flag, dest=prm.name, type=type_, default=prm.default,
                   help=(prm.help or prm.label.lower()) + lim + _default(prm))


def _choice_option(p, prm) -> None:
    p.add_argument(prm.cli_flag, dest=prm.name, choices=prm.choices, default=prm.default,
                   help=prm.help + _default(prm))


def _value_option(p, prm, metavar) -> None:
    p.add_argument(prm.cli_flag, dest=prm.name, metavar=metavar, help=prm.help)


def _raster_option(p, prm) -> None:
    p.add_argument(prm.name, metavar=prm.name.upper(), help=prm.help)   # after the job's raster: BEFORE AFTER


def _files_option(p, prm, metavar) -> None:
    p.add_argument(prm.cli_flag, dest=prm.name, nargs="+", metavar=metavar, help=prm.help)


def _flag_option(p, prm) -> None:
    p.add_argument(prm.cli_flag, dest=prm.name, action="store_true", help=prm.help)


# one adapter per core.tasks.Param kind
_OPTIONS: dict[str, _Option] = {
    "names": _Option(_list_option, "class names", "split_names"),
    "preset": _Option(_preset_option),
    "templates": _Option(_list_option, "templates", "split_templates"),
    "text": _Option(_text_option),
    "int": _Option(partial(_number_option, type_=int)),
    "float": _Option(partial(_number_option, type_=float)),
    "choice": _Option(_choice_option),
    "samples": _Option(partial(_value_option, metavar="FILE")),
    "field": _Option(partial(_value_option, metavar="NAME")),
    "file": _Option(partial(_value_option, metavar="FILE")),
    "file_out": _Option(partial(_value_option, metavar="FILE")),
    "raster": _Option(_raster_option),
    "flag": _Option(_flag_option),
    "examples": _Option(partial(_files_option, metavar="EXAMPLES")),   # a vector file or image files
    "images": _Option(partial(_files_option, metavar="IMAGE")),
}


def _task_options(p, cls) -> None:
    """Options for a task's declared inputs (core.tasks.Param), each by its kind's adapter (_OPTIONS)."""
    for prm in cls.params:
        _OPTIONS[prm.kind].add(p, prm)
    if cls.dense:
        p.add_argument("--raster-output", metavar="FILE.tif", help="also write a GeoTIFF at tile resolution (one "
                       "band per value, overlapping tiles averaged: a heat map)")


def _task(args):
    """The task of the sub-command, from its options, parsed by the task class."""
    from . import prompts
    from .tasks import task_class

    cls = task_class(args.command)
    raw = {}
    for prm in cls.params:
        value = getattr(args, prm.name, None)
        opt = _OPTIONS[prm.kind]
        if opt.what:
            path = getattr(args, prm.name + "_file", None)
            if value is not None and path is not None:
                raise InvalidInput(f"Both {prm.cli_flag} and {prm.cli_flag}-file were given.", "Use one of them.")
            if path is not None:
                value = prompts.read_lines(path, opt.what, getattr(prompts, opt.split))
        raw[prm.name] = value
    return cls.from_inputs(raw, spell=_spell(args))


def _spell(args):
    """How the command line names an input in errors: the option that was used."""
    def spell(prm):
        if _OPTIONS[prm.kind].what and getattr(args, prm.name + "_file", None) is not None:
            return prm.cli_flag + "-file"
        return prm.cli_flag

    return spell


def _job(args):
    from .geodata.tiles import check_overlap
    from .pipeline import Job, RunOptions, TileSpec

    task = _task(args)
    if args.bbox and args.polygons:
        raise InvalidInput("Both --bbox and --polygons were given.", "Use one of them.")
    extent = _bbox(args.bbox) if args.bbox else _polygons(args.polygons) if args.polygons else None
    from .geodata.raster import parse_bands

    bands = parse_bands(args.bands, "--bands") if args.bands else None
    if args.tile_size <= 0:
        raise InvalidInput(f"--tile-size {args.tile_size:g} is not positive.", "Use e.g. --tile-size 224.", param="tile_size")
    check_overlap(args.overlap, "--overlap")
    if args.batch_size is not None and args.batch_size < 1:
        raise InvalidInput(f"--batch-size {args.batch_size} is below 1.", "Use e.g. --batch-size 32.", param="batch_size")
    cache_dir = "" if args.no_cache else args.cache_dir
    run = RunOptions(model=args.model or _default_model(), device=args.device, precision=args.precision,
                     batch_size=args.batch_size, cache_dir=cache_dir)
    tiles = TileSpec(size=args.tile_size, unit=args.tile_unit, overlap=args.overlap, extent=extent, bands=bands)
    raster = _rasters(args.raster)
    # the files read into the task and the raster list: no output may be one of them
    inputs = [(getattr(args, prm.name + "_file"), prm.cli_flag + "-file") for prm in type(task).params
              if prm.kind in ("names", "templates") and getattr(args, prm.name + "_file", None)]
    inputs += [(item, "list of rasters") for item in args.raster
               if item.lower().endswith((".txt", ".lst")) and os.path.isfile(item)]
    return Job(raster=raster, task=task, run=run, tiles=tiles, output=args.output, layer_name=args.layer,
               dissolve=args.dissolve, overwrite=args.overwrite, max_tiles=None if args.yes else MAX_TILES,
               raster_output=getattr(args, "raster_output", None), out_crs=args.out_crs, strict=args.strict,
               dask=args.dask, inputs=inputs)


def _rasters(items: list[str]):
    """One plain raster stays a path (the output as before: no source field); several, or a glob, a folder or
    a list file, become a list (a collection: core.pipeline)."""
    from .pipeline.sources import expand_rasters, has_magic

    if len(items) == 1:
        one = items[0]
        if not (os.path.isdir(one) or one.lower().endswith((".txt", ".lst"))
                or (has_magic(one) and not os.path.exists(one))):
            return one
    return expand_rasters(items)


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


def _summary(res, job) -> str:
    lines = [f"{res.n_tiles} tiles in {res.seconds:.1f} s on {res.provider}"
             + (" (embeddings from the cache)" if res.cache_hit else "")]
    if res.precision:
        lines.append(f"precision: {res.precision} ({res.precision_reason})")
    if res.records:
        lines += job.task.describe(res)
    for w in res.warnings:
        lines.append(f"warning: {w}")
    if res.sources or res.skipped:
        lines.append(f"rasters: {len(res.sources)} in the output"
                     + (f", {res.resumed} resumed from an earlier run" if res.resumed else "")
                     + (f", {len(res.skipped)} skipped" if res.skipped else ""))
        for path, why in res.skipped:
            lines.append(f"skipped: {path}: {why}")
        from .geodata.crs import crs_name

        lines.append(f"output CRS: {crs_name(res.crs_wkt)}")
    from .runtime.bundle import DEMO_NAME, DEMO_NOTE

    if res.model == DEMO_NAME:
        lines.append(f"note: {DEMO_NOTE}")
    lines.append(f"output: {res.output}" if res.output else "output: none (give -o OUT.gpkg to write one)")
    for what, path in (("raster output", res.raster_output), ("report", res.report_output),
                       ("classifier", res.head_output)):
        if path:
            lines.append(f"{what}: {path}")
    return "\n".join(lines)


def _join_negative_values(argv: list[str]) -> list[str]:
    """``--bbox -11858000,...`` as ``--bbox=-11858000,...`` (and ``--bands -1,2,3``, refused then as bands): argparse takes a value that starts with '-'
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


_NEGATIVE_OK = ("--bbox", "--bands")   # --bands -1,2,3: refused as bands, not as a missing value


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(_join_negative_values([str(a) for a in argv]))
    bar = None
    try:
        if args.command == "models":
            from .runtime.models import run as run_models

            return run_models(args, _Bar)
        if args.command in ("sample", "assess"):
            from . import assess_cli

            return (assess_cli.run_sample if args.command == "sample" else assess_cli.run_assess)(args)
        job = _job(args)
        if job.dask:   # before anything is sent, even with -q
            from .pipeline.distributed import plain_tcp_warning

            warning = plain_tcp_warning(job.dask)
            if warning:
                print(f"remoteclip: warning: {warning}", file=sys.stderr)
        from .pipeline import run_job

        bar = _Bar(args.quiet)

        def show_plan(plan):
            if not args.quiet:
                bar.write(f"plan: {plan.describe()}")

        res = run_job(job, progress=bar, on_plan=show_plan)
        bar.close()
        bar = None
        print(_summary(res, job))
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

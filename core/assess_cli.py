"""``remoteclip sample`` (a stratified reference sample of a map) and ``remoteclip assess`` (its accuracy and
areas from the labelled points), on core.assess. Errors are raised for cli.main to print."""

from __future__ import annotations

import os

from . import assess


def add_parsers(sub) -> None:
    p = sub.add_parser("sample", help="a stratified random sample of points to check a map against",
                       description="Random points inside each class of a map (the strata), for an analyst to label "
                                   "by looking at the imagery; then `remoteclip assess`. The same seed gives the "
                                   "same points.")
    p.add_argument("map", help="the map: a vector layer with a class field (label, classify, change results)")
    p.add_argument("--map-field", default="label", help="the map's class field (default label)")
    p.add_argument("--layer", help="the map's layer in a GeoPackage (default: the first)")
    n = p.add_mutually_exclusive_group(required=True)
    n.add_argument("--per-class", type=int, help="points in each class (equal allocation)")
    n.add_argument("--total", type=int, help="points in all, shared by --allocation")
    p.add_argument("--allocation", choices=("proportional", "equal"), default="proportional",
                   help="with --total: in proportion to each class's map area (default) or equally")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0): the same seed, the same points")
    p.add_argument("--reference-field", default="reference",
                   help="the empty field the analyst fills with each point's true class (default reference)")
    p.add_argument("-o", "--output", required=True, help="points to write (.gpkg or .shp)")
    p.add_argument("--out-layer", help="layer name in a GeoPackage output (default: reference_sample)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output (layer)")

    p = sub.add_parser("assess", help="accuracy and error-adjusted areas of a map from labelled reference points",
                       description="Olofsson et al. (2014) estimates: overall, user's and producer's accuracy and "
                                   "each class's area, with 95 %% confidence intervals, from a stratified sample "
                                   "(`remoteclip sample`) whose points the analyst labelled.")
    p.add_argument("map", help="the map: a vector layer with a class field")
    p.add_argument("--reference", required=True, help="the labelled points (any CRS)")
    p.add_argument("--reference-field", default="reference", help="the points' true-class field (default reference)")
    p.add_argument("--reference-layer", help="the points' layer in a GeoPackage (default: the first)")
    p.add_argument("--map-field", default="label", help="the map's class field (default label)")
    p.add_argument("--layer", help="the map's layer in a GeoPackage (default: the first)")
    p.add_argument("-o", "--output", help="the report as JSON")
    p.add_argument("--csv", help="the per-class table as CSV")
    p.add_argument("--overwrite", action="store_true", help="replace existing report files")


def _layer_input(path: str, layer: str, what: str) -> tuple[str, str]:
    """An input layer as core.geodata.vectors.check_not_input takes it: in a GeoPackage only that layer is the input."""
    if layer and path.lower().endswith(".gpkg"):
        return f"{path}|layername={layer}", what
    return path, what


def run_sample(args) -> int:
    s = assess.write_sample(args.map, args.output, args.map_field, args.layer, args.per_class, args.total,
                            args.allocation, args.seed, args.reference_field, args.out_layer, args.overwrite)
    per = ", ".join(f"{c} {k}" for c, k in zip(s.strata.classes, s.per_class, strict=True))
    print(f"{s.n_points} points ({per}) written to {s.output}\n"
          f"next: open it in QGIS, type each point's true class into '{s.reference_field}', then\n"
          f"  remoteclip assess {args.map} --reference {s.output} --reference-field {s.reference_field} "
          f"--map-field {s.strata.field}")
    return 0


def run_assess(args) -> int:
    inputs = [_layer_input(os.path.abspath(args.map), args.layer, "map"),
              _layer_input(os.path.abspath(args.reference), args.reference_layer, "reference points")]
    assess.check_report_outputs(args.output, args.csv, inputs, args.overwrite)
    report = assess.assess(args.map, args.reference, args.reference_field, args.map_field, args.layer,
                           args.reference_layer)
    print(assess.report_table(report))
    assess.write_report_files(report, args.output, args.csv)
    if args.output:
        print(f"report: {args.output}")
    if args.csv:
        print(f"table: {args.csv}")
    return 0

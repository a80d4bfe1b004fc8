"""``remoteclip sample`` (a stratified reference sample of a map) and ``remoteclip assess`` (its accuracy and
areas from the labelled points), on core.assess. Errors are raised for cli.main to print."""

from __future__ import annotations

import json
import os

from . import assess
from .errors import InvalidInput

SAMPLE_FIELDS = ("sample_id", "map_class")


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
    """An input layer as core.vectors.check_not_input takes it: in a GeoPackage only that layer is the input."""
    if layer and path.lower().endswith(".gpkg"):
        return f"{path}|layername={layer}", what
    return path, what


def run_sample(args) -> int:
    from .vectors import Field, write_vector

    strata = assess.read_map(args.map, args.map_field, args.layer)
    n = assess.allocate(strata.areas(), args.per_class, args.total, args.allocation)
    points = assess.sample_points(strata, n, args.seed)
    ref = args.reference_field.strip()
    if not ref or ref.lower() in SAMPLE_FIELDS:
        raise InvalidInput(f"--reference-field {args.reference_field!r} is empty or one of the sample's own fields.",
                           "Give another name, e.g. reference.", param="reference_field")
    records = [{"geometry": f"POINT ({x!r} {y!r})", "sample_id": i, "map_class": name, ref: None}
               for i, (x, y, name) in enumerate(points, start=1)]
    fields = [Field("sample_id", "int"), Field("map_class", "str"), Field(ref, "str")]
    layer = args.out_layer or ("reference_sample" if args.output.lower().endswith(".gpkg") else None)
    out = write_vector(args.output, records, fields, strata.map_crs_wkt, layer_name=layer,
                       metadata={"task": "reference-sample", "map": os.path.abspath(strata.path),
                                 "map_field": strata.field, "seed": args.seed, "reference_field": ref,
                                 "classes": strata.classes},
                       overwrite=args.overwrite, inputs=[_layer_input(strata.path, strata.layer, "map")])
    per = ", ".join(f"{c} {k}" for c, k in zip(strata.classes, n.tolist(), strict=True))
    print(f"{len(points)} points ({per}) written to {out}\n"
          f"next: open it in QGIS, type each point's true class into '{ref}', then\n"
          f"  remoteclip assess {args.map} --reference {out} --reference-field {ref} --map-field {strata.field}")
    return 0


def csv_text(report: dict) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["class", "map_area_m2", "area_m2", "area_ci95_m2", "users_accuracy", "users_ci95",
                "producers_accuracy", "producers_ci95"])
    for name, c in report["classes"].items():
        w.writerow([name, c["map_area"], c["area"]["estimate"], c["area"]["ci95"], c["users_accuracy"]["estimate"],
                    c["users_accuracy"]["ci95"], c["producers_accuracy"]["estimate"], c["producers_accuracy"]["ci95"]])
    return buf.getvalue()


def run_assess(args) -> int:
    from .outputs import check_distinct, check_file_output, write_text_file

    inputs = [(os.path.abspath(args.map), "map"), (os.path.abspath(args.reference), "reference points")]
    outs = []
    if args.output:
        outs.append((check_file_output(args.output, "report", args.overwrite, inputs, example="report.json"),
                     "report"))
    if args.csv:
        outs.append((check_file_output(args.csv, "CSV table", args.overwrite, inputs, example="table.csv"),
                     "CSV table"))
    check_distinct(outs)
    report = assess.assess(args.map, args.reference, args.reference_field, args.map_field, args.layer,
                           args.reference_layer)
    print(assess.report_table(report))
    if args.output:
        write_text_file(args.output, json.dumps(report, indent=1, ensure_ascii=False) + "\n", True)
        print(f"report: {args.output}")
    if args.csv:
        write_text_file(args.csv, csv_text(report), True)
        print(f"table: {args.csv}")
    return 0

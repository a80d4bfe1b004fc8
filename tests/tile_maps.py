"""A constructed map for the accuracy tests: 4 x 4 tiles of 100 m at overlap 0.5 (step 50 m) in UTM 36N,
GeoPackage layer "labels"; columns 0-1 are "a", 2-3 "b". Its union is 250 m x 250 m: "a" owns x in [0, 100)
(the later tile wins an overlap), "b" [100, 250)."""

X0, Y0 = 450_000.0, 40_000.0


def write_tile_map(path):
    from core.geodata.crs import srs_from
    from core.geodata.vectors import Field, write_vector

    records = []
    for r in range(4):
        for c in range(4):
            x, y = X0 + 50 * c, Y0 - 50 * r
            records.append({"geometry": f"POLYGON (({x} {y}, {x + 100} {y}, {x + 100} {y - 100}, {x} {y - 100}, "
                                        f"{x} {y}))", "label": "a" if c < 2 else "b"})
    write_vector(path, records, [Field("label", "str")], srs_from("EPSG:32636").ExportToWkt(), layer_name="labels")
    return path

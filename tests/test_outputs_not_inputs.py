"""No output of a job is any of its inputs (issue 20, item 1), with or without --overwrite, by any spelling:
the samples, the extent polygons, the saved classifier, a labels or templates file, a list of rasters, the
model, each against the vector output (a Shapefile's parts are one file; in a GeoPackage the rule is per
layer), --head-out, --raster-output and the report beside the output. Refused with OutputIsInput (path: the
output) before a byte is written; the command line, core.pipeline and Processing go through one check.

Also: a Shapefile output where only the user's .cpg/.prj exist says which files are in the way (item 2).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from osgeo import gdal, ogr, osr

from core.cli import _job, _join_negative_values, _parser, main
from core.errors import OutputExists, OutputIsInput
from core.geodata.vectors import Field, check_not_input, check_output, write_vector
from core.pipeline import run_job

Z20 = "orthomosaic/kampala_oam_z20_mosaic_1536x1024.tif"
# tiles (row, col) of 256 px on the 1536 x 1024 mosaic, four per class, far apart
TILES = {"a": [(0, 0), (0, 1), (1, 0), (1, 1)], "b": [(2, 4), (2, 5), (3, 4), (3, 5)]}
SHP_PARTS = (".shp", ".shx", ".dbf", ".prj", ".cpg")


@pytest.fixture(scope="module")
def raster(data_dir):
    return str(data_dir / Z20)


def write_points(path, raster, driver="GPKG", layer="samples", polygons=False):
    """Sample points (or 5 m squares around them) at tile centres of ``raster``, class field "cls"."""
    ds = gdal.Open(raster)
    gt = ds.GetGeoTransform()
    srs = osr.SpatialReference()
    srs.ImportFromWkt(ds.GetProjection())
    out = ogr.GetDriverByName(driver).CreateDataSource(str(path))
    lyr = out.CreateLayer(layer, srs, ogr.wkbPolygon if polygons else ogr.wkbPoint,
                          options=["ENCODING=UTF-8"] if driver == "ESRI Shapefile" else [])
    lyr.CreateField(ogr.FieldDefn("cls", ogr.OFTString))
    for cls, tiles in TILES.items():
        for r, c in tiles:
            x, y = gt[0] + (c * 256 + 128) * gt[1], gt[3] + (r * 256 + 128) * gt[5]
            f = ogr.Feature(lyr.GetLayerDefn())
            f.SetField("cls", cls)
            d = 20 * gt[1]
            f.SetGeometry(ogr.CreateGeometryFromWkt(
                f"POLYGON(({x - d} {y - d},{x + d} {y - d},{x + d} {y + d},{x - d} {y + d},{x - d} {y - d}))"
                if polygons else f"POINT({x} {y})"))
            lyr.CreateFeature(f)
    out = None
    return str(path)


def files_of(path) -> dict:
    """Bytes of ``path`` and, for a Shapefile, of each of its parts."""
    base, ext = os.path.splitext(str(path))
    names = [base + p for p in SHP_PARTS] if ext == ".shp" else [str(path)]
    return {n: Path(n).read_bytes() for n in names if os.path.exists(n)}


def features(path, layer):
    """(attributes, WKT) of every feature of ``layer``."""
    ds = ogr.Open(str(path))
    lyr = ds.GetLayerByName(layer)
    return [(f.items(), f.GetGeometryRef().ExportToWkt()) for f in lyr]


def cli_job(*argv):
    """The Job the command line builds for ``argv`` (as ``remoteclip`` would run it)."""
    return _job(_parser().parse_args(_join_negative_values([str(a) for a in argv])))


def common(raster, bundle, tmp_path, *task):
    return [*task, raster, "--model", bundle, "--tile-size", 256, "--cache-dir", tmp_path / "cache", "-q"]


def refused(job, output, *inputs):
    """run_job refuses ``job`` with OutputIsInput naming ``output``; ``inputs`` keep every byte, nothing
    was read (no cache entry) and no output appeared."""
    before = {str(p): files_of(p) for p in inputs}
    with pytest.raises(OutputIsInput) as err:
        run_job(job)
    assert err.value.path == str(output)
    assert {str(p): files_of(p) for p in inputs} == before
    return err.value


# -------------------------------------------------------------------------------- the samples

@pytest.mark.parametrize("spelling", ["same", "relative", "dot", "symlink", "hardlink"])
def test_head_out_naming_the_samples_is_refused(spelling, raster, tiny_bundle, tmp_path, monkeypatch):
    samples = write_points(tmp_path / "s.geojson", raster, "GeoJSON")
    monkeypatch.chdir(tmp_path)
    head_out = {"same": samples, "relative": "s.geojson", "dot": "./sub/../s.geojson"}.get(spelling)
    (tmp_path / "sub").mkdir()
    if spelling == "symlink":
        os.symlink(samples, tmp_path / "link.json")
        head_out = str(tmp_path / "link.json")
    elif spelling == "hardlink":
        os.link(samples, tmp_path / "hard.json")
        head_out = "hard.json"
    job = cli_job(*common(raster, tiny_bundle, tmp_path, "classify"), "--samples", samples, "--class-field", "cls",
                  "-o", tmp_path / "out.gpkg", "--head-out", head_out, "--overwrite")
    err = refused(job, head_out, samples)
    assert "samples" in err.problem
    assert not (tmp_path / "out.gpkg").exists() and not (tmp_path / "cache").exists()


def test_a_shapefile_output_over_the_sample_shapefile_is_refused(raster, tiny_bundle, tmp_path):
    samples = write_points(tmp_path / "samp.shp", raster, "ESRI Shapefile", "samp")
    args = [*common(raster, tiny_bundle, tmp_path, "classify"), "--samples", samples, "--class-field", "cls",
            "--overwrite"]
    refused(cli_job(*args, "-o", samples), samples, samples)
    # a part of the samples' Shapefile is the samples too
    refused(cli_job(*args, "-o", tmp_path / "out.gpkg", "--head-out", tmp_path / "samp.dbf"),
            tmp_path / "samp.dbf", samples)
    assert len(features(samples, "samp")) == 8


def test_the_samples_layer_of_a_geopackage_is_kept_and_a_new_layer_beside_it_is_written(raster, tiny_bundle,
                                                                                       tmp_path):
    # the samples layer is named as the classify task's output layer ("classes")
    samples = write_points(tmp_path / "samp.gpkg", raster, "GPKG", "classes")
    before = features(samples, "classes")
    args = [*common(raster, tiny_bundle, tmp_path, "classify"), "--samples", samples, "--class-field", "cls",
            "-o", samples, "--overwrite"]
    for layer in ([], ["--layer", "CLASSES"]):   # GeoPackage layer names ignore case
        refused(cli_job(*args, *layer), samples)
        assert features(samples, "classes") == before
    # the report, the classifier and the heat map may not be the GeoPackage either
    refused(cli_job(*args, "--layer", "result", "--head-out", samples), samples)
    assert features(samples, "classes") == before
    # another layer of the same GeoPackage is fine
    res = run_job(cli_job(*args, "--layer", "result"))
    assert res.output == samples and res.n_tiles == 24
    assert features(samples, "classes") == before
    assert len(features(samples, "result")) == 24
    assert (tmp_path / "samp.result.remoteclip-report.json").is_file()


# ------------------------------------------------------------------------- the extent polygons

def test_the_extent_polygons_are_never_the_output(raster, tiny_bundle, tmp_path):
    extp = write_points(tmp_path / "extp.shp", raster, "ESRI Shapefile", "extp", polygons=True)
    label = [*common(raster, tiny_bundle, tmp_path, "label"), "--labels", "roofs, grass", "--polygons", extp]
    refused(cli_job(*label, "-o", extp, "--overwrite"), extp, extp)
    refused(cli_job(*label, "-o", extp), extp, extp)   # without --overwrite: the same refusal, not "exists"
    # --head-out naming the --polygons file (its .prj)
    samples = write_points(tmp_path / "s.gpkg", raster)
    classify = [*common(raster, tiny_bundle, tmp_path, "classify"), "--samples", samples, "--class-field", "cls",
                "--polygons", extp, "-o", tmp_path / "out.gpkg", "--overwrite"]
    refused(cli_job(*classify, "--head-out", tmp_path / "extp.prj"), tmp_path / "extp.prj", extp)
    # a GeoPackage of extent polygons: another layer is fine, its own layer is not
    gp = write_points(tmp_path / "extp.gpkg", raster, "GPKG", "zones", polygons=True)
    label = [*label[:-1], gp]
    refused(cli_job(*label, "-o", gp, "--layer", "zones", "--overwrite"), gp, gp)
    res = run_job(cli_job(*label, "-o", gp, "--layer", "labels"))
    assert res.n_tiles > 0 and len(features(gp, "zones")) == 8


# ----------------------------------------------------------------- files read into the task

def test_templates_labels_head_and_raster_lists_are_never_outputs(raster, tiny_bundle, tmp_path):
    samples = write_points(tmp_path / "s.gpkg", raster)
    classify = [*common(raster, tiny_bundle, tmp_path, "classify"), "--samples", samples, "--class-field", "cls",
                "--overwrite"]
    templates = tmp_path / "t.txt"
    templates.write_text("a photo of {}.\nan aerial photo of {}.\n")
    refused(cli_job(*classify, "--templates-file", templates, "-o", tmp_path / "o.gpkg", "--head-out", templates),
            templates, templates)
    # the report beside a Shapefile output is out.remoteclip-report.json: a templates file of that name
    mine = tmp_path / "out.remoteclip-report.json"
    mine.write_text(json.dumps(["a satellite photo of {}."]))
    refused(cli_job(*classify, "--templates-file", mine, "-o", tmp_path / "out.shp"), mine, mine)
    assert not (tmp_path / "out.shp").exists()
    # a saved classifier read (--head) is the report's name
    head = tmp_path / "h.remoteclip-report.json"
    head.write_text('{"format": "remoteclip-classifier-head"}')
    refused(cli_job(*common(raster, tiny_bundle, tmp_path, "classify"), "--head", head, "-o", tmp_path / "h.shp",
                    "--overwrite"), head, head)
    # a list of rasters and a labels file
    lst = tmp_path / "rasters.txt"
    lst.write_text(raster + "\n")
    refused(cli_job(*classify[:1], lst, *classify[2:], "-o", tmp_path / "o.gpkg", "--head-out", lst), lst, lst)
    labels = tmp_path / "labels.tif"
    labels.write_text("roofs\ngrass\n")
    refused(cli_job(*common(raster, tiny_bundle, tmp_path, "label"), "--labels-file", labels, "-o",
                    tmp_path / "o.gpkg", "--raster-output", labels, "--overwrite"), labels, labels)


def test_the_model_bundle_is_never_an_output(raster, tiny_bundle, tmp_path):
    import shutil

    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")   # a copy: a slip must not break the session's
    samples = write_points(tmp_path / "s.gpkg", raster)
    manifest = bundle / "manifest.json"
    refused(cli_job(*common(raster, bundle, tmp_path, "classify"), "--samples", samples, "--class-field",
                    "cls", "-o", tmp_path / "o.gpkg", "--head-out", manifest, "--overwrite"), manifest, manifest)


def test_the_command_line_says_it_in_one_line(raster, tiny_bundle, tmp_path, capsys):
    samples = write_points(tmp_path / "s.geojson", raster, "GeoJSON")
    raw = Path(samples).read_bytes()
    rc = main([str(a) for a in (*common(raster, tiny_bundle, tmp_path, "classify"), "--samples", samples,
                                "--class-field", "cls", "-o", tmp_path / "out.gpkg", "--head-out", samples,
                                "--overwrite")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "is the samples" in err and "Fix:" in err
    assert Path(samples).read_bytes() == raw


# ------------------------------------------------------------------------ the rule itself

def test_gdal_style_layer_specs_are_per_layer(tmp_path, raster):
    gp = write_points(tmp_path / "samp.gpkg", raster, "GPKG", "pts")
    spec = [(f"{gp}|layername=pts", "samples")]
    with pytest.raises(OutputIsInput) as err:
        check_output(gp, "PTS", True, spec)
    assert err.value.path == gp
    check_output(gp, "other", True, spec)
    with pytest.raises(OutputIsInput):   # a plain file written over the GeoPackage: every layer
        check_not_input(gp, spec)
    # a raster input (no layer) keeps the whole file: no layer may be written into it
    with pytest.raises(OutputIsInput):
        check_output(gp, "other", True, [f"GPKG:{gp}:pts"])
    # write_vector checks again (the last line before a byte is written)
    raw = Path(gp).read_bytes()
    with pytest.raises(OutputIsInput):
        write_vector(gp, [{"geometry": "POLYGON((0 0,1 0,1 1,0 0))", "v": 1}], [Field("v", "int")], "",
                     layer_name="pts", overwrite=True, inputs=spec)
    assert Path(gp).read_bytes() == raw


# ------------------------------------------------------------------------ item 2: the message

def test_a_shapefile_output_with_only_the_users_sidecars_names_them(tmp_path):
    (tmp_path / "out.cpg").write_text("UTF-8")
    (tmp_path / "out.prj").write_text("GEOGCS[]")
    with pytest.raises(OutputExists) as err:
        check_output(tmp_path / "out.shp")
    assert err.value.path == str(tmp_path / "out.shp")
    assert "out.cpg" in err.value.problem and "out.prj" in err.value.problem and err.value.fix
    assert (tmp_path / "out.cpg").read_text() == "UTF-8"
    check_output(tmp_path / "out.shp", overwrite=True)   # asked for: they are replaced


# ------------------------------------------------------------------- the plugin and Processing

@pytest.fixture(scope="module")
def plugin(rc, qgis_processing):
    from qgis.core import QgsApplication

    from remoteclip_qgis.processing import RemoteClipProvider

    registry = QgsApplication.processingRegistry()
    provider = RemoteClipProvider()
    assert registry.addProvider(provider)
    yield rc
    registry.removeProvider(provider)


def kept(path):
    """What must not change: a GeoPackage's layers (QGIS may open it to read), any other file's bytes."""
    if str(path).endswith(".gpkg"):
        ds = ogr.Open(str(path))
        return {ds.GetLayer(i).GetName(): features(path, ds.GetLayer(i).GetName()) for i in range(ds.GetLayerCount())}
    return files_of(path)


@pytest.mark.qgis
def test_processing_refuses_outputs_that_are_its_inputs(plugin, raster, tiny_bundle, tmp_path, monkeypatch):
    import processing
    from qgis.core import QgsProcessingException, QgsProcessingFeedback

    monkeypatch.setenv("REMOTECLIP_CACHE", str(tmp_path / "cache"))
    base = {"INPUT": raster, "MODEL": str(tiny_bundle), "TILE_SIZE": 256, "BATCH_SIZE": 16, "CLASS_FIELD": "cls"}

    def run(params):
        return processing.run("remoteclip:classifyfromsamples", {**base, **params}, feedback=QgsProcessingFeedback())

    def refuse(params, what, *inputs):
        before = {str(p): kept(p) for p in inputs}
        with pytest.raises(QgsProcessingException) as err:   # QGIS's type: only the message comes through
            run(params)
        assert f" {what} (" in str(err.value) and str(inputs[0]) in str(err.value)   # the input, by role and file
        assert {str(p): kept(p) for p in inputs} == before

    shp = write_points(tmp_path / "samp.shp", raster, "ESRI Shapefile", "samp")
    refuse({"SAMPLES": shp, "OUTPUT": shp}, "samples", shp)   # core's check of the Job Processing built
    gj = write_points(tmp_path / "s.geojson", raster, "GeoJSON")
    refuse({"SAMPLES": gj, "OUTPUT": gj}, "samples", gj)      # a converted output, checked before the run
    refuse({"SAMPLES": gj, "OUTPUT": str(tmp_path / "o.gpkg"), "HEAD_OUTPUT": gj}, "samples", gj)
    gp = write_points(tmp_path / "samp.gpkg", raster, "GPKG", "classes")
    refuse({"SAMPLES": f"{gp}|layername=classes", "OUTPUT": f"ogr:dbname='{gp}' table=\"classes\" (geom)"},
           "samples", gp)
    extp = write_points(tmp_path / "extp.geojson", raster, "GeoJSON", polygons=True)
    refuse({"SAMPLES": gj, "MASK": extp, "OUTPUT": extp}, "extent polygons", extp)
    refuse({"SAMPLES": gj, "MASK": extp, "OUTPUT": str(tmp_path / "o.gpkg"), "RASTER_OUTPUT": str(tmp_path / "m.tif"),
            "HEAD_OUTPUT": extp}, "extent polygons", extp)
    # a new layer beside the samples in their GeoPackage is written
    before = kept(gp)
    res = run({"SAMPLES": f"{gp}|layername=classes", "OUTPUT": f"ogr:dbname='{gp}' table=\"result\" (geom)"})
    assert res["N_TILES"] == 24 and len(features(gp, "result")) == 24
    assert kept(gp)["classes"] == before["classes"]


@pytest.mark.qgis
def test_the_docks_layers_carry_their_files_to_the_same_check(plugin, raster, tiny_bundle, tmp_path):
    """The dock reads samples and extent polygons from QGIS layers (layer_source), and its Job goes through
    run_job: the layers' files are inputs there too."""
    from qgis.core import QgsVectorLayer

    from remoteclip_qgis.core import errors as vendored
    from remoteclip_qgis.core.pipeline import ClassifyTask, Job, RunOptions, TileSpec
    from remoteclip_qgis.core.pipeline import run_job as plugin_run_job
    from remoteclip_qgis.layer_source import extent_from_features, samples_from_layer

    gp = write_points(tmp_path / "samp.gpkg", raster, "GPKG", "classes")
    samples = samples_from_layer(QgsVectorLayer(f"{gp}|layername=classes", "samples", "ogr"), "cls")
    extp = write_points(tmp_path / "extp.shp", raster, "ESRI Shapefile", "extp", polygons=True)
    extent = extent_from_features(QgsVectorLayer(extp, "zones", "ogr"), selected_only=False)
    before = {"gp": kept(gp), "extp": kept(extp)}
    for output, layer in ((gp, None), (extp, None), (gp, "Classes")):
        job = Job(raster=raster, task=ClassifyTask(samples=samples), tiles=TileSpec(size=256, extent=extent),
                  run=RunOptions(model=str(tiny_bundle), cache_dir=""), output=output, layer_name=layer,
                  overwrite=True)
        with pytest.raises(vendored.OutputIsInput) as err:
            plugin_run_job(job)
        assert err.value.path == output
    assert {"gp": kept(gp), "extp": kept(extp)} == before

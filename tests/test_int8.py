"""int8 bundles: made by core.runtime.quantize (from a bundle, from a checkpoint without torch, by training.export),
recorded and checked in the manifest, chosen with --precision int8, and labelling real rasters as fp32 does."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import ROOT

from core.errors import ModelError
from core.pipeline import CountTask, Job, LabelTask, RunOptions, SearchTask, TileSpec, run_job
from core.prompts import PRESETS
from core.runtime.bundle import load_bundle

DEMO = ROOT / "models" / "remoteclip-demo"


def _tiles(path, image_cfg, size, n):
    from core.geodata.raster import Stretch, default_bands, open_raster, read_rgb
    from core.geodata.tiles import make_grid
    from core.runtime.preprocess import preprocess

    src = open_raster(path)
    bands = default_bands(src)
    stretch = Stretch.from_source(src, bands)
    out = [preprocess(*read_rgb(src, bands, tuple(w), stretch)[:1], image_cfg)
           for w in make_grid(src, TileSpec(size=size)).windows()[:n].tolist()]
    src.close()
    return np.stack(out)


@pytest.fixture(scope="module")
def demo_int8(tmp_path_factory, data_dir):
    """The demo model (trained here on the real data) with int8 graphs, checked on real tiles."""
    from core.runtime.quantize import quantize_bundle

    z20 = data_dir / "orthomosaic" / "kampala_oam_z20_mosaic_1536x1024.tif"
    pixels = _tiles(z20, load_bundle(DEMO).image, 32, 48)
    return quantize_bundle(DEMO, tmp_path_factory.mktemp("demo") / "demo-int8", images=pixels,
                           images_note="48 Kampala z20 tiles")


def _onnx_ops(path):
    import onnx

    m = onnx.load(str(path))
    return {n.op_type for n in m.graph.node}, {t.data_type for t in m.graph.initializer}


def test_int8_bundle_records_how_it_was_made(demo_int8):
    import onnx

    b = load_bundle(demo_int8)
    assert b.precisions == ("fp32", "int8")
    rec = b.manifest["quantization"]["int8"]
    assert rec["image"]["method"] == "dynamic"
    assert rec["text"]["method"] == "fp32" and b.graph_path("text", "int8") == b.graph_path("text", "fp32")
    assert rec["image"]["ops"] == ["MatMul", "Gemm"] and "per output channel" in rec["image"]["weights"]
    agree = rec["agreement_vs_fp32"]
    assert agree["images"] == "48 Kampala z20 tiles" and agree["n_images"] == 48
    assert agree["image_cos_min"] > 0.999 and agree["text_cos_min"] > 0.99 and agree["top1_agree"] >= 0.9
    # the graphs really hold int8 weights and quantise activations at run time; the fp32 graphs are untouched
    ops, types = _onnx_ops(b.graph_path("image", "int8"))
    assert "DynamicQuantizeLinear" in ops and onnx.TensorProto.INT8 in types
    assert "Conv" in ops   # the patch embedding stays float: ConvInteger is slower than Conv on CPUs
    assert b.graph_path("image", "int8").stat().st_size < 0.5 * b.graph_path("image", "fp32").stat().st_size
    assert (b.path / "image_fp32.onnx").read_bytes() == (DEMO / "image_fp32.onnx").read_bytes()


def test_int8_labels_a_real_raster_as_fp32_does(demo_int8, data_dir):
    """1,536 tiles of the Kampala z21 mosaic: the int8 graphs give the fp32 label on at least 98% of them
    (99.8% measured), the same ranking for a search and the same counts nearly everywhere."""
    z21 = str(data_dir / "orthomosaic" / "kampala_oam_z21_mosaic_3072x2048.tif")
    spec = TileSpec(size=64)
    results = {}
    for precision in ("fp32", "int8"):
        run = RunOptions(model=str(demo_int8), device="cpu", precision=precision, cache_dir="")
        results[precision] = [run_job(Job(raster=z21, task=task, run=run, tiles=spec, max_tiles=None))
                              for task in (LabelTask(PRESETS["land-cover"]), SearchTask("a red roof"),
                                           CountTask("car"))]
    (l32, s32, c32), (l8, s8, c8) = results["fp32"], results["int8"]
    assert l8.provider == "CPUExecutionProvider" and l8.n_tiles == l32.n_tiles == 48 * 32
    same = np.mean([a["label"] == b["label"] for a, b in zip(l32.records, l8.records, strict=True)])
    assert same >= 0.98
    sim32 = np.array([r["similarity"] for r in s32.records])
    sim8 = np.array([r["similarity"] for r in s8.records])
    rank = np.corrcoef(np.argsort(np.argsort(sim32)), np.argsort(np.argsort(sim8)))[0, 1]
    assert rank > 0.99
    assert np.mean([a["count"] == b["count"] for a, b in zip(c32.records, c8.records, strict=True)]) >= 0.97
    # the embedding cache keeps the precisions apart
    cos = (l32.embeddings * l8.embeddings).sum(axis=1)
    assert 0.999 < cos.min() < 1.0


def test_manifest_checks_the_int8_record(demo_int8, tmp_path):
    def broken(edit):
        copy = tmp_path / f"b{len(list(tmp_path.iterdir()))}"
        shutil.copytree(demo_int8, copy)
        m = json.loads((copy / "manifest.json").read_text())
        edit(m)
        (copy / "manifest.json").write_text(json.dumps(m))
        return copy

    def no_graphs(m):
        del m["graphs"]["int8"]

    def bad_method(m):
        m["quantization"]["int8"]["image"]["method"] = "magic"

    def bad_agreement(m):
        m["quantization"]["int8"]["agreement_vs_fp32"]["top1_agree"] = "all of them"

    def unknown_precision(m):
        m["graphs"]["int4"] = m["graphs"]["int8"]

    for edit, words in ((no_graphs, "quantization.int8"), (bad_method, "quantization.int8.image.method"),
                        (bad_agreement, "top1_agree"), (unknown_precision, "int4")):
        bundle = broken(edit)
        with pytest.raises(ModelError) as ei:
            load_bundle(bundle)
        assert ei.value.path == str(bundle / "manifest.json") and words in ei.value.problem   # the key


def test_precision_int8_on_the_command_line(demo_int8, data_dir, tmp_path, capsys):
    from core.cli import main

    z20 = str(data_dir / "orthomosaic" / "kampala_oam_z20_mosaic_1536x1024.tif")
    out = tmp_path / "labels.gpkg"
    assert main(["label", z20, "--labels", "buildings,trees,road", "--model", str(demo_int8), "--precision",
                 "int8", "--tile-size", "128", "-o", str(out), "--no-cache", "-q"]) == 0
    assert out.is_file() and "96 tiles" in capsys.readouterr().out
    # a bundle without int8 graphs: one line naming the fix
    assert main(["label", z20, "--labels", "buildings,trees", "--model", str(DEMO), "--precision", "int8",
                 "--no-cache", "-q"]) == 2
    err = capsys.readouterr().err
    assert "no int8 graphs" in err and "--int8" in err and len(err.strip().splitlines()) == 1


def test_converter_makes_int8_graphs_without_torch(tmp_path):
    """`python -m core.runtime.convert ... --int8` in a process where torch cannot be imported."""
    from conftest import save_random_checkpoint
    from test_convert import convert_without_torch

    ckpt = save_random_checkpoint("tiny-test", tmp_path / "tiny.pt", seed=3)
    out = tmp_path / "tiny"
    r = convert_without_torch(ckpt, "--out", out, "--int8", "--quiet", timeout=600)
    assert r.returncode == 0, r.stderr
    b = load_bundle(out)
    assert b.precisions == ("fp32", "int8")
    agree = b.manifest["quantization"]["int8"]["agreement_vs_fp32"]
    assert agree["images"] == "16 seeded synthetic images" and agree["n_texts"] == 7
    assert agree["image_cos_min"] > 0.99
    assert b.manifest["parity"]["fp32"]["passed"]   # the fp32 graphs are checked as before


def test_training_export_int8_measures_on_real_images(tmp_path, data_dir):
    from training.export import export_bundle, tiny_model

    model, cfg, pp = tiny_model(1)
    out = export_bundle(model, pp, tmp_path / "tiny", architecture="tiny-test", model_config=cfg,
                        activation="quick_gelu", fp16=False, int8=True, data_dir=data_dir)
    agree = load_bundle(out).manifest["quantization"]["int8"]["agreement_vs_fp32"]
    assert agree["images"] == "RSSCN7 x140 (real)" and agree["n_images"] == 140 and agree["n_texts"] == 14
    assert agree["top1_agree"] >= 0.9


def test_the_recorded_agreement_is_int8_measured_against_fp32(tiny_bundle, tmp_path):
    """The manifest's agreement is what the int8 graphs give against the fp32 ones, recomputed here from the
    written graphs on the same inputs (a slip measuring fp32 against itself records a perfect 1.0)."""
    import onnxruntime as ort

    from core.runtime.convert import CHECK_PROMPTS, check_images
    from core.runtime.quantize import quantize_bundle
    from core.runtime.tokenizer import Tokenizer

    b = load_bundle(quantize_bundle(tiny_bundle, tmp_path / "both-int8", text="dynamic"))
    agree = b.manifest["quantization"]["int8"]["agreement_vs_fp32"]
    pixels = check_images(b.config.image.size[0], 16)
    ids = np.asarray(Tokenizer.from_bundle(b)(CHECK_PROMPTS), np.int64)

    def run(kind, precision, name, x):
        sess = ort.InferenceSession(str(b.graph_path(kind, precision)), providers=["CPUExecutionProvider"])
        return sess.run(None, {name: x})[0].astype(np.float64)

    def cos(a, c):
        return (a * c).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(c, axis=1)

    img32, img8 = (run("image", p, "pixel_values", pixels) for p in ("fp32", "int8"))
    txt32, txt8 = (run("text", p, "input_ids", ids) for p in ("fp32", "int8"))
    assert b.graph_path("text", "int8") != b.graph_path("text", "fp32")
    image_cos, text_cos = cos(img32, img8), cos(txt32, txt8)
    assert image_cos.min() < 0.99999 and text_cos.min() < 0.99999      # int8 is not fp32 here
    assert agree["image_cos_min"] == pytest.approx(image_cos.min(), abs=2e-6)
    assert agree["image_cos_mean"] == pytest.approx(image_cos.mean(), abs=2e-6)
    assert agree["text_cos_min"] == pytest.approx(text_cos.min(), abs=2e-6)
    top1 = ((img32 @ txt32.T).argmax(1) == (img8 @ txt8.T).argmax(1)).mean()
    assert agree["top1_agree"] == pytest.approx(top1, abs=1e-4)
    assert agree["n_images"] == 16 and agree["n_texts"] == len(CHECK_PROMPTS)


def test_int8_graphs_that_disagree_with_fp32_are_used_with_a_warning(int8_bundle, data_dir, tmp_path, capsys):
    from core.cli import main
    from core.runtime.bundle import INT8_USABLE_TOP1

    z20 = str(data_dir / "orthomosaic" / "kampala_oam_z20_mosaic_1536x1024.tif")
    recorded = load_bundle(int8_bundle).manifest["quantization"]["int8"]["agreement_vs_fp32"]["top1_agree"]
    assert recorded >= INT8_USABLE_TOP1
    poor = tmp_path / "poor-int8"
    shutil.copytree(int8_bundle, poor)
    m = json.loads((poor / "manifest.json").read_text())
    m["quantization"]["int8"]["agreement_vs_fp32"]["top1_agree"] = 0.1
    (poor / "manifest.json").write_text(json.dumps(m))

    def warned(model, precision, raster=z20):
        run = RunOptions(model=str(model), device="cpu", precision=precision, cache_dir="")
        res = run_job(Job(raster=raster, task=LabelTask(["trees", "road"]), run=run, tiles=TileSpec(size=512)))
        return [w for w in res.warnings if "int8 graphs" in w]

    assert warned(int8_bundle, "int8") == [] and warned(poor, "fp32") == []
    (w,) = warned(poor, "int8")
    assert "only 10%" in w and "fp32" in w
    assert len(warned(poor, "int8", [z20, z20.replace("z20_mosaic_1536x1024", "z21_mosaic_3072x2048")])) == 1
    assert main(["label", z20, "--labels", "trees,road", "--model", str(poor), "--precision", "int8",
                 "--tile-size", "512", "--no-cache", "-q"]) == 0
    assert "warning: The int8 graphs of" in capsys.readouterr().out


def _qdq_inputs(path):
    """node name -> (op type, whether any of its inputs comes from a DequantizeLinear: quantised in QDQ)."""
    import onnx

    g = onnx.load(str(path)).graph
    made_by = {o: n for n in g.node for o in n.output}
    return {n.name: (n.op_type, any(made_by.get(i) is not None and made_by[i].op_type == "DequantizeLinear"
                                     for i in n.input)) for n in g.node}


def test_static_ends_keeps_the_first_and_last_layers_in_float32(tiny_bundle, data_dir, tmp_path):
    """static-ends: QDQ everywhere but the patch embedding and the projection (SENSITIVE_ENDS, found by the
    graph's structure); static-ends-linear: besides those, only convolutions and matrix products are int8."""
    import onnx

    from core.runtime.quantize import quantize_bundle, sensitive_nodes, tower_kind

    z20 = data_dir / "orthomosaic" / "kampala_oam_z20_mosaic_1536x1024.tif"
    calib = _tiles(z20, load_bundle(tiny_bundle).image, 64, 8)
    fp32 = onnx.load(str(tiny_bundle / "image_fp32.onnx")).graph
    assert tower_kind(fp32) == "vit"
    first_conv = next(n.name for n in fp32.node if n.op_type == "Conv")
    last_ln = max(i for i, n in enumerate(fp32.node) if n.op_type == "LayerNormalization")
    projection = next(n.name for n in fp32.node[last_ln:] if n.op_type in ("MatMul", "Gemm"))
    assert {first_conv, projection} <= set(sensitive_nodes(fp32))
    made = {m: load_bundle(quantize_bundle(tiny_bundle, tmp_path / m, method=m, calibration=calib))
            for m in ("static", "static-ends", "static-ends-linear")}
    nodes = {m: _qdq_inputs(b.graph_path("image", "int8")) for m, b in made.items()}
    assert nodes["static"][first_conv][1] and nodes["static"][projection][1]   # plain static: every layer int8
    for m in ("static-ends", "static-ends-linear"):
        rec = made[m].manifest["quantization"]["int8"]
        assert rec["image"]["method"] == m and rec["image"]["float32_nodes"] == sensitive_nodes(fp32)
        assert not nodes[m][first_conv][1] and not nodes[m][projection][1]
        inner = [n for n, (op, q) in nodes[m].items() if op == "MatMul" and n != projection]
        assert inner and all(nodes[m][n][1] for n in inner)   # the blocks between are int8
    assert made["static-ends-linear"].manifest["quantization"]["int8"]["image"]["ops"] == ["Conv", "MatMul", "Gemm"]
    qdq = {m: sum(op == "QuantizeLinear" for op, _ in nodes[m].values()) for m in nodes}
    assert qdq["static-ends-linear"] < qdq["static-ends"] < qdq["static"]


def test_sensitive_ends_of_a_convolutional_tower():
    """A ResNet-like graph (no LayerNormalization): the three-convolution stem and everything after the last
    convolution (the attention pool) stay float32."""
    from onnx import TensorProto, helper

    from core.runtime.quantize import sensitive_nodes, tower_kind

    names = ["stem1", "stem2", "stem3", "block1", "block2", "pool_q", "pool_softmax", "proj"]
    ops = ["Conv", "Conv", "Conv", "Conv", "Conv", "Gemm", "Softmax", "MatMul"]
    nodes = [helper.make_node(op, [f"t{i}"], [f"t{i + 1}"], name=n)
             for i, (n, op) in enumerate(zip(names, ops, strict=True))]
    nodes.append(helper.make_node("Identity", ["t8"], ["out"], name="out"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("t0", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    assert tower_kind(graph) == "resnet"
    assert sensitive_nodes(graph) == ["stem1", "stem2", "stem3", "pool_q", "pool_softmax", "proj"]


def test_writers_choose_the_method_per_tower_kind(tiny_bundle, tmp_path):
    """add_int8(method="auto") (training.export --int8): WRITER_METHODS by the tower's kind where there are
    calibration tiles; dynamic without them."""
    import onnx
    from onnx import TensorProto, helper

    from core.runtime.quantize import WRITER_METHODS, writer_method

    assert WRITER_METHODS == {"vit": "dynamic", "resnet": "static-ends"}   # measured: docs/bundles.md
    calib = np.zeros((2, 3, 64, 64), np.float32)
    vit = tiny_bundle / "image_fp32.onnx"
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="stem"), helper.make_node("Relu", ["y"], ["z"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None),
                                           helper.make_tensor_value_info("w", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    resnet = tmp_path / "resnet.onnx"
    onnx.save_model(helper.make_model(graph), str(resnet))
    assert writer_method(vit, calib) == "dynamic" and writer_method(resnet, calib) == "static-ends"
    assert writer_method(resnet, None) == writer_method(resnet, calib[:0]) == "dynamic"
    from core.runtime.quantize import quantize_bundle

    made = load_bundle(quantize_bundle(tiny_bundle, tmp_path / "auto", method="auto", calibration=calib))
    assert made.manifest["quantization"]["int8"]["image"]["method"] == WRITER_METHODS["vit"]


def test_export_calibrates_on_real_tiles_of_another_raster(data_dir, tmp_path):
    """training.export's calibration tiles (for static-ends graphs) are real Kampala z20 tiles, preprocessed
    as the pipeline does, not the RSSCN7 images the agreement is measured on; none without the data."""
    from training.export import INT8_CALIBRATION, int8_calibration

    cfg = load_bundle(DEMO).image
    tiles = int8_calibration(cfg, data_dir)
    assert "kampala_oam_z20" in INT8_CALIBRATION and tiles.shape == (64, 3, 64, 64) and tiles.dtype == np.float32
    assert np.unique(tiles.reshape(64, -1), axis=0).shape[0] == 64   # 64 different tiles, spread over the mosaic
    assert int8_calibration(cfg, tmp_path) is None

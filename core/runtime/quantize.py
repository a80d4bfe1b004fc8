"""int8 graphs for a bundle: onnxruntime's quantisation tools over the fp32 graphs.

    from core.runtime.quantize import add_int8
    add_int8(bundle_folder, graphs, images=pixels, prompts=prompts)   # image_int8.onnx, text_int8.onnx

Two methods, both with int8 weights quantised per output channel (``onnxruntime.quantization``):

* ``dynamic`` (the default, and the one the bundles use): MatMul and Gemm weights are stored as int8;
  activations are quantised to uint8 per batch at run time, so no calibration data is needed and the
  graphs can be made anywhere (``models pull --int8`` on the analyst's machine). Convolutions stay
  float32: onnxruntime's ConvInteger is slower than its float convolution on CPUs.
* ``static``: QDQ graphs whose activation ranges are calibrated on real tiles (``calibration``,
  percentile calibration). Every operator is quantised, which makes convolutional image towers (RN50)
  much faster, but it moved more labels than ``dynamic`` on every model measured (docs/bundles.md).
* ``static-ends``: ``static`` with the sensitive first and last layers left in float32 (SENSITIVE_ENDS: the
  patch embedding or ResNet stem, the projection or attention pool); ``static-ends-linear``: besides, only
  convolutions and matrix products int8 (Softmax, LayerNormalization, Add, ... in float32). On RN50
  ``static-ends`` agreed better than ``dynamic`` and ran about twice as fast; the bundle writers use it for
  convolutional towers where they have real tiles to calibrate on (WRITER_METHODS, ``method="auto"``).

``add_int8`` measures what it made against the fp32 graphs on the inputs it is given (real tiles or
images where the caller has them, otherwise seeded synthetic images) and returns that record, which
the bundle writers store in the manifest under ``quantization.int8``. ``raster_tiles`` reads those tiles from
the analyst's own raster (``models convert/pull/int8 --int8-check RASTER``): at least INT8_MIN_IMAGES of them,
so that precision auto can trust the figure (core.runtime.inference.choose_precision). onnxruntime's quantisation needs
the ``onnx`` package; both are imported here, lazily.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InvalidInput, MissingDependency, OutputIsInput

__all__ = ["add_int8", "quantize_bundle", "quantize_graph", "raster_tiles", "RasterTiles", "METHODS", "DYNAMIC_OPS",
           "agreement"]

METHODS = ("dynamic", "static", "static-ends", "static-ends-linear")
TEXT_METHODS = ("fp32", "dynamic")
TEXT_DEFAULT = "fp32"
DYNAMIC_OPS = ("MatMul", "Gemm")
LINEAR_OPS = ("Conv", "MatMul", "Gemm")   # "static-ends-linear": only these are int8, the rest stays float32

# The layers the "static-ends" methods leave in float32, per kind of image tower (the one declared place).
# Chosen by the graph's structure, not by node names: the exporters name nodes differently (RN50's torch.onnx
# graph "Conv_4", the dynamo exporter's "node_Conv_391"). "first_convs": the first N convolutions (ViT: the
# patch embedding; ResNet: the three-convolution stem); "last_after": every quantisable node after the last
# node of this type (ViT: the projection after ln_post; ResNet: the attention pool after the last convolution).
SENSITIVE_ENDS = {
    "vit": {"first_convs": 1, "last_after": "LayerNormalization"},
    "resnet": {"first_convs": 3, "last_after": "Conv"},
}


# The image graph method the bundle writers use, per kind of image tower, where they have real tiles to
# calibrate on (measured per architecture: docs/bundles.md, "int8 graphs (CPUs)"); without them: dynamic.
WRITER_METHODS = {"vit": "dynamic", "resnet": "static-ends"}


# --int8-check RASTER: tiles of the analyst's raster, in a seeded random order over the whole raster. The
# static methods calibrate on the first CALIBRATION_TILES (never fewer than MIN_CALIBRATION_TILES: the writer
# then quantises dynamically) and the agreement is measured on the others, at least INT8_MIN_IMAGES of them.
CALIBRATION_TILES = 64
MIN_CALIBRATION_TILES = 16
CHECK_TILES = 128              # measured on at most this many (and the calibration share where no method takes it)
MIN_VALID_SHARE = 0.5          # a tile with less than this share of pixels holding data (not nodata) is skipped
RASTER_SEED = 0


@dataclass
class RasterTiles:
    """Preprocessed tiles of one raster (N, 3, H, W) in their seeded order, with their (col, row, w, h) windows."""

    raster: str             # the file's name, for the manifest
    pixels: np.ndarray
    windows: list
    size: int
    seed: int

    def split(self, static: bool) -> tuple[np.ndarray | None, np.ndarray, list, list]:
        """(calibration tiles or None, check tiles, their windows, the check tiles' windows): distinct tiles, a
        calibration share only for a static method and only where INT8_MIN_IMAGES tiles are left to check on."""
        from .bundle import INT8_MIN_IMAGES

        k = min(CALIBRATION_TILES, len(self.pixels) - INT8_MIN_IMAGES) if static else 0
        if k < MIN_CALIBRATION_TILES:
            k = 0
        return (self.pixels[:k] if k else None), self.pixels[k:], self.windows[:k], self.windows[k:]

    def note(self, n: int) -> str:
        return f"{n} tiles of {self.raster} ({self.size} px, seed {self.seed})"


def raster_tiles(raster, image_cfg: dict, *, seed: int = RASTER_SEED) -> RasterTiles:
    """Up to CALIBRATION_TILES + CHECK_TILES tiles of ``raster`` at the bundle's input size, read and
    preprocessed as the pipeline does (default bands, its stretch), drawn in a seeded random order from the
    raster's grid of whole, non-overlapping tiles; tiles mostly nodata (MIN_VALID_SHARE) are skipped. Fewer
    than INT8_MIN_IMAGES such tiles: InvalidInput (param "int8_check"). The raster is only read."""
    from ..geodata.raster import Stretch, default_bands, open_raster, read_rgb
    from ..geodata.tiles import TileSpec, make_grid
    from .bundle import INT8_MIN_IMAGES
    from .preprocess import preprocess

    path = Path(raster).expanduser()
    size = image_cfg["size"]
    size = int(max(size)) if isinstance(size, list | tuple) else int(size)
    src = open_raster(path)
    try:
        try:
            windows = make_grid(src, TileSpec(size=size, edge="drop")).windows().tolist()
        except InvalidInput:   # smaller than one tile
            windows = []
        order = np.random.default_rng(seed).permutation(len(windows))
        bands = default_bands(src)
        stretch = Stretch.from_source(src, bands) if len(windows) else None
        want = CALIBRATION_TILES + CHECK_TILES
        pixels, kept = [], []
        for i in order:
            rgb, valid = read_rgb(src, bands, tuple(windows[i]), stretch)
            if valid is not None and valid.mean() < MIN_VALID_SHARE:
                continue
            pixels.append(preprocess(rgb, image_cfg, valid))
            kept.append(tuple(int(v) for v in windows[i]))
            if len(pixels) == want:
                break
    finally:
        src.close()
    if len(pixels) < INT8_MIN_IMAGES:
        raise InvalidInput(f"{path.name} gives only {len(pixels)} tiles of {size} x {size} px with data (of "
                           f"{len(windows)} in it); checking the int8 graphs needs at least {INT8_MIN_IMAGES}.",
                           f"Give a larger raster of the imagery you will label (at least {INT8_MIN_IMAGES} tiles of "
                           f"{size} px holding data).", path=path, param="int8_check")
    return RasterTiles(path.name, np.stack(pixels), kept, size, seed)


def check_raster_outside(raster, out_dir) -> None:
    """The raster checked on is not inside the bundle folder being written (replacing it would remove it)."""
    r, o = Path(raster).expanduser().resolve(), Path(out_dir).expanduser().resolve()
    if r == o or o in r.parents:
        raise OutputIsInput(f"The raster to check the int8 graphs on, {r}, is inside the bundle folder being "
                            f"written ({o}).", "Write the bundle to another folder, or move the raster out of it.",
                            path=r)


def writer_method(graph_path, calibration) -> str:
    """The method for ``add_int8(method="auto")``: WRITER_METHODS by the tower's kind when there are
    calibration tiles, else dynamic (it needs none)."""
    if calibration is None or not len(calibration):
        return "dynamic"
    onnx, _ = _tools()
    return WRITER_METHODS[tower_kind(onnx.load(os.fspath(graph_path), load_external_data=False).graph)]


def tower_kind(graph) -> str:
    """"resnet" for a convolutional image tower (no LayerNormalization: RN50's attention pool has none),
    else "vit"."""
    return "vit" if any(n.op_type == "LayerNormalization" for n in graph.node) else "resnet"


def sensitive_nodes(graph) -> list[str]:
    """The names of the nodes the "static-ends" methods keep in float32 (SENSITIVE_ENDS)."""
    ends = SENSITIVE_ENDS[tower_kind(graph)]
    nodes = list(graph.node)
    convs = [n.name for n in nodes if n.op_type == "Conv"]
    last = max((i for i, n in enumerate(nodes) if n.op_type == ends["last_after"]), default=len(nodes))
    return convs[:ends["first_convs"]] + [n.name for n in nodes[last + 1:] if n.op_type not in ("Identity",)]


def _tools():
    try:
        import onnx
        from onnxruntime import quantization
    except ImportError as e:
        raise MissingDependency(f"Making int8 graphs needs onnx and onnxruntime's quantisation tools ({e}).",
                              "Install them (pip install onnx onnxruntime; the plugin offers to) and try again.") \
            from None
    return onnx, quantization


def _without_value_info(onnx, src: Path, folder: Path) -> Path:
    """A copy of the graph without its stored intermediate shapes. The quantiser re-runs ONNX shape
    inference, which refuses some exporters' stored shapes (RN50's attention pool from torch's dynamo
    exporter: 'Inferred shape and existing shape differ')."""
    model = onnx.load(str(src))
    del model.graph.value_info[:]
    out = folder / (src.stem + ".novi.onnx")
    onnx.save_model(model, str(out))
    return out


class _Batches:
    """onnxruntime's CalibrationDataReader protocol over an (N, 3, H, W) array."""

    def __init__(self, name: str, pixels: np.ndarray, batch: int = 1):  # equal batches: the calibrator stacks them
        self.items = iter([{name: pixels[i:i + batch]} for i in range(0, len(pixels), batch)])

    def get_next(self):
        return next(self.items, None)

    def rewind(self):  # not needed by the percentile calibrator, part of the protocol
        pass


class _NoPreprocessAdvice(logging.Filter):
    """The quantiser advises its shape pre-processing on the root logger at every call; the graphs here have
    their stored shapes dropped and re-inferred instead (_without_value_info). Also its note on 1-D weights."""

    def filter(self, record):
        message = record.getMessage()
        # static QDQ: per-channel quantisation of a 1-D weight (LayerNormalization's scale) falls back to one
        # scale per tensor, and says so once per weight
        return "pre-processing before quantization" not in message and "is out-of-range for weight" not in message


def quantize_graph(src, dst, method: str = "dynamic", calibration: np.ndarray | None = None) -> dict:
    """Write an int8 copy of the graph ``src`` to ``dst``; returns how it was made (for the manifest)."""
    quiet = _NoPreprocessAdvice()
    logging.getLogger().addFilter(quiet)
    try:
        return _quantize_graph(src, dst, method, calibration)
    finally:
        logging.getLogger().removeFilter(quiet)


def _quantize_graph(src, dst, method, calibration) -> dict:
    onnx, q = _tools()
    if method not in METHODS:
        raise InvalidInput(f"Unknown int8 method {method!r}.", f"Use one of {', '.join(METHODS)}.", param="method")
    src, dst = Path(src), Path(dst)
    with tempfile.TemporaryDirectory(prefix=".int8-", dir=dst.parent) as tmp:
        plain = _without_value_info(onnx, src, Path(tmp))
        if method == "dynamic":
            q.quantize_dynamic(str(plain), str(dst), weight_type=q.QuantType.QInt8, per_channel=True,
                               op_types_to_quantize=list(DYNAMIC_OPS))
            return {"method": "dynamic", "weights": "int8, per output channel", "ops": list(DYNAMIC_OPS),
                    "activations": "uint8, quantised per batch at run time",
                    "tool": f"onnxruntime.quantization {_ort_version()}"}
        if calibration is None or not len(calibration):
            raise InvalidInput("Static int8 quantisation needs calibration images.",
                                  "Give real tiles to calibrate on, or use the dynamic method.")
        graph = onnx.load(str(plain), load_external_data=False).graph
        name = graph.input[0].name
        exclude = sensitive_nodes(graph) if method.startswith("static-ends") else []
        ops = list(LINEAR_OPS) if method == "static-ends-linear" else None
        with contextlib.redirect_stdout(io.StringIO()):   # the calibrator prints its progress
            q.quantize_static(str(plain), str(dst), _Batches(name, np.asarray(calibration, np.float32)),
                              quant_format=q.QuantFormat.QDQ, per_channel=True,
                              activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                              calibrate_method=q.CalibrationMethod.Percentile, nodes_to_exclude=exclude,
                              op_types_to_quantize=ops)
        how = {"method": method, "format": "QDQ", "weights": "int8, per output channel",
               "activations": "uint8, ranges calibrated (percentile 99.999)",
               "calibration_images": int(len(calibration)), "tool": f"onnxruntime.quantization {_ort_version()}"}
        if exclude:
            how["float32_nodes"] = exclude   # the first and last layers (SENSITIVE_ENDS)
        if ops:
            how["ops"] = ops
        return how


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _session(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(os.fspath(path), so, providers=["CPUExecutionProvider"])


def _run(path, name: str, x: np.ndarray, batch: int = 16) -> np.ndarray:
    sess = _session(path)
    return np.concatenate([sess.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def agreement(folder, fp32: dict, int8: dict, pixels: np.ndarray, ids: np.ndarray) -> dict:
    """int8 against fp32 on the same inputs: embedding cosines and top-1 agreement of each image's best
    prompt (each side with its own text embeddings)."""
    folder = Path(folder)
    img32 = _run(folder / fp32["image"], "pixel_values", pixels)
    img8 = _run(folder / int8["image"], "pixel_values", pixels)
    txt32 = _run(folder / fp32["text"], "input_ids", ids)
    txt8 = _run(folder / int8["text"], "input_ids", ids)
    top32 = (img32 @ txt32.T).argmax(axis=1)
    top8 = (img8 @ txt8.T).argmax(axis=1)
    cos_i = (img32 * img8).sum(axis=1) / (np.linalg.norm(img32, axis=1) * np.linalg.norm(img8, axis=1))
    cos_t = (txt32 * txt8).sum(axis=1) / (np.linalg.norm(txt32, axis=1) * np.linalg.norm(txt8, axis=1))
    return {"image_cos_min": round(float(cos_i.min()), 6), "image_cos_mean": round(float(cos_i.mean()), 6),
            "text_cos_min": round(float(cos_t.min()), 6), "top1_agree": round(float((top32 == top8).mean()), 4),
            "n_images": int(len(pixels)), "n_texts": int(len(ids))}


def add_int8(folder, graphs: dict, *, images: np.ndarray | None = None, images_note: str | None = None,
             ids: np.ndarray | None = None, method: str = "dynamic", calibration: np.ndarray | None = None,
             text: str = TEXT_DEFAULT, image_size: int | None = None, tokenize=None,
             check_tiles: RasterTiles | None = None, progress=None) -> tuple[dict, dict]:
    """Make ``image_int8.onnx`` (and with ``text="dynamic"`` ``text_int8.onnx``) in ``folder`` from
    ``graphs["fp32"]`` and measure them.

    ``images``: preprocessed (N, 3, H, W) inputs for the agreement check (else 16 of core.runtime.convert's seeded
    synthetic check images of ``image_size``); ``ids``: token ids for it (else ``tokenize`` of
    core.runtime.convert's check prompts). ``method`` applies to the image graph ("auto": :func:`writer_method`, per
    tower kind when ``calibration`` tiles are given). ``text="fp32"`` (the default) keeps
    the fp32 text graph for the int8 precision: the text runs once per job, and quantising it moved the
    class ranking of whole rasters on the random-weight models (docs/bundles.md). ``check_tiles``
    (:func:`raster_tiles`, instead of ``images`` and ``calibration``): the analyst's raster, calibrated on where
    the method is static and measured on its other tiles. Returns (the
    ``graphs["int8"]`` entry, the record for the manifest's ``quantization["int8"]``)."""
    report = progress or (lambda fraction, message: None)
    folder = Path(folder)
    if text not in TEXT_METHODS:
        raise InvalidInput(f"Unknown int8 text method {text!r}.", f"Use one of {', '.join(TEXT_METHODS)}.", param="text_method")
    names = {"image": "image_int8.onnx", "text": "text_int8.onnx" if text == "dynamic" else graphs["fp32"]["text"]}
    raster = None
    if check_tiles is not None:
        static = method.startswith("static")
        if method == "auto":
            onnx, _ = _tools()
            graph = onnx.load(os.fspath(folder / graphs["fp32"]["image"]), load_external_data=False).graph
            static = WRITER_METHODS[tower_kind(graph)].startswith("static")
        calibration, images, _, _ = check_tiles.split(static)
        images_note = check_tiles.note(len(images))
        raster = {"raster": check_tiles.raster, "seed": check_tiles.seed}
    if method == "auto":
        method = writer_method(folder / graphs["fp32"]["image"], calibration)
    report(0.0, f"Quantising the image graph to int8 ({method})")
    how_image = quantize_graph(folder / graphs["fp32"]["image"], folder / names["image"], method, calibration)
    if raster is not None and how_image.get("calibration_images"):
        how_image["calibration_tiles"] = check_tiles.note(how_image["calibration_images"])
    if text == "dynamic":
        report(0.5, "Quantising the text graph to int8 (dynamic)")
        how_text = quantize_graph(folder / graphs["fp32"]["text"], folder / names["text"], "dynamic")
    else:
        how_text = {"method": "fp32", "note": "the fp32 text graph: it runs once per job"}
    from .convert.probe import CHECK_PROMPTS, check_images

    if images is None:
        if image_size is None:
            raise ValueError("give images or image_size")
        images, images_note = check_images(int(image_size), 16), "16 seeded synthetic images"
    if ids is None:
        if tokenize is None:
            raise ValueError("give ids or tokenize")
        ids = tokenize(CHECK_PROMPTS)
    report(0.8, "Measuring the int8 graphs against fp32")
    agree = agreement(folder, graphs["fp32"], names, np.asarray(images, np.float32), np.asarray(ids, np.int64))
    agree["images"] = images_note or f"{len(images)} images"
    if raster is not None:
        agree.update(raster)   # the figure is for this raster's imagery
    record = {"image": how_image, "text": how_text, "agreement_vs_fp32": agree}
    report(1.0, "int8 graphs written")
    return names, record


def quantize_bundle(bundle, out_dir, *, images: np.ndarray | None = None, images_note: str | None = None,
                    method: str = "dynamic", calibration: np.ndarray | None = None, text: str = TEXT_DEFAULT,
                    check_raster=None, overwrite: bool = False, progress=None) -> Path:
    """A copy of an existing bundle at ``out_dir`` with int8 graphs added (its other graphs copied as they
    are), written atomically like every bundle. Measured on ``images`` (preprocessed real tiles) when given;
    ``check_raster``: on tiles of that raster instead (:func:`raster_tiles`; ``method="auto"`` then calibrates
    the tower kinds WRITER_METHODS makes static on some of them)."""
    import json
    import shutil

    from .bundle import MANIFEST, load_bundle, publish_dir, staging_dir, write_manifest
    from .tokenizer import Tokenizer

    b = load_bundle(bundle)
    tiles = None
    if check_raster is not None:
        check_raster_outside(check_raster, out_dir)
        tiles = raster_tiles(check_raster, b.image)
    tmp = staging_dir(out_dir, overwrite)
    try:
        graphs = {p: dict(g) for p, g in b.manifest["graphs"].items() if p != "int8"}
        for rel in sorted({b.text["vocab_file"], *(f for g in graphs.values() for f in g.values())}):
            shutil.copyfile(b.path / rel, tmp / rel)
        size = b.image["size"]
        graphs["int8"], record = add_int8(
            tmp, graphs, images=images, images_note=images_note, method=method, calibration=calibration, text=text,
            image_size=size[0] if isinstance(size, list) else size, tokenize=Tokenizer.from_bundle(b),
            check_tiles=tiles, progress=progress)
        manifest = json.loads((b.path / MANIFEST).read_text(encoding="utf-8"))
        manifest["graphs"] = graphs
        manifest["quantization"] = {"int8": record}
        write_manifest(tmp, manifest)
        load_bundle(tmp)   # the reader accepts what was written
        return publish_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

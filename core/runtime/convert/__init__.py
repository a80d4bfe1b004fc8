"""OpenCLIP checkpoint (RemoteCLIP, GeoRSCLIP, SkyCLIP...) -> model bundle, with numpy and onnx only.

    core.runtime.convert.convert_checkpoint("RemoteCLIP-ViT-B-32.pt", "models/RemoteCLIP-ViT-B-32", fp16=True)

    python -m core.runtime.convert RemoteCLIP-ViT-B-32.pt --out models/RemoteCLIP-ViT-B-32 --fp16

Steps: read the checkpoint without PyTorch and without running pickle code (checkpoint.py); recognise
the architecture from its shapes (architectures.py); build the image and text graphs from the weights
(graphs.py); check them against a float64 numpy forward pass of the same weights (reference.py) on a
few inputs and record the result as the manifest's parity table; write the bundle atomically, in the
format and through the manifest code that training.export uses (core.runtime.bundle).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from ...errors import Cancelled, InvalidInput, MissingDependency, ModelError
from ..bundle import (
    VOCAB_FILE,
    VOCAB_NAME,
    check_destination,
    image_section,
    load_bundle,
    new_manifest,
    publish_dir,
    staging_dir,
    write_manifest,
)
from ..digest import file_sha256
from .architectures import detect_architecture, known_architectures, preprocess_config, resolve
from .checkpoint import load_state_dict
from .probe import CHECK_IMAGES, CHECK_PROMPTS, check_images  # noqa: F401 (what the self-check feeds)

__all__ = ["convert_checkpoint", "detect_architecture", "known_architectures", "load_state_dict", "require_onnx",
           "ACTIVATIONS", "THRESHOLDS"]

ACTIVATIONS = ("quick_gelu", "gelu")
THRESHOLDS = {"fp32": 0.99999, "fp16": 0.999}  # the same bars as training.parity


def require_onnx():
    """The onnx module, or RemoteClipError saying to install it (the only package conversion adds to the
    runtime; callers can ask before they start)."""
    try:
        import onnx
    except ImportError as e:
        raise MissingDependency("Converting a checkpoint needs the onnx package, which is not installed.",
                              "Install it (pip install onnx==1.23.2; the plugin offers to) and try again.") from e
    return onnx


def _cos_rows(a, b) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def _session(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    # no pre-packed weight copies: this session runs a few inputs once
    so.add_session_config_entry("session.disable_prepacking", "1")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _parity_row(folder: Path, graphs: dict, pixels, ids, ref_img, ref_txt, threshold: float) -> dict:
    sess = _session(folder / graphs["image"])
    img = sess.run(None, {"pixel_values": pixels})[0]
    # batch 1 must give what the same image gives inside a batch: catches a batch size baked into the graph
    one = sess.run(None, {"pixel_values": pixels[:1]})[0]
    del sess  # one graph in memory at a time
    txt = _session(folder / graphs["text"]).run(None, {"input_ids": ids})[0]
    top = (img @ txt.T).argmax(axis=1)
    top_ref = (ref_img @ ref_txt.T).argmax(axis=1)
    row = {"image_cos_min": float(_cos_rows(img, ref_img).min()),
           "text_cos_min": float(_cos_rows(txt, ref_txt).min()),
           "top1_agree": float((top == top_ref).mean()),
           "n_images": int(len(pixels)), "n_texts": int(len(ids)),
           "batch1_cos": float(_cos_rows(one, img[:1]).min())}
    row["passed"] = bool(min(row["image_cos_min"], row["text_cos_min"], row["batch1_cos"]) >= threshold
                         and row["top1_agree"] == 1.0)
    return row


def convert_checkpoint(checkpoint, out_dir, *, arch: str = "auto", activation: str = "quick_gelu",
                       fp16: bool = False, int8: bool = False, name: str | None = None, source: dict | None = None,
                       overwrite: bool = False, progress=None, is_cancelled=None, verify: bool = True,
                       int8_check=None) -> Path:
    """Convert an OpenCLIP-format checkpoint into a bundle folder ``out_dir``; returns the folder.

    The bundle is written into a temporary folder beside ``out_dir`` and renamed when complete; an
    existing bundle at ``out_dir`` is refused unless ``overwrite`` (a folder that is not a bundle always is).
    ``progress(fraction, message)``; ``is_cancelled() -> bool`` is checked between stages and ends the
    run with core.errors.Cancelled, leaving nothing. ``source`` is recorded as the manifest's "source"
    (origin URL, sha256...; the file's name and sha256 are filled in when missing). ``verify`` compares the
    graphs with a numpy forward pass of the checkpoint and refuses to write a bundle that disagrees.
    ``int8`` adds int8 graphs (core.runtime.quantize: dynamic quantisation of the fp32 graphs) with their measured
    agreement with fp32 in the manifest's ``quantization``: on 16 synthetic images, or with ``int8_check`` (a raster
    path; implies ``int8``) on tiles of that raster (core.runtime.quantize.raster_tiles, read before the graphs are
    built), where the methods of WRITER_METHODS that are static calibrate on some of them.
    """
    onnx = require_onnx()
    from . import graphs as G

    if activation not in ACTIVATIONS:
        raise InvalidInput(f"Unknown activation {activation!r}.", f"Use one of {', '.join(ACTIVATIONS)}.", param="activation")
    report = progress or (lambda fraction, message: None)
    t_start = time.perf_counter()

    def stage(fraction: float, message: str) -> None:
        if is_cancelled is not None and is_cancelled():
            raise Cancelled()
        report(fraction, message)

    checkpoint = Path(checkpoint).expanduser()
    out_dir = Path(out_dir).expanduser()
    stage(0.0, f"Reading {checkpoint.name}")
    check_destination(out_dir, overwrite)  # refuse a bad destination before the long work
    sd = load_state_dict(checkpoint)
    stage(0.05, "Recognising the architecture")
    arch, cfg = resolve(sd, arch)  # every key of the architecture, logit_scale included
    pp = preprocess_config(arch)
    tiles = None
    if int8_check is not None:
        from ..quantize import check_raster_outside, raster_tiles

        check_raster_outside(int8_check, out_dir)
        stage(0.06, f"Reading check tiles of {Path(int8_check).name}")
        tiles = raster_tiles(int8_check, image_section(pp["size"], pp["mean"], pp["std"], pp["resize_mode"],
                                                       pp["interpolation"], pp["fill_color"]))
        int8 = True
    src = {"checkpoint": checkpoint.name, "sha256": None, "origin": f"file://{checkpoint.name}"}
    src.update(source or {})
    if not src.get("sha256"):
        stage(0.07, "Hashing the checkpoint")
        src["sha256"] = file_sha256(checkpoint)

    precisions = ("fp32", "fp16") if fp16 else ("fp32",)
    tmp = staging_dir(out_dir, overwrite)
    try:
        graphs, times = {}, {}
        step = 0.6 / (2 * len(precisions))
        done = 0.1
        for precision in precisions:
            half = precision == "fp16"
            graphs[precision] = {}
            for kind, build in (("image", G.image_graph), ("text", G.text_graph)):
                stage(done, f"Building the {precision} {kind} graph ({arch})")
                t0 = time.perf_counter()
                path = tmp / f"{kind}_{precision}.onnx"
                G.write_graph(build(sd, cfg, activation, fp16=half), path, _version())
                graphs[precision][kind] = path.name
                times[f"{kind}_{precision}_s"] = round(time.perf_counter() - t0, 2)
                done += step

        logit_scale = float(np.exp(np.float64(np.asarray(sd["logit_scale"]).reshape(()))))
        expected = None
        if verify:
            stage(0.7, "Running the numpy reference forward pass")
            expected = reference_outputs(sd, cfg, activation, pp["size"])
        del sd  # the weights are in the graphs now; the checks below hold one graph in memory at a time
        parity = None
        if verify:
            parity = _check_graphs(tmp, graphs, expected, stage)
        quantization = None
        if int8:
            from ..quantize import add_int8
            from ..tokenizer import Tokenizer

            tok = Tokenizer(VOCAB_FILE, context_length=cfg["text_cfg"]["context_length"])
            graphs["int8"], record = add_int8(
                tmp, graphs, image_size=pp["size"], tokenize=tok, check_tiles=tiles,
                method="auto" if tiles is not None else "dynamic", progress=lambda f, m: stage(0.9 + 0.07 * f, m))
            quantization = {"int8": record}
        stage(0.97, "Writing the manifest")
        shutil.copyfile(VOCAB_FILE, tmp / VOCAB_NAME)
        manifest = new_manifest(
            name=name or out_dir.name, architecture=arch, model_config={**cfg, "quick_gelu": activation == "quick_gelu"},
            embed_dim=cfg["embed_dim"], activation=activation,
            image=image_section(pp["size"], pp["mean"], pp["std"], pp["resize_mode"], pp["interpolation"],
                                pp["fill_color"]),
            context_length=cfg["text_cfg"]["context_length"], vocab_size=cfg["text_cfg"]["vocab_size"],
            logit_scale=logit_scale, graphs=graphs,
            opset=G.OPSET, source=src,
            exporter={"name": "remoteclip-qgis", "version": _version(), "method": "core.convert",
                      "onnx": onnx.__version__, "numpy": np.__version__,
                      "seconds": round(time.perf_counter() - t_start, 1), **times},
            parity=parity, quantization=quantization)
        write_manifest(tmp, manifest)
        load_bundle(tmp)  # the reader accepts what was written
        stage(0.99, "Finishing")
        out = publish_dir(tmp, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report(1.0, f"Bundle written to {out}")
    return out


def _version() -> str:
    from ... import __version__

    return __version__


def reference_outputs(sd: dict, cfg: dict, activation: str, size: int) -> dict:
    """The self-check's inputs and the numpy reference's embeddings for them."""
    from ..tokenizer import Tokenizer
    from .reference import Reference

    ids = Tokenizer(VOCAB_FILE, context_length=cfg["text_cfg"]["context_length"])(CHECK_PROMPTS)
    pixels = check_images(size)
    ref = Reference(sd, cfg, activation)
    return {"pixels": pixels, "ids": ids, "image": ref.encode_image(pixels), "text": ref.encode_text(ids)}


def _check_graphs(folder: Path, graphs: dict, expected: dict, stage) -> dict:
    parity = {"method": "numpy-reference",
              "reference": "float64 numpy forward pass of the checkpoint's weights (core.runtime.convert.reference)",
              "images": f"{len(expected['pixels'])} seeded synthetic images", "texts": CHECK_PROMPTS,
              "thresholds": THRESHOLDS}
    for precision, names in graphs.items():
        stage(0.8 if precision == "fp32" else 0.9, f"Checking the {precision} graphs against the reference")
        row = _parity_row(folder, names, expected["pixels"], expected["ids"], expected["image"], expected["text"],
                          THRESHOLDS[precision])
        parity[precision] = row
        if not row["passed"]:
            raise ModelError(
                f"The converted {precision} graphs disagree with the reference forward pass (image cos min "
                f"{row['image_cos_min']:.6f}, text cos min {row['text_cos_min']:.6f}, top-1 agreement "
                f"{row['top1_agree']:.0%}; needed {THRESHOLDS[precision]}); no bundle was written.",
                "Report this as a converter bug with the checkpoint's architecture; meanwhile export it with "
                "python -m training.export.")
    return parity

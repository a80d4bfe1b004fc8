"""open_clip model -> model bundle (two ONNX graphs + tokenizer data + manifest.json).

    python -m training.export --arch ViT-B-32 --checkpoint RemoteCLIP-ViT-B-32.pt --out bundles/RemoteCLIP-ViT-B-32 \
        --fp16 --verify

Graph traps handled here (see docs/bundles.md):
- the text tower pools at the end-of-text token with ``argmax`` over the ids; onnxruntime has no
  int64 ArgMax kernel, so the ids are cast to int32 first (49407 fits; same first-occurrence rule);
- attention must not bake the export batch size into Reshape nodes: the graphs are exported with a
  dynamic batch axis and checked at two other batch sizes before the bundle is written;
- ``unflatten`` in nn.MultiheadAttention needs opset >= 13 in the TorchScript exporter; we use 17.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from core.errors import InvalidInput, ModelError, RemoteClipError, SourceUnreadable
from core.runtime.bundle import (
    VOCAB_FILE,
    VOCAB_NAME,
    image_section,
    new_manifest,
    publish_dir,
    staging_dir,
    write_manifest,
    write_zip,
)
from training import checkpoints
from training.checkpoints import TINY_CONFIG

EXPORTER_VERSION = "0.1.0"
DEFAULT_OPSET = 17


def _torch():
    import torch

    return torch


def image_tower(model):
    """nn.Module: pixel_values (N,3,H,W) float32 -> L2-normalised image embeddings (N, D) float32."""
    torch = _torch()
    import torch.nn.functional as F

    class ImageTower(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            return F.normalize(self.m.encode_image(pixel_values).float(), dim=-1)

    return ImageTower(model).eval()


def text_tower(model):
    """nn.Module: input_ids (N, L) int64 -> L2-normalised text embeddings (N, D) float32.

    Re-states open_clip's CLIP.encode_text with the pooling ids cast to int32 (onnxruntime
    implements ArgMax for int32 but not int64), for any L up to the context length: attention is causal
    and the text is pooled at its end-of-text token, so ids cut after the batch's last end-of-text token
    give the same embeddings (core.runtime.inference does that; 77 tokens run as before)."""
    torch = _torch()
    import torch.nn.functional as F
    from open_clip.transformer import text_global_pool

    if not hasattr(model, "token_embedding"):
        # CustomTextCLIP towers (HF text models) are out of scope for RemoteCLIP bundles
        raise ModelError(f"{type(model).__name__} has no built-in CLIP text transformer; only open_clip "
                              "CLIP models (RemoteCLIP, GeoRSCLIP, SkyCLIP, OpenAI/LAION CLIP) can be exported.",
                              "Use a CLIP architecture such as RN50, ViT-B-32 or ViT-L-14.")

    class TextTower(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids):
            m = self.m
            cast_dtype = m.transformer.get_cast_dtype()
            n = input_ids.shape[1]   # tokens: up to the context length (core trims after the last end-of-text)
            x = m.token_embedding(input_ids).to(cast_dtype)
            x = x + m.positional_embedding[:n].to(cast_dtype)
            x = m.transformer(x, attn_mask=m.attn_mask[:n, :n])
            x = m.ln_final(x)
            x = text_global_pool(x, input_ids.to(torch.int32), m.text_pool_type,
                                 eos_token_id=getattr(m, "text_eos_id", None))
            if m.text_projection is not None:
                x = m.text_projection(x) if isinstance(m.text_projection, torch.nn.Linear) else x @ m.text_projection
            return F.normalize(x.float(), dim=-1)

    return TextTower(model).eval()


def _export_graph(module, example, path: Path, input_name: str, output_name: str, opset: int,
                  exporter: str) -> None:
    torch = _torch()
    import warnings

    # nn.MultiheadAttention's inference fast path (_native_multi_head_attention) has no ONNX symbolic
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
            _export_graph_inner(torch, module, example, path, input_name, output_name, opset, exporter)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    _single_file(path)


def _export_graph_inner(torch, module, example, path, input_name, output_name, opset, exporter):
    # the text graph's token axis is dynamic too (up to the context length): see text_tower
    tokens = input_name == "input_ids"
    if exporter == "torchscript":
        axes = {0: "batch", 1: "tokens"} if tokens else {0: "batch"}
        torch.onnx.export(module, (example,), str(path), input_names=[input_name], output_names=[output_name],
                          dynamic_axes={input_name: axes, output_name: {0: "batch"}},
                          opset_version=opset, do_constant_folding=True, dynamo=False)
    elif exporter == "dynamo":
        import contextlib
        import io

        batch = torch.export.Dim("batch", min=1, max=4096)
        dims = {0: batch, 1: torch.export.Dim("tokens", min=2, max=int(example.shape[1]))} if tokens else {0: batch}
        with contextlib.redirect_stdout(io.StringIO()):  # progress lines "[torch.onnx] ..."
            prog = torch.onnx.export(module, (example,), None, input_names=[input_name],
                                     output_names=[output_name], dynamic_shapes=(dims,),
                                     opset_version=max(opset, 18), dynamo=True, verbose=False)
        prog.save(str(path))
    else:
        raise ValueError(f"exporter must be 'torchscript' or 'dynamo', not {exporter!r}")


def _single_file(path: Path) -> None:
    """Fold external weight files (if the exporter wrote any) back into the .onnx: bundles are flat."""
    import onnx

    extra = [p for p in path.parent.iterdir() if p != path and p.name.startswith(path.name)]
    if not extra:
        return
    model = onnx.load(str(path), load_external_data=True)
    for p in extra:
        p.unlink()
    onnx.save_model(model, str(path), save_as_external_data=False)


def convert_fp16(src: Path, dst: Path) -> None:
    """fp16 graph from the fp32 export; inputs and outputs stay float32 (the bundle contract)."""
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    _drop_noop_float_casts(model)
    # LayerNormalization stays fp32: better numerics, and fp16 LayerNorm graphs crash onnxruntime 1.31's
    # CPU layout optimizer (NchwcTransformer, segfault) when the session uses ORT_ENABLE_ALL
    block_ops = list(float16.DEFAULT_OP_BLOCK_LIST) + ["LayerNormalization"]
    # the final L2 normalisation stays in fp32 as well: it sums D squares, which can overflow fp16
    block = [n.name for n in model.graph.node if n.op_type in ("ReduceL2", "ReduceSumSquare", "Div", "Clip",
                                                                 "Expand", "Max") and _is_tail(model, n)]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "-inf will be truncated to -10000": the causal mask, harmless
        model16 = float16.convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False,
                                                   op_block_list=block_ops, node_block_list=block)
    # casts to float32 that now feed fp16 tensors (e.g. the attention scale from a Shape) must cast to fp16
    vi = {v.name: v.type.tensor_type.elem_type for v in model16.graph.value_info}
    for node in model16.graph.node:
        if node.op_type == "Cast" and vi.get(node.output[0]) == onnx.TensorProto.FLOAT16:
            for a in node.attribute:
                if a.name == "to" and a.i == onnx.TensorProto.FLOAT:
                    a.i = onnx.TensorProto.FLOAT16
    # keep_io_types misses outputs produced by blocked nodes; the contract is float32 out
    for out in model16.graph.output:
        if out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16:
            inner = out.name + "_fp16"
            for node in model16.graph.node:
                for i, o in enumerate(node.output):
                    if o == out.name:
                        node.output[i] = inner
            model16.graph.node.append(onnx.helper.make_node("Cast", [inner], [out.name], to=onnx.TensorProto.FLOAT,
                                                            name=out.name + "_to_fp32"))
            out.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    onnx.save_model(model16, str(dst))


def _drop_noop_float_casts(model) -> None:
    """Turn Cast(float -> float) into Identity. open_clip's ``.to(cast_dtype)`` leaves these in the
    fp32 graph; the fp16 converter keeps them casting to float32 and the graph no longer type-checks."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type
             for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    for node in model.graph.node:
        if node.op_type != "Cast":
            continue
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if to == onnx.TensorProto.FLOAT and types.get(node.input[0]) == onnx.TensorProto.FLOAT:
            node.op_type = "Identity"
            del node.attribute[:]


def _is_tail(model, node, depth: int = 6) -> bool:
    """True when node feeds the graph output within a few hops (the normalisation block)."""
    outputs = {o.name for o in model.graph.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    frontier = [node]
    for _ in range(depth):
        nxt = []
        for n in frontier:
            if outputs & set(n.output):
                return True
            for o in n.output:
                nxt.extend(consumers.get(o, []))
        frontier = nxt
    return False


def preprocess_manifest(preprocess_cfg: dict) -> dict:
    """Bundle ``image`` section from open_clip's PreprocessCfg dict."""
    pp = preprocess_cfg
    return image_section(pp.get("size", 224), mean=pp.get("mean", (0.48145466, 0.4578275, 0.40821073)),
                         std=pp.get("std", (0.26862954, 0.26130258, 0.27577711)),
                         resize_mode=pp.get("resize_mode", "shortest"),
                         interpolation=pp.get("interpolation", "bicubic"), fill_color=pp.get("fill_color", 0))


def _check_batch_dynamic(path: Path, input_name: str, make_input, embed_dim: int) -> None:
    """Run the graph at batch 1 and 3: catches a batch size baked into Reshape nodes at export time."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 3):
        out = sess.run(None, {input_name: make_input(n)})[0]
        if out.shape != (n, embed_dim):
            raise ModelError(f"Exported graph {path.name} returns shape {out.shape} for batch {n}, "
                                  f"expected ({n}, {embed_dim}).", "Report this as an exporter bug.", path=path)


def export_bundle(model, preprocess_cfg: dict, out_dir, *, architecture: str, model_config: dict,
                  activation: str, name: str | None = None, fp16: bool = True, source: dict | None = None,
                  opset: int = DEFAULT_OPSET, exporter: str = "dynamo", make_zip: bool = False,
                  logit_scale: float | None = None, log=None, int8: bool = False, data_dir=None) -> Path:
    """Export an open_clip CLIP model as a bundle folder ``out_dir`` (written atomically).

    ``preprocess_cfg`` is open_clip's PreprocessCfg as a dict (``model.visual.preprocess_cfg``).
    Returns the bundle folder. With ``make_zip`` also writes ``out_dir.rclip.zip`` beside it. ``int8`` adds
    int8 graphs (core.runtime.quantize), measured against fp32 on the real RSSCN7 images of ``data_dir`` (default
    $REMOTECLIP_DATA) when they are there, else on synthetic images.
    """
    torch = _torch()
    import numpy as np
    import open_clip

    log = log or (lambda msg: None)
    if activation not in ("quick_gelu", "gelu"):
        raise ValueError(f"activation must be 'quick_gelu' or 'gelu', not {activation!r}")
    if opset < DEFAULT_OPSET:
        # below 17 there is no LayerNormalization op and unflatten/attention export is fragile
        raise InvalidInput(f"ONNX opset {opset} is too old for bundles.", f"Use --opset {DEFAULT_OPSET} or later.", param="opset")
    out_dir = Path(out_dir)
    name = name or out_dir.name
    model = model.to("cpu").float().eval()  # graphs are traced on CPU; onnxruntime picks the device later
    image_cfg = preprocess_manifest(preprocess_cfg)
    h, w = image_cfg["size"]
    context_length = int(model.context_length)
    vocab_size = int(model.vocab_size)
    embed_dim = int(model_config.get("embed_dim") or model.text_projection.shape[-1])
    if logit_scale is None:
        logit_scale = float(model.logit_scale.detach().exp().item())

    tmp = staging_dir(out_dir, overwrite=True)  # re-exporting replaces the bundle
    try:
        gen = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        img_path = tmp / "image_fp32.onnx"
        _export_graph(image_tower(model), torch.randn(2, 3, h, w, generator=gen), img_path,
                      "pixel_values", "image_embeds", opset, exporter)
        log(f"image graph exported in {time.perf_counter() - t0:.1f}s")
        t0 = time.perf_counter()
        txt_path = tmp / "text_fp32.onnx"
        example_ids = torch.zeros(2, context_length, dtype=torch.long)
        example_ids[:, 0] = 49406
        example_ids[0, 1:4] = torch.tensor([320, 1125, 539])
        example_ids[0, 4] = 49407
        example_ids[1, 1] = 49407
        _export_graph(text_tower(model), example_ids, txt_path, "input_ids", "text_embeds", opset, exporter)
        log(f"text graph exported in {time.perf_counter() - t0:.1f}s")

        rng = np.random.default_rng(0)
        _check_batch_dynamic(img_path, "pixel_values",
                             lambda n: rng.standard_normal((n, 3, h, w)).astype(np.float32), embed_dim)

        def ids(n):
            a = np.zeros((n, context_length), dtype=np.int64)
            a[:, 0] = 49406
            a[np.arange(n), 1 + np.arange(n) % (context_length - 1)] = 49407
            return a

        _check_batch_dynamic(txt_path, "input_ids", ids, embed_dim)

        graphs = {"fp32": {"image": img_path.name, "text": txt_path.name}}
        if fp16:
            t0 = time.perf_counter()
            convert_fp16(img_path, tmp / "image_fp16.onnx")
            convert_fp16(txt_path, tmp / "text_fp16.onnx")
            graphs["fp16"] = {"image": "image_fp16.onnx", "text": "text_fp16.onnx"}
            log(f"fp16 graphs converted in {time.perf_counter() - t0:.1f}s")
        quantization = None
        if int8:
            from core.runtime.quantize import add_int8

            t0 = time.perf_counter()
            images, note, ids = int8_check_inputs(image_cfg, context_length, data_dir)
            graphs["int8"], record = add_int8(tmp, graphs, images=images, images_note=note, ids=ids, method="auto",
                                              calibration=int8_calibration(image_cfg, data_dir))
            quantization = {"int8": record}
            log(f"int8 graphs quantised in {time.perf_counter() - t0:.1f}s (top-1 agreement with fp32 "
                f"{record['agreement_vs_fp32']['top1_agree']:.1%} on {note})")

        shutil.copyfile(VOCAB_FILE, tmp / VOCAB_NAME)
        import onnx

        actual_opset = max(o.version for o in onnx.load(str(img_path), load_external_data=False).opset_import
                           if o.domain in ("", "ai.onnx"))
        manifest = new_manifest(
            name=name, architecture=architecture, model_config=model_config, embed_dim=embed_dim,
            activation=activation, image=image_cfg, context_length=context_length, vocab_size=vocab_size,
            logit_scale=logit_scale, graphs=graphs, opset=actual_opset, source=source,
            exporter={"name": "remoteclip-qgis", "version": EXPORTER_VERSION, "method": exporter,
                      "torch": torch.__version__.split("+")[0], "open_clip": open_clip.__version__},
            quantization=quantization)
        write_manifest(tmp, manifest)
        publish_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if make_zip:
        write_zip(out_dir)
    return out_dir


INT8_CALIBRATION = "orthomosaic/kampala_oam_z20_mosaic_1536x1024.tif"   # not among the images measured on


def int8_calibration(image_cfg: dict, data_dir=None, n: int = 64):
    """Real tiles to calibrate static int8 graphs on: ``n`` tiles of the Kampala z20 mosaic of the shared data,
    read and preprocessed as the pipeline does (160 px tiles; a quarter of that side below 224 px models), or
    None without the data (the writer then quantises dynamically)."""
    import numpy as np

    from core.geodata.raster import Stretch, default_bands, open_raster, read_rgb
    from core.geodata.tiles import TileSpec, make_grid
    from core.runtime.preprocess import preprocess
    from training.parity import default_data_dir

    path = Path(data_dir or default_data_dir()) / INT8_CALIBRATION
    if not path.is_file():
        return None
    size = image_cfg["size"][0] if isinstance(image_cfg["size"], list | tuple) else image_cfg["size"]
    src = open_raster(path)
    try:
        bands = default_bands(src)
        stretch = Stretch.from_source(src, bands)
        grid = make_grid(src, TileSpec(size=160 if size >= 224 else 40))
        windows = grid.windows()[::max(1, len(grid) // n)][:n].tolist()
        out = []
        for w in windows:
            rgb, valid = read_rgb(src, bands, tuple(w), stretch)
            out.append(preprocess(rgb, image_cfg, valid))
        return np.stack(out)
    finally:
        src.close()


def int8_check_inputs(image_cfg: dict, context_length: int, data_dir=None):
    """(pixels, description, token ids) the int8 graphs are measured on: every RSSCN7 image of the shared data
    (preprocessed by core, as the plugin does) and the parity prompts; (None, None, ids) without the data."""
    import numpy as np

    from core.runtime.preprocess import preprocess
    from core.runtime.tokenizer import Tokenizer
    from training.parity import EXTRA_PROMPTS, RSSCN7_CLASSES, TEMPLATE, rsscn7_images

    texts = [TEMPLATE.format(c) for c in dict.fromkeys(RSSCN7_CLASSES.values())] + EXTRA_PROMPTS
    ids = Tokenizer(VOCAB_FILE, context_length=context_length)(texts)
    try:
        pairs = rsscn7_images(data_dir, per_class=1000)
    except SourceUnreadable:   # no shared data folder: measured without it
        return None, None, ids
    from PIL import Image

    pixels = np.stack([preprocess(np.asarray(Image.open(p).convert("RGB")), image_cfg) for p, _ in pairs])
    return pixels, f"RSSCN7 x{len(pairs)} (real)", ids


def tiny_model(seed: int = 0, activation: str = "quick_gelu"):
    """The tiny random CLIP of training/configs/tiny-test.json (fast unit tests), fixed seed.

    Returns (model, model_config, preprocess_cfg)."""
    torch = _torch()
    from open_clip.model import CLIP

    cfg = json.loads(TINY_CONFIG.read_text())
    cfg["quick_gelu"] = activation == "quick_gelu"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(**cfg)
    pp = {"size": cfg["vision_cfg"]["image_size"], "mean": (0.48145466, 0.4578275, 0.40821073),
          "std": (0.26862954, 0.26130258, 0.27577711), "interpolation": "bicubic", "resize_mode": "shortest",
          "fill_color": 0}
    return model.eval(), cfg, pp


def export_tiny_test_bundle(out_dir, fp16: bool = True, seed: int = 0, activation: str = "quick_gelu") -> Path:
    """Random tiny CLIP (64 px ViT, 2+2 layers, 32-d embeddings) as an fp32(+fp16) bundle in a few seconds."""
    model, cfg, pp = tiny_model(seed, activation)
    return export_bundle(model, pp, out_dir, architecture="tiny-test", model_config=cfg, activation=activation,
                         name="tiny-test", fp16=fp16,
                         source={"checkpoint": None, "sha256": None, "origin": f"random-init seed={seed}"})


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m training.export",
        description="Export an OpenCLIP-format checkpoint (RemoteCLIP, GeoRSCLIP, SkyCLIP, open_clip tags) as a "
                    "RemoteCLIP-for-QGIS model bundle.")
    ap.add_argument("--arch", required=True, help="open_clip architecture: RN50, ViT-B-32, ViT-L-14, ...")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="local checkpoint file; without it RemoteCLIP-{arch}.pt is downloaded "
                                          "from Hugging Face (needs internet)")
    src.add_argument("--pretrained", help="an open_clip pretrained tag instead of a file, e.g. openai")
    ap.add_argument("--out", required=True, help="bundle folder to write")
    ap.add_argument("--name", help="bundle name (default: the --out folder name)")
    ap.add_argument("--activation", choices=checkpoints.ACTIVATIONS, default=checkpoints.DEFAULT_ACTIVATION,
                    help="MLP activation; quick_gelu (default) matches RemoteCLIP's official evaluation, "
                         "see docs/bundles.md")
    ap.add_argument("--fp16", action="store_true", help="also write fp16 graphs (converted from the fp32 export)")
    ap.add_argument("--int8", action="store_true",
                    help="also write int8 graphs for CPUs (onnxruntime quantisation, per-channel weights; the method "
                         "per architecture: core.runtime.quantize.WRITER_METHODS, calibrated on real tiles of the shared "
                         "data), with their agreement with fp32 on real images in the manifest")
    ap.add_argument("--verify", action="store_true",
                    help="compare the bundle with open_clip on real images and prompts; exit 1 when it fails")
    ap.add_argument("--zip", action="store_true", help="also write OUT.rclip.zip")
    ap.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="minimum ONNX opset (default 17)")
    ap.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo",
                    help="torch.onnx exporter (default dynamo; torchscript is the deprecated one, fp32 only)")
    ap.add_argument("--data", help="real data folder for --verify and --int8 (default $REMOTECLIP_DATA or "
                                   "../shared/data)")
    args = ap.parse_args(argv)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    try:
        if args.exporter == "torchscript" and args.fp16:
            raise InvalidInput("fp16 conversion is only supported for graphs from the dynamo exporter.",
                                  "Drop --exporter torchscript or --fp16.")
        t0 = time.perf_counter()
        model, pp, cfg, source = checkpoints.load_checkpoint_model(args.arch, args.checkpoint, args.activation,
                                                                   pretrained=args.pretrained)
        log(f"loaded {args.arch} ({source['checkpoint']}, activation {args.activation}) "
            f"in {time.perf_counter() - t0:.1f}s")
        out = export_bundle(model, pp, args.out, architecture=args.arch, model_config=cfg,
                            activation=args.activation, name=args.name, fp16=args.fp16, source=source,
                            opset=args.opset, exporter=args.exporter, log=log, int8=args.int8,
                            data_dir=args.data)
        log(f"bundle written to {out} in {time.perf_counter() - t0:.1f}s")
        ok = True
        if args.verify:
            from training.parity import format_table, verify_bundle

            results = verify_bundle(out, model, pp, arch=args.arch, data_dir=args.data)
            print(format_table(results))
            ok = all(r["passed"] for r in results.values())
        if args.zip:
            log(f"archive written to {write_zip(out)}")
        return 0 if ok else 1
    except RemoteClipError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

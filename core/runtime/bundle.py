"""Read and write model bundles: a folder (or ``NAME.rclip.zip``) with two ONNX graphs,
the CLIP BPE merges and ``manifest.json`` (format described in docs/ARCHITECTURE.md).

core runs only bundles. Two writers make them, through the helpers at the end of this module (one
manifest, one atomic folder write): ``python -m training.export`` (torch, open_clip) and
``core.runtime.convert`` (numpy and onnx only).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..errors import ModelError, OutputExists, WriteFailed
from .digest import hash_file

FORMAT = "remoteclip-onnx-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
KINDS = ("image", "text")
PRECISIONS = ("fp32", "fp16", "int8")
INT8_METHODS = ("dynamic", "static", "static-ends", "static-ends-linear")   # core.runtime.quantize.METHODS

VOCAB_NAME = "bpe_simple_vocab_16e6.txt.gz"
# open_clip's CLIP BPE merges (byte-identical copy), so that core can write bundles without open_clip
VOCAB_FILE = Path(__file__).resolve().parent / "data" / VOCAB_NAME
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SOT_TOKEN_ID, EOT_TOKEN_ID = 49406, 49407

_REQUIRED_KEYS = ("format", "format_version", "name", "architecture", "embed_dim", "activation",
                  "image", "text", "logit_scale", "graphs")
_REQUIRED_IMAGE = ("size", "mean", "std", "resize_mode", "interpolation", "crop")
_REQUIRED_TEXT = ("vocab_file", "context_length", "sot_token_id", "eot_token_id")

_EXPORT_HINT = ("Export a bundle with `python -m training.export --arch ViT-B-32 --checkpoint FILE "
                "--out DIR`, or pick a bundle folder that contains manifest.json.")


@dataclass(frozen=True)
class ImageConfig:
    """The manifest's ``image`` section, checked: how a tile becomes the model's input."""
    size: tuple[int, int]                 # (height, width)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_mode: str                      # shortest | longest | squash
    interpolation: str
    crop: str
    fill_color: tuple[int, ...]


@dataclass(frozen=True)
class TextConfig:
    """The manifest's ``text`` section, checked: how a prompt becomes token ids."""
    vocab_file: str
    context_length: int
    vocab_size: int
    sot_token_id: int
    eot_token_id: int
    pad_token_id: int


@dataclass(frozen=True)
class Manifest:
    """A bundle's manifest.json parsed once into checked, typed values (``raw`` keeps the JSON object
    for the sections the typed view does not cover: model_config, source, exporter, parity)."""
    name: str
    architecture: str
    embed_dim: int
    activation: str
    logit_scale: float
    image: ImageConfig
    text: TextConfig
    graphs: dict                          # precision -> {"image": file, "text": file}
    raw: dict = field(repr=False, compare=False, default_factory=dict)

    @property
    def precisions(self) -> tuple[str, ...]:
        return tuple(p for p in PRECISIONS if p in self.graphs)


_DIGESTS: dict = {}
# models/ beside core: the repository's, or the plugin's when core is vendored as remoteclip_qgis/core
DEMO_BUNDLE = Path(__file__).resolve().parents[2] / "models" / "remoteclip-demo"
DEMO_NAME = "remoteclip-demo-small"   # the demo model's manifest name, wherever its folder or zip lies
# its measured figure (training.evaluate on the 2,660 RSSCN7 images outside ../shared/data, images 21-400 of
# each class; models/README.md): the one to quote wherever the demo model is described
DEMO_FIGURE = "30.5 % zero-shot top-1 on 2,660 RSSCN7 images it never saw, 95 % CI 28.8-32.3 %, chance 14.3 %"
DEMO_NOTE = (f"the demo model is a toy for trying the tools ({DEMO_FIGURE}); for real work use RemoteCLIP: "
             "`remoteclip models pull RemoteCLIP-ViT-B-32`, or Get in the dock's model row")


# int8 graphs are offered as a faster stand-in for fp32 when they give its label nearly always
# (docs/performance.md: top-1 agreement of at least 99 %)
INT8_USABLE_TOP1 = 0.99
# precision auto trusts a recorded agreement measured on at least this many images: 16 seeded synthetic images
# (what models convert/pull --int8 measure on) gave RN50 100 % where 588 real tiles gave 92.7 % (docs/bundles.md)
INT8_MIN_IMAGES = 100


PRECISION_CHOICES = ("auto",) + PRECISIONS   # what a run may ask for; "auto": choose_precision decides


def int8_agreement(bundle: Bundle) -> dict:
    return (((bundle.manifest.get("quantization") or {}).get("int8") or {}).get("agreement_vs_fp32") or {})


def precision_warnings(bundle: Bundle, precision: str) -> list[str]:
    """What a job at ``precision`` should say about the graphs it runs: int8 graphs whose recorded top-1
    agreement with fp32 is below INT8_USABLE_TOP1."""
    if precision != "int8":
        return []
    agree = int8_agreement(bundle)
    top1 = agree.get("top1_agree")
    if top1 is None or top1 >= INT8_USABLE_TOP1:
        return []
    return [f"The int8 graphs of {bundle.name} agree with fp32 on only {top1:.0%} of the best labels (measured on "
            f"{agree.get('images', 'its check images')}; {INT8_USABLE_TOP1:.0%} is considered usable): use "
            "precision fp32 for results you rely on, or remake the int8 graphs."]


def default_bundle() -> str | None:
    """REMOTECLIP_MODEL when set, else the demo bundle (folder or .rclip.zip) when present, else None."""
    env = os.environ.get("REMOTECLIP_MODEL")
    if env:
        return env
    if DEMO_BUNDLE.is_dir():
        return str(DEMO_BUNDLE)
    zipped = DEMO_BUNDLE.with_suffix(".rclip.zip")
    return str(zipped) if zipped.is_file() else None


def bundle_path(value) -> str:
    """What a user picked -> the bundle: a folder, a .rclip.zip, or a bundle's manifest.json (its folder)."""
    value = str(value or "").strip()
    if os.path.basename(value).lower() == MANIFEST:
        value = os.path.dirname(value)
    return value


def _size_and_time(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


class Bundle:
    """A validated bundle on disk. Paths point into the folder (zips are extracted once).

    ``config`` is the manifest parsed once (:class:`Manifest`); a loaded Bundle can be handed to a job
    (``RunOptions(model=bundle)``) so a worker does not read and check the manifest again.
    ``manifest`` (the JSON object), ``image`` and ``text`` (its sections, as dicts) stay for the
    preprocessing and the tokenizer."""

    def __init__(self, path: Path, manifest: dict, source: Path | None = None, config: Manifest | None = None):
        self.path = Path(path)
        self.manifest = manifest
        self.config = config if config is not None else parse_manifest(manifest, source or path)
        # where the user pointed (the .zip for archives); the identity shown in messages
        self.source = Path(source) if source is not None else self.path
        self._sha256: str | None = None
        self._stamp = _manifest_stamp(self.path)

    name = property(lambda self: self.config.name)
    architecture = property(lambda self: self.config.architecture)
    embed_dim = property(lambda self: self.config.embed_dim)
    image = property(lambda self: self.manifest["image"])
    text = property(lambda self: self.manifest["text"])
    logit_scale = property(lambda self: self.config.logit_scale)
    activation = property(lambda self: self.config.activation)

    @property
    def precisions(self) -> tuple[str, ...]:
        return self.config.precisions

    def is_current(self) -> bool:
        """Whether the manifest on disk is still the one this Bundle was made from."""
        return self._stamp is not None and self._stamp == _manifest_stamp(self.path)

    def graph_path(self, kind: str, precision: str = "fp32") -> Path:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        graphs = self.config.graphs
        if precision not in graphs:
            flag = "--int8" if precision == "int8" else "--fp16"
            raise ModelError(
                f"Model bundle {self.source} has no {precision} graphs (it has: {', '.join(self.precisions)}).",
                f"Choose precision {self.precisions[0]}, or add them: `remoteclip models convert ... {flag}` "
                f"(or `python -m training.export ... {flag}`).", path=self.source,
            )
        return self.path / graphs[precision][kind]

    @property
    def vocab_path(self) -> Path:
        return self.path / self.text["vocab_file"]

    @property
    def sha256(self) -> str:
        """Digest of the manifest and every graph file: changes whenever the model does."""
        if self._sha256 is None:
            files = [MANIFEST] + sorted({f for g in self.manifest["graphs"].values() for f in g.values()})
            # a ViT-B-32 bundle is 0.6 GB: hash it once per process while its files are unchanged
            stamp = tuple((rel, *_size_and_time(self.path / rel)) for rel in files)
            key = (str(self.path.resolve()), stamp)
            if key not in _DIGESTS:
                h = hashlib.sha256()
                for rel in files:
                    h.update(rel.encode() + b"\0")
                    hash_file(h, self.path / rel)
                _DIGESTS[key] = h.hexdigest()
            self._sha256 = _DIGESTS[key]
        return self._sha256

    def __repr__(self) -> str:
        return f"Bundle({self.name!r}, architecture={self.architecture!r}, path={str(self.path)!r})"


def load_bundle(path) -> Bundle:
    """Open and validate a bundle folder or ``.zip``; raise RemoteClipError when it is unusable."""
    if isinstance(path, Bundle):
        if path.is_current():   # loaded before (the dock's model row): no second parse
            return path
        path = path.source
    if path is None or str(path).strip() == "":
        raise ModelError("No model bundle was given.", _EXPORT_HINT)
    src = Path(bundle_path(path)).expanduser()
    if not src.exists():
        from .catalog import resolve_model

        # a bare name: a model pulled into the models folder (an error names the pull command if it is not)
        src = Path(resolve_model(str(path)))
    if not src.exists():
        raise ModelError(f"Model bundle not found: {src}.", _EXPORT_HINT, path=src)
    if src.is_file():
        if not zipfile.is_zipfile(src):
            raise ModelError(
                f"{src} is neither a bundle folder nor a zip archive.",
                "Pass the bundle folder (with manifest.json) or its .rclip.zip archive. " + _EXPORT_HINT, path=src,
            )
        folder = _extract_zip(src)
    else:
        folder = src
    manifest = _read_manifest(folder, src)
    _check_files(folder, manifest, src)
    return Bundle(folder, manifest, source=src, config=parse_manifest(manifest, src))


def _outside(folder: Path, rel: str, src: Path) -> None:
    """ModelError when the bundle's file ``rel`` leads out of the bundle folder (a symlink elsewhere)."""
    if (folder / rel).exists() and not (folder / rel).resolve().is_relative_to(folder.resolve()):
        raise ModelError(f"Model bundle {src} names {rel}, which leads outside the bundle folder "
                         f"(to {(folder / rel).resolve()}).",
                         "Keep the manifest, every graph and vocabulary file inside the bundle folder.",
                         path=folder / rel)


def _read_manifest(folder: Path, src: Path) -> dict:
    mpath = folder / MANIFEST
    _outside(folder, MANIFEST, src)   # a manifest linked from another bundle, as a linked graph
    if not mpath.is_file():
        raise ModelError(f"{src} is not a model bundle: it has no {MANIFEST}.", _EXPORT_HINT, path=src)
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelError(f"The manifest of model bundle {src} is not valid JSON ({e}).",
                              "Re-export the bundle; the file was probably damaged.", path=src) from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelError(f"{mpath} is not a RemoteCLIP bundle manifest (format is not {FORMAT!r}).",
                              _EXPORT_HINT, path=mpath)
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelError(
            f"Model bundle {src} has format_version {version!r}; this version reads {FORMAT_VERSION}.",
            "Update the plugin, or re-export the bundle with the matching training tools.", path=src,
        )
    for key in ("image", "text", "graphs"):
        if key in manifest and not isinstance(manifest[key], dict):
            raise ModelError(f"The manifest of model bundle {src} has an invalid {key}: "
                                  f"{str(manifest[key])[:80]!r} (an object).", "Re-export the bundle, or correct "
                                  "manifest.json.", path=src)
    missing = [k for k in _REQUIRED_KEYS if k not in manifest]
    missing += [f"image.{k}" for k in _REQUIRED_IMAGE if k not in manifest.get("image", {})]
    missing += [f"text.{k}" for k in _REQUIRED_TEXT if k not in manifest.get("text", {})]
    if missing:
        raise ModelError(f"The manifest of model bundle {src} lacks {', '.join(missing)}.",
                              "Re-export the bundle with `python -m training.export`.", path=src)
    graphs = manifest["graphs"]
    if not isinstance(graphs, dict) or "fp32" not in graphs or any(
            not isinstance(graphs[p], dict) or set(graphs[p]) < set(KINDS) for p in graphs):
        raise ModelError(f"The manifest of model bundle {src} does not list fp32 image and text graphs.",
                              "Re-export the bundle with `python -m training.export`.", path=src)
    check_manifest(manifest, src)
    return manifest


# Limits well beyond every CLIP model (ViT-L-14-336: 336 px, 77 tokens, 768-d), so that a damaged or
# hostile manifest fails here instead of allocating gigabytes per tile.
MAX_IMAGE_PX = 2048
MAX_CONTEXT = 1024
MAX_EMBED_DIM = 16384
MAX_LOGIT_SCALE = 1000.0
RESIZE_MODES = ("shortest", "longest", "squash")
CROPS = ("center",)
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos", "box", "hamming")
ACTIVATIONS = ("quick_gelu", "gelu")


def check_manifest(m: dict, src) -> None:
    """Every field core uses, checked before any tile is read; the error names the field."""

    def bad(field: str, value, want: str):
        raise ModelError(f"The manifest of model bundle {src} has an invalid {field}: {repr(value)[:80]} "
                         f"({want}).", "Re-export the bundle, or correct manifest.json.", path=Path(src) / MANIFEST)

    def whole(field, value, lo, hi):
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value) \
                or not lo <= value <= hi:
            bad(field, value, f"a whole number from {lo} to {hi}")
        return int(value)

    def real(field, value, lo, hi, lo_open=False):
        ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
        if not ok or value < lo or value > hi or (lo_open and value <= lo):
            bad(field, value, f"a number {'above' if lo_open else 'from'} {lo:g}{' up' if lo_open else ''} to {hi:g}")
        return float(value)

    for key in ("name", "architecture"):
        if not isinstance(m[key], str) or not m[key].strip():
            bad(key, m[key], "a non-empty text")
    whole("embed_dim", m["embed_dim"], 1, MAX_EMBED_DIM)
    if m["activation"] not in ACTIVATIONS:
        bad("activation", m["activation"], " or ".join(ACTIVATIONS))
    real("logit_scale", m["logit_scale"], 0.0, MAX_LOGIT_SCALE, lo_open=True)

    img = m["image"]
    if not isinstance(img, dict):
        bad("image", img, "an object")
    size = img["size"]
    sizes = [size] if not isinstance(size, list) else size
    if not 1 <= len(sizes) <= 2:
        bad("image.size", size, "one number or [height, width]")
    for v in sizes:
        whole("image.size", v, 8, MAX_IMAGE_PX)
    for key, lo, hi, lo_open in (("mean", -10.0, 10.0, False), ("std", 0.0, 10.0, True)):
        vals = img[key]
        if not isinstance(vals, list) or len(vals) != 3:
            bad(f"image.{key}", vals, "three numbers, one per RGB channel")
        for v in vals:
            real(f"image.{key}", v, lo, hi, lo_open)
    for key, allowed in (("resize_mode", RESIZE_MODES), ("interpolation", INTERPOLATIONS), ("crop", CROPS)):
        if str(img[key]).lower() not in allowed:
            bad(f"image.{key}", img[key], "one of " + ", ".join(allowed))
    fill = img.get("fill_color", 0)
    for v in (fill if isinstance(fill, list) else [fill]):
        whole("image.fill_color", v, 0, 255)

    text = m["text"]
    if not isinstance(text, dict):
        bad("text", text, "an object")
    context = whole("text.context_length", text["context_length"], 2, MAX_CONTEXT)
    text_cfg = m.get("model_config", {}).get("text_cfg") if isinstance(m.get("model_config"), dict) else None
    trained = text_cfg.get("context_length") if isinstance(text_cfg, dict) else None
    if isinstance(trained, int) and not isinstance(trained, bool) and trained != context:
        # the graph's position embedding has the model's length: any other length cuts or breaks prompts
        bad("text.context_length", context, f"the model's context length, {trained} (model_config.text_cfg)")
    vocab = whole("text.vocab_size", text.get("vocab_size", 49408), 2, 10_000_000)
    for key in ("sot_token_id", "eot_token_id", "pad_token_id"):
        if key in text:
            whole(f"text.{key}", text[key], 0, vocab - 1)
    inside("text.vocab_file", text["vocab_file"], bad)
    for prec, kinds in m["graphs"].items():
        if prec not in PRECISIONS:
            bad("graphs", prec, "precisions " + ", ".join(PRECISIONS))
        for kind in KINDS:
            inside(f"graphs.{prec}.{kind}", kinds[kind], bad)
    quant = m.get("quantization")
    if quant is not None:
        if not isinstance(quant, dict) or set(quant) - {"int8"}:
            bad("quantization", quant, "an object with an int8 record")
        rec = quant.get("int8")
        if rec is not None:
            if "int8" not in m["graphs"]:
                bad("quantization.int8", "(no int8 graphs)", "a record of graphs the bundle lists")
            if not isinstance(rec, dict):
                bad("quantization.int8", rec, "an object")
            for kind in KINDS:
                how = rec.get(kind)
                allowed = INT8_METHODS + (("fp32",) if kind == "text" else ())
                if not isinstance(how, dict) or how.get("method") not in allowed:
                    bad(f"quantization.int8.{kind}.method", how.get("method") if isinstance(how, dict) else how,
                        " or ".join(allowed))
            agree = rec.get("agreement_vs_fp32")
            if agree is not None:
                if not isinstance(agree, dict):
                    bad("quantization.int8.agreement_vs_fp32", agree, "an object")
                for key in ("image_cos_min", "text_cos_min", "top1_agree"):
                    if key in agree:
                        real(f"quantization.int8.agreement_vs_fp32.{key}", agree[key], -1.0, 1.0)


# what each graph takes: the input's element types and rank
_GRAPH_INPUTS = {"image": (("tensor(float)", "tensor(float16)"), 4, "pixel_values, float (N, 3, H, W)"),
                 "text": (("tensor(int64)", "tensor(int32)"), 2, "input_ids, int64 (N, tokens)")}


def check_graph_inputs(bundle: Bundle, kind: str, precision: str, sess) -> None:
    """The graph loaded in ``sess`` takes what a ``kind`` graph of this bundle takes (one input of the right
    type and rank, the manifest's image size or context length where the graph fixes it); else ModelError.
    Catches swapped graphs and a manifest that disagrees with its graphs before a tile is run."""
    types, rank, want = _GRAPH_INPUTS[kind]
    inputs = sess.get_inputs()
    rel = bundle.config.graphs[precision][kind]
    got = ", ".join(f"{i.name} {i.type} {i.shape}" for i in inputs) or "nothing"

    def refuse(problem: str):
        raise ModelError(f"Model bundle {bundle.source}: the {precision} {kind} graph {rel} {problem}.",
                         "Check manifest.json's graphs (image and text swapped?) and text.context_length / "
                         "image.size, or re-export the bundle.", path=bundle.path / rel)

    if len(inputs) != 1 or inputs[0].type not in types or len(inputs[0].shape) != rank:
        refuse(f"takes {got}, not what a {kind} graph takes ({want}): the graphs' inputs do not match")
    shape = inputs[0].shape
    if kind == "image":
        fixed = [(d, w) for d, w in zip(shape[1:], (3, *bundle.config.image.size), strict=True) if isinstance(d, int)]
        if any(d != w for d, w in fixed):
            refuse(f"takes images {shape[1:]}, the manifest says 3 x {bundle.config.image.size[0]} x "
                   f"{bundle.config.image.size[1]} (image.size)")
    elif isinstance(shape[1], int) and shape[1] != bundle.config.text.context_length:
        refuse(f"takes {shape[1]} tokens, the manifest says {bundle.config.text.context_length} "
               "(text.context_length)")


def parse_manifest(m: dict, src) -> Manifest:
    """The checked manifest ``m`` as typed values (``check_manifest`` has refused anything else)."""
    img, text = m["image"], m["text"]
    size = img["size"] if isinstance(img["size"], list) else [img["size"]]
    size = (int(size[0]), int(size[-1]))
    fill = img.get("fill_color", 0)
    vocab = int(text.get("vocab_size", 49408))
    return Manifest(
        name=str(m["name"]), architecture=str(m["architecture"]), embed_dim=int(m["embed_dim"]),
        activation=str(m["activation"]), logit_scale=float(m["logit_scale"]),
        image=ImageConfig(size=size, mean=tuple(float(v) for v in img["mean"]),
                          std=tuple(float(v) for v in img["std"]), resize_mode=str(img["resize_mode"]).lower(),
                          interpolation=str(img["interpolation"]).lower(), crop=str(img["crop"]).lower(),
                          fill_color=tuple(int(v) for v in (fill if isinstance(fill, list) else [fill]))),
        text=TextConfig(vocab_file=str(text["vocab_file"]), context_length=int(text["context_length"]),
                        vocab_size=vocab, sot_token_id=int(text["sot_token_id"]),
                        eot_token_id=int(text["eot_token_id"]), pad_token_id=int(text.get("pad_token_id", 0))),
        graphs={p: dict(g) for p, g in m["graphs"].items()}, raw=m)


def _manifest_stamp(folder: Path):
    try:
        st = os.stat(Path(folder) / MANIFEST)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def inside(field: str, rel, bad) -> None:
    """Files named in a manifest are plain relative paths inside the bundle folder (no '..', no
    absolute path, no drive): a manifest must not make core open files elsewhere."""
    if not isinstance(rel, str) or not rel.strip():
        bad(field, rel, "a file name inside the bundle")
    p = PurePosixPath(rel.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or ":" in rel or rel.startswith(("~", "/")):
        bad(field, rel, "a file name inside the bundle folder, without '..' or an absolute path")


def _check_files(folder: Path, manifest: dict, src: Path) -> None:
    needed = [manifest["text"]["vocab_file"]]
    needed += [manifest["graphs"][p][k] for p in manifest["graphs"] for k in KINDS]
    for f in needed:   # a symlink inside the bundle must not lead out of it either
        _outside(folder, f, src)
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing:
        raise ModelError(f"Model bundle {src} is incomplete: missing {', '.join(missing)}.",
                              "Copy the whole bundle folder, or re-export it with `python -m training.export`.", path=src)


def _extract_zip(zpath: Path) -> Path:
    """Extract once into a per-archive cache folder keyed by the archive's size and mtime."""
    st = zpath.stat()
    key = hashlib.sha256(f"{zpath.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    base = Path(os.environ.get("REMOTECLIP_BUNDLE_CACHE", Path(tempfile.gettempdir()) / "remoteclip-bundles"))
    dest = base / f"{zpath.name.split('.')[0]}-{key}"
    if (dest / MANIFEST).is_file():
        return dest
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=base))
    try:
        with zipfile.ZipFile(zpath) as zf:
            names = zf.namelist()
            for n in names:
                if n.startswith("/") or ".." in Path(n).parts:
                    raise ModelError(f"Archive {zpath} contains an unsafe path {n!r}.",
                                          "Use an archive written by `python -m training.export --zip`.", path=zpath)
            zf.extractall(tmp)
        inner = tmp
        # archives may hold the bundle folder itself rather than its content
        if not (tmp / MANIFEST).is_file():
            subdirs = [p for p in tmp.iterdir() if p.is_dir() and (p / MANIFEST).is_file()]
            if len(subdirs) == 1:
                inner = subdirs[0]
        if not (inner / MANIFEST).is_file():
            raise ModelError(f"Archive {zpath} holds no {MANIFEST}: it is not a model bundle.", _EXPORT_HINT, path=zpath)
        try:
            os.replace(inner, dest)
        except OSError:
            if not (dest / MANIFEST).is_file():  # someone else won the race, otherwise re-raise
                raise
    except zipfile.BadZipFile as e:
        raise ModelError(f"Archive {zpath} is damaged ({e}).", "Download or export the bundle again.", path=zpath) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


# --- writing ---------------------------------------------------------------------------------------------------

def image_section(size, mean=CLIP_MEAN, std=CLIP_STD, resize_mode: str = "shortest",
                  interpolation: str = "bicubic", fill_color: int = 0) -> dict:
    """The manifest's ``image`` section from open_clip's PreprocessCfg fields."""
    size = [int(size), int(size)] if isinstance(size, int | float) else [int(s) for s in size]
    return {
        "size": size,
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "resize_mode": resize_mode,
        "interpolation": interpolation,
        # open_clip: shortest -> Resize + CenterCrop, longest -> keep ratio + CenterCropOrPad, squash -> Resize
        "crop": "none" if resize_mode == "squash" else "center",
        "fill_color": int(fill_color),
    }


def new_manifest(*, name: str, architecture: str, model_config: dict, embed_dim: int, activation: str,
                 image: dict, context_length: int, vocab_size: int, logit_scale: float, graphs: dict, opset: int,
                 source: dict | None, exporter: dict, parity: dict | None = None,
                 quantization: dict | None = None) -> dict:
    """A format_version 1 manifest; the one place both bundle writers build it."""
    if activation not in ("quick_gelu", "gelu"):
        raise ValueError(f"activation must be 'quick_gelu' or 'gelu', not {activation!r}")
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "architecture": architecture,
        "model_config": model_config,
        "embed_dim": int(embed_dim),
        "activation": activation,
        "image": image,
        "text": {"tokenizer": "clip-bpe", "vocab_file": VOCAB_NAME, "context_length": int(context_length),
                 "vocab_size": int(vocab_size), "sot_token_id": SOT_TOKEN_ID, "eot_token_id": EOT_TOKEN_ID,
                 "pad_token_id": 0, "clean": "whitespace", "lowercase": True},
        "logit_scale": round(float(logit_scale), 6),
        "graphs": graphs,
        "opset": int(opset),
        "source": source or {"checkpoint": None, "sha256": None, "origin": "random-init"},
        "exporter": exporter,
    }
    if parity is not None:
        manifest["parity"] = parity
    if quantization is not None:
        manifest["quantization"] = quantization   # how the int8 graphs were made and how they agree with fp32
    return manifest


def write_manifest(bundle_dir, manifest: dict) -> None:
    """Atomic manifest write (also used to add the parity table after training.export --verify)."""
    path = Path(bundle_dir) / MANIFEST
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def check_destination(out_dir, overwrite: bool = True) -> Path:
    """The resolved ``out_dir`` if a bundle may be written there (see staging_dir), else RemoteClipError."""
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExists(f"Output {out_dir} exists and is not a folder.", "Choose a new folder name for the bundle.", path=out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not (out_dir / MANIFEST).is_file():
            raise OutputExists(f"Output folder {out_dir} is not empty and is not a bundle; refusing to overwrite it.",
                                  "Choose an empty or new folder for the bundle.", path=out_dir)
        if not overwrite:
            raise OutputExists(f"A model bundle already exists at {out_dir}.",
                                  "Choose another folder, or ask to overwrite it (--overwrite).", path=out_dir)
    return out_dir


def staging_dir(out_dir, overwrite: bool = True) -> Path:
    """A new empty folder beside ``out_dir`` (same file system) to write a bundle into before
    ``publish_dir`` renames it. Refuses a non-empty folder that is not a bundle (never deleted), and an
    existing bundle unless ``overwrite``."""
    out_dir = check_destination(out_dir, overwrite)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; a bundle folder is shared like any other
        return tmp
    except OSError as e:
        raise WriteFailed(f"Cannot write the bundle to {out_dir} ({e.strerror or e}).",
                              "Choose a folder you can write to for the bundle.", path=out_dir) from e


def publish_dir(tmp, out_dir, overwrite: bool = True) -> Path:
    """Move the finished bundle from ``staging_dir`` to ``out_dir``, replacing only what staging_dir allowed
    (checked again: the folder may have changed while the bundle was written)."""
    out_dir = check_destination(out_dir, overwrite)
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}-{int(time.time())}")
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out_dir


def write_zip(bundle_dir, zip_path=None) -> Path:
    """``NAME.rclip.zip`` with the bundle's files at the archive root (atomic write)."""
    bundle_dir = Path(bundle_dir)
    zip_path = Path(zip_path) if zip_path else bundle_dir.with_name(bundle_dir.name + ".rclip.zip")
    fd, tmp = tempfile.mkstemp(prefix=f".{zip_path.name}.", dir=zip_path.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
            for p in sorted(bundle_dir.iterdir()):
                if p.is_file():
                    zf.write(p, p.name)
        os.replace(tmp, zip_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return zip_path

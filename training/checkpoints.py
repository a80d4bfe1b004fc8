"""Find, read and load OpenCLIP-format remote-sensing checkpoints.

Handles:
- RemoteCLIP (``chendelong/RemoteCLIP`` on Hugging Face, ``RemoteCLIP-{RN50,ViT-B-32,ViT-L-14}.pt``):
  plain state dicts for open_clip's built-in configs;
- GeoRSCLIP (``RS5M_ViT-B-32.pt`` style): plain state dicts as well;
- SkyCLIP and other open_clip *training* checkpoints: ``{"state_dict": {"module.<key>": ...}, "epoch": ...}``;
- open_clip's own pretrained tags (``--pretrained openai``), through open_clip's downloader.

Activation: RemoteCLIP was fine-tuned from OpenAI CLIP, and its official evaluation script
(``remoteclip_retrieval.py``) builds the model with ``pretrained='openai'``; the open_clip of the time
(2.x) then built OpenAI's architecture with QuickGELU. The plain configs (``ViT-B-32``) use nn.GELU.
We default to QuickGELU and record the choice in the bundle (docs/bundles.md explains it).
"""

from __future__ import annotations

from pathlib import Path

from core.errors import DownloadFailed, InvalidInput, ModelError, SourceUnreadable
from core.runtime.digest import file_sha256 as sha256_file

# training/configs/*.json: architectures of our own (tiny-test for unit tests, small-vit for the demo model)
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
TINY_CONFIG = CONFIG_DIR / "tiny-test.json"
REMOTECLIP_REPO = "chendelong/RemoteCLIP"
REMOTECLIP_ARCHS = ("RN50", "ViT-B-32", "ViT-L-14")
ACTIVATIONS = ("quick_gelu", "gelu")
DEFAULT_ACTIVATION = "quick_gelu"
# architectures tried when guessing what a state dict fits (CLIP-family, built-in open_clip configs)
CANDIDATE_ARCHS = ("RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B-32", "ViT-B-16", "ViT-L-14",
                   "ViT-L-14-336", "ViT-H-14", "ViT-g-14", "ViT-bigG-14", "ViT-B-32-256")


def remoteclip_filename(arch: str) -> str:
    return f"RemoteCLIP-{arch}.pt"


def download_remoteclip(arch: str, cache_dir: str | None = None) -> Path:
    """Fetch ``RemoteCLIP-{arch}.pt`` from Hugging Face (needs network)."""
    if arch not in REMOTECLIP_ARCHS:
        raise InvalidInput(f"RemoteCLIP publishes no {arch} checkpoint (it has {', '.join(REMOTECLIP_ARCHS)}).",
                              "Pick one of those with --arch, or pass your own file with --checkpoint.", param="arch")
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(REMOTECLIP_REPO, remoteclip_filename(arch), cache_dir=cache_dir))
    except Exception as e:  # offline, proxy, hub down, missing package: all end the same way for the user
        raise DownloadFailed(
            f"Could not download {remoteclip_filename(arch)} from Hugging Face ({REMOTECLIP_REPO}): "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
            f"Download it on a machine with internet (https://huggingface.co/{REMOTECLIP_REPO}) and pass the "
            f"local file with --checkpoint PATH.",
        ) from e


def read_state_dict(path) -> dict:
    """State dict from a checkpoint file: plain (RemoteCLIP, GeoRSCLIP) or training (SkyCLIP) format."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise SourceUnreadable(f"Checkpoint {path} not found.", "Check the path given to --checkpoint.", path=path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(
            f"Checkpoint {path} cannot be read as a PyTorch file ({type(e).__name__}: {str(e).splitlines()[0][:200]}).",
            "The file is damaged or not a PyTorch checkpoint: download it again and compare its sha256.", path=path,
        ) from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict) and "epoch" in obj:
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(hasattr(v, "shape") for v in obj.values()):
        raise ModelError(f"Checkpoint {path} holds no model state dict ({type(obj).__name__}).",
                              "Pass an open_clip state dict or training checkpoint (with a 'state_dict' key).", path=path)
    # DataParallel / DistributedDataParallel training runs save every key under "module."
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def register_local_configs() -> None:
    """Make training/configs/*.json (e.g. ``tiny-test``) known to open_clip by file name."""
    import open_clip

    if open_clip.get_model_config("tiny-test") is None:
        open_clip.add_model_config(CONFIG_DIR)


def eval_transform(preprocess_cfg: dict):
    """open_clip's eval transform for a model's PreprocessCfg dict."""
    import open_clip

    pp = dict(preprocess_cfg)
    size = pp.get("size", 224)
    return open_clip.image_transform(size if isinstance(size, int) else tuple(size), is_train=False,
                                     mean=tuple(pp.get("mean")), std=tuple(pp.get("std")),
                                     resize_mode=pp.get("resize_mode", "shortest"),
                                     interpolation=pp.get("interpolation", "bicubic"),
                                     fill_color=int(pp.get("fill_color", 0)))


def _model_cfg(arch: str) -> dict:
    import open_clip

    register_local_configs()
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise InvalidInput(f"Unknown architecture {arch!r}.",
                              f"Use one of open_clip's models, e.g. {', '.join(REMOTECLIP_ARCHS)}.", param="arch")
    return cfg


def expected_shapes(arch: str) -> dict[str, tuple]:
    """Key -> shape of open_clip's model for arch, built on the meta device (no memory, no init)."""
    import open_clip
    import torch

    register_local_configs()
    with torch.device("meta"):
        model = open_clip.create_model(arch, pretrained=None, device="meta", load_weights=False)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def guess_architecture(state_dict: dict) -> str | None:
    """The candidate architecture whose keys and shapes match the state dict best (None if nothing is close)."""
    got = {k: tuple(v.shape) for k, v in state_dict.items()}
    best, best_score = None, 0.0
    for arch in CANDIDATE_ARCHS:
        try:
            exp = expected_shapes(arch)
        except Exception:
            continue
        same = sum(1 for k, s in exp.items() if got.get(k) == s)
        score = same / max(len(exp), len(got))
        if score > best_score:
            best, best_score = arch, score
    return best if best_score > 0.5 else None


def check_keys(state_dict: dict, arch: str, model) -> None:
    """Raise RemoteClipError naming missing/unexpected/mis-shaped keys and the architecture that fits.
    (core.runtime.convert.architectures.key_mismatches says the same of a checkpoint; it is not imported here because
    the reference pipeline, which reads checkpoints through this module, must load nothing of core.)"""
    exp = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state_dict.items()}
    missing = sorted(set(exp) - set(got))
    unexpected = sorted(set(got) - set(exp))
    shape = sorted(k for k in set(exp) & set(got) if exp[k] != got[k])
    if not (missing or unexpected or shape):
        return

    def few(keys):
        return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys: {few(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {few(unexpected)}")
    if shape:
        parts.append(f"{len(shape)} keys with other shapes: " + few([f"{k} {got[k]} vs {exp[k]}" for k in shape]))
    guess = guess_architecture(state_dict)
    if guess and guess != arch:
        fix = f"This checkpoint looks like {guess}: pass --arch {guess}."
    elif guess == arch:
        fix = "The checkpoint is close to this architecture but not equal; it may be a modified or partial model."
    else:
        fix = (f"It fits none of {', '.join(CANDIDATE_ARCHS[:8])}...; check that it is an OpenCLIP-format "
               "CLIP checkpoint.")
    raise ModelError(f"The checkpoint does not fit {arch}: " + "; ".join(parts) + ".", fix)


def build_model(arch: str, state_dict: dict | None = None, activation: str = DEFAULT_ACTIVATION,
                pretrained: str | None = None):
    """open_clip model for arch with the given activation, weights from state_dict (strict) or a pretrained tag.

    Returns (model in eval mode, preprocess_cfg dict, model_config dict)."""
    import open_clip

    if activation not in ACTIVATIONS:
        raise InvalidInput(f"Unknown activation {activation!r}.", f"Use one of {', '.join(ACTIVATIONS)}.", param="activation")
    cfg = _model_cfg(arch)
    quick = activation == "quick_gelu"
    try:
        # quick_gelu as a constructor kwarg overrides the config both ways (force_quick_gelu only sets it)
        model = open_clip.create_model(arch, pretrained=pretrained, device="cpu", quick_gelu=quick)
    except RuntimeError as e:
        if pretrained:
            raise ModelError(f"open_clip could not load pretrained weights {arch}/{pretrained}: {e}",
                                  "Check the tag with open_clip.list_pretrained(), or pass --checkpoint FILE "
                                  "(open_clip downloads need internet).") from e
        raise
    if state_dict is not None:
        check_keys(state_dict, arch, model)
        model.load_state_dict(state_dict, strict=True)
    model.eval()
    cfg = dict(cfg)
    cfg["quick_gelu"] = quick
    pp = dict(getattr(model.visual, "preprocess_cfg", {}) or open_clip.get_model_preprocess_cfg(model))
    return model, pp, cfg


def resolve_checkpoint(arch: str, checkpoint: str | None, cache_dir: str | None = None) -> tuple[Path, str]:
    """(local file, origin): the given file, or RemoteCLIP's release downloaded from Hugging Face."""
    if checkpoint:
        p = Path(checkpoint).expanduser()
        if not p.is_file():
            raise SourceUnreadable(f"Checkpoint {p} not found.", "Check the path given to --checkpoint.", path=p)
        return p, f"file://{p.name}"
    return download_remoteclip(arch, cache_dir), f"hf://{REMOTECLIP_REPO}"


def load_checkpoint_model(arch: str, checkpoint: str | None = None, activation: str = DEFAULT_ACTIVATION,
                          pretrained: str | None = None, cache_dir: str | None = None):
    """Everything export needs: (model, preprocess_cfg, model_config, source dict for the manifest)."""
    if pretrained:
        model, pp, cfg = build_model(arch, None, activation, pretrained=pretrained)
        return model, pp, cfg, {"checkpoint": f"{arch}/{pretrained}", "sha256": None,
                                "origin": f"open_clip:{pretrained}"}
    path, origin = resolve_checkpoint(arch, checkpoint, cache_dir)
    state_dict = read_state_dict(path)
    model, pp, cfg = build_model(arch, state_dict, activation)
    return model, pp, cfg, {"checkpoint": path.name, "sha256": sha256_file(path), "origin": origin}

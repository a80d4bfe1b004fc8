"""Which CLIP a state dict is, from its shapes alone (as open_clip's build_model_from_openai_state_dict).

``derive_config`` reads widths, depths, patch and image size, context length, vocabulary and embedding
size off the tensor shapes; ``detect_architecture`` finds the architecture of core/runtime/data/clip_architectures.json
with exactly those numbers (the table adds the attention heads, which no shape tells), and ``check_state_dict``
then requires every key of that architecture, at its shape, and nothing else.
"""

from __future__ import annotations

import copy
import json
import math
import re
from functools import lru_cache
from pathlib import Path

from ...errors import InvalidInput, ModelError

DATA_FILE = Path(__file__).resolve().parents[1] / "data" / "clip_architectures.json"
# plain numbers some state dicts carry besides the weights (OpenAI's, and open_clip's BatchNorm counters)
IGNORED_KEYS = re.compile(r"^(input_resolution|context_length|vocab_size|attn_mask)$|\.num_batches_tracked$")


@lru_cache
def _table() -> dict:
    return json.loads(DATA_FILE.read_text(encoding="utf-8"))


def known_architectures() -> tuple[str, ...]:
    return tuple(_table()["architectures"])


def model_config(arch: str) -> dict:
    """open_clip's model config of a known architecture (a copy)."""
    archs = _table()["architectures"]
    if arch not in archs:
        raise InvalidInput(f"Unknown architecture {arch!r}.",
                              f"Use auto, or one of {', '.join(known_architectures())}.", param="arch")
    return copy.deepcopy(archs[arch])


def preprocess_config(arch: str) -> dict:
    """open_clip's PreprocessCfg for the architecture, as a dict (CLIP's mean/std, bicubic, shortest side)."""
    size = model_config(arch)["vision_cfg"]["image_size"]
    return {"size": size, **copy.deepcopy(_table()["preprocess"])}


def _count(sd: dict, prefix: str) -> int:
    """Number of numbered blocks under prefix (``prefix.0.``, ``prefix.1.`` ...)."""
    pat = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    return len({m.group(1) for k in sd if (m := pat.match(k))})


def _shape(sd: dict, key: str) -> tuple[int, ...] | None:
    v = sd.get(key)
    return tuple(v.shape) if v is not None else None


def _missing_keys(sd: dict) -> list[str]:
    """The keys of a CLIP tower the state dict lacks (empty for a CLIP state dict)."""
    need = ["token_embedding.weight", "positional_embedding", "ln_final.weight", "text_projection"]
    if "visual.class_embedding" in sd:
        need += ["visual.conv1.weight", "visual.positional_embedding"]
    elif "visual.attnpool.positional_embedding" in sd:
        need += ["visual.layer1.0.conv1.weight"]
    else:
        need += ["visual.class_embedding (ViT) or visual.attnpool.positional_embedding (ModifiedResNet)"]
    return [k for k in need if k not in sd]


def derive_config(sd: dict) -> dict:
    """open_clip model config from shapes, without heads (no shape tells them). Raises when the keys of a
    CLIP tower are missing."""
    missing = _missing_keys(sd)
    if missing:
        raise ModelError(f"This is not an OpenCLIP CLIP state dict: it lacks {', '.join(missing)} "
                              f"({len(sd)} keys, e.g. {', '.join(sorted(sd)[:4])}).",
                              "Pass a CLIP checkpoint in OpenCLIP format (RemoteCLIP, GeoRSCLIP, SkyCLIP, "
                              "open_clip).")
    try:
        return _derive(sd)
    except (ValueError, TypeError, IndexError) as e:
        raise ModelError(f"The checkpoint's tensors do not have CLIP's shapes ({e}).",
                              "Pass a CLIP checkpoint in OpenCLIP format.") from e


def _derive(sd: dict) -> dict:
    text_width = _shape(sd, "ln_final.weight")[0]
    cfg = {"embed_dim": _shape(sd, "text_projection")[-1]}
    if "visual.class_embedding" in sd:
        width, _, patch, _ = _shape(sd, "visual.conv1.weight")
        grid = math.isqrt(_shape(sd, "visual.positional_embedding")[0] - 1)
        vision = {"image_size": patch * grid, "layers": _count(sd, "visual.transformer.resblocks"),
                  "width": width, "patch_size": patch}
        fc = _shape(sd, "visual.transformer.resblocks.0.mlp.c_fc.weight")
        if fc and fc[0] != 4 * width:
            vision["mlp_ratio"] = fc[0] / width
    else:
        grid = math.isqrt(_shape(sd, "visual.attnpool.positional_embedding")[0] - 1)
        vision = {"image_size": grid * 32, "layers": [_count(sd, f"visual.layer{i}") for i in (1, 2, 3, 4)],
                  "width": _shape(sd, "visual.layer1.0.conv1.weight")[0], "patch_size": None}
    cfg["vision_cfg"] = vision
    cfg["text_cfg"] = {"context_length": _shape(sd, "positional_embedding")[0],
                       "vocab_size": _shape(sd, "token_embedding.weight")[0],
                       "width": text_width, "layers": _count(sd, "transformer.resblocks")}
    fc = _shape(sd, "transformer.resblocks.0.mlp.c_fc.weight")
    if fc and fc[0] != 4 * text_width:
        cfg["text_cfg"]["mlp_ratio"] = fc[0] / text_width
    return cfg


def _without_heads(cfg: dict) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg["vision_cfg"].pop("head_width", None)
    cfg["text_cfg"].pop("heads", None)
    if cfg["vision_cfg"].get("patch_size") is None:
        cfg["vision_cfg"]["patch_size"] = None
    return cfg


def _describe(cfg: dict) -> str:
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    kind = "ModifiedResNet" if isinstance(v["layers"], list) else f"ViT patch {v['patch_size']}"
    extra = "".join(f", mlp ratio {c['mlp_ratio']:g}" for c in (v, t) if "mlp_ratio" in c)
    return (f"{kind}, image {v['image_size']} px, {v['layers']} layers of width {v['width']}; text "
            f"{t['layers']} layers of width {t['width']}, context {t['context_length']}, vocabulary "
            f"{t['vocab_size']}; embeddings {cfg['embed_dim']}{extra}")


def find_architecture(state_dict: dict) -> str | None:
    """Name of the known architecture whose shapes the state dict has ("ViT-B-32", "RN50", ...), else None
    (also when it is no CLIP state dict at all)."""
    if _missing_keys(state_dict):
        return None
    try:
        derived = _derive(state_dict)
    except (ValueError, TypeError, IndexError):   # tensors without CLIP's shapes
        return None
    return next((arch for arch, cfg in _table()["architectures"].items() if _without_heads(cfg) == derived), None)


def detect_architecture(state_dict: dict) -> str:
    """Name of the known architecture whose shapes the state dict has ("ViT-B-32", "RN50", ...).

    Raises ModelError saying what is missing, or listing the shapes found, when none fits."""
    arch = find_architecture(state_dict)
    if arch is not None:
        return arch
    derived = derive_config(state_dict)   # raises its own error when it is no CLIP state dict
    raise ModelError(
        f"The checkpoint's shapes fit none of the known CLIP architectures: {_describe(derived)}.",
        f"Known: {', '.join(known_architectures())}. Other architectures need the torch exporter "
        "(python -m training.export --arch NAME --checkpoint FILE).")


def expected_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Key -> shape of open_clip's CLIP state dict for a model config (without the ignored counters)."""
    out: dict[str, tuple[int, ...]] = {}
    v, t, embed = cfg["vision_cfg"], cfg["text_cfg"], cfg["embed_dim"]

    def block(prefix, width, mlp_ratio):
        mlp = int(width * mlp_ratio)
        for ln in ("ln_1", "ln_2"):
            out[f"{prefix}.{ln}.weight"] = out[f"{prefix}.{ln}.bias"] = (width,)
        out[f"{prefix}.attn.in_proj_weight"] = (3 * width, width)
        out[f"{prefix}.attn.in_proj_bias"] = (3 * width,)
        out[f"{prefix}.attn.out_proj.weight"] = (width, width)
        out[f"{prefix}.attn.out_proj.bias"] = (width,)
        out[f"{prefix}.mlp.c_fc.weight"] = (mlp, width)
        out[f"{prefix}.mlp.c_fc.bias"] = (mlp,)
        out[f"{prefix}.mlp.c_proj.weight"] = (width, mlp)
        out[f"{prefix}.mlp.c_proj.bias"] = (width,)

    def bn(prefix, n):
        for name in ("weight", "bias", "running_mean", "running_var"):
            out[f"{prefix}.{name}"] = (n,)

    if isinstance(v["layers"], list):
        w = v["width"]
        out["visual.conv1.weight"] = (w // 2, 3, 3, 3)
        bn("visual.bn1", w // 2)
        out["visual.conv2.weight"] = (w // 2, w // 2, 3, 3)
        bn("visual.bn2", w // 2)
        out["visual.conv3.weight"] = (w, w // 2, 3, 3)
        bn("visual.bn3", w)
        inplanes = w
        for stage, blocks in enumerate(v["layers"]):
            planes = w * 2 ** stage
            for b in range(blocks):
                p = f"visual.layer{stage + 1}.{b}"
                out[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
                bn(f"{p}.bn1", planes)
                out[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                bn(f"{p}.bn2", planes)
                out[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
                bn(f"{p}.bn3", planes * 4)
                if b == 0 and (stage > 0 or inplanes != planes * 4):
                    out[f"{p}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                    bn(f"{p}.downsample.1", planes * 4)
                inplanes = planes * 4
        feat, grid = w * 32, v["image_size"] // 32
        out["visual.attnpool.positional_embedding"] = (grid * grid + 1, feat)
        for proj in ("q_proj", "k_proj", "v_proj"):
            out[f"visual.attnpool.{proj}.weight"] = (feat, feat)
            out[f"visual.attnpool.{proj}.bias"] = (feat,)
        out["visual.attnpool.c_proj.weight"] = (embed, feat)
        out["visual.attnpool.c_proj.bias"] = (embed,)
    else:
        w, p = v["width"], v["patch_size"]
        grid = v["image_size"] // p
        out["visual.class_embedding"] = (w,)
        out["visual.positional_embedding"] = (grid * grid + 1, w)
        out["visual.proj"] = (w, embed)
        out["visual.conv1.weight"] = (w, 3, p, p)
        for ln in ("ln_pre", "ln_post"):
            out[f"visual.{ln}.weight"] = out[f"visual.{ln}.bias"] = (w,)
        for i in range(v["layers"]):
            block(f"visual.transformer.resblocks.{i}", w, v.get("mlp_ratio", 4.0))
    w = t["width"]
    out["positional_embedding"] = (t["context_length"], w)
    out["text_projection"] = (w, embed)
    out["logit_scale"] = ()
    out["token_embedding.weight"] = (t["vocab_size"], w)
    out["ln_final.weight"] = out["ln_final.bias"] = (w,)
    for i in range(t["layers"]):
        block(f"transformer.resblocks.{i}", w, t.get("mlp_ratio", 4.0))
    return out


def key_mismatches(expected: dict, got: dict) -> list[str]:
    """What differs between two {key: shape} maps, as short phrases (missing, unexpected, other shapes)."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shape = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])

    def few(keys):
        return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys: {few(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {few(unexpected)}")
    if shape:
        parts.append(f"{len(shape)} keys with other shapes: "
                     + few([f"{k} {got[k]} vs {expected[k]}" for k in shape]))
    return parts


def check_state_dict(state_dict: dict, arch: str) -> None:
    """Raise ModelError naming missing, unexpected and mis-shaped keys when the state dict is not arch."""
    exp = expected_shapes(model_config(arch))
    got = {k: tuple(v.shape) for k, v in state_dict.items() if not IGNORED_KEYS.search(k)}
    parts = key_mismatches(exp, got)
    if not parts:
        return
    guess = find_architecture(state_dict)
    if guess and guess != arch:
        fix = f"This checkpoint looks like {guess}: convert it with architecture {guess} (or auto)."
    else:
        fix = ("The checkpoint is a modified CLIP (e.g. extra layers or LayerScale) that the torch-free "
               "converter does not build; export it with python -m training.export instead.")
    raise ModelError(f"The checkpoint does not fit {arch}: " + "; ".join(parts) + ".", fix)


def resolve(state_dict: dict, arch: str = "auto") -> tuple[str, dict]:
    """(architecture name, model config with its heads) for a state dict; arch "auto" detects it."""
    name = detect_architecture(state_dict) if arch in (None, "", "auto") else arch
    cfg = model_config(name)
    check_state_dict(state_dict, name)
    return name, cfg

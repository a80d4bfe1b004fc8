"""Known checkpoints (``core/runtime/data/catalog.json``), the models folder and what it holds.

The catalogue is data: one JSON list of checkpoints with their architecture,
activation, size, sha256, licence and URLs. An organisation can add its own
entries (an internal mirror, a fine-tuned model) in ``<models folder>/catalog.json``
(same format); an entry there with a built-in name replaces the built-in one.

The models folder (``REMOTECLIP_MODELS``, else the user's data folder) holds one
bundle folder per pulled model and ``downloads/`` for checkpoints being
downloaded (``NAME.part``) or kept. Bundles and downloads this tool made carry a
mark (the manifest's ``source.tool``, a download's ``.json`` sidecar): only those
are ever removed.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelError, OutputRefused

CATALOG_FILE = Path(__file__).resolve().parent / "data" / "catalog.json"
CATALOG_FORMAT = "remoteclip-model-catalog"
USER_CATALOG = "catalog.json"
DOWNLOADS = "downloads"
TOOL = "remoteclip models"          # the mark in manifests and download sidecars
STATES = ("available", "partial", "downloaded", "converted")


def models_dir(env=None, platform: str = sys.platform, home: str | os.PathLike | None = None) -> Path:
    """``$REMOTECLIP_MODELS``, else the platform's per-user data folder + ``remoteclip/models``.

    Linux: ``$XDG_DATA_HOME`` or ``~/.local/share``; Windows: ``%LOCALAPPDATA%`` (else ``%APPDATA%``);
    macOS: ``~/Library/Application Support``. Never inside the plugin (an update would delete it)."""
    env = os.environ if env is None else env
    if env.get("REMOTECLIP_MODELS"):
        return Path(env["REMOTECLIP_MODELS"]).expanduser()
    home = Path(home) if home is not None else Path.home()
    if platform.startswith("win"):
        base = env.get("LOCALAPPDATA") or env.get("APPDATA")
        base = Path(base) if base else home / "AppData" / "Local"
    elif platform == "darwin":
        base = home / "Library" / "Application Support"
    else:
        base = Path(env["XDG_DATA_HOME"]) if env.get("XDG_DATA_HOME") else home / ".local" / "share"
    return base / "remoteclip" / "models"


@dataclass
class Entry:
    """One known checkpoint."""

    name: str
    architecture: str
    activation: str
    file: str
    urls: list[str]
    size: int | None = None           # exact bytes, when the publisher states them
    sha256: str | None = None
    licence: str = ""
    description: str = ""
    family: str = ""
    archive: str | None = None        # "zip": the checkpoint is inside a zip archive
    size_approx: int | None = None    # for display only
    recommended: bool = False
    verified: dict = field(default_factory=dict)
    origin: str = "built-in"          # or the path of the user catalogue that defined it

    @property
    def display_size(self) -> int | None:
        return self.size or self.size_approx

    @classmethod
    def from_dict(cls, d: dict, origin: str) -> Entry:
        missing = [k for k in ("name", "architecture", "activation", "urls") if not d.get(k)]
        if missing:
            raise ModelError(f"Model catalogue {origin}: an entry lacks {', '.join(missing)} ({d!r:.80}).",
                                  "Give every entry a name, architecture, activation and urls.")
        if d["activation"] not in ("quick_gelu", "gelu"):
            raise ModelError(f"Model catalogue {origin}: {d['name']} has activation {d['activation']!r}.",
                                  "Use quick_gelu or gelu.")
        sha = d.get("sha256")
        if sha is not None and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha.lower())):
            raise ModelError(f"Model catalogue {origin}: {d['name']} has a malformed sha256 {sha!r}.",
                                  "Give 64 hexadecimal digits, or null when unknown.")
        urls = d["urls"] if isinstance(d["urls"], list) else [d["urls"]]
        file = d.get("file") or url_file_name(urls[0])
        for key, value in (("name", d["name"]), ("file", file)):
            # both become file names in the models folder: a catalogue must not make pull write elsewhere
            if not is_plain_name(value):
                raise ModelError(f"Model catalogue {origin}: entry {str(d['name'])[:60]!r} has {key} "
                                 f"{str(value)[:80]!r}, which is not a plain file name.",
                                 f"Give {key} as a single name without '/', '\\', ':' or '..'.",
                                 path=CATALOG_FILE if origin == "built-in" else origin)
        return cls(name=d["name"], architecture=d["architecture"], activation=d["activation"],
                   file=file, urls=urls, size=d.get("size"),
                   sha256=sha.lower() if sha else None, licence=d.get("licence", ""),
                   description=d.get("description", ""), family=d.get("family", ""), archive=d.get("archive"),
                   size_approx=d.get("size_approx"), recommended=bool(d.get("recommended")),
                   verified=d.get("verified") or {"status": "unverified"}, origin=origin)


def is_plain_name(value) -> bool:
    """A single path component: no separator, no drive, not '.' or '..', not empty."""
    return (isinstance(value, str) and value.strip() != "" and value not in (".", "..")
            and not any(c in value for c in "/\\:\0"))


def confined(path: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """``path`` if it lies inside the models folder ``folder`` once resolved (symlinks followed), else
    OutputRefused: nothing pull or remove writes or deletes may be outside the models folder."""
    root = Path(folder).resolve()
    real = Path(path).resolve()
    if real == root or not real.is_relative_to(root):
        raise OutputRefused(f"{path} leads outside the models folder {root} (to {real}); refusing to write "
                            "or remove it.", "Remove the link, or point REMOTECLIP_MODELS (--dir) at the "
                            "folder itself.", path=path)
    return Path(path)


def url_file_name(url: str) -> str:
    from urllib.parse import unquote, urlsplit

    return unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]) or "checkpoint"


def _read_catalog(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ModelError(f"Model catalogue {path} cannot be read ({e}).",
                              "Fix or delete the file (see docs/bundles.md for the format).", path=path) from e
    if not isinstance(data, dict) or data.get("format") != CATALOG_FORMAT or not isinstance(data.get("models"), list):
        raise ModelError(f"{path} is not a model catalogue (format {CATALOG_FORMAT!r} with a models list).",
                              "Fix or delete the file (see docs/bundles.md for the format).", path=path)
    return data["models"]


def load_catalog(folder: str | os.PathLike | None = None) -> dict[str, Entry]:
    """Built-in entries, then the models folder's own catalog.json (replacing same-named entries)."""
    entries = {}
    for d in _read_catalog(CATALOG_FILE):
        e = Entry.from_dict(d, "built-in")
        entries[e.name] = e
    user = Path(folder if folder is not None else models_dir()) / USER_CATALOG
    if user.is_file():
        for d in _read_catalog(user):
            e = Entry.from_dict(d, str(user))
            entries[e.name] = e
    return entries


def lookup(name: str, catalog: dict[str, Entry]) -> Entry | None:
    """The entry called ``name`` (case-insensitive), else None."""
    if name in catalog:
        return catalog[name]
    low = name.lower()
    return next((e for n, e in catalog.items() if n.lower() == low), None)


def format_size(n: int | None) -> str:
    if not n:
        return "?"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}" if unit == "GB" else f"{n / scale:.0f} {unit}"
    return f"{n} B"


# ------------------------------------------------------------------------------ what the folder holds

def bundle_folder(name: str, folder: str | os.PathLike | None = None) -> Path:
    return Path(folder if folder is not None else models_dir()) / name


def download_path(entry: Entry, folder: str | os.PathLike | None = None) -> Path:
    """Where ``entry``'s checkpoint is downloaded: downloads/<NAME>--<file> (names never collide)."""
    return Path(folder if folder is not None else models_dir()) / DOWNLOADS / f"{entry.name}--{entry.file}"


def present_checkpoint(entry: Entry, folder: str | os.PathLike | None = None) -> Path | None:
    """A complete checkpoint of ``entry`` already in downloads/: the one a pull left (``download_path``), else
    a file the analyst put there under the publisher's name (``downloads/<file>``). Whether it is the
    catalogue's file is checked when it is used (``models.pull``)."""
    dl = download_path(entry, folder)
    for p in (dl, dl.with_name(entry.file)):
        if p.is_file():
            return p
    return None


def read_manifest(path: Path) -> dict | None:
    try:
        m = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return m if isinstance(m, dict) else None


def made_by_us(manifest: dict | None) -> bool:
    """A bundle this tool wrote (pull or convert): its manifest's source carries our mark."""
    source = (manifest or {}).get("source")
    return isinstance(source, dict) and str(source.get("tool", "")).startswith(TOOL)


def folder_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@dataclass
class ModelState:
    name: str
    state: str                       # available | partial | downloaded | converted
    path: Path | None                # bundle folder when converted, else the download (or .part)
    size: int | None                 # bytes on disk when converted/downloaded, else the download size
    entry: Entry | None = None       # None for a bundle that is not in the catalogue
    done_bytes: int = 0              # of a partial download
    architecture: str = ""
    description: str = ""


def local_bundles(folder: str | os.PathLike | None = None) -> list[tuple[Path, dict]]:
    """Bundle folders directly inside the models folder, with their manifests."""
    root = Path(folder if folder is not None else models_dir())
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.iterdir()):
        if p.is_dir() and p.name != DOWNLOADS and not p.name.startswith("."):
            m = read_manifest(p)
            if m is not None and m.get("format") == "remoteclip-onnx-bundle":
                out.append((p, m))
    return out


def list_models(folder: str | os.PathLike | None = None, catalog: dict[str, Entry] | None = None) -> list[ModelState]:
    """Every catalogue entry with its state, then the folder's bundles that are not in the catalogue."""
    folder = Path(folder if folder is not None else models_dir())
    catalog = load_catalog(folder) if catalog is None else catalog
    bundles = {p.name: (p, m) for p, m in local_bundles(folder)}
    rows = []
    for entry in catalog.values():
        if entry.name in bundles:
            p, m = bundles.pop(entry.name)
            rows.append(ModelState(entry.name, "converted", p, folder_size(p), entry,
                                   architecture=m.get("architecture", entry.architecture),
                                   description=entry.description))
            continue
        dl = download_path(entry, folder)
        part = dl.with_name(dl.name + ".part")
        dl = present_checkpoint(entry, folder) or dl
        if dl.is_file():
            rows.append(ModelState(entry.name, "downloaded", dl, dl.stat().st_size, entry,
                                   architecture=entry.architecture, description=entry.description))
        elif part.is_file():
            rows.append(ModelState(entry.name, "partial", part, entry.display_size, entry,
                                   done_bytes=part.stat().st_size, architecture=entry.architecture,
                                   description=entry.description))
        else:
            rows.append(ModelState(entry.name, "available", None, entry.display_size, entry,
                                   architecture=entry.architecture, description=entry.description))
    for name, (p, m) in bundles.items():
        rows.append(ModelState(name, "converted", p, folder_size(p), None, architecture=m.get("architecture", ""),
                               description="local bundle"))
    return rows


def resolve_model(value: str, folder: str | os.PathLike | None = None) -> str:
    """A bundle path for ``value``: a path as given, or the name of a bundle in the models folder
    (a pulled catalogue model). A catalogue name that is not pulled yet is an error naming the command."""
    if not value or os.path.exists(value) or os.sep in value or (os.altsep and os.altsep in value):
        return value
    root = Path(folder if folder is not None else models_dir())
    for p, _m in local_bundles(root):
        if p.name.lower() == value.lower():
            return str(p)
    entry = lookup(value, load_catalog(root))   # a broken catalogue is its own error, not "no such model"
    if entry is not None:
        raise ModelError(f"Model {entry.name} is not pulled yet (looked in {root}).",
                              f"Run `remoteclip models pull {entry.name}` (or Get in the QGIS panel), "
                              "then use it by name.")
    return value

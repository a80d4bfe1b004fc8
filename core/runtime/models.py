"""Get real models: pull (download + convert), convert, list and remove, for the command line
(``remoteclip models ...``) and the QGIS panel alike.

``pull(NAME)`` downloads the catalogue's checkpoint into ``<models folder>/downloads/`` (resumable,
verified), converts it with ``core.runtime.convert`` (no torch) into the bundle ``<models folder>/NAME/`` and
removes the checkpoint. A local file or ``file://`` URL given as ``url`` (an air-gapped copy) is
checked against the catalogue and converted in place; it is never moved or removed. So is a complete
checkpoint already in ``downloads/`` without the download's mark (one the analyst copied there, under the
publisher's file name or the download's): used when its sha256 is the catalogue's, no download.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

from ..errors import (
    Cancelled,
    InvalidInput,
    MissingDependency,
    ModelError,
    OutputExists,
    OutputRefused,
    RemoteClipError,
    SourceUnreadable,
    WriteFailed,
)
from . import catalog as cat
from .download import download, local_path, sidecar, verify_file

DOWNLOAD_SHARE = 0.75     # of the progress bar, when a pull downloads (conversion takes the rest)


def _scaled(progress, lo: float, hi: float):
    if progress is None:
        return None
    return lambda f, msg: progress(lo + (hi - lo) * max(0.0, min(1.0, f)), msg)


def _converter():
    try:
        from .convert import convert_checkpoint
    except ImportError as e:
        missing = getattr(e, "name", None) or str(e)
        raise MissingDependency(f"Converting checkpoints needs the Python package {missing!r}, which is missing.",
                              "Install it (`pip install onnx`; in QGIS the panel offers to install it).") from e
    return convert_checkpoint


def _entry(name: str, catalog: dict) -> cat.Entry:
    entry = cat.lookup(name, catalog)
    if entry is None:
        raise ModelError(f"No model called {name!r} in the catalogue.",
                              "Choose one of: " + ", ".join(catalog) + " (`remoteclip models list`).")
    return entry


def pull(name: str, folder=None, url: str | None = None, *, fp16: bool = False, int8: bool = False, transport=None,
         progress=None, is_cancelled=None, keep_checkpoint: bool = False, int8_check=None) -> Path:
    """Download and convert the catalogue's model ``name`` into ``<folder>/<name>``; returns the bundle.

    ``url``: a mirror (http/https), a local path or a ``file://`` URL instead of the catalogue's URL;
    it must hold the same file (size and sha256 are checked when the catalogue knows them). ``int8_check``: a
    raster of the analyst's to measure the int8 graphs on (implies ``int8``; core.runtime.quantize.raster_tiles)."""
    folder = Path(folder) if folder is not None else cat.models_dir()
    entry = _entry(name, cat.load_catalog(folder))
    out = cat.confined(folder / entry.name, folder)
    if out.exists():
        raise OutputExists(f"{entry.name} is already pulled: {out}.",
                              f"Use it with --model {entry.name}; to pull it again, run "
                              f"`remoteclip models remove {entry.name}` first.", path=out)
    _check_writable(folder, folder)   # one clear error now, not a traceback after the download
    url = url or entry.urls[0]
    local = local_path(url)
    if local is not None:
        if progress is not None:
            progress(0.0, f"checking {local.name}")
        digest = verify_file(local, sha256=entry.sha256, size=entry.size,
                             progress=_scaled(progress, 0.0, 0.2), is_cancelled=is_cancelled)
        checkpoint, ours, share = local, False, 0.2
    else:
        checkpoint, ours, share = cat.download_path(entry, folder), True, DOWNLOAD_SHARE
        for p in (checkpoint, checkpoint.with_name(checkpoint.name + ".part"), sidecar(checkpoint),
                  sidecar(checkpoint).with_suffix(".tmp")):
            cat.confined(p, folder)   # before a byte is written (a linked downloads/ or .part included)
        present = cat.present_checkpoint(entry, folder)
        if present is not None:
            cat.confined(present, folder)
        if checkpoint.is_file() and sidecar(checkpoint).is_file():
            digest = json.loads(sidecar(checkpoint).read_text(encoding="utf-8")).get("sha256")   # verified then
            share = 0.0
        elif present is not None and entry.sha256:
            # a complete file already here without our mark (the analyst copied it in): used when it is the
            # catalogue's file, and left where it is afterwards (it is the analyst's, not ours to remove)
            if progress is not None:
                progress(0.0, f"checking {present.name}")
            digest = verify_file(present, sha256=entry.sha256, size=entry.size,
                                 progress=_scaled(progress, 0.0, 0.2), is_cancelled=is_cancelled)
            checkpoint, ours, share, url = present, False, 0.2, str(present)
        else:
            _check_writable(checkpoint.parent, folder)
            download(url, checkpoint, sha256=entry.sha256, size=entry.size, transport=transport,
                     progress=_scaled(progress, 0.0, share), is_cancelled=is_cancelled,
                     record={"tool": cat.TOOL, "name": entry.name})
            digest = json.loads(sidecar(checkpoint).read_text(encoding="utf-8"))["sha256"]
    extracted = None
    try:
        if entry.archive == "zip":
            extracted = _extract_checkpoint(checkpoint, folder / cat.DOWNLOADS, entry, folder)
        source = {"tool": cat.TOOL + " pull", "catalog": entry.name, "checkpoint": entry.file, "sha256": digest,
                  "origin": url, "licence": entry.licence}
        bundle = _converter()(extracted or checkpoint, out, arch=entry.architecture, activation=entry.activation,
                              fp16=fp16, int8=int8, name=entry.name, source=source, int8_check=int8_check,
                              progress=_scaled(progress, share, 1.0), is_cancelled=is_cancelled)
    finally:
        if extracted is not None:
            with contextlib.suppress(FileNotFoundError):
                extracted.unlink()
    if ours and not keep_checkpoint:
        for p in (checkpoint, sidecar(checkpoint)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
    return Path(bundle)


def _check_writable(where: Path, folder: Path) -> None:
    """WriteFailed naming the models folder when nothing can be written in ``where`` (the folder or its
    downloads/: read-only, no permission)."""
    try:
        where.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=where)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise WriteFailed(f"Cannot write to the models folder {where} ({e.strerror or e}).",
                          "Make it writable, or choose another models folder (--dir, or REMOTECLIP_MODELS; in QGIS "
                          "the panel's models folder setting).", path=folder) from e


def _extract_checkpoint(archive: Path, dest_dir: Path, entry: cat.Entry, folder: Path) -> Path:
    """The one checkpoint file inside a zip archive (SkyCLIP publishes zips), extracted beside it."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()
                       and m.filename.lower().endswith((".pt", ".pth", ".bin", ".ckpt"))]
            if len(members) != 1:
                listed = ", ".join(m.filename for m in members) or "none"
                raise ModelError(f"{archive.name} holds {len(members)} checkpoint files ({listed}), not one.",
                                      "Unzip it and run `remoteclip models convert FILE --out DIR` on the one "
                                      "you want.", path=archive)
            target = dest_dir / f"{entry.name}--{Path(members[0].filename).name}"
            tmp = target.with_name(target.name + ".part")
            for p in (target, tmp):
                cat.confined(p, folder)
            with zf.open(members[0]) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            os.replace(tmp, target)
            return target
    except zipfile.BadZipFile as e:
        raise ModelError(f"{archive} is not a zip archive ({e}).",
                              "Download it again; the catalogue says it is a zip.", path=archive) from e


def convert(checkpoint, out, *, arch: str = "auto", activation: str = "quick_gelu", fp16: bool = False,
            int8: bool = False, name: str | None = None, overwrite: bool = False, progress=None,
            is_cancelled=None, int8_check=None) -> Path:
    """Convert a checkpoint file the user already has (``remoteclip models convert``); an existing bundle at
    ``out`` is replaced only with ``overwrite``."""
    path = Path(checkpoint).expanduser()
    if path.exists() and not path.is_file():
        raise SourceUnreadable(f"{path} is not a regular file (it leads to {path.resolve()}), so it is not a "
                               "checkpoint.", "Give the path of an OpenCLIP .pt/.bin file.", path=path)
    if not path.is_file():
        raise SourceUnreadable(f"Checkpoint not found: {path}.", "Give the path of an OpenCLIP .pt/.bin file.",
                               path=path)
    source = {"tool": cat.TOOL + " convert", "checkpoint": path.name, "origin": str(path.resolve())}
    return Path(_converter()(path, Path(out).expanduser(), arch=arch, activation=activation, fp16=fp16, int8=int8,
                             name=name, source=source, overwrite=overwrite, progress=progress,
                             is_cancelled=is_cancelled, int8_check=int8_check))


def int8_bundle(bundle, out, raster, *, overwrite: bool = False, progress=None) -> Path:
    """``remoteclip models int8``: a copy of ``bundle`` at ``out`` with int8 graphs measured on tiles of ``raster``
    (core.runtime.quantize.quantize_bundle; the image method per tower kind: WRITER_METHODS)."""
    from .quantize import quantize_bundle

    return quantize_bundle(bundle, Path(out).expanduser(), method="auto", check_raster=raster, overwrite=overwrite,
                           progress=progress)


def int8_summary(bundle) -> str:
    """One line: the int8 agreement a bundle records, and what precision auto makes of it on a CPU."""
    from .bundle import load_bundle
    from .inference import choose_precision

    b = load_bundle(bundle)
    agree = ((b.manifest.get("quantization") or {}).get("int8") or {}).get("agreement_vs_fp32") or {}
    return (f"int8 agrees with fp32 on {agree.get('top1_agree', 0):.2%} of {agree.get('images', '?')}; "
            f"on a CPU, {choose_precision(b, 'auto', 'cpu')[1]}")


def remove(name: str, folder=None) -> list[Path]:
    """Remove the bundle and downloads this tool made for ``name``; returns what was removed.
    Anything else (a bundle someone exported or copied there) is refused."""
    folder = Path(folder) if folder is not None else cat.models_dir()
    if not cat.is_plain_name(name):
        raise InvalidInput(f"{name!r} is not a model name.", "Give a name from `remoteclip models list`.",
                           param="name")
    removed = []
    bundles = [p for p, _m in cat.local_bundles(folder) if p.name.lower() == name.lower()]
    for p in bundles:
        if not cat.made_by_us(cat.read_manifest(p)):
            raise OutputRefused(f"{p} was not made by `remoteclip models` (its manifest has no "
                                  f"source.tool mark), so it is left alone.", "Delete it yourself if you mean to.", path=p)
    entry = cat.lookup(name, cat.load_catalog(folder))
    downloads = []
    if entry is not None:
        dl = cat.download_path(entry, folder)
        marked = sidecar(dl).is_file() and json.loads(sidecar(dl).read_text(encoding="utf-8")).get("tool") == cat.TOOL
        downloads = [p for p in (dl.with_name(dl.name + ".part"),) if p.is_file()]
        if marked:
            downloads += [p for p in (dl, sidecar(dl)) if p.is_file()]
    for p in bundles + downloads:
        cat.confined(p, folder)   # a linked bundle or downloads/ is not followed out of the models folder
    if not bundles and not downloads:
        other = (folder / name)
        if other.exists():
            raise OutputRefused(f"{other} is not a bundle made by `remoteclip models`, so it is left alone.",
                                "Delete it yourself if you mean to.", path=other)
        raise ModelError(f"Nothing to remove for {name!r} in {folder}.",
                         "See `remoteclip models list` for what is there.", path=folder)
    try:
        for p in bundles:
            shutil.rmtree(p)
            removed.append(p)
        for p in downloads:
            p.unlink()
            removed.append(p)
    except OSError as e:
        raise WriteFailed(f"Cannot remove {getattr(e, 'filename', None) or folder} ({e.strerror or e})"
                          + (f"; removed so far: {', '.join(map(str, removed))}." if removed else "."),
                          "Make the models folder writable, or remove it yourself.", path=folder) from e
    return removed


# ------------------------------------------------------------------------------------ command line

INT8_CHECK_HELP = ("measure the int8 graphs' agreement with fp32 on tiles of this raster of yours (implies --int8; "
                   "it needs 100 tiles at the model's input size holding data; static methods calibrate on some of "
                   "them): precision auto then runs int8 where they agree on at least 99 %% of them; the raster is "
                   "only read")


def add_parser(sub) -> None:
    """The ``models`` command group of ``remoteclip``."""
    p = sub.add_parser("models", help="list, get (download + convert), convert, add int8 graphs to and remove models",
                       description="Real models without torch: the catalogue's checkpoints are downloaded "
                                   "and converted into bundles in the models folder ($REMOTECLIP_MODELS, "
                                   f"default {cat.models_dir()}).")
    msub = p.add_subparsers(dest="models_command", required=True)
    q = msub.add_parser("list", help="catalogue and local bundles with their state")
    q.add_argument("--dir", help="models folder (default $REMOTECLIP_MODELS or the user data folder)")
    q = msub.add_parser("pull", help="download a catalogue model and convert it into a bundle")
    q.add_argument("name", help="a name from `remoteclip models list`, e.g. RemoteCLIP-ViT-B-32")
    q.add_argument("--dir", help="models folder (default $REMOTECLIP_MODELS or the user data folder)")
    q.add_argument("--url", help="download from this mirror instead, or use a local copy (path or file:// URL)")
    q.add_argument("--fp16", action="store_true", help="also write fp16 graphs (for GPUs)")
    q.add_argument("--int8", action="store_true", help="also write int8 graphs (CPUs: about twice as fast; "
                   "their agreement with fp32 is measured on 16 synthetic images and stored in the manifest; "
                   "precision auto runs them only when measured on your raster: --int8-check)")
    q.add_argument("--int8-check", metavar="RASTER", help=INT8_CHECK_HELP)
    q.add_argument("--keep-checkpoint", action="store_true", help="keep the downloaded checkpoint after converting")
    q.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    q = msub.add_parser("convert", help="convert an OpenCLIP checkpoint you have into a bundle")
    q.add_argument("checkpoint", help="OpenCLIP state dict (.pt/.bin), e.g. RemoteCLIP-ViT-B-32.pt")
    q.add_argument("--arch", default="auto", help="architecture (default auto: detected from the weights)")
    q.add_argument("--out", required=True, help="bundle folder to write (must not exist, or give --overwrite)")
    q.add_argument("--activation", choices=("quick_gelu", "gelu"), default="quick_gelu",
                   help="MLP activation (default quick_gelu, as RemoteCLIP; see docs/bundles.md)")
    q.add_argument("--fp16", action="store_true", help="also write fp16 graphs (for GPUs)")
    q.add_argument("--int8", action="store_true", help="also write int8 graphs (CPUs: about twice as fast; "
                   "their agreement with fp32 is measured on 16 synthetic images and stored in the manifest; "
                   "precision auto runs them only when measured on your raster: --int8-check)")
    q.add_argument("--int8-check", metavar="RASTER", help=INT8_CHECK_HELP)
    q.add_argument("--name", help="bundle name (default: the --out folder name)")
    q.add_argument("--overwrite", action="store_true", help="replace a bundle already at --out")
    q.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    q = msub.add_parser("int8", help="a copy of a bundle with int8 graphs checked on your raster",
                        description="Write a copy of BUNDLE with int8 graphs (CPUs), their agreement with fp32 "
                                    "measured on tiles of RASTER, so that precision auto runs them where they agree "
                                    "on at least 99 % of its tiles (docs/bundles.md).")
    q.add_argument("bundle", help="a bundle folder (or a model name from `remoteclip models list`)")
    q.add_argument("--int8-check", metavar="RASTER", required=True, help=INT8_CHECK_HELP)
    q.add_argument("--out", required=True, help="bundle folder to write (must not exist, or give --overwrite)")
    q.add_argument("--overwrite", action="store_true", help="replace a bundle already at --out")
    q.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    q = msub.add_parser("remove", help="remove a pulled model (only what this tool made)")
    q.add_argument("name")
    q.add_argument("--dir", help="models folder (default $REMOTECLIP_MODELS or the user data folder)")


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def list_text(folder=None) -> str:
    folder = Path(folder) if folder is not None else cat.models_dir()
    rows = [["NAME", "ARCH", "STATE", "SIZE", "LICENCE / NOTE"]]
    for m in cat.list_models(folder):
        state = m.state
        if m.state == "partial":
            state = f"partial {cat.format_size(m.done_bytes)}"
        note = (m.entry.licence.split(" (")[0] if m.entry else "local bundle")
        if m.entry is not None and m.entry.verified.get("status") != "verified":
            note += f"; catalogue entry {m.entry.verified.get('status', 'unverified')}"
        rows.append([m.name + (" *" if m.entry is not None and m.entry.recommended else ""), m.architecture,
                     state, cat.format_size(m.size), note])
    from .bundle import DEMO_BUNDLE

    demo = "" if not DEMO_BUNDLE.is_dir() else f"\ndemo model (for trying the tools only): {DEMO_BUNDLE}"
    return (_table(rows) + f"\n\nmodels folder: {folder}\n* recommended. Get one: remoteclip models pull NAME; "
            "use it: remoteclip label RASTER --model NAME" + demo)


class _LazyBar:
    """The progress bar appears with the first progress, so an early error prints one clean line."""

    def __init__(self, factory, quiet: bool):
        self.factory, self.quiet, self.bar = factory, quiet, None

    def __call__(self, fraction: float, message: str) -> None:
        if self.bar is None:
            self.bar = self.factory(self.quiet)
        self.bar(fraction, message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run(args, bar_factory) -> int:
    """Run a parsed ``models`` command; errors are raised for cli.main to print."""
    cmd = args.models_command
    if cmd == "list":
        print(list_text(args.dir))
        return 0
    if cmd == "remove":
        for p in remove(args.name, args.dir):
            print(f"removed {p}")
        return 0
    bar = _LazyBar(bar_factory, args.quiet)
    try:
        if cmd == "pull":
            out = pull(args.name, args.dir, args.url, fp16=args.fp16, int8=args.int8, progress=bar,
                       keep_checkpoint=args.keep_checkpoint, int8_check=args.int8_check)
            bar.close()
            print(f"pulled {args.name}: {out}\n" + (int8_summary(out) + "\n" if args.int8_check else "")
                  + f"use it: remoteclip label RASTER --model {out.name} ...")
        elif cmd == "int8":
            out = int8_bundle(args.bundle, args.out, args.int8_check, overwrite=args.overwrite, progress=bar)
            bar.close()
            print(f"bundle written: {out}\n{int8_summary(out)}\nuse it: remoteclip label RASTER --model {out} ...")
        else:
            out = convert(args.checkpoint, args.out, arch=args.arch, activation=args.activation, fp16=args.fp16,
                          int8=args.int8, name=args.name, overwrite=args.overwrite, progress=bar,
                          int8_check=args.int8_check)
            bar.close()
            print(f"bundle written: {out}\n" + (int8_summary(out) + "\n" if args.int8_check else "")
                  + f"use it: remoteclip label RASTER --model {out} ...")
        return 0
    except (Cancelled, KeyboardInterrupt):
        bar.close()
        if cmd == "pull":
            print("remoteclip: cancelled; the partial download is kept and the next pull resumes it",
                  file=sys.stderr)
            return 130
        raise
    except RemoteClipError:
        bar.close()
        raise


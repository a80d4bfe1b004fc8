"""Build the QGIS plugin: one folder `remoteclip_qgis/` holding the plugin code,
`core` vendored as `remoteclip_qgis/core`, the resources and metadata.txt, and a
zip of it that QGIS's "Install from ZIP" accepts.

    python scripts/package.py                  # dist/remoteclip_qgis-<version>.zip
    python scripts/package.py --folder-only --out DIR   # DIR/remoteclip_qgis/ (tests, dev installs)

core is vendored inside the plugin (not put on sys.path) so that the generic
name `core` never clashes with another plugin's module in QGIS's shared
interpreter; every import inside core is relative, so it works under either name.
"""

from __future__ import annotations

import argparse
import configparser
import shutil
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "remoteclip_qgis"
SKIP_NAMES = {"__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache", "tests", "test"}
SKIP_SUFFIXES = {".pyc", ".pyo", ".orig", ".rej", ".swp"}
# What goes in, and where it lands inside the plugin folder.
CONTENT = {
    PLUGIN: "",
    "core": "core",
    "resources": "resources",
    "metadata.txt": "metadata.txt",
    "LICENSE": "LICENSE",
    "models/remoteclip-demo": "models/remoteclip-demo",
    "requirements/lock.txt": "requirements/lock.txt",   # the installer's pins (remoteclip_qgis.deps.PIN_SETS)
    "requirements/constraints-qgis-3.40.txt": "requirements/constraints-qgis-3.40.txt",
    "requirements/constraints-qgis-3.44.txt": "requirements/constraints-qgis-3.44.txt",
}
OPTIONAL = {"LICENSE"}   # the demo model is not: the plugin's offline default, the README says the zip holds it


def plugin_version() -> str:
    meta = configparser.ConfigParser()
    meta.read(ROOT / "metadata.txt", encoding="utf-8")
    return meta["general"]["version"]


def _ignore(_folder: str, names: list[str]) -> set[str]:
    return {n for n in names if n in SKIP_NAMES or Path(n).suffix in SKIP_SUFFIXES or n.startswith(".")}


def build_folder(out: Path) -> Path:
    """Lay the plugin out as DIR/remoteclip_qgis and return that folder."""
    target = out / PLUGIN
    if target.exists():
        shutil.rmtree(target)
    for source, dest in CONTENT.items():
        src = ROOT / source
        if not src.exists():
            if source in OPTIONAL:
                continue
            raise SystemExit(f"package: {src} is missing; run from a complete checkout"
                             + (" (or make it with scripts/train_demo.sh)" if source.startswith("models/") else ""))
        dst = target / dest
        if src.is_dir():
            shutil.copytree(src, dst, ignore=_ignore, dirs_exist_ok=True)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    return target


def build_zip(folder: Path, zip_path: Path) -> Path:
    """Zip the folder with one top-level directory, written atomically."""
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = zip_path.with_name(zip_path.name + ".part")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder.parent).as_posix())
    tmp.replace(zip_path)
    return zip_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="output folder (default: dist/)")
    parser.add_argument("--folder-only", action="store_true", help="lay out the plugin folder, no zip")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    folder = build_folder(args.out)
    if args.folder_only:
        print(folder)
        return 0
    zip_path = build_zip(folder, args.out / f"{PLUGIN}-{plugin_version()}.zip")
    shutil.rmtree(folder)
    print(zip_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""RemoteCLIP > Diagnostics: what a bug report needs, as copyable text."""

from __future__ import annotations

import configparser
import platform
import sys
from pathlib import Path

from qgis.PyQt.QtWidgets import (
    QApplication,
    QDialog,
    QDialogButtonBox,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
)

from . import deps

PLUGIN_DIR = Path(__file__).resolve().parent


def plugin_version() -> str:
    meta = configparser.ConfigParser()
    for candidate in (PLUGIN_DIR / "metadata.txt", PLUGIN_DIR.parent / "metadata.txt"):
        if candidate.is_file():
            meta.read(candidate, encoding="utf-8")
            return meta["general"].get("version", "?")
    return "?"


def _onnxruntime_lines() -> list[str]:
    if not deps.is_available("onnxruntime"):
        return ["onnxruntime: not installed (RemoteCLIP panel > Install dependencies)"]
    try:
        import onnxruntime as ort
    except Exception as e:  # a broken install is exactly what this dialog must show
        return [f"onnxruntime: fails to import: {type(e).__name__}: {e}"]
    return [f"onnxruntime: {ort.__version__} ({Path(ort.__file__).parent})",
            f"onnxruntime providers: {', '.join(ort.get_available_providers())}",
            f"onnxruntime device: {ort.get_device()}"]


def _module_version(name: str) -> str:
    if not deps.is_available(name):
        return "not installed"
    try:
        module = __import__(name)
    except Exception as e:
        return f"fails to import: {e}"
    return str(getattr(module, "__version__", "installed"))


def _model_lines(model: str | None) -> list[str]:
    if not model:
        return ["model bundle: none chosen"]
    try:
        from .core.runtime.bundle import load_bundle

        b = load_bundle(model)
    except Exception as e:
        return [f"model bundle: {model}", f"model bundle error: {e}"]
    return [f"model bundle: {b.source}", f"model: {b.name}, architecture {b.architecture}, "
            f"activation {b.activation}, embed_dim {b.embed_dim}, precisions {', '.join(b.precisions)}"]


def diagnostics_text(model: str | None = None) -> str:
    """Versions, providers, GPU, model and folders, one fact per line."""
    from qgis.core import Qgis

    try:
        import numpy

        numpy_line = f"numpy: {numpy.__version__} ({Path(numpy.__file__).parent})"
    except ImportError:
        numpy_line = "numpy: not installed"
    try:
        from osgeo import gdal

        gdal_line = f"GDAL: {gdal.__version__}"
    except ImportError:
        gdal_line = "GDAL: python bindings missing"
    smi = deps.nvidia_smi_output()
    gpu = smi.strip() if deps.gpu_usable(smi) else "none (nvidia-smi not found or no GPU listed)"
    try:
        python = deps.find_python()
    except FileNotFoundError as e:
        python = f"not found ({e})"
    folder = deps.deps_dir()
    missing = deps.missing_modules()
    lines = [
        f"RemoteCLIP plugin: {plugin_version()} ({PLUGIN_DIR})",
        f"QGIS: {Qgis.QGIS_VERSION}",
        f"Python: {sys.version.split()[0]} ({sys.executable}; pip runs with {python})",
        f"OS: {platform.platform()}",
        numpy_line,
        gdal_line,
        *_onnxruntime_lines(),
        f"ftfy: {_module_version('ftfy')}",
        f"regex: {_module_version('regex')}",
        f"missing packages: {', '.join(missing) if missing else 'none'}",
        f"GPU: {gpu}",
        f"onnxruntime package for this machine: {deps.onnxruntime_package(smi)}",
        f"deps folder: {folder} ({'exists' if folder.is_dir() else 'not created yet'}"
        f"{', on sys.path' if str(folder) in sys.path else ''})",
        *_model_lines(model),
        cache_line(),
    ]
    return "\n".join(lines)


def cache_line(cache=None) -> str:
    from .core.cache import EmbeddingCache, format_size

    cache = cache or EmbeddingCache()
    entries = cache.entries()
    return (f"embedding cache: {cache.dir} ({len(entries)} entries, {format_size(sum(e.bytes for e in entries))} "
            f"of at most {format_size(cache.max_bytes)}; REMOTECLIP_CACHE_MAX sets the limit)")


class DiagnosticsDialog(QDialog):
    def __init__(self, text: str, parent=None):
        super().__init__(parent)
        self.setWindowTitle("RemoteCLIP diagnostics")
        self.setObjectName("RemoteClipDiagnostics")
        self.resize(720, 420)
        layout = QVBoxLayout(self)
        self.text = QPlainTextEdit(self)
        self.text.setReadOnly(True)
        self.text.setPlainText(text)
        layout.addWidget(self.text)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close, self)
        self.copy_button = QPushButton("Copy", self)
        self.copy_button.setToolTip("Copy the report to the clipboard, for a bug report")
        buttons.addButton(self.copy_button, QDialogButtonBox.ButtonRole.ActionRole)
        self.copy_button.clicked.connect(self.copy)
        self.clear_cache_button = QPushButton("Clear cache", self)
        self.clear_cache_button.setObjectName("remoteclip_clear_cache")
        self.clear_cache_button.setToolTip("Remove the cached tile embeddings (later runs compute them again)")
        buttons.addButton(self.clear_cache_button, QDialogButtonBox.ButtonRole.ActionRole)
        self.clear_cache_button.clicked.connect(self.clear_cache)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)

    def copy(self) -> None:
        QApplication.clipboard().setText(self.text.toPlainText())

    def clear_cache(self, confirm: bool = True) -> tuple[int, int] | None:
        """Remove every cached tile embedding (after asking); the report's cache line follows."""
        from .core.cache import EmbeddingCache, format_size

        cache = EmbeddingCache()
        entries = cache.entries()
        if not entries:
            QMessageBox.information(self, "RemoteCLIP", f"The embedding cache ({cache.dir}) is empty.")
            return None
        if confirm and QMessageBox.question(
                self, "RemoteCLIP", f"Remove the {len(entries)} cached tile embeddings "
                f"({format_size(sum(e.bytes for e in entries))}) from {cache.dir}? Later runs compute them again.",
                QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                QMessageBox.StandardButton.No) != QMessageBox.StandardButton.Yes:
            return None
        removed = cache.clear()
        lines = self.text.toPlainText().splitlines()
        self.text.setPlainText("\n".join(cache_line(cache) if ln.startswith("embedding cache:") else ln
                                         for ln in lines))
        return removed

"""What the dock remembers (QgsSettings under ``RemoteCLIP/``), read and written here only: the model, the
inputs a task marks ``remembered``, the tile size and unit, the batch size, the device and the results folder;
and where a run without an output file saves its GeoPackage."""

from __future__ import annotations

import os
import time
from pathlib import Path

from qgis.core import QgsProject, QgsSettings
from qgis.PyQt.QtCore import QStandardPaths

from .core.checks import slug as core_slug
from .core.runtime.bundle import default_bundle
from .widgets import set_value

SETTINGS = "RemoteCLIP/"
RESULTS_FOLDER = "remoteclip_results"
UNSAVED_RESULTS_FOLDER = "RemoteCLIP results"


def save_setting(key: str, value) -> None:
    QgsSettings().setValue(SETTINGS + key, value)  # noqa: QGS202 (QgsSettings.setValue returns nothing)


def default_model() -> str:
    """The model remembered from last time, else core's default (REMOTECLIP_MODEL, the demo model shipped
    inside the plugin), else ''."""
    saved = QgsSettings().value(SETTINGS + "model", "", type=str)
    if saved and os.path.exists(saved):
        return saved
    return default_bundle() or ""


def results_folder_setting() -> str:
    return QgsSettings().value(SETTINGS + "results_dir", "", type=str)


def results_folder(project: QgsProject | None = None) -> Path:
    """Where runs without an output file save their GeoPackage: the folder chosen in the panel, else
    remoteclip_results/ next to the saved project, else "RemoteCLIP results" in the Documents folder
    (visible, not inside QGIS's profile)."""
    chosen = results_folder_setting()
    if chosen:
        return Path(chosen)
    project = project or QgsProject.instance()
    if project.fileName():
        return Path(project.absolutePath()) / RESULTS_FOLDER
    documents = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.DocumentsLocation)
    return Path(documents or Path.home()) / UNSAVED_RESULTS_FOLDER


def slug(text: str) -> str:
    """A raster's name in a file name: core's slug rule, case kept, 40 characters at most."""
    return core_slug(text, "raster", lower=False, width=40)


def default_output(raster_name: str, kind: str, project: QgsProject | None = None) -> str:
    folder = results_folder(project)
    stem = f"{slug(raster_name)}_{kind}_{time.strftime('%Y%m%d_%H%M%S')}"
    path = folder / f"{stem}.gpkg"
    n = 2
    while path.exists():
        path = folder / f"{stem}_{n}.gpkg"
        n += 1
    return str(path)


def _remembered(dock):
    """(setting key, text widget, text before anything was remembered) of each remembered task input."""
    for form in dock.forms.values():
        for name, first in form.task_cls.remembered.items():
            w = form.widgets.get(name)
            if w is not None:
                yield name, w, first


def restore(dock) -> None:
    """The dock's widgets as they were left last time (the model row loads its model)."""
    s = QgsSettings()
    model = default_model()
    if model:
        dock.model_widget.setFilePath(model)
    dock._model_changed(dock.model_widget.filePath())
    for key, w, first in _remembered(dock):
        text = s.value(SETTINGS + key, "", type=str) or first
        if hasattr(w, "setPlainText"):
            w.setPlainText(text)
        else:
            w.setText(text)
    set_value(dock.tile_size, s.value(SETTINGS + "tile_size", 224.0, type=float))
    dock.tile_unit.setCurrentIndex(max(dock.tile_unit.findData(s.value(SETTINGS + "tile_unit", "px")), 0))
    set_value(dock.batch_size, s.value(SETTINGS + "batch_size", 32, type=int))
    dock.device_combo.setCurrentText(s.value(SETTINGS + "device", "auto", type=str))


def remember(dock) -> None:
    """Keep what a run was started with, for the next session."""
    save_setting("model", dock.model_path())
    for key, w, _first in _remembered(dock):
        save_setting(key, w.toPlainText() if hasattr(w, "toPlainText") else w.text())
    save_setting("tile_size", dock.tile_size.value())
    save_setting("tile_unit", dock.tile_unit.currentData())
    save_setting("batch_size", dock.batch_size.value())
    save_setting("device", dock.device_combo.currentText())

"""The dock's model row in real QGIS: catalogue models with size and state, Get (download through
QGIS's network stack + torch-free conversion in a QgsTask) against a loopback server, cancel and
resume, the demo note, and the row at the dock's 300 px width."""

from __future__ import annotations

import json
import time

import pytest
from loopback import FileServer
from test_models_pull import entry, save_checkpoint, user_catalog

WAIT_S = 300


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture
def models(tmp_path, monkeypatch):
    from qgis.core import QgsSettings

    folder = tmp_path / "models"
    folder.mkdir()
    QgsSettings().remove("RemoteCLIP")
    QgsSettings().setValue("RemoteCLIP/models_dir", str(folder))
    for k in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(k, raising=False)
    yield folder
    QgsSettings().remove("RemoteCLIP")


@pytest.fixture
def dock(rc, qgis_iface, qgis_new_project, models):
    from remoteclip_qgis.dock import RemoteClipDock

    d = RemoteClipDock()
    qgis_iface.messageBar().clear_messages()
    yield d
    d.unload()
    _wait(d.model_row)
    d.deleteLater()


def _wait(row, until=lambda: False) -> None:
    from qgis.PyQt.QtCore import QCoreApplication

    deadline = time.monotonic() + WAIT_S
    while (row.task is not None or row.install_task is not None) and not until():
        QCoreApplication.processEvents()
        time.sleep(0.01)
        assert time.monotonic() < deadline, "the Get task did not finish"


def _items(row) -> dict[str, str]:
    return {row.combo.itemText(i).split(" · ")[0]: row.combo.itemText(i) for i in range(row.combo.count())}


def test_the_picker_lists_catalogue_models_with_size_and_state_and_marks_the_demo(dock, rc):
    from qgis.PyQt.QtCore import Qt

    from remoteclip_qgis.core.runtime.bundle import DEMO_BUNDLE
    from remoteclip_qgis.model_picker import DEMO_NOTE

    items = _items(dock.model_row)
    assert items["RemoteCLIP-ViT-B-32"] == "RemoteCLIP-ViT-B-32 · Get 605 MB"
    assert items["RemoteCLIP-ViT-L-14"] == "RemoteCLIP-ViT-L-14 · Get 1.71 GB"
    assert "OpenAI-CLIP-ViT-B-32" in items and "GeoRSCLIP-ViT-B-32" in items
    assert items["remoteclip-demo"] == "remoteclip-demo · demo"
    dock.model_widget.setFilePath(str(DEMO_BUNDLE))
    assert dock.demo_banner.isVisibleTo(dock) and "not credible" in dock.demo_label.text()
    assert "30.5 %" in dock.demo_label.text() and "69" not in dock.demo_label.text()   # its honest figure
    assert dock.model_row.combo.itemData(0, Qt.ItemDataRole.ToolTipRole) == DEMO_NOTE   # the demo entry
    assert dock.model_row.combo.currentText() == "remoteclip-demo · demo"
    assert not dock.model_row.get_button.isEnabled()           # nothing to get for a local bundle
    dock.model_row.select_entry("RemoteCLIP-ViT-B-32")
    assert dock.model_row.get_button.isEnabled()
    assert "Get" in dock.model_info.text() and "605 MB" not in dock.model_widget.filePath()


def test_get_downloads_through_qgis_converts_and_selects_the_model(dock, models, tiny_ckpt, qgis_iface):
    from qgis.core import Qgis

    with FileServer({"tiny.pt": tiny_ckpt}) as srv:
        user_catalog(models, entry(url=srv.url("tiny.pt", "resolve")))
        dock.model_row.refresh()
        assert dock.model_row.select_entry("Tiny-RS") >= 0
        dock.model_row.get_button.click()
        assert dock.model_row.task is not None and dock.model_row.cancel_button.isVisible() is not None
        _wait(dock.model_row)
        agents = {r["headers"].get("User-Agent", "") for r in srv.requests}
    bundle = models / "Tiny-RS"
    assert (bundle / "manifest.json").is_file(), dock.model_row.status.text()
    assert all("QGIS/" in a for a in agents), agents          # QGIS's network stack carried it
    assert [r["path"] for r in srv.requests] == ["/resolve/tiny.pt", "/cdn/tiny.pt"]
    assert dock.model_path() == str(bundle)
    assert dock.model_row.combo.currentText().startswith("Tiny-RS · ")
    assert "<b>Tiny-RS</b> · tiny-test" in dock.model_info.text()
    assert "Tiny-RS is ready" in " ".join(qgis_iface.messageBar().get_messages(Qgis.Success))
    assert json.loads((bundle / "manifest.json").read_text())["source"]["tool"] == "remoteclip models pull"


def test_cancel_keeps_the_download_and_get_resumes_it(dock, models, tiny_ckpt):
    from qgis.PyQt.QtCore import Qt

    with FileServer({"tiny.pt": tiny_ckpt}, latency=0.02, chunk=128 * 1024) as srv:
        user_catalog(models, entry(url=srv.url("tiny.pt")))
        dock.model_row.refresh()
        dock.model_row.select_entry("Tiny-RS")
        task = dock.model_row.get()
        seen = []

        def cancel_after_some(message: str) -> None:   # worker thread
            seen.append(message)
            if len(seen) == 3:
                task.cancel()

        task.statusChanged.connect(cancel_after_some, Qt.DirectConnection)
        _wait(dock.model_row)
        assert "Cancelled" in dock.model_row.status.text()
        assert not (models / "Tiny-RS").exists()
        text = _items(dock.model_row)["Tiny-RS"]
        assert "Get resumes" in text, text
        part = next((models / "downloads").glob("*.part"))
        kept = part.stat().st_size
        assert 0 < kept < tiny_ckpt.stat().st_size
        srv.latency = 0
        dock.model_row.select_entry("Tiny-RS")
        dock.model_row.get()
        _wait(dock.model_row)
        assert srv.range_starts() == [kept]
    assert (models / "Tiny-RS" / "manifest.json").is_file()
    assert dock.model_path() == str(models / "Tiny-RS")


def test_a_failed_get_says_why_and_selects_nothing(dock, models, tiny_ckpt):
    with FileServer({"tiny.pt": tiny_ckpt}) as srv:
        user_catalog(models, entry(url=srv.url("missing.pt")))
        dock.model_row.refresh()
        dock.model_row.select_entry("Tiny-RS")
        before = dock.model_path()
        dock.model_row.get()
        _wait(dock.model_row)
    assert "HTTP 404" in dock.model_row.status.text()
    assert dock.model_path() == before and not (models / "Tiny-RS").exists()
    assert dock.model_row.get_button.isEnabled()


def test_get_without_a_python_for_pip_says_so_and_starts_nothing(dock, models, monkeypatch):
    from remoteclip_qgis import deps

    def no_python(*_args, **_kwargs):
        raise FileNotFoundError("QGIS's Python interpreter was not found (looked for /nowhere/python3).")

    monkeypatch.setattr(deps, "missing_for_conversion", lambda: ["onnx"])
    monkeypatch.setattr(deps, "find_python", no_python)
    dock.model_row.select_entry("RemoteCLIP-ViT-B-32")
    assert dock.model_row.get() is None
    text = dock.model_row.status.text()
    assert "interpreter was not found" in text and "Install onnx" in text
    assert dock.model_row.install_task is None and dock.model_row.task is None
    assert dock.model_row.get_button.isEnabled()

def test_the_model_row_fits_the_default_dock_width(dock):
    dock.resize(300, 900)
    dock.show()
    row = dock.model_row
    row.select_entry("RemoteCLIP-ViT-L-14")    # the longest item text
    assert row.minimumSizeHint().width() <= 220    # + the form's 'Model' label: within 300 px
    assert row.status.wordWrap() and row.info.wordWrap()
    dock.hide()


def test_onnx_for_conversion_is_pinned_to_the_lock_file_and_installed_alone(rc, tmp_path):
    from pathlib import Path

    from remoteclip_qgis import deps

    lock = (Path(__file__).resolve().parents[1] / "requirements" / "lock.txt").read_text().splitlines()
    onnx_pin = next(line for line in lock if line.startswith("onnx=="))
    assert deps.requirements("onnxruntime", ["onnx"]) == [onnx_pin]   # same pin as every other environment
    assert "onnx" not in deps.REQUIRED               # running models never needs it
    plan = deps.InstallPlan("python3", tmp_path / "deps", ["onnx"], "GPU 0: H200 (UUID: x)", "1.24.2", "linux")
    assert plan.commands == [plan.commands[0]] and plan.commands[0][-1] == onnx_pin
    assert not [a for a in plan.commands[0] if a.startswith("onnxruntime")]
    assert deps.missing_for_conversion() == []        # the test environment has it (requirements/training.txt)


def test_the_demo_model_says_so_and_its_button_gets_remoteclip(dock, models, tiny_ckpt):
    """The demo banner shows while the demo model is chosen; its button chooses RemoteCLIP-ViT-B-32 and Gets
    it (here from a loopback server, through a models-folder catalogue entry of that name), then the banner
    goes."""
    from remoteclip_qgis.core.runtime.bundle import DEMO_BUNDLE

    dock.model_widget.setFilePath(str(DEMO_BUNDLE))
    assert dock.demo_banner.isVisibleTo(dock) and "not credible" in dock.demo_label.text()
    with FileServer({"tiny.pt": tiny_ckpt}) as srv:
        user_catalog(models, entry(name="RemoteCLIP-ViT-B-32", url=srv.url("tiny.pt")))
        dock.model_row.refresh()
        dock.demo_get_button.click()
        assert dock.model_row.task is not None or dock.model_row.install_task is not None
        _wait(dock.model_row)
    assert dock.model_path() == str(models / "RemoteCLIP-ViT-B-32"), dock.model_row.status.text()
    assert not dock.demo_banner.isVisibleTo(dock)
    dock.model_widget.setFilePath(str(DEMO_BUNDLE))
    assert dock.demo_banner.isVisibleTo(dock)
    dock.demo_get_button.click()   # it is here now: chosen, nothing downloaded
    assert dock.model_row.task is None and dock.model_path() == str(models / "RemoteCLIP-ViT-B-32")


# ------------------------------------------------------------- QGIS's transport on core.runtime.download's rules

_PAYLOAD = bytes(range(256)) * 1171 + b"end"      # 299 779 bytes: not a multiple of the server's chunk


@pytest.fixture
def loopback_only(monkeypatch):
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(k, raising=False)


def test_a_stall_through_qgis_stops_after_cores_read_timeout_and_keeps_the_part(rc, loopback_only,
                                                                                 monkeypatch, tmp_path):
    """QGIS's transport waits core.runtime.download.READ_TIMEOUT for data (not its own 60 s) and reports a stall as
    one (core's "no data for N s", the part kept), not as a dropped connection core would retry."""
    from remoteclip_qgis.core.errors import DownloadFailed
    from remoteclip_qgis.core.runtime import download as core_download
    from remoteclip_qgis.model_download import qgis_transport

    monkeypatch.setattr(core_download, "READ_TIMEOUT", 0.4)
    part = tmp_path / "ckpt.pt.part"
    with FileServer({"ckpt.pt": _PAYLOAD}, chunk=50_000, latency=3.0) as srv:   # one chunk, then 3 s of nothing
        t0 = time.perf_counter()
        with pytest.raises(DownloadFailed) as err:
            core_download.download(srv.url("ckpt.pt"), tmp_path / "ckpt.pt", transport=qgis_transport,
                                   read_timeout=0.4, retry_wait=0)
        took = time.perf_counter() - t0
        requests = len(srv.requests)
    assert took < 2.5, took
    assert requests == 1                                  # not retried
    assert "no data for 0.4 s" in err.value.problem and err.value.path == str(part)
    assert part.read_bytes() == _PAYLOAD[:50_000] and not (tmp_path / "ckpt.pt").exists()


def test_a_complete_part_through_qgis_is_checked_against_the_sha256_of_the_redirect(rc, loopback_only, tmp_path):
    """The 416 ("you have it all") comes after Hugging Face's redirect: QGIS's transport hands core the
    redirect's X-Linked-Etag with it, so a complete .part of the wrong bytes is refused and removed."""
    from remoteclip_qgis.core.errors import VerificationFailed
    from remoteclip_qgis.core.runtime.download import download
    from remoteclip_qgis.model_download import qgis_transport

    (tmp_path / "ckpt.pt.part").write_bytes(_PAYLOAD[:-3] + b"END")   # the right size, not the right file
    with FileServer({"ckpt.pt": _PAYLOAD}) as srv:
        with pytest.raises(VerificationFailed) as err:
            download(srv.url("ckpt.pt", "resolve"), tmp_path / "ckpt.pt", transport=qgis_transport,
                     record={"tool": "t"})
        starts = srv.range_starts()
    assert starts == [len(_PAYLOAD), len(_PAYLOAD)]       # the redirect, then the store's 416
    assert err.value.path == str(tmp_path / "ckpt.pt") and list(tmp_path.iterdir()) == []
def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]   # closed again: a connection there is refused, as with no network


def test_after_a_failed_get_the_list_the_path_and_run_agree_on_the_model(dock, models, tiny_bundle, data_dir):
    """A converted model chosen, then a model still to Get, whose Get fails (nothing listens): the list, the
    info line, the path field and Run all mean that model; Run refuses naming it, never runs the one before."""
    import shutil

    from qgis.core import QgsProject, QgsRasterLayer

    from remoteclip_qgis.core.errors import ModelError

    layer = QgsRasterLayer(str(data_dir / "geotiff" / "rasterio_RGB.byte.tif"), "rgb")
    QgsProject.instance().addMapLayer(layer)
    dock.layer_combo.setLayer(layer)

    shutil.copytree(tiny_bundle, models / "Local-Tiny")
    user_catalog(models, entry(name="RemoteCLIP-RN50", url=f"http://127.0.0.1:{_closed_port()}/RN50.pt"))
    row = dock.model_row
    row.refresh()
    assert row.select_entry("Local-Tiny") >= 0
    assert dock.model_path() == str(models / "Local-Tiny") and dock.bundle is not None
    row.select_entry("RemoteCLIP-RN50")
    assert dock.model_path() == ""                       # the list's choice is the model that runs
    row.get_button.click()
    _wait(row)
    assert "127.0.0.1" in row.status.text()              # the failure is said, in the dock's words
    assert "remoteclip models" not in row.status.text() and "--url" not in row.status.text()
    assert "Convert a checkpoint file" in row.status.text()
    assert row.combo.currentText().startswith("RemoteCLIP-RN50 · ")
    assert "RemoteCLIP-RN50" in dock.model_info.text()
    assert dock.model_path() == "" and dock.bundle is None
    with pytest.raises(ModelError) as err:
        dock._inputs()   # noqa: SLF001 (what Run and the plan build their job from)
    assert "RemoteCLIP-RN50" in err.value.problem
    row.select_entry("Local-Tiny")                       # and back: the path follows the list again
    assert dock.model_path() == str(models / "Local-Tiny")


def test_get_converts_a_checkpoint_already_in_downloads_without_the_network(dock, models, tiny_ckpt):
    """The analyst's own copy in downloads/ (no download mark): listed as downloaded, Get converts it offline."""
    import hashlib
    import shutil

    user_catalog(models, entry(url=f"http://127.0.0.1:{_closed_port()}/tiny.pt", size=tiny_ckpt.stat().st_size,
                               sha256=hashlib.sha256(tiny_ckpt.read_bytes()).hexdigest()))
    (models / "downloads").mkdir()
    shutil.copyfile(tiny_ckpt, models / "downloads" / "tiny.pt")
    row = dock.model_row
    row.refresh()
    assert _items(row)["Tiny-RS"] == "Tiny-RS · downloaded, Get converts it"
    row.select_entry("Tiny-RS")
    row.get_button.click()
    _wait(row)
    assert dock.model_path() == str(models / "Tiny-RS"), row.status.text()
    assert (models / "downloads" / "tiny.pt").is_file()


def test_convert_a_checkpoint_file_from_the_model_row(dock, models, tiny_ckpt, tmp_path):
    """The row's "Convert a checkpoint file…": the torch-free converter writes <models folder>/<file name>, which
    is then listed and selected; a second conversion to the same name is refused, the first bundle kept."""
    import shutil

    mine = tmp_path / "My-Model.pt"
    shutil.copyfile(tiny_ckpt, mine)
    row = dock.model_row
    assert "Convert a checkpoint file…" in [a.text() for a in row.more_button.menu().actions()]
    assert row.convert_file(str(mine)) is not None
    _wait(row)
    bundle = models / "My-Model"
    assert dock.model_path() == str(bundle), row.status.text()
    assert row.combo.currentText().startswith("My-Model · ") and dock.bundle is not None
    assert json.loads((bundle / "manifest.json").read_text())["source"]["tool"] == "remoteclip models convert"
    row.convert_file(str(mine))
    _wait(row)
    assert "My-Model" in row.status.text() and dock.model_path() == str(bundle)


def test_the_first_get_offline_says_the_network_is_down(dock, models, monkeypatch, tmp_path):
    """A fresh profile (onnx missing) and no network: Get's install of onnx runs the real pip against an index
    nobody answers; the row says the network is down, not pip's "no matching distribution"/conflict; and pip's
    pipe is closed (no ResourceWarning)."""
    import gc
    import warnings

    from remoteclip_qgis import deps

    monkeypatch.setattr(deps, "missing_for_conversion", lambda: ["onnx"])
    monkeypatch.setattr(deps, "deps_dir", lambda settings_dir=None: tmp_path / "deps")
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{_closed_port()}/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    for k in ("https_proxy", "HTTPS_PROXY", "PIP_PROXY", "PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL"):
        monkeypatch.delenv(k, raising=False)
    row = dock.model_row
    row.select_entry("RemoteCLIP-ViT-B-32")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert row.get() is not None and row.install_task is not None
        _wait(row)
        gc.collect()
    text = row.status.text()
    assert "network is down" in text and "127.0.0.1" in text, text
    assert "ResolutionImpossible" not in text and "Run by hand" not in text
    assert row.task is None and row.get_button.isEnabled()
    assert not [w for w in seen if issubclass(w.category, ResourceWarning)], [str(w.message) for w in seen]


def test_a_bundle_outside_the_models_folder_is_listed_chosen_and_run(dock, models, tiny_bundle, tmp_path, data_dir):
    """The path field pointing at a bundle elsewhere: the list shows it (not an empty choice), keeps it over
    Refresh, and choosing it again after another model makes it the model the job runs; a models folder set
    to a bundle folder itself lists that bundle."""
    import shutil

    from qgis.core import QgsProject, QgsRasterLayer, QgsSettings

    from remoteclip_qgis.core.runtime.bundle import DEMO_BUNDLE

    layer = QgsRasterLayer(str(data_dir / "geotiff" / "rasterio_RGB.byte.tif"), "rgb")
    QgsProject.instance().addMapLayer(layer)
    dock.layer_combo.setLayer(layer)
    elsewhere = tmp_path / "projects" / "My-Tiny"
    shutil.copytree(tiny_bundle, elsewhere)
    row = dock.model_row
    dock.model_widget.setFilePath(str(elsewhere / "manifest.json"))   # as a file dialog may leave it
    assert row.combo.currentText() == f"My-Tiny · {elsewhere.parent}"
    mine = row.combo.currentIndex()
    row.refresh()
    assert row.combo.currentIndex() == mine and row.combo.currentText().startswith("My-Tiny · ")
    demo = _items(row)["remoteclip-demo"]
    row.combo.setCurrentIndex(row.combo.findText(demo))
    row.combo.activated.emit(row.combo.currentIndex())     # the analyst picks the demo, then theirs again
    assert dock.model_path() == str(DEMO_BUNDLE)
    row.combo.setCurrentIndex(mine)
    row.combo.activated.emit(mine)
    assert dock.model_path() == str(elsewhere)
    job, _kind, _title = dock.build_job()
    assert str(getattr(job.run.model, "source", job.run.model)) == str(elsewhere)

    QgsSettings().setValue("RemoteCLIP/models_dir", str(tiny_bundle))   # the folder setting: a bundle itself
    row.refresh()
    assert f"{tiny_bundle.name} · {tiny_bundle.parent}" in [row.combo.itemText(i) for i in range(row.combo.count())]

"""The plugin's life in real QGIS: load, toolbar/menu/dock/Processing provider, unload;
loading on a Python without onnxruntime; the dependency installer's decisions and
a real pip install; diagnostics."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import require

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "remoteclip_qgis"


def _ours(window) -> list:
    from qgis.PyQt.QtWidgets import QAction

    return [a for a in window.findChildren(QAction) if "remoteclip" in (a.objectName() + a.text()).lower()]


# ------------------------------------------------------------------------------------------ lifecycle

def test_init_gui_adds_actions_dock_and_provider_and_unload_removes_them(rc, qgis_iface, qgis_new_project):
    from qgis.core import QgsApplication
    from qgis.PyQt.QtCore import QCoreApplication
    from qgis.PyQt.QtWidgets import QDockWidget

    window = qgis_iface.mainWindow()
    registry = QgsApplication.processingRegistry()
    before = len(_ours(window))
    plugin = rc.classFactory(qgis_iface)
    plugin.initGui()
    try:
        names = {a.objectName() for a in _ours(window)}
        assert {"remoteclip_dock_action", "remoteclip_diagnostics_action", "remoteclip_install_action"} <= names
        assert registry.providerById("remoteclip") is plugin.provider is not None
        assert plugin.provider.algorithms(), "the provider registered no algorithms"

        # the dock is built on the toolbar action's first click (not while QGIS starts), and shown
        window.show()
        assert [d for d in window.findChildren(QDockWidget) if d.objectName() == "RemoteClipDock"] == []
        assert not plugin.dock_action.isChecked()
        plugin.dock_action.trigger()
        docks = [d for d in window.findChildren(QDockWidget) if d.objectName() == "RemoteClipDock"]
        assert docks == [plugin.dock] and plugin.dock.isVisible() and plugin.dock_action.isChecked()
        # then the action closes and opens it, and follows it when the dock's own X closes it
        plugin.dock_action.trigger()
        assert not plugin.dock.isVisible() and not plugin.dock_action.isChecked()
        plugin.dock_action.trigger()
        assert plugin.dock.isVisible()
        plugin.dock.close()
        QCoreApplication.processEvents()
        assert not plugin.dock_action.isChecked()
    finally:
        window.hide()
        plugin.unload()
    QCoreApplication.processEvents()
    assert len(_ours(window)) == before
    assert [d for d in window.findChildren(QDockWidget) if d.objectName() == "RemoteClipDock"] == []
    assert registry.providerById("remoteclip") is None


def test_the_panel_reopens_as_the_analyst_left_it_after_a_reinstall_or_restart(rc, qgis_iface, qgis_new_project):
    """The dock is built on first use, so QGIS's own window-state restore cannot reopen it: the plugin does,
    when the analyst left it open; closing it by hand is remembered, QGIS's window closing is not."""
    from qgis.core import QgsSettings
    from qgis.PyQt.QtCore import QCoreApplication

    key = importlib.import_module(f"{rc.__name__}.plugin").DOCK_OPEN_SETTING
    window = qgis_iface.mainWindow()
    settings = QgsSettings()

    def start():
        plugin = rc.classFactory(qgis_iface)
        plugin.initGui()
        QCoreApplication.processEvents()   # the reopening waits for the event loop, as QGIS's start does
        return plugin

    settings.remove(key)
    window.show()
    try:
        first = start()
        assert first._dock is None, "a fresh profile must not build the dock at start"
        first.dock_action.trigger()
        assert first.dock.isVisible()
        first.unload()   # Reinstall from ZIP unloads the loaded plugin with its panel open

        second = start()
        assert second._dock is not None and second._dock.isVisible() and second.dock_action.isChecked()
        window.hide()    # QGIS closing: its window goes, and the panel with it
        second.unload()
        window.show()

        third = start()
        assert third._dock is not None and third._dock.isVisible()
        third.dock_action.trigger()   # the analyst closes the panel
        assert not third._dock.isVisible()
        third.unload()

        fourth = start()
        assert fourth._dock is None
        fourth.unload()
    finally:
        window.hide()
        settings.remove(key)


def test_diagnostics_names_versions_providers_gpu_and_model(rc, tiny_bundle, qgis_iface):
    import onnxruntime
    from qgis.core import Qgis
    from qgis.PyQt.QtWidgets import QApplication

    from remoteclip_qgis.diagnostics import DiagnosticsDialog, diagnostics_text

    text = diagnostics_text(str(tiny_bundle))
    assert f"QGIS: {Qgis.QGIS_VERSION}" in text
    assert f"onnxruntime: {onnxruntime.__version__}" in text
    assert "CPUExecutionProvider" in text
    import numpy

    assert f"numpy: {numpy.__version__}" in text
    assert "GPU: none" in text or "GPU: GPU 0" in text
    assert "architecture tiny-test, activation quick_gelu" in text
    assert "deps folder:" in text and "remoteclip_deps" in text
    assert "plugin: 0.1.0" in text

    dialog = DiagnosticsDialog(text)
    dialog.copy()
    assert QApplication.clipboard().text() == text
    bad = diagnostics_text(str(tiny_bundle) + "-bad")
    assert f"model bundle error: Model bundle not found: {tiny_bundle}-bad." in bad


def test_diagnostics_shows_the_embedding_cache_and_clears_it_after_asking(rc, tmp_path, monkeypatch):
    import numpy as np
    from qgis.PyQt.QtCore import QTimer
    from qgis.PyQt.QtWidgets import QApplication, QMessageBox

    from remoteclip_qgis.core.cache import EmbeddingCache
    from remoteclip_qgis.diagnostics import DiagnosticsDialog, diagnostics_text

    monkeypatch.setenv("REMOTECLIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("REMOTECLIP_CACHE_MAX", "1G")
    cache = EmbeddingCache()
    emb = np.eye(4, 8, dtype=np.float32)
    for i in range(2):
        cache.save(f"{i:064x}", np.arange(4), emb)
    (tmp_path / "cache" / "rates.json").write_text("{}")
    dialog = DiagnosticsDialog(diagnostics_text())
    line = next(ln for ln in dialog.text.toPlainText().splitlines() if ln.startswith("embedding cache:"))
    assert str(tmp_path / "cache") in line and "2 entries" in line and "of at most 1.0 GB" in line

    def answer(button):
        def click():
            box = QApplication.activeModalWidget()
            if isinstance(box, QMessageBox):
                box.button(button).click()
            else:
                QTimer.singleShot(20, click)
        QTimer.singleShot(20, click)

    answer(QMessageBox.StandardButton.No)
    assert dialog.clear_cache() is None and len(cache.entries()) == 2
    answer(QMessageBox.StandardButton.Yes)
    n, freed = dialog.clear_cache()
    assert n == 2 and freed > 0 and cache.entries() == []
    assert (tmp_path / "cache" / "rates.json").is_file()
    assert "0 entries" in dialog.text.toPlainText()


# ------------------------------------------------------------------------------- without onnxruntime

_NO_ORT = textwrap.dedent("""
    import importlib.abc, json, sys

    class NoOnnxruntime(importlib.abc.MetaPathFinder):
        # what a user's QGIS without the package looks like to every import
        def find_spec(self, name, path=None, target=None):
            if name == "onnxruntime" or name.startswith("onnxruntime."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoOnnxruntime())
    plugins, scripts = sys.argv[1], sys.argv[2]
    sys.path.insert(0, scripts)

    from qgis.core import QgsApplication
    app = QgsApplication([], True)
    app.initQgis()
    import qgis.utils
    from qgis_window import QgisWindow

    iface = QgisWindow()
    qgis.utils.iface = iface
    qgis.utils.plugin_paths[:] = [plugins]
    sys.path.insert(0, plugins)
    qgis.utils.updateAvailablePlugins()
    import remoteclip_qgis.deps as deps
    plans, make_plan = [], deps.make_plan
    deps.make_plan = lambda *a, **k: plans.append(1) or make_plan(*a, **k)
    out = {"loaded": qgis.utils.loadPlugin("remoteclip_qgis"), "started": qgis.utils.startPlugin("remoteclip_qgis")}
    plugin = qgis.utils.plugins["remoteclip_qgis"]
    dock = plugin.dock
    out["plans_at_start"] = len(plans)   # no Python started, no nvidia-smi asked while QGIS starts
    out["missing"] = plugin.missing
    out["bar"] = [item.text() for item in iface.bar.items()]
    out["command_before_shown"] = dock.manual_edit.text()
    iface.mainWindow().show()
    dock.setUserVisible(True)   # the analyst opens the panel
    app.processEvents()
    out["plans_when_shown"] = len(plans)
    out["banner_shown"] = dock.banner.isVisibleTo(dock)
    out["banner"] = dock.banner_label.text() + " | " + dock.manual_edit.text()
    out["run_enabled"] = dock.run_button.isEnabled()
    out["task"] = repr(dock.run())
    out["status"] = dock.status.text()
    out["provider"] = QgsApplication.processingRegistry().providerById("remoteclip") is not None
    out["ort_imported"] = any(m == "onnxruntime" or m.startswith("onnxruntime.") for m in sys.modules)
    out["unloaded"] = qgis.utils.unloadPlugin("remoteclip_qgis")
    print("RESULT " + json.dumps(out))
    app.exitQgis()
""")


def test_plugin_starts_without_onnxruntime_and_says_how_to_get_it(built_plugin, tmp_path):
    script = tmp_path / "no_ort.py"
    script.write_text(_NO_ORT, encoding="utf-8")
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", QGIS_CUSTOM_CONFIG_PATH=str(tmp_path / "profile"))
    done = subprocess.run([sys.executable, str(script), str(built_plugin), str(ROOT / "scripts")],
                          capture_output=True, text=True, env=env, timeout=300)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["loaded"] and out["started"] and out["unloaded"]
    assert out["missing"] == ["onnxruntime"]
    assert out["plans_at_start"] == 0 and out["command_before_shown"] == "" and out["plans_when_shown"] == 1
    assert any("onnxruntime" in t and "Install" in t for t in out["bar"]), out["bar"]
    assert out["banner_shown"] and "onnxruntime" in out["banner"] and "pip" in out["banner"]
    assert "numpy==" in out["banner"], "the manual command must keep QGIS's numpy"
    assert not out["run_enabled"]
    assert out["task"] == "None" and "onnxruntime" in out["status"]
    assert out["provider"], "the Processing provider must load without onnxruntime too"
    assert not out["ort_imported"]


# --------------------------------------------------------------------------------------- installer

SMI_GPU = "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0f0e)\n"


def test_gpu_choice_follows_nvidia_smi(rc):
    from remoteclip_qgis import deps

    assert deps.onnxruntime_package(SMI_GPU, "linux") == "onnxruntime-gpu"
    assert deps.onnxruntime_package(SMI_GPU, "win32") == "onnxruntime-gpu"
    assert deps.onnxruntime_package(SMI_GPU, "darwin") == "onnxruntime"   # no CUDA wheels for macOS
    assert deps.onnxruntime_package(None, "linux") == "onnxruntime"
    assert deps.onnxruntime_package("No devices found.\n", "linux") == "onnxruntime"
    # this machine: the decision agrees with what nvidia-smi says here
    smi = deps.nvidia_smi_output()
    assert deps.gpu_usable(smi) == (smi is not None and "GPU 0" in smi)


PINS = {"onnxruntime": "1.31.1", "ftfy": "6.3.1", "regex": "2026.11.15", "onnx": "1.23.2", "wcwidth": "0.9.4"}


def test_install_plan_pins_the_lock_and_qgis_numpy_and_falls_back_to_cpu_onnxruntime(rc, tmp_path):
    from remoteclip_qgis import deps

    target = tmp_path / "python" / "remoteclip_deps"
    plan = deps.InstallPlan("/usr/bin/python3", target, ["regex", "onnxruntime"], SMI_GPU, "1.24.2", "linux", PINS)
    assert plan.missing == ["onnxruntime", "regex"]
    first, second = plan.commands
    assert first[:4] == ["/usr/bin/python3", "-m", "pip", "install"]
    assert first[first.index("--target") + 1] == str(target)
    assert first[first.index("--constraint") + 1] == str(plan.constraint_file)
    # the GPU build takes the CPU build's version: they are released together
    assert first[-2:] == ["onnxruntime-gpu==1.31.1", "regex==2026.11.15"]
    assert second[-2:] == ["onnxruntime==1.31.1", "regex==2026.11.15"]
    manual = plan.manual_command()
    assert manual.startswith("/usr/bin/python3 -m pip install")
    assert manual.endswith("onnxruntime==1.31.1 regex==2026.11.15 numpy==1.24.2")
    assert "--constraint" not in manual
    plan.prepare()
    # QGIS's numpy, then the lock for what the packages pull in (ftfy's wcwidth)
    assert target.is_dir() and plan.constraint_file.read_text().splitlines() == [
        "numpy==1.24.2", "ftfy==6.3.1", "onnx==1.23.2", "onnxruntime==1.31.1", "regex==2026.11.15", "wcwidth==0.9.4"]

    cpu = deps.InstallPlan("python3", target, ["onnxruntime", "ftfy", "regex"], None, "1.24.2", "linux", PINS)
    assert len(cpu.commands) == 1
    assert cpu.commands[0][-3:] == ["onnxruntime==1.31.1", "ftfy==6.3.1", "regex==2026.11.15"]
    assert deps.InstallPlan("python3", target, [], None, "1.24.2").commands == []
    # a package the lock does not list goes unpinned rather than not at all
    assert deps.InstallPlan("python3", target, ["ftfy"], None, None, "linux", {}).commands[0][-1] == "ftfy"
    # Windows: the command a user pastes into cmd.exe quotes paths with spaces
    win = deps.InstallPlan(r"C:\Program Files\QGIS 3.22\apps\Python39\python.exe",
                           r"C:\Users\a b\AppData\Roaming\QGIS\QGIS3\profiles\default\python\remoteclip_deps",
                           ["ftfy"], None, "1.22.1", "win32", PINS)
    assert win.manual_command().startswith('"C:\\Program Files\\QGIS 3.22\\apps\\Python39\\python.exe" -m pip')


def test_pins_come_from_the_lock_file_shipped_in_the_plugin(rc, built_plugin):
    """One source of versions: this QGIS's pin set (requirements/lock.txt on 3.22), copied into the plugin by
    scripts/package.py."""
    from remoteclip_qgis import deps

    shipped = built_plugin / "remoteclip_qgis" / "requirements" / deps.pin_set()
    assert deps.lock_file() == shipped.resolve()
    assert shipped.read_bytes() == (ROOT / "requirements" / deps.pin_set()).read_bytes()
    pins = deps.read_pins()
    lock = {ln.split("==")[0].lower(): ln.split("==")[1] for ln in shipped.read_text().splitlines() if "==" in ln}
    for module in deps.PACKAGES:   # every package the installer may install has its pin
        assert deps.requirements("onnxruntime", [module]) == [f"{deps.PACKAGES[module]}=={lock[module]}"]
    assert deps.pinned("onnxruntime-gpu", pins) == f"onnxruntime-gpu=={lock['onnxruntime']}"
    assert deps.pinned("Typing.Extensions", pins) == f"Typing.Extensions=={lock['typing_extensions']}"


def _leg_pins(files: list[str]) -> dict[str, str]:
    """name -> version pinned by a leg's pip constraint files (the later file wins, as pip's -c order has
    no say: these legs' files never pin one package twice with two versions)."""
    pins = {}
    for name in files:
        for line in (ROOT / name).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if "==" in line:
                project, version = line.split("==", 1)
                pins[re.sub(r"[-_.]+", "-", project.strip()).lower()] = version.strip()
    return pins


def _test_legs() -> dict[str, list[str]]:
    """QGIS version -> the constraint files that leg's environment is installed with, read from the scripts
    that make them: scripts/setup.sh (the host, QGIS 3.22) and scripts/qgis_matrix.sh (the other legs)."""
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    host = re.search(r"^constraints=(requirements/constraints-qgis-([\d.]+)\.txt)$", setup, re.M)
    assert host and "-c requirements/lock.txt" in setup, "scripts/setup.sh no longer reads as expected"
    legs = {host.group(2): ["requirements/lock.txt", host.group(1)]}
    matrix = (ROOT / "scripts" / "qgis_matrix.sh").read_text()
    pattern = re.search(r"^CONSTRAINTS=(requirements/constraints-qgis-)\$LEG(\.txt)$", matrix, re.M)
    assert pattern, "scripts/qgis_matrix.sh no longer reads as expected"
    for leg in re.findall(r"^\s+([\d.]+)\) SUITE=", matrix, re.M):
        legs[leg] = [pattern.group(1) + leg + pattern.group(2)]
    return legs


def test_the_installer_pins_what_the_test_leg_of_the_running_qgis_installs(rc, tmp_path):
    """Per QGIS leg (3.22 on the host, 3.40 and 3.44 in the matrix): the installer's requirements (the
    packages it may install, onnxruntime among them) are the versions that leg's environment is installed
    with, from the pin set shipped in the plugin; and on the QGIS running this test, the versions installed
    here."""
    from importlib.metadata import version

    from qgis.core import Qgis

    from remoteclip_qgis import deps

    legs = _test_legs()
    assert set(legs) >= {"3.22", "3.40", "3.44"}, legs
    for leg, files in legs.items():
        major, minor = (int(x) for x in leg.split("."))
        for qgis_version in (major * 10000 + minor * 100, major * 10000 + minor * 100 + 99):   # any point release
            pins = deps.read_pins(deps.lock_file(qgis_version))
            assert str(deps.lock_file(qgis_version)).startswith(str(Path(rc.__file__).parent))   # shipped
            got = deps.requirements("onnxruntime", list(deps.PACKAGES), pins)
            want = _leg_pins(files)
            assert got == [f"{deps.PACKAGES[m]}=={want[m]}" for m in deps.PACKAGES], (leg, got)
    assert deps.requirements("onnxruntime", ["onnxruntime"], deps.read_pins(deps.lock_file(34000))) \
        == ["onnxruntime==1.32.0"]   # the case of issue 25: 3.40 is tested with 1.32.0, not the lock's 1.31.1
    # this QGIS: what the plan installs is what this test environment has
    running = f"{Qgis.QGIS_VERSION_INT // 10000}.{Qgis.QGIS_VERSION_INT // 100 % 100}"
    plan = deps.InstallPlan("python3", tmp_path / "deps", list(deps.PACKAGES), None, None, "linux")
    assert plan.attempts[0][0] == [f"{deps.PACKAGES[m]}=={version(deps.PACKAGES[m])}" for m in deps.PACKAGES], running


def test_find_python_takes_qgis_interpreter_by_each_platforms_conventions(rc):
    from remoteclip_qgis import deps

    def exists(*present):
        return lambda p: p in present

    yes = lambda p: True   # noqa: E731 (every candidate is this interpreter)
    v = f"{sys.version_info.major}.{sys.version_info.minor}"
    # Linux: sys.executable is what PATH found for python3 (a pyenv shim here); QGIS's is under its prefix
    got = deps.find_python("/root/.pyenv/shims/python3", "/usr", "linux", probe=yes, base_executable="",
                           exists=exists(f"/usr/bin/python{v}", "/usr/bin/python3", "/root/.pyenv/shims/python3"))
    assert got == f"/usr/bin/python{v}"
    # Windows OSGeo4W/standalone QGIS: sys.executable is qgis-bin.exe, python.exe sits in sys.exec_prefix
    prefix = r"C:\Program Files\QGIS 3.22\apps\Python39"
    got = deps.find_python(r"C:\Program Files\QGIS 3.22\bin\qgis-bin.exe", prefix, "win32", probe=yes,
                           exists=exists(os.path.join(prefix, "python.exe")), base_executable="")
    assert got == os.path.join(prefix, "python.exe")
    got = deps.find_python(r"C:\QGIS\bin\qgis-bin.exe", prefix, "win32", probe=yes, base_executable="",
                           exists=exists(os.path.join(prefix, "python3.exe")))
    assert got == os.path.join(prefix, "python3.exe")
    # macOS bundle: the QGIS binary; the bundle's bin/python3 first, else the framework's
    mac_prefix = "/Applications/QGIS.app/Contents/Frameworks/Python.framework/Versions/Current"
    exe = "/Applications/QGIS.app/Contents/MacOS/QGIS"
    got = deps.find_python(exe, mac_prefix, "darwin", probe=yes, base_executable="",
                           exists=exists("/Applications/QGIS.app/Contents/MacOS/bin/python3", f"{mac_prefix}/bin/python{v}"))
    assert got == "/Applications/QGIS.app/Contents/MacOS/bin/python3"
    got = deps.find_python(exe, mac_prefix, "darwin", probe=yes, base_executable="",
                           exists=exists(f"{mac_prefix}/bin/python{v}"))
    assert got == f"{mac_prefix}/bin/python{v}"
    # a candidate that is another Python (the probe says so) is passed over; sys.executable comes last
    got = deps.find_python("/venv/bin/python", "/usr", "linux", base_executable="",
                           exists=exists(f"/usr/bin/python{v}", "/venv/bin/python"),
                           probe=lambda p: p == "/venv/bin/python")
    assert got == "/venv/bin/python"
    # never the PATH's python: nothing that is QGIS's is an error naming where it looked
    with pytest.raises(FileNotFoundError) as err:
        deps.find_python("/opt/qgis/bin/qgis", "/opt/qgis", "linux", exists=exists(), probe=yes, base_executable="")
    assert f"/opt/qgis/bin/python{v}" in str(err.value)   # where it looked (a built-in error: its message)
    with pytest.raises(FileNotFoundError):
        deps.find_python("/usr/bin/python3", "/usr", "linux", exists=exists("/usr/bin/python3"), base_executable="",
                         probe=lambda p: False)


def test_the_probe_tells_this_interpreter_from_another_python(rc, tmp_path):
    """A real run of each candidate: this interpreter passes, a script named python3 does not, and another
    installation of the same version (pyenv's, where present) does not either."""
    from remoteclip_qgis import deps

    assert deps.probe_python(sys.executable)[:2] == sys.version_info[:2]
    assert deps.find_python(sys.executable, sys.exec_prefix, sys.platform) in deps.python_candidates(
        sys.executable, sys.exec_prefix, sys.platform, getattr(sys, "_base_executable", ""))
    fake = tmp_path / "python3"
    fake.write_text("#!/bin/sh\necho 3 11\necho /elsewhere\n")
    fake.chmod(0o755)
    assert deps.probe_python(str(fake)) == (3, 11, "/elsewhere")
    with pytest.raises(FileNotFoundError):
        deps.find_python(str(fake), str(tmp_path), "linux", base_executable="")


def _fake_python(folder: Path, log: Path) -> Path:
    """A ``python3`` first on PATH that records each call and fails, as a broken shim would."""
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "python3"
    exe.write_text(f"#!/bin/sh\necho \"$0 $*\" >> {log}\necho 'fake python3: not QGIS\\'s interpreter' >&2\nexit 1\n")
    exe.chmod(0o755)
    return exe


def test_in_real_qgis_with_another_python3_first_on_path_the_installer_uses_qgis_own(built_plugin, tmp_path):
    """The QGIS application started with a fake python3 first on PATH (sys.executable then names it): the
    plan, the banner's manual command and a real pip install all use QGIS's interpreter; the fake is never
    run."""
    from qgis_app import qgis_program, run_in_qgis

    require(qgis_program() is not None, "the qgis program is not installed")
    log = tmp_path / "fake-python-calls.log"
    fake = _fake_python(tmp_path / "fakebin", log)
    target = tmp_path / "deps"
    out = run_in_qgis(built_plugin, tmp_path / "qgis", f"""
        import sys
        from remoteclip_qgis import deps
        plan = deps.make_plan(["ftfy"], target=__import__("pathlib").Path({str(target)!r}))
        ok, summary = deps.run_plan(plan, log=lambda line: None)
        plugin.dock.setUserVisible(True)   # the banner's command is worked out when the panel opens
        from qgis.PyQt.QtWidgets import QApplication
        QApplication.processEvents()
        report(executable=sys.executable, python=plan.python, manual=plan.manual_command(), ok=ok, summary=summary,
               banner=plugin.dock.banner_label.text() + plugin.dock.manual_edit.text())
    """, env={"PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}"})
    assert "error" not in out, out["error"]
    assert out["executable"] == str(fake), "QGIS did not see the fake python3 as sys.executable"
    qgis_python = os.path.realpath(out["python"])
    assert out["python"] != str(fake) and os.path.realpath("/usr/bin/python3") == qgis_python
    assert out["manual"].startswith(out["python"] + " -m pip install")
    assert str(fake) not in out["banner"] and out["python"] in out["banner"]
    assert out["ok"], out["summary"]
    assert (target / "ftfy" / "__init__.py").is_file() and "ftfy==" in out["manual"]
    assert not log.exists(), f"the fake python3 was run: {log.read_text()}"


def test_deps_folder_lives_in_the_profile_and_is_appended_once(rc, tmp_path):
    from qgis.core import QgsApplication

    from remoteclip_qgis import deps

    assert deps.deps_dir() == Path(QgsApplication.qgisSettingsDirPath()) / "python" / "remoteclip_deps"
    folder = tmp_path / "remoteclip_deps"
    path = ["/a", "/b"]
    assert not deps.add_deps_to_path(folder, path) and path == ["/a", "/b"]
    folder.mkdir()
    assert deps.add_deps_to_path(folder, path) and deps.add_deps_to_path(folder, path)
    assert path == ["/a", "/b", str(folder)], "appended after QGIS's own packages, and only once"


def test_prune_removes_only_numpy_from_the_target(rc, tmp_path):
    from remoteclip_qgis import deps

    for d in ("numpy", "numpy.libs", "numpy-1.24.2.dist-info", "onnxruntime", "numpy_helper", "bin"):
        (tmp_path / d).mkdir()
    (tmp_path / "bin" / "f2py").write_text("#!")
    (tmp_path / "bin" / "onnxruntime_test").write_text("#!")
    removed = deps.prune_numpy(tmp_path)
    assert sorted(removed) == ["numpy", "numpy-1.24.2.dist-info", "numpy.libs"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "numpy_helper", "onnxruntime"]
    assert [p.name for p in (tmp_path / "bin").iterdir()] == ["onnxruntime_test"]


def test_real_pip_install_into_a_private_target(rc, tmp_path):
    """ftfy (+ wcwidth) from PyPI into a fresh target, through the same run_plan the installer task uses."""
    from remoteclip_qgis import deps

    target = tmp_path / "python" / "remoteclip_deps"
    plan = deps.InstallPlan(sys.executable, target, ["ftfy"], None, deps.numpy_version())
    lines: list[str] = []
    path_before = list(sys.path)
    try:
        ok, summary = deps.run_plan(plan, log=lines.append)
        assert ok, summary + "\n" + "\n".join(lines[-20:])
        assert (target / "ftfy" / "__init__.py").is_file()
        assert any(p.name.startswith("wcwidth") for p in target.iterdir())
        assert not (target / "numpy").exists()
        assert lines[0].startswith("Running: ") and "--target" in lines[0]
        assert sys.path[-1] == str(target)
    finally:
        sys.path[:] = path_before


def test_install_task_runs_in_the_task_manager_and_logs_pip(rc, tmp_path):
    """The installer as the dock starts it: a QgsTask, pip's lines in the log panel (tag RemoteCLIP)."""
    import time

    from qgis.core import QgsApplication
    from qgis.PyQt.QtCore import QCoreApplication

    from remoteclip_qgis import deps

    logged: list[str] = []

    def on_log(message, tag, _level):
        if tag == "RemoteCLIP":
            logged.append(message)

    QgsApplication.messageLog().messageReceived.connect(on_log)
    target = tmp_path / "python" / "remoteclip_deps"
    task = deps.InstallTask(deps.InstallPlan(sys.executable, target, ["ftfy"], None, deps.numpy_version()))
    done: list[tuple] = []
    task.done.connect(lambda ok, summary, manual: done.append((ok, summary, manual)))
    path_before = list(sys.path)
    try:
        QgsApplication.taskManager().addTask(task)
        deadline = time.monotonic() + 300
        while not done:
            assert time.monotonic() < deadline, "the install task did not finish"
            QCoreApplication.processEvents()
            time.sleep(0.02)
    finally:
        sys.path[:] = path_before
        QgsApplication.messageLog().messageReceived.disconnect(on_log)
    ok, summary, manual = done[0]
    assert ok, summary
    assert summary.startswith("installed ftfy==6.3.1 into") and (target / "ftfy").is_dir()
    assert any(m.startswith("Running: ") and "pip install" in m for m in logged)
    assert any("Successfully installed" in m for m in logged)
    assert "pip install" in manual and "ftfy" in manual


def test_failed_install_reports_the_command_to_run_by_hand(rc, tmp_path):
    from remoteclip_qgis import deps

    # pip itself fails (no such project on PyPI)
    plan = deps.InstallPlan(sys.executable, tmp_path / "t", ["ftfy"], None, "1.24.2")
    bogus = "remoteclip-qgis-no-such-package-4f2a9c"
    plan.attempts = [([bogus], deps.install_command(sys.executable, plan.target, [bogus], plan.constraint_file))]
    lines: list[str] = []
    ok, summary = deps.run_plan(plan, log=lines.append)
    assert not ok and "pip exited with code" in summary
    assert plan.manual_command().endswith(f"{bogus} numpy==1.24.2")
    # the interpreter cannot even start
    plan = deps.InstallPlan(str(tmp_path / "no-python"), tmp_path / "t", ["ftfy"], None, "1.24.2")
    ok, summary = deps.run_plan(plan, log=lines.append)
    assert not ok and "could not start" in summary
    assert plan.manual_command().startswith(str(tmp_path / "no-python") + " -m pip install")


# ------------------------------------------------------------------------------------ the task registry

def test_every_parameter_kind_has_an_adapter_in_each_front_end(rc):
    """The command line, the dock's forms and Processing each map a core.tasks.Param kind to its adapter in one
    table; a kind declared in core.tasks without an adapter in each of them fails here."""
    from remoteclip_qgis.core.cli import _OPTIONS
    from remoteclip_qgis.core.tasks import PARAM_KINDS, TASKS
    from remoteclip_qgis.processing.parameters import PARAMETERS
    from remoteclip_qgis.task_forms import INPUTS

    assert {p.kind for cls in TASKS.values() for p in cls.params} <= set(PARAM_KINDS)
    for name, table in (("core.cli._OPTIONS", _OPTIONS), ("task_forms.INPUTS", INPUTS),
                        ("processing.parameters.PARAMETERS", PARAMETERS)):
        assert set(table) == set(PARAM_KINDS), (name, sorted(set(PARAM_KINDS) ^ set(table)))


def test_a_task_form_starts_with_the_task_s_own_templates(rc):
    """The templates box holds what the task class declares (``default_templates``), whatever its kind."""
    from dataclasses import dataclass
    from typing import ClassVar

    from remoteclip_qgis.core.prompts import COUNT_TEMPLATES, DEFAULT_TEMPLATES
    from remoteclip_qgis.core.tasks import CountTask, LabelTask, Param, Task
    from remoteclip_qgis.task_forms import TaskForm

    @dataclass
    class CaptionTask(Task):
        templates: list | None = None

        kind: ClassVar[str] = "caption"
        default_templates: ClassVar[tuple] = ("an aerial photo of {}.", "{} seen from above.")
        params: ClassVar[tuple] = (Param("templates", "templates", "Templates", optional=True),)

    forms = [TaskForm(cls) for cls in (CaptionTask, CountTask, LabelTask)]
    try:
        assert [f.widgets["templates"].toPlainText() for f in forms] == [
            "an aerial photo of {}.\n{} seen from above.", "\n".join(COUNT_TEMPLATES), "\n".join(DEFAULT_TEMPLATES)]
    finally:
        for f in forms:
            f.deleteLater()


def test_a_task_form_reads_each_input_by_its_kind(rc):
    """What the forms hand to Task.from_inputs, set away from the defaults: a file path trimmed, a number, a
    choice, no layer as None, a field read only with its samples, an optional number at its bottom as None."""
    from remoteclip_qgis.core.errors import InvalidInput
    from remoteclip_qgis.core.prompts import DEFAULT_TEMPLATES
    from remoteclip_qgis.core.tasks import ClassifyTask, SearchTask
    from remoteclip_qgis.task_forms import TaskForm

    classify, search = TaskForm(ClassifyTask), TaskForm(SearchTask)
    try:
        classify.widgets["head"].setFilePath("  /maps/head.json ")
        classify.widgets["suggest"].setValue(7)
        classify.widgets["method"].setCurrentText("knn")
        assert classify.raw() == {"samples": None, "head": "/maps/head.json", "head_out": None, "suggest": 7,
                                  "method": "knn", "k": 5, "templates": "\n".join(DEFAULT_TEMPLATES)}
        search.widgets["query"].setText(" a pool ")
        search.widgets["top_k"].setValue(search.widgets["top_k"].minimum())   # reads "all"
        search.widgets["threshold"].setValue(0.25)
        assert search.raw() == {"query": "a pool", "like": None, "unlike": None, "like_images": None,
                                "unlike_images": None, "top_k": None, "threshold": 0.25, "stand_out": 1.0,
                                "text_weight": 1.0, "unlike_weight": 0.5}
        assert search.task().top_k is None and search.task().threshold == 0.25
        search.widgets["query"].setText("  ")
        with pytest.raises(InvalidInput) as err:
            search.task()
        assert err.value.param == "query"
        assert search.errors["query"].text().startswith(err.value.problem)   # shown under the query
    finally:
        classify.deleteLater()
        search.deleteLater()

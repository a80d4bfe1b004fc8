"""The plugin's life in real QGIS: load, toolbar/menu/dock/Processing provider, unload;
loading on a Python without onnxruntime; the dependency installer's decisions and
a real pip install; diagnostics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

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
        docks = [d for d in window.findChildren(QDockWidget) if d.objectName() == "RemoteClipDock"]
        assert docks == [plugin.dock]
        assert registry.providerById("remoteclip") is plugin.provider is not None
        assert plugin.provider.algorithms(), "the provider registered no algorithms"

        # the toolbar action opens and closes the dock, and follows it when the dock's own X closes it
        window.show()
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
    out = {"loaded": qgis.utils.loadPlugin("remoteclip_qgis"), "started": qgis.utils.startPlugin("remoteclip_qgis")}
    plugin = qgis.utils.plugins["remoteclip_qgis"]
    dock = plugin.dock
    out["missing"] = plugin.missing
    out["bar"] = [item.text() for item in iface.bar.items()]
    out["banner_shown"] = dock.banner.isVisibleTo(dock)
    out["banner"] = dock.banner_label.text()
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


def test_install_plan_pins_qgis_numpy_and_falls_back_to_cpu_onnxruntime(rc, tmp_path):
    from remoteclip_qgis import deps

    target = tmp_path / "python" / "remoteclip_deps"
    plan = deps.InstallPlan("/usr/bin/python3", target, ["regex", "onnxruntime"], SMI_GPU, "1.24.2", "linux")
    assert plan.missing == ["onnxruntime", "regex"]
    first, second = plan.commands
    assert first[:4] == ["/usr/bin/python3", "-m", "pip", "install"]
    assert first[first.index("--target") + 1] == str(target)
    assert first[first.index("--constraint") + 1] == str(plan.constraint_file)
    assert first[-2:] == ["onnxruntime-gpu", "regex"] and second[-2:] == ["onnxruntime", "regex"]
    manual = plan.manual_command()
    assert manual.startswith("/usr/bin/python3 -m pip install") and manual.endswith("onnxruntime regex numpy==1.24.2")
    assert "--constraint" not in manual
    plan.prepare()
    assert target.is_dir() and plan.constraint_file.read_text() == "numpy==1.24.2\n"

    cpu = deps.InstallPlan("python3", target, ["onnxruntime", "ftfy", "regex"], None, "1.24.2", "linux")
    assert len(cpu.commands) == 1 and cpu.commands[0][-3:] == ["onnxruntime", "ftfy", "regex"]
    assert deps.InstallPlan("python3", target, [], None, "1.24.2").commands == []
    # Windows: the command a user pastes into cmd.exe quotes paths with spaces
    win = deps.InstallPlan(r"C:\Program Files\QGIS 3.22\apps\Python39\python.exe",
                           r"C:\Users\a b\AppData\Roaming\QGIS\QGIS3\profiles\default\python\remoteclip_deps",
                           ["ftfy"], None, "1.22.1", "win32")
    assert win.manual_command().startswith('"C:\\Program Files\\QGIS 3.22\\apps\\Python39\\python.exe" -m pip')


def test_find_python_when_sys_executable_is_qgis(rc):
    from remoteclip_qgis import deps

    def exists(*present):
        return lambda p: p in present

    # plain Python (this test run, Linux QGIS): sys.executable is python
    assert deps.find_python("/usr/bin/python3", "/usr", "linux") == "/usr/bin/python3"
    # Windows OSGeo4W/standalone QGIS: sys.executable is qgis-bin.exe, python.exe sits in sys.exec_prefix
    prefix = r"C:\Program Files\QGIS 3.22\apps\Python39"
    got = deps.find_python(r"C:\Program Files\QGIS 3.22\bin\qgis-bin.exe", prefix, "win32",
                           exists=exists(os.path.join(prefix, "python.exe")), which=lambda n: None)
    assert got == os.path.join(prefix, "python.exe")
    got = deps.find_python(r"C:\QGIS\bin\qgis-bin.exe", prefix, "win32",
                           exists=exists(os.path.join(prefix, "python3.exe")), which=lambda n: None)
    assert got == os.path.join(prefix, "python3.exe")
    # macOS bundle: the QGIS binary, python3 under the bundle's prefix
    mac_prefix = "/Applications/QGIS.app/Contents/Frameworks/Python.framework/Versions/Current"
    v = f"{sys.version_info.major}.{sys.version_info.minor}"
    got = deps.find_python("/Applications/QGIS.app/Contents/MacOS/QGIS", mac_prefix, "darwin",
                           exists=exists(f"{mac_prefix}/bin/python{v}"), which=lambda n: None)
    assert got == f"{mac_prefix}/bin/python{v}"
    # nothing next to it: the PATH's python3
    assert deps.find_python("/opt/qgis/bin/qgis", "/opt/qgis", "linux", exists=exists(),
                            which=lambda n: "/usr/bin/python3" if n == "python3" else None) == "/usr/bin/python3"
    with pytest.raises(FileNotFoundError):
        deps.find_python("/opt/qgis/bin/qgis", "/opt/qgis", "linux", exists=exists(), which=lambda n: None)


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
    assert summary.startswith("installed ftfy into") and (target / "ftfy").is_dir()
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

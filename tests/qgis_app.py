"""Run the real QGIS desktop application (the ``qgis`` program, under xvfb) on a fresh profile with the
plugin installed and enabled, run a piece of Python inside it once QGIS is up (``qgis --code``), and
return what that code reported.

    out = run_in_qgis(built_plugin, tmp_path, '''
        report(visible=plugin.dock_action.associatedWidgets()[0].isVisible())
    ''')

The code sees ``iface``, ``plugin`` (the loaded plugin's instance, None when it did not start),
``report(**values)`` (JSON-able values, merged) and ``TESTS`` (this folder, for helpers). QGIS exits as
soon as the code has run; an exception inside it comes back as ``out["error"]`` with its traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

TESTS = Path(__file__).resolve().parent
PLUGIN = "remoteclip_qgis"

_WRAPPER = '''
import json, os, sys, traceback
sys.path.insert(0, {tests!r})
_out = {{}}
def report(**values):
    _out.update(values)
try:
    import qgis.utils
    from qgis.utils import iface
    from qgis.PyQt.QtCore import QCoreApplication
    for _ in range(20):   # let the main window settle (docks, toolbars) before looking
        QCoreApplication.processEvents()
    plugin = qgis.utils.plugins.get({plugin!r})
    TESTS = {tests!r}
{body}
except BaseException:
    _out["error"] = traceback.format_exc()
with open({result!r}, "w", encoding="utf-8") as _f:
    json.dump(_out, _f)
os._exit(0)   # no shutdown: the profile is thrown away, and exit paths differ between QGIS builds
'''


def qgis_program() -> str | None:
    return shutil.which("qgis")


def fresh_profile(root: Path, plugin_folder: Path | None, settings: dict[str, dict[str, str]] | None = None) -> Path:
    """``root`` as QGIS's --profiles-path: profile ``default`` with the plugin copied into its python/plugins
    and enabled (what Plugins > Install from ZIP leaves behind), plus ``settings`` ({section: {key: value}})
    in QGIS3.ini."""
    profile = root / "profiles" / "default"
    (profile / "python" / "plugins").mkdir(parents=True, exist_ok=True)
    (profile / "QGIS").mkdir(parents=True, exist_ok=True)
    sections = {"PythonPlugins": {}}
    if plugin_folder is not None:
        shutil.copytree(plugin_folder / PLUGIN, profile / "python" / "plugins" / PLUGIN)
        sections["PythonPlugins"][PLUGIN] = "true"
    for section, values in (settings or {}).items():
        sections.setdefault(section, {}).update(values)
    text = "".join(f"[{s}]\n" + "".join(f"{k}={v}\n" for k, v in values.items()) + "\n"
                   for s, values in sections.items())
    (profile / "QGIS" / "QGIS3.ini").write_text(text, encoding="utf-8")
    return root


def run_in_qgis(plugin_folder: Path | None, work: Path, code: str, env: dict[str, str] | None = None,
                settings: dict[str, dict[str, str]] | None = None, timeout: float = 300) -> dict:
    """Start ``qgis`` on a fresh profile in ``work`` (plugin from ``plugin_folder``/remoteclip_qgis, the
    folder built by scripts/package.py), run ``code`` inside it, return its report."""
    exe = qgis_program()
    if exe is None:
        raise FileNotFoundError("the qgis program is not installed")
    work.mkdir(parents=True, exist_ok=True)
    profiles = fresh_profile(work / "profiles", plugin_folder, settings)
    result = work / "qgis_result.json"
    script = work / "qgis_code.py"
    script.write_text(_WRAPPER.format(tests=str(TESTS), plugin=PLUGIN, result=str(result),
                                      body=textwrap.indent(textwrap.dedent(code), "    ")), encoding="utf-8")
    full_env = dict(os.environ, **(env or {}))
    full_env.pop("QT_QPA_PLATFORM", None)   # a real X display (xvfb), as a user has
    full_env.pop("QGIS_CUSTOM_CONFIG_PATH", None)
    cmd = [exe, "--profiles-path", str(profiles), "--nologo", "--noversioncheck", "--code", str(script)]
    if shutil.which("xvfb-run") and not full_env.get("DISPLAY"):
        cmd = ["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24", *cmd]
    done = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if not result.is_file():
        raise RuntimeError(f"QGIS exited ({done.returncode}) without running the code:\n"
                           f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    out = json.loads(result.read_text(encoding="utf-8"))
    out.setdefault("log", done.stderr[-3000:])
    return out

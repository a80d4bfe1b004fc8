"""Start the plugin as QGIS does at start-up, in this fresh Python, and say what that cost.

    QT_QPA_PLATFORM=offscreen python scripts/plugin_load.py PLUGINS_FOLDER

PLUGINS_FOLDER holds remoteclip_qgis/ (scripts/package.py --folder-only). A real QgsApplication and a
small real main window (scripts/qgis_window.py) stand in for QGIS; qgis.utils.loadPlugin and startPlugin
load the plugin, and startPlugin's own timer (qgis.utils.plugin_times: the process time of classFactory
and initGui, what QGIS's plugin manager shows) gives the figure. Prints one line ``RESULT {json}``:
``seconds`` (that timer), ``wall`` (the same span on the wall clock), ``started``, and ``modules``: the
modules that were not imported before and are after (sorted).

Used by tests/test_plugin_load.py (which modules; tests never time) and bench/bench_plugin_load.py (how long).
"""

from __future__ import annotations

import json
import os
import sys
import time


def main(plugins: str) -> dict:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
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
    before = set(sys.modules)
    t0 = time.perf_counter()
    started = qgis.utils.loadPlugin("remoteclip_qgis") and qgis.utils.startPlugin("remoteclip_qgis")
    wall = time.perf_counter() - t0
    seconds = float(qgis.utils.plugin_times.get("remoteclip_qgis", "nan").rstrip("s"))
    return {"started": bool(started), "seconds": seconds, "wall": wall,
            "modules": sorted(set(sys.modules) - before)}


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1])), flush=True)
    os._exit(0)   # no shutdown: nothing is kept, and QGIS's exit paths differ between builds

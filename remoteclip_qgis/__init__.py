"""RemoteCLIP for QGIS: zero-shot labels, object counts and text search on raster tiles.

Only light modules are imported here: the plugin must load (and say what is
missing) on a QGIS without onnxruntime.
"""


def classFactory(iface):  # noqa: N802 (QGIS's name)
    # QGIS passes qgis.utils.iface, which the plugin reads itself (flake8-qgis QGS105)
    from .plugin import RemoteClipPlugin

    return RemoteClipPlugin()

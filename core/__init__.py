"""RemoteCLIP core: tiles, raster reading, preprocessing, tokenizer, ONNX inference,
labeling, counting, search, embedding cache and vector output.

Never imports qgis or torch. Inside the QGIS plugin this package is vendored as
``remoteclip_qgis.core``, so every import inside it is relative.
"""

__version__ = "0.1.0"


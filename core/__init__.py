"""RemoteCLIP core: tiles, raster reading, preprocessing, tokenizer, ONNX inference,
labeling, counting, search, embedding cache and vector output.

A package per concern: ``geodata`` (rasters, tiles, CRSs, vector and GeoTIFF output), ``runtime`` (model
bundles, downloads, conversion, tokenizer, preprocessing, ONNX inference), ``tasks`` (a module per task) and
``pipeline`` (the run path); docs/ARCHITECTURE.md draws the layout.

Never imports qgis or torch. Inside the QGIS plugin this package is vendored as
``remoteclip_qgis.core``, so every import inside it is relative.
"""

__version__ = "0.1.0"


"""Geodata: reading rasters, the tile grid and extents, the coordinate reference systems, writing and
checking vector output, the dense GeoTIFF. Imports nothing of the model runtime, the tasks or the
run pipeline."""

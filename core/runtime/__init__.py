"""The model runtime: model bundles (read, write, verify), the catalogue and downloads, the checkpoint
converter and int8 quantizer, the tokenizer, image preprocessing and ONNX inference. Imports nothing of
the tasks or the run pipeline, and of geodata only the raster reading that measures int8 graphs on an
analyst's raster (``quantize.raster_tiles``); geodata never imports it."""

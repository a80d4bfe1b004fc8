"""The model runtime: model bundles (read, write, verify), the catalogue and downloads, the checkpoint
converter and int8 quantizer, the tokenizer, image preprocessing and ONNX inference. Imports
nothing of geodata, the tasks or the run pipeline."""

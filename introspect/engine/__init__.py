"""The engine: images through an ONNX net at scale (graph surgery, decoding, runtime, streaming, storage)."""

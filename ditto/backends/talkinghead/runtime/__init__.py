"""Model runners: one interface, one implementation per engine (torch, onnxruntime, TensorRT)."""

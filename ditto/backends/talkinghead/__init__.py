"""The Ditto backend: the official checkpoints (PyTorch, ONNX, TensorRT) behind the animator interface."""

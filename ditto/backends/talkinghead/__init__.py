"""The Ditto backend: the official checkpoints (PyTorch, ONNX, TensorRT) behind the animator interface.

The package is named after the upstream project (antgroup/ditto-talkinghead); the backend itself is
``ditto`` (``--backend ditto``, ``DittoBackend.name``, metrics and health names).
"""

"""The runner interface shared by every engine.

A runner wraps one model file. It is called with keyword tensors named as the
model's ONNX inputs and returns a dict keyed by the ONNX output names::

    out = runner(image=crop)            # torch.Tensor in, on runner.device
    out["pred"]                         # torch.Tensor out, on runner.device

Tensors stay on the runner's device (GPU-resident hot path): the onnxruntime and
TensorRT runners bind torch memory directly instead of copying through numpy.
"""

from __future__ import annotations

from typing import Protocol

import torch


class ModelRunner(Protocol):
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    device: torch.device

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]: ...

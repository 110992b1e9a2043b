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


class RowwiseRunner:
    """Calls ``runner`` once per row of the batch axis and concatenates the outputs.

    For the CPU: its kernels choose different blockings for different batch sizes, so a
    batched call's row would depend (in the last bits) on the other rows; one call per row
    keeps every session's result what it is alone. On CUDA batches run as they are.
    """

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        self.input_names = runner.input_names
        self.output_names = runner.output_names
        self.device = runner.device

    def __repr__(self) -> str:
        return f"RowwiseRunner({self.runner!r})"

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        rows = next(iter(inputs.values())).shape[0]
        if rows == 1:
            return self.runner(**inputs)
        outs = [self.runner(**{name: value[i:i + 1] for name, value in inputs.items()}) for i in range(rows)]
        return {name: torch.cat([out[name] for out in outs]) for name in outs[0]}


def batch_invariant(runner: ModelRunner) -> ModelRunner:
    """``runner`` where batching is exact (CUDA, within its precision), else a :class:`RowwiseRunner`."""
    return runner if runner.device.type == "cuda" else RowwiseRunner(runner)

"""The runner interface shared by every engine.

A runner wraps one model file. It is called with keyword tensors named as the
model's ONNX inputs and returns a dict keyed by the ONNX output names::

    out = runner(image=crop)            # torch.Tensor in, on runner.device
    out["pred"]                         # torch.Tensor out, on runner.device

Tensors stay on the runner's device (GPU-resident hot path): the onnxruntime and
TensorRT runners bind torch memory directly instead of copying through numpy.

Batches: every input may carry a leading batch axis B (the same B on all
inputs). ``runner.max_batch`` is the largest B that one call of the underlying
engine takes: the profile's maximum of a batch-dynamic TensorRT engine, 1 for a
fixed batch-1 engine or ONNX model (the official files), ``None`` when the
runner sets no limit (PyTorch modules, ONNX models with a dynamic batch axis).
A larger B is still accepted: :func:`run_in_batches` runs it as slices of at most
``max_batch`` rows, one engine call each, and concatenates each output along
axis 0. An output without a batch axis (HuBERT's ``(T, 1024)``) therefore comes
back as ``(B·T, 1024)``: the rows' outputs one after another.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import torch
from torch import Tensor


class ModelRunner(Protocol):
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    device: torch.device
    max_batch: int | None  # rows one engine call takes; None: no limit (see the module docstring)

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]: ...


def run_in_batches(
    run: Callable[[Mapping[str, Tensor]], dict[str, Tensor]], inputs: Mapping[str, Tensor], *, max_batch: int | None
) -> dict[str, Tensor]:
    """``run(inputs)``, or, when the batch is larger than ``max_batch``, ``run`` on consecutive
    slices of at most ``max_batch`` rows with each output concatenated along axis 0.

    Args:
        run: one engine call (inputs already checked by name).
        inputs: tensors with a common leading batch axis when they need splitting.
        max_batch: rows per engine call; ``None``: never split.

    Raises:
        ValueError: the batch must be split but the inputs disagree on axis 0 (or one
            has no axis 0).
    """
    if max_batch is None or not inputs:
        return run(inputs)
    sizes = {int(t.shape[0]) if t.dim() else None for t in inputs.values()}
    largest = max((s for s in sizes if s is not None), default=0)
    if largest <= max_batch:
        return run(inputs)  # one call; the engine checks the shapes
    if len(sizes) != 1:
        shapes = {name: tuple(t.shape) for name, t in inputs.items()}
        raise ValueError(f"inputs do not share a leading batch axis: {shapes}")
    parts = [
        run({name: t[start : start + max_batch] for name, t in inputs.items()})
        for start in range(0, largest, max_batch)
    ]
    return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}


def batch_sizes_up_to(max_batch: int) -> tuple[int, ...]:
    """The graph sizes: powers of two below ``max_batch``, from 8 on also the halfway sizes (12, 24, ...),
    and ``max_batch`` itself. A batch is padded to the next size; at the large sizes, where a frame
    costs ~3 ms of device time, the halfway sizes bound the padding at a third instead of a half
    (10 live frames ran as 16 on the H200)."""
    sizes = {1 << k for k in range(max_batch.bit_length())} | {3 << k for k in range(2, max_batch.bit_length())}
    return (*sorted(size for size in sizes if size < max_batch), max_batch)


DEFAULT_BATCH_SIZES = batch_sizes_up_to(16)  # (1, 2, 4, 8, 12, 16)


def padded_batch_size(rows: int, sizes: Sequence[int]) -> int:
    """The smallest of ``sizes`` (ascending) that holds ``rows``, else the largest: the captured
    graph a batch is padded to (larger batches are split at the largest size)."""
    return next((size for size in sizes if size >= rows), sizes[-1])


def leading_batch_limit(dims: Mapping[str, int | None]) -> int | None:
    """``max_batch`` of a model from the largest axis 0 each input takes (``None``: unbounded):
    the smallest bound, or ``None`` when no input bounds it."""
    bounds = [d for d in dims.values() if d is not None]
    return min(bounds) if bounds else None


class RowwiseRunner:
    """Calls ``runner`` once per row of the batch axis and concatenates the outputs.

    For the CPU: its kernels choose different blockings for different batch sizes, so a
    batched call's row would depend (in the last bits) on the other rows; one call per row
    keeps every session's result what it is alone. On CUDA batches run as they are.
    """

    max_batch: int | None = 1

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        self.input_names = runner.input_names
        self.output_names = runner.output_names
        self.device = runner.device

    def __repr__(self) -> str:
        return f"RowwiseRunner({self.runner!r})"

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        return run_in_batches(lambda rows: self.runner(**rows), inputs, max_batch=1)


def batch_invariant(runner: ModelRunner) -> ModelRunner:
    """``runner`` where batching is exact (CUDA, within its precision), else a :class:`RowwiseRunner`."""
    return runner if runner.device.type == "cuda" else RowwiseRunner(runner)


__all__ = [
    "DEFAULT_BATCH_SIZES",
    "ModelRunner",
    "RowwiseRunner",
    "batch_invariant",
    "batch_sizes_up_to",
    "leading_batch_limit",
    "padded_batch_size",
    "run_in_batches",
]

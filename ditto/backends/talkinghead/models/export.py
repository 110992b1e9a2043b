"""ONNX export shared by the renderer networks and the LMDM: official IO names, optional batch axis.

The official ``ditto_onnx`` models are fixed at batch 1 (docs/pipeline.md §4.1). With
``dynamic_batch`` the leading axis of every input and output is exported as the
symbolic dimension :data:`BATCH_DIM` instead, so a TensorRT engine built from the
file can take an optimization profile over the batch (``ditto/tools/build_engines.py``).
Tensor names are the same either way.

The TorchScript exporter loses the static sizes of some outputs when an input axis
is dynamic (``warp_network``'s ``out`` comes back as ``(batch, 256, ?, ?)``); the
declared output shapes are therefore rewritten to the ones of the exporter's own
trace of the example call (read by a forward hook: no second forward pass), with
:data:`BATCH_DIM` on axis 0, so the file declares exactly the IO table of
:mod:`ditto.backends.talkinghead.runtime.trt_bindings` with a dynamic batch.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence

import torch
from torch import nn

#: Name of the symbolic leading axis of a batch-dynamic export.
BATCH_DIM = "batch"


def export_torch_onnx(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: str | os.PathLike[str],
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    opset_version: int,
    dynamic_batch: bool = False,
) -> None:
    """``torch.onnx.export`` (TorchScript exporter, constant folding) of ``module(*args)``.

    Args:
        module: in eval mode; returns a tensor or a tuple in ``output_names`` order.
        args: example inputs, in ``input_names`` order; their shapes are the static
            shapes of the file (all but axis 0 with ``dynamic_batch``).
        dynamic_batch: export axis 0 of every input and output as :data:`BATCH_DIM`.
    """
    if not dynamic_batch:
        with torch.no_grad():
            torch.onnx.export(
                module,
                args,
                os.fspath(path),
                input_names=list(input_names),
                output_names=list(output_names),
                opset_version=opset_version,
                dynamo=False,
                do_constant_folding=True,
            )
        return
    import onnx

    traced: list[tuple[tuple[int, ...], ...]] = []  # output shapes of the exporter's own trace

    def record(_module: nn.Module, _args: object, result: torch.Tensor | tuple[torch.Tensor, ...]) -> None:
        results = (result,) if isinstance(result, torch.Tensor) else tuple(result)
        traced.append(tuple(tuple(int(d) for d in t.shape) for t in results))

    hook = module.register_forward_hook(record)
    try:
        buffer = io.BytesIO()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python-side shape checks
            torch.onnx.export(
                module,
                args,
                buffer,  # type: ignore[arg-type]  # a file-like object works (legacy exporter); torch annotates paths only
                input_names=list(input_names),
                output_names=list(output_names),
                opset_version=opset_version,
                dynamo=False,
                do_constant_folding=True,
                dynamic_axes={name: {0: BATCH_DIM} for name in (*input_names, *output_names)},
            )
    finally:
        hook.remove()
    model = onnx.load_from_string(buffer.getvalue())
    for value, sizes in zip(model.graph.output, traced[-1], strict=True):
        shape = value.type.tensor_type.shape
        shape.ClearField("dim")
        for axis, size in enumerate(sizes):
            dim = shape.dim.add()
            if axis == 0:
                dim.dim_param = BATCH_DIM
            else:
                dim.dim_value = size
    onnx.checker.check_model(model)
    with open(os.fspath(path), "wb") as fh:
        fh.write(model.SerializeToString())


__all__ = ["BATCH_DIM", "export_torch_onnx"]

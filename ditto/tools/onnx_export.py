"""ONNX export of the torch LMDM with the official IO names, for the checkpoint tools and tests.

:func:`export_lmdm_onnx` writes the twin of the official ``lmdm_v0.4_hubert.onnx``
(inputs :data:`~ditto.backends.talkinghead.models.lmdm.ONNX_INPUT_NAMES`, outputs
:data:`~ditto.backends.talkinghead.models.lmdm.ONNX_OUTPUT_NAMES`) from a
:class:`~ditto.backends.talkinghead.models.lmdm.MotionDecoder`;
``ditto/tools/make_test_checkpoints.py`` uses it for ``ditto_onnx/``.

Not imported by the runtime.
"""

from __future__ import annotations

import os

import torch

from ditto.backends.talkinghead.models.export import export_torch_onnx
from ditto.backends.talkinghead.models.lmdm import ONNX_INPUT_NAMES, ONNX_OUTPUT_NAMES, MotionDecoder


def export_lmdm_onnx(
    model: MotionDecoder,
    path: str | os.PathLike[str],
    *,
    batch_size: int = 1,
    opset_version: int = 20,
    dynamic_batch: bool = False,
) -> None:
    """Export ``model`` to ONNX with the official IO names and static shapes.

    Inputs ``x``, ``cond_frame``, ``cond``, ``time_cond`` (int64); outputs
    ``pred_noise``, ``x_start``. Uses the TorchScript-based exporter (no
    onnxscript dependency). With ``dynamic_batch`` axis 0 of every tensor is
    the symbolic ``batch`` (see :mod:`ditto.backends.talkinghead.models.export`).
    """
    p = next(model.parameters())
    args = (
        torch.zeros(batch_size, model.seq_len, model.nfeats, dtype=p.dtype, device=p.device),
        torch.zeros(batch_size, model.nfeats, dtype=p.dtype, device=p.device),
        torch.zeros(batch_size, model.seq_len, model.cond_feature_dim, dtype=p.dtype, device=p.device),
        torch.full((batch_size,), 999, dtype=torch.int64, device=p.device),
    )
    was_training = model.training
    model.eval()
    try:
        export_torch_onnx(
            model,
            args,
            path,
            input_names=ONNX_INPUT_NAMES,
            output_names=ONNX_OUTPUT_NAMES,
            opset_version=opset_version,
            dynamic_batch=dynamic_batch,
        )
    finally:
        model.train(was_training)

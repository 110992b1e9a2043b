"""Numpy <-> runner glue shared by the auxiliary-model wrappers.

The runners (``ditto.backends.talkinghead.runtime``) speak torch tensors keyed by the
ONNX tensor names. The auxiliary models do all their pre/post-processing in
numpy/OpenCV (as upstream does), so every wrapper goes through
:func:`run_numpy`, which moves inputs onto the runner's device and brings the
outputs back as float32 host arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

Runner = Callable[..., Mapping[str, torch.Tensor]]


def run_numpy(runner: Runner, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Call ``runner`` with numpy arrays and return its outputs as numpy arrays.

    Inputs go to ``runner.device`` when the runner declares one. Outputs keep the
    runner's key order; half-precision outputs are widened to float32.
    """
    device = getattr(runner, "device", None)
    feeds: dict[str, torch.Tensor] = {}
    for name, array in inputs.items():
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if device is not None:
            tensor = tensor.to(device)
        feeds[name] = tensor
    with torch.inference_mode():
        raw = runner(**feeds)
    out: dict[str, np.ndarray] = {}
    for name, value in raw.items():
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        if array.dtype == np.float16 or array.dtype == np.float64:
            array = array.astype(np.float32)
        out[name] = array
    return out


def declared_names(runner: Any, attribute: str) -> tuple[str, ...] | None:
    """``runner.input_names`` / ``runner.output_names`` as a tuple, or None if absent."""
    names = getattr(runner, attribute, None)
    if names is None:
        return None
    return tuple(names)


def first_declared_name(runner: Any, attribute: str, default: str) -> str:
    """The first of ``runner.input_names`` / ``runner.output_names``, or ``default`` if none are declared."""
    names = declared_names(runner, attribute)
    return names[0] if names else default


def ordered_outputs(outputs: Mapping[str, np.ndarray], order: Sequence[str] | None) -> list[np.ndarray]:
    """Outputs as a list in ``order`` (declared model order), else in dict order."""
    if order is None:
        return list(outputs.values())
    return [outputs[name] for name in order]

"""PyTorch modules of Ditto's LivePortrait-style renderer, state-dict compatible with the official ``.pth`` files.

One network per file; each constructor takes only hyperparameters whose defaults are the ones the
official loader uses, so ``Model().load_state_dict(torch.load(path), strict=True)`` works on the
released checkpoints (``stitch_network.pth`` keeps its state dict under ``retarget_shoulder``, which
:func:`~ditto.backends.talkinghead.runtime.loader.read_torch_state_dict` unwraps).
Modules never load files or choose a device / precision: that is the runtime's job.

Every ``forward`` takes keyword arguments named exactly as the official ONNX inputs, so a torch
runner can call ``model(**inputs)``. Tables below give the per-model ONNX names and example shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from os import PathLike

import torch
from torch import nn

from .appearance_extractor import AppearanceFeatureExtractor
from .decoder import SPADEDecoder
from .export import export_torch_onnx
from .motion_extractor import MOTION_OUTPUT_NAMES, MotionExtractor
from .stitch_network import StitchingNetwork
from .warp_network import WarpingNetwork

__all__ = [
    "AppearanceFeatureExtractor",
    "MotionExtractor",
    "ONNX_INPUT_SHAPES",
    "ONNX_IO",
    "ONNX_OUTPUT_SHAPES",
    "RENDERER_MODELS",
    "SPADEDecoder",
    "StitchingNetwork",
    "WarpingNetwork",
    "export_onnx",
    "make_example_inputs",
]

#: Model name (as in the checkpoint file names) → module class.
RENDERER_MODELS: dict[str, type[nn.Module]] = {
    "appearance_extractor": AppearanceFeatureExtractor,
    "motion_extractor": MotionExtractor,
    "warp_network": WarpingNetwork,
    "decoder": SPADEDecoder,
    "stitch_network": StitchingNetwork,
}

#: Model name → (ONNX input names, ONNX output names), in binding order (docs/pipeline.md §4.1).
ONNX_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "appearance_extractor": (("image",), ("pred",)),
    "motion_extractor": (("image",), MOTION_OUTPUT_NAMES),
    "warp_network": (("feature_3d", "kp_source", "kp_driving"), ("out",)),
    "decoder": (("feature",), ("output",)),
    "stitch_network": (("kp_source", "kp_driving"), ("out",)),
}

#: Model name → {input name: shape} (batch 1, all float32).
ONNX_INPUT_SHAPES: dict[str, dict[str, tuple[int, ...]]] = {
    "appearance_extractor": {"image": (1, 3, 256, 256)},
    "motion_extractor": {"image": (1, 3, 256, 256)},
    "warp_network": {"feature_3d": (1, 32, 16, 64, 64), "kp_source": (1, 21, 3), "kp_driving": (1, 21, 3)},
    "decoder": {"feature": (1, 256, 64, 64)},
    "stitch_network": {"kp_source": (1, 21, 3), "kp_driving": (1, 21, 3)},
}

#: Model name → {output name: shape} for the inputs above.
ONNX_OUTPUT_SHAPES: dict[str, dict[str, tuple[int, ...]]] = {
    "appearance_extractor": {"pred": (1, 32, 16, 64, 64)},
    "motion_extractor": {
        "pitch": (1, 66),
        "yaw": (1, 66),
        "roll": (1, 66),
        "t": (1, 3),
        "exp": (1, 63),
        "scale": (1, 1),
        "kp": (1, 63),
    },
    "warp_network": {"out": (1, 256, 64, 64)},
    "decoder": {"output": (1, 3, 512, 512)},
    "stitch_network": {"out": (1, 21, 3)},
}


def make_example_inputs(
    name: str,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Plausible random inputs for ``name``: images/features uniform in [0, 1), keypoints in [-0.5, 0.5).

    ``shapes`` overrides :data:`ONNX_INPUT_SHAPES` (for example smaller spatial sizes in tests).
    """
    shapes = dict(ONNX_INPUT_SHAPES[name] if shapes is None else shapes)
    inputs = {}
    for input_name, shape in shapes.items():
        values = torch.rand(shape, generator=generator)
        inputs[input_name] = values - 0.5 if input_name.startswith("kp_") else values
    return inputs


class _OrderedOutputs(nn.Module):
    """Turns a dict-returning module into one returning a tuple in ONNX output order (for export)."""

    def __init__(self, model: nn.Module, output_names: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.output_names = output_names

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        result = self.model(*args)
        return tuple(result[key] for key in self.output_names)


def export_onnx(
    name: str,
    model: nn.Module,
    path: str | PathLike[str],
    inputs: Mapping[str, torch.Tensor] | None = None,
    opset_version: int = 20,
    *,
    dynamic_batch: bool = False,
) -> None:
    """Export ``model`` (already in eval mode, on CPU or GPU) to ONNX with the official IO names.

    Uses the TorchScript exporter (``dynamo=False``) with static shapes taken from ``inputs``
    (default: :func:`make_example_inputs`); with ``dynamic_batch`` axis 0 of every input and
    output is the symbolic ``batch`` instead (see :mod:`.export`). The warp network's 3-D
    ``grid_sample`` becomes a standard ``GridSample`` node (opset ≥ 20), which onnxruntime runs;
    the official ONNX instead contains a custom TensorRT plugin op.

    Raises:
        KeyError: ``name`` is not one of :data:`RENDERER_MODELS`.
    """
    input_names, output_names = ONNX_IO[name]
    if inputs is None:
        inputs = make_example_inputs(name)
    args = tuple(inputs[key] for key in input_names)
    wrapped = _OrderedOutputs(model, output_names) if name == "motion_extractor" else model
    export_torch_onnx(
        wrapped,
        args,
        path,
        input_names=input_names,
        output_names=output_names,
        opset_version=opset_version,
        dynamic_batch=dynamic_batch,
    )

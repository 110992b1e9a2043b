"""Pick and build the runner for one model file.

The engine is chosen from the file suffix, as the official loader does
(``core/utils/load_model.py``): ``.onnx`` → onnxruntime, ``.engine``/``.trt``
→ TensorRT, ``.pt``/``.pth`` → PyTorch. The model ``kind`` (``"lmdm"``,
``"decoder"``, …) says how a PyTorch checkpoint is laid out, which ONNX names
the module's positional IO gets (the ONNX names of
:mod:`ditto.backends.talkinghead.models`), and whether it runs under fp16 autocast.

The caller passes ``module_factory``, which builds an un-loaded module for the
checkpoint's state dict (the renderer classes live in
``ditto/backends/talkinghead/models/``). The LMDM has a built-in factory that reads
its dimensions off the state dict.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ditto.backends.talkinghead.config import engine_kind_for
from ditto.backends.talkinghead.models import ONNX_IO
from ditto.backends.talkinghead.models.lmdm import ONNX_INPUT_NAMES as LMDM_INPUT_NAMES
from ditto.backends.talkinghead.models.lmdm import ONNX_OUTPUT_NAMES as LMDM_OUTPUT_NAMES
from ditto.backends.talkinghead.models.lmdm import lmdm_for_state_dict
from ditto.backends.talkinghead.runtime.base import ModelRunner
from ditto.errors import ConfigError

logger = logging.getLogger(__name__)

#: Builds an un-loaded module shaped for a (prefix-stripped) state dict.
ModuleFactory = Callable[[Mapping[str, Tensor]], nn.Module]


@dataclass(frozen=True, slots=True)
class ModelIO:
    """ONNX IO names (in the module's positional order) and PyTorch-path habits of one model."""

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    autocast_fp16: bool  # official PyTorch path: renderer under fp16 autocast, stitch/LMDM fp32
    state_dict_key: str | None  # checkpoint dict entry holding the state dict (None: the file is one)


#: docs/pipeline.md §4.1 / §4.2; the IO names are the models' own tables.
MODEL_IO: Mapping[str, ModelIO] = {
    "appearance_extractor": ModelIO(*ONNX_IO["appearance_extractor"], True, None),
    "motion_extractor": ModelIO(*ONNX_IO["motion_extractor"], True, None),
    "warp_network": ModelIO(*ONNX_IO["warp_network"], True, None),
    "decoder": ModelIO(*ONNX_IO["decoder"], True, None),
    "stitch_network": ModelIO(*ONNX_IO["stitch_network"], False, "retarget_shoulder"),
    "lmdm": ModelIO(LMDM_INPUT_NAMES, LMDM_OUTPUT_NAMES, False, "model_state_dict"),
}

DEFAULT_FACTORIES: Mapping[str, ModuleFactory] = {"lmdm": lmdm_for_state_dict}


def read_torch_state_dict(path: str | os.PathLike[str], kind: str, *, trust_pickle: bool = False) -> dict[str, Tensor]:
    """Load a ``.pt``/``.pth`` file and return the state dict for ``kind``.

    The LMDM file is ``{'model_state_dict': …}``; the stitching file is
    ``{'retarget_shoulder': …}`` (LivePortrait format); the rest are plain
    state dicts. A leading ``module.`` is stripped from every key.

    Files are read with ``torch.load(weights_only=True)``; ``trust_pickle``
    allows a full unpickle for checkpoints that hold other Python objects
    (only for files you trust).

    Raises:
        ConfigError: unreadable file or unexpected layout.
    """
    p = os.fspath(path)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=not trust_pickle)
    except FileNotFoundError:
        raise ConfigError(f"checkpoint not found: {p}") from None
    except pickle.UnpicklingError as exc:
        raise ConfigError(
            f"cannot load {p} with weights_only=True ({exc}); pass trust_pickle=True only if the file is trusted"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise ConfigError(f"cannot load checkpoint {p}: {exc}") from None
    io = MODEL_IO.get(kind)
    key = io.state_dict_key if io else None
    if key is not None and isinstance(obj, Mapping) and key in obj:
        obj = obj[key]
    elif key == "model_state_dict":
        raise ConfigError(f"{p}: expected a dict with {key!r} (an LMDM checkpoint)")
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ConfigError(f"{p}: expected a state dict of tensors for {kind!r}, got {type(obj).__name__}")
    prefix = "module."
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in obj.items()}


def build_torch_module(
    path: str | os.PathLike[str], kind: str, module_factory: ModuleFactory | None, *, trust_pickle: bool = False
) -> nn.Module:
    """Read the checkpoint, build the module with the factory, load strictly, eval mode (on the CPU)."""
    factory = module_factory or DEFAULT_FACTORIES.get(kind)
    if factory is None:
        raise ConfigError(f"no module factory for PyTorch model {kind!r} ({os.fspath(path)})")
    sd = read_torch_state_dict(path, kind, trust_pickle=trust_pickle)
    try:
        module = factory(sd)
    except ConfigError as exc:  # the factory reads shapes off the state dict; say which file it was
        raise ConfigError(f"{os.fspath(path)}: {exc}") from None
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"{os.fspath(path)} does not match {type(module).__name__}: {exc}") from None
    return module.eval()


def load_runner(
    kind: str,
    path: str | os.PathLike[str],
    *,
    module_factory: ModuleFactory | None = None,
    device: torch.device | str = "cpu",
    autocast_fp16: bool | None = None,
    io_names: tuple[Sequence[str], Sequence[str]] | None = None,
    plugin_paths: Sequence[str | os.PathLike[str]] = (),
    trust_pickle: bool = False,
) -> ModelRunner:
    """Build the runner for ``path``, the engine picked by its suffix.

    Args:
        kind: model name (``"lmdm"``, ``"decoder"``, … keys of :data:`MODEL_IO`);
            for the PyTorch engine it selects the checkpoint layout, IO names
            and autocast default. ONNX/TensorRT runners take names from the file.
        path: the model file.
        module_factory: PyTorch only — builds the un-loaded module from the
            state dict (default exists for ``"lmdm"``).
        device: ``"cpu"`` or ``"cuda[:i]"``.
        autocast_fp16: PyTorch only; ``None`` = the official choice for ``kind``.
        io_names: PyTorch only; (inputs, outputs) for a ``kind`` not in :data:`MODEL_IO`.
        plugin_paths: TensorRT only; plugin libraries to load first.
        trust_pickle: PyTorch only; see :func:`read_torch_state_dict`.

    Raises:
        ConfigError: unsupported suffix, missing file, missing engine library,
            or a checkpoint that does not fit.
    """
    p = Path(os.fspath(path))
    engine = engine_kind_for(p)
    if not p.is_file():
        raise ConfigError(f"model file for {kind!r} not found: {p}")
    dev = torch.device(device)
    logger.debug("loading %s (%s) on %s", p, engine, dev)
    if engine == "onnx":
        from ditto.backends.talkinghead.runtime.onnx_runner import OnnxRunner

        return OnnxRunner(p, device=dev)
    if engine == "tensorrt":
        from ditto.backends.talkinghead.runtime.tensorrt_runner import TensorRTRunner

        return TensorRTRunner(p, device=dev, plugin_paths=plugin_paths)
    # engine == "torch"
    from ditto.backends.talkinghead.runtime.torch_runner import TorchRunner

    io = MODEL_IO.get(kind)
    if io_names is not None:
        inputs, outputs = tuple(io_names[0]), tuple(io_names[1])
    elif io is not None:
        inputs, outputs = io.input_names, io.output_names
    else:
        raise ConfigError(f"unknown model kind {kind!r} for {p}: pass io_names; known: {', '.join(MODEL_IO)}")
    fp16 = (io.autocast_fp16 if io else False) if autocast_fp16 is None else autocast_fp16
    module = build_torch_module(p, kind, module_factory, trust_pickle=trust_pickle)
    return TorchRunner(module, inputs, outputs, device=dev, autocast_fp16=fp16)


__all__ = [
    "MODEL_IO",
    "ModelIO",
    "ModuleFactory",
    "build_torch_module",
    "load_runner",
    "read_torch_state_dict",
]

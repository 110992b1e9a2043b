"""TensorRT engine behind the :class:`~.base.ModelRunner` interface (TensorRT 10 API).

Minimal on purpose (the full TensorRT work — engine builds, plugin discovery,
profiles — is a later issue): one execution context per engine, named-tensor
API (``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3``), all
buffers are torch CUDA tensors, work is queued on torch's current stream.

Input tensors are cast to the engine's binding types (``time_cond`` is int64
in ONNX but INT32 in the official LMDM engine). Data-dependent output shapes
are not supported.

``tensorrt`` is imported lazily; without it :class:`TensorRTRunner` raises
:class:`~ditto.errors.ConfigError`.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ditto.errors import ConfigError


def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise ConfigError(
            "TensorRT engines (.engine/.trt) need the 'tensorrt' Python package (TensorRT 10), "
            f"which is not importable here ({exc}). Install it, or use the ONNX or PyTorch checkpoints."
        ) from None
    return trt


def _torch_dtype(trt: Any, dt: Any) -> torch.dtype:
    table = {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.INT32: torch.int32,
        trt.DataType.INT8: torch.int8,
        trt.DataType.BOOL: torch.bool,
    }
    for attr, tdt in (("INT64", torch.int64), ("UINT8", torch.uint8), ("BF16", torch.bfloat16)):
        if hasattr(trt.DataType, attr):
            table[getattr(trt.DataType, attr)] = tdt
    try:
        return table[dt]
    except KeyError:
        raise ConfigError(f"TensorRT tensor type {dt} is not supported") from None


class TensorRTRunner:
    """One deserialized engine and its execution context.

    Args:
        path: the serialized engine (``.engine`` / ``.trt``).
        device: a CUDA device.
        plugin_paths: shared libraries to load (RTLD_GLOBAL) before
            deserializing, e.g. the grid-sample-3d plugin of ``warp_network``.

    Raises:
        ConfigError: tensorrt missing, not a CUDA device, unreadable engine.
    """

    def __init__(self, path: str | os.PathLike[str], *, device: torch.device | str = "cuda",
                 plugin_paths: Sequence[str | os.PathLike[str]] = ()) -> None:
        trt = _import_tensorrt()
        self._trt = trt
        self.path = os.fspath(path)
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ConfigError(f"TensorRT engine {self.path} needs a CUDA device, got {self.device}")
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        for lib in plugin_paths:
            ctypes.CDLL(os.fspath(lib), mode=ctypes.RTLD_GLOBAL)
        self._logger = trt.Logger(trt.Logger.ERROR)
        trt.init_libnvinfer_plugins(self._logger, "")
        try:
            with open(self.path, "rb") as fh:
                blob = fh.read()
        except OSError as exc:
            raise ConfigError(f"cannot read TensorRT engine {self.path}: {exc}") from None
        with torch.cuda.device(self.device):
            self._runtime = trt.Runtime(self._logger)
            self.engine = self._runtime.deserialize_cuda_engine(blob)
            if self.engine is None:
                raise ConfigError(
                    f"TensorRT could not deserialize {self.path} (built for another TensorRT version or GPU, "
                    "or a plugin library is missing)"
                )
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names: tuple[str, ...] = tuple(n for n in names if is_input[n])
        self.output_names: tuple[str, ...] = tuple(n for n in names if not is_input[n])
        self._dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}

    def __repr__(self) -> str:
        return f"TensorRTRunner({os.path.basename(self.path)!r}, device={self.device})"

    def __call__(self, **inputs: Tensor) -> dict[str, Tensor]:
        if set(inputs) != set(self.input_names):
            raise TypeError(f"{self!r} takes inputs {list(self.input_names)}, got {sorted(inputs)}")
        ctx = self.context
        keep: list[Tensor] = []
        for name in self.input_names:
            t = inputs[name].detach().to(self.device, self._dtypes[name]).contiguous()
            keep.append(t)
            if not ctx.set_input_shape(name, tuple(t.shape)):
                raise ValueError(f"{self!r}: input {name!r} shape {tuple(t.shape)} is outside the engine's profile")
            ctx.set_tensor_address(name, t.data_ptr())
        out: dict[str, Tensor] = {}
        for name in self.output_names:
            shape = tuple(ctx.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeError(f"{self!r}: output {name!r} has a data-dependent shape {shape} (unsupported)")
            buf = torch.empty(shape, dtype=self._dtypes[name], device=self.device)
            out[name] = buf
            ctx.set_tensor_address(name, buf.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"{self!r}: execute_async_v3 failed")
        # Temporaries in `keep` were allocated on this stream, so the caching allocator
        # reuses their memory only for work queued after this launch.
        del keep
        return out

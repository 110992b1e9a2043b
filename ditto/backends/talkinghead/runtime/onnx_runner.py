"""onnxruntime engine behind the :class:`~.base.ModelRunner` interface.

On the CPU, torch tensors are handed to onnxruntime as zero-copy numpy views
and the numpy outputs come back as zero-copy torch tensors. On CUDA (with the
CUDA execution provider available) inputs and outputs are bound through
``IOBinding`` directly on torch's device memory, so nothing crosses the host.

Batches (see :mod:`.base`): a model whose inputs all have a symbolic axis 0 takes
any batch in one run (``max_batch`` None); a model fixed at batch 1 (the official
files) has ``max_batch`` 1 and runs a batch of B rows as B runs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ditto.backends.talkinghead.runtime.base import leading_batch_limit, run_in_batches
from ditto.errors import ConfigError

logger = logging.getLogger(__name__)

#: onnxruntime type string → (torch dtype, numpy dtype)
_ORT_TYPES: dict[str, tuple[torch.dtype, type]] = {
    "tensor(float)": (torch.float32, np.float32),
    "tensor(float16)": (torch.float16, np.float16),
    "tensor(double)": (torch.float64, np.float64),
    "tensor(int64)": (torch.int64, np.int64),
    "tensor(int32)": (torch.int32, np.int32),
    "tensor(int8)": (torch.int8, np.int8),
    "tensor(uint8)": (torch.uint8, np.uint8),
    "tensor(bool)": (torch.bool, np.bool_),
}


def _types(type_str: str, name: str, path: str) -> tuple[torch.dtype, type]:
    try:
        return _ORT_TYPES[type_str]
    except KeyError:
        raise ConfigError(f"{path}: tensor {name!r} has unsupported type {type_str}") from None


class OnnxRunner:
    """One onnxruntime session.

    Args:
        path: the ``.onnx`` file.
        device: ``cuda[:i]`` → providers [CUDA, CPU] and IO binding on torch
            memory; ``cpu`` → CPU provider, numpy views.
        session_options: optional ``onnxruntime.SessionOptions``.

    Raises:
        ConfigError: onnxruntime is not installed or the file cannot be loaded.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, device: torch.device | str = "cpu", session_options: Any = None
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - env dependent
            raise ConfigError(f"onnxruntime is required to run {os.fspath(path)}: {exc}") from None
        self.path = os.fspath(path)
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
        if self.device.type == "cuda":
            providers: list[Any] = [("CUDAExecutionProvider", {"device_id": self.device.index}), "CPUExecutionProvider"]
            providers = [p for p in providers if (p[0] if isinstance(p, tuple) else p) in ort.get_available_providers()]
        else:
            providers = ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(self.path, sess_options=session_options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ConfigError(f"cannot load ONNX model {self.path}: {exc}") from None
        self._on_gpu = self.device.type == "cuda" and "CUDAExecutionProvider" in self.session.get_providers()
        if self.device.type == "cuda" and not self._on_gpu:
            logger.warning("onnxruntime has no CUDA provider; %s runs on the CPU with host copies", self.path)
        ins, outs = self.session.get_inputs(), self.session.get_outputs()
        self.input_names: tuple[str, ...] = tuple(i.name for i in ins)
        self.output_names: tuple[str, ...] = tuple(o.name for o in outs)
        self._in_types = {i.name: _types(i.type, i.name, self.path) for i in ins}
        self._out_types = {o.name: _types(o.type, o.name, self.path) for o in outs}
        self._out_static_shapes: dict[str, tuple[int, ...] | None] = {
            o.name: (tuple(o.shape) if all(isinstance(d, int) and d >= 0 for d in o.shape) else None) for o in outs
        }
        #: Largest axis 0 one run takes: a static axis 0 is fixed, a symbolic one is free.
        self.max_batch: int | None = leading_batch_limit(
            {i.name: (i.shape[0] if isinstance(i.shape[0], int) else None) for i in ins if i.shape}
        )
        # Outputs whose only symbolic axis is a batch axis named as an input's: preallocated on CUDA.
        batch_inputs = {i.shape[0]: i.name for i in ins if i.shape and isinstance(i.shape[0], str)}
        self._out_batch_of: dict[str, tuple[str, tuple[int, ...]]] = {  # output → (input, shape after axis 0)
            o.name: (batch_inputs[o.shape[0]], tuple(o.shape[1:]))
            for o in outs
            if o.shape and o.shape[0] in batch_inputs and all(isinstance(d, int) and d >= 0 for d in o.shape[1:])
        }

    def __repr__(self) -> str:
        return f"OnnxRunner({os.path.basename(self.path)!r}, device={self.device}, gpu={self._on_gpu})"

    def __call__(self, **inputs: Tensor) -> dict[str, Tensor]:
        if set(inputs) != set(self.input_names):
            raise TypeError(f"{self!r} takes inputs {list(self.input_names)}, got {sorted(inputs)}")
        return run_in_batches(self._run_cuda if self._on_gpu else self._run_cpu, inputs, max_batch=self.max_batch)

    def _run_cpu(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        feeds = {}
        for name in self.input_names:
            dtype = self._in_types[name][0]
            t = inputs[name].detach().to("cpu", dtype).contiguous()
            feeds[name] = t.numpy()  # shares memory with t
        results = self.session.run(list(self.output_names), feeds)
        out = {name: torch.from_numpy(np.ascontiguousarray(r)) for name, r in zip(self.output_names, results)}
        if self.device.type != "cpu":
            out = {k: v.to(self.device) for k, v in out.items()}
        return out

    def _run_cuda(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        dev_id = self.device.index or 0
        binding = self.session.io_binding()
        keep: list[Tensor] = []  # inputs must outlive the run
        for name in self.input_names:
            tdtype, ndtype = self._in_types[name]
            t = inputs[name].detach().to(self.device, tdtype).contiguous()
            keep.append(t)
            binding.bind_input(name, "cuda", dev_id, ndtype, tuple(t.shape), t.data_ptr())
        out: dict[str, Tensor] = {}
        for name in self.output_names:
            tdtype, ndtype = self._out_types[name]
            shape = self._out_static_shapes[name]
            if shape is None and name in self._out_batch_of:
                source, tail = self._out_batch_of[name]
                shape = (int(inputs[source].shape[0]), *tail)
            if shape is not None:
                buf = torch.empty(shape, dtype=tdtype, device=self.device)
                out[name] = buf
                binding.bind_output(name, "cuda", dev_id, ndtype, shape, buf.data_ptr())
            else:
                binding.bind_output(name, "cuda", dev_id)
        # onnxruntime runs on its own stream: torch's queued work must be done first.
        torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)
        dynamic = [n for n in self.output_names if n not in out]
        if dynamic:
            values = binding.get_outputs()
            for i, name in enumerate(self.output_names):
                if name in out:
                    continue
                ort_value = values[i]
                if hasattr(ort_value, "to_dlpack"):
                    out[name] = torch.from_dlpack(ort_value.to_dlpack())
                else:  # older onnxruntime: one device→host→device round trip
                    out[name] = torch.from_numpy(ort_value.numpy()).to(self.device)
        del keep
        return {n: out[n] for n in self.output_names}

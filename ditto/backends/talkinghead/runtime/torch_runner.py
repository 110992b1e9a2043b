"""PyTorch engine: an ``nn.Module`` behind the :class:`~.base.ModelRunner` interface.

The module's ``forward`` takes the model's inputs positionally in ONNX order
and returns its outputs in ONNX order (a tensor, a tuple/list, or a dict keyed
by the ONNX output names) — the contract the official ``core/models/modules``
classes follow. The runner maps ONNX-named keyword tensors onto that call and
the results back onto a dict keyed by the ONNX output names.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn


class TorchRunner:
    """Runs an ``nn.Module`` in eval mode under ``torch.inference_mode``.

    Args:
        module: the network; moved to ``device`` and put in eval mode.
        input_names: ONNX input names, in the order ``forward`` takes them.
        output_names: ONNX output names, in the order ``forward`` returns them.
        device: where the module and its tensors live.
        autocast_fp16: run under CUDA fp16 autocast (the official PyTorch path
            does so for appearance/motion/warp/decoder); floating outputs are
            returned as float32. Ignored on the CPU.

    ``max_batch`` is None: the runner sets no batch limit, a batch of inputs goes to
    the module in one call (the renderer networks and the LMDM take any batch).
    """

    max_batch: int | None = None

    def __init__(
        self,
        module: nn.Module,
        input_names: Sequence[str],
        output_names: Sequence[str],
        *,
        device: torch.device | str = "cpu",
        autocast_fp16: bool = False,
    ) -> None:
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        self.input_names = tuple(input_names)
        self.output_names = tuple(output_names)
        self.autocast_fp16 = bool(autocast_fp16) and self.device.type == "cuda"

    def __repr__(self) -> str:
        return f"TorchRunner({type(self.module).__name__}, device={self.device}, fp16={self.autocast_fp16})"

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.autocast_fp16:
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def __call__(self, **inputs: Tensor) -> dict[str, Tensor]:
        if set(inputs) != set(self.input_names):
            raise TypeError(f"{self!r} takes inputs {list(self.input_names)}, got {sorted(inputs)}")
        args = [inputs[name].to(self.device) for name in self.input_names]
        with torch.inference_mode(), self._autocast():
            raw = self.module(*args)
        if isinstance(raw, Tensor):
            values: Sequence[Tensor] = (raw,)
        elif isinstance(raw, Mapping):
            missing = [n for n in self.output_names if n not in raw]
            if missing:
                raise RuntimeError(f"{self!r}: module output dict lacks {missing}")
            values = [raw[n] for n in self.output_names]
        else:
            values = tuple(raw)
        if len(values) != len(self.output_names):
            raise RuntimeError(f"{self!r}: module returned {len(values)} outputs, expected {list(self.output_names)}")
        out = dict(zip(self.output_names, values))
        if self.autocast_fp16:
            out = {k: (v.float() if v.is_floating_point() else v) for k, v in out.items()}
        return out

"""Warp + decode of one frame (upstream ``warp_f3d`` and ``decode_f3d`` workers).

:class:`FrameRenderer` calls the warp network and the decoder runners as they are
(eager), or, on CUDA with PyTorch runners, replays both as ONE captured CUDA graph:
the renderer is a few hundred small kernels whose launch cost would otherwise be
paid on the host every frame. The graph is captured once per backend (the shapes
are fixed: f_s (1,32,16,64,64), keypoints (1,21,3)) and shared by every session;
inputs are copied into its static buffers and the render is cloned out, under a
lock, with an event ordering replays across CUDA streams. The runners keep their
own precision (fp16 autocast for both, as the official fp16 engines), so a graph
replay computes exactly what the eager calls compute.
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor

from ditto.backends.ditto.runtime.base import ModelRunner
from ditto.backends.ditto.runtime.torch_runner import TorchRunner

__all__ = ["FrameRenderer"]

F_S_SHAPE = (1, 32, 16, 64, 64)
KP_SHAPE = (1, 21, 3)


class FrameRenderer:
    """``render(f_s, x_s, x_d) -> (1,3,512,512)`` float32 in [0,1] (before clipping).

    Args:
        warp: ``warp_network`` runner (feature_3d, kp_source, kp_driving → out).
        decoder: ``decoder`` runner (feature → output).
        use_graph: replay one CUDA graph when both runners are PyTorch modules on CUDA
            (otherwise, or with ``False``, call them eagerly).
        warmup_iters: eager runs on a side stream before capture (cuDNN autotuning, lazy inits).
    """

    def __init__(self, warp: ModelRunner, decoder: ModelRunner, *, use_graph: bool = True,
                 warmup_iters: int = 3) -> None:
        self.warp = warp
        self.decoder = decoder
        device = warp.device
        self.device = device
        self.use_graph = (bool(use_graph) and device.type == "cuda" and torch.cuda.is_available()
                          and isinstance(warp, TorchRunner) and isinstance(decoder, TorchRunner))
        self.warmup_iters = warmup_iters
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static: dict[str, Tensor] = {}
        self._lock = threading.Lock()
        self._done: torch.cuda.Event | None = None
        self._last_f_s: Tensor | None = None  # f_s now in the static buffer (avoid re-copying 8 MB)

    @property
    def captured(self) -> bool:
        return self._graph is not None

    def eager(self, f_s: Tensor, x_s: Tensor, x_d: Tensor) -> Tensor:
        feature = self.warp(feature_3d=f_s, kp_source=x_s, kp_driving=x_d)["out"]
        return self.decoder(feature=feature)["output"]

    def __call__(self, f_s: Tensor, x_s: Tensor, x_d: Tensor) -> Tensor:
        if not self.use_graph or tuple(f_s.shape) != F_S_SHAPE:
            return self.eager(f_s, x_s, x_d)
        with self._lock:
            if self._graph is None:
                self._capture()
            stream = torch.cuda.current_stream(self.device)
            if self._done is not None:
                stream.wait_event(self._done)
            st = self._static
            if f_s is not self._last_f_s:
                st["f_s"].copy_(f_s, non_blocking=True)
                self._last_f_s = f_s
            st["x_s"].copy_(x_s.reshape(KP_SHAPE), non_blocking=True)
            st["x_d"].copy_(x_d.reshape(KP_SHAPE), non_blocking=True)
            assert self._graph is not None
            self._graph.replay()
            out = st["out"].clone()
            if self._done is None:
                self._done = torch.cuda.Event()
            self._done.record(stream)
        return out

    def capture(self) -> None:
        """Capture now (e.g. at backend start-up) instead of on the first frame."""
        if self.use_graph:
            with self._lock:
                if self._graph is None:
                    self._capture()

    def _capture(self) -> None:
        dev = self.device
        gen = torch.Generator(device=dev).manual_seed(0)
        self._static = {
            "f_s": torch.randn(F_S_SHAPE, generator=gen, device=dev),
            "x_s": torch.randn(KP_SHAPE, generator=gen, device=dev) * 0.2,
            "x_d": torch.randn(KP_SHAPE, generator=gen, device=dev) * 0.2,
        }
        self._last_f_s = None
        st = self._static
        side = torch.cuda.Stream(device=dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(self.warmup_iters):
                self.eager(st["f_s"], st["x_s"], st["x_d"])
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph, stream=torch.cuda.Stream(device=dev),
                                                      capture_error_mode="thread_local"):
            st["out"] = self.eager(st["f_s"], st["x_s"], st["x_d"])
        self._graph = graph

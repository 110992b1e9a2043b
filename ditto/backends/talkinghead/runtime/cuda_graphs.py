"""Capturing a computation as one CUDA graph (the renderer's, the LMDM sampler's and HuBERT's graphs).

A replayed graph reuses the addresses it was captured with, cuBLAS's workspace among them, which
PyTorch keeps per (cuBLAS handle, stream): graphs captured on one stream can share a workspace.
That is harmless while they replay one after the other, not when two of them run at once (the
device engine's motion stream beside its render stream). So each lane captures on streams of its
own priority, which PyTorch draws from a separate pool: the render's at the default priority, the
motion stream's graphs at :data:`MOTION_PRIORITY`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

__all__ = ["MOTION_PRIORITY", "capture_graph"]

T = TypeVar("T")

MOTION_PRIORITY = -1
"""CUDA stream priority of the engine's motion stream and of the graphs it replays (lower is higher)."""


def capture_graph(
    fn: Callable[[], T], device: torch.device, *, warmup_iters: int, priority: int = 0
) -> tuple[torch.cuda.CUDAGraph, T]:
    """Run ``fn`` ``warmup_iters`` times on a side stream (lazy inits, cuDNN autotuning, cuBLAS
    workspaces), then capture one more call as a graph; returns the graph and that call's output,
    which every replay overwrites. Streams of ``priority``."""
    side = torch.cuda.Stream(device=device, priority=priority)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side), torch.inference_mode():
        for _ in range(warmup_iters):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    # a private stream, and unsafe CUDA calls forbidden only in this thread (the default "global" mode
    # would fail work other threads issue meanwhile)
    with (
        torch.inference_mode(),
        torch.cuda.graph(
            graph, stream=torch.cuda.Stream(device=device, priority=priority), capture_error_mode="thread_local"
        ),
    ):
        out = fn()
    return graph, out

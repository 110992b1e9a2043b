"""Warp + decode of a batch of frames (upstream ``warp_f3d`` and ``decode_f3d`` workers).

:class:`FrameRenderer` calls the warp network and the decoder runners as they are
(eager), or, on CUDA with PyTorch runners, replays both as ONE captured CUDA graph per
batch size: the renderer is a few hundred small kernels whose launch cost would otherwise
be paid on the host every frame. Graphs are captured for a few batch sizes (a batch is
padded to the next one); the frames of a batch may come from different sessions and
avatars. The runners keep their own precision (fp16 autocast for both, as the official
fp16 engines), so a replay computes what the eager calls compute.

With ``compile_min_batch`` set (CUDA, PyTorch runners), batches of at least that size run a
``torch.compile``-d fp16 channels-last copy of both networks instead, odd channel counts padded
and narrow 3-D convolutions as depth taps (measured on an H200 at batch 16, before the depth
taps: 3.9 ms/frame against 6.9 ms/frame eager under autocast, ``bench/bench_renderer.py``;
compiling costs about a minute per batch size at start-up). Its output differs from the
autocast path by fp16 rounding (grid sampling and normalisation in fp16 too).

Called from one thread (the device engine owns the renderer).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ditto.backends.talkinghead.runtime.base import DEFAULT_BATCH_SIZES, ModelRunner, padded_batch_size
from ditto.backends.talkinghead.runtime.cuda_graphs import capture_graph
from ditto.backends.talkinghead.runtime.torch_runner import TorchRunner

__all__ = ["DepthTapConv3d", "FrameRenderer", "channels_last", "depth_tap_convs", "pad_conv_channels"]

logger = logging.getLogger(__name__)

F_S_SHAPE = (32, 16, 64, 64)  # one frame's appearance volume, without the batch axis
KP_SHAPE = (21, 3)


class _Graph:
    """One captured warp + decode at batch ``size``, with its static input/output buffers."""

    def __init__(self, renderer: FrameRenderer, size: int, warmup_iters: int) -> None:
        forward = renderer.forward_for(size)
        dev = renderer.device
        gen = torch.Generator(device=dev).manual_seed(0)
        self.size = size
        self.f_s = torch.randn((size, *F_S_SHAPE), generator=gen, device=dev)
        self.x_s = torch.randn((size, *KP_SHAPE), generator=gen, device=dev) * 0.2
        self.x_d = torch.randn((size, *KP_SHAPE), generator=gen, device=dev) * 0.2
        self.slots: list[Tensor | None] = [None] * size  # the f_s now in each slot (skip re-copying 8 MB)
        self.graph, self.out = capture_graph(
            lambda: forward(self.f_s, self.x_s, self.x_d), dev, warmup_iters=warmup_iters
        )

    def __call__(self, f_s: Sequence[Tensor], x_s: Tensor, x_d: Tensor) -> Tensor:
        n = len(f_s)
        for i, volume in enumerate(f_s):
            if self.slots[i] is not volume:
                self.f_s[i].copy_(volume.reshape(F_S_SHAPE), non_blocking=True)
                self.slots[i] = volume
        self.x_s[:n].copy_(x_s.reshape(n, *KP_SHAPE), non_blocking=True)
        self.x_d[:n].copy_(x_d.reshape(n, *KP_SHAPE), non_blocking=True)
        self.graph.replay()
        return self.out[:n]


class FrameRenderer:
    """``render(f_s list, x_s (B,21,3), x_d (B,21,3)) -> (B,3,512,512)`` float in [0,1] (before clipping).

    Args:
        warp: ``warp_network`` runner (feature_3d, kp_source, kp_driving → out).
        decoder: ``decoder`` runner (feature → output).
        use_graph: replay CUDA graphs when both runners are PyTorch modules on CUDA
            (otherwise, or with ``False``, call them eagerly).
        batch_sizes: the batch sizes a graph is captured for (lazily, or by :meth:`capture`).
        compile_min_batch: graphs of at least this batch size run the compiled fp16 channels-last
            networks (None: never).
        compile_mode: ``torch.compile``'s ``mode`` for them (None: its default; for example
            ``"max-autotune-no-cudagraphs"`` times Triton kernels against cuDNN's per convolution).
        warmup_iters: eager runs on a side stream before each capture (cuDNN autotuning, lazy inits).

    A graph's output is a view of its static buffer: valid until the next call.
    """

    def __init__(
        self,
        warp: ModelRunner,
        decoder: ModelRunner,
        *,
        use_graph: bool = True,
        batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
        compile_min_batch: int | None = None,
        compile_mode: str | None = None,
        warmup_iters: int = 3,
    ) -> None:
        self.warp = warp
        self.decoder = decoder
        device = warp.device
        self.device = device
        self.use_graph = (
            bool(use_graph)
            and device.type == "cuda"
            and torch.cuda.is_available()
            and isinstance(warp, TorchRunner)
            and isinstance(decoder, TorchRunner)
        )
        self.batch_sizes = tuple(sorted(set(int(b) for b in batch_sizes)))
        self.warmup_iters = warmup_iters
        self.compile_min_batch = compile_min_batch if self.use_graph else None
        self.compile_mode = compile_mode
        self._compiled: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None
        self._graphs: dict[int, _Graph] = {}

    @property
    def captured(self) -> tuple[int, ...]:
        """The batch sizes whose graph is captured."""
        return tuple(sorted(self._graphs))

    def eager(self, f_s: Tensor, x_s: Tensor, x_d: Tensor) -> Tensor:
        feature = self.warp(feature_3d=f_s, kp_source=x_s, kp_driving=x_d)["out"]
        return self.decoder(feature=feature)["output"]

    def forward_for(self, size: int) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
        """The computation a graph of batch ``size`` captures: compiled or the runners' eager calls."""
        if self.compile_min_batch is None or size < self.compile_min_batch:
            return self.eager
        if self._compiled is None:
            self._compiled = self._compile()
        return self._compiled

    def _compile(self) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
        assert isinstance(self.warp, TorchRunner) and isinstance(self.decoder, TorchRunner)

        def prepared(module: torch.nn.Module) -> Callable[..., Tensor]:
            fast = pad_conv_channels(depth_tap_convs(copy.deepcopy(module).half()))
            return torch.compile(channels_last(fast), dynamic=False, mode=self.compile_mode)

        warp, decoder = prepared(self.warp.module), prepared(self.decoder.module)
        logger.info(
            "Compiling the renderer for batches of %d and more (about a minute per batch size)", self.compile_min_batch
        )

        def forward(f_s: Tensor, x_s: Tensor, x_d: Tensor) -> Tensor:
            volume = f_s.half().contiguous(memory_format=torch.channels_last_3d)
            return decoder(warp(volume, x_s.half(), x_d.half())).float()

        return forward

    def __call__(self, f_s: Sequence[Tensor], x_s: Tensor, x_d: Tensor, *, size: int | None = None) -> Tensor:
        """Render ``len(f_s)`` frames; ``f_s[i]`` is frame i's (1,32,16,64,64) volume. ``size``: the graph
        to run ``len(f_s) ≤ size`` frames at (None: the next size up)."""
        n = len(f_s)
        if not self.use_graph:
            return self.eager(
                torch.cat([v.reshape(1, *F_S_SHAPE) for v in f_s]), x_s.reshape(n, *KP_SHAPE), x_d.reshape(n, *KP_SHAPE)
            )
        largest = self.batch_sizes[-1]
        parts = []
        for start in range(0, n, largest):
            stop = min(n, start + largest)
            graph = self._graph_for(max(stop - start, size or 0))
            out = graph(f_s[start:stop], x_s[start:stop], x_d[start:stop])
            parts.append(out if n <= largest else out.clone())
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def capture(self, batch_sizes: Sequence[int] | None = None) -> None:
        """Capture now (at backend start-up) instead of on first use."""
        if self.use_graph:
            for size in batch_sizes or self.batch_sizes:
                self._graph_for(size)

    def _graph_for(self, n: int) -> _Graph:
        size = padded_batch_size(n, self.batch_sizes)
        graph = self._graphs.get(size)
        if graph is None:
            graph = self._graphs[size] = _Graph(self, size, self.warmup_iters)
        return graph


def channels_last(module: torch.nn.Module) -> torch.nn.Module:
    """Convolution weights in channels-last order (NDHWC / NHWC: what the tensor-core kernels read)."""
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.dim() == 5:
            tensor.data = tensor.data.contiguous(memory_format=torch.channels_last_3d)
        elif tensor.dim() == 4:
            tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
    return module


class _PaddedConv(nn.Module):
    """A convolution whose channel counts are padded with zeros to a multiple of ``multiple``.

    The tensor-core kernels want channel counts in multiples of 8; the warp network's 3-D
    convolutions have 110 and 142 input and 22 output channels, for which cuDNN falls back to
    a kernel several times slower. Zero input channels meet zero weights and the extra output
    channels are dropped, so the result is the original convolution's.
    """

    def __init__(self, conv: nn.Conv2d | nn.Conv3d, multiple: int) -> None:
        super().__init__()
        out_ch, in_ch = conv.weight.shape[:2]
        self.in_pad = -in_ch % multiple
        self.out_channels = out_ch
        weight = F.pad(conv.weight.data, (0, 0) * (conv.weight.dim() - 2) + (0, self.in_pad))
        weight = torch.cat([weight, weight.new_zeros((-out_ch % multiple, *weight.shape[1:]))])
        self.conv = copy.deepcopy(conv)
        self.conv.weight = nn.Parameter(weight, requires_grad=False)
        if conv.bias is not None:
            self.conv.bias = nn.Parameter(
                torch.cat([conv.bias.data, conv.bias.new_zeros(-out_ch % multiple)]), requires_grad=False
            )
        self.conv.in_channels, self.conv.out_channels = weight.shape[1], weight.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        if self.in_pad:
            x = torch.cat([x, x.new_zeros((x.shape[0], self.in_pad, *x.shape[2:]))], dim=1)
        return self.conv(x)[:, : self.out_channels]


def pad_conv_channels(module: nn.Module, multiple: int = 8) -> nn.Module:
    """Replace (in place) every plain Conv2d/Conv3d whose channel counts are not multiples of
    ``multiple`` by a :class:`_PaddedConv` computing the same result."""
    for name, child in list(module.named_children()):
        if (
            isinstance(child, (nn.Conv2d, nn.Conv3d))
            and child.groups == 1
            and (child.in_channels % multiple or child.out_channels % multiple)
        ):
            setattr(module, name, _PaddedConv(child, multiple))
        else:
            pad_conv_channels(child, multiple)
    return module


class DepthTapConv3d(nn.Module):
    """A stride-1 ``kd×kh×kw`` Conv3d computed as ONE 2-D convolution over every depth slice, with
    ``kd · C_out`` output channels (one group per depth tap), whose groups are then summed along
    depth, each shifted by its tap's offset.

    The warp network's 7×7×7 mask convolution (142 → 22 channels, ~140 GFLOP a frame) gets
    cuDNN's 3-D implicit-GEMM kernel, whose GEMM has only 22 (padded: 24) columns; as one 2-D
    convolution the GEMM has ``7 · 24`` columns and runs at tensor-core rate, for ~12 % more
    arithmetic (taps whose source slice lies in the depth padding are computed, then dropped).
    The result is the convolution's (channels zero-padded to multiples of ``multiple``).
    """

    @staticmethod
    def computes(conv: nn.Conv3d) -> bool:
        """Whether ``conv`` is one it computes: stride 1, undilated, ungrouped, explicit zero padding."""
        return (
            conv.stride == (1, 1, 1)
            and conv.dilation == (1, 1, 1)
            and conv.groups == 1
            and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str)
        )

    def __init__(self, conv: nn.Conv3d, multiple: int = 8) -> None:
        super().__init__()
        if not self.computes(conv):
            raise ValueError(
                "DepthTapConv3d computes stride-1, undilated, ungrouped convolutions with explicit zero padding only"
            )
        assert not isinstance(conv.padding, str)  # for the type checker: computes() refused it
        out_ch, in_ch, taps, kh, kw = conv.weight.shape
        self.in_pad = -in_ch % multiple
        self.out_channels, self.taps = out_ch, taps
        self.group = out_ch + -out_ch % multiple  # output channels per depth tap, padded
        self.depth_padding = conv.padding[0]
        self.padding = conv.padding[1:]
        weight = F.pad(conv.weight.data, (0, 0, 0, 0, 0, 0, 0, self.in_pad, 0, self.group - out_ch))
        # (C_out, C_in, kd, kh, kw) -> (kd * C_out, C_in, kh, kw): tap t's filters are group t
        self.weight = nn.Parameter(
            weight.permute(2, 0, 1, 3, 4).reshape(taps * self.group, -1, kh, kw).contiguous(), requires_grad=False
        )
        bias = conv.bias.data if conv.bias is not None else conv.weight.new_zeros(out_ch)
        self.bias = nn.Parameter(bias.view(1, out_ch, 1, 1, 1).clone(), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        batch, _, depth, height, width = x.shape
        if self.in_pad:
            x = torch.cat([x, x.new_zeros((batch, self.in_pad, depth, height, width))], dim=1)
        # (B, C, D, H, W) -> (B·D, C, H, W): a view when x is channels-last (NDHWC memory)
        slices = x.permute(0, 2, 1, 3, 4).reshape(batch * depth, -1, height, width)
        taps = F.conv2d(slices, self.weight, padding=self.padding).reshape(
            batch, depth, self.taps, self.group, height, width
        )
        # accumulate in NDHWC memory, so that the result is channels-last like the input
        out = taps.new_zeros((batch, depth, height, width, self.group)).permute(0, 1, 4, 2, 3)
        for tap in range(self.taps):
            offset = tap - self.depth_padding  # output depth d reads input depth d + offset
            lo, hi = max(0, -offset), min(depth, depth - offset)
            out[:, lo:hi] += taps[:, lo + offset : hi + offset, tap]
        return out.permute(0, 2, 1, 3, 4)[:, : self.out_channels] + self.bias


NARROW_CONV3D_CHANNELS = 32
"""3-D convolutions with at most this many output channels run as :class:`DepthTapConv3d` in the
compiled renderer (the warp network's mask convolution, 22, and its last up-block, 32)."""


def depth_tap_convs(module: nn.Module, max_out_channels: int = NARROW_CONV3D_CHANNELS) -> nn.Module:
    """Replace (in place) every Conv3d that :meth:`DepthTapConv3d.computes`, with a kernel depth over 1
    and at most ``max_out_channels`` output channels, by a :class:`DepthTapConv3d` computing the same result."""
    for name, child in list(module.named_children()):
        if (
            isinstance(child, nn.Conv3d)
            and child.kernel_size[0] > 1
            and child.out_channels <= max_out_channels
            and DepthTapConv3d.computes(child)
        ):
            setattr(module, name, DepthTapConv3d(child))
        else:
            depth_tap_convs(child, max_out_channels)
    return module

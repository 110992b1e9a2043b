"""HuBERT-large audio encoder (the network behind Ditto's ``hubert_streaming_fix_kv.onnx``).

Role (Ditto: upstream issue #80 names facebook/hubert-large-ls960-ft): 16 kHz audio → one
1024-d feature per 20 ms, which Ditto averages in pairs to condition the LMDM at 25 fps
(docs/pipeline.md §8). Architecture (Hsu et al. 2021, the "large" setting)::

    input_values (B, L)
    → feature encoder: 7 × [Conv1d(512, kernel k_i, stride s_i) → LayerNorm(512) over channels → GELU]
          kernels (10, 3, 3, 3, 3, 2, 2), strides (5, 2, 2, 2, 2, 2, 2): receptive field 400
          samples, hop 320 → T = ⌊(L − 400) / 320⌋ + 1 frames
    → feature projection: LayerNorm(512) → Linear(512 → 1024)
    → + positional conv embedding: weight-normed Conv1d(1024, kernel 128, 16 groups, padding 64),
          last frame dropped (even kernel), GELU
    → 24 pre-LN transformer layers: x + Attn(LN(x)); x + FFN(LN(x)) (16 heads, FFN 4096, GELU)
    → final LayerNorm
    → last hidden state (B, T, 1024)

Dropout, layer drop and SpecAugment masking are training-only and left out. There is no
attention mask: Ditto feeds fixed 6480-sample windows, so every batch row has the same length
and a row of a batch equals that row run alone.

State-dict keys are those of Hugging Face ``HubertModel`` (``HubertForCTC`` adds a ``hubert.``
prefix), e.g. ``feature_extractor.conv_layers.0.conv.weight``,
``encoder.layers.0.attention.q_proj.weight``. The positional conv's weight norm is stored the
classic way, as ``encoder.pos_conv_embed.conv.weight_g`` (1, 1, 128) and ``weight_v``
(1024, 64, 128), weight = g · v / ‖v‖ with the norm taken over all but the kernel axis (the
layout of the released ``pytorch_model.bin``); the newer
``parametrizations.weight.original0/1`` names hold the same two tensors and
:func:`~ditto.backends.talkinghead.aux_models.hubert_torch.hubert_state_dict_from_hf` renames them.

The defaults are the large model (~316 M parameters, 1.26 GB in fp32). The HF config of
facebook/hubert-large-ls960-ft has ``conv_bias: true``, so the feature-encoder convs have
biases by default (3584 parameters; ``conv_bias=False`` is the fairseq default).

The module loads no files and picks no device.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from os import PathLike
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ONNX_INPUT_NAME", "ONNX_OUTPUT_NAME", "HubertLarge", "export_hubert_onnx", "num_frames"]

LARGE_CONV_KERNELS: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
LARGE_CONV_STRIDES: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)


def num_frames(
    num_samples: int, kernels: Sequence[int] = LARGE_CONV_KERNELS, strides: Sequence[int] = LARGE_CONV_STRIDES
) -> int:
    """Output frames of the feature encoder for ``num_samples`` inputs (20 for 6480 samples)."""
    n = num_samples
    for k, s in zip(kernels, strides):
        if n < k:
            return 0
        n = (n - k) // s + 1
    return n


class ConvLayerNormBlock(nn.Module):
    """One feature-encoder layer: Conv1d → LayerNorm over channels → GELU (``feat_extract_norm="layer"``)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, bias: bool, eps: float
    ) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, bias=bias)
        self.layer_norm = nn.LayerNorm(out_channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, N) -> (B, C_out, N')
        x = self.conv(x)
        x = self.layer_norm(x.transpose(1, 2)).transpose(1, 2)
        return F.gelu(x)


class FeatureEncoder(nn.Module):
    """Raw audio (B, L) → (B, C, T) through the strided conv stack (keys ``conv_layers.i``)."""

    def __init__(self, conv_dim: int, kernels: Sequence[int], strides: Sequence[int], bias: bool, eps: float) -> None:
        super().__init__()
        if len(kernels) != len(strides):
            raise ValueError(f"{len(kernels)} conv kernels but {len(strides)} strides")
        chans = [1] + [conv_dim] * len(kernels)
        self.conv_layers = nn.ModuleList(
            ConvLayerNormBlock(c_in, c_out, k, s, bias, eps)
            for c_in, c_out, k, s in zip(chans[:-1], chans[1:], kernels, strides)
        )

    def forward(self, input_values: Tensor) -> Tensor:
        x = input_values[:, None, :]
        for layer in self.conv_layers:
            x = layer(x)
        return x


class FeatureProjection(nn.Module):
    """LayerNorm(conv_dim) → Linear(conv_dim → hidden)."""

    def __init__(self, conv_dim: int, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(conv_dim, eps=eps)
        self.projection = nn.Linear(conv_dim, hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.projection(self.layer_norm(x))


class WeightNormConv1d(nn.Module):
    """Grouped Conv1d whose weight is ``weight_g · weight_v / ‖weight_v‖`` (norm over all but the kernel axis).

    The weight-norm ``dim=2`` layout of HuBERT / wav2vec 2.0: one gain per kernel tap.
    """

    def __init__(self, channels: int, kernel_size: int, groups: int, padding: int) -> None:
        super().__init__()
        if channels % groups:
            raise ValueError(f"{channels} channels do not split into {groups} groups")
        v = torch.empty(channels, channels // groups, kernel_size)
        nn.init.kaiming_uniform_(v, a=5**0.5)
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(self._norm(v.detach()))  # start with weight == v
        bound = (channels // groups * kernel_size) ** -0.5
        self.bias = nn.Parameter(torch.empty(channels).uniform_(-bound, bound))
        self.groups, self.padding = groups, padding

    @staticmethod
    def _norm(v: Tensor) -> Tensor:
        return v.pow(2).sum(dim=(0, 1), keepdim=True).sqrt()  # (1, 1, K)

    def weight(self) -> Tensor:
        return self.weight_v * (self.weight_g / self._norm(self.weight_v))

    def forward(self, x: Tensor) -> Tensor:
        return F.conv1d(x, self.weight(), self.bias, padding=self.padding, groups=self.groups)


class PositionalConvEmbedding(nn.Module):
    """(B, T, H) → (B, T, H) relative position signal: grouped conv, last frame dropped if the kernel is even, GELU."""

    def __init__(self, hidden_size: int, kernel_size: int, groups: int) -> None:
        super().__init__()
        self.conv = WeightNormConv1d(hidden_size, kernel_size, groups, padding=kernel_size // 2)
        self.drop_last = kernel_size % 2 == 0

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x.transpose(1, 2))
        if self.drop_last:
            y = y[:, :, :-1]
        return F.gelu(y).transpose(1, 2)


class SelfAttention(nn.Module):
    """Multi-head self-attention with biased q/k/v/out projections (keys ``q_proj`` … ``out_proj``)."""

    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden size {hidden_size} does not split into {num_heads} heads")
        self.num_heads, self.head_dim = num_heads, hidden_size // num_heads
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        heads = (x.shape[0], -1, self.num_heads, self.head_dim)  # (B, T, heads, d)
        q = self.q_proj(x).reshape(heads).transpose(1, 2)
        k = self.k_proj(x).reshape(heads).transpose(1, 2)
        v = self.v_proj(x).reshape(heads).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v)  # softmax(q kᵀ / √d) v, (B, heads, T, d)
        return self.out_proj(y.transpose(1, 2).flatten(2))


class FeedForward(nn.Module):
    """Linear(hidden → intermediate) → GELU → Linear(intermediate → hidden)."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.intermediate_dense = nn.Linear(hidden_size, intermediate_size)
        self.output_dense = nn.Linear(intermediate_size, hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.output_dense(F.gelu(self.intermediate_dense(x)))


class EncoderLayer(nn.Module):
    """Pre-LN ("stable layer norm") transformer layer."""

    def __init__(self, hidden_size: int, num_heads: int, intermediate_size: int, eps: float) -> None:
        super().__init__()
        self.attention = SelfAttention(hidden_size, num_heads)
        self.layer_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.feed_forward = FeedForward(hidden_size, intermediate_size)
        self.final_layer_norm = nn.LayerNorm(hidden_size, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.layer_norm(x))
        return x + self.feed_forward(self.final_layer_norm(x))


class Encoder(nn.Module):
    """Positional conv embedding, the transformer layers, then the final LayerNorm."""

    def __init__(
        self,
        hidden_size: int,
        num_layers: int,
        num_heads: int,
        intermediate_size: int,
        pos_conv_kernel: int,
        pos_conv_groups: int,
        eps: float,
    ) -> None:
        super().__init__()
        self.pos_conv_embed = PositionalConvEmbedding(hidden_size, pos_conv_kernel, pos_conv_groups)
        self.layer_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.layers = nn.ModuleList(
            EncoderLayer(hidden_size, num_heads, intermediate_size, eps) for _ in range(num_layers)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.pos_conv_embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.layer_norm(x)


class HubertLarge(nn.Module):
    """HuBERT encoder, large by default: (B, L) 16 kHz audio → (B, T, hidden) last hidden state.

    Args:
        conv_dim: channels of every feature-encoder conv (512).
        conv_kernels, conv_strides: per conv layer ((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)).
        conv_bias: biases on the feature-encoder convs (True for hubert-large-ls960-ft).
        hidden_size: transformer width (1024).
        num_layers: transformer layers (24).
        num_heads: attention heads (16).
        intermediate_size: FFN width (4096).
        pos_conv_kernel, pos_conv_groups: positional conv embedding (128, 16).
        layer_norm_eps: every LayerNorm's epsilon (1e-5).
    """

    def __init__(
        self,
        conv_dim: int = 512,
        conv_kernels: Sequence[int] = LARGE_CONV_KERNELS,
        conv_strides: Sequence[int] = LARGE_CONV_STRIDES,
        conv_bias: bool = True,
        hidden_size: int = 1024,
        num_layers: int = 24,
        num_heads: int = 16,
        intermediate_size: int = 4096,
        pos_conv_kernel: int = 128,
        pos_conv_groups: int = 16,
        layer_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.config: dict[str, Any] = {
            "conv_dim": conv_dim,
            "conv_kernels": tuple(conv_kernels),
            "conv_strides": tuple(conv_strides),
            "conv_bias": conv_bias,
            "hidden_size": hidden_size,
            "num_layers": num_layers,
            "num_heads": num_heads,
            "intermediate_size": intermediate_size,
            "pos_conv_kernel": pos_conv_kernel,
            "pos_conv_groups": pos_conv_groups,
            "layer_norm_eps": layer_norm_eps,
        }
        self.hidden_size = hidden_size
        self.feature_extractor = FeatureEncoder(conv_dim, conv_kernels, conv_strides, conv_bias, layer_norm_eps)
        self.feature_projection = FeatureProjection(conv_dim, hidden_size, layer_norm_eps)
        self.encoder = Encoder(
            hidden_size, num_layers, num_heads, intermediate_size, pos_conv_kernel, pos_conv_groups, layer_norm_eps
        )

    def num_frames(self, num_samples: int) -> int:
        """Output rows for ``num_samples`` input samples."""
        return num_frames(num_samples, self.config["conv_kernels"], self.config["conv_strides"])

    def forward(self, input_values: Tensor) -> Tensor:
        """(B, L) float audio → (B, T, hidden_size), T = :meth:`num_frames` (L)."""
        features = self.feature_extractor(input_values).transpose(1, 2)  # (B, T, conv_dim)
        return self.encoder(self.feature_projection(features))


#: Tensor names of the official ``hubert_streaming_fix_kv.onnx`` / ``hubert.onnx`` (docs/pipeline.md §4.1).
ONNX_INPUT_NAME = "input_values"
ONNX_OUTPUT_NAME = "encoding_out"


class _OfficialIO(nn.Module):
    """(1, L) → (T, hidden): the batch axis squeezed, as the official graph returns it.

    The attribute name makes every initializer ``hubert.<HubertModel key>``, the naming of a
    ``HubertForCTC`` export.
    """

    def __init__(self, hubert: HubertLarge) -> None:
        super().__init__()
        self.hubert = hubert

    def forward(self, input_values: Tensor) -> Tensor:
        return self.hubert(input_values)[0]


def export_hubert_onnx(
    model: HubertLarge,
    path: str | PathLike[str],
    *,
    opset_version: int = 17,
    constant_folding: bool = False,
    example_samples: int = 6480,
) -> None:
    """Export ``model`` with the official IO: ``input_values`` (1, L), L dynamic → ``encoding_out`` (T, hidden).

    TorchScript exporter (``dynamo=False``, no onnxscript needed; ~1.3 GB of fp32 weights stay
    under protobuf's 2 GB limit, so the file is one file like the official one). With
    ``constant_folding`` off every weight keeps its state-dict name (``hubert.`` + key) and
    Linear weights stay (out, in) behind a Transpose node, which onnxruntime folds when it loads
    the file; with it on, the exporter stores Linear weights transposed under anonymous
    ``onnx::MatMul_N`` names (what a default ``torch.onnx.export`` of HF's model gives). Either
    way initializers with equal values (e.g. LayerNorms still at 1/0) are deduplicated by the
    exporter into Identity nodes.
    """
    was_training = model.training
    model.eval()
    p = next(model.parameters())
    example = torch.zeros(1, example_samples, dtype=p.dtype, device=p.device)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python-side shape arithmetic
            torch.onnx.export(
                _OfficialIO(model).eval(),
                (example,),
                os.fspath(path),
                input_names=[ONNX_INPUT_NAME],
                output_names=[ONNX_OUTPUT_NAME],
                dynamic_axes={ONNX_INPUT_NAME: {1: "num_samples"}, ONNX_OUTPUT_NAME: {0: "num_frames"}},
                opset_version=opset_version,
                do_constant_folding=constant_folding,
                dynamo=False,
            )
    finally:
        model.train(was_training)

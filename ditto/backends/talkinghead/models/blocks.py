"""Building blocks shared by the LivePortrait-style renderer networks used by Ditto.

Every block keeps the attribute names of the official modules (``conv``, ``norm``, ``pool``, ``ac``,
``conv1``/``norm1``, ``weight_orig``/``weight_u``/``weight_v``, ...) because those names are the
state-dict keys of the released ``.pth`` checkpoints. The arithmetic is kept op for op in the same
order as upstream so that fp32 results and CUDA-autocast fp16 results follow the same path
(autocast picks the dtype per op: ``pow``/``norm``/``exp``/``softmax`` run in fp32, convolutions in fp16).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DownBlock2d",
    "DownBlock3d",
    "GlobalResponseNorm",
    "LayerNorm2d",
    "ResBlock3d",
    "SameBlock2d",
    "SpectralNormConv2d",
    "UpBlock3d",
    "gaussian_heatmaps",
    "identity_grid_3d",
]


# --------------------------------------------------------------------------------------------
# 2-D / 3-D convolution blocks (appearance extractor, warping network)
# --------------------------------------------------------------------------------------------
class SameBlock2d(nn.Module):
    """Conv2d → BatchNorm2d → ReLU (or LeakyReLU 0.01); keeps the spatial size."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | tuple[int, int] = 3,
        padding: int | tuple[int, int] = 1,
        groups: int = 1,
        lrelu: bool = False,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size, padding=padding, groups=groups)
        self.norm = nn.BatchNorm2d(out_features, affine=True)
        self.ac = nn.LeakyReLU() if lrelu else nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ac(self.norm(self.conv(x)))


class DownBlock2d(nn.Module):
    """Conv2d → BatchNorm2d → ReLU → 2×2 average pooling (halves H and W)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | tuple[int, int] = 3,
        padding: int | tuple[int, int] = 1,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size, padding=padding, groups=groups)
        self.norm = nn.BatchNorm2d(out_features, affine=True)
        self.pool = nn.AvgPool2d(kernel_size=(2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(F.relu(self.norm(self.conv(x))))


class DownBlock3d(nn.Module):
    """Conv3d → BatchNorm3d → ReLU → (1,2,2) average pooling (depth kept, H and W halved)."""

    def __init__(
        self, in_features: int, out_features: int, kernel_size: int = 3, padding: int = 1, groups: int = 1
    ) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_features, out_features, kernel_size, padding=padding, groups=groups)
        self.norm = nn.BatchNorm3d(out_features, affine=True)
        self.pool = nn.AvgPool3d(kernel_size=(1, 2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(F.relu(self.norm(self.conv(x))))


class UpBlock3d(nn.Module):
    """Nearest ×(1,2,2) upsampling → Conv3d → BatchNorm3d → ReLU."""

    def __init__(
        self, in_features: int, out_features: int, kernel_size: int = 3, padding: int = 1, groups: int = 1
    ) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_features, out_features, kernel_size, padding=padding, groups=groups)
        self.norm = nn.BatchNorm3d(out_features, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        upsampled = F.interpolate(x, scale_factor=(1, 2, 2))
        return F.relu(self.norm(self.conv(upsampled)))


class ResBlock3d(nn.Module):
    """Pre-activation residual block on a 3-D volume: (BN → ReLU → Conv3d) twice, plus identity."""

    def __init__(self, in_features: int, kernel_size: int = 3, padding: int = 1) -> None:
        super().__init__()
        # Registration order (conv1, conv2, norm1, norm2) mirrors the checkpoint's key order.
        self.conv1 = nn.Conv3d(in_features, in_features, kernel_size, padding=padding)
        self.conv2 = nn.Conv3d(in_features, in_features, kernel_size, padding=padding)
        self.norm1 = nn.BatchNorm3d(in_features, affine=True)
        self.norm2 = nn.BatchNorm3d(in_features, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.relu(self.norm1(x)))
        h = self.conv2(F.relu(self.norm2(h)))
        return h + x


# --------------------------------------------------------------------------------------------
# ConvNeXt-V2 normalisations (motion extractor)
# --------------------------------------------------------------------------------------------
class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of an NCHW tensor (ConvNeXt "channels_first" variant).

    Computed explicitly (mean, biased variance via ``pow``, ``sqrt``) like upstream rather than with
    ``F.layer_norm``, so that autocast treats it the same way the official module is treated.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        centred = x - mean
        var = centred.pow(2).mean(1, keepdim=True)
        normed = centred / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * normed + self.bias[:, None, None]


class GlobalResponseNorm(nn.Module):
    """ConvNeXt-V2 GRN on an NHWC tensor: per-channel L2 energy over H,W, divided by its channel mean."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        energy = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
        relative = energy / (energy.mean(dim=-1, keepdim=True) + self.eps)
        return self.gamma * (x * relative) + self.beta + x


# --------------------------------------------------------------------------------------------
# Spectral-normalised convolution (SPADE decoder)
# --------------------------------------------------------------------------------------------
class SpectralNormConv2d(nn.Module):
    """A Conv2d whose weight is divided by its largest singular value, estimated by power iteration.

    State-dict layout equals ``torch.nn.utils.spectral_norm(nn.Conv2d(...))``: ``bias`` (if any),
    ``weight_orig`` (the raw weight), and the buffers ``weight_u`` (out_channels,) and ``weight_v``
    (in_channels·kh·kw,). Behaviour also matches it:

    * ``eval()``: no power iteration; sigma = u · (W v) with the STORED u and v, weight = W / sigma.
    * ``train()``: ``n_power_iterations`` steps update u and v in place (no grad), then the same formula.

    The normalised weight is computed inside ``forward`` from the buffers (no hooks, no ``weight``
    attribute), which keeps TorchScript-based ONNX export simple (it folds to a constant weight).
    """

    weight_u: torch.Tensor  # buffer (out_channels,)
    weight_v: torch.Tensor  # buffer (in_channels·kh·kw,)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        padding: int = 0,
        dilation: int = 1,
        bias: bool = True,
        n_power_iterations: int = 1,
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        if n_power_iterations <= 0:
            raise ValueError(f"n_power_iterations must be positive, got {n_power_iterations}")
        self.padding = padding
        self.dilation = dilation
        self.n_power_iterations = n_power_iterations
        self.eps = eps

        # Same registration order as spectral_norm leaves behind: bias, weight_orig, weight_u, weight_v.
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.weight_orig = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.register_buffer("weight_u", torch.empty(out_channels))
        self.register_buffer("weight_v", torch.empty(in_channels * kernel_size * kernel_size))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Conv2d's default init for weight/bias; u, v start from a few power steps so sigma is sane."""
        nn.init.kaiming_uniform_(self.weight_orig, a=math.sqrt(5))
        fan_in = self.weight_orig[0].numel()
        if self.bias is not None:
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)
        self.weight_u.normal_()
        self.weight_u.copy_(F.normalize(self.weight_u, dim=0, eps=self.eps))
        self.weight_v.normal_()
        self.weight_v.copy_(F.normalize(self.weight_v, dim=0, eps=self.eps))
        self._power_iteration(self._weight_matrix(), steps=5)

    def _weight_matrix(self) -> torch.Tensor:
        return self.weight_orig.reshape(self.weight_orig.shape[0], -1)

    @torch.no_grad()
    def _power_iteration(self, matrix: torch.Tensor, steps: int) -> None:
        for _ in range(steps):
            self.weight_v.copy_(F.normalize(torch.mv(matrix.t(), self.weight_u), dim=0, eps=self.eps))
            self.weight_u.copy_(F.normalize(torch.mv(matrix, self.weight_v), dim=0, eps=self.eps))

    def normalized_weight(self) -> torch.Tensor:
        """The weight actually convolved: ``weight_orig / sigma`` (updates u, v first in training)."""
        matrix = self._weight_matrix()
        left, right = self.weight_u, self.weight_v
        if self.training:
            self._power_iteration(matrix.detach(), steps=self.n_power_iterations)
            # Detached copies, so autograd does not see the later in-place buffer updates.
            left, right = self.weight_u.clone(), self.weight_v.clone()
        sigma = torch.dot(left, torch.mv(matrix, right))
        return self.weight_orig / sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.normalized_weight(), self.bias, padding=self.padding, dilation=self.dilation)

    def extra_repr(self) -> str:
        out_c, in_c, kh, kw = self.weight_orig.shape
        return f"{in_c}, {out_c}, kernel_size=({kh}, {kw}), padding={self.padding}, bias={self.bias is not None}"


# --------------------------------------------------------------------------------------------
# Geometry helpers (warping network)
# --------------------------------------------------------------------------------------------
def identity_grid_3d(depth: int, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """Identity sampling grid of shape (depth, height, width, 3) with (x, y, z) coordinates in [-1, 1].

    Pixel-centre convention matches ``grid_sample(align_corners=False)`` callers upstream: index i maps
    to 2·i/(n−1) − 1. x runs along width, y along height, z along depth. dtype/device follow ``like``.
    """

    def axis(n: int) -> torch.Tensor:
        idx = torch.arange(n, dtype=like.dtype, device=like.device)
        return 2 * (idx / (n - 1)) - 1

    xs = axis(width).view(1, 1, width).expand(depth, height, width)
    ys = axis(height).view(1, height, 1).expand(depth, height, width)
    zs = axis(depth).view(depth, 1, 1).expand(depth, height, width)
    return torch.stack([xs, ys, zs], dim=3)


def gaussian_heatmaps(keypoints: torch.Tensor, spatial_size: tuple[int, int, int], variance: float) -> torch.Tensor:
    """Isotropic Gaussian blob per keypoint on the identity grid.

    Args:
        keypoints: (B, K, 3) in normalised (x, y, z) coordinates.
        spatial_size: (D, H, W) of the volume.
        variance: Gaussian variance in normalised units (0.01 upstream).

    Returns:
        (B, K, D, H, W) values exp(−½·|p − kp|² / variance).
    """
    depth, height, width = spatial_size
    grid = identity_grid_3d(depth, height, width, keypoints).view(1, 1, depth, height, width, 3)
    centres = keypoints.view(keypoints.shape[0], keypoints.shape[1], 1, 1, 1, 3)
    sq_dist = ((grid - centres) ** 2).sum(-1)
    return torch.exp(-0.5 * sq_dist / variance)

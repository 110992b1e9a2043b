"""Motion extractor (M in the LivePortrait paper).

From a 256×256 face crop it regresses, in one pass, everything the renderer needs to place the 21
implicit 3-D keypoints: the canonical keypoints ``kp``, head pose as 66-bin logits for pitch, yaw and
roll, translation ``t``, expression offsets ``exp`` and a global ``scale``. Ditto uses it once per
source frame to build the source motion, which the diffusion model then edits.

Backbone: ConvNeXt-V2 tiny (depths 3,3,9,3; widths 96,192,384,768), global average pooling and
seven linear heads, all living under the ``detector`` attribute as in ``motion_extractor.pth``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .blocks import GlobalResponseNorm, LayerNorm2d

__all__ = ["ConvNeXtV2Block", "ConvNeXtV2Detector", "MotionExtractor", "MOTION_OUTPUT_NAMES"]

#: Output names, in the order of the official ONNX model / TensorRT bindings.
MOTION_OUTPUT_NAMES: tuple[str, ...] = ("pitch", "yaw", "roll", "t", "exp", "scale", "kp")

_BACKBONES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "convnextv2_tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
}


class ConvNeXtV2Block(nn.Module):
    """Depthwise 7×7 conv → LayerNorm → Linear(4×) → GELU → GRN → Linear → residual add (NCHW in/out)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.grn = GlobalResponseNorm(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dwconv(x).permute(0, 2, 3, 1)  # NHWC for the channel-wise layers
        h = self.pwconv2(self.grn(self.act(self.pwconv1(self.norm(h)))))
        return x + h.permute(0, 3, 1, 2)


class ConvNeXtV2Detector(nn.Module):
    """ConvNeXt-V2 trunk plus the keypoint / pose / expression heads.

    Returns a tuple (pitch, yaw, roll, t, exp, scale, kp) with shapes (B,num_bins)×3, (B,3),
    (B,3·num_kp), (B,1), (B,3·num_kp).
    """

    def __init__(
        self,
        in_channels: int = 3,
        depths: Sequence[int] = (3, 3, 9, 3),
        dims: Sequence[int] = (96, 192, 384, 768),
        num_kp: int = 21,
        num_bins: int = 66,
    ) -> None:
        super().__init__()
        if len(depths) != len(dims):
            raise ValueError("depths and dims must have the same length")
        # Stem: patchify 4×4 then LayerNorm; later stages: LayerNorm then 2×2 stride-2 conv.
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(in_channels, dims[0], kernel_size=4, stride=4), LayerNorm2d(dims[0], eps=1e-6))]
        )
        for prev_dim, next_dim in zip(dims[:-1], dims[1:]):
            self.downsample_layers.append(
                nn.Sequential(LayerNorm2d(prev_dim, eps=1e-6), nn.Conv2d(prev_dim, next_dim, kernel_size=2, stride=2))
            )
        self.stages = nn.ModuleList(
            nn.Sequential(*(ConvNeXtV2Block(dim) for _ in range(depth))) for depth, dim in zip(depths, dims)
        )
        width = dims[-1]
        self.norm = nn.LayerNorm(width, eps=1e-6)
        # Head registration order follows the checkpoint.
        self.fc_kp = nn.Linear(width, 3 * num_kp)
        self.fc_scale = nn.Linear(width, 1)
        self.fc_pitch = nn.Linear(width, num_bins)
        self.fc_yaw = nn.Linear(width, num_bins)
        self.fc_roll = nn.Linear(width, num_bins)
        self.fc_t = nn.Linear(width, 3)
        self.fc_exp = nn.Linear(width, 3 * num_kp)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B,3,H,W) → pooled, normalised feature (B, dims[-1])."""
        for downsample, stage in zip(self.downsample_layers, self.stages):
            x = stage(downsample(x))
        return self.norm(x.mean([-2, -1]))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feat = self.embed(x)
        return (
            self.fc_pitch(feat),
            self.fc_yaw(feat),
            self.fc_roll(feat),
            self.fc_t(feat),
            self.fc_exp(feat),
            self.fc_scale(feat),
            self.fc_kp(feat),
        )


class MotionExtractor(nn.Module):
    """LivePortrait motion extractor as shipped with Ditto (``motion_extractor.pth``, 212 keys).

    Args:
        num_kp: number of implicit keypoints (21).
        backbone: only ``"convnextv2_tiny"`` exists in the released model.
        num_bins: pose bins per angle (66 bins of 3°).
    """

    def __init__(self, num_kp: int = 21, backbone: str = "convnextv2_tiny", num_bins: int = 66) -> None:
        super().__init__()
        if backbone not in _BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; expected one of {sorted(_BACKBONES)}")
        depths, dims = _BACKBONES[backbone]
        self.num_kp = num_kp
        self.detector = ConvNeXtV2Detector(depths=depths, dims=dims, num_kp=num_kp, num_bins=num_bins)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predict the motion of an RGB crop.

        Args:
            image: (B, 3, 256, 256) RGB in [0, 1].

        Returns:
            dict in ONNX output order: ``pitch``, ``yaw``, ``roll`` (B,66) bin logits, ``t`` (B,3),
            ``exp`` (B,63), ``scale`` (B,1), ``kp`` (B,63). Pose is still in logit space; converting to
            degrees (softmax · bin index · 3 − 97.5) is the caller's job.
        """
        return dict(zip(MOTION_OUTPUT_NAMES, self.detector(image)))

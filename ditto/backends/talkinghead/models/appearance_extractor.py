"""Appearance feature extractor (F in the LivePortrait paper).

Turns the 256×256 source crop into the 3-D appearance volume f_s (32 channels × depth 16 × 64 × 64)
that the warping network later deforms. Ditto runs it once per source frame at registration time.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import DownBlock2d, ResBlock3d, SameBlock2d

__all__ = ["AppearanceFeatureExtractor"]


class AppearanceFeatureExtractor(nn.Module):
    """2-D encoder lifted to a 3-D volume (``appearance_extractor.pth``, 107 keys, ~0.84 M parameters).

    Layout: ``first`` (3×3 conv block) → ``down_blocks`` (two stride-2 blocks: 64→128→256) →
    ``second`` (1×1 conv to ``max_features``) → reshape to (reshape_channel, reshape_depth, H/4, W/4)
    → ``resblocks_3d`` (``3dr0`` … ``3dr5``).
    """

    def __init__(
        self,
        image_channel: int = 3,
        block_expansion: int = 64,
        num_down_blocks: int = 2,
        max_features: int = 512,
        reshape_channel: int = 32,
        reshape_depth: int = 16,
        num_resblocks: int = 6,
    ) -> None:
        super().__init__()
        if reshape_channel * reshape_depth != max_features:
            raise ValueError("reshape_channel * reshape_depth must equal max_features")
        self.reshape_channel = reshape_channel
        self.reshape_depth = reshape_depth

        self.first = SameBlock2d(image_channel, block_expansion, kernel_size=(3, 3), padding=(1, 1))
        widths = [min(max_features, block_expansion * 2**level) for level in range(num_down_blocks + 1)]
        self.down_blocks = nn.ModuleList(
            DownBlock2d(c_in, c_out, kernel_size=(3, 3), padding=(1, 1)) for c_in, c_out in zip(widths[:-1], widths[1:])
        )
        self.second = nn.Conv2d(widths[-1], max_features, kernel_size=1, stride=1)
        self.resblocks_3d = nn.Sequential()
        for index in range(num_resblocks):
            self.resblocks_3d.add_module(f"3dr{index}", ResBlock3d(reshape_channel, kernel_size=3, padding=1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Args: image (B, 3, 256, 256) RGB in [0, 1]. Returns f_s (B, 32, 16, 64, 64)."""
        h = self.first(image)
        for block in self.down_blocks:
            h = block(h)
        h = self.second(h)
        batch, _, height, width = h.shape
        volume = h.view(batch, self.reshape_channel, self.reshape_depth, height, width)
        return self.resblocks_3d(volume)

"""SPADE generator / decoder (G in the LivePortrait paper).

Renders the warped 256×64×64 feature map into the 512×512 RGB face crop. Every residual block is
modulated by SPADE normalisation whose "segmentation map" is the decoder's own input feature, and
the block convolutions are spectrally normalised (``weight_orig``/``weight_u``/``weight_v`` keys).
The last 3×3 conv predicts 12 channels that a pixel shuffle turns into a 2× larger RGB image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import SpectralNormConv2d

__all__ = ["SPADE", "SPADEDecoder", "SPADEResnetBlock"]


class SPADE(nn.Module):
    """Spatially-adaptive denormalisation: InstanceNorm(x)·(1 + γ(seg)) + β(seg)."""

    def __init__(self, norm_nc: int, label_nc: int, hidden: int = 128) -> None:
        super().__init__()
        self.param_free_norm = nn.InstanceNorm2d(norm_nc, affine=False)
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, hidden, kernel_size=3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, norm_nc, kernel_size=3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden, norm_nc, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        normalized = self.param_free_norm(x)
        label = F.interpolate(segmap, size=x.shape[2:], mode="nearest")
        shared = self.mlp_shared(label)
        return normalized * (1 + self.mlp_gamma(shared)) + self.mlp_beta(shared)


class SPADEResnetBlock(nn.Module):
    """Residual block: [SPADE → LeakyReLU(0.2) → SN-conv3×3] ×2, shortcut learned (SPADE → SN-conv1×1) when widths differ."""

    def __init__(self, fin: int, fout: int, label_nc: int, dilation: int = 1) -> None:
        super().__init__()
        self.learned_shortcut = fin != fout
        fmiddle = min(fin, fout)
        # Registration order matches the checkpoint: conv_0, conv_1, [conv_s], norm_0, norm_1, [norm_s].
        self.conv_0 = SpectralNormConv2d(fin, fmiddle, kernel_size=3, padding=dilation, dilation=dilation)
        self.conv_1 = SpectralNormConv2d(fmiddle, fout, kernel_size=3, padding=dilation, dilation=dilation)
        if self.learned_shortcut:
            self.conv_s = SpectralNormConv2d(fin, fout, kernel_size=1, bias=False)
        self.norm_0 = SPADE(fin, label_nc)
        self.norm_1 = SPADE(fmiddle, label_nc)
        if self.learned_shortcut:
            self.norm_s = SPADE(fin, label_nc)

    @staticmethod
    def _act(x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, 2e-1)

    def forward(self, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        skip = self.conv_s(self.norm_s(x, segmap)) if self.learned_shortcut else x
        h = self.conv_0(self._act(self.norm_0(x, segmap)))
        h = self.conv_1(self._act(self.norm_1(h, segmap)))
        return skip + h


class SPADEDecoder(nn.Module):
    """Ditto's decoder (``decoder.pth``, 182 keys, ~55.4 M parameters).

    Layout: ``fc`` (3×3, 256→512) → ``G_middle_0..5`` (512→512) → ×2 → ``up_0`` (512→256) → ×2 →
    ``up_1`` (256→``out_channels``) → LeakyReLU(0.2) → ``conv_img`` (3×3 to 12 ch + PixelShuffle(2)
    when ``upscale`` > 1, else a plain 3×3 to 3 ch) → sigmoid.
    """

    num_middle_blocks = 6

    def __init__(
        self,
        upscale: int | None = 2,
        max_features: int = 512,
        block_expansion: int = 64,
        out_channels: int = 64,
        num_down_blocks: int = 2,
    ) -> None:
        super().__init__()
        in_width = min(max_features, block_expansion * 2**num_down_blocks)  # 256: the warp network's output width
        mid_width = 2 * in_width
        self.upscale = upscale
        self.fc = nn.Conv2d(in_width, mid_width, kernel_size=3, padding=1)
        for index in range(self.num_middle_blocks):
            self.add_module(f"G_middle_{index}", SPADEResnetBlock(mid_width, mid_width, label_nc=in_width))
        self.up_0 = SPADEResnetBlock(mid_width, in_width, label_nc=in_width)
        self.up_1 = SPADEResnetBlock(in_width, out_channels, label_nc=in_width)
        self.up = nn.Upsample(scale_factor=2)
        self.conv_img: nn.Module
        if upscale is None or upscale <= 1:
            self.conv_img = nn.Conv2d(out_channels, 3, kernel_size=3, padding=1)
        else:
            # Upstream hard-codes a 2× shuffle whatever the value of ``upscale`` (> 1).
            self.conv_img = nn.Sequential(
                nn.Conv2d(out_channels, 3 * 2 * 2, kernel_size=3, padding=1),
                nn.PixelShuffle(upscale_factor=2),
            )

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        """Args: feature (B, 256, 64, 64) from the warp network. Returns RGB (B, 3, 512, 512) in (0, 1)."""
        segmap = feature
        x = self.fc(feature)
        for index in range(self.num_middle_blocks):
            x = getattr(self, f"G_middle_{index}")(x, segmap)
        x = self.up_0(self.up(x), segmap)
        x = self.up_1(self.up(x), segmap)
        return torch.sigmoid(self.conv_img(F.leaky_relu(x, 2e-1)))

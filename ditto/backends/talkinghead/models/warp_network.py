"""Warping module (W in the LivePortrait paper).

Given the source appearance volume f_s and two sets of 21 implicit keypoints (source x_s, driving
x_d), a dense-motion hourglass blends per-keypoint rigid shifts into one 3-D backward flow, f_s is
resampled along it with trilinear ``grid_sample``, flattened to 2-D and refined, and an occlusion
map estimated from the same hourglass features masks regions the source cannot explain. The
output (256 channels, 64×64) is what the SPADE decoder renders. In Ditto this runs once per frame.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import DownBlock3d, SameBlock2d, UpBlock3d, gaussian_heatmaps, identity_grid_3d

__all__ = ["DenseMotionNetwork", "Hourglass3d", "WarpingNetwork"]


class _HourglassEncoder(nn.Module):
    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int) -> None:
        super().__init__()
        widths = [in_features] + [min(max_features, block_expansion * 2 ** (i + 1)) for i in range(num_blocks)]
        self.down_blocks = nn.ModuleList(
            DownBlock3d(a, b, kernel_size=3, padding=1) for a, b in zip(widths[:-1], widths[1:])
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        pyramid = [x]
        for block in self.down_blocks:
            pyramid.append(block(pyramid[-1]))
        return pyramid


class _HourglassDecoder(nn.Module):
    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int) -> None:
        super().__init__()
        blocks = []
        for level in reversed(range(num_blocks)):
            skip_factor = 1 if level == num_blocks - 1 else 2  # deepest block has no skip concatenated yet
            c_in = skip_factor * min(max_features, block_expansion * 2 ** (level + 1))
            c_out = min(max_features, block_expansion * 2**level)
            blocks.append(UpBlock3d(c_in, c_out, kernel_size=3, padding=1))
        self.up_blocks = nn.ModuleList(blocks)
        self.out_filters = block_expansion + in_features
        self.conv = nn.Conv3d(self.out_filters, self.out_filters, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(self.out_filters, affine=True)

    def forward(self, pyramid: list[torch.Tensor]) -> torch.Tensor:
        h = pyramid[-1]
        for block, skip in zip(self.up_blocks, reversed(pyramid[:-1])):
            h = torch.cat([block(h), skip], dim=1)
        return F.relu(self.norm(self.conv(h)))


class Hourglass3d(nn.Module):
    """U-Net over (C, D, H, W) volumes that pools only H and W; output has ``out_filters`` channels."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int = 3, max_features: int = 256) -> None:
        super().__init__()
        self.encoder = _HourglassEncoder(block_expansion, in_features, num_blocks, max_features)
        self.decoder = _HourglassDecoder(block_expansion, in_features, num_blocks, max_features)
        self.out_filters = self.decoder.out_filters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class DenseMotionNetwork(nn.Module):
    """Predicts the dense 3-D deformation (and an occlusion map) from sparse keypoint motion.

    Motion hypotheses: K+1 candidate flows — identity (background) and, per keypoint k, the shift
    that carries driving keypoint k onto source keypoint k. The hourglass sees each hypothesis'
    warped (compressed) feature plus the heatmap difference of the two keypoint sets, and a softmax
    mask picks a per-voxel mixture of the hypotheses.
    """

    def __init__(
        self,
        block_expansion: int,
        num_blocks: int,
        max_features: int,
        num_kp: int,
        feature_channel: int,
        reshape_depth: int,
        compress: int,
        estimate_occlusion_map: bool = True,
        kp_variance: float = 0.01,
    ) -> None:
        super().__init__()
        self.num_kp = num_kp
        self.kp_variance = kp_variance
        # Registration order follows the checkpoint: hourglass, mask, compress, norm, occlusion.
        self.hourglass = Hourglass3d(
            block_expansion=block_expansion,
            in_features=(num_kp + 1) * (compress + 1),
            max_features=max_features,
            num_blocks=num_blocks,
        )
        hidden = self.hourglass.out_filters
        self.mask = nn.Conv3d(hidden, num_kp + 1, kernel_size=7, padding=3)
        self.compress = nn.Conv3d(feature_channel, compress, kernel_size=1)
        self.norm = nn.BatchNorm3d(compress, affine=True)
        self.occlusion: nn.Conv2d | None
        if estimate_occlusion_map:
            self.occlusion = nn.Conv2d(hidden * reshape_depth, 1, kernel_size=7, padding=3)
        else:
            self.occlusion = None

    def _candidate_flows(self, volume: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
        """(B, K+1, D, H, W, 3) sampling grids: identity, then grid − kp_d[k] + kp_s[k] per keypoint."""
        batch, _, depth, height, width = volume.shape
        base = identity_grid_3d(depth, height, width, kp_source).view(1, 1, depth, height, width, 3)
        shifted = (
            base - kp_driving.view(batch, self.num_kp, 1, 1, 1, 3) + kp_source.view(batch, self.num_kp, 1, 1, 1, 3)
        )
        return torch.cat([base.expand(batch, 1, depth, height, width, 3), shifted], dim=1)

    def _warp_per_hypothesis(self, volume: torch.Tensor, flows: torch.Tensor) -> torch.Tensor:
        """Sample ``volume`` (B,C,D,H,W) along each of the K+1 flows → (B, K+1, C, D, H, W)."""
        batch, channels, depth, height, width = volume.shape
        hypotheses = self.num_kp + 1
        tiled = volume.unsqueeze(1).expand(batch, hypotheses, channels, depth, height, width)
        tiled = tiled.reshape(batch * hypotheses, channels, depth, height, width)
        grids = flows.reshape(batch * hypotheses, depth, height, width, 3)
        warped = F.grid_sample(tiled, grids, align_corners=False)
        return warped.reshape(batch, hypotheses, channels, depth, height, width)

    def _heatmap_difference(
        self, like: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor
    ) -> torch.Tensor:
        """(B, K+1, 1, D, H, W): zero background channel, then gaussian(kp_d) − gaussian(kp_s)."""
        depth, height, width = like.shape[3:]
        size = (depth, height, width)
        diff = gaussian_heatmaps(kp_driving, size, self.kp_variance) - gaussian_heatmaps(
            kp_source, size, self.kp_variance
        )
        background = diff.new_zeros((diff.shape[0], 1) + size)
        return torch.cat([background, diff], dim=1).unsqueeze(2)

    def forward(
        self, feature: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns (deformation (B, D, H, W, 3), occlusion map (B, 1, H, W) or None)."""
        batch, _, depth, height, width = feature.shape
        compressed = F.relu(self.norm(self.compress(feature)))

        flows = self._candidate_flows(compressed, kp_source, kp_driving)
        warped = self._warp_per_hypothesis(compressed, flows)
        heatmaps = self._heatmap_difference(warped, kp_source, kp_driving)
        hourglass_in = torch.cat([heatmaps, warped], dim=2).reshape(batch, -1, depth, height, width)
        hidden = self.hourglass(hourglass_in)

        weights = F.softmax(self.mask(hidden), dim=1).unsqueeze(2)  # (B, K+1, 1, D, H, W)
        deformation = (flows.permute(0, 1, 5, 2, 3, 4) * weights).sum(dim=1).permute(0, 2, 3, 4, 1)

        occlusion_map = None
        if self.occlusion is not None:
            flat = hidden.reshape(batch, -1, hidden.shape[3], hidden.shape[4])
            occlusion_map = torch.sigmoid(self.occlusion(flat))
        return deformation, occlusion_map


class WarpingNetwork(nn.Module):
    """Ditto's warp network (``warp_network.pth``, 97 keys, ~45.5 M parameters).

    Args mirror the official constructor; the dense-motion settings (block_expansion 32,
    max_features 1024, 5 blocks, depth 16, compress 4) are fixed there and exposed here as defaults.
    """

    def __init__(
        self,
        num_kp: int = 21,
        block_expansion: int = 64,
        max_features: int = 512,
        num_down_blocks: int = 2,
        reshape_channel: int = 32,
        estimate_occlusion_map: bool = True,
        dense_block_expansion: int = 32,
        dense_max_features: int = 1024,
        dense_num_blocks: int = 5,
        reshape_depth: int = 16,
        compress: int = 4,
    ) -> None:
        super().__init__()
        self.dense_motion_network = DenseMotionNetwork(
            block_expansion=dense_block_expansion,
            num_blocks=dense_num_blocks,
            max_features=dense_max_features,
            num_kp=num_kp,
            feature_channel=reshape_channel,
            reshape_depth=reshape_depth,
            compress=compress,
            estimate_occlusion_map=estimate_occlusion_map,
        )
        out_width = block_expansion * 2**num_down_blocks
        self.third = SameBlock2d(max_features, out_width, kernel_size=(3, 3), padding=(1, 1), lrelu=True)
        self.fourth = nn.Conv2d(out_width, out_width, kernel_size=1, stride=1)

    def forward(self, feature_3d: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
        """Warp the source volume from the source pose to the driving pose.

        Args:
            feature_3d: f_s (B, 32, 16, 64, 64) from the appearance extractor.
            kp_source: x_s (B, 21, 3) transformed source keypoints.
            kp_driving: x_d (B, 21, 3) transformed (and usually stitched) driving keypoints.

        Returns:
            (B, 256, 64, 64) warped feature, already multiplied by the occlusion map.
        """
        deformation, occlusion_map = self.dense_motion_network(feature_3d, kp_driving, kp_source)
        warped = F.grid_sample(feature_3d, deformation, align_corners=False)
        batch, channels, depth, height, width = warped.shape
        out = self.fourth(self.third(warped.reshape(batch, channels * depth, height, width)))
        if occlusion_map is not None:
            out = out * occlusion_map
        return out

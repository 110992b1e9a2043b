"""Stitching module (S in the LivePortrait paper).

A small MLP that looks at the source and driving keypoints and nudges the driving ones — a
per-keypoint offset plus one shared x/y shift — so that the rendered 512×512 crop lines up with the
original frame around the crop border (shoulders, neck) when it is pasted back. Ditto applies it to
every driven frame when ``flag_stitching`` is on, in fp32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["StitchingNetwork"]


class StitchingNetwork(nn.Module):
    """MLP 126 → 128 → 128 → 64 → 65 (keys ``mlp.0/2/4/6``, 8 keys, ~0.045 M parameters).

    Input: concat(flattened x_s, flattened x_d). Output: 3·K per-keypoint offsets followed by a
    2-vector (tx, ty) added to the x and y of every keypoint.
    """

    def __init__(
        self, input_size: int = 126, hidden_sizes: Sequence[int] = (128, 128, 64), output_size: int = 65
    ) -> None:
        super().__init__()
        widths = [input_size, *hidden_sizes]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(c_in, c_out), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(widths[-1], output_size))
        self.mlp = nn.Sequential(*layers)

    def forward(self, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
        """Return the stitched driving keypoints (not a delta).

        Args:
            kp_source: x_s (B, K, 3).
            kp_driving: x_d (B, K, 3).

        Returns:
            (B, K, 3): x_d + offsets, with (tx, ty) added to columns 0 and 1 of every keypoint.
        """
        batch, num_kp = kp_source.shape[:2]
        delta = self.mlp(torch.cat([kp_source.reshape(batch, -1), kp_driving.reshape(batch, -1)], dim=1))
        per_kp = delta[:, : 3 * num_kp].reshape(batch, num_kp, 3)
        shift_xy = delta[:, 3 * num_kp : 3 * num_kp + 2].reshape(batch, 1, 2)
        shift = torch.cat([shift_xy, torch.zeros_like(shift_xy[..., :1])], dim=-1)  # z is left alone
        return kp_driving + per_kp + shift

"""Stitching module (S in the LivePortrait paper).

A small MLP that looks at the source and driving keypoints and nudges the driving ones — a
per-keypoint offset plus one shared x/y shift — so that the rendered 512×512 crop lines up with the
original frame around the crop border (shoulders, neck) when it is pasted back. Ditto applies it to
every driven frame when ``flag_stitching`` is on, in fp32.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["StitchingNetwork", "stitch_state_dict_from_checkpoint"]

#: Key under which LivePortrait-format stitching checkpoints keep the stitching MLP's weights.
STITCH_CHECKPOINT_KEY = "retarget_shoulder"


def stitch_state_dict_from_checkpoint(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Extract the ``StitchingNetwork`` state dict from a loaded ``stitch_network.pth`` object.

    The official file is a dict whose ``"retarget_shoulder"`` entry holds the weights, possibly with
    the ``module.`` prefix that DataParallel adds. A plain state dict (``mlp.*`` keys at top level)
    is accepted too, so files re-saved by our own tools load the same way.

    Raises:
        KeyError: neither layout is recognised.
    """
    if STITCH_CHECKPOINT_KEY in obj:
        state = obj[STITCH_CHECKPOINT_KEY]
    elif any(str(key).startswith(("mlp.", "module.mlp.")) for key in obj):
        state = obj
    else:
        raise KeyError(f"no {STITCH_CHECKPOINT_KEY!r} entry and no mlp.* keys in stitching checkpoint (keys: {sorted(obj)[:8]})")
    prefix = "module."
    return {(key[len(prefix):] if key.startswith(prefix) else key): value for key, value in state.items()}


class StitchingNetwork(nn.Module):
    """MLP 126 → 128 → 128 → 64 → 65 (keys ``mlp.0/2/4/6``, 8 keys, ~0.045 M parameters).

    Input: concat(flattened x_s, flattened x_d). Output: 3·K per-keypoint offsets followed by a
    2-vector (tx, ty) added to the x and y of every keypoint.
    """

    def __init__(self, input_size: int = 126, hidden_sizes: Sequence[int] = (128, 128, 64), output_size: int = 65) -> None:
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

"""Typed payloads passed between the Ditto streaming stages.

The official SDK (antgroup/ditto-talkinghead, ``stream_pipeline_online.py``) moves loose dicts and
lists of numpy arrays through six queues. Here each hand-off is a frozen, slotted dataclass whose
fields are torch tensors that stay on the pipeline device (float32 unless a comment says otherwise).

Stage order (one ``index`` = one 40 ms output frame at 25 fps)::

    HuBERT features (n,1024) -> ConditionHandler -> Audio2Motion windows -> MotionChunk (m,265)
      -> per frame: MotionInfo + ctrl -> MotionStitcher -> DrivenKeypoints (x_s, x_d)
      -> warp + decode -> render (1,3,512,512) -> paste back -> (H,W,3) uint8

Nothing here touches files, threads or sockets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "AUDIO_FEAT_DIM",
    "EMO_DIM",
    "EYE_OPEN_DIM",
    "EYE_BALL_DIM",
    "SC_DIM",
    "COND_DIM",
    "MOTION_DIM",
    "NUM_KP",
    "POSE_BINS",
    "MotionInfo",
    "SourceFrame",
    "SourceInfo",
    "MotionChunk",
    "DrivenKeypoints",
    "mirror_index",
    "float32_array",
]

AUDIO_FEAT_DIM = 1024  # HuBERT-large feature width (25 Hz after pair averaging)
EMO_DIM = 8  # emotion softmax: Angry, Disgust, Fear, Happy, Neutral, Sad, Surprise, Contempt
EYE_OPEN_DIM = 2  # left/right lid opening ratio
EYE_BALL_DIM = 6  # iris offsets, order [Lx, Rx, Ly, Ry, Lz, Rz]
SC_DIM = 63  # source canonical keypoints (21 x 3) of the conditioning identity
COND_DIM = AUDIO_FEAT_DIM + EMO_DIM + EYE_OPEN_DIM + EYE_BALL_DIM + SC_DIM  # 1103
MOTION_DIM = 265  # [scale-1 | pitch 66 | yaw 66 | roll 66 | t 3 | exp 63]
NUM_KP = 21  # implicit LivePortrait keypoints
POSE_BINS = 66  # pose head: 66 bins of 3 degrees, centre of bin i = 3*i - 97.5 (after softmax mean)

_MOTION_KEYS = ("scale", "pitch", "yaw", "roll", "t", "exp", "kp")


def float32_array(value: Any) -> np.ndarray:
    """``value`` as a float32 numpy array: a view of a float32 array or host tensor, else a copy
    (what the per-frame host math of motion stitching reads)."""
    if isinstance(value, Tensor):
        value = value.numpy(force=True)
    return np.asarray(value, dtype=np.float32)


def mirror_index(index: int, size: int) -> int:
    """Ping-pong ``index`` over ``size`` items: 0,1,..,size-1,size-1,..,0,0,1,..

    Used for the source frame of output frame ``index`` and for eye-condition rows
    (upstream ``condition_handler._mirror_index``).
    """
    turn, rest = divmod(index, size)
    return rest if turn % 2 == 0 else size - rest - 1


@dataclass(frozen=True, slots=True)
class MotionInfo:
    """LivePortrait motion of one frame (the official ``x_*_info`` dict, batch axis 1).

    Pose fields normally hold 66-bin logits; after a ``delta_pitch|yaw|roll`` control they hold
    degrees with shape (1,) (the official code mixes both forms, so do we).
    """

    scale: Tensor  # (1,1) float32, absolute scale (the 265-vector stores scale - 1)
    pitch: Tensor  # (1,66) float32 bin logits, or (1,) degrees
    yaw: Tensor  # (1,66) float32 bin logits, or (1,) degrees
    roll: Tensor  # (1,66) float32 bin logits, or (1,) degrees
    t: Tensor  # (1,3) float32 translation; only t_x, t_y are used
    exp: Tensor  # (1,63) float32 expression deltas (21 kps x 3)
    kp: Tensor | None = None  # (1,63) float32 canonical keypoints; None in generated motion

    def as_dict(self) -> dict[str, Tensor]:
        """Fields as an ordered dict (``kp`` omitted when None), like the upstream dicts."""
        out = {
            "scale": self.scale,
            "pitch": self.pitch,
            "yaw": self.yaw,
            "roll": self.roll,
            "t": self.t,
            "exp": self.exp,
        }
        if self.kp is not None:
            out["kp"] = self.kp
        return out

    @classmethod
    def from_mapping(
        cls,
        values: Mapping[str, Any],
        *,
        device: torch.device | str | None = None,
    ) -> MotionInfo:
        """Build from a dict of arrays/tensors (motion-extractor output, ``ch_info`` entry).

        Arrays are converted to float32 tensors on ``device`` and given a leading batch axis of 1
        (scale (1,1), pose (1,66), t (1,3), exp/kp (1,63)). Extra keys are ignored.
        """
        shapes = {"scale": 1, "pitch": POSE_BINS, "yaw": POSE_BINS, "roll": POSE_BINS, "t": 3, "exp": 63, "kp": 63}
        kwargs: dict[str, Tensor | None] = {}
        for key in _MOTION_KEYS:
            if key not in values:
                if key == "kp":
                    kwargs[key] = None
                    continue
                raise KeyError(f"motion info lacks {key!r}")
            value = values[key]
            tensor = torch.as_tensor(np.asarray(value) if not isinstance(value, Tensor) else value)
            tensor = tensor.to(device=device, dtype=torch.float32)
            n = shapes[key]
            if key in ("pitch", "yaw", "roll") and tensor.numel() == 1:
                tensor = tensor.reshape(1)  # already degrees
            else:
                tensor = tensor.reshape(1, n)
            kwargs[key] = tensor
        return cls(**kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class SourceFrame:
    """One registered source frame (an image source has exactly one)."""

    x_s_info: MotionInfo  # motion-extractor output of the 256 crop (kp set)
    f_s: Tensor  # (1,32,16,64,64) float32 appearance feature volume
    M_c2o: np.ndarray  # (3,3) float64, 512-crop pixels -> original image pixels (host side, used once)
    image: Tensor  # (H,W,3) uint8 RGB original frame (after max_size resize), on the device
    eye_open: Tensor  # (1,2) float32
    eye_ball: Tensor  # (1,6) float32


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """A registered avatar: per-frame source data plus the conditioning identity vector."""

    frames: tuple[SourceFrame, ...]  # >= 1 frame; video templates are already smo_k_s-smoothed
    sc: Tensor  # (63,) float32 = kp of frame 0
    is_image: bool  # True for a still image (drives default use_d_keys / drive_eye)

    def frame_for_output(self, index: int) -> int:
        """Source frame used for output frame ``index`` (ping-pong over the template)."""
        return mirror_index(index, len(self.frames))


@dataclass(frozen=True, slots=True)
class MotionChunk:
    """Consecutive generated motion rows leaving Audio2Motion."""

    start_frame: int  # output frame index of motion[0]
    motion: Tensor  # (m,265) float32, already clipped to v_min_max when configured

    def __len__(self) -> int:
        return int(self.motion.shape[0])


@dataclass(frozen=True, slots=True)
class DrivenKeypoints:
    """Result of MotionStitcher: keypoints for the warp network."""

    x_s: Tensor  # (1,21,3) float32 transformed source keypoints
    x_d: Tensor  # (1,21,3) float32 driven keypoints (stitched if flag_stitching)

"""MotionStitch: generated motion + source motion -> keypoints for the warp network
(upstream ``core/atomic_components/motion_stitch.py``).

Per output frame, in this order:

1. control kwargs = per-frame ctrl, missing keys filled from ``overall_ctrl_info``;
2. relative driving: ``x_d[k] = x_s[k] + (d[k] - d0[k]) * w_k`` for every generated key (pose in
   logit space); keys outside ``use_d_keys`` (always ``scale``/``kp``) come from the source;
3. expression: ``exp = d_exp*A1 + s_exp*A2 + blink_delta*A3`` with the 21-keypoint lip/eye masks;
4. ``vad_alpha`` (< 1: whole exp pulled toward the source), ``delta_*`` pose (logits -> degrees,
   then + delta), ``alpha_*`` pose (multiplies whatever the pose currently is), ``delta_exp``;
5. fade toward the first driven frame (``fade_type="d0"``) or the source (``"s"``);
6. gaze fix from the driven-minus-source yaw/pitch (drive_eye only);
7. keypoint transform ``x = scale * (kp @ R + exp)``, ``x[..., :2] += t[:2]``;
8. stitching network on (x_s, x_d) when ``flag_stitching``.

The math runs in numpy on the host, as upstream's does: a frame is ~100 operations on arrays of
at most 66 values, which numpy does in about a microsecond each without releasing the GIL, where
torch's host ops cost several and release and retake it on every call (on the H200 at 10 live
sessions, the sessions' threads stitching in torch held the GIL ~70 % of the time, and the device
engine's thread waited for it; ``bench/bench_stitcher.py``). Its results are host tensors.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ditto.backends.talkinghead.pipeline.blink import blink_schedule, schedule_frames
from ditto.backends.talkinghead.pipeline.stages import (
    NUM_KP,
    POSE_BINS,
    DrivenKeypoints,
    MotionInfo,
    SourceInfo,
    float32_array,
)

__all__ = [
    "LIP_KPS",
    "EYE_KPS",
    "StitchFn",
    "pose_to_degrees",
    "rotation_matrix",
    "transform_keypoint",
    "gaze_basis",
    "gaze_exp_delta",
    "MotionStitcher",
]

LIP_KPS = (6, 12, 14, 17, 19, 20)  # keypoints whose expression is audio-driven
EYE_KPS = (11, 13, 15, 16, 18)  # keypoints driven by eye/blink
_POSE_KEYS = ("pitch", "yaw", "roll")
_SCALED_BY_CH_RATIO = frozenset({"exp", "pitch", "yaw", "roll"})

# Gaze fix (upstream _fix_gaze/_eye_delta): degrees of head turn -> eye keypoint shift.
GAZE_X_RATIO = 0.26
GAZE_Y_RATIO = 0.28
GAZE_X_POS = (0.0007, 0.001)  # (exp[33] gain, exp[45] gain) when dx > 0
GAZE_X_NEG = (0.001, 0.0007)  # (exp[33] gain, exp[45] gain) when dx <= 0
GAZE_Y_GAIN = -0.001  # exp[34] and exp[46]
_BIN_DEGREES = np.arange(POSE_BINS, dtype=np.float32) * 3  # a pose bin's degrees, before the -97.5 offset

StitchFn = Callable[[Tensor, Tensor], Tensor]
"""``stitch(x_s (1,21,3), x_d (1,21,3)) -> stitched x_d (1,21,3)``."""

HostArray = np.ndarray | Tensor
"""What the math below takes: numpy arrays, or host tensors (read through numpy, float32 ones without a copy)."""


def pose_to_degrees(pose: HostArray) -> np.ndarray:
    """(B,66) bin logits -> (B,) degrees: sum_i softmax_i * i * 3 - 97.5.

    Anything else (already degrees) is returned unchanged (as an array), as upstream ``bin66_to_degree``.
    """
    pose = float32_array(pose)
    if pose.ndim > 1 and pose.shape[1] == POSE_BINS:
        weights = np.exp(pose - pose.max(axis=1, keepdims=True))
        return (weights @ _BIN_DEGREES) / weights.sum(axis=1) - np.float32(97.5)
    return pose


def rotation_matrix(pitch: HostArray, yaw: HostArray, roll: HostArray) -> np.ndarray:
    """Degrees (B,) -> (B,3,3) = (Rz(roll) @ Ry(yaw) @ Rx(pitch))^T.

    Rx = [[1,0,0],[0,c,-s],[0,s,c]], Ry = [[c,0,s],[0,1,0],[-s,0,c]], Rz = [[c,-s,0],[s,c,0],[0,0,1]].
    Row-vector keypoints are rotated as ``kp @ rotation_matrix(...)``.
    """
    x, y, z = (np.radians(float32_array(angle).reshape(-1)) for angle in (pitch, yaw, roll))
    cx, sx, cy, sy, cz, sz = np.cos(x), np.sin(x), np.cos(y), np.sin(y), np.cos(z), np.sin(z)
    # the product Rz @ Ry @ Rx written out, one stack instead of three matrices and two products
    rows = (
        (cz * cy, cz * sy * sx - sz * cx, cz * sy * cx + sz * sx),
        (sz * cy, sz * sy * sx + cz * cx, sz * sy * cx - cz * sx),
        (-sy, cy * sx, cy * cx),
    )
    return np.stack([entry for row in rows for entry in row], 1).reshape(-1, 3, 3).transpose(0, 2, 1)


def transform_keypoint(info: Mapping[str, HostArray] | MotionInfo) -> np.ndarray:
    """Implicit keypoints -> (B,21,3): ``scale * (kp @ R + exp)`` then ``xy += t_xy`` (t_z unused)."""
    d = info.as_dict() if isinstance(info, MotionInfo) else info
    kp = float32_array(d["kp"])
    bs = kp.shape[0]
    rot = rotation_matrix(pose_to_degrees(d["pitch"]), pose_to_degrees(d["yaw"]), pose_to_degrees(d["roll"]))
    out = kp.reshape(bs, NUM_KP, 3) @ rot + float32_array(d["exp"]).reshape(bs, NUM_KP, 3)
    out *= float32_array(d["scale"]).reshape(bs, 1, 1)  # out is new: in place is safe
    out[..., :2] += float32_array(d["t"]).reshape(bs, 1, 3)[..., :2]
    return out


def gaze_basis() -> np.ndarray:
    """(3,63) unit rows selecting exp[33], exp[45] and exp[34]+exp[46] (gaze-fix targets)."""
    basis = np.zeros((3, NUM_KP * 3), dtype=np.float32)
    basis[0, 33] = 1
    basis[1, 45] = 1
    basis[2, 34] = 1
    basis[2, 46] = 1
    return basis


def gaze_exp_delta(
    delta_yaw: HostArray, delta_pitch: HostArray, exp: HostArray, basis: np.ndarray | None = None
) -> np.ndarray:
    """Add the gaze correction to an (1,63) exp, given driven-minus-source yaw/pitch (degrees).

    dx = 0.26*dyaw, dy = 0.28*dpitch; exp[33] += dx*0.0007 (dx>0) else dx*0.001;
    exp[45] += dx*0.001 (dx>0) else dx*0.0007; exp[34], exp[46] += -0.001*dy.
    """
    if basis is None:
        basis = gaze_basis()
    dx = float(float32_array(delta_yaw).reshape(-1)[0]) * GAZE_X_RATIO
    dy = float(float32_array(delta_pitch).reshape(-1)[0]) * GAZE_Y_RATIO
    gains = GAZE_X_POS if dx > 0 else GAZE_X_NEG
    delta = np.array([dx * gains[0], dx * gains[1], dy * GAZE_Y_GAIN], dtype=np.float32) @ basis
    return float32_array(exp) + delta


def _kp_mask(kps: Sequence[int]) -> np.ndarray:
    m = np.zeros((NUM_KP, 3), dtype=np.float32)
    m[list(kps)] = 1
    return m.reshape(1, NUM_KP * 3)


def _arrays(info: MotionInfo | Mapping[str, HostArray]) -> dict[str, np.ndarray]:
    return {
        key: float32_array(value) for key, value in (info.as_dict() if isinstance(info, MotionInfo) else info).items()
    }


class MotionStitcher:
    """Stateful per-session stitcher (upstream ``MotionStitch`` after ``setup``).

    Frames must be fed in output order (the blink schedule and the ``d0``/fade references
    depend on it).
    """

    def __init__(
        self,
        source: SourceInfo,
        *,
        stitch_fn: StitchFn | None = None,
        use_d_keys: Sequence[str] | Mapping[str, float] | None = None,
        relative_d: bool = True,
        drive_eye: bool | None = None,
        delta_eye_arr: Any = None,
        delta_eye_open_n: int | Sequence[int] = 0,
        n_frames: int = -1,
        rng: random.Random | None = None,
        fade_out_keys: Sequence[str] | None = ("exp",),
        fade_type: str = "",
        flag_stitching: bool = True,
        ch_scale: Tensor | float | None = None,
        overall_ctrl_info: Mapping[str, Any] | None = None,
        d0: MotionInfo | None = None,
    ) -> None:
        """Args:
            source: registered avatar (its frame-0 motion is the image reference).
            stitch_fn: stitching network callable; required when ``flag_stitching``.
            use_d_keys: None -> image (exp, pitch, yaw, roll, t), video (exp,); or a key->weight dict.
            relative_d: drive relative to ``d0`` (first driven frame unless set via :meth:`set_d0`).
            drive_eye: None -> True for images, False for videos.
            delta_eye_arr: (15,63) blink template (pkl) or None.
            delta_eye_open_n: blink spacing (see :func:`blink.blink_schedule`).
            n_frames: ``N_d`` (-1 unknown -> 3000-frame schedule used modulo).
            rng: seeded generator for random blink gaps (required when they are random).
            fade_out_keys: keys faded by ``fade_alpha`` (a per-frame ``fade_out_keys`` wins;
                None = all keys).
            fade_type: "" none, "d0" toward the first driven frame, "s" toward the source.
            flag_stitching: run ``stitch_fn`` on x_d.
            ch_scale: scale of ``ch_info``'s frame 0 when ch_info is used; weights of exp and
                pose become ``ch_scale / source_scale``.
            overall_ctrl_info: control kwargs merged into every frame (online pkl: delta_pitch 2).
            d0: relative-driving reference (online: frame 0 of the first LMDM window).

        Raises:
            ValueError: stitching requested without ``stitch_fn``; blinks without ``rng``.
        """
        if flag_stitching and stitch_fn is None:
            raise ValueError("flag_stitching needs a stitch_fn")
        frame0 = source.frames[0].x_s_info
        if frame0.kp is None:
            raise ValueError("source motion lacks kp")
        self.source = source
        self.is_image = source.is_image
        self.stitch_fn = stitch_fn
        self.relative_d = relative_d
        self.drive_eye = self.is_image if drive_eye is None else bool(drive_eye)
        self.fade_out_keys = None if fade_out_keys is None else tuple(fade_out_keys)
        if fade_type not in ("", "d0", "s"):
            raise ValueError(f"unknown fade_type {fade_type!r}")
        self.fade_type = fade_type
        self.flag_stitching = flag_stitching
        self.overall_ctrl_info = dict(overall_ctrl_info or {})
        self.delta_eye_open_n = delta_eye_open_n
        self._rng = rng

        if use_d_keys is None:
            keys: tuple[str, ...] | dict[str, float] = (
                ("exp", "pitch", "yaw", "roll", "t") if self.is_image else ("exp",)
            )
        elif isinstance(use_d_keys, Mapping):
            keys = dict(use_d_keys)
        else:
            keys = tuple(use_d_keys)
        self.scale_ratio = 1.0
        if ch_scale is not None:
            ch = float(ch_scale.item() if isinstance(ch_scale, Tensor) else ch_scale)
            self.scale_ratio = ch / float(frame0.scale.item())
            if self.scale_ratio != 1:
                if isinstance(keys, dict):
                    keys = {k: v * (self.scale_ratio if k in _SCALED_BY_CH_RATIO else 1) for k, v in keys.items()}
                else:
                    keys = {k: (self.scale_ratio if k in _SCALED_BY_CH_RATIO else 1) for k in keys}
        self.use_d_keys = keys

        self.delta_eye_arr: np.ndarray | None = None
        if delta_eye_arr is not None:
            self.delta_eye_arr = float32_array(delta_eye_arr).reshape(-1, NUM_KP * 3)
        lip = _kp_mask(LIP_KPS)
        eye = _kp_mask(EYE_KPS)
        a1 = lip
        a2 = None
        if self.drive_eye:
            if self.delta_eye_arr is None:
                a1 = lip + eye
            else:
                a2 = eye
        if a2 is None:
            self._exp_a1, self._exp_a2, self._exp_a3 = a1, 1 - a1, None
        else:
            self._exp_a1 = a1 * (1 - a2)
            self._exp_a2 = (1 - a1) + a1 * a2
            self._exp_a3 = a2

        self.n_frames = n_frames
        self.blink_rows: list[int] | None = None
        if self.drive_eye and self.delta_eye_arr is not None:
            self._build_blinks(n_frames)

        self._sources: dict[int, dict[str, np.ndarray]] = {}  # source frame -> its motion, as arrays
        src0 = self._source_motion(0)
        self._pose_s = (float(pose_to_degrees(src0["yaw"])[0]), float(pose_to_degrees(src0["pitch"])[0]))
        self._gaze_basis = gaze_basis()
        self._x_s_cache: dict[int, Tensor] = {}
        self._fade_dst: dict[str, np.ndarray] | None = None
        if self.is_image and self.fade_type == "s":
            self._fade_dst = dict(src0)
        self._d0: dict[str, np.ndarray] | None = None if d0 is None else _arrays(d0)
        self.index = 0

    # -- setup-time controls -------------------------------------------------------------

    def _build_blinks(self, n_frames: int) -> None:
        open_n = self.delta_eye_open_n
        random_gaps = (isinstance(open_n, int) and open_n == 0) or (
            isinstance(open_n, (list, tuple)) and len(open_n) == 0
        )
        if random_gaps and self._rng is None:
            raise ValueError("random blink gaps need a seeded rng")
        assert self.delta_eye_arr is not None
        rows = blink_schedule(
            schedule_frames(n_frames), self.delta_eye_arr.shape[0], open_n, rng=self._rng or random.Random(0)
        )
        self.blink_rows = rows if rows else None

    def set_num_frames(self, n_frames: int) -> None:
        """``setup_Nd``: rebuild the blink schedule for a known clip length (no-op if unchanged)."""
        if n_frames == self.n_frames:
            return
        self.n_frames = n_frames
        if self.drive_eye and self.delta_eye_arr is not None:
            self._build_blinks(n_frames)

    @property
    def d0(self) -> MotionInfo | None:
        if self._d0 is None:
            return None
        return MotionInfo(**{key: torch.from_numpy(value) for key, value in self._d0.items()})

    def set_d0(self, d0: MotionInfo) -> None:
        """Set the relative-driving reference (online: ``OnlineAudio2Motion.d0``)."""
        self._d0 = _arrays(d0)

    def seek(self, index: int) -> None:
        """The next frame fed is output frame ``index`` (after an interrupt dropped frames that
        were stitched but never shown), so blinks go on where the frames shown left them."""
        self.index = index

    # -- per frame -------------------------------------------------------------------------

    def _source_motion(self, source_frame: int) -> dict[str, np.ndarray]:
        motion = self._sources.get(source_frame)
        if motion is None:
            motion = self._sources[source_frame] = _arrays(self.source.frames[source_frame].x_s_info)
        return motion

    def _x_s(self, src_idx: int, src: dict[str, np.ndarray]) -> Tensor:
        key = 0 if self.is_image else src_idx
        x_s = self._x_s_cache.get(key)
        if x_s is None:
            x_s = self._x_s_cache[key] = torch.from_numpy(transform_keypoint(src))
        return x_s

    def _mix(self, xs: dict[str, np.ndarray], xd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keys = self.use_d_keys
        d0 = self._d0
        if d0 is not None:
            if isinstance(keys, dict):
                out = {k: xs[k] + (v - d0[k]) * keys.get(k, 1) for k, v in xd.items()}
            else:
                out = {k: xs[k] + (v - d0[k]) for k, v in xd.items()}
        else:
            out = dict(xd)
        for k, v in xs.items():
            if k not in out or k not in keys:
                out[k] = v
        if isinstance(keys, dict) and d0 is None:
            for k, a in keys.items():
                out[k] = out[k] * a
        return out

    def __call__(
        self, source_frame: int, motion: MotionInfo | Mapping[str, HostArray], ctrl: Mapping[str, Any] | None = None
    ) -> DrivenKeypoints:
        """Keypoints for one output frame.

        Args:
            source_frame: index into ``source.frames`` (``source.frame_for_output(index)``).
            motion: generated motion of this frame (``vector_to_arrays`` of an emitted row, or its MotionInfo).
            ctrl: per-frame control kwargs (fade_alpha, fade_out_keys, delta_*/alpha_* pose,
                delta_exp, vad_alpha).
        """
        kwargs = dict(ctrl or {})
        for k, v in self.overall_ctrl_info.items():
            kwargs.setdefault(k, v)
        kwargs = {k: float32_array(v) if isinstance(v, Tensor) else v for k, v in kwargs.items()}  # tensors: numpy math

        src = self._source_motion(source_frame)
        xd = _arrays(motion)
        xd.pop("kp", None)
        if self.relative_d and self._d0 is None:
            self._d0 = dict(xd)
        xd = self._mix(src, xd)

        exp = xd["exp"] * self._exp_a1 + src["exp"] * self._exp_a2
        if self._exp_a3 is not None:
            assert self.delta_eye_arr is not None
            row = 0 if self.blink_rows is None else self.blink_rows[self.index % len(self.blink_rows)]
            exp = exp + self.delta_eye_arr[row : row + 1] * self._exp_a3
        xd["exp"] = exp

        vad = kwargs.get("vad_alpha", 1)
        if vad < 1:
            xd["exp"] = xd["exp"] * vad + src["exp"] * (1 - vad)

        for key in _POSE_KEYS:
            if "delta_" + key in kwargs:
                xd[key] = pose_to_degrees(xd[key]) + kwargs["delta_" + key]
        for key in _POSE_KEYS:
            if "alpha_" + key in kwargs:
                xd[key] = xd[key] * kwargs["alpha_" + key]
        if "delta_exp" in kwargs:
            xd["exp"] = xd["exp"] + float32_array(kwargs["delta_exp"]).reshape(1, -1)

        if self.fade_type == "d0" and self._fade_dst is None:
            self._fade_dst = dict(xd)
        if "fade_alpha" in kwargs and self.fade_type in ("d0", "s"):
            alpha = kwargs["fade_alpha"]
            fade_keys = kwargs.get("fade_out_keys", self.fade_out_keys)
            if self.fade_type == "d0":
                dst = self._fade_dst
            elif self._fade_dst is not None:
                dst = self._fade_dst
            else:
                dst = dict(src)
                if self.is_image:
                    self._fade_dst = dst
            assert dst is not None
            for k in xd.keys() if fade_keys is None else fade_keys:
                if k == "kp":
                    continue
                xd[k] = xd[k] * alpha + dst[k] * (1 - alpha)

        if self.drive_eye:
            yaw_s, pitch_s = self._pose_s
            # in degrees once, here: the gaze fix and transform_keypoint both read them so
            xd["yaw"], xd["pitch"] = pose_to_degrees(xd["yaw"]), pose_to_degrees(xd["pitch"])
            d_yaw = xd["yaw"].reshape(-1)[:1] - yaw_s
            d_pitch = xd["pitch"].reshape(-1)[:1] - pitch_s
            xd["exp"] = gaze_exp_delta(d_yaw, d_pitch, xd["exp"], self._gaze_basis)

        x_s = self._x_s(source_frame, src)
        x_d = torch.from_numpy(transform_keypoint(xd))
        if self.flag_stitching:
            assert self.stitch_fn is not None
            x_d = self.stitch_fn(x_s, x_d)
        self.index += 1
        return DrivenKeypoints(x_s=x_s, x_d=x_d)

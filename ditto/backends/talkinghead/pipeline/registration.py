"""Avatar registration for a still image (upstream ``Source2Info`` + ``AvatarRegistrar``, image branch).

docs/pipeline.md §7, for the one frame of an image source::

    image ─ SCRFD ─ largest box ─ landmark106 ─ 224 crop (scale 1.5, vy −0.1) ─ landmark203
          ─ 512 crop (crop_scale, crop_vy_ratio, crop_flag_do_rot) ─┬─ 478-pt mesh ─ eye_open, eye_ball
                                                                     └─ INTER_AREA 256, /255, NCHW
                                                                          ├─ motion extractor → x_s_info
                                                                          └─ appearance extractor → f_s

plus ``M_c2o`` (512-crop pixels → image pixels), ``sc`` = the canonical keypoints
``kp``, and the paste-back plan of the frame, computed once here so that no
session repeats it. ``crop_vx_ratio`` is ignored, as upstream never forwards it.

The detection/landmark steps run in numpy/OpenCV like upstream; everything the
streaming hot path reads (motion, f_s, the frame, the paste plan) is left on the
pipeline device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ditto.backends.talkinghead.aux_models.face_detector import FaceDetector, largest_face
from ditto.backends.talkinghead.aux_models.face_mesh import eye_info
from ditto.backends.talkinghead.aux_models.landmarks import Landmark106, Landmark203, crop_by_landmarks
from ditto.backends.talkinghead.options import SetupOptions
from ditto.backends.talkinghead.pipeline.putback import CROP_SIZE, PastePlan, build_paste_plan
from ditto.backends.talkinghead.pipeline.stages import MotionInfo, SourceFrame, SourceInfo
from ditto.backends.talkinghead.runtime.base import ModelRunner

__all__ = ["CropOptions", "RegisteredSource", "SourceRegistrar", "fit_to_max_size"]

MOTION_INPUT_SIZE = 256  # motion / appearance extractors see the 512 crop at 256×256

FaceMesh = Callable[[np.ndarray], np.ndarray]
"""512 crop (RGB uint8) → (1, 478, 3) normalised MediaPipe landmarks; raises SourceError without a face."""


def fit_to_max_size(image_rgb: np.ndarray, max_size: int) -> np.ndarray:
    """Upstream ``check_resize``: longest side capped at ``max_size`` (aspect kept, rounded),
    then both sides floored to even; bilinear ``cv2.resize`` only when the size changes."""
    h, w = image_rgb.shape[:2]
    new_h, new_w = h, w
    if max_size > 0 and max(h, w) > max_size:
        if h > w:
            new_h, new_w = max_size, int(round(w * max_size / h))
        else:
            new_h, new_w = int(round(h * max_size / w)), max_size
    new_h -= new_h % 2
    new_w -= new_w % 2
    if (new_h, new_w) == (h, w):
        return image_rgb
    return cv2.resize(image_rgb, (new_w, new_h))


@dataclass(frozen=True, slots=True)
class CropOptions:
    """Geometry of the 512 registration crop (setup options ``crop_*``)."""

    scale: float = 2.3  # crop side = square landmark203 bbox × scale
    vy_ratio: float = -0.125  # shift along the face axis × side (negative: more forehead)
    do_rot: bool = True  # rotate so the eye→lip axis is vertical

    @classmethod
    def from_setup(cls, options: SetupOptions) -> CropOptions:
        return cls(scale=options.crop_scale, vy_ratio=options.crop_vy_ratio, do_rot=options.crop_flag_do_rot)


@dataclass(frozen=True, slots=True, eq=False)
class RegisteredSource:
    """What a session needs of an avatar; read-only, shared by every session of it."""

    source: SourceInfo  # one frame for an image
    paste_plans: tuple[PastePlan, ...]  # one per source frame, on the pipeline device


class SourceRegistrar:
    """Runs registration with injected model wrappers (none of them is owned or closed here).

    Not thread-safe when a wrapper is not (MediaPipe, TensorRT contexts): callers
    serialise registrations.

    Args:
        detector: SCRFD wrapper.
        landmark106: 106-point wrapper.
        landmark203: 203-point wrapper.
        face_mesh: 478-point mesh on the 512 crop (MediaPipe task or blaze_face + face_mesh).
        motion_extractor: runner, ``image`` (1,3,256,256) → pitch, yaw, roll, t, exp, scale, kp.
        appearance_extractor: runner, ``image`` (1,3,256,256) → ``pred`` (1,32,16,64,64).
        device: pipeline device; the registered tensors live there.
    """

    def __init__(
        self,
        *,
        detector: FaceDetector,
        landmark106: Landmark106,
        landmark203: Landmark203,
        face_mesh: FaceMesh,
        motion_extractor: ModelRunner,
        appearance_extractor: ModelRunner,
        device: torch.device | str,
    ) -> None:
        self.detector = detector
        self.landmark106 = landmark106
        self.landmark203 = landmark203
        self.face_mesh = face_mesh
        self.motion_extractor = motion_extractor
        self.appearance_extractor = appearance_extractor
        self.device = torch.device(device)

    def crop(self, image_rgb: np.ndarray, options: CropOptions) -> tuple[np.ndarray, np.ndarray]:
        """The 512 crop of the largest face and its ``M_c2o`` (3,3) float64.

        Raises:
            SourceError: no face (code ``no_face``).
        """
        box, _ = largest_face(self.detector(image_rgb))
        pts106 = self.landmark106(image_rgb, box)
        pts203 = self.landmark203.from_landmarks(image_rgb, pts106)
        crop = crop_by_landmarks(
            image_rgb,
            pts203,
            dsize=CROP_SIZE,
            scale=options.scale,
            vy_ratio=options.vy_ratio,
            flag_do_rot=options.do_rot,
        )
        return crop.image, crop.M_c2o.astype(np.float64)

    def source_frame(self, image_rgb: np.ndarray, options: CropOptions) -> SourceFrame:
        """Register one frame (upstream ``Source2Info.__call__``)."""
        crop_rgb, m_c2o = self.crop(image_rgb, options)
        eye_open, eye_ball = eye_info(self.face_mesh(crop_rgb))
        small = cv2.resize(crop_rgb, (MOTION_INPUT_SIZE, MOTION_INPUT_SIZE), interpolation=cv2.INTER_AREA)
        batch = torch.from_numpy(small).to(self.device).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
        motion = MotionInfo.from_mapping(self.motion_extractor(image=batch), device=self.device)
        f_s = self.appearance_extractor(image=batch)["pred"].float()
        return SourceFrame(
            x_s_info=motion,
            f_s=f_s,
            M_c2o=m_c2o,
            image=torch.from_numpy(np.ascontiguousarray(image_rgb)).to(self.device),
            eye_open=torch.from_numpy(eye_open).to(self.device),
            eye_ball=torch.from_numpy(eye_ball).to(self.device),
        )

    def register_image(self, image_rgb: np.ndarray, options: CropOptions) -> RegisteredSource:
        """Register a still portrait (RGB uint8, final size) with its paste-back plan.

        Raises:
            SourceError: no face in the image or in the aligned crop.
        """
        frame = self.source_frame(image_rgb, options)
        assert frame.x_s_info.kp is not None  # the motion extractor always returns kp
        source = SourceInfo(frames=(frame,), sc=frame.x_s_info.kp.reshape(-1), is_image=True)
        return RegisteredSource(source=source, paste_plans=(build_paste_plan(frame.image, frame.M_c2o),))

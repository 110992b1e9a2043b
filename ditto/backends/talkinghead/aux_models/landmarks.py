"""Face landmarks (insightface 106, LivePortrait 203) and the similarity crops built on them.

Avatar registration (docs/pipeline.md §7, step 2) runs:

    SCRFD box → :class:`Landmark106` → 224 crop (scale 1.5, vy −0.1, rotation on)
    → :class:`Landmark203` → 512 crop (scale ``crop_scale`` 2.3, vy
    ``crop_vy_ratio`` −0.125, rotation ``crop_flag_do_rot``).

Both crops come from :func:`crop_by_landmarks`: two anchor points (eye centre,
lip centre) define an upright face frame; the landmark cloud's bounding square
in that frame, scaled, and shifted by ``vy · size`` along the face axis, is
mapped onto a ``dsize``×``dsize`` image by a similarity transform ``M_o2c``
(its inverse ``M_c2o`` is used for paste-back and for mapping crop landmarks
back into the frame).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ditto.backends.talkinghead.aux_models._io import Runner, declared_names, first_declared_name, run_numpy

# Anchor indices per landmark layout: (eye-set A, eye-set B, lip points).
ANCHOR_INDICES = {
    106: ((33, 35, 40, 39), (87, 89, 94, 93), (52, 61)),
    203: ((0, 6, 12, 18), (24, 30, 36, 42), (48, 66)),
    101: ((39, 42, 45, 48), (51, 54, 57, 60), (75, 81)),
}


# --------------------------------------------------------------------------- geometry


def transform_points(pts: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Apply a 2×3 or 3×3 affine ``M`` to (N, 2) points."""
    return pts @ M[:2, :2].T + M[:2, 2]


def anchor_points(pts: np.ndarray, use_lip: bool = True) -> np.ndarray:
    """(2, 2) anchors: [eye centre, lip centre] (``use_lip``) or [eye A, eye B].

    Supports the 5-point (SCRFD), 68, 101, 106 and 203 layouts; other counts
    above 101 use their first 101 points, as upstream does.
    """
    n = pts.shape[0]
    if n == 5:
        eye_a, eye_b = pts[0], pts[1]
        lip = (pts[3] + pts[4]) / 2
    elif n == 68:
        eye_a = (pts[36] + pts[39]) / 2
        eye_b = (pts[42] + pts[45]) / 2
        lip = (pts[48] + pts[54]) / 2
    elif n in ANCHOR_INDICES or n > 101:
        layout = n if n in ANCHOR_INDICES else 101
        set_a, set_b, lips = ANCHOR_INDICES[layout]
        eye_a = pts[list(set_a)].mean(axis=0)
        eye_b = pts[list(set_b)].mean(axis=0)
        lip = pts[list(lips)].mean(axis=0)
    else:
        raise ValueError(f"unsupported landmark count {n}")
    if use_lip:
        return np.stack([(eye_a + eye_b) / 2, lip]).astype(np.float32)
    # eye-to-eye axis turned 90° so that it plays the role of the eye→lip axis
    out = np.stack([eye_a, eye_b]).astype(np.float32)
    v = out[1] - out[0]
    out[1] = (out[0][0] - v[1], out[0][1] + v[0])
    return out


@dataclass(frozen=True, slots=True)
class CropRect:
    """An oriented square in frame pixels."""

    center: np.ndarray  # (2,) float32, x y
    size: float  # side length, pixels
    angle: float  # radians; rotation that makes the face axis vertical


def crop_rect_from_landmarks(
    pts: np.ndarray,
    *,
    scale: float = 1.5,
    vx_ratio: float = 0.0,
    vy_ratio: float = 0.0,
    use_lip: bool = True,
) -> CropRect:
    """Square crop around ``pts`` aligned to the eye→lip axis.

    ``uy`` = unit(lip − eye) (fallback (0, 1) when degenerate), ``ux`` = (uy_y, −uy_x);
    the cloud is measured in that frame, its bounding box squared (longest side)
    and multiplied by ``scale``; the centre moves by ``vx·size`` along ``ux`` and
    ``vy·size`` along ``uy`` (negative vy = more forehead).
    """
    pts = np.asarray(pts, dtype=np.float32)
    a = anchor_points(pts, use_lip=use_lip)
    uy = a[1] - a[0]
    length = float(np.linalg.norm(uy))
    uy = np.array([0.0, 1.0], np.float32) if length <= 1e-3 else (uy / length).astype(np.float32)
    ux = np.array([uy[1], -uy[0]], np.float32)
    angle = math.acos(float(np.clip(ux[0], -1.0, 1.0)))
    if ux[1] < 0:
        angle = -angle
    frame = np.stack([ux, uy])
    mean = pts.mean(axis=0)
    local = (pts - mean) @ frame.T
    lo, hi = local.min(axis=0), local.max(axis=0)
    mid = (lo + hi) / 2
    size = float(max(hi[0] - lo[0], hi[1] - lo[1])) * scale
    center = mean + ux * mid[0] + uy * mid[1]
    center = center + ux * (vx_ratio * size) + uy * (vy_ratio * size)
    return CropRect(center=center.astype(np.float32), size=size, angle=angle)


def similarity_o2c(rect: CropRect, dsize: int, rotate: bool = True) -> np.ndarray:
    """3×3 float32 matrix mapping frame pixels into the ``dsize`` crop of ``rect``."""
    s = dsize / rect.size
    cx, cy = float(rect.center[0]), float(rect.center[1])
    half = dsize / 2
    if rotate:
        c, sn = math.cos(rect.angle), math.sin(rect.angle)
    else:
        c, sn = 1.0, 0.0
    return np.array(
        [
            [s * c, s * sn, half - s * (c * cx + sn * cy)],
            [-s * sn, s * c, half - s * (-sn * cx + c * cy)],
            [0.0, 0.0, 1.0],
        ],
        dtype=np.float32,
    )


@dataclass(frozen=True, slots=True)
class Crop:
    """A similarity crop of a frame."""

    image: np.ndarray  # (dsize, dsize, 3) same dtype as the frame, black border
    M_o2c: np.ndarray  # (3, 3) float32, frame pixels → crop pixels
    M_c2o: np.ndarray  # (3, 3) float32, crop pixels → frame pixels


def crop_by_landmarks(
    img: np.ndarray,
    pts: np.ndarray,
    *,
    dsize: int = 224,
    scale: float = 1.5,
    vx_ratio: float = 0.0,
    vy_ratio: float = -0.1,
    flag_do_rot: bool = True,
) -> Crop:
    """Crop ``img`` around landmarks ``pts`` (N, 2) (upstream ``crop_image``).

    Defaults are the 224 crop for the 203-point model; the 512 registration crop
    uses ``dsize=512, scale=crop_scale (2.3), vy_ratio=crop_vy_ratio (−0.125),
    flag_do_rot=crop_flag_do_rot``. Upstream never forwards ``crop_vx_ratio``;
    leave ``vx_ratio`` at 0 for parity. Bilinear warp, constant black border.
    """
    rect = crop_rect_from_landmarks(pts, scale=scale, vx_ratio=vx_ratio, vy_ratio=vy_ratio)
    m_o2c = similarity_o2c(rect, dsize, rotate=flag_do_rot)
    image = cv2.warpAffine(img, m_o2c[:2], (dsize, dsize), flags=cv2.INTER_LINEAR)
    m_c2o = np.linalg.inv(m_o2c).astype(np.float32)
    return Crop(image=image, M_o2c=m_o2c, M_c2o=m_c2o)


# --------------------------------------------------------------------------- landmark106


def box_crop_matrix(box: np.ndarray, output_size: int = 192, margin: float = 1.5) -> np.ndarray:
    """2×3 matrix of the axis-aligned crop the 106-point model sees.

    Centre = box centre, scale = output_size / (margin · max(w, h)), no rotation.
    """
    w, h = float(box[2] - box[0]), float(box[3] - box[1])
    cx, cy = float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2
    s = output_size / (max(w, h) * margin)
    half = output_size / 2
    return np.array([[s, 0.0, half - s * cx], [0.0, s, half - s * cy]], dtype=np.float64)


class Landmark106:
    """insightface ``2d106det`` / Ditto ``landmark106``: 106 points from a face box.

    Input ``data`` (1, 3, 192, 192): raw 0–255 values, channels swapped (BGR of
    the RGB frame), mean 0, std 1. Output ``fc1`` (1, 212) in [−1, 1]: reshaped
    to (−1, 2), the last 106 kept, ``(p + 1) · 96``, mapped back to the frame.
    """

    input_size = 192
    num_points = 106

    def __init__(self, runner: Runner) -> None:
        self._runner = runner
        self._input_name = first_declared_name(runner, "input_names", "data")
        self._output_name = first_declared_name(runner, "output_names", "fc1")

    def __call__(self, img_rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
        """(106, 2) float32 landmarks in frame pixels for ``box`` (x1 y1 x2 y2)."""
        size = self.input_size
        M = box_crop_matrix(box, size)
        # cv2's stubs type borderValue as a sequence; the binding takes a number (the same Scalar)
        crop = cv2.warpAffine(img_rgb, M, (size, size), borderValue=0.0)  # type: ignore[call-overload]
        blob = crop[..., ::-1].astype(np.float32).transpose(2, 0, 1)[None].copy()
        out = run_numpy(self._runner, {self._input_name: blob})
        pred = out.get(self._output_name, next(iter(out.values())))
        pts = pred.reshape(-1, 2).astype(np.float32)
        if pts.shape[0] > self.num_points:
            pts = pts[-self.num_points :]
        pts = (pts + 1.0) * (size // 2)
        inverse = cv2.invertAffineTransform(M)
        return transform_points(pts, inverse).astype(np.float32)


# --------------------------------------------------------------------------- landmark203


class Landmark203:
    """LivePortrait 203-point model (Ditto ``landmark203``).

    Input ``input`` (1, 3, 224, 224) RGB / 255. Output ``landmarks`` (1, 406)
    normalised to the crop; ×224 gives crop pixels. The original LivePortrait
    ONNX has three outputs and the landmarks are the third: with more than one
    output and no ``landmarks`` key, the third declared output is used.
    """

    dsize = 224

    def __init__(self, runner: Runner) -> None:
        self._runner = runner
        self._input_name = first_declared_name(runner, "input_names", "input")
        self._declared_outputs = declared_names(runner, "output_names")

    def _pick(self, out: dict[str, np.ndarray]) -> np.ndarray:
        if "landmarks" in out:
            return out["landmarks"]
        names = self._declared_outputs or tuple(out)
        return out[names[2]] if len(names) >= 3 else out[names[0]]

    def __call__(self, crop_rgb: np.ndarray, M_c2o: np.ndarray | None = None) -> np.ndarray:
        """(203, 2) float32 landmarks of a 224 crop; frame pixels when ``M_c2o`` is given."""
        blob = (crop_rgb.astype(np.float32) / 255.0).transpose(2, 0, 1)[None].copy()
        out = run_numpy(self._runner, {self._input_name: blob})
        pts = self._pick(out).reshape(-1, 2).astype(np.float32) * self.dsize
        if M_c2o is not None:
            pts = transform_points(pts, M_c2o)
        return pts.astype(np.float32)

    def from_landmarks(self, img_rgb: np.ndarray, pts: np.ndarray) -> np.ndarray:
        """203 points in frame pixels, cropping around ``pts`` (106 from a fresh
        detection, or the previous frame's 203 when tracking a video)."""
        crop = crop_by_landmarks(img_rgb, pts, dsize=self.dsize, scale=1.5, vy_ratio=-0.1)
        return self(crop.image, crop.M_c2o)

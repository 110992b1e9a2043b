"""Mouth parameters + blinks + head sway -> target mesh vertices.

Per avatar, :func:`build_rig` turns the landmarks into a few displacement bases (one
(n_vertices, 2) array each, in ROI pixels): jaw drop, lip spread, lip rounding and one
blink per eye. Per frame the target mesh is the source mesh plus a weighted sum of those
bases, then a small similarity transform of the face landmarks (head sway); border
anchors never move. All lengths scale with the face height, so the motion looks the same
at any resolution.

Randomness (blink times, sway phases) comes from ``numpy.random.default_rng(seed)``
streams and depends only on the seed and the frame index.
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

from ditto import FPS
from ditto.backends.lite import landmarks as lm
from ditto.backends.lite.geometry import FaceGeometry
from ditto.backends.lite.speech import MouthParams


@dataclasses.dataclass(frozen=True, slots=True)
class MotionTuning:
    """Motion amplitudes, as fractions of the face height unless noted."""

    jaw_drop: float = 0.065  # chin travel at jaw_open = 1
    upper_lip_lift: float = 0.12  # upper inner lip rise, as a fraction of the jaw drop
    lip_spread: float = 0.10  # corner travel at lip_spread = +1, fraction of the mouth half-width
    lip_round: float = 0.16  # corner travel at lip_spread = -1, fraction of the mouth half-width
    blink_interval_s: tuple[float, float] = (3.0, 6.0)
    double_blink_chance: float = 0.15
    sway_roll_deg: float = 1.3
    sway_shift: float = 0.010
    speech_nod: float = 0.008  # extra downward shift at full jaw opening


@dataclasses.dataclass(frozen=True, slots=True)
class FaceRig:
    jaw: np.ndarray  # (n_vertices, 2) float32 px displacement at jaw_open = 1
    spread: np.ndarray  # (n_vertices, 2) float32 px at lip_spread = +1
    round: np.ndarray  # (n_vertices, 2) float32 px at lip_spread = -1
    blink_right: np.ndarray  # (n_vertices, 2) float32 px, right eye fully closed
    blink_left: np.ndarray  # (n_vertices, 2) float32 px, left eye fully closed
    pivot: np.ndarray  # (2,) float32 ROI px, centre of head roll (upper neck)
    face_height_px: float


@dataclasses.dataclass(frozen=True, slots=True)
class HeadPose:
    roll_rad: float  # in-plane rotation about the rig pivot
    shift_x_px: float
    shift_y_px: float


@dataclasses.dataclass(frozen=True, slots=True)
class FrameMotion:
    index: int  # frame number
    jaw_open: float  # 0-1
    lip_spread: float  # -1..1
    blink: float  # 0 open .. 1 closed (both eyes)
    pose: HeadPose


def _smoothstep(edge0: float, edge1: np.ndarray | float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / np.maximum(edge1 - edge0, 1e-6), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def lip_regions(local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Landmark indices of the upper and lower lip (every point inside the outer lip line), corners excluded.

    mediapipe has several rings of points inside each lip; all of them must move with their lip,
    or the mesh folds when the mouth opens.
    """
    pts = local[: lm.NUM_LANDMARKS].astype(np.float32)
    outer = pts[list(lm.LIPS_OUTER_UPPER + lm.LIPS_OUTER_LOWER[-2:0:-1])]
    inside = np.array(
        [cv2.pointPolygonTest(outer.reshape(-1, 1, 2), (float(x), float(y)), True) >= -0.5 for x, y in pts]
    )
    up = pts[list(lm.LIPS_INNER_UPPER)]
    lo = pts[list(lm.LIPS_INNER_LOWER)]
    ou, ol = np.argsort(up[:, 0]), np.argsort(lo[:, 0])
    seam = 0.5 * (np.interp(pts[:, 0], up[ou, 0], up[ou, 1]) + np.interp(pts[:, 0], lo[ol, 0], lo[ol, 1]))
    is_upper = inside & (pts[:, 1] < seam)
    is_lower = inside & ~is_upper
    is_upper[list(lm.LIPS_INNER_UPPER + lm.LIPS_OUTER_UPPER)] = True
    is_lower[list(lm.LIPS_INNER_UPPER + lm.LIPS_OUTER_UPPER)] = False
    is_lower[list(lm.LIPS_INNER_LOWER + lm.LIPS_OUTER_LOWER)] = True
    is_upper[list(lm.LIPS_INNER_LOWER + lm.LIPS_OUTER_LOWER)] = False
    corners = list(lm.MOUTH_CORNERS) + [78, 308]
    is_upper[corners] = is_lower[corners] = False
    return np.flatnonzero(is_upper), np.flatnonzero(is_lower)


def _jaw_basis(local: np.ndarray, geo: FaceGeometry, tuning: MotionTuning) -> np.ndarray:
    """Jaw drop: the lower face moves down the face axis, more at the chin; the upper lip lifts a little."""
    fr = geo.frame
    u, v = local[:, 0], local[:, 1]
    mouth_w, face_w, face_h = (
        fr.mouth_half_width_px,
        max(fr.face_half_width_px, fr.mouth_half_width_px * 1.5),
        fr.face_height_px,
    )
    lateral = np.clip((np.abs(u) - mouth_w) / (face_w - mouth_w), 0.0, 1.0)
    weight = _smoothstep(-0.03, 0.05 + 0.10 * lateral, v / face_h) * (1.0 - 0.85 * lateral**1.5)
    upper, lower = lip_regions(local)
    across = np.clip(u / mouth_w, -1.0, 1.0) ** 2
    corner_weight = 0.3
    weight[lower] = 1.0 - 0.5 * across[lower]
    weight[upper] = -tuning.upper_lip_lift * (1.0 - across[upper])
    weight[list(lm.MOUTH_CORNERS) + [78, 308]] = corner_weight
    # Towards the corners both lips converge on the corner's motion, so nothing folds there.
    lips = np.concatenate([upper, lower])
    to_corner = np.clip((mouth_w - np.abs(u[lips])) / (0.3 * mouth_w), 0.0, 1.0)
    weight[lips] = corner_weight + (weight[lips] - corner_weight) * to_corner
    # A hinged jaw: the chin travels further than the lower lip.
    weight = np.where(weight > 0, weight * (0.75 + 0.25 * np.clip(v / (0.3 * face_h), 0.0, 1.0)), weight)
    basis = np.zeros((len(local), 2), np.float32)
    basis[: lm.NUM_LANDMARKS] = (weight[: lm.NUM_LANDMARKS, None] * tuning.jaw_drop * face_h) * fr.y_axis
    return basis


def _lip_basis(local: np.ndarray, geo: FaceGeometry, corner_travel: float, thicken: float) -> np.ndarray:
    """Corners move along the mouth axis (in proportion to position across the mouth); skin around follows."""
    fr = geo.frame
    u, v = local[:, 0], local[:, 1]
    mouth_w = fr.mouth_half_width_px
    lips = sorted(set(lm.LIPS_OUTER_UPPER + lm.LIPS_OUTER_LOWER + lm.LIPS_INNER_UPPER + lm.LIPS_INNER_LOWER))
    falloff = np.exp(
        -((np.maximum(np.abs(u) - mouth_w, 0.0) / (0.8 * mouth_w)) ** 2)
        - (np.maximum(np.abs(v) - 0.35 * mouth_w, 0.0) / (0.6 * mouth_w)) ** 2
    )
    falloff[lips] = 1.0
    along = corner_travel * np.clip(u, -mouth_w, mouth_w) * falloff
    basis = np.zeros((len(local), 2), np.float32)
    basis[: lm.NUM_LANDMARKS] = along[: lm.NUM_LANDMARKS, None] * fr.x_axis
    if thicken:
        across = 1.0 - np.clip(u / mouth_w, -1.0, 1.0) ** 2
        for idx, sign in ((lm.LIPS_OUTER_UPPER, -1.0), (lm.LIPS_OUTER_LOWER, 1.0)):
            rows = list(idx)
            basis[rows] += (sign * thicken * mouth_w * across[rows])[:, None] * fr.y_axis
    return basis


def _blink_basis(
    points: np.ndarray,
    corners: tuple[int, int],
    upper: tuple[int, ...],
    lower: tuple[int, ...],
    iris: tuple[int, ...],
    n_vertices: int,
) -> np.ndarray:
    """Eye closure: the upper lid sweeps down to a line 20 % above the lower lid, which rises to meet it.

    The lid skin above follows with a falloff, the iris is squeezed between the lids, so the warp
    stretches the lid over the eye and no gap is ever exposed.
    """
    a, b = points[corners[0]], points[corners[1]]
    axis = b - a
    length = max(float(np.linalg.norm(axis)), 1e-6)
    axis = axis / length
    normal = np.array([-axis[1], axis[0]])
    if normal[1] < 0:  # point "down" the image
        normal = -normal

    def eye_coords(idx):
        rel = points[list(idx)] - a
        return rel @ axis / length, rel @ normal  # s in 0..1 corner to corner, n in px (down positive)

    chain_u = (corners[0], *upper, corners[1])
    chain_l = (corners[0], *lower, corners[1])
    su, nu = eye_coords(chain_u)
    sl, nl = eye_coords(chain_l)
    ou, ol = np.argsort(su), np.argsort(sl)
    su, nu, sl, nl = su[ou], nu[ou], sl[ol], nl[ol]

    def upper_n(s):
        return np.interp(s, su, nu)

    def lower_n(s):
        return np.interp(s, sl, nl)

    def closure(s):
        """(upper-lid travel, lower-lid travel) along the normal at s, px."""
        gap = lower_n(s) - upper_n(s)
        meet = lower_n(s) - 0.2 * np.maximum(gap, 0.0)
        return 0.96 * (meet - upper_n(s)), meet - lower_n(s)

    basis = np.zeros((n_vertices, 2), np.float32)
    moved = set(corners)
    for chain, which in ((upper, 0), (lower, 1)):
        s, _ = eye_coords(chain)
        basis[list(chain)] = closure(s)[which][:, None] * normal
        moved.update(chain)
    s, n = eye_coords(iris)
    du, dl = closure(s)
    t = np.clip((n - upper_n(s)) / np.maximum(lower_n(s) - upper_n(s), 1e-3), 0.0, 1.0)
    basis[list(iris)] = ((1.0 - t) * du + t * dl)[:, None] * normal
    moved.update(iris)

    # Skin around the eye follows the nearest lid with a falloff.
    others = np.array([i for i in range(lm.NUM_LANDMARKS) if i not in moved])
    s, n = eye_coords(others)
    inside = (s > -0.3) & (s < 1.3)
    lateral = np.clip(np.minimum(s + 0.3, 1.3 - s) / 0.3, 0.0, 1.0)
    s_c = np.clip(s, 0.0, 1.0)
    du, dl = closure(s_c)
    above = upper_n(s_c) - n  # px above the upper lid
    below = n - lower_n(s_c)
    reach_up, reach_down = 0.55 * length, 0.3 * length
    w_up = np.where(above > 0, 0.45 * np.clip(1.0 - above / reach_up, 0.0, 1.0) ** 2, 0.0)
    w_down = np.where(below > 0, 0.5 * np.clip(1.0 - below / reach_down, 0.0, 1.0) ** 2, 0.0)
    travel = (w_up * du + w_down * dl) * lateral * inside
    basis[others] = travel[:, None] * normal
    return basis


def build_rig(geo: FaceGeometry, tuning: MotionTuning | None = None) -> FaceRig:
    """Displacement bases for one avatar (computed once at registration)."""
    tuning = tuning or MotionTuning()
    vertices = geo.mesh.vertices
    local = geo.frame.to_local(vertices)
    points = vertices[: lm.NUM_LANDMARKS].astype(np.float64)
    n = len(vertices)
    face_h = geo.frame.face_height_px
    chin = points[lm.CHIN]
    return FaceRig(
        jaw=_jaw_basis(local, geo, tuning),
        spread=_lip_basis(local, geo, tuning.lip_spread, 0.0),
        round=_lip_basis(local, geo, -tuning.lip_round, 0.05),
        blink_right=_blink_basis(
            points, lm.RIGHT_EYE_CORNERS, lm.RIGHT_EYE_UPPER, lm.RIGHT_EYE_LOWER, lm.RIGHT_IRIS, n
        ),
        blink_left=_blink_basis(points, lm.LEFT_EYE_CORNERS, lm.LEFT_EYE_UPPER, lm.LEFT_EYE_LOWER, lm.LEFT_IRIS, n),
        pivot=(chin + 0.25 * face_h * geo.frame.y_axis).astype(np.float32),
        face_height_px=face_h,
    )


class BlinkSchedule:
    """Seeded blink times: every 3-6 s, ~160 ms each (close 40 ms, hold 40 ms, open 80 ms), some doubled."""

    CLOSE_S, HOLD_S, OPEN_S = 0.04, 0.04, 0.08

    def __init__(self, rng: np.random.Generator, tuning: MotionTuning) -> None:
        self._rng = rng
        self._tuning = tuning
        self._starts: list[float] = []
        self._horizon = float(rng.uniform(0.8, 2.5))

    def _extend(self, until_s: float) -> None:
        lo, hi = self._tuning.blink_interval_s
        while self._horizon <= until_s + 1.0:
            self._starts.append(self._horizon)
            if self._rng.random() < self._tuning.double_blink_chance:
                self._starts.append(self._horizon + 0.32)
            self._horizon += float(self._rng.uniform(lo, hi))

    def amount(self, index: int) -> float:
        """Lid closure 0..1 at the centre of frame ``index``."""
        t = (index + 0.5) / FPS
        self._extend(t)
        total = self.CLOSE_S + self.HOLD_S + self.OPEN_S
        value = 0.0
        for start in reversed(self._starts):
            dt = t - start
            if dt > total:
                break
            if dt < 0:
                continue
            if dt < self.CLOSE_S:
                value = max(value, 0.5 - 0.5 * math.cos(math.pi * dt / self.CLOSE_S))
            elif dt < self.CLOSE_S + self.HOLD_S:
                value = 1.0
            else:
                value = max(value, 0.5 + 0.5 * math.cos(math.pi * (dt - self.CLOSE_S - self.HOLD_S) / self.OPEN_S))
        return value


class HeadSway:
    """Slow low-frequency noise (three sines per channel, seeded) plus a small nod with the jaw."""

    def __init__(self, rng: np.random.Generator, tuning: MotionTuning, face_height_px: float) -> None:
        self._freqs = rng.uniform(0.06, 0.35, size=(3, 3))  # (channel, component) Hz
        self._phases = rng.uniform(0.0, 2.0 * math.pi, size=(3, 3))
        self._amps = rng.uniform(0.5, 1.0, size=(3, 3))
        self._amps /= self._amps.sum(axis=1, keepdims=True)
        self._tuning = tuning
        self._face_h = face_height_px

    def pose(self, index: int, jaw_open: float, activity: float) -> HeadPose:
        t = index / FPS
        noise = (self._amps * np.sin(2.0 * math.pi * self._freqs * t + self._phases)).sum(axis=1)
        tn = self._tuning
        gain = 1.0 + 0.8 * activity  # a talking head moves a little more
        return HeadPose(
            roll_rad=math.radians(tn.sway_roll_deg) * float(noise[0]) * gain,
            shift_x_px=tn.sway_shift * self._face_h * float(noise[1]) * gain,
            shift_y_px=tn.sway_shift * self._face_h * float(noise[2]) * gain + tn.speech_nod * self._face_h * jaw_open,
        )


class MotionGenerator:
    """Per-stream: mouth params -> :class:`FrameMotion`, adding seeded blinks and sway."""

    def __init__(self, rig: FaceRig, seed: int, tuning: MotionTuning | None = None) -> None:
        self.tuning = tuning or MotionTuning()
        blink_seq, sway_seq = np.random.SeedSequence(int(seed)).spawn(2)
        self._blinks = BlinkSchedule(np.random.default_rng(blink_seq), self.tuning)
        self._sway = HeadSway(np.random.default_rng(sway_seq), self.tuning, rig.face_height_px)

    def step(self, params: MouthParams) -> FrameMotion:
        pose = self._sway.pose(params.index, params.jaw_open, params.activity)
        return FrameMotion(params.index, params.jaw_open, params.lip_spread, self._blinks.amount(params.index), pose)


def target_vertices(source: np.ndarray, rig: FaceRig, motion: FrameMotion) -> np.ndarray:
    """(n_vertices, 2) float32 target mesh in ROI pixels for one frame."""
    target = source + motion.jaw_open * rig.jaw
    if motion.lip_spread > 0:
        target += motion.lip_spread * rig.spread
    elif motion.lip_spread < 0:
        target += -motion.lip_spread * rig.round
    if motion.blink > 0:
        target += motion.blink * (rig.blink_right + rig.blink_left)
    pose = motion.pose
    c, s = math.cos(pose.roll_rad), math.sin(pose.roll_rad)
    face = target[: lm.NUM_LANDMARKS] - rig.pivot
    rotated = np.empty_like(face)
    rotated[:, 0] = c * face[:, 0] - s * face[:, 1] + pose.shift_x_px
    rotated[:, 1] = s * face[:, 0] + c * face[:, 1] + pose.shift_y_px
    target[: lm.NUM_LANDMARKS] = rotated + rig.pivot
    return target.astype(np.float32, copy=False)

"""One frame: copy the source, warp the face ROI with one ``cv2.remap``, paint the inner mouth.

Pixels outside the ROI are a plain copy of the source. The warp is the identity on the
ROI border (the mesh anchors never move and the displacement fades to zero towards them),
so the ROI is written straight back without a seam: the paste-back is feathered in the
displacement field rather than by alpha-blending two images, which would ghost. The
inner mouth is blended in with an anti-aliased polygon mask.

The exact inverse warp (see :mod:`.warp`) never leaves holes, so a closing eyelid is the
lid skin stretched over the eye and needs no separate fill.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from ditto.backends.lite import landmarks as lm
from ditto.backends.lite.geometry import FaceGeometry

_SUBPIXEL_BITS = 3  # cv2.fillPoly fractional bits for the mouth polygon


@dataclasses.dataclass(frozen=True, slots=True)
class MouthStyle:
    """Inner-mouth colours and the source's own mouth opening, measured once per avatar."""

    cavity_top_rgb: np.ndarray  # (3,) float32, just inside the lips
    cavity_deep_rgb: np.ndarray  # (3,) float32, the back of the mouth
    teeth_rgb: np.ndarray  # (3,) float32, synthetic upper teeth
    upper_share: float  # fraction of the source's visible mouth interior that belongs to the upper jaw
    synthetic_teeth: float  # 1 when the source mouth is closed (no teeth to reuse), 0 when they show


def mouth_style(image_rgb: np.ndarray, geo: FaceGeometry) -> MouthStyle:
    """Sample skin, brightness and the source mouth interior to colour the opened mouth."""
    roi = image_rgb[geo.roi.slices]
    pts = geo.mesh.vertices
    face_h = geo.frame.face_height_px
    radius = max(2, int(0.03 * face_h))
    samples = []
    for idx in (205, 425, 199, 50, 280):  # cheeks and chin
        x, y = np.round(pts[idx]).astype(int)
        patch = roi[max(0, y - radius) : y + radius + 1, max(0, x - radius) : x + radius + 1]
        if patch.size:
            samples.append(patch.reshape(-1, 3))
    skin = np.median(np.concatenate(samples), axis=0).astype(np.float32) if samples else np.full(3, 160.0, np.float32)
    lo, hi = pts[: lm.NUM_LANDMARKS].min(axis=0).astype(int), np.ceil(pts[: lm.NUM_LANDMARKS].max(axis=0)).astype(int)
    luma = roi[max(lo[1], 0) : hi[1], max(lo[0], 0) : hi[0]].reshape(-1, 3).astype(np.float32) @ _LUMA
    bright = float(np.percentile(luma, 97)) if luma.size else 200.0
    teeth_level = float(np.clip(0.95 * bright, 120.0, 235.0))

    # Where does the source's visible interior split between the jaws? At its darkest row.
    mouth_w = 2.0 * geo.frame.mouth_half_width_px
    top, bottom, xs = _opening_columns(pts, 0.35, 0.65, max(3, int(0.3 * mouth_w)))
    gaps = bottom - top
    upper_share = 0.6
    if np.median(gaps) >= 3.0:
        rows = []
        for x, t, g in zip(xs, top, gaps):
            ys = t + np.linspace(0.0, 1.0, 12) * g
            col = roi[
                np.clip(np.round(ys).astype(int), 0, roi.shape[0] - 1), int(np.clip(round(x), 0, roi.shape[1] - 1))
            ]
            rows.append(col.astype(np.float32) @ _LUMA)
        profile = np.mean(rows, axis=0)
        upper_share = float(np.clip(np.linspace(0.0, 1.0, 12)[int(np.argmin(profile[2:-2])) + 2], 0.3, 0.85))
    synthetic = float(np.clip(1.0 - (np.median(gaps) - 0.02 * mouth_w) / (0.06 * mouth_w), 0.0, 1.0))
    return MouthStyle(
        cavity_top_rgb=np.clip(skin * np.array([0.42, 0.22, 0.21]), 0, 255).astype(np.float32),
        cavity_deep_rgb=np.clip(skin * np.array([0.20, 0.09, 0.09]), 0, 255).astype(np.float32),
        teeth_rgb=(teeth_level * np.array([1.0, 0.96, 0.89])).astype(np.float32),
        upper_share=upper_share,
        synthetic_teeth=synthetic,
    )


_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _chain(points: np.ndarray, idx: tuple[int, ...], smooth: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """x-sorted (xs, ys) of a lip chain; ``smooth`` rounds its corners (two Chaikin passes)."""
    xy = points[list(idx)].astype(np.float32)
    if smooth:
        for _ in range(2):
            q = 0.75 * xy[:-1] + 0.25 * xy[1:]
            r = 0.25 * xy[:-1] + 0.75 * xy[1:]
            xy = np.concatenate([xy[:1], np.stack([q, r], axis=1).reshape(-1, 2), xy[-1:]])
    order = np.argsort(xy[:, 0], kind="stable")
    return xy[order, 0], xy[order, 1]


def _opening_columns(points: np.ndarray, c0: float, c1: float, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inner-lip top and bottom rows at ``n`` columns spread over [c0, c1] of the mouth width."""
    ux, uy = _chain(points, lm.LIPS_INNER_UPPER)
    lx, ly = _chain(points, lm.LIPS_INNER_LOWER)
    left, right = min(ux[0], lx[0]), max(ux[-1], lx[-1])
    xs = left + np.linspace(c0, c1, n) * (right - left)
    return np.interp(xs, ux, uy), np.interp(xs, lx, ly), xs


def paint_mouth(
    roi: np.ndarray, source_roi: np.ndarray, source: np.ndarray, target: np.ndarray, style: MouthStyle
) -> bool:
    """Redraw the inside of the target inner-lip polygon, in place.

    The source's own interior is split at its darkest row: the upper part (upper teeth) moves with
    the upper lip, the lower part with the lower lip, and the new gap between them is a dark cavity
    (with synthetic upper teeth when the source mouth is closed). When the target opening equals
    the source's this reproduces the source exactly, so opening and closing never pop.

    Args:
        roi: (h, w, 3) uint8 view of the output frame's ROI (already warped).
        source_roi: (h, w, 3) uint8 source ROI.
        source, target: (n_vertices, 2) float32 source and target mesh, ROI pixels.

    Returns:
        Whether anything was painted (False when the mouth is not opened beyond the source).
    """
    up_i, lo_i = lm.INNER_UPPER_MID, lm.INNER_LOWER_MID
    added = float(np.linalg.norm(target[lo_i] - target[up_i]) - np.linalg.norm(source[lo_i] - source[up_i]))
    if added < 0.25:
        return False
    ux, uy = _chain(target, lm.LIPS_INNER_UPPER, smooth=True)
    lx, ly = _chain(target, lm.LIPS_INNER_LOWER, smooth=True)
    ring = np.concatenate([np.stack([ux, uy], axis=1), np.stack([lx, ly], axis=1)[::-1]])
    h, w = roi.shape[:2]
    x0 = max(int(np.floor(ring[:, 0].min())) - 1, 0)
    x1 = min(int(np.ceil(ring[:, 0].max())) + 2, w)
    y0 = max(int(np.floor(ring[:, 1].min())) - 1, 0)
    y1 = min(int(np.ceil(ring[:, 1].max())) + 2, h)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return False
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    poly = np.round((ring - [x0, y0]) * (1 << _SUBPIXEL_BITS)).astype(np.int32)
    # cv2's stubs type a colour as a sequence; the binding takes a number (the same Scalar)
    cv2.fillPoly(mask, [poly], 255, lineType=cv2.LINE_AA, shift=_SUBPIXEL_BITS)  # type: ignore[call-overload]

    xs = np.arange(x0, x1, dtype=np.float32)
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]
    top = np.interp(xs, ux, uy).astype(np.float32)
    bottom = np.interp(xs, lx, ly).astype(np.float32)
    left, right = float(min(ux[0], lx[0])), float(max(ux[-1], lx[-1]))
    across = np.clip((xs - left) / max(right - left, 1e-3), 0.0, 1.0)
    bulge = np.clip(np.sin(np.pi * across), 0.0, 1.0).astype(np.float32)  # 0 at the corners, 1 in the middle

    # The same relative column in the source mouth, and its opening there.
    s_top, s_bottom, s_x = _opening_columns(source, 0.0, 1.0, len(xs))
    s_x = (s_x[0] + across * (s_x[-1] - s_x[0])).astype(np.float32)
    s_top = np.interp(s_x, *_chain(source, lm.LIPS_INNER_UPPER, smooth=True)).astype(np.float32)
    s_bottom = np.interp(s_x, *_chain(source, lm.LIPS_INNER_LOWER, smooth=True)).astype(np.float32)
    s_gap = np.maximum(s_bottom - s_top, 0.0)
    up_h = style.upper_share * s_gap
    lo_h = s_gap - up_h
    below_top = ys - top  # px under the upper lip
    above_bottom = bottom - ys  # px over the lower lip
    in_upper = below_top < up_h + 0.5
    map_y = np.where(in_upper, s_top + below_top, s_bottom - above_bottom).astype(np.float32)
    map_x = np.broadcast_to(s_x, map_y.shape).astype(np.float32)
    reused = cv2.remap(source_roi, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
    w_reused = np.maximum(np.clip(up_h - below_top + 0.5, 0.0, 1.0), np.clip(lo_h - above_bottom + 0.5, 0.0, 1.0))

    # The new gap: a dark cavity, darker in the middle and towards the corners, with upper teeth if needed.
    gap = np.maximum(bottom - top, 1e-3)
    depth = np.clip(below_top / gap, 0.0, 1.0)
    shade = depth * (1.0 - depth) * 4.0
    colour = style.cavity_top_rgb + (style.cavity_deep_rgb - style.cavity_top_rgb) * shade[..., None]
    colour = colour * (0.55 + 0.45 * bulge)[None, :, None]
    if style.synthetic_teeth > 0:
        mouth_width = right - left
        teeth_h = np.minimum(0.45 * gap, 0.1 * mouth_width) * np.sqrt(bulge)
        teeth = np.clip((teeth_h - below_top) / 1.0 + 0.5, 0.0, 1.0) * np.clip((bulge - 0.25) / 0.3, 0.0, 1.0)
        teeth *= style.synthetic_teeth
        teeth_shade = (0.8 + 0.2 * bulge) * (1.0 - 0.18 * np.clip(below_top / np.maximum(teeth_h, 1.0), 0.0, 1.0))
        colour += (style.teeth_rgb * teeth_shade[..., None] - colour) * teeth[..., None]
    colour += (reused - colour) * w_reused[..., None]

    alpha = mask.astype(np.float32) * (1.0 / 255.0)
    patch = roi[y0:y1, x0:x1]
    blended = patch + (colour - patch) * alpha[..., None]
    np.copyto(patch, np.clip(blended + 0.5, 0, 255).astype(np.uint8))
    return True


class FrameCompositor:
    """Per-stream compositor with preallocated map buffers. Not thread-safe; one per stream."""

    def __init__(self, image_rgb: np.ndarray, geo: FaceGeometry, warp, style: MouthStyle) -> None:
        self._image = image_rgb
        self._geo = geo
        self._warp = warp
        self._style = style
        self._source_roi = np.ascontiguousarray(image_rgb[geo.roi.slices])
        shape = (geo.roi.height, geo.roi.width, 2)
        self._map = np.empty(shape, np.float32)
        self._scratch = np.empty(shape, np.float32)

    def render(self, target: np.ndarray) -> np.ndarray:
        """A new (H, W, 3) uint8 RGB frame for the target mesh (ROI pixels)."""
        frame = np.empty_like(self._image)
        r = self._geo.roi
        # Copy only what lies outside the ROI; the remap writes the ROI itself.
        np.copyto(frame[: r.y0], self._image[: r.y0])
        np.copyto(frame[r.y1 :], self._image[r.y1 :])
        np.copyto(frame[r.y0 : r.y1, : r.x0], self._image[r.y0 : r.y1, : r.x0])
        np.copyto(frame[r.y0 : r.y1, r.x1 :], self._image[r.y0 : r.y1, r.x1 :])
        roi = frame[r.slices]
        table = self._warp.remap_table(target, out=self._map, scratch=self._scratch)
        # map2 None: ``table`` holds (x, y) pairs (documented); cv2's stubs do not allow None there
        cv2.remap(self._source_roi, table, None, cv2.INTER_LINEAR, dst=roi, borderMode=cv2.BORDER_REPLICATE)  # type: ignore[call-overload]
        paint_mouth(roi, self._source_roi, self._geo.mesh.vertices, target, self._style)
        return frame

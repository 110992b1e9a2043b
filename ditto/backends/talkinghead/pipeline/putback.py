"""Paste the 512x512 render back into the original frame, on the GPU (upstream ``putback.py``,
``utils/get_mask.py`` and the C blend loop).

Upstream, per frame::

    m  = clip(cv2.warpAffine(mask512, M_c2o[:2], (W,H), INTER_LINEAR), 0, 1)      # border 0
    fw = cv2.warpAffine(render_hwc * 255, M_c2o[:2], (W,H), INTER_LINEAR)
    out = uint8(clip(m*fw + (1-m)*frame, 0, 255))                                 # truncation

``M_c2o`` is fixed per source frame, so everything except ``fw`` is computed once per source
frame in a :class:`PastePlan`: the bounding box where the warped mask can be non-zero, the four
source-pixel indices and bilinear weights of every box pixel, ``m`` and ``(1-m)*frame``. Per
frame that leaves one gather, a weighted sum, a multiply-add and a copy into the frame.

The sampling positions reproduce OpenCV's fixed-point ``warpAffine`` (OpenCV 4.10/4.11 on x86):
the inverse map is evaluated in float64, rounded to 1/1024 px, then to 1/32 px; the weights are
the float32 products of ``1 - f`` and ``f`` with ``f = j/32``; neighbours outside the 512 crop
count as 0. Results therefore agree with the CPU path to float rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "CROP_SIZE",
    "make_feather_mask",
    "invert_affine",
    "PastePlan",
    "build_paste_plan",
    "paste_back",
    "paste_back_many",
]

CROP_SIZE = 512  # decoder output / crop side
_AB_BITS = 10  # OpenCV warpAffine: map coordinates kept in 1/1024 px
_INTER_BITS = 5  # ... then rounded to 1/32 px for the interpolation table
_INTER_TAB = 1 << _INTER_BITS


def make_feather_mask(
    width: int = CROP_SIZE, height: int = CROP_SIZE, ratio_w: float = 0.9, ratio_h: float = 0.9
) -> np.ndarray:
    """The feathered paste-back mask (H,W) float32.

    Inner box of int(W*ratio_w) x int(H*ratio_h) (460x460 for 512) is 1. Each border strip is a
    linear ramp from 0 at the image edge to 1 next to the box (``linspace(0,1,n)``). Each corner
    block is ``1 - clip(hypot(u, v), 0, 1)`` where u, v run linearly from 1 at the image corner to
    0 next to the box.
    """
    inner_w = int(width * ratio_w)
    inner_h = int(height * ratio_h)
    left = (width - inner_w) // 2
    right = left + inner_w
    top = (height - inner_h) // 2
    bottom = top + inner_h
    n_l, n_r, n_t, n_b = left, width - right, top, height - bottom

    def ramp(start: float, stop: float, n: int) -> np.ndarray:
        return np.linspace(start, stop, n)  # float64, like the reference

    def radial(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        # hypot of a horizontal ramp u (columns) and a vertical ramp v (rows), float64 -> float32
        return np.sqrt(u[None, :] ** 2 + v[:, None] ** 2).astype(np.float32)

    def corner(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return np.float32(1) - np.clip(radial(u, v), 0, 1)

    flat_w, flat_h = np.zeros(inner_w), np.zeros(inner_h)
    mask = np.ones((height, width), dtype=np.float32)
    # straight strips: one ramp, the other axis constant 0
    mask[0:top, left:right] = radial(flat_w, ramp(0, 1, n_t))
    mask[bottom:height, left:right] = radial(flat_w, ramp(1, 0, n_b))
    mask[top:bottom, 0:left] = radial(ramp(0, 1, n_l), flat_h)
    mask[top:bottom, right:width] = radial(ramp(1, 0, n_r), flat_h)
    # corners: 1 at the box corner falling radially to 0 at distance 1 (ramp units)
    mask[0:top, 0:left] = corner(ramp(1, 0, n_l), ramp(1, 0, n_t))
    mask[0:top, right:width] = corner(ramp(0, 1, n_r), ramp(1, 0, n_t))
    mask[bottom:height, 0:left] = corner(ramp(1, 0, n_l), ramp(0, 1, n_b))
    mask[bottom:height, right:width] = corner(ramp(0, 1, n_r), ramp(0, 1, n_b))
    return mask


def invert_affine(m: Any) -> tuple[float, float, float, float, float, float]:
    """Inverse of a 2x3 (or 3x3) affine map, computed in float64 like ``cv2.invertAffineTransform``.

    Returns (a00, a01, a02, a10, a11, a12) of the destination -> source map.
    """
    a = np.asarray(m, dtype=np.float64).reshape(-1)
    if a.size == 9:
        a = a[:6]
    m0, m1, m2, m3, m4, m5 = (float(v) for v in a[:6])
    det = m0 * m4 - m1 * m3
    det = 1.0 / det if det != 0 else 0.0
    i0 = m4 * det
    i4 = m0 * det
    i1 = m1 * -det
    i3 = m3 * -det
    i2 = -i0 * m2 - i1 * m5
    i5 = -i3 * m2 - i4 * m5
    return i0, i1, i2, i3, i4, i5


@dataclass(frozen=True, slots=True)
class PastePlan:
    """Everything about one source frame's paste-back that does not depend on the render."""

    frame: Tensor  # (H,W,3) uint8 original frame on the device
    box: tuple[int, int, int, int]  # (y0, y1, x0, x1) region where the warped mask can be > 0
    index: Tensor  # (4*P,) int64 flat render-pixel indices, neighbour-major (00, 01, 10, 11)
    weight: Tensor  # (4,P) float32 bilinear weights (0 for neighbours outside the crop)
    mask: Tensor  # (P,) float32 warped mask, clipped to [0,1]
    background: Tensor  # (3,P) float32 (1 - mask) * frame
    crop_size: tuple[int, int]  # (h, w) of the render


def _round_half_even(x: Tensor) -> Tensor:
    return torch.round(x)  # torch.round rounds half to even, like cvRound/lrint


def build_paste_plan(
    frame: Tensor,
    M_c2o: Any,
    *,
    mask: np.ndarray | Tensor | None = None,
    crop_size: tuple[int, int] = (CROP_SIZE, CROP_SIZE),
) -> PastePlan:
    """Precompute the paste-back of one source frame (call once per avatar frame).

    Args:
        frame: (H,W,3) uint8 RGB original frame, on the target device.
        M_c2o: (3,3) or (2,3) crop -> original affine (the registrar's ``M_c2o``).
        mask: optional (h,w) float mask template in [0,1] (default :func:`make_feather_mask`).
        crop_size: (h, w) of the render (512, 512).

    Returns:
        A :class:`PastePlan` on ``frame.device``.
    """
    device = frame.device
    height, width = int(frame.shape[0]), int(frame.shape[1])
    ch, cw = crop_size
    inv = invert_affine(M_c2o)
    fwd = np.asarray(M_c2o, dtype=np.float64).reshape(-1)[:6]

    # bounding box of the crop square mapped into the frame, widened by 2 px for rounding
    corners = np.array([[-1.0, -1.0], [cw, -1.0], [-1.0, ch], [cw, ch]])
    xs = fwd[0] * corners[:, 0] + fwd[1] * corners[:, 1] + fwd[2]
    ys = fwd[3] * corners[:, 0] + fwd[4] * corners[:, 1] + fwd[5]
    x0 = max(0, int(math.floor(xs.min())) - 2)
    x1 = min(width, int(math.ceil(xs.max())) + 3)
    y0 = max(0, int(math.floor(ys.min())) - 2)
    y1 = min(height, int(math.ceil(ys.max())) + 3)
    if x1 <= x0 or y1 <= y0:
        x0 = x1 = y0 = y1 = 0
    bh, bw = y1 - y0, x1 - x0

    f64 = torch.float64
    gx = torch.arange(x0, x1, dtype=f64, device=device)
    gy = torch.arange(y0, y1, dtype=f64, device=device)
    scale = float(1 << _AB_BITS)
    half = float((1 << _AB_BITS) // _INTER_TAB // 2)  # round_delta = 16
    # OpenCV: X = (round((a01*y + a02)*1024) + 16 + round(a00*x*1024)) >> 5   (units of 1/32 px)
    col_x = _round_half_even(inv[0] * gx * scale)
    col_y = _round_half_even(inv[3] * gx * scale)
    row_x = _round_half_even((inv[1] * gy + inv[2]) * scale) + half
    row_y = _round_half_even((inv[4] * gy + inv[5]) * scale) + half
    shift = float(1 << (_AB_BITS - _INTER_BITS))
    qx = torch.floor((row_x[:, None] + col_x[None, :]) / shift).to(torch.int64).reshape(-1)
    qy = torch.floor((row_y[:, None] + col_y[None, :]) / shift).to(torch.int64).reshape(-1)
    sx = torch.div(qx, _INTER_TAB, rounding_mode="floor")
    sy = torch.div(qy, _INTER_TAB, rounding_mode="floor")
    tx = (qx - sx * _INTER_TAB).to(torch.float32) * (1.0 / _INTER_TAB)  # 1/32: exact in float32
    ty = (qy - sy * _INTER_TAB).to(torch.float32) * (1.0 / _INTER_TAB)

    wx = (1 - tx, tx)
    wy = (1 - ty, ty)
    idx_parts, w_parts = [], []
    for dy in (0, 1):
        for dx in (0, 1):
            px, py = sx + dx, sy + dy
            inside = (px >= 0) & (px < cw) & (py >= 0) & (py < ch)
            w = wy[dy] * wx[dx]
            w_parts.append(torch.where(inside, w, torch.zeros_like(w)))
            idx_parts.append(torch.where(inside, py * cw + px, torch.zeros_like(px)))
    index = torch.cat(idx_parts, 0)
    weight = torch.stack(w_parts, 0)

    if mask is None:
        mask_t = torch.as_tensor(make_feather_mask(cw, ch), device=device)
    else:
        mask_t = (
            torch.as_tensor(np.asarray(mask, dtype=np.float32) if not isinstance(mask, Tensor) else mask, device=device)
            .float()
            .reshape(ch, cw)
        )
    m = _sample(mask_t.reshape(1, -1), index, weight)[0].clamp(0, 1)
    region = frame[y0:y1, x0:x1].reshape(bh * bw, 3).t().float()  # (3,P)
    background = (1 - m).unsqueeze(0) * region
    return PastePlan(
        frame=frame, box=(y0, y1, x0, x1), index=index, weight=weight, mask=m, background=background, crop_size=(ch, cw)
    )


def _sample(src: Tensor, index: Tensor, weight: Tensor) -> Tensor:
    """Bilinear gather: src (..., C, h*w) -> (..., C, P), summed in OpenCV's order."""
    p = weight.shape[1]
    g = src.index_select(-1, index).unflatten(-1, (4, p))
    return g[..., 0, :] * weight[0] + g[..., 1, :] * weight[1] + g[..., 2, :] * weight[2] + g[..., 3, :] * weight[3]


def paste_back(plan: PastePlan, render: Tensor) -> Tensor:
    """Blend one render into its source frame.

    Args:
        plan: the source frame's :class:`PastePlan`.
        render: (1,3,h,w) or (3,h,w) decoder output in [0,1] (any float dtype), on plan's device.

    Returns:
        (H,W,3) uint8 frame on the device (a new tensor).
    """
    return paste_back_many(plan, render.reshape(1, 3, *render.shape[-2:]))[0]


def paste_back_many(plan: PastePlan, renders: Tensor) -> Tensor:
    """:func:`paste_back` of k renders into the same source frame at once (the same arithmetic, one
    launch per step for all k instead of k).

    Args:
        plan: the source frame's :class:`PastePlan`.
        renders: (k,3,h,w) decoder outputs in [0,1] (any float dtype), on plan's device.

    Returns:
        (k,H,W,3) uint8 frames on the device (a new tensor).
    """
    y0, y1, x0, x1 = plan.box
    out = plan.frame.expand(renders.shape[0], *plan.frame.shape).clone()
    if y1 <= y0 or x1 <= x0:
        return out
    rgb = renders.reshape(renders.shape[0], 3, -1).float().clamp(0, 1) * 255
    warped = _sample(rgb, plan.index, plan.weight)  # (k,3,P)
    blended = plan.mask * warped + plan.background
    region = blended.clamp(0, 255).to(torch.uint8)  # truncation toward 0, like the C loop
    out[:, y0:y1, x0:x1] = region.transpose(1, 2).reshape(-1, y1 - y0, x1 - x0, 3)
    return out

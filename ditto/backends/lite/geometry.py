"""Per-avatar geometry, built once at registration: face ROI, face frame and triangle mesh.

Everything the renderer touches lives in a region of interest around the face (the
landmark box grown by :data:`ROI_GROW`); pixels outside it are never modified. The mesh
is a Delaunay triangulation of the 478 landmarks plus a ring of anchors on the ROI
border. Anchors never move, so every warp fades to the identity at the ROI border and the
ROI pastes back without a seam.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

import numpy as np

from ditto.backends.lite import landmarks as lm
from ditto.errors import SourceError

if TYPE_CHECKING:
    from scipy.spatial import Delaunay

logger = logging.getLogger(__name__)

ROI_GROW = (0.32, 0.30, 0.32, 0.34)
"""Margins added to the landmark box (left, top, right, bottom) as fractions of its size: about x1.6."""

ANCHORS_PER_SIDE = 10
"""Fixed mesh points per ROI side; they pin the background around the face."""

GRID_PX_PER_FACE = 50
"""The inverse warp is solved on a grid of about this many points per face height (then upsampled)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Roi:
    x0: int  # left column in the source image (inclusive)
    y0: int  # top row (inclusive)
    x1: int  # right column (exclusive)
    y1: int  # bottom row (exclusive)

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)


@dataclasses.dataclass(frozen=True, slots=True)
class FaceFrame:
    """A face-aligned coordinate frame in ROI pixels (robust to tilted sources)."""

    mouth_center: np.ndarray  # (2,) float32, midpoint of the mouth corners
    x_axis: np.ndarray  # (2,) float32 unit vector, image-left eye -> image-right eye
    y_axis: np.ndarray  # (2,) float32 unit vector, down the face (towards the chin)
    face_height_px: float  # forehead top to chin
    face_half_width_px: float  # half the distance between the face sides near the ears
    mouth_half_width_px: float  # half the corner-to-corner distance

    def to_local(self, points: np.ndarray) -> np.ndarray:
        """(n, 2) ROI pixels -> (n, 2) (along x_axis, along y_axis) pixels from the mouth centre."""
        rel = points - self.mouth_center
        return np.stack([rel @ self.x_axis, rel @ self.y_axis], axis=1)


@dataclasses.dataclass(frozen=True, slots=True)
class Mesh:
    vertices: np.ndarray  # (n_vertices, 2) float32 ROI pixels; rows 0..477 are the landmarks, then anchors
    triangles: np.ndarray  # (n_triangles, 3) int32 vertex indices
    neighbors: np.ndarray  # (n_triangles, 3) int32, triangle opposite vertex k, -1 on the ROI border
    locator: Delaunay  # scipy.spatial.Delaunay of the same triangles (point location at registration)

    @property
    def num_vertices(self) -> int:
        return len(self.vertices)


@dataclasses.dataclass(frozen=True, slots=True)
class FaceGeometry:
    roi: Roi
    frame: FaceFrame
    mesh: Mesh
    grid_step_px: int  # spacing of the inverse-warp grid; the ROI sides are multiples of it


def choose_roi(points: np.ndarray, image_width: int, image_height: int, grid_step_px: int) -> Roi:
    """The landmark box grown by :data:`ROI_GROW`, clipped to the image, sides multiples of the grid step."""
    lo, hi = points.min(axis=0), points.max(axis=0)
    size = hi - lo
    gl, gt, gr, gb = ROI_GROW
    x0 = max(0, int(np.floor(lo[0] - gl * size[0])))
    y0 = max(0, int(np.floor(lo[1] - gt * size[1])))
    x1 = min(image_width, int(np.ceil(hi[0] + gr * size[0])))
    y1 = min(image_height, int(np.ceil(hi[1] + gb * size[1])))
    # Round each side to a multiple of the step, growing when the image allows, else shrinking.
    w = -(-(x1 - x0) // grid_step_px) * grid_step_px
    if x0 + w > image_width:
        x0 = max(0, image_width - w)
        w = min(w, (image_width - x0) // grid_step_px * grid_step_px)
    h = -(-(y1 - y0) // grid_step_px) * grid_step_px
    if y0 + h > image_height:
        y0 = max(0, image_height - h)
        h = min(h, (image_height - y0) // grid_step_px * grid_step_px)
    return Roi(x0, y0, x0 + w, y0 + h)


def face_frame(points: np.ndarray) -> FaceFrame:
    """Axes from the eye centres, origin at the mouth centre, lengths from the landmarks (ROI pixels)."""
    right_eye = points[list(lm.RIGHT_EYE_CORNERS)].mean(axis=0)
    left_eye = points[list(lm.LEFT_EYE_CORNERS)].mean(axis=0)
    x_axis = left_eye - right_eye
    x_axis = x_axis / max(float(np.linalg.norm(x_axis)), 1e-6)
    y_axis = np.array([-x_axis[1], x_axis[0]], dtype=np.float32)  # image y grows downwards
    corners = points[list(lm.MOUTH_CORNERS)]
    return FaceFrame(
        mouth_center=corners.mean(axis=0).astype(np.float32),
        x_axis=x_axis.astype(np.float32),
        y_axis=y_axis,
        face_height_px=float(np.linalg.norm(points[lm.CHIN] - points[lm.FOREHEAD_TOP])),
        face_half_width_px=0.5 * float(np.linalg.norm(points[lm.FACE_SIDES[1]] - points[lm.FACE_SIDES[0]])),
        mouth_half_width_px=0.5 * float(np.linalg.norm(corners[1] - corners[0])),
    )


def border_anchors(width: int, height: int, per_side: int = ANCHORS_PER_SIDE) -> np.ndarray:
    """(n, 2) float32 points evenly spaced on the ROI rectangle [0, w-1] x [0, h-1], corners included."""
    xs = np.linspace(0.0, width - 1.0, per_side + 1)
    ys = np.linspace(0.0, height - 1.0, per_side + 1)
    top = np.stack([xs[:-1], np.zeros(per_side)], axis=1)
    right = np.stack([np.full(per_side, width - 1.0), ys[:-1]], axis=1)
    bottom = np.stack([xs[::-1][:-1], np.full(per_side, height - 1.0)], axis=1)
    left = np.stack([np.zeros(per_side), ys[::-1][:-1]], axis=1)
    return np.concatenate([top, right, bottom, left]).astype(np.float32)


def build_mesh(points: np.ndarray, width: int, height: int) -> Mesh:
    """Delaunay mesh over landmarks (clipped inside the ROI) and fixed border anchors."""
    from scipy.spatial import Delaunay

    margin = 2.0
    inner = np.clip(points, margin, [width - 1 - margin, height - 1 - margin]).astype(np.float32)
    vertices = np.concatenate([inner, border_anchors(width, height)])
    # Iris points stay out of the triangulation: squeezed between closing lids they would fold it.
    used = np.array([i for i in range(len(vertices)) if not lm.IRIS_FIRST <= i < lm.NUM_LANDMARKS])
    tri = Delaunay(vertices[used].astype(np.float64))
    if len(tri.coplanar):
        logger.debug("%d coincident landmarks left out of the mesh", len(tri.coplanar))
    return Mesh(vertices, used[tri.simplices].astype(np.int32), tri.neighbors.astype(np.int32), tri)


def build_geometry(face: lm.FaceLandmarks, image_width: int, image_height: int) -> FaceGeometry:
    """Everything the per-frame path needs about the face, in ROI pixel coordinates."""
    grid_step_px = int(np.clip(round(face.face_height_px / GRID_PX_PER_FACE), 1, 8))
    roi = choose_roi(face.points, image_width, image_height, grid_step_px)
    if roi.width < 16 * grid_step_px or roi.height < 16 * grid_step_px:
        raise SourceError("the face is too small or too close to the image border to animate")
    points: np.ndarray = face.points - np.array([roi.x0, roi.y0], dtype=np.float32)
    mesh = build_mesh(points, roi.width, roi.height)
    frame = face_frame(mesh.vertices[: lm.NUM_LANDMARKS])
    logger.info(
        "lite geometry: roi %dx%d at (%d,%d), face %.0f px, grid step %d, %d triangles",
        roi.width,
        roi.height,
        roi.x0,
        roi.y0,
        frame.face_height_px,
        grid_step_px,
        len(mesh.triangles),
    )
    return FaceGeometry(roi, frame, mesh, grid_step_px)

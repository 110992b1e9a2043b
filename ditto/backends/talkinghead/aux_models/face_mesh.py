"""478-point MediaPipe face mesh on the 512 crop, and the eye descriptors derived from it.

Two interchangeable implementations return normalised landmarks (1, 478, 3)
(x / W, y / H, z / W) of the single face in the crop:

* :class:`MediaPipeFaceLandmarker` — the MediaPipe Tasks ``FaceLandmarker``
  from a ``.task`` bundle (Ditto's ``force_ori_type`` path, ``face_landmarker.task``).
* :class:`BlazeFaceMesh` — Ditto's ONNX/TensorRT pair ``blaze_face`` (SSD face
  detector, 896 anchors) + ``face_mesh`` (attention mesh on a rotated 256 ROI),
  with MediaPipe's decoding re-done in numpy (docs/pipeline.md §6).

:func:`eye_info` turns a mesh into the conditioning vectors eye_open (n, 2) and
eye_ball (n, 6) (docs/pipeline.md §7 step 3).
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from ditto.backends.talkinghead.aux_models._io import Runner, run_numpy
from ditto.errors import SourceError

NUM_MESH_POINTS = 478

# --------------------------------------------------------------------------- BlazeFace

BLAZE_INPUT_SIZE = 128
BLAZE_STRIDES = (8, 16, 16, 16)
BLAZE_SCORE_CLIP = (-50.0, 100.0)


def blaze_anchors(
    input_size: int = BLAZE_INPUT_SIZE,
    strides: tuple[int, ...] = BLAZE_STRIDES,
    offset: float = 0.5,
) -> np.ndarray:
    """(896, 4) SSD anchors (cx, cy, w, h) of the short-range BlazeFace, normalised.

    MediaPipe ``SsdAnchorsCalculator`` options: aspect ratio 1 plus one
    interpolated scale per layer, consecutive layers of equal stride merged,
    fixed anchor size (w = h = 1). With strides (8, 16, 16, 16) that is
    16×16×2 + 8×8×6 = 896 anchors. Scales only matter without fixed size, so
    they are not computed.
    """
    anchors: list[tuple[float, float, float, float]] = []
    layer = 0
    while layer < len(strides):
        stride = strides[layer]
        per_cell = 0
        while layer < len(strides) and strides[layer] == stride:
            per_cell += 2  # aspect ratio 1.0 + the interpolated-scale anchor
            layer += 1
        side = int(math.ceil(input_size / stride))
        for y in range(side):
            for x in range(side):
                cx, cy = (x + offset) / side, (y + offset) / side
                anchors.extend([(cx, cy, 1.0, 1.0)] * per_cell)
    return np.asarray(anchors, dtype=np.float32)


def decode_blaze(raw_boxes: np.ndarray, anchors: np.ndarray, scale: float = BLAZE_INPUT_SIZE) -> np.ndarray:
    """(896, 16) regressors → boxes (x1 y1 x2 y2, ``scale`` units) + 6 keypoints (normalised)."""
    out = np.zeros_like(raw_boxes, dtype=np.float32)
    cx = raw_boxes[:, 0] / scale * anchors[:, 2] + anchors[:, 0]
    cy = raw_boxes[:, 1] / scale * anchors[:, 3] + anchors[:, 1]
    w = raw_boxes[:, 2] / scale * anchors[:, 2]
    h = raw_boxes[:, 3] / scale * anchors[:, 3]
    out[:, 0] = scale * (cx - w / 2)
    out[:, 1] = scale * (cy - h / 2)
    out[:, 2] = scale * (cx + w / 2)
    out[:, 3] = scale * (cy + h / 2)
    for k in range(6):
        col = 4 + 2 * k
        out[:, col] = raw_boxes[:, col] / scale * anchors[:, 2] + anchors[:, 0]
        out[:, col + 1] = raw_boxes[:, col + 1] / scale * anchors[:, 3] + anchors[:, 1]
    return out


def _iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    lo = np.maximum(box[:2], boxes[:, :2])
    hi = np.minimum(box[2:4], boxes[:, 2:4])
    inter = np.clip(hi - lo, 0.0, None).prod(axis=1)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area + areas - inter)


def weighted_nms(detections: np.ndarray, iou_threshold: float = 0.3) -> np.ndarray:
    """BlazeFace blending NMS over (K, 17) rows [box 4 | kps 12 | score].

    Each cluster (IoU > threshold with the best remaining row) becomes one row
    whose 16 coordinates are the score-weighted mean of the cluster and whose
    score is the cluster's mean score. Returns (M, 17), best first.
    """
    if detections.shape[0] == 0:
        return np.zeros((0, 17), np.float32)
    remaining = np.argsort(detections[:, 16])[::-1]
    merged = []
    while remaining.size > 0:
        best = detections[remaining[0]]
        ious = _iou_one_to_many(best[:4], detections[remaining, :4])
        cluster = remaining[ious > iou_threshold]
        remaining = remaining[~(ious > iou_threshold)]
        row = best.copy()
        if cluster.size > 1:
            weights = detections[cluster, 16:17]
            row[:16] = (detections[cluster, :16] * weights).sum(axis=0) / weights.sum()
            row[16] = weights.mean()
        merged.append(row)
    return np.stack(merged).astype(np.float32)


class BlazeFaceDetector:
    """Ditto ``blaze_face``: input ``input`` (1,128,128,3) RGB in [−1, 1];
    outputs ``regressors`` (1,896,16), ``classificators`` (1,896,1)."""

    def __init__(self, runner: Runner, *, score_threshold: float = 0.5, iou_threshold: float = 0.3) -> None:
        self._runner = runner
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold
        self.anchors = blaze_anchors()

    def __call__(self, img_rgb: np.ndarray) -> np.ndarray:
        """(M, 17) faces, best first: box in 128-px units, keypoints normalised, score."""
        small = cv2.resize(img_rgb, (BLAZE_INPUT_SIZE, BLAZE_INPUT_SIZE))
        blob = (small[None].astype(np.float32) / 127.5 - 1.0).astype(np.float32)
        out = run_numpy(self._runner, {"input": blob})
        return self.postprocess(out["regressors"], out["classificators"])

    def postprocess(self, regressors: np.ndarray, classificators: np.ndarray) -> np.ndarray:
        raw = regressors.reshape(-1, 16).astype(np.float32)
        logits = np.clip(classificators.reshape(-1), *BLAZE_SCORE_CLIP)
        scores = 1.0 / (1.0 + np.exp(-logits))
        boxes = decode_blaze(raw, self.anchors)
        keep = scores >= self.score_threshold
        rows = np.concatenate([boxes[keep], scores[keep, None]], axis=1)
        return weighted_nms(rows, self.iou_threshold)


# --------------------------------------------------------------------------- ROI + mesh


def roi_from_detection(detection: np.ndarray, image_wh: tuple[int, int], scale: float = 1.5) -> np.ndarray:
    """ROI (cx, cy, w, h, rotation) in image pixels from one BlazeFace row.

    Box scaled from 128-px units to the image, squared on its long side, × ``scale``;
    rotation = −atan2(y0 − y1, x1 − x0) of keypoints 0 and 1 (the two eyes),
    wrapped into [−π, π). Upstream measures the eye keypoints in normalised
    units; on the square 512 crop the angle is identical.
    """
    w_img, h_img = image_wh
    sx, sy = w_img / BLAZE_INPUT_SIZE, h_img / BLAZE_INPUT_SIZE
    x1, y1, x2, y2 = detection[0] * sx, detection[1] * sy, detection[2] * sx, detection[3] * sy
    side = max(x2 - x1, y2 - y1) * scale
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    ex0, ey0 = detection[4] * w_img, detection[5] * h_img
    ex1, ey1 = detection[6] * w_img, detection[7] * h_img
    angle = -math.atan2(ey0 - ey1, ex1 - ex0)
    rotation = angle - 2 * math.pi * math.floor((angle + math.pi) / (2 * math.pi))
    return np.array([cx, cy, side, side, rotation], dtype=np.float64)


def roi_corners(roi: np.ndarray) -> np.ndarray:
    """(4, 2) float32 corners (tl, tr, br, bl) of the rotated ROI in image pixels."""
    cx, cy, w, h, rot = (float(v) for v in roi[:5])
    local = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]])
    c, s = math.cos(rot), math.sin(rot)
    rotated = np.stack([local[:, 0] * c - local[:, 1] * s, local[:, 0] * s + local[:, 1] * c], axis=1)
    return (rotated + (cx, cy)).astype(np.float32)


def project_mesh(points: np.ndarray, roi: np.ndarray, input_size: int = 256) -> np.ndarray:
    """Map (478, 3) mesh points in ROI-input pixels back to image pixels (z scaled by ROI width)."""
    cx, cy, w, h, rot = (float(v) for v in roi[:5])
    p = points.astype(np.float64) / input_size
    x, y = p[:, 0] - 0.5, p[:, 1] - 0.5
    c, s = math.cos(rot), math.sin(rot)
    out = np.empty_like(p)
    out[:, 0] = (x * c - y * s) * w + cx
    out[:, 1] = (x * s + y * c) * h + cy
    out[:, 2] = p[:, 2] * w
    return out


class FaceMeshModel:
    """Ditto ``face_mesh``: input ``input`` (1,256,256,3) RGB / 255 of the rotated ROI;
    output ``Identity`` (1434 values = 478 × xyz in ROI-input pixels)."""

    input_size = 256

    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    def __call__(self, img_rgb: np.ndarray, roi: np.ndarray) -> np.ndarray:
        """(478, 3) float64 points in image pixels (z in pixels of ROI width)."""
        n = self.input_size
        dst = np.array([[0, 0], [n, 0], [n, n], [0, n]], dtype=np.float32)
        M = cv2.getPerspectiveTransform(roi_corners(roi), dst)
        patch = cv2.warpPerspective(img_rgb, M, (n, n), flags=cv2.INTER_LINEAR)
        blob = (patch.astype(np.float32) / 255.0)[None]
        out = run_numpy(self._runner, {"input": blob})
        points = out["Identity"].reshape(NUM_MESH_POINTS, 3)
        return project_mesh(points, roi, n)


class BlazeFaceMesh:
    """blaze_face + face_mesh → (1, 478, 3) normalised landmarks (Ditto's non-"ori" Landmark478)."""

    def __init__(self, blaze_face_runner: Runner, face_mesh_runner: Runner) -> None:
        self.detector = BlazeFaceDetector(blaze_face_runner)
        self.mesh = FaceMeshModel(face_mesh_runner)

    def __call__(self, img_rgb: np.ndarray) -> np.ndarray:
        """Raises SourceError when BlazeFace finds no face in the crop."""
        faces = self.detector(img_rgb)
        if faces.shape[0] == 0:
            raise SourceError("no face found in the aligned crop (face mesh)")
        h, w = img_rgb.shape[:2]
        roi = roi_from_detection(faces[0], (w, h))
        points = self.mesh(img_rgb, roi) / (w, h, w)
        return points.reshape(1, NUM_MESH_POINTS, 3).astype(np.float32)


class MediaPipeFaceLandmarker:
    """MediaPipe Tasks ``FaceLandmarker`` (one face) from a ``.task`` bundle.

    Upstream also asks for blend shapes and transformation matrices; they do not
    change the landmarks and need extra files in the bundle
    (``face_blendshapes.tflite``, ``geometry_pipeline_metadata_landmarks.binarypb``;
    the official bundle and the test stand-in both have them), so they are off by
    default here. Call :meth:`close` when done.
    """

    def __init__(
        self,
        task_path: str | Path,
        *,
        output_face_blendshapes: bool = False,
        output_facial_transformation_matrixes: bool = False,
    ) -> None:
        from mediapipe.tasks.python import BaseOptions, vision

        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(task_path)),
            output_face_blendshapes=output_face_blendshapes,
            output_facial_transformation_matrixes=output_facial_transformation_matrixes,
            num_faces=1,
        )
        self._landmarker = vision.FaceLandmarker.create_from_options(options)

    def __call__(self, img_rgb: np.ndarray) -> np.ndarray:
        """(1, 478, 3) float32 normalised landmarks. Raises SourceError if no face."""
        import mediapipe as mp

        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(img_rgb))
        result = self._landmarker.detect(image)
        if not result.face_landmarks:
            raise SourceError("no face found in the aligned crop (face landmarker)")
        pts = [[p.x, p.y, p.z] for p in result.face_landmarks[0]]
        return np.asarray(pts, dtype=np.float32)[None]

    def close(self) -> None:
        self._landmarker.close()


# --------------------------------------------------------------------------- eye info

# MediaPipe mesh indices ("L" = image-left eye in the mesh's own naming).
EYE_L_WIDTH = (33, 133)  # outer, inner corner
EYE_L_LIDS = ((145, 159), (144, 160), (153, 158))
EYE_R_WIDTH = (263, 362)
EYE_R_LIDS = ((374, 386), (373, 387), (380, 385))
IRIS_L, IRIS_R = 468, 473


def _dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(((a - b) ** 2).sum(-1))


def _unit(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Direction b → a."""
    return (a - b) / (_dist(a, b)[:, None] + 1e-8)


def _eye(lmk: np.ndarray, width_idx: tuple[int, int], lids, iris: int) -> tuple[np.ndarray, np.ndarray]:
    outer, inner = lmk[:, width_idx[0]], lmk[:, width_idx[1]]
    width = _dist(outer, inner)
    opening = sum(_dist(lmk[:, lo], lmk[:, up]) for lo, up in lids) / (width + 1e-8)
    center = (outer + inner) / 2
    ball = lmk[:, iris]
    move = (_unit(ball, center) - _unit(outer, inner)) * _dist(ball, center)[:, None]
    return opening, move


def eye_info(lmk478: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eye openness and iris displacement from (n, 478, 3) (or (n, 478, 2)) landmarks.

    eye_open (n, 2) = [L, R], each (sum of three lid distances) / (eye width + 1e-8).
    eye_ball (n, 6): per eye, (unit(iris − eye centre) − unit(outer − inner corner))
    × |iris − eye centre|, stacked as (n, coords, 2 eyes) and flattened, i.e.
    [Lx, Rx, Ly, Ry, Lz, Rz].
    """
    lmk = np.asarray(lmk478, dtype=np.float32)
    if lmk.ndim == 2:
        lmk = lmk[None]
    open_l, move_l = _eye(lmk, EYE_L_WIDTH, EYE_L_LIDS, IRIS_L)
    open_r, move_r = _eye(lmk, EYE_R_WIDTH, EYE_R_LIDS, IRIS_R)
    eye_open = np.stack([open_l, open_r], axis=-1).reshape(-1, 2)
    eye_ball = np.stack([move_l, move_r], axis=-1).reshape(-1, lmk.shape[-1] * 2)
    return eye_open.astype(np.float32), eye_ball.astype(np.float32)

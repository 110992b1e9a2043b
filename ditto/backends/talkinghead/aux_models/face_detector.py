"""SCRFD face detector (insightface ``det_10g`` / Ditto ``insightface_det``).

First stage of avatar registration: find face boxes and five keypoints in the
source frame. Pre/post-processing follows upstream ``core/aux_models/
insightface_det.py`` (docs/pipeline.md §6):

1. letterbox: resize (bilinear, aspect kept) into the top-left corner of a
   zero 512×512 canvas; ``det_scale = new_h / h``;
2. blob ``(x − 127.5) / 128`` with R and B swapped (the net sees BGR of the RGB
   frame), NCHW float32;
3. three FPN levels, strides 8/16/32, 2 anchors per cell, anchor centres at
   ``(col, row) · stride``; boxes decoded as ``centre ∓ distance · stride``
   (left, top, right, bottom), keypoints as ``centre + offset · stride``;
4. keep scores ≥ 0.5, greedy NMS at IoU 0.4 with the insightface "+1" area
   convention, divide coordinates by ``det_scale``.

Two output-name sets exist: Ditto's re-exported ONNX/TensorRT files use
``scores1..3, boxes1..3, kps1..3``; the original ``det_10g.onnx`` has nine
numeric names whose *declared order* is scores(8,16,32), boxes(8,16,32),
kps(8,16,32). The wrapper picks the Ditto names when present and otherwise
uses the runner's declared output order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from ditto.backends.talkinghead.aux_models._io import (
    Runner,
    declared_names,
    first_declared_name,
    ordered_outputs,
    run_numpy,
)
from ditto.errors import SourceError

DITTO_INPUT_NAME = "image"
DITTO_OUTPUT_NAMES = (
    "scores1", "scores2", "scores3",
    "boxes1", "boxes2", "boxes3",
    "kps1", "kps2", "kps3",
)  # fmt: skip
FEAT_STRIDES = (8, 16, 32)
NUM_ANCHORS = 2
INPUT_MEAN = 127.5
INPUT_STD = 128.0


@dataclass(frozen=True, slots=True)
class FaceDetections:
    """Faces found in one frame, sorted by descending score (NMS order)."""

    boxes: np.ndarray  # (N, 4) float32, x1 y1 x2 y2 in source-frame pixels
    scores: np.ndarray  # (N,) float32 in [0, 1]
    kps: np.ndarray  # (N, 5, 2) float32: eye, eye, nose, mouth corner, mouth corner (pixels)

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @classmethod
    def empty(cls) -> FaceDetections:
        return cls(
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros((0,), np.float32),
            kps=np.zeros((0, 5, 2), np.float32),
        )


def letterbox(img: np.ndarray, size: int = 512) -> tuple[np.ndarray, float]:
    """Resize ``img`` (H, W, 3) into the top-left of a zero ``size``×``size`` canvas.

    Returns the canvas (uint8 like the input) and ``det_scale`` = new_h / H, the
    factor that maps source pixels to canvas pixels.
    """
    h, w = img.shape[:2]
    if h / w > 1.0:
        new_h = size
        new_w = int(new_h / (h / w))
    else:
        new_w = size
        new_h = int(new_w * (h / w))
    det_scale = float(new_h) / h
    canvas = np.zeros((size, size, 3), dtype=img.dtype)
    canvas[:new_h, :new_w] = cv2.resize(img, (new_w, new_h))
    return canvas, det_scale


def make_blob(det_img: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB uint8 → (1, 3, H, W) float32, channel-swapped, ``(x − 127.5) / 128``."""
    swapped = det_img[..., ::-1].astype(np.float32)
    return ((swapped - INPUT_MEAN) / INPUT_STD).transpose(2, 0, 1)[None].copy()


def anchor_centers(height: int, width: int, stride: int, num_anchors: int = NUM_ANCHORS) -> np.ndarray:
    """(height·width·num_anchors, 2) anchor centres (x, y) in input pixels, row-major, anchors innermost."""
    ys, xs = np.mgrid[:height, :width]
    centers = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
    return np.repeat(centers, num_anchors, axis=0)


def distance_to_boxes(points: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Decode (left, top, right, bottom) distances from anchor centres into x1 y1 x2 y2."""
    return np.stack(
        [
            points[:, 0] - distance[:, 0],
            points[:, 1] - distance[:, 1],
            points[:, 0] + distance[:, 2],
            points[:, 1] + distance[:, 3],
        ],
        axis=-1,
    )


def distance_to_kps(points: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Decode (N, 2K) keypoint offsets from anchor centres into (N, K, 2) points."""
    pairs = offsets.reshape(offsets.shape[0], offsets.shape[1] // 2, 2)
    return pairs + points[:, None, :]


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.4) -> np.ndarray:
    """Greedy NMS; returns kept indices in descending score order.

    Areas use the insightface "+1 pixel" convention; a candidate is dropped when
    its IoU with a kept box is strictly greater than ``iou_threshold``.
    """
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores)[::-1]
    keep: list[int] = []
    while order.size > 0:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        inter_w = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        inter_h = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        inter = inter_w * inter_h
        iou = inter / (areas[best] + areas[rest] - inter)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def decode_scrfd(
    outputs: Sequence[np.ndarray],
    input_hw: tuple[int, int],
    score_threshold: float = 0.5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Turn the nine raw SCRFD outputs into candidate faces (before NMS).

    Args:
        outputs: scores(8,16,32), boxes(8,16,32), kps(8,16,32) in that order;
            any leading batch axis of size 1 is tolerated.
        input_hw: the network input size (rows, cols), 512×512 here.
        score_threshold: keep anchors with score ≥ this.

    Returns:
        scores (M,), boxes (M, 4), kps (M, 5, 2) in network-input pixels.
    """
    if len(outputs) != 3 * len(FEAT_STRIDES):
        raise ValueError(f"SCRFD expects 9 outputs, got {len(outputs)}")
    n_levels = len(FEAT_STRIDES)
    all_scores, all_boxes, all_kps = [], [], []
    for level, stride in enumerate(FEAT_STRIDES):
        scores = np.asarray(outputs[level], np.float32).reshape(-1)
        box_dist = np.asarray(outputs[level + n_levels], np.float32).reshape(-1, 4) * stride
        kps_off = np.asarray(outputs[level + 2 * n_levels], np.float32).reshape(-1, 10) * stride
        centers = anchor_centers(input_hw[0] // stride, input_hw[1] // stride, stride)
        if centers.shape[0] != scores.shape[0]:
            raise ValueError(f"stride {stride}: {scores.shape[0]} scores for {centers.shape[0]} anchors")
        hit = scores >= score_threshold
        all_scores.append(scores[hit])
        all_boxes.append(distance_to_boxes(centers[hit], box_dist[hit]))
        all_kps.append(distance_to_kps(centers[hit], kps_off[hit]))
    return (
        np.concatenate(all_scores).astype(np.float32),
        np.concatenate(all_boxes).astype(np.float32),
        np.concatenate(all_kps).astype(np.float32),
    )


class FaceDetector:
    """SCRFD behind any runner.

    Args:
        runner: ``runner(**{input_name: (1,3,512,512) float32}) -> {output name: tensor}``.
            With Ditto names (``scores1`` …) the names decide the order; otherwise
            the runner's declared ``output_names`` order (the original det_10g
            order) is used.
        input_size: square network input side (512 in Ditto).
        score_threshold: upstream ``det_thresh`` 0.5.
        nms_threshold: upstream ``nms_thresh`` 0.4.
    """

    def __init__(
        self,
        runner: Runner,
        *,
        input_size: int = 512,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.4,
    ) -> None:
        self._runner = runner
        self.input_size = input_size
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self._input_name = first_declared_name(runner, "input_names", DITTO_INPUT_NAME)
        self._declared_outputs = declared_names(runner, "output_names")

    def _raw_outputs(self, blob: np.ndarray) -> list[np.ndarray]:
        outputs = run_numpy(self._runner, {self._input_name: blob})
        if all(name in outputs for name in DITTO_OUTPUT_NAMES):
            return [outputs[name] for name in DITTO_OUTPUT_NAMES]
        return ordered_outputs(outputs, self._declared_outputs)

    def detect(self, img_rgb: np.ndarray) -> FaceDetections:
        """Detect faces in an RGB uint8 frame (H, W, 3); coordinates in frame pixels."""
        det_img, det_scale = letterbox(img_rgb, self.input_size)
        blob = make_blob(det_img)
        scores, boxes, kps = decode_scrfd(
            self._raw_outputs(blob), (self.input_size, self.input_size), self.score_threshold
        )
        if scores.size == 0:
            return FaceDetections.empty()
        keep = nms(boxes, scores, self.nms_threshold)
        return FaceDetections(
            boxes=(boxes[keep] / det_scale).astype(np.float32),
            scores=scores[keep],
            kps=(kps[keep] / det_scale).astype(np.float32),
        )

    __call__ = detect


def largest_face(detections: FaceDetections) -> tuple[np.ndarray, np.ndarray]:
    """The box (4,) and keypoints (5, 2) of the largest-area face (what Source2Info uses).

    Raises:
        SourceError: ``no_face`` when nothing was detected.
    """
    if len(detections) == 0:
        raise SourceError("no face found in the source image")
    boxes = detections.boxes
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    best = int(np.argmax(areas))
    return boxes[best].copy(), detections.kps[best].copy()

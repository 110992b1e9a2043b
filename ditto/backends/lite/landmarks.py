"""Face landmarks of a source portrait (mediapipe face mesh) and the index groups the lite rig uses.

Indices refer to mediapipe's 468-point canonical face mesh plus the 10 iris points that
``refine_landmarks=True`` appends (468-477). "Right eye" is the subject's right eye, which is
on the image's left. The lip and eye chains are ordered corner to corner, as in
``mp.solutions.face_mesh.FACEMESH_LIPS`` / ``FACEMESH_RIGHT_EYE`` / ``FACEMESH_LEFT_EYE``.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from ditto.errors import SourceError

logger = logging.getLogger(__name__)

NUM_LANDMARKS = 478

# Lips, each chain from the image-left corner to the image-right corner.
LIPS_OUTER_UPPER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
LIPS_OUTER_LOWER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
LIPS_INNER_UPPER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LIPS_INNER_LOWER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
MOUTH_CORNERS = (61, 291)
INNER_UPPER_MID, INNER_LOWER_MID = 13, 14

# Eyes: (outer corner, inner corner), upper lid and lower lid between them (outer -> inner), iris.
RIGHT_EYE_CORNERS = (33, 133)
RIGHT_EYE_UPPER = (246, 161, 160, 159, 158, 157, 173)
RIGHT_EYE_LOWER = (7, 163, 144, 145, 153, 154, 155)
RIGHT_IRIS = (468, 469, 470, 471, 472)
LEFT_EYE_CORNERS = (263, 362)
LEFT_EYE_UPPER = (466, 388, 387, 386, 385, 384, 398)
LEFT_EYE_LOWER = (249, 390, 373, 374, 380, 381, 382)
LEFT_IRIS = (473, 474, 475, 476, 477)
IRIS_FIRST = 468  # refine_landmarks appends the iris points 468-477

FOREHEAD_TOP, CHIN = 10, 152
FACE_SIDES = (234, 454)  # widest points of the face oval, near the ears


@dataclasses.dataclass(frozen=True, slots=True)
class FaceLandmarks:
    points: np.ndarray  # (478, 2) float32, pixel (x, y) in the source image; may lie slightly outside it

    @property
    def face_height_px(self) -> float:
        """Forehead-top to chin distance, the rig's unit of length."""
        return float(np.linalg.norm(self.points[CHIN] - self.points[FOREHEAD_TOP]))


def detect_landmarks(image_rgb: np.ndarray) -> FaceLandmarks:
    """Run mediapipe's face mesh once on an RGB uint8 image.

    A FaceMesh is created per call (about 30 ms), so concurrent registrations from
    several threads share nothing.

    Raises:
        SourceError: no face was found (code ``no_face``).
    """
    import mediapipe as mp

    height, width = image_rgb.shape[:2]
    with mp.solutions.face_mesh.FaceMesh(
        static_image_mode=True, refine_landmarks=True, max_num_faces=1, min_detection_confidence=0.5
    ) as face_mesh:
        result = face_mesh.process(np.ascontiguousarray(image_rgb))
    if not result.multi_face_landmarks:
        raise SourceError("no face was found in the source image: use a frontal portrait with a clearly visible face")
    marks = result.multi_face_landmarks[0].landmark
    if len(marks) != NUM_LANDMARKS:
        raise SourceError(f"the face mesh returned {len(marks)} landmarks instead of {NUM_LANDMARKS}")
    points = np.array([(m.x * width, m.y * height) for m in marks], dtype=np.float32)
    logger.debug("face landmarks: bbox %s..%s", points.min(0).round(1), points.max(0).round(1))
    return FaceLandmarks(points)

"""JPEG encoding of RGB frames (OpenCV's libjpeg-turbo)."""

from __future__ import annotations

import numpy as np


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    """Encode an (H, W, 3) uint8 RGB frame as baseline JPEG at ``quality`` (1-100)."""
    import cv2

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()

"""The replica health probe: the backend still renders a frame. Free of Ray, so tests run it alone."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ditto import SAMPLES_PER_FRAME
from ditto.backends.base import AnimatorBackend, Avatar
from ditto.errors import BackendError, ConfigError

PROBE_IMAGE = Path(__file__).resolve().parents[2] / "example" / "image.png"
PROBE_SIZE = 256  # px: the health probe renders small, whatever the sessions' size


def load_probe_avatar(backend: AnimatorBackend, image_path: Path = PROBE_IMAGE) -> Avatar:
    """Register the portrait the health probe animates (the repository's example). Raises ConfigError
    when it is missing, and what ``register_source`` raises."""
    bgr = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ConfigError(f"health probe portrait {image_path} is missing or unreadable")
    rgb = np.ascontiguousarray(cv2.resize(bgr[:, :, ::-1], (PROBE_SIZE, PROBE_SIZE), interpolation=cv2.INTER_AREA))
    return backend.register_source(rgb)


def probe_backend(backend: AnimatorBackend, avatar: Avatar) -> None:
    """Render one frame of silence for ``avatar``; raises BackendError (or what the backend raised)
    when no frame comes back. Runs in a worker thread: it waits on the backend like a session."""
    stream = backend.open_stream(avatar, seed=0)
    try:
        frames = [*stream.feed(np.zeros(SAMPLES_PER_FRAME, np.float32)), *stream.finish()]
    finally:
        stream.close()
    if not frames:
        raise BackendError("the health probe rendered no frame")

"""The frame loop both modes share (file mode and live): the backend's frames with their render
time observed and cancellation checked, and the audio echo of one frame.

Runs in the session's render-pool thread.
"""

from __future__ import annotations

import threading
import time
from typing import Iterable, Iterator

import numpy as np

from ditto.backends.base import VideoFrame
from ditto.server.metrics import ServerMetrics
from ditto.server.writer import StreamAborted


def timed_frames(
    frames: Iterable[VideoFrame], metrics: ServerMetrics, cancel: threading.Event, total: int | None = None
) -> Iterator[VideoFrame]:
    """``frames`` up to index ``total`` (exclusive; None: all), each one's render time observed.

    Raises:
        StreamAborted: ``cancel`` was set; checked before each frame is rendered.
    """
    frames = iter(frames)
    while True:
        if cancel.is_set():
            raise StreamAborted()
        started = time.perf_counter()
        frame = next(frames, None)
        if frame is None or (total is not None and frame.index >= total):
            return
        metrics.frame_render.observe(time.perf_counter() - started)
        yield frame


def audio_window(samples: np.ndarray, start: int, count: int) -> np.ndarray:
    """``count`` float32 samples of ``samples`` from ``start``, zero-padded past its end (the echo of one frame)."""
    out = np.zeros(count, np.float32)
    part = samples[max(start, 0) : start + count]
    out[: len(part)] = part
    return out

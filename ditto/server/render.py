"""The render thread's side of a file-mode session, and the frame loop both modes share.

Everything here runs in the session's render-pool thread and talks to the client only
through the :class:`~ditto.server.writer.WebSocketFrameWriter`.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from typing import Iterable, Iterator

import numpy as np

from ditto.backends.base import AnimationStream, VideoFrame
from ditto.media.audio import Audio
from ditto.media.pcm import encode_pcm16
from ditto.server.metrics import ServerMetrics
from ditto.server.writer import StreamAborted, WebSocketFrameWriter


def timed_frames(frames: Iterable[VideoFrame], metrics: ServerMetrics, cancel: threading.Event,
                 total: int | None = None) -> Iterator[VideoFrame]:
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
    part = samples[max(start, 0): start + count]
    out[: len(part)] = part
    return out


def render_file(stream: AnimationStream, audio: Audio, writer: WebSocketFrameWriter, *, metrics: ServerMetrics,
                cancel: threading.Event, echo_audio: bool) -> int:
    """Render every frame of ``audio`` into the writer; returns the number of frames produced
    (fewer when the session was cancelled)."""
    total = audio.total_frames
    produced = 0
    with contextlib.suppress(StreamAborted):
        frames = itertools.chain(stream.feed(audio.samples), stream.finish())
        for frame in timed_frames(frames, metrics, cancel, total):
            if echo_audio:
                writer.write_audio(frame, encode_pcm16(audio_window(audio.samples, frame.sample_start,
                                                                    frame.sample_count)))
            writer.write_frame(frame, last=frame.index == total - 1)
            produced += 1
    return produced

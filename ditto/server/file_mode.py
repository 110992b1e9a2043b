"""The render thread's side of a file-mode session.

Everything here runs in the session's render-pool thread and talks to the client only
through the :class:`~ditto.server.writer.WebSocketFrameWriter`.
"""

from __future__ import annotations

import contextlib
import itertools
import threading

from ditto.backends.base import AnimationStream
from ditto.media.audio import Audio
from ditto.media.pcm import encode_pcm16
from ditto.server.frame_loop import audio_window, timed_frames
from ditto.server.metrics import ServerMetrics
from ditto.server.writer import StreamAborted, WebSocketFrameWriter


def render_file(
    stream: AnimationStream,
    audio: Audio,
    writer: WebSocketFrameWriter,
    *,
    metrics: ServerMetrics,
    cancel: threading.Event,
    echo_audio: bool,
) -> int:
    """Render every frame of ``audio`` into the writer; returns the number of frames produced
    (fewer when the session was cancelled)."""
    total = audio.total_frames
    produced = 0
    with contextlib.suppress(StreamAborted):
        frames = itertools.chain(stream.feed(audio.samples), stream.finish())
        for frame in timed_frames(frames, metrics, cancel, total):
            if echo_audio:
                writer.write_audio(
                    frame, encode_pcm16(audio_window(audio.samples, frame.sample_start, frame.sample_count))
                )
            writer.write_frame(frame, last=frame.index == total - 1)
            produced += 1
    return produced

"""The render thread's side of a live session (``live: true``).

The session's receiver task decodes audio chunks into an :class:`Inbox`; :func:`render_live`
takes them out in the render thread and drives a :class:`LivePipeline` (resampler -> backend
stream -> writer), which emits each frame as soon as its audio (plus the backend's look-ahead)
is in. When audio is overdue by ``idle_after_s`` and no ``end_of_audio`` came, silence is fed
at 25 fps (frames flagged IDLE) so the face idles instead of freezing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import queue
import threading
import time
from typing import Iterable

import numpy as np

from ditto import FPS, SAMPLE_RATE_HZ, SAMPLES_PER_FRAME, frames_for_samples
from ditto.backends.base import AnimationStream, VideoFrame
from ditto.errors import ErrorCode, MediaError
from ditto.media.pcm import StreamingResampler, encode_pcm16
from ditto.server.metrics import ServerMetrics
from ditto.server.render import audio_window, timed_frames
from ditto.server.writer import StreamAborted, WebSocketFrameWriter


@dataclasses.dataclass(frozen=True, slots=True)
class Chunk:
    samples: np.ndarray  # (n,) float32 mono at the announced sample rate
    received_at: float  # monotonic seconds


@dataclasses.dataclass(frozen=True, slots=True)
class LiveResult:
    frames: int  # rendered (sent + skipped)
    skipped: int
    idle: int


END_OF_AUDIO = object()  # inbox marker
_FRAME_S = 1.0 / FPS
SKIP_GRACE_S = 0.2
"""A frame may wait this long past its due time (first audio arrival + the end of its
audio) for the writer before it is skipped; it bounds the latency a backed-up socket adds."""


class Inbox:
    """Decoded live audio between the receiver (event loop) and the render thread.

    At most ``capacity`` chunks wait; a full inbox makes the receiver stop reading the
    socket, so a client sending faster than the server renders is slowed by TCP, not
    buffered without bound.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int) -> None:
        self._loop = loop
        self._items: queue.SimpleQueue = queue.SimpleQueue()
        self._slots = asyncio.Semaphore(capacity)
        self.last_arrival: float | None = None  # monotonic time of the newest chunk

    async def put(self, item: object) -> None:
        await self._slots.acquire()
        if isinstance(item, Chunk):
            self.last_arrival = item.received_at
        self._items.put(item)

    def get(self, timeout_s: float) -> object | None:
        """The next item, or None after ``timeout_s`` (render thread)."""
        try:
            item = self._items.get(timeout=timeout_s)
        except queue.Empty:
            return None
        self._loop.call_soon_threadsafe(self._slots.release)
        return item

    def empty(self) -> bool:
        return self._items.empty()


class LivePipeline:
    """The render thread's side of a live session: 16 kHz audio -> backend stream -> writer.

    Tracks the audio fed (for the echo and the idle clock) and which sample ranges were
    idle silence, so frames are flagged IDLE whatever the backend.
    """

    def __init__(self, stream: AnimationStream, writer: WebSocketFrameWriter, metrics: ServerMetrics,
                 cancel: threading.Event, echo_audio: bool) -> None:
        self._stream = stream
        self._writer = writer
        self._metrics = metrics
        self._cancel = cancel
        self._echo = np.zeros(0, np.float32) if echo_audio else None
        self._echo_base = 0  # absolute 16 kHz sample of self._echo[0]
        self._idle_spans: list[tuple[int, int]] = []  # [start, end) 16 kHz samples fed as idle silence
        self.samples_fed = 0
        self.frames = 0
        self.idle_frames = 0
        self.t0: float | None = None  # monotonic time of the first audio: the media clock's zero

    @property
    def fed_s(self) -> float:
        return self.samples_fed / SAMPLE_RATE_HZ

    def feed(self, samples: np.ndarray) -> None:
        if not len(samples):
            return
        self._record(samples)
        self._emit(self._stream.feed(samples))

    def idle_until(self, media_s: float, max_frames: int = FPS) -> None:
        """Feed silence until ``media_s`` seconds of audio were fed (at most ``max_frames`` frames)."""
        partial = self.samples_fed % SAMPLES_PER_FRAME
        if partial:  # finish the current frame with silence first (it still holds speech)
            self.feed(np.zeros(SAMPLES_PER_FRAME - partial, np.float32))
        n = min(max_frames, int(np.ceil((media_s - self.fed_s) * FPS)))
        if n <= 0:
            return
        start = self.samples_fed
        self._idle_spans.append((start, start + n * SAMPLES_PER_FRAME))
        self._record(np.zeros(n * SAMPLES_PER_FRAME, np.float32))
        idle = getattr(self._stream, "idle", None)  # the lite backend's helper; else plain silence
        frames = idle(n) if callable(idle) else self._stream.feed(np.zeros(n * SAMPLES_PER_FRAME, np.float32))
        self._emit(frames)

    def finish(self) -> None:
        self._emit(self._stream.finish(), total=frames_for_samples(self.samples_fed))

    def _record(self, samples: np.ndarray) -> None:
        self.samples_fed += len(samples)
        if self._echo is not None:
            self._echo = np.concatenate([self._echo, samples.astype(np.float32, copy=False)])

    def _emit(self, frames: Iterable[VideoFrame], total: int | None = None) -> None:
        for frame in timed_frames(frames, self._metrics, self._cancel, total):
            if not frame.idle and self._in_idle_span(frame):
                frame = dataclasses.replace(frame, idle=True)  # silence we fed through feed()
            if self._echo is not None:
                self._writer.write_audio(frame, encode_pcm16(self._echo_slice(frame)))
            due = (self.t0 + (frame.sample_start + frame.sample_count) / SAMPLE_RATE_HZ + SKIP_GRACE_S
                   if self.t0 is not None else None)
            self._writer.write_frame(frame, last=total is not None and frame.index == total - 1, deadline=due)
            self.frames += 1
            self.idle_frames += frame.idle

    def _in_idle_span(self, frame: VideoFrame) -> bool:
        start, end = frame.sample_start, frame.sample_start + frame.sample_count
        while self._idle_spans and self._idle_spans[0][1] <= start:
            self._idle_spans.pop(0)
        return any(a <= start and end <= b for a, b in self._idle_spans)

    def _echo_slice(self, frame: VideoFrame) -> np.ndarray:
        lo = frame.sample_start - self._echo_base
        out = audio_window(self._echo, lo, frame.sample_count)
        drop = max(0, min(lo + frame.sample_count, len(self._echo)))  # frames come in order
        self._echo = self._echo[drop:]
        self._echo_base += drop
        return out


def render_live(stream: AnimationStream, inbox: Inbox, writer: WebSocketFrameWriter, *, sample_rate_hz: int,
                idle_after_s: float, max_audio_seconds: float, metrics: ServerMetrics, cancel: threading.Event,
                echo_audio: bool) -> LiveResult:
    """Chunks from ``inbox`` (at ``sample_rate_hz``) -> 16 kHz -> backend -> writer, with idling.

    The media clock starts when the first chunk arrives (t0): by wall time ``t`` a
    real-time client has sent ``t - t0`` seconds of audio. Once no chunk is waiting,
    none arrived for ``idle_after_s`` and the audio fed is more than that behind
    the clock, silence is fed up to the clock at 25 fps (IDLE frames); audio that comes
    later continues after it. A client sending ahead of real time never idles.

    Raises:
        MediaError: more than ``max_audio_seconds`` of audio and idle time.
    """
    resampler = StreamingResampler(sample_rate_hz)
    pipe = LivePipeline(stream, writer, metrics, cancel, echo_audio)
    with contextlib.suppress(StreamAborted):
        while not cancel.is_set():
            item = inbox.get(_FRAME_S / 2 if pipe.t0 is not None else 0.1)
            if item is END_OF_AUDIO:
                pipe.feed(resampler.flush())
                pipe.finish()
                break
            if isinstance(item, Chunk):
                if pipe.t0 is None:
                    pipe.t0 = writer.stream_started_at = item.received_at
                pipe.feed(resampler.push(item.samples))
            if pipe.t0 is not None and inbox.empty():
                now = time.monotonic()
                clock_s = now - pipe.t0 - idle_after_s
                if now - (inbox.last_arrival or pipe.t0) > idle_after_s and clock_s > pipe.fed_s:
                    pipe.idle_until(clock_s)
            if pipe.fed_s > max_audio_seconds:
                raise MediaError(f"live session exceeds the server's limit of {max_audio_seconds:.0f} s "
                                 "of audio and idle time", code=ErrorCode.AUDIO_TOO_LONG)
    return LiveResult(pipe.frames, writer.frames_skipped, pipe.idle_frames)

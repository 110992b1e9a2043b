"""The interface every animator backend implements, and the payloads it returns.

A backend is loaded once per server. Per session the server calls::

    avatar = backend.register_source(image_rgb)        # may raise SourceError(no_face)
    stream = backend.open_stream(avatar, seed=seed)
    for chunk in audio_chunks:                          # float32, 16 kHz mono
        for frame in stream.feed(chunk): ...            # frames whose audio (plus look-ahead) has arrived
    for frame in stream.finish(): ...                   # the rest, up to ceil(samples / 640) frames
    stream.close()

A live conversation also calls, between utterances, ``stream.idle(n)`` (no speech: the face
idles), ``stream.flush()`` (an utterance ended: render its tail now) and ``stream.interrupt()``
(barge-in: drop what is not rendered yet, return to idle). Frame indices stay one timeline:
frame ``i`` always covers 16 kHz samples ``[640 i, 640 (i + 1))`` of the session.

Calls on one stream come from one thread; different streams may run in
different threads at once, so a backend keeps per-session state in the stream.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Protocol, runtime_checkable

import numpy as np

from ditto import FPS, SAMPLE_RATE_HZ, SAMPLES_PER_FRAME


@dataclasses.dataclass(frozen=True, slots=True)
class VideoFrame:
    index: int  # 0-based frame number in the session
    image: np.ndarray | None  # (H, W, 3) uint8 RGB, at the avatar's size; None when ``jpeg`` is set
    idle: bool = False  # rendered without speech (live idling)
    jpeg: bytes | None = None  # already encoded by the backend (on the GPU) at the quality it was asked for
    shed: bool = False  # not rendered: a live session too far behind (image and jpeg are None)

    @property
    def sample_start(self) -> int:
        """First 16 kHz audio sample this frame covers."""
        return self.index * SAMPLES_PER_FRAME

    @property
    def sample_count(self) -> int:
        return SAMPLES_PER_FRAME

    @property
    def pts_ms(self) -> int:
        return self.sample_start * 1000 // SAMPLE_RATE_HZ


def frame_due_at(clock_origin: float, index: int) -> float:
    """When live frame ``index`` is due: the end of its audio on the media clock whose time 0 was
    due at ``clock_origin`` (monotonic s)."""
    return clock_origin + (index + 1) / FPS


def frame_ready_at(arrived: float, clock_origin: float | None, index: int) -> float:
    """When live frame ``index`` could first be shown: once the audio that made it computable arrived
    (``arrived``, monotonic s) and its time came on the media clock (``clock_origin``; None: no clock).
    The lag bound counts from here (:meth:`AnimationStream.feed`)."""
    return arrived if clock_origin is None else max(arrived, frame_due_at(clock_origin, index))


@dataclasses.dataclass(frozen=True, slots=True)
class StreamOptions:
    """How the server will use a stream; a backend may ignore any of it."""

    live: bool = False  # audio arrives in real time: its frames are due as it does
    jpeg_quality: int | None = None  # the backend may return frames already encoded (``VideoFrame.jpeg``)
    max_lag_s: float | None = None  # live: a frame this late (see AnimationStream.feed) is shed, not rendered
    total_frames: int | None = None  # file mode: frames the whole audio drives, known before the first feed


@dataclasses.dataclass(eq=False)
class StageStats:
    """Counters of one batched stage of a backend's device engine (written by the engine only)."""

    batches: int = 0
    items: int = 0
    busy_s: float = 0.0  # wall time spent running its batches
    launch_s: float = 0.0  # host time spent launching them (on CUDA the device runs them meanwhile)
    last_batch: int = 0
    failures: int = 0  # batches that raised (their items were retried one by one)
    queued: int = 0  # items waiting now (filled in when read)

    @property
    def mean_batch(self) -> float:
        return self.items / self.batches if self.batches else 0.0


@runtime_checkable
class Avatar(Protocol):
    """A registered source portrait; backends attach whatever they precomputed."""

    # Read-only: the backends' avatars are frozen dataclasses shared by every session.
    @property
    def width(self) -> int: ...

    @property
    def height(self) -> int: ...


class AnimationStream(Protocol):
    def feed(
        self, audio: np.ndarray, *, received_at: float | None = None, clock_origin: float | None = None
    ) -> Iterator[VideoFrame]:
        """Append float32 16 kHz mono samples; yield every frame that can now be rendered.

        Live, a frame still waiting for its render ``StreamOptions.max_lag_s`` after it could first
        be shown is shed: after the later of ``received_at`` (when the audio that made it computable
        arrived, ``time.monotonic()``; None: now) and its due time on the media clock,
        :func:`frame_due_at` (``clock_origin``; None: on arrival). Audio that waited in queues is
        shed sooner; audio sent ahead of real time is not shed before its frames are due. The last
        frame of an utterance (that :meth:`flush` or :meth:`finish` ends with) is never shed."""

    def idle(
        self, frames: int, *, requested_at: float | None = None, clock_origin: float | None = None
    ) -> Iterator[VideoFrame]:
        """Append ``frames`` frames without speech (blinks and sway go on), flagged ``idle``; the
        stream is at a frame boundary (after :meth:`flush` or :meth:`interrupt`, or fed whole frames).
        Live, they are shed as :meth:`feed`'s, late from the later of ``requested_at`` (monotonic s;
        None: now) and their due time on ``clock_origin``'s media clock (the conversation asks for
        idle frames once they are due, and moves the clock at an interrupt)."""

    def flush(self) -> Iterator[VideoFrame]:
        """The utterance fed so far is complete: yield all its frames now (ceil(samples fed / 640) in
        all), the partial last frame and the model's look-ahead padded with silence. The stream stays
        open; audio fed next starts at the next frame boundary and continues the motion smoothly."""

    def interrupt(self) -> int:
        """Barge-in: drop the audio whose frames were not yielded yet and every frame in flight. The
        frames that follow (idle or speech) start from the face as last yielded and return it to
        its neutral pose over a few frames (no pop).

        Returns:
            The index of the next frame the stream yields (frames yielded so far); audio fed next
            starts at that frame.
        """

    def finish(self) -> Iterator[VideoFrame]:
        """No more audio: yield the remaining frames (total = ceil(samples fed / 640))."""

    def close(self) -> None:
        """Release per-session resources. Safe to call twice and after an error."""


class AnimatorBackend(Protocol):
    name: str
    live_capacity: int | None  # live sessions it can keep real time (measured at start-up); None: unknown

    def register_source(self, image_rgb: np.ndarray) -> Avatar:
        """Analyse a portrait (RGB uint8, already size-capped with even sides).

        Raises:
            SourceError: no face was found (code ``no_face``).
        """

    def open_stream(self, avatar: Avatar, *, seed: int, options: StreamOptions = StreamOptions()) -> AnimationStream:
        """Start one session's animation of ``avatar``; ``seed`` makes it reproducible."""

    def stage_stats(self) -> dict[str, StageStats]:
        """Per batched stage (``hubert``, ``lmdm``, ``render``): batches, items, time; empty when the
        backend batches nothing."""

    def close(self) -> None:
        """Release models. Called once at server shutdown."""

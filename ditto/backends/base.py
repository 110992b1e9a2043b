"""The interface every animator backend implements, and the payloads it returns.

A backend is loaded once per server. Per session the server calls::

    avatar = backend.register_source(image_rgb)        # may raise SourceError(no_face)
    stream = backend.open_stream(avatar, seed=seed)
    for chunk in audio_chunks:                          # float32, 16 kHz mono
        for frame in stream.feed(chunk): ...            # frames whose audio (plus look-ahead) has arrived
    for frame in stream.finish(): ...                   # the rest, up to ceil(samples / 640) frames
    stream.close()

Calls on one stream come from one thread; different streams may run in
different threads at once, so a backend keeps per-session state in the stream.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Protocol, runtime_checkable

import numpy as np

from ditto import SAMPLE_RATE_HZ, SAMPLES_PER_FRAME


@dataclasses.dataclass(frozen=True, slots=True)
class VideoFrame:
    index: int  # 0-based frame number in the session
    image: np.ndarray  # (H, W, 3) uint8 RGB, at the avatar's size
    idle: bool = False  # rendered without speech (live idling)

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


@runtime_checkable
class Avatar(Protocol):
    """A registered source portrait; backends attach whatever they precomputed."""

    width: int
    height: int


class AnimationStream(Protocol):
    def feed(self, audio: np.ndarray) -> Iterator[VideoFrame]:
        """Append float32 16 kHz mono samples; yield every frame that can now be rendered."""

    def finish(self) -> Iterator[VideoFrame]:
        """No more audio: yield the remaining frames (total = ceil(samples fed / 640))."""

    def close(self) -> None:
        """Release per-session resources. Safe to call twice and after an error."""


class AnimatorBackend(Protocol):
    name: str

    def register_source(self, image_rgb: np.ndarray) -> Avatar:
        """Analyse a portrait (RGB uint8, already size-capped with even sides).

        Raises:
            SourceError: no face was found (code ``no_face``).
        """

    def open_stream(self, avatar: Avatar, *, seed: int) -> AnimationStream:
        """Start one session's animation of ``avatar``; ``seed`` makes it reproducible."""

    def close(self) -> None:
        """Release models. Called once at server shutdown."""

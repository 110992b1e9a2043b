"""The lite backend: registration (landmarks, geometry, rig) and per-session streams.

A stream is a small pipeline, each stage incremental and fed in frame order::

    audio -> SpeechAnalyzer -> SpeechFeatures -> MouthDriver -> MouthParams
          -> MotionGenerator -> FrameMotion -> target_vertices -> FrameCompositor -> VideoFrame

Audio is consumed eagerly when :meth:`LiteStream.feed` is called; frames are rendered
lazily as the returned iterator is advanced. Frames not pulled from one call's iterator
come out of the next call's, in order, so output never depends on how audio is chunked.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ditto import SAMPLES_PER_FRAME
from ditto.backends.base import Avatar, StageStats, StreamOptions, VideoFrame, frame_ready_at
from ditto.backends.lite.compositor import FrameCompositor, MouthStyle, mouth_style
from ditto.backends.lite.geometry import FaceGeometry, build_geometry
from ditto.backends.lite.landmarks import FaceLandmarks, detect_landmarks
from ditto.backends.lite.motion import FaceRig, FrameMotion, MotionGenerator, MotionTuning, build_rig, target_vertices
from ditto.backends.lite.speech import LOOKAHEAD_FRAMES, MouthDriver, MouthParams, MouthTuning, SpeechAnalyzer
from ditto.backends.lite.warp import InverseWarp
from ditto.errors import ErrorCode, MediaError

WARMUP_FACE = Path(__file__).parent / "assets" / "warmup_face.jpg"  # the example astronaut, 160 px
RENDER_SLOTS = 2
"""Frames rendered at once across all streams. A frame is mostly numpy and OpenCV calls under the GIL;
with one render thread per session, ten threads at once hand the GIL back and forth and OpenCV's pool
spins (server on 2 cores, 10 live sessions: 153.5 frames/s unbounded against 217.6 with 2 slots,
bench/results/2026-12-02-lite-render-slots.json). Two keep one thread in native code while another
holds the GIL; measured on 2 cores only."""

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class LiteAvatar:
    """A registered portrait and everything precomputed for it; read-only, shared by streams."""

    width: int
    height: int
    image: np.ndarray  # (height, width, 3) uint8 RGB, read-only copy of the source
    landmarks: FaceLandmarks
    geometry: FaceGeometry
    rig: FaceRig
    warp: InverseWarp
    style: MouthStyle


class LiteStream:
    """One session's animation. Calls come from one thread; see :mod:`ditto.backends.base`.

    :meth:`idle` and :meth:`flush` hand out their frames at once (silence needs no look-ahead);
    :meth:`interrupt` eases the mouth shut from where the last frame left it. Live, with a lag
    bound, a frame whose turn to render comes too late is handed out shed (its motion still steps,
    so blinks and sway keep their timeline); the frames an utterance's end releases never are.
    """

    def __init__(
        self,
        avatar: LiteAvatar,
        seed: int,
        mouth_tuning: MouthTuning | None,
        motion_tuning: MotionTuning | None,
        lookahead_frames: int,
        render_slots: threading.Semaphore,
        max_lag_s: float | None,
        clock: Callable[[], float],
    ) -> None:
        self.avatar = avatar
        self._render_slots = render_slots
        self._max_lag_s = max_lag_s
        self._clock = clock
        self.seed = seed
        self._analyzer = SpeechAnalyzer()
        self._driver = MouthDriver(mouth_tuning, lookahead_frames)
        self._motion = MotionGenerator(avatar.rig, seed, motion_tuning)
        self._compositor = FrameCompositor(avatar.image, avatar.geometry, avatar.warp, avatar.style)
        # (params, idle, monotonic s from which it counts as late; None: never shed)
        self._ready: collections.deque[tuple[MouthParams, bool, float | None]] = collections.deque()
        self._clock_origin: float | None = None  # the live media clock, as last fed
        self.samples_fed = 0
        self.frames_rendered = 0
        self.last_motion: FrameMotion | None = None
        self._last_params: MouthParams | None = None
        self._finished = False
        self._closed = False

    def feed(
        self, audio: np.ndarray, *, received_at: float | None = None, clock_origin: float | None = None
    ) -> Iterator[VideoFrame]:
        """Append float32 16 kHz mono samples; iterate the result to get every frame now renderable.

        Frame i is renderable once the audio of frames i..i+LOOKAHEAD_FRAMES has arrived. Live, it
        is late from the later of ``received_at`` and its due time on ``clock_origin``'s media clock
        (see :meth:`ditto.backends.base.AnimationStream.feed`).

        Raises:
            MediaError: the samples are not a 1-D finite float array.
            RuntimeError: the stream was finished or closed.
        """
        self._check_open()
        samples = np.asarray(audio)
        if samples.ndim != 1 or not np.issubdtype(samples.dtype, np.floating):
            raise MediaError("lite backend expects 1-D float32 16 kHz mono samples", code=ErrorCode.AUDIO_INVALID)
        if not np.all(np.isfinite(samples)):
            raise MediaError("audio contains NaN or infinite samples", code=ErrorCode.AUDIO_INVALID)
        self._clock_origin = clock_origin
        arrived = self._clock() if received_at is None else received_at
        self._push(samples.astype(np.float32, copy=False), idle=False, late_from=arrived)
        return self._drain()

    def idle(
        self, n_frames: int, *, requested_at: float | None = None, clock_origin: float | None = None
    ) -> Iterator[VideoFrame]:
        """Complete the audio fed so far (as :meth:`flush`), then ``n_frames`` frames of silence,
        flagged ``idle`` (live: late from ``requested_at``, or their due time on ``clock_origin``'s
        media clock when that is later); all of them come out of the returned iterator."""
        self._check_open()
        self._complete_utterance()
        self._clock_origin = clock_origin
        requested = self._clock() if requested_at is None else requested_at
        self._push(np.zeros(n_frames * SAMPLES_PER_FRAME, np.float32), idle=True, late_from=requested)
        self._queue(self._driver.flush(), idle=True, late_from=requested)
        return self._drain()

    def flush(self) -> Iterator[VideoFrame]:
        """The utterance is complete: its remaining frames (the last one and the look-ahead padded
        with silence), up to ``ceil(samples / 640)``; audio fed next starts at the next frame."""
        self._check_open()
        self._complete_utterance()
        return self._drain()

    def interrupt(self) -> int:
        """Drop every frame not handed out yet and the audio behind them; the frames that follow
        ease the mouth from the last frame rendered to what the next audio asks for (silence:
        closed) over :data:`~ditto.backends.lite.speech.SETTLE_FRAMES` frames.

        Returns:
            The index of the next frame (frames rendered so far); audio fed next starts there.
        """
        self._check_open()
        self._ready.clear()
        next_index = self.frames_rendered
        self._analyzer = SpeechAnalyzer(first_index=next_index)
        self._driver.interrupt(self._last_params)
        self.samples_fed = next_index * SAMPLES_PER_FRAME
        return next_index

    def finish(self) -> Iterator[VideoFrame]:
        """No more audio: the remaining frames, padded with silence, total ``ceil(samples / 640)``."""
        frames = self.flush()
        self._finished = True
        return frames

    def close(self) -> None:
        """Drop queued work. Safe to call twice."""
        self._closed = True
        self._ready.clear()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("stream is closed")
        if self._finished:
            raise RuntimeError("stream is finished: open a new stream for more audio")

    def _push(self, samples: np.ndarray, *, idle: bool, late_from: float) -> None:
        self.samples_fed += len(samples)
        self._queue(self._driver.push(self._analyzer.push(samples)), idle=idle, late_from=late_from)

    def _queue(self, frames: list[MouthParams], *, idle: bool, late_from: float | None) -> None:
        """Queue frames to render; live, each is late from the later of ``late_from`` and its due
        time on the media clock (``late_from`` None: never late)."""
        for params in frames:
            since = None if late_from is None else frame_ready_at(late_from, self._clock_origin, params.index)
            self._ready.append((params, idle, since))

    def _complete_utterance(self) -> None:
        """Pad the last partial frame with silence and release the frames waiting for look-ahead
        (never shed: the utterance's last frames show where its mouth came to rest)."""
        self._queue(self._driver.push(self._analyzer.flush()), idle=False, late_from=None)
        self._queue(self._driver.flush(), idle=False, late_from=None)
        self.samples_fed = self._analyzer.frames_emitted * SAMPLES_PER_FRAME

    def _drain(self) -> Iterator[VideoFrame]:
        while self._ready and not self._closed:
            params, idle, late_from = self._ready.popleft()
            motion = self._motion.step(params)  # shed or not: blinks and sway keep their timeline
            image = None
            if not self._too_late(late_from):
                with self._render_slots:  # judged again once a slot is free: the wait for one counts
                    image = None if self._too_late(late_from) else self._render(motion)
            self.last_motion, self._last_params = motion, params
            self.frames_rendered += 1
            yield VideoFrame(params.index, image, idle=idle, shed=image is None)

    def _too_late(self, late_from: float | None) -> bool:
        return self._max_lag_s is not None and late_from is not None and self._clock() - late_from > self._max_lag_s

    def _render(self, motion: FrameMotion) -> np.ndarray:
        target = target_vertices(self.avatar.geometry.mesh.vertices, self.avatar.rig, motion)
        return self._compositor.render(target)


class LiteBackend:
    """Weights-free CPU animator: speech energy and spectrum drive a mesh warp of the portrait.

    Args:
        mouth_tuning: how speech features map to the mouth (defaults: :class:`MouthTuning`).
        motion_tuning: motion amplitudes, blink timing (defaults: :class:`MotionTuning`).
        lookahead_frames: audio frames a stream waits for before rendering a frame (latency).
        render_slots: frames rendered at once across all streams (see :data:`RENDER_SLOTS`).
        clock: monotonic seconds, the clock ``received_at`` and the media clock are read on (tests).
    """

    name = "lite"
    live_capacity: int | None = None  # not measured: the server's --max_sessions bounds it

    def __init__(
        self,
        *,
        mouth_tuning: MouthTuning | None = None,
        motion_tuning: MotionTuning | None = None,
        lookahead_frames: int = LOOKAHEAD_FRAMES,
        render_slots: int = RENDER_SLOTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if lookahead_frames < 0:
            raise ValueError("lookahead_frames must be >= 0")
        if render_slots < 1:
            raise ValueError("render_slots must be >= 1")
        self.render_slots = render_slots
        self._render_slots = threading.BoundedSemaphore(render_slots)
        self.mouth_tuning = mouth_tuning or MouthTuning()
        self.motion_tuning = motion_tuning or MotionTuning()
        self.lookahead_frames = lookahead_frames
        self._clock = clock
        self._warm_up()

    def _warm_up(self) -> None:
        """Register a small bundled face once, so mediapipe's one-time costs (import, TFLite and
        XNNPACK set-up of the detector and the landmark model, ~1 s) are paid at server start,
        not in the first session's first-frame latency."""
        import cv2

        bgr = cv2.imread(str(WARMUP_FACE), cv2.IMREAD_COLOR)
        self.register_source(np.ascontiguousarray(bgr[:, :, ::-1]))

    def register_source(self, image_rgb: np.ndarray) -> LiteAvatar:
        """Find the face and precompute its mesh, rig and warp tables (~50-100 ms).

        Raises:
            SourceError: no face was found (code ``no_face``), or it is too small to animate.
            MediaError: the image is not (H, W, 3) uint8.
        """
        image = np.asarray(image_rgb)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise MediaError("source image must be (H, W, 3) uint8 RGB", code=ErrorCode.IMAGE_INVALID)
        image = np.ascontiguousarray(image).copy()
        image.flags.writeable = False
        height, width = image.shape[:2]
        face = detect_landmarks(image)
        geo = build_geometry(face, width, height)
        rig = build_rig(geo, self.motion_tuning)
        warp = InverseWarp(geo.mesh, geo.roi.width, geo.roi.height, geo.grid_step_px)
        style = mouth_style(image, geo)
        return LiteAvatar(width, height, image, face, geo, rig, warp, style)

    def open_stream(self, avatar: Avatar, *, seed: int, options: StreamOptions = StreamOptions()) -> LiteStream:
        """A new stream over ``avatar``; the same seed and audio give the same frames, except those
        a live stream sheds (``options.max_lag_s``; frames are rendered on the CPU and encoded by
        the server)."""
        if not isinstance(avatar, LiteAvatar):
            raise TypeError("avatar was not registered by the lite backend")
        return LiteStream(
            avatar,
            seed,
            self.mouth_tuning,
            self.motion_tuning,
            self.lookahead_frames,
            self._render_slots,
            options.max_lag_s if options.live else None,
            self._clock,
        )

    def stage_stats(self) -> dict[str, StageStats]:
        """Nothing is batched: each session renders in its own thread, :data:`RENDER_SLOTS` at a time."""
        return {}

    def close(self) -> None:
        """Nothing to release: the lite backend holds no models."""

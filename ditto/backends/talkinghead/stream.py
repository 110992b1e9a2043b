"""One session's animation: :class:`DittoStream`, opened by
:meth:`~ditto.backends.talkinghead.backend.DittoBackend.open_stream`.

Each session owns the mutable state — the DDIM noise drawn from a generator seeded with the
session seed, the blink schedule's RNG, the LMDM window recursion and the relative-driving
references — and shares the models and the avatar::

    audio ─ HuBERT windows ─ ConditionHandler ─ LMDM windows (DDIM) ─ motion rows (265)
          ─ MotionStitcher (+ stitching net) ─ warp ─ decode ─ paste back ─ VideoFrame

Offline cfgs (``online_mode`` False) generate the whole clip at :meth:`DittoStream.finish`
like upstream's offline SDK; online cfgs cut the audio into the streaming HuBERT
windows as it arrives and render frames as soon as their LMDM window is done
(docs/pipeline.md §10.3). Either way a session yields exactly ``ceil(samples / 640)`` frames.

Sessions keep their state on the host (tensors included) and never touch the device: every
model call (HuBERT windows, LMDM windows, the stitching network and the render) is submitted to
the models' one :class:`~ditto.backends.talkinghead.engine.DeviceEngine`, which batches it with
the other sessions' work on its own thread (and, on CUDA, its one CUDA stream). Offline sessions
emit each frame as soon as the window recursion has fixed its motion
(:func:`~ditto.backends.talkinghead.pipeline.audio2motion.iter_motion_offline`), not after the
last window.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from ditto import SAMPLES_PER_FRAME, frames_for_samples
from ditto.backends.base import StreamOptions, VideoFrame, frame_ready_at
from ditto.backends.talkinghead.aux_models.hubert import StreamingWindower, offline_windows
from ditto.backends.talkinghead.avatar import DittoAvatar
from ditto.backends.talkinghead.config import Audio2MotionCfg
from ditto.backends.talkinghead.engine import DeviceEngine, RenderWork, WindowWork
from ditto.backends.talkinghead.options import SetupOptions
from ditto.backends.talkinghead.pipeline.audio2motion import (
    MotionEase,
    MotionWindowing,
    OnlineAudio2Motion,
    as_v_min_max,
    iter_motion_offline,
    motion_to_vector,
    vector_to_arrays,
)
from ditto.backends.talkinghead.pipeline.blink import ctrl_for_frame
from ditto.backends.talkinghead.pipeline.condition import (
    ConditionHandler,
    condition_source_from_ch_info,
    condition_source_from_source,
)
from ditto.backends.talkinghead.pipeline.motion_stitch import MotionStitcher
from ditto.backends.talkinghead.pipeline.sampler import DDIMSampler
from ditto.backends.talkinghead.pipeline.stages import MotionChunk
from ditto.errors import BackendError, ErrorCode, MediaError

__all__ = ["DittoStream"]

LIVE_BUDGET_S = 0.04
"""A live session's work is due this long after it became possible (one frame period)."""
FILE_SLACK_S = 1.0
"""File-mode work is due this long after it was submitted (a frame: after its time, if later, as if the
clip played in real time from its first feed): it never outranks live work submitted with it, file
sessions ahead of that pace yield to those behind it, and (deadlines being absolute) none starves."""
MAX_FRAMES_IN_FLIGHT = 32
"""Frames one session may have queued in or rendered by the engine and not yet handed out."""
INTERRUPT_EASE_FRAMES = 6
"""Frames over which the face returns from where an interrupt left it to the new (neutral) motion."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Row:
    """The final motion of one frame, waiting to be rendered or in flight."""

    index: int
    motion: Tensor  # (265,)
    ready_at: float  # monotonic s it became final or (live, if earlier) its audio arrived; not before it is due
    last: bool  # the last frame of an utterance or of the session: never shed


@dataclasses.dataclass(eq=False)
class _SessionState:
    """Everything one session mutates (host tensors only); dropped as a whole on close.
    :meth:`DittoStream.interrupt` empties the queues and restarts the recursion in place."""

    stitcher: MotionStitcher
    windowing: MotionWindowing
    condition: ConditionHandler
    v_min_max: Tensor | None
    online: OnlineAudio2Motion | None  # online mode only
    windower: StreamingWindower | None  # online mode only
    audio: list[np.ndarray] = dataclasses.field(default_factory=list)  # offline mode: the whole clip
    # HuBERT windows not run yet, each with when its audio arrived (monotonic s)
    pending_windows: collections.deque[tuple[np.ndarray, float]] = dataclasses.field(default_factory=collections.deque)
    # HuBERT features whose motion is not computed yet, each with when its audio arrived
    pending_features: collections.deque[tuple[Tensor, float]] = dataclasses.field(default_factory=collections.deque)
    pending_rows: collections.deque[_Row] = dataclasses.field(default_factory=collections.deque)  # not submitted
    # frames submitted to the engine, in index order
    inflight: collections.deque[tuple[_Row, concurrent.futures.Future]] = dataclasses.field(
        default_factory=collections.deque
    )
    # [start, end) frames fed by idle()
    idle_spans: collections.deque[tuple[int, int]] = dataclasses.field(default_factory=collections.deque)
    ease: MotionEase | None = None  # blends the motion queued next from where the face was
    last_shown: Tensor | None = None  # motion (265,) of the last frame handed out
    resting: bool = False  # idling at the neutral motion: the next speech restarts the recursion there


class DittoStream:
    """One session's animation (calls from one thread; see :mod:`ditto.backends.base`).

    The session keeps its own state on the host — DDIM noise from a generator seeded with the
    session seed, the blink RNG, the LMDM window recursion, the relative-driving references —
    and hands every model call to the backend's :class:`~ditto.backends.talkinghead.engine.DeviceEngine`,
    which batches it with the other sessions' work. Audio is taken when :meth:`feed` is called;
    work is submitted as the returned iterator is advanced, and frames come out in order as
    soon as they are rendered (several may be in flight at once). Frames not pulled from one
    call's iterator come out of the next call's.

    Conversations: :meth:`idle` feeds silence through the normal path (the LMDM idles: its head
    motion goes on, blinks come from the stitcher), so idle frames leave with the same
    look-ahead as speech. :meth:`flush` computes the utterance's last motion at once (the
    look-ahead padded with silence); online, the window recursion then continues from the
    padded run's motion, so the next utterance cross-fades in as any window does; offline, the
    next clip's windows are conditioned on the last frame and eased in from it. :meth:`interrupt`
    restarts the recursion from the source's neutral motion and eases the first
    :data:`INTERRUPT_EASE_FRAMES` frames from the last frame handed out.
    """

    def __init__(
        self,
        *,
        engine: DeviceEngine,
        audio2motion: Audio2MotionCfg,
        options: SetupOptions,
        avatar: DittoAvatar,
        seed: int,
        silence_features: Tensor | None,
        stream_options: StreamOptions = StreamOptions(),
    ) -> None:
        """Args:
        engine: the backend's device engine.
        audio2motion: window and condition layout of the LMDM (cfg ``audio2motion_cfg``).
        options: the merged setup options.
        avatar: what to animate.
        seed: seeds the DDIM noise and the blink gaps.
        silence_features: online mode: HuBERT features of ``overlap_v2`` silent frames (host).
        stream_options: live or file, JPEG on the device, the live lag bound, the clip length
            when known up front (file mode: the blink schedule is drawn for it, as upstream's).
        """
        self._engine = engine
        self._options = options
        self._stream_options = stream_options
        self._avatar = avatar
        self._samples = 0  # session timeline: audio fed, rounded up to a frame by flush() and interrupt()
        self._segment_start = 0  # first frame of the audio fed since the last flush() or interrupt()
        self._next_index = 0  # the next frame handed out
        # the media clock frames are due on: live, as last fed; file mode, the first feed (real-time pace)
        self._clock_origin: float | None = None
        self._total_frames: int | None = None  # known once finish() is called
        self._finished = False
        self._silence_features = silence_features
        self._state: _SessionState | None = self._new_state(audio2motion, seed, silence_features)
        if stream_options.total_frames is not None:
            # upstream run(): setup_Nd(num_f) redraws the blink schedule for the clip, from the same RNG
            self._state.stitcher.set_num_frames(stream_options.total_frames)

    def _new_state(self, a2m: Audio2MotionCfg, seed: int, silence_features: Tensor | None) -> _SessionState:
        opts, avatar, host = self._options, self._avatar, torch.device("cpu")
        generator = torch.Generator(device=host).manual_seed(seed)
        sampler = DDIMSampler((1, a2m.seq_frames, a2m.motion_feat_dim), device=host)
        schedule = sampler.set_timesteps(opts.sampling_timesteps, generator=generator)

        def sample_window(kp_cond: Tensor, cond: Tensor) -> Tensor:
            work = WindowWork(
                steps=opts.sampling_timesteps,
                kp_cond=kp_cond,
                cond=cond,
                x_T=sampler.initial_noise(generator),
                noise=schedule.noise,
            )
            return self._engine.sample(work, deadline=self._deadline(self._engine.now())).result().unsqueeze(0)

        if opts.ch_info is not None:
            identity = condition_source_from_ch_info(opts.ch_info, host)
            ch_scale: float | None = float(np.asarray(opts.ch_info["x_s_info_lst"][0]["scale"]).reshape(-1)[0])
        else:
            identity = condition_source_from_source(avatar.host_source)
            ch_scale = None
        condition = ConditionHandler(
            identity,
            opts.emo,
            eye_f0_mode=opts.eye_f0_mode,
            use_emo=a2m.use_emo,
            use_eye_open=a2m.use_eye_open,
            use_eye_ball=a2m.use_eye_ball,
            use_sc=a2m.use_sc,
        )
        windowing = MotionWindowing(
            sample_window,
            motion_to_vector(identity.x_s_info_0),
            seq_frames=a2m.seq_frames,
            overlap=opts.overlap_v2,
            online=opts.online_mode,
            fix_kp_cond=opts.fix_kp_cond,
            fix_kp_cond_dim=opts.fix_kp_cond_dim,
            smo_k_d=opts.smo_k_d,
        )
        # the stitching network itself runs in the engine, batched with the render
        stitcher = MotionStitcher(
            avatar.host_source,
            stitch_fn=None,
            use_d_keys=opts.use_d_keys,
            relative_d=opts.relative_d,
            drive_eye=opts.drive_eye,
            delta_eye_arr=opts.delta_eye_arr,
            delta_eye_open_n=opts.delta_eye_open_n,
            n_frames=opts.N_d,
            rng=random.Random(seed),
            fade_out_keys=opts.fade_out_keys,
            fade_type=opts.fade_type,
            flag_stitching=False,
            ch_scale=ch_scale,
            overall_ctrl_info=opts.overall_ctrl_info,
        )
        v_min_max = as_v_min_max(opts.v_min_max_for_clip, host)
        online = windower = None
        if opts.online_mode:
            if silence_features is None:
                raise ValueError("online mode needs the silence features of overlap_v2 frames")
            online = OnlineAudio2Motion(windowing, condition, silence_features, v_min_max=v_min_max)
            windower = StreamingWindower()
        return _SessionState(
            stitcher=stitcher,
            windowing=windowing,
            condition=condition,
            v_min_max=v_min_max,
            online=online,
            windower=windower,
        )

    # -- public API ---------------------------------------------------------------------------

    def feed(
        self, audio: np.ndarray, *, received_at: float | None = None, clock_origin: float | None = None
    ) -> Iterator[VideoFrame]:
        """Append float32 16 kHz mono samples; iterate the result for every frame now renderable.

        ``received_at`` (monotonic s, None: now): when the audio arrived. Live, the motion computed
        from it counts as ready from then, or from its frame's due time on ``clock_origin``'s media
        clock when that is later (audio sent ahead of real time), so a frame that waited for HuBERT
        or LMDM is shed as one that waited for the render (``max_lag_s``). File mode: the first feed
        starts the clock the frames are paced on (their deadlines in the engine, :data:`FILE_SLACK_S`).

        Offline cfgs render nothing before :meth:`flush` or :meth:`finish` (the whole clip is
        generated at once).

        Raises:
            MediaError: not a 1-D float array.
            RuntimeError: after :meth:`finish` or :meth:`close`.
        """
        state = self._require_state()
        if self._finished:
            raise RuntimeError("feed() after finish()")
        samples = np.asarray(audio)
        if samples.ndim != 1 or not np.issubdtype(samples.dtype, np.floating):
            raise MediaError("the Ditto backend expects 1-D float32 16 kHz mono samples", code=ErrorCode.AUDIO_INVALID)
        if state.resting and len(samples):  # speech after idling at rest: the recursion starts here
            self._restart_recursion(state, self._segment_start)
            state.ease = MotionEase(state.windowing.source_kp_cond, self._segment_start, INTERRUPT_EASE_FRAMES)
            state.resting = False
        if self._stream_options.live:
            self._clock_origin = clock_origin
        elif self._clock_origin is None:
            self._clock_origin = self._engine.now() if received_at is None else received_at
        self._append(state, samples.astype(np.float32, copy=False), received_at)
        return self._guarded(self._drain())

    def idle(
        self, frames: int, *, requested_at: float | None = None, clock_origin: float | None = None
    ) -> Iterator[VideoFrame]:
        """Append ``frames`` frames without speech, flagged ``idle``.

        Between utterances (nothing fed since :meth:`flush`, :meth:`interrupt` or the last idle
        frames) they are made at once from the source's neutral motion, eased in from the last
        motion queued, with blinks going on: no model work, so they leave without the look-ahead
        and cost only their render; speech fed next restarts the window recursion there. Inside
        an utterance (its audio is late) silence runs through the model instead (a partial frame
        is completed with silence first and stays the utterance's), so that the frames waiting
        for look-ahead come out; they leave as :meth:`feed`'s. Live, they count as ready from
        ``requested_at`` (monotonic s; None: now), or from their due time on ``clock_origin``'s
        media clock when that is later."""
        state = self._require_open()
        if self._stream_options.live:
            self._clock_origin = clock_origin
        if self._samples == self._segment_start * SAMPLES_PER_FRAME:
            return self._guarded(self._rest(state, frames, requested_at))
        self._append(state, np.zeros(-self._samples % SAMPLES_PER_FRAME, np.float32), requested_at)
        start = self._samples // SAMPLES_PER_FRAME
        state.idle_spans.append((start, start + frames))
        self._append(state, np.zeros(frames * SAMPLES_PER_FRAME, np.float32), requested_at)
        return self._guarded(self._drain())

    def flush(self) -> Iterator[VideoFrame]:
        """The utterance is complete: compute the motion of all its frames now (up to
        ``ceil(samples / 640)``, the look-ahead padded with silence) and yield them; audio fed
        next starts at the next frame and continues the motion.

        Raises:
            BackendError: the device failed this session's work; the session is closed.
        """
        state = self._require_open()
        end = frames_for_samples(self._samples)
        if end > self._segment_start:
            with self._device_work():
                if state.online is not None:
                    self._flush_online(state, end)
                else:
                    self._flush_offline(state, end)
        self._samples = end * SAMPLES_PER_FRAME
        self._segment_start = end
        return self._guarded(self._drain())

    def interrupt(self) -> int:
        """Barge-in: drop the audio not rendered yet and every frame in flight (their engine
        work is cancelled); the window recursion restarts from the source's neutral motion, and
        the next frames ease from the last one handed out.

        Returns:
            The index of the next frame handed out; audio fed next starts there.
        """
        state = self._require_open()
        for _, future in state.inflight:
            future.cancel()  # the engine drops it unless it is rendering it already
        queues = (state.inflight, state.pending_rows, state.pending_windows, state.pending_features, state.audio)
        for queue in (*queues, state.idle_spans):
            queue.clear()
        start = self._next_index
        self._restart_recursion(state, start)
        state.resting = False
        state.stitcher.seek(start)
        state.ease = None if state.last_shown is None else MotionEase(state.last_shown, start, INTERRUPT_EASE_FRAMES)
        self._samples = start * SAMPLES_PER_FRAME
        self._segment_start = start
        return start

    def finish(self) -> Iterator[VideoFrame]:
        """No more audio: yield the remaining frames, ``ceil(samples / 640)`` in all.

        Raises:
            BackendError: the device failed this session's work (e.g. code ``out_of_memory``);
                the session is closed.
        """
        state = self._require_state()
        if self._finished:
            raise RuntimeError("finish() called twice")
        self._finished = True
        self._total_frames = frames_for_samples(self._samples)
        if self._total_frames == self._segment_start:  # nothing fed since the last flush() or interrupt()
            return self._guarded(self._drain())
        if state.windower is not None:
            self._queue_windows(state, state.windower.flush())
            return self._guarded(self._finish_online())
        return self._guarded(self._finish_offline())

    def close(self) -> None:
        """Drop the session's state and its queued engine work. Safe to call twice."""
        state, self._state = self._state, None
        if state is not None:
            for _, future in state.inflight:
                future.cancel()

    # -- stages -------------------------------------------------------------------------------

    def _require_state(self) -> _SessionState:
        if self._state is None:
            raise RuntimeError("the stream is closed")
        return self._state

    def _require_open(self) -> _SessionState:
        state = self._require_state()
        if self._finished:
            raise RuntimeError("the stream is finished")
        return state

    def _append(self, state: _SessionState, samples: np.ndarray, received_at: float | None = None) -> None:
        self._samples += samples.shape[0]
        if state.windower is not None:
            self._queue_windows(state, state.windower.push(samples), received_at)
        else:
            state.audio.append(samples)

    def _queue_windows(self, state: _SessionState, windows: list[np.ndarray], received_at: float | None = None) -> None:
        """Queue HuBERT windows with when their audio arrived (None: now)."""
        at = self._engine.now() if received_at is None else received_at
        state.pending_windows.extend((window, at) for window in windows)

    def _restart_recursion(self, state: _SessionState, start: int) -> None:
        """The window recursion as at session start (silence prefix, the source's neutral motion as
        kp_cond), its first frame ``start``."""
        state.windowing.restart(state.windowing.source_kp_cond)
        if state.online is not None:
            assert self._silence_features is not None  # checked when the online session was set up
            state.windower = StreamingWindower()
            state.online = OnlineAudio2Motion(
                state.windowing, state.condition, self._silence_features, v_min_max=state.v_min_max, first_frame=start
            )

    def _rest(self, state: _SessionState, frames: int, requested_at: float | None) -> Iterator[VideoFrame]:
        """``frames`` idle frames at the neutral motion from the next frame on (see :meth:`idle`)."""
        start = self._segment_start
        if state.ease is None and not state.resting:
            last = (
                state.pending_rows[-1].motion
                if state.pending_rows
                else state.inflight[-1][0].motion
                if state.inflight
                else state.last_shown
            )
            if last is not None:
                state.ease = MotionEase(last, start, INTERRUPT_EASE_FRAMES)
        neutral = state.windowing.source_kp_cond.reshape(1, -1)
        state.idle_spans.append((start, start + frames))
        self._queue_rows(
            state, MotionChunk(start_frame=start, motion=neutral.expand(frames, -1)), None, ready_at=requested_at
        )
        state.resting = True
        self._segment_start = start + frames
        self._samples = self._segment_start * SAMPLES_PER_FRAME
        return self._drain()

    def _deadline(self, ready_at: float) -> float:
        """When work that became possible at ``ready_at`` and is submitted now is due (earliest-deadline-first
        in the engine): live, a frame period after it became possible; file mode, the slack after the
        later of that and now (:data:`FILE_SLACK_S`)."""
        if self._stream_options.live:
            return ready_at + LIVE_BUDGET_S
        return max(ready_at, self._engine.now()) + FILE_SLACK_S

    @contextlib.contextmanager
    def _device_work(self) -> Iterator[None]:
        """Model work under inference mode; a device failure closes this session."""
        try:
            with torch.inference_mode():
                yield
        except BackendError:
            self.close()
            raise

    def _guarded(self, frames: Iterator[VideoFrame]) -> Iterator[VideoFrame]:
        while True:
            with self._device_work():
                frame = next(frames, None)
            if frame is None:
                return
            yield frame

    def _drain(self, *, block: bool = True) -> Iterator[VideoFrame]:
        """Submit ready rows, run pending HuBERT windows and then their motion (online), hand out
        finished frames in order.

        The motion is computed one HuBERT window at a time, and the frames it made ready are
        submitted and those rendered handed out in between, so the first frames of a long clip
        leave after its first LMDM windows, not after all of them. With ``block`` False, return
        instead of waiting for a frame still being rendered (the caller has more motion to
        compute meanwhile).
        """
        while True:
            state = self._require_state()
            self._submit_rows(state)
            if state.inflight and state.inflight[0][1].done():
                yield self._collect(state, state.inflight.popleft())
            elif state.pending_windows:
                self._run_windows(state)
            elif state.pending_features:
                self._run_motion(state)
            elif state.inflight and (block or state.pending_rows):
                yield self._collect(state, state.inflight.popleft())
            else:
                return

    def _features(self, windows: Sequence[np.ndarray], since: float | None = None) -> list[Tensor]:
        """HuBERT features of ``windows``, submitted at once (they batch), due as work possible since ``since``
        (None: now)."""
        deadline = self._deadline(self._engine.now() if since is None else since)
        futures = [self._engine.features(window, deadline=deadline) for window in windows]
        return [future.result() for future in futures]

    def _run_windows(self, state: _SessionState) -> None:
        """The HuBERT features of every pending window, submitted at once (they batch)."""
        if not state.pending_windows:
            return
        windows, received = zip(*state.pending_windows)
        state.pending_windows.clear()
        state.pending_features.extend(zip(self._features(windows, since=min(received)), received))

    def _run_motion(self, state: _SessionState) -> None:
        """The motion of the oldest pending features (the LMDM windows they complete), queued."""
        assert state.online is not None
        features, at = state.pending_features.popleft()
        self._queue_rows(state, state.online.push(features), self._total_frames, ready_at=at)

    def _flush_online(self, state: _SessionState, end: int) -> None:
        assert state.online is not None and state.windower is not None
        self._run_windows(state)
        while state.pending_features:
            self._run_motion(state)
        tail = torch.cat(self._features(state.windower.end_utterance()))  # never empty: the boundary is inside
        self._queue_rows(state, state.online.flush(tail, end), end)

    def _flush_offline(self, state: _SessionState, end: int) -> None:
        for chunk in self._offline_motion(state, end):
            self._queue_rows(state, chunk, end)
        last = state.pending_rows[-1].motion
        state.windowing.restart(last)  # the next clip's windows continue from this motion...
        state.ease = MotionEase(last, end, INTERRUPT_EASE_FRAMES)  # ...and are eased in from it

    def _offline_motion(self, state: _SessionState, end: int) -> Iterator[MotionChunk]:
        """The motion of the clip fed since the last flush() or interrupt() (frames up to ``end``)."""
        audio = np.concatenate(state.audio)
        state.audio.clear()
        first = self._segment_start
        features = torch.cat(self._features(offline_windows(audio, self._engine.chunksize)))[: end - first]
        if first == 0:
            state.stitcher.set_num_frames(end)  # upstream setup_Nd: blinks end before the clip does
        yield from iter_motion_offline(
            features, state.condition, state.windowing, v_min_max=state.v_min_max, first_frame=first
        )

    def _finish_online(self) -> Iterator[VideoFrame]:
        yield from self._drain()
        state = self._require_state()
        assert state.online is not None
        self._queue_rows(state, state.online.finish(), self._total_frames)
        yield from self._drain()

    def _finish_offline(self) -> Iterator[VideoFrame]:
        state = self._require_state()
        assert self._total_frames is not None
        for chunk in self._offline_motion(state, self._total_frames):
            self._queue_rows(state, chunk, self._total_frames)
            yield from self._drain(block=False)
        yield from self._drain()

    def _queue_rows(
        self, state: _SessionState, chunk: MotionChunk, end: int | None, *, ready_at: float | None = None
    ) -> None:
        """Queue a MotionChunk's rows, dropping those from frame ``end`` on (past the audio); they count
        as ready from ``ready_at`` (when their audio arrived; None or later than now: now) or from
        their due time on the media clock when that is later (file mode: real-time pace)."""
        if state.online is not None and state.online.d0 is not None and state.stitcher.d0 is None:
            state.stitcher.set_d0(state.online.d0)  # relative-driving reference: the silence frame
        if state.ease is not None:
            chunk = state.ease(chunk)
            if chunk.start_frame + len(chunk) >= state.ease.start_frame + state.ease.frames:
                state.ease = None
        now = self._engine.now()
        ready = now if ready_at is None else min(now, ready_at)
        for offset in range(len(chunk)):
            index = chunk.start_frame + offset
            if end is not None and index >= end:
                break
            last = end is not None and index == end - 1
            row_ready = frame_ready_at(ready, self._clock_origin, index)
            state.pending_rows.append(_Row(index, chunk.motion[offset], row_ready, last))

    def _submit_rows(self, state: _SessionState) -> None:
        """Stitch the ready rows (host) and hand their frames to the engine, up to the in-flight cap.

        Live: a frame whose motion has waited longer than ``max_lag_s`` when the engine gets
        to it is shed (not rendered), so a session behind real time catches up instead of
        falling further behind; the last frame is never shed.
        """
        lag_bound = self._stream_options.max_lag_s if self._stream_options.live else None
        quality = self._stream_options.jpeg_quality
        while state.pending_rows and len(state.inflight) < MAX_FRAMES_IN_FLIGHT:
            row = state.pending_rows.popleft()
            index = row.index
            source_frame = self._avatar.source.frame_for_output(index)
            keypoints = state.stitcher(
                source_frame, vector_to_arrays(row.motion), ctrl_for_frame(self._options.ctrl_info, index)
            )
            work = RenderWork(
                index=index,
                f_s=self._avatar.source.frames[source_frame].f_s,
                x_s=keypoints.x_s,
                x_d=keypoints.x_d,
                stitch=self._options.flag_stitching,
                plan=self._avatar.paste_plans[source_frame],
                jpeg_quality=quality,
            )
            expires = None if lag_bound is None or row.last else row.ready_at + lag_bound
            state.inflight.append(
                (row, self._engine.render(work, deadline=self._deadline(row.ready_at), expires=expires))
            )

    def _collect(self, state: _SessionState, entry: tuple[_Row, concurrent.futures.Future]) -> VideoFrame:
        row, future = entry
        frame = future.result()
        self._next_index = row.index + 1
        state.last_shown = row.motion
        if frame is None:
            frame = VideoFrame(index=row.index, image=None, shed=True)
        while state.idle_spans and state.idle_spans[0][1] <= row.index:
            state.idle_spans.popleft()
        if state.idle_spans and state.idle_spans[0][0] <= row.index:
            frame = dataclasses.replace(frame, idle=True)
        return frame

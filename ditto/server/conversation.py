"""The protocol of a live session, free of I/O: messages and the time in, actions out.

A :class:`Conversation` is told what the client sent (``receive_*``, audio already decoded and
resampled to 16 kHz), what the writer sent (``frame_sent``, ``utterance_end_sent``), what the
render thread reported (``rewound``) and the time (``tick``). Each call returns the
:data:`Action` list the adapter must carry out, in order:

* render commands (:class:`FeedAudio`, :class:`Idle`, :class:`Flush`, :class:`Interrupt`,
  :class:`Finish`) go to the render thread, which runs them on the backend stream in order;
* :class:`DropQueuedAudio` empties the queue of render commands not yet taken;
* :class:`DiscardUnsentFrames` makes the writer drop queued and later frames of utterances
  up to ``through``;
* :class:`Send` queues a control message (playback_started/finished).

It owns utterance numbering, the media clock and the idling policy, which frames belong to
which utterance and when playback events are due. It never reads a clock: every call gets ``now``
(monotonic seconds). A client error or a limit raises a :class:`~ditto.errors.DittoError`.

Usage (the adapter in :mod:`ditto.server.session`)::

    conversation = Conversation(limits, now)
    for each client message:  run(conversation.receive_audio(samples, now)) ...
    every few ms:             run(conversation.tick(now))
    when the writer sends:    send(conversation.frame_sent(utterance, index)) right after that frame
    after stream.interrupt(): run(conversation.rewound(next_frame, now))
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Union

import numpy as np

from ditto import FPS, SAMPLE_RATE_HZ, SAMPLES_PER_FRAME
from ditto.errors import ErrorCode, MediaError, ProtocolError, SessionTimeout
from ditto.protocol import messages as msg


@dataclasses.dataclass(frozen=True, slots=True)
class ConversationLimits:
    idle_after_s: float  # audio this overdue (and none arriving) -> idle frames
    idle_timeout_s: float  # no message this long before end_of_audio -> timeout
    max_audio_seconds: float  # of audio received, and of media time (audio and idle)


# --- render commands (run by the render thread, in order) ----------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class FeedAudio:
    samples: np.ndarray  # (n,) float32 16 kHz mono
    utterance: int  # 1-based; the frames starting in these samples carry it
    clock_origin: float  # monotonic s at which media time 0 was due (frame deadlines)
    received_at: float  # monotonic s the audio arrived (the backend's lag bound counts from then, or from due)


@dataclasses.dataclass(frozen=True, slots=True)
class Idle:
    frames: int
    clock_origin: float
    requested_at: float  # monotonic s the idle frames were asked for (the backend's lag bound counts from then)


@dataclasses.dataclass(frozen=True, slots=True)
class Flush:
    utterance: int  # after its frames, tell the writer this utterance's frames are all written


@dataclasses.dataclass(frozen=True, slots=True)
class Interrupt:
    """Call ``stream.interrupt()`` and report the frame it returns to :meth:`Conversation.rewound`."""


@dataclasses.dataclass(frozen=True, slots=True)
class Finish:
    utterance: int | None  # the utterance still open at end_of_audio (its end is marked after its frames)


RenderCommand = Union[FeedAudio, Idle, Flush, Interrupt, Finish]

# --- other actions ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class DropQueuedAudio:
    """Empty the render queue: commands not taken yet are dropped."""


@dataclasses.dataclass(frozen=True, slots=True)
class DiscardUnsentFrames:
    through: int  # drop every unsent frame (and echo, end mark) of utterances 1..through, now and later


@dataclasses.dataclass(frozen=True, slots=True)
class Send:
    message: msg.PlaybackStarted | msg.PlaybackFinished


Action = Union[RenderCommand, DropQueuedAudio, DiscardUnsentFrames, Send]


@dataclasses.dataclass(eq=False, slots=True)
class _Utterance:
    number: int
    spans: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # its audio, 16 kHz samples
    ended: bool = False  # end_of_utterance / end_of_audio: no more audio
    started: bool = False  # a frame of it was sent
    finished: bool = False  # playback_finished is out (or it was dropped before it started)
    sent_until: int = 0  # end sample of the last frame of it that was sent

    def covered_ms(self) -> int:
        samples = sum(max(0, min(end, self.sent_until) - start) for start, end in self.spans)
        return samples * 1000 // SAMPLE_RATE_HZ


class Conversation:
    """One live session's protocol state; see the module docstring. Not thread-safe: one caller."""

    def __init__(self, limits: ConversationLimits, now: float) -> None:
        self._limits = limits
        self._last_message_at = now
        self._clock_origin: float | None = None  # set by the first audio; moved at each interrupt
        self._last_audio_at: float | None = None
        self._position = 0  # 16 kHz samples of media the render thread was asked for
        self._speech_samples = 0  # audio received, all utterances
        self._utterances: dict[int, _Utterance] = {}
        self._latest: _Utterance | None = None
        self._rewinding = False  # an Interrupt is out, its next frame not known yet
        self._held: list[Callable[[], list[Action]]] = []  # input that came while rewinding, replayed after
        self.ended = False  # end_of_audio received

    @property
    def media_s(self) -> float:
        return self._position / SAMPLE_RATE_HZ

    # --- client messages ----------------------------------------------------------------------

    def receive_audio(self, samples: np.ndarray, now: float) -> list[Action]:
        """16 kHz samples of an audio chunk; the first chunk after end_of_utterance or interrupt
        starts the next utterance.

        Raises:
            ProtocolError: ``invalid_state`` after end_of_audio.
            MediaError: ``audio_too_long``: more audio than ``max_audio_seconds``.
        """
        self._message("audio chunk", now)
        if not len(samples):
            return []
        self._last_audio_at = now
        if self._clock_origin is None:
            self._clock_origin = now  # a real-time client has sent t - origin seconds by time t
        self._speech_samples += len(samples)
        if self._speech_samples > self._limits.max_audio_seconds * SAMPLE_RATE_HZ:
            raise MediaError(
                f"live audio exceeds the server's limit of {self._limits.max_audio_seconds:.0f} s",
                code=ErrorCode.AUDIO_TOO_LONG,
            )
        if self._latest is None or self._latest.ended:
            number = self._latest.number + 1 if self._latest else 1
            self._latest = self._utterances[number] = _Utterance(number)
        return self._now_or_held(functools.partial(self._feed, self._latest, samples, now))

    def receive_end_of_utterance(self, now: float) -> list[Action]:
        """The open utterance's audio is complete: render its tail now. No open utterance
        (before any audio, twice in a row, after an interrupt): nothing to do.

        Raises:
            ProtocolError: ``invalid_state`` after end_of_audio.
        """
        self._message("end_of_utterance", now)
        utterance = self._latest
        if utterance is None or utterance.ended:
            return []
        utterance.ended = True
        return self._now_or_held(functools.partial(self._flush, utterance))

    def receive_interrupt(self, now: float) -> list[Action]:
        """Barge-in: drop queued audio and unsent frames, end the playing utterance now
        (``playback_finished`` with ``interrupted``) and idle from where the face is. Nothing
        to do when no utterance is unfinished (before any audio, twice in a row).

        Raises:
            ProtocolError: ``invalid_state`` after end_of_audio.
        """
        self._message("interrupt", now)
        unfinished = [u for u in self._utterances.values() if not u.finished]
        if not unfinished:
            return []
        assert self._latest is not None  # there are unfinished utterances
        actions: list[Action] = [DropQueuedAudio(), DiscardUnsentFrames(through=self._latest.number)]
        for utterance in unfinished:  # each gets its answer, even one none of whose frames was sent yet
            utterance.ended = utterance.finished = True
            actions.append(
                Send(
                    msg.PlaybackFinished(
                        utterance=utterance.number, position_ms=utterance.covered_ms(), interrupted=True
                    )
                )
            )
        if self._rewinding:  # what came since the last interrupt never reached the render thread
            self._held.clear()
        else:
            self._rewinding = True
            actions.append(Interrupt())
        return actions

    def receive_end_of_audio(self, now: float) -> list[Action]:
        """No more audio: render the rest; the session ends after the last frame.

        Raises:
            ProtocolError: ``invalid_state`` after end_of_audio.
        """
        self._message("end_of_audio", now)
        self.ended = True
        open_utterance = self._latest if self._latest and not self._latest.ended else None
        if open_utterance:
            open_utterance.ended = True
        return self._now_or_held(functools.partial(self._finish, open_utterance))

    # --- the render thread and the writer ----------------------------------------------------

    def rewound(self, next_frame: int, now: float) -> list[Action]:
        """The render thread ran :class:`Interrupt`: the stream's next frame is ``next_frame``.
        The media clock is re-anchored so idle frames go on at real-time pace from there."""
        self._position = next_frame * SAMPLES_PER_FRAME
        self._clock_origin = now - next_frame / FPS - self._limits.idle_after_s
        self._rewinding = False
        held, self._held = self._held, []
        return [action for replay in held for action in replay()]

    def frame_sent(self, utterance: int, index: int) -> list[Action]:
        """A frame is handed to the socket; what it returns is sent right after that frame."""
        u = self._utterances.get(utterance)
        if u is None or u.finished:
            return []
        u.sent_until = max(u.sent_until, (index + 1) * SAMPLES_PER_FRAME)
        if u.started:
            return []
        u.started = True
        return [Send(msg.PlaybackStarted(utterance=utterance))]

    def utterance_end_sent(self, utterance: int) -> list[Action]:
        """The writer reached the end of ``utterance``'s frames (each one sent or skipped)."""
        u = self._utterances[utterance]
        if u.finished:
            return []
        u.finished = True
        if not u.started:  # every frame skipped for a slow client: it never played
            return []
        return [Send(msg.PlaybackFinished(utterance=utterance, position_ms=u.covered_ms()))]

    # --- the time ---------------------------------------------------------------------------

    def tick(self, now: float) -> list[Action]:
        """Idle while audio is overdue; call every half frame or so.

        Once the media clock runs (first audio), no chunk is expected soon (none arrived for
        ``idle_after_s``, or the utterance ended) and the media asked for is more than
        ``idle_after_s`` behind the clock, idle frames fill up to it (at most 1 s per call).
        A client sending ahead of real time never idles.

        Raises:
            SessionTimeout: nothing received for ``idle_timeout_s`` before end_of_audio.
            MediaError: ``audio_too_long``: media time (audio and idle) over ``max_audio_seconds``.
        """
        if self.ended:
            return []
        if now - self._last_message_at > self._limits.idle_timeout_s:
            raise SessionTimeout(f"no message from the client for {self._limits.idle_timeout_s:g} s")
        if self._clock_origin is None or self._rewinding:
            return []
        speaking = self._latest is not None and not self._latest.ended
        if speaking:
            assert self._last_audio_at is not None  # set with the utterance's first audio
            if now - self._last_audio_at <= self._limits.idle_after_s:
                return []
        due_s = now - self._clock_origin - self._limits.idle_after_s
        frames = min(FPS, math.ceil((due_s - self.media_s) * FPS))
        if frames <= 0:
            return []
        actions: list[Action] = []
        partial = self._position % SAMPLES_PER_FRAME
        if partial:  # the open utterance's last frame is completed with silence (it still holds speech)
            assert self._latest is not None  # audio was fed
            pad = np.zeros(SAMPLES_PER_FRAME - partial, np.float32)
            actions.append(FeedAudio(pad, self._latest.number, self._clock_origin, now))
            self._position += len(pad)
        actions.append(Idle(frames, self._clock_origin, now))
        self._position += frames * SAMPLES_PER_FRAME
        if self.media_s > self._limits.max_audio_seconds:
            raise MediaError(
                f"live session exceeds the server's limit of {self._limits.max_audio_seconds:.0f} s "
                "of audio and idle time",
                code=ErrorCode.AUDIO_TOO_LONG,
            )
        return actions

    # --- internals -------------------------------------------------------------------------------

    def _message(self, kind: str, now: float) -> None:
        if self.ended:
            raise ProtocolError(f"{kind} after end_of_audio", code=ErrorCode.INVALID_STATE)
        self._last_message_at = now

    def _now_or_held(self, emit: Callable[[], list[Action]]) -> list[Action]:
        if self._rewinding:  # the position is unknown until the stream says where it resumes
            self._held.append(emit)
            return []
        return emit()

    def _feed(self, utterance: _Utterance, samples: np.ndarray, received_at: float) -> list[Action]:
        utterance.spans.append((self._position, self._position + len(samples)))
        self._position += len(samples)
        assert self._clock_origin is not None  # set by the first audio
        return [FeedAudio(samples, utterance.number, self._clock_origin, received_at)]

    def _to_frame_boundary(self) -> None:
        self._position = -(-self._position // SAMPLES_PER_FRAME) * SAMPLES_PER_FRAME

    def _flush(self, utterance: _Utterance) -> list[Action]:
        self._to_frame_boundary()  # the padded tail; audio fed next starts at the next frame
        return [Flush(utterance.number)]

    def _finish(self, utterance: _Utterance | None) -> list[Action]:
        self._to_frame_boundary()
        return [Finish(utterance.number if utterance else None)]

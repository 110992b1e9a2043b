"""The render thread's side of a live session (``live: true``).

The session's event-loop side runs the :class:`~ditto.server.conversation.Conversation` and
puts the render commands it returns into an :class:`Inbox`; :func:`render_live` takes them out
in the render thread and runs them on a :class:`LivePipeline` (backend stream -> writer), which
emits each frame as soon as the backend yields it, tagged with its utterance.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import queue
import threading
from typing import Callable, Iterable

import numpy as np

from ditto import SAMPLES_PER_FRAME, frames_for_samples
from ditto.backends.base import AnimationStream, VideoFrame, frame_due_at
from ditto.media.pcm import encode_pcm16
from ditto.server.conversation import FeedAudio, Finish, Flush, Idle, Interrupt, RenderCommand
from ditto.server.frame_loop import audio_window, timed_frames
from ditto.server.metrics import ServerMetrics
from ditto.server.writer import StreamAborted, WebSocketFrameWriter


@dataclasses.dataclass(frozen=True, slots=True)
class LiveResult:
    frames: int  # queued for sending (later discarded by an interrupt included)
    idle: int  # idle frames rendered


SKIP_GRACE_S = 0.2
"""A frame may wait this long past its due time (the end of its audio on the media clock) for the
writer before it is skipped; it bounds the latency a backed-up socket adds."""
_POLL_S = 0.02  # the render thread re-checks for cancellation this often while the inbox is empty


class Inbox:
    """Render commands between the event loop (:meth:`put`, :meth:`clear`) and the render thread.

    Commands keep their order. At most ``capacity`` audio commands wait; the receiver awaits
    :meth:`room` before reading the socket again, so a client sending faster than the server
    renders is slowed by TCP, not buffered without bound.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int) -> None:
        self._loop = loop
        self._items: queue.SimpleQueue[RenderCommand] = queue.SimpleQueue()
        self._capacity = capacity
        self._audio_waiting = 0  # FeedAudio commands put and not yet taken (event-loop side)
        self._taken = asyncio.Event()

    def put(self, command: RenderCommand) -> None:
        self._audio_waiting += isinstance(command, FeedAudio)
        self._items.put(command)

    async def room(self) -> None:
        """Return once fewer than ``capacity`` audio commands wait."""
        while self._audio_waiting >= self._capacity:
            self._taken.clear()
            await self._taken.wait()

    def clear(self) -> None:
        """Drop every command not taken yet (interrupt)."""
        with contextlib.suppress(queue.Empty):
            while True:
                self._items.get_nowait()
        self._audio_waiting = 0

    def get(self, timeout_s: float) -> RenderCommand | None:
        """The next command, or None after ``timeout_s`` (render thread)."""
        try:
            command = self._items.get(timeout=timeout_s)
        except queue.Empty:
            return None
        if isinstance(command, FeedAudio):
            self._loop.call_soon_threadsafe(self._audio_taken)
        return command

    def _audio_taken(self) -> None:
        self._audio_waiting = max(0, self._audio_waiting - 1)  # clear() may have zeroed it
        self._taken.set()


class LivePipeline:
    """Runs render commands on the backend stream and writes the frames.

    Keeps which 16 kHz sample ranges were fed for which utterance (0: idle), so every frame gets
    its utterance and IDLE flag whatever the backend, and the fed audio for the echo.
    """

    def __init__(
        self,
        stream: AnimationStream,
        writer: WebSocketFrameWriter,
        metrics: ServerMetrics,
        cancel: threading.Event,
        echo_audio: bool,
    ) -> None:
        self._stream = stream
        self._writer = writer
        self._metrics = metrics
        self._cancel = cancel
        self._echo = np.zeros(0, np.float32) if echo_audio else None
        self._echo_base = 0  # absolute 16 kHz sample of self._echo[0]
        self._spans: list[tuple[int, int, int]] = []  # [start, end) 16 kHz samples -> utterance (0: idle)
        self._clock_origin: float | None = None
        self.samples_fed = 0
        self.frames = 0
        self.idle_frames = 0

    def feed(self, command: FeedAudio) -> None:
        self._clock_origin = command.clock_origin
        self._record(command.samples, command.utterance)
        self._emit(
            self._stream.feed(command.samples, received_at=command.received_at, clock_origin=command.clock_origin)
        )

    def idle(self, command: Idle) -> None:
        self._clock_origin = command.clock_origin
        self._record(np.zeros(command.frames * SAMPLES_PER_FRAME, np.float32), 0)
        self._emit(
            self._stream.idle(command.frames, requested_at=command.requested_at, clock_origin=command.clock_origin)
        )

    def flush(self, command: Flush) -> None:
        self._emit(self._stream.flush())
        self.samples_fed = frames_for_samples(self.samples_fed) * SAMPLES_PER_FRAME  # the padded tail
        self._writer.write_utterance_end(command.utterance)

    def interrupt(self) -> int:
        """``stream.interrupt()``; forgets the audio of the frames it dropped. Returns the next frame."""
        next_frame = self._stream.interrupt()
        self.samples_fed = next_frame * SAMPLES_PER_FRAME
        self._spans = [(a, min(b, self.samples_fed), u) for a, b, u in self._spans if a < self.samples_fed]
        if self._echo is not None:
            self._echo = self._echo[: max(0, self.samples_fed - self._echo_base)]
        return next_frame

    def finish(self, command: Finish) -> None:
        self._emit(self._stream.finish(), total=frames_for_samples(self.samples_fed))
        if command.utterance is not None:
            self._writer.write_utterance_end(command.utterance)

    def _record(self, samples: np.ndarray, utterance: int) -> None:
        if self._spans and self._spans[-1][1:] == (self.samples_fed, utterance):
            self._spans[-1] = (self._spans[-1][0], self.samples_fed + len(samples), utterance)
        else:
            self._spans.append((self.samples_fed, self.samples_fed + len(samples), utterance))
        self.samples_fed += len(samples)
        if self._echo is not None:
            self._echo = np.concatenate([self._echo, samples.astype(np.float32, copy=False)])

    def _utterance_of(self, frame: VideoFrame) -> int:
        """The utterance of the span holding the frame's first sample (frames come in order)."""
        while len(self._spans) > 1 and self._spans[0][1] <= frame.sample_start:
            self._spans.pop(0)
        start, end, utterance = self._spans[0] if self._spans else (0, 0, 0)
        return utterance if start <= frame.sample_start < end else 0

    def _emit(self, frames: Iterable[VideoFrame], total: int | None = None) -> None:
        for frame in timed_frames(frames, self._metrics, self._cancel, total):
            utterance = self._utterance_of(frame)
            if utterance == 0 and not frame.idle:
                frame = dataclasses.replace(frame, idle=True)  # silence fed as idle, whatever the backend
            if self._echo is not None:
                self._writer.write_audio(frame, encode_pcm16(self._echo_slice(frame)), utterance=utterance)
            due = (
                frame_due_at(self._clock_origin, frame.index) + SKIP_GRACE_S if self._clock_origin is not None else None
            )
            last = total is not None and frame.index == total - 1
            self.frames += self._writer.write_frame(frame, last=last, deadline=due, utterance=utterance)
            self.idle_frames += frame.idle

    def _echo_slice(self, frame: VideoFrame) -> np.ndarray:
        echo = self._echo
        assert echo is not None  # only called when the session echoes audio
        lo = frame.sample_start - self._echo_base
        out = audio_window(echo, lo, frame.sample_count)
        drop = max(0, min(lo + frame.sample_count, len(echo)))  # frames come in order
        self._echo = echo[drop:]
        self._echo_base += drop
        return out


def render_live(
    stream: AnimationStream,
    inbox: Inbox,
    writer: WebSocketFrameWriter,
    *,
    metrics: ServerMetrics,
    cancel: threading.Event,
    echo_audio: bool,
    rewound: Callable[[int], None],
) -> LiveResult:
    """Run the commands from ``inbox`` on ``stream`` until :class:`Finish` (or cancellation).

    ``rewound(next_frame)`` is called (in this thread) after each :class:`Interrupt`.
    """
    pipe = LivePipeline(stream, writer, metrics, cancel, echo_audio)
    with contextlib.suppress(StreamAborted):
        while not cancel.is_set():
            command = inbox.get(_POLL_S)
            if isinstance(command, FeedAudio):
                pipe.feed(command)
            elif isinstance(command, Idle):
                pipe.idle(command)
            elif isinstance(command, Flush):
                pipe.flush(command)
            elif isinstance(command, Interrupt):
                rewound(pipe.interrupt())
            elif isinstance(command, Finish):
                pipe.finish(command)
                break
    return LiveResult(pipe.frames, pipe.idle_frames)

"""WebSocketFrameWriter: the only code that sends on a session's socket.

Producer side (the session's render thread) calls :meth:`write_frame` (and
:meth:`write_audio` for the audio echo); a frame is JPEG-encoded on the shared
encoder pool, so rendering frame k+1 overlaps encoding frame k. Consumer side
(:meth:`run`, an asyncio task) sends messages in order. At most ``queue_size``
video frames are in flight (queued, encoding or being sent), so memory stays
bounded. The overflow policy says what happens when they are all taken:

* file mode (:meth:`begin_file`): the producer waits; no frame is ever dropped for a
  slow client;
* live mode (:meth:`begin_live`): the producer waits only until the frame is due (its
  ``deadline``, from the session's media clock); a frame still without a slot then is
  skipped (not encoded, not sent) and counted in :attr:`frames_skipped`. A client that
  keeps up never loses a frame to a burst (audio sent ahead of real time), and a stalled
  one never makes the pipeline fall behind real time. The last frame is never skipped. A frame
  the backend shed (``VideoFrame.shed``: the session fell behind on the GPU) is counted the same.

Control messages and audio-echo messages share the queue, so they keep their order
relative to frames, and are never dropped (an echo is 1.3 KB per frame, and a live
session's length is capped by ``max_audio_seconds``), except on a live session's interrupt:
:meth:`discard_utterances` drops the unsent frames and echoes of the interrupted utterances, the
queued ones and any the producer writes later, and frees their slots.

Live sessions learn what was sent through two hooks given to :meth:`begin_live`, called on the event
loop: one when a frame is handed to the socket, one when the writer reaches the end mark the producer
put after an utterance's frames; what they return is sent right after.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import threading
import time
from typing import Callable, Iterable, Union

from pydantic import BaseModel
from starlette.websockets import WebSocket

from ditto.backends.base import VideoFrame
from ditto.media.jpeg import encode_jpeg
from ditto.protocol.frames import FrameFlags, FrameHeader, FrameKind, pack_frame, stamp_sent
from ditto.server.metrics import ServerMetrics


class StreamAborted(Exception):
    """The writer was aborted (client gone, stop requested): the producer must stop."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Echo:
    utterance: int
    message: bytearray


@dataclasses.dataclass(frozen=True, slots=True)
class _Frame:
    header: FrameHeader
    pending: "concurrent.futures.Future[bytearray]"  # the packed message, being encoded


@dataclasses.dataclass(frozen=True, slots=True)
class _UtteranceEnd:
    utterance: int


# JSON text, audio echo, pending frame, end of an utterance's frames, end marker
_Item = Union[str, _Echo, _Frame, _UtteranceEnd, None]

_SLOT_POLL_S = 0.05  # a waiting producer re-checks for abort this often


class WebSocketFrameWriter:
    def __init__(
        self,
        websocket: WebSocket,
        loop: asyncio.AbstractEventLoop,
        *,
        encoder: concurrent.futures.Executor,
        jpeg_quality: int,
        queue_size: int,
        metrics: ServerMetrics,
    ) -> None:
        self._ws = websocket
        self._loop = loop
        self._encoder = encoder
        self._quality = jpeg_quality
        self._metrics = metrics
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()  # bounded by the frame slots below
        self._frame_slots = threading.Semaphore(queue_size)
        self._aborted = False
        self.live = False  # set once by begin_file / begin_live, at start_streaming
        self._discarded_through = 0  # live: frames of utterances 1..this are dropped (interrupted)
        self._on_frame_sent: Callable[[FrameHeader], Iterable[BaseModel]] = lambda header: ()
        self._on_utterance_end: Callable[[int], Iterable[BaseModel]] = lambda utterance: ()
        self.frames_sent = 0
        self.frames_skipped = 0
        self.frames_discarded = 0  # queued, then dropped by an interrupt
        self.bytes_sent = 0
        self.stream_started_at: float | None = None  # monotonic time of start_streaming (live: first audio)
        self.first_frame_sent_at: float | None = None

    # --- the session's mode, set once at start_streaming (errors may be sent before it) ----------

    def begin_file(self, started_at: float) -> None:
        """File mode: no frame is ever skipped; the first-frame latency counts from ``started_at``."""
        self.stream_started_at = started_at

    def begin_live(
        self,
        on_frame_sent: Callable[[FrameHeader], Iterable[BaseModel]],
        on_utterance_end: Callable[[int], Iterable[BaseModel]],
    ) -> None:
        """Live mode: late frames are skipped for a slow client; the hooks (called on the event loop)
        return what to send right after a frame / an utterance's end mark; the clock starts with
        :meth:`start_clock`."""
        self.live = True
        self._on_frame_sent, self._on_utterance_end = on_frame_sent, on_utterance_end

    def start_clock(self, at: float) -> None:
        """Live: the first audio arrived at ``at``; the first-frame latency counts from there."""
        if self.stream_started_at is None:
            self.stream_started_at = at

    # --- producer side (any thread but the event loop's) ------------------------------------

    def write_frame(
        self, frame: VideoFrame, *, last: bool = False, deadline: float | None = None, utterance: int = 0
    ) -> bool:
        """Queue one frame (of live ``utterance``; 0: idle or file mode) for encoding and sending.

        File mode blocks while ``queue_size`` frames are in flight; live mode waits at most
        until ``deadline`` (``time.monotonic()`` seconds; None: not at all), then skips the
        frame (unless ``last``).

        Returns:
            True when the frame was queued, False when it was skipped (live mode) or its
            utterance was interrupted.
        Raises:
            StreamAborted: the session is over; stop producing.
        """
        if self._aborted:
            raise StreamAborted()
        if self._is_discarded(utterance):
            return False
        if frame.shed or not self._take_slot(None if (last or not self.live) else (deadline or 0.0)):
            self.frames_skipped += 1
            self._metrics.frames_skipped.inc()
            return False
        flags = FrameFlags.LAST if last else FrameFlags.NONE
        if frame.idle:
            flags |= FrameFlags.IDLE
        header = FrameHeader(
            frame.index, frame.pts_ms, frame.sample_start, frame.sample_count, flags, utterance=utterance
        )
        self._put_threadsafe(_Frame(header, self._encoder.submit(self._encode, header, frame)))
        return True

    def write_audio(self, frame: VideoFrame, pcm16: bytes, *, utterance: int = 0) -> None:
        """Queue the audio echo of ``frame`` (16 kHz mono int16 bytes); never skipped, dropped only
        with its interrupted utterance.

        Raises:
            StreamAborted: the session is over; stop producing.
        """
        if self._aborted:
            raise StreamAborted()
        if self._is_discarded(utterance):
            return
        flags = FrameFlags.IDLE if frame.idle else FrameFlags.NONE
        header = FrameHeader(
            frame.index, frame.pts_ms, frame.sample_start, len(pcm16) // 2, flags, FrameKind.PCM16, utterance
        )
        self._put_threadsafe(_Echo(utterance, pack_frame(header, pcm16)))

    def write_utterance_end(self, utterance: int) -> None:
        """Mark the end of ``utterance``'s frames (call after its last one was written): the
        writer calls ``on_utterance_end`` when it gets there.

        Raises:
            StreamAborted: the session is over; stop producing.
        """
        if self._aborted:
            raise StreamAborted()
        self._put_threadsafe(_UtteranceEnd(utterance))

    def _is_discarded(self, utterance: int) -> bool:
        return 0 < utterance <= self._discarded_through

    def _take_slot(self, deadline: float | None) -> bool:
        """A frame slot; waits until ``deadline`` (monotonic s), forever when None."""
        while True:
            wait = _SLOT_POLL_S if deadline is None else min(_SLOT_POLL_S, deadline - time.monotonic())
            if wait <= 0:
                return self._frame_slots.acquire(blocking=False)
            if self._frame_slots.acquire(timeout=wait):
                return True
            if self._aborted:
                raise StreamAborted()

    def _put_threadsafe(self, item: _Item) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed: the session is long gone
            raise StreamAborted() from None

    def _encode(self, header: FrameHeader, frame: VideoFrame) -> bytearray:
        if frame.jpeg is not None:  # encoded by the backend (on the GPU, at our quality)
            return pack_frame(header, frame.jpeg)
        assert frame.image is not None  # a frame carries its JPEG or its image
        started = time.perf_counter()
        payload = encode_jpeg(frame.image, self._quality)
        self._metrics.frame_encode.observe(time.perf_counter() - started)
        return pack_frame(header, payload)

    # --- event-loop side -------------------------------------------------------------------

    async def send_control(self, message: BaseModel) -> None:
        """Queue a JSON control message behind the frames already queued."""
        self.queue_control(message)

    def queue_control(self, message: BaseModel) -> None:
        """:meth:`send_control` for callers that cannot await (event loop only)."""
        self._queue.put_nowait(message.model_dump_json())

    def discard_utterances(self, through: int) -> None:
        """Interrupt: drop every unsent frame, echo and end mark of utterances ``1..through``, those
        queued now (their slots are freed) and those written later. Call from the event loop."""
        self._discarded_through = max(self._discarded_through, through)
        kept = []
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if self._is_stale(item):
                self._drop(item)
            else:
                kept.append(item)
        for item in kept:
            self._queue.put_nowait(item)

    def _is_stale(self, item: _Item) -> bool:
        utterance = (
            item.header.utterance
            if isinstance(item, _Frame)
            else item.utterance
            if isinstance(item, (_Echo, _UtteranceEnd))
            else 0
        )
        return self._is_discarded(utterance)

    def _drop(self, item: _Item) -> None:
        if isinstance(item, _Frame):
            item.pending.cancel()
            self._frame_slots.release()
            self.frames_discarded += 1

    async def run(self) -> None:
        """Send queued messages until :meth:`finish` is called. Run as a task."""
        while True:
            item = await self._queue.get()
            if item is None:
                return
            if isinstance(item, str):
                await self._ws.send_text(item)
                continue
            if self._is_stale(item):  # written before the interrupt, queued after it
                self._drop(item)
                continue
            if isinstance(item, _UtteranceEnd):
                await self._send_controls(self._on_utterance_end(item.utterance))
                continue
            if isinstance(item, _Echo):
                await self._send_binary(item.message)
                self.bytes_sent += len(item.message)
                self._metrics.bytes_sent.inc(len(item.message))
                continue
            try:
                data = await asyncio.wrap_future(item.pending)
                if self._is_stale(item):  # interrupted while it was being encoded: never sent
                    self.frames_discarded += 1
                    continue
                after = self._on_frame_sent(item.header)
                await self._send_binary(data)
            finally:
                self._frame_slots.release()
            await self._send_controls(after)
            self.frames_sent += 1
            self.bytes_sent += len(data)
            self._metrics.frames_sent.inc()
            self._metrics.bytes_sent.inc(len(data))
            if self.first_frame_sent_at is None:
                self.first_frame_sent_at = time.monotonic()
                if self.stream_started_at is not None:
                    self._metrics.first_frame_latency.observe(self.first_frame_sent_at - self.stream_started_at)

    async def _send_controls(self, messages: Iterable[BaseModel]) -> None:
        for message in messages:
            await self._ws.send_text(message.model_dump_json())

    async def _send_binary(self, message: bytearray) -> None:
        await self._ws.send_bytes(bytes(stamp_sent(message, time.time_ns() // 1000)))

    async def finish(self) -> None:
        """Ask :meth:`run` to return once everything queued so far is sent."""
        self._queue.put_nowait(None)

    def abort(self) -> None:
        """Stop for good: discard queued frames and release a producer blocked in :meth:`write_frame`.

        Call from the event loop after the :meth:`run` task is done or cancelled.
        """
        self._aborted = True
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, _Frame):
                item.pending.cancel()
                self._frame_slots.release()

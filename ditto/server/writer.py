"""WebSocketFrameWriter: the only code that sends on a session's socket.

Producer side (the session's render thread) calls :meth:`write_frame` (and
:meth:`write_audio` for the audio echo); a frame is JPEG-encoded on the shared
encoder pool, so rendering frame k+1 overlaps encoding frame k. Consumer side
(:meth:`run`, an asyncio task) sends messages in order. At most ``queue_size``
video frames are in flight (queued, encoding or being sent), so memory stays
bounded. The overflow policy says what happens when they are all taken:

* file mode (``live=False``): the producer waits; no frame is ever dropped for a
  slow client;
* live mode (``live=True``): the producer waits only until the frame is due (its
  ``deadline``, from the session's media clock); a frame still without a slot then is
  skipped (not encoded, not sent) and counted in :attr:`frames_skipped`. A client that
  keeps up never loses a frame to a burst (audio sent ahead of real time), and a stalled
  one never makes the pipeline fall behind real time. The last frame is never skipped. A frame
  the backend shed (``VideoFrame.shed``: the session fell behind on the GPU) is counted the same.

Control messages and audio-echo messages share the queue, so they keep their order
relative to frames, and are never dropped (an echo is 1.3 KB per frame, and a live
session's length is capped by ``max_audio_seconds``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from typing import Union

from pydantic import BaseModel
from starlette.websockets import WebSocket

from ditto.backends.base import VideoFrame
from ditto.media.jpeg import encode_jpeg
from ditto.protocol.frames import FrameFlags, FrameHeader, FrameKind, pack_frame, stamp_sent
from ditto.server.metrics import ServerMetrics


class StreamAborted(Exception):
    """The writer was aborted (client gone, stop requested): the producer must stop."""


# JSON text, audio-echo message, pending frame message, end marker
_Item = Union[str, bytearray, "concurrent.futures.Future[bytearray]", None]

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
        live: bool = False,
    ) -> None:
        self._ws = websocket
        self._loop = loop
        self._encoder = encoder
        self._quality = jpeg_quality
        self._metrics = metrics
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()  # bounded by the frame slots below
        self._frame_slots = threading.Semaphore(queue_size)
        self._aborted = False
        self.live = live
        self.frames_sent = 0
        self.frames_skipped = 0
        self.bytes_sent = 0
        self.stream_started_at: float | None = None  # monotonic time of start_streaming (live: first audio)
        self.first_frame_sent_at: float | None = None

    # --- producer side (any thread but the event loop's) ------------------------------------

    def write_frame(self, frame: VideoFrame, *, last: bool = False, deadline: float | None = None) -> bool:
        """Queue one frame for encoding and sending.

        File mode blocks while ``queue_size`` frames are in flight; live mode waits at most
        until ``deadline`` (``time.monotonic()`` seconds; None: not at all), then skips the
        frame (unless ``last``).

        Returns:
            True when the frame was queued, False when it was skipped (live mode).
        Raises:
            StreamAborted: the session is over; stop producing.
        """
        if self._aborted:
            raise StreamAborted()
        if frame.shed or not self._take_slot(None if (last or not self.live) else (deadline or 0.0)):
            self.frames_skipped += 1
            self._metrics.frames_skipped.inc()
            return False
        flags = FrameFlags.LAST if last else FrameFlags.NONE
        if frame.idle:
            flags |= FrameFlags.IDLE
        header = FrameHeader(frame.index, frame.pts_ms, frame.sample_start, frame.sample_count, flags)
        pending = self._encoder.submit(self._encode, header, frame)
        self._put_threadsafe(pending)
        return True

    def write_audio(self, frame: VideoFrame, pcm16: bytes) -> None:
        """Queue the audio echo of ``frame`` (16 kHz mono int16 bytes); never skipped.

        Raises:
            StreamAborted: the session is over; stop producing.
        """
        if self._aborted:
            raise StreamAborted()
        flags = FrameFlags.IDLE if frame.idle else FrameFlags.NONE
        header = FrameHeader(frame.index, frame.pts_ms, frame.sample_start, len(pcm16) // 2, flags, FrameKind.PCM16)
        self._put_threadsafe(pack_frame(header, pcm16))

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
        started = time.perf_counter()
        payload = encode_jpeg(frame.image, self._quality)
        self._metrics.frame_encode.observe(time.perf_counter() - started)
        return pack_frame(header, payload)

    # --- event-loop side -------------------------------------------------------------------

    async def send_control(self, message: BaseModel) -> None:
        """Queue a JSON control message behind the frames already queued."""
        self._queue.put_nowait(message.model_dump_json())

    async def run(self) -> None:
        """Send queued messages until :meth:`finish` is called. Run as a task."""
        while True:
            item = await self._queue.get()
            if item is None:
                return
            if isinstance(item, str):
                await self._ws.send_text(item)
                continue
            if isinstance(item, bytearray):  # audio echo
                await self._send_binary(item)
                self.bytes_sent += len(item)
                self._metrics.bytes_sent.inc(len(item))
                continue
            try:
                data = await asyncio.wrap_future(item)
                await self._send_binary(data)
            finally:
                self._frame_slots.release()
            self.frames_sent += 1
            self.bytes_sent += len(data)
            self._metrics.frames_sent.inc()
            self._metrics.bytes_sent.inc(len(data))
            if self.first_frame_sent_at is None:
                self.first_frame_sent_at = time.monotonic()
                if self.stream_started_at is not None:
                    self._metrics.first_frame_latency.observe(self.first_frame_sent_at - self.stream_started_at)

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
            if isinstance(item, concurrent.futures.Future):
                item.cancel()
                self._frame_slots.release()

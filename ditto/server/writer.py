"""WebSocketFrameWriter: the only code that sends on a session's socket.

Producer side (the session's render thread) calls :meth:`write_frame`; the frame
is JPEG-encoded on the shared encoder pool, so rendering frame k+1 overlaps
encoding frame k. Consumer side (:meth:`run`, an asyncio task) sends messages in
order. Between them sits a bounded queue: at most ``queue_size`` frames are in
flight, so memory stays bounded; when it is full the producer waits (file mode:
no frame is ever dropped for a slow client). Control messages share the queue, so
they keep their order relative to frames, and are never dropped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import Union

from pydantic import BaseModel
from starlette.websockets import WebSocket

from ditto.backends.base import VideoFrame
from ditto.media.jpeg import encode_jpeg
from ditto.protocol.frames import FrameFlags, FrameHeader, pack_frame
from ditto.server.metrics import ServerMetrics


class StreamAborted(Exception):
    """The writer was aborted (client gone, stop requested): the producer must stop."""


_Item = Union[str, "concurrent.futures.Future[bytes]", None]  # JSON text, pending frame bytes, end marker


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
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=queue_size)
        self._aborted = False
        self.frames_sent = 0
        self.bytes_sent = 0
        self.stream_started_at: float | None = None  # monotonic time of start_streaming, for latency
        self.first_frame_sent_at: float | None = None

    # --- producer side (any thread but the event loop's) ------------------------------------

    def write_frame(self, frame: VideoFrame, *, last: bool = False) -> None:
        """Queue one frame for encoding and sending; blocks while the queue is full.

        Raises:
            StreamAborted: the session is over; stop producing.
        """
        if self._aborted:
            raise StreamAborted()
        flags = FrameFlags.LAST if last else FrameFlags.NONE
        if frame.idle:
            flags |= FrameFlags.IDLE
        header = FrameHeader(frame.index, frame.pts_ms, frame.sample_start, frame.sample_count, flags)
        pending = self._encoder.submit(self._encode, header, frame)
        asyncio.run_coroutine_threadsafe(self._queue.put(pending), self._loop).result()
        if self._aborted:
            raise StreamAborted()

    def _encode(self, header: FrameHeader, frame: VideoFrame) -> bytes:
        started = time.perf_counter()
        payload = encode_jpeg(frame.image, self._quality)
        self._metrics.frame_encode.observe(time.perf_counter() - started)
        return pack_frame(header, payload)

    # --- event-loop side -------------------------------------------------------------------

    async def send_control(self, message: BaseModel) -> None:
        """Queue a JSON control message behind the frames already queued."""
        await self._queue.put(message.model_dump_json())

    async def run(self) -> None:
        """Send queued messages until :meth:`finish` is called. Run as a task."""
        while True:
            item = await self._queue.get()
            if item is None:
                return
            if isinstance(item, str):
                await self._ws.send_text(item)
                continue
            data = await asyncio.wrap_future(item)
            await self._ws.send_bytes(data)
            self.frames_sent += 1
            self.bytes_sent += len(data)
            self._metrics.frames_sent.inc()
            self._metrics.bytes_sent.inc(len(data))
            if self.first_frame_sent_at is None:
                self.first_frame_sent_at = time.monotonic()
                if self.stream_started_at is not None:
                    self._metrics.first_frame_latency.observe(self.first_frame_sent_at - self.stream_started_at)

    async def finish(self) -> None:
        """Ask :meth:`run` to return once everything queued so far is sent."""
        await self._queue.put(None)

    def abort(self) -> None:
        """Stop for good: discard queued frames and release a producer blocked in :meth:`write_frame`.

        Call from the event loop after the :meth:`run` task is done or cancelled.
        """
        self._aborted = True
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, concurrent.futures.Future):
                item.cancel()

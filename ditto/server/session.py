"""One object per WebSocket connection: protocol handling, media preparation and the
render loop (in a worker thread), with every outgoing message going through the
session's :class:`~ditto.server.writer.WebSocketFrameWriter`."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import itertools
import logging
import threading
import time

import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from ditto import FPS
from ditto.backends.base import AnimatorBackend, Avatar
from ditto.errors import CloseCode, DittoError, ErrorCode, MediaError, ProtocolError, SessionTimeout
from ditto.media.audio import Audio, decode_audio
from ditto.media.image import decode_image
from ditto.media.paths import resolve_media_path
from ditto.protocol import messages as msg
from ditto.server import LOGGER_NAME
from ditto.server.avatars import AvatarCache
from ditto.server.metrics import ServerMetrics
from ditto.server.writer import StreamAborted, WebSocketFrameWriter
from ditto.settings import Settings

logger = logging.getLogger(LOGGER_NAME)


@dataclasses.dataclass(frozen=True, slots=True)
class SessionContext:
    """What every session shares: built once in the app's lifespan."""

    settings: Settings
    backend: AnimatorBackend
    avatars: AvatarCache
    metrics: ServerMetrics
    render_pool: concurrent.futures.ThreadPoolExecutor  # one render loop per session
    encode_pool: concurrent.futures.ThreadPoolExecutor  # JPEG encoding, shared


@dataclasses.dataclass(frozen=True, slots=True)
class _Job:
    audio: Audio
    avatar: Avatar
    seed: int
    audio_name: str
    source_name: str


class _ClientStopped(Exception):
    """The client sent ``stop``."""


class Session:
    def __init__(self, websocket: WebSocket, client_id: str, context: SessionContext) -> None:
        self.ws = websocket
        self.client_id = client_id
        self.ctx = context
        self.closed = asyncio.Event()
        self._cancel = threading.Event()
        self._shutdown_requested = False
        self._task: asyncio.Task | None = None
        self._render: asyncio.Future | None = None  # the render loop, awaited on every exit

    def request_shutdown(self) -> None:
        """Server shutdown: end this session with close code 1012."""
        self._shutdown_requested = True
        self._cancel.set()
        if self._task is not None:
            self._task.cancel()

    async def run(self) -> None:
        """Serve the connection until the stream ends, fails, or the client leaves."""
        self._task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        writer = WebSocketFrameWriter(
            self.ws, loop, encoder=self.ctx.encode_pool, jpeg_quality=self.ctx.settings.jpeg_quality,
            queue_size=self.ctx.settings.frame_queue_size, metrics=self.ctx.metrics)
        sender = asyncio.create_task(writer.run())
        close_code = CloseCode.NORMAL
        try:
            start = await self._wait_for_start()
            if start is None:  # stop before start: nothing to do
                await writer.send_control(msg.StreamingCompleted(frames_sent=0))
            else:
                await self._stream(start, writer, sender)
            await writer.finish()
            await sender
        except DittoError as exc:
            close_code = exc.close_code
            await self._report(exc, writer, sender)
        except asyncio.CancelledError:
            close_code = CloseCode.SERVICE_RESTART if self._shutdown_requested else CloseCode.GOING_AWAY
            if self._shutdown_requested:
                await self._report(DittoError("the server is shutting down", code=ErrorCode.SHUTTING_DOWN),
                                   writer, sender)
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:  # client went away mid-send
            logger.info("Client %s disconnected (%s)", self.client_id, type(exc).__name__)
        except Exception as exc:
            logger.exception("Session %s failed", self.client_id)
            close_code = CloseCode.INTERNAL_ERROR
            await self._report(DittoError(f"internal error: {type(exc).__name__}"), writer, sender)
        finally:
            self._cancel.set()
            writer.abort()
            sender.cancel()
            if self._render is not None:
                await asyncio.wait({self._render})
            await self._close(close_code)
            self.closed.set()

    async def _stream(self, start: msg.StartStreaming, writer: WebSocketFrameWriter,
                      sender: asyncio.Task) -> None:
        """Prepare the job and render it, listening to the client meanwhile."""
        loop = asyncio.get_running_loop()
        writer.stream_started_at = time.monotonic()
        logger.info("Starting streaming for client %s", self.client_id)
        job = await loop.run_in_executor(self.ctx.render_pool, self._prepare, start)
        await writer.send_control(msg.StreamingStarted(
            client_id=self.client_id, backend=self.ctx.backend.name,
            audio=job.audio_name, source=job.source_name))
        await writer.send_control(msg.Metadata(
            duration_s=round(job.audio.duration_s, 3), total_frames=job.audio.total_frames, fps=FPS,
            width=job.avatar.width, height=job.avatar.height))
        render = self._render = loop.run_in_executor(self.ctx.render_pool, self._render_frames, job, writer)
        receiver = asyncio.create_task(self._receive_while_streaming())
        try:
            await asyncio.wait({render, receiver, sender}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            receiver.cancel()
        if sender.done():
            raise WebSocketDisconnect(CloseCode.GOING_AWAY)  # the socket failed under the writer
        if not render.done():
            # stop, a second start_streaming, a bad message or a disconnect: end the render loop first
            self._cancel.set()
            await asyncio.wait({render})
            error = receiver.exception() if receiver.done() and not receiver.cancelled() else None
            if error is not None and not isinstance(error, _ClientStopped):
                raise error
        frames = render.result()  # re-raises a backend failure
        await writer.send_control(msg.StreamingCompleted(frames_sent=frames))
        logger.info("Streaming completed for client %s: %d frames", self.client_id, frames)

    # --- protocol ------------------------------------------------------------------------------

    async def _receive_text(self, timeout_s: float | None) -> str:
        try:
            message = await asyncio.wait_for(self.ws.receive(), timeout_s)
        except asyncio.TimeoutError:
            raise SessionTimeout(f"no message from the client for {timeout_s:.0f} s") from None
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", CloseCode.NORMAL))
        text = message.get("text")
        if text is None:
            raise ProtocolError("binary messages are not accepted here: send JSON control messages")
        if len(text) > self.ctx.settings.max_upload_bytes:
            raise ProtocolError(
                f"message of {len(text) / 1e6:.1f} MB exceeds the server's limit of "
                f"{self.ctx.settings.max_upload_bytes / 1e6:.1f} MB", code=ErrorCode.UPLOAD_TOO_LARGE)
        return text

    async def _wait_for_start(self) -> msg.StartStreaming | None:
        """The ``start_streaming`` message, or None if the client sent ``stop`` first."""
        message = msg.parse_client_message(await self._receive_text(self.ctx.settings.idle_timeout_s))
        return None if isinstance(message, msg.Stop) else message

    async def _receive_while_streaming(self) -> None:
        """Returns or raises when streaming must stop early."""
        while True:
            message = msg.parse_client_message(await self._receive_text(None))
            if isinstance(message, msg.Stop):
                logger.info("Client %s asked to stop", self.client_id)
                raise _ClientStopped()
            raise ProtocolError("start_streaming was already received in this session",
                                code=ErrorCode.INVALID_STATE)

    # --- work in the render pool ---------------------------------------------------------------

    def _read_media(self, ref: msg.UploadedFile | msg.ServerPath) -> tuple[bytes, str]:
        if isinstance(ref, msg.UploadedFile):
            return ref.data, ref.filename
        path = resolve_media_path(self.ctx.settings.media_root, ref.path)
        size = path.stat().st_size
        if size > self.ctx.settings.max_upload_bytes:
            raise MediaError(f"{ref.path} is {size / 1e6:.1f} MB, over the limit of "
                             f"{self.ctx.settings.max_upload_bytes / 1e6:.1f} MB", code=ErrorCode.UPLOAD_TOO_LARGE)
        return path.read_bytes(), ref.path

    def _prepare(self, start: msg.StartStreaming) -> _Job:
        s = self.ctx.settings
        audio_bytes, audio_name = self._read_media(start.audio)
        image_bytes, source_name = self._read_media(start.source)
        audio = decode_audio(audio_bytes, max_seconds=s.max_audio_seconds, name=audio_name)
        image = decode_image(image_bytes, max_pixels=s.max_image_pixels, max_size=s.max_size, name=source_name)
        avatar = self.ctx.avatars.get_or_register(image)
        seed = start.seed if start.seed is not None else int(np.random.default_rng().integers(2**31))
        return _Job(audio, avatar, seed, audio_name, source_name)

    def _render_frames(self, job: _Job, writer: WebSocketFrameWriter) -> int:
        """Render every frame into the writer; returns the number of frames produced."""
        total = job.audio.total_frames
        stream = self.ctx.backend.open_stream(job.avatar, seed=job.seed)
        produced = 0
        try:
            frames = itertools.chain(stream.feed(job.audio.samples), stream.finish())
            while not self._cancel.is_set():
                started = time.perf_counter()
                frame = next(frames, None)
                if frame is None or frame.index >= total:
                    break
                self.ctx.metrics.frame_render.observe(time.perf_counter() - started)
                writer.write_frame(frame, last=frame.index == total - 1)
                produced += 1
        except StreamAborted:
            pass
        finally:
            stream.close()
        return produced

    # --- ending --------------------------------------------------------------------------------

    async def _report(self, exc: DittoError, writer: WebSocketFrameWriter, sender: asyncio.Task) -> None:
        """Send a final ``error`` after what is already queued, as far as the socket allows."""
        logger.warning("Client %s: %s: %s", self.client_id, exc.code.value, exc.message)
        self.ctx.metrics.errors.labels(exc.code.value).inc()
        self._cancel.set()
        if sender.done():
            return
        try:
            await writer.send_control(msg.Error(code=exc.code, message=exc.message))
            await writer.finish()
            await asyncio.wait_for(asyncio.shield(sender), timeout=5.0)
        except Exception:  # the client is gone or too slow: nothing more to tell it
            pass

    async def _close(self, code: CloseCode) -> None:
        if self.ws.application_state == WebSocketState.CONNECTED:
            try:
                await self.ws.close(code=int(code))
            except Exception:
                pass


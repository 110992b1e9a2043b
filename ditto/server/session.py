"""One object per WebSocket connection: protocol handling, media preparation and the
render loop (in a worker thread), with every outgoing message going through the
session's :class:`~ditto.server.writer.WebSocketFrameWriter`.

Two modes, chosen by ``start_streaming``:

* file mode: the whole recording comes in ``start_streaming``; frames are rendered as
  fast as the client takes them (the writer waits, nothing is dropped);
* live mode (``live: true``): audio arrives in chunks; a receiver task decodes them into a
  bounded inbox, and one incremental pipeline per session (resampler -> backend stream ->
  writer, in the render thread) emits each frame as soon as its audio (plus the backend's
  look-ahead) is in. When audio is overdue by ``live_idle_after_s`` and no ``end_of_audio``
  came, the pipeline feeds silence at 25 fps (frames flagged IDLE) so the face idles
  instead of freezing. A client that falls behind has video frames skipped (counted).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import itertools
import logging
import queue
import threading
import time

import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from ditto import FPS, SAMPLE_RATE_HZ, SAMPLES_PER_FRAME
from ditto.backends.base import AnimationStream, AnimatorBackend, Avatar, VideoFrame
from ditto.errors import CloseCode, DittoError, ErrorCode, MediaError, ProtocolError, SessionTimeout
from ditto.media.audio import Audio, decode_audio
from ditto.media.image import decode_image
from ditto.media.paths import resolve_media_path
from ditto.media.pcm import StreamingResampler, decode_pcm, encode_pcm16
from ditto.protocol import messages as msg
from ditto.protocol.frames import AudioChunkHeader, SampleType
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
    echo_audio: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class _LiveJob:
    avatar: Avatar
    seed: int
    source_name: str
    audio_format: msg.AudioFormat
    echo_audio: bool


@dataclasses.dataclass(frozen=True, slots=True)
class _Chunk:
    samples: np.ndarray  # (n,) float32 mono at the announced sample rate
    received_at: float  # monotonic seconds


@dataclasses.dataclass(frozen=True, slots=True)
class _LiveResult:
    frames: int  # rendered (sent + skipped)
    skipped: int
    idle: int


_END_OF_AUDIO = object()  # inbox marker
_FRAME_S = 1.0 / FPS
SKIP_GRACE_S = 0.2
"""Live: a frame may wait this long past its due time (first audio arrival + the end of its
audio) for the writer before it is skipped; it bounds the latency a backed-up socket adds."""


class _ClientStopped(Exception):
    """The client sent ``stop``."""


class _Inbox:
    """Decoded live audio between the receiver (event loop) and the render thread.

    At most ``capacity`` chunks wait; a full inbox makes the receiver stop reading the
    socket, so a client sending faster than the server renders is slowed by TCP, not
    buffered without bound.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int) -> None:
        self._loop = loop
        self._items: queue.SimpleQueue = queue.SimpleQueue()
        self._slots = asyncio.Semaphore(capacity)
        self.last_arrival: float | None = None  # monotonic time of the newest chunk

    async def put(self, item: object) -> None:
        await self._slots.acquire()
        if isinstance(item, _Chunk):
            self.last_arrival = item.received_at
        self._items.put(item)

    def get(self, timeout_s: float) -> object | None:
        """The next item, or None after ``timeout_s`` (render thread)."""
        try:
            item = self._items.get(timeout=timeout_s)
        except queue.Empty:
            return None
        self._loop.call_soon_threadsafe(self._slots.release)
        return item

    def empty(self) -> bool:
        return self._items.empty()


class _LivePipeline:
    """The render thread's side of a live session: 16 kHz audio -> backend stream -> writer.

    Tracks the audio fed (for the echo and the idle clock) and which sample ranges were
    idle silence, so frames are flagged IDLE whatever the backend.
    """

    def __init__(self, stream: AnimationStream, writer: WebSocketFrameWriter, metrics: ServerMetrics,
                 cancel: threading.Event, echo_audio: bool) -> None:
        self._stream = stream
        self._writer = writer
        self._metrics = metrics
        self._cancel = cancel
        self._echo = np.zeros(0, np.float32) if echo_audio else None
        self._echo_base = 0  # absolute 16 kHz sample of self._echo[0]
        self._idle_spans: list[tuple[int, int]] = []  # [start, end) 16 kHz samples fed as idle silence
        self.samples_fed = 0
        self.frames = 0
        self.idle_frames = 0
        self.t0: float | None = None  # monotonic time of the first audio: the media clock's zero

    @property
    def fed_s(self) -> float:
        return self.samples_fed / SAMPLE_RATE_HZ

    def feed(self, samples: np.ndarray) -> None:
        if not len(samples):
            return
        self._record(samples)
        self._emit(self._stream.feed(samples))

    def idle_until(self, media_s: float, max_frames: int = FPS) -> None:
        """Feed silence until ``media_s`` seconds of audio were fed (at most ``max_frames`` frames)."""
        partial = self.samples_fed % SAMPLES_PER_FRAME
        if partial:  # finish the current frame with silence first (it still holds speech)
            self.feed(np.zeros(SAMPLES_PER_FRAME - partial, np.float32))
        n = min(max_frames, int(np.ceil((media_s - self.fed_s) * FPS)))
        if n <= 0:
            return
        start = self.samples_fed
        self._idle_spans.append((start, start + n * SAMPLES_PER_FRAME))
        self._record(np.zeros(n * SAMPLES_PER_FRAME, np.float32))
        idle = getattr(self._stream, "idle", None)  # the lite backend's helper; else plain silence
        frames = idle(n) if callable(idle) else self._stream.feed(np.zeros(n * SAMPLES_PER_FRAME, np.float32))
        self._emit(frames)

    def finish(self) -> None:
        self._emit(self._stream.finish(), total=-(-self.samples_fed // SAMPLES_PER_FRAME))

    def _record(self, samples: np.ndarray) -> None:
        self.samples_fed += len(samples)
        if self._echo is not None:
            self._echo = np.concatenate([self._echo, samples.astype(np.float32, copy=False)])

    def _emit(self, frames, total: int | None = None) -> None:
        frames = iter(frames)
        while True:
            if self._cancel.is_set():
                raise StreamAborted()
            started = time.perf_counter()
            frame = next(frames, None)
            if frame is None or (total is not None and frame.index >= total):
                return
            self._metrics.frame_render.observe(time.perf_counter() - started)
            idle = self._is_idle(frame)
            if self._echo is not None:
                self._writer.write_audio(frame, encode_pcm16(self._echo_slice(frame)), idle=idle)
            due = (self.t0 + (frame.sample_start + frame.sample_count) / SAMPLE_RATE_HZ + SKIP_GRACE_S
                   if self.t0 is not None else None)
            self._writer.write_frame(frame, last=total is not None and frame.index == total - 1, idle=idle,
                                     deadline=due)
            self.frames += 1
            self.idle_frames += idle

    def _is_idle(self, frame: VideoFrame) -> bool:
        start, end = frame.sample_start, frame.sample_start + frame.sample_count
        while self._idle_spans and self._idle_spans[0][1] <= start:
            self._idle_spans.pop(0)
        return frame.idle or any(a <= start and end <= b for a, b in self._idle_spans)

    def _echo_slice(self, frame: VideoFrame) -> np.ndarray:
        lo = frame.sample_start - self._echo_base
        out = np.zeros(frame.sample_count, np.float32)
        part = self._echo[max(lo, 0): lo + frame.sample_count]
        out[: len(part)] = part
        drop = max(0, min(lo + frame.sample_count, len(self._echo)))  # frames come in order
        self._echo = self._echo[drop:]
        self._echo_base += drop
        return out


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
        if start.live:
            await self._stream_live(start, writer, sender)
            return
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
        frames = await self._until_rendered(render, receiver, sender)
        await writer.send_control(msg.StreamingCompleted(frames_sent=frames))
        logger.info("Streaming completed for client %s: %d frames", self.client_id, frames)

    async def _stream_live(self, start: msg.StartStreaming, writer: WebSocketFrameWriter,
                           sender: asyncio.Task) -> None:
        """Live mode: prepare the source, then render audio chunks as they arrive."""
        loop = asyncio.get_running_loop()
        writer.live = True
        logger.info("Starting live streaming for client %s", self.client_id)
        job = await loop.run_in_executor(self.ctx.render_pool, self._prepare_live, start)
        await writer.send_control(msg.StreamingStarted(
            client_id=self.client_id, backend=self.ctx.backend.name, audio="live",
            source=job.source_name, live=True))
        await writer.send_control(msg.Metadata(
            duration_s=None, total_frames=None, fps=FPS, width=job.avatar.width, height=job.avatar.height))
        inbox = _Inbox(loop, self.ctx.settings.live_inbox_chunks)
        render = self._render = loop.run_in_executor(
            self.ctx.render_pool, self._render_live, job, inbox, writer)
        receiver = asyncio.create_task(self._receive_live(job.audio_format, inbox))
        result = await self._until_rendered(render, receiver, sender)
        await writer.send_control(msg.StreamingCompleted(
            frames_sent=result.frames - result.skipped, frames_skipped=result.skipped,
            idle_frames=result.idle))
        logger.info("Live streaming completed for client %s: %d frames (%d skipped, %d idle)",
                    self.client_id, result.frames, result.skipped, result.idle)

    async def _until_rendered(self, render: asyncio.Future, receiver: asyncio.Task, sender: asyncio.Task):
        """Wait for the render loop; a stop, error or disconnect seen by the receiver ends it first.

        Returns:
            The render loop's result.
        Raises:
            The receiver's error (not for ``stop``), the render loop's error, or
            WebSocketDisconnect when the socket failed under the writer.
        """
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
        return render.result()  # re-raises a backend failure

    # --- protocol ------------------------------------------------------------------------------

    async def _receive(self, timeout_s: float | None) -> str | bytes:
        """The next text or binary message.

        Raises:
            SessionTimeout: nothing arrived for ``timeout_s`` seconds.
            WebSocketDisconnect: the client left.
        """
        try:
            message = await asyncio.wait_for(self.ws.receive(), timeout_s)
        except asyncio.TimeoutError:
            raise SessionTimeout(f"no message from the client for {timeout_s:g} s") from None
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", CloseCode.NORMAL))
        text = message.get("text")
        return message.get("bytes") or b"" if text is None else text

    async def _receive_text(self, timeout_s: float | None) -> str:
        text = await self._receive(timeout_s)
        if isinstance(text, bytes):
            raise ProtocolError("binary messages are only accepted as audio chunks of a live session, "
                                "after start_streaming")
        if len(text) > self.ctx.settings.max_upload_bytes:
            raise ProtocolError(
                f"message of {len(text) / 1e6:.1f} MB exceeds the server's limit of "
                f"{self.ctx.settings.max_upload_bytes / 1e6:.1f} MB", code=ErrorCode.UPLOAD_TOO_LARGE)
        return text

    async def _wait_for_start(self) -> msg.StartStreaming | None:
        """The ``start_streaming`` message, or None if the client sent ``stop`` first."""
        message = msg.parse_client_message(await self._receive_text(self.ctx.settings.idle_timeout_s))
        if isinstance(message, (msg.AudioChunk, msg.EndOfAudio)):
            raise ProtocolError(f"{message.type} before start_streaming", code=ErrorCode.INVALID_STATE)
        return None if isinstance(message, msg.Stop) else message

    async def _receive_while_streaming(self) -> None:
        """Returns or raises when streaming must stop early."""
        while True:
            message = msg.parse_client_message(await self._receive_text(None))
            if isinstance(message, msg.Stop):
                logger.info("Client %s asked to stop", self.client_id)
                raise _ClientStopped()
            if isinstance(message, (msg.AudioChunk, msg.EndOfAudio)):
                raise ProtocolError(f"{message.type} in a file-mode session (start_streaming without live: true)",
                                    code=ErrorCode.INVALID_STATE)
            raise ProtocolError("start_streaming was already received in this session",
                                code=ErrorCode.INVALID_STATE)

    async def _receive_live(self, fmt: msg.AudioFormat, inbox: _Inbox) -> None:
        """Decode audio chunks into ``inbox`` until ``end_of_audio``, then watch for ``stop``.

        Returns or raises when streaming must stop early: ``stop``, a bad chunk, a chunk
        after ``end_of_audio``, nothing received for ``idle_timeout_s`` before
        ``end_of_audio`` (``timeout``), or more than ``max_audio_seconds`` of audio.
        """
        s = self.ctx.settings
        expected_type = SampleType.from_name(fmt.sample_type)
        ended = False
        samples_in = 0
        while True:
            message = await self._receive(None if ended else s.idle_timeout_s)
            if isinstance(message, bytes):
                if ended:
                    raise ProtocolError("audio chunk after end_of_audio", code=ErrorCode.INVALID_STATE)
                header, pcm = AudioChunkHeader.unpack(message)
                if header.sample_type != expected_type:
                    raise ProtocolError(f"audio chunk of {header.sample_type.name.lower()} samples in a session "
                                        f"announced as {fmt.sample_type}")
            else:
                if len(message) > s.max_upload_bytes:
                    raise ProtocolError("message exceeds the server's upload limit", code=ErrorCode.UPLOAD_TOO_LARGE)
                parsed = msg.parse_client_message(message)
                if isinstance(parsed, msg.Stop):
                    logger.info("Client %s asked to stop", self.client_id)
                    raise _ClientStopped()
                if isinstance(parsed, msg.StartStreaming):
                    raise ProtocolError("start_streaming was already received in this session",
                                        code=ErrorCode.INVALID_STATE)
                if ended:
                    raise ProtocolError(f"{parsed.type} after end_of_audio", code=ErrorCode.INVALID_STATE)
                if isinstance(parsed, msg.EndOfAudio):
                    ended = True
                    await inbox.put(_END_OF_AUDIO)
                    continue
                pcm = parsed.data
            samples = decode_pcm(pcm, sample_type=fmt.sample_type, channels=fmt.channels)
            samples_in += len(samples)
            if samples_in > s.max_audio_seconds * fmt.sample_rate_hz:
                raise MediaError(f"live audio exceeds the server's limit of {s.max_audio_seconds:.0f} s",
                                 code=ErrorCode.AUDIO_TOO_LONG)
            if len(samples):
                await inbox.put(_Chunk(samples, time.monotonic()))

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
        return _Job(audio, avatar, seed, audio_name, source_name, start.echo_audio)

    def _prepare_live(self, start: msg.StartStreaming) -> _LiveJob:
        s = self.ctx.settings
        image_bytes, source_name = self._read_media(start.source)
        image = decode_image(image_bytes, max_pixels=s.max_image_pixels, max_size=s.max_size, name=source_name)
        avatar = self.ctx.avatars.get_or_register(image)
        seed = start.seed if start.seed is not None else int(np.random.default_rng().integers(2**31))
        return _LiveJob(avatar, seed, source_name, start.audio_format, start.echo_audio)

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
                if job.echo_audio:
                    pcm = np.zeros(frame.sample_count, np.float32)
                    part = job.audio.samples[frame.sample_start: frame.sample_start + frame.sample_count]
                    pcm[: len(part)] = part
                    writer.write_audio(frame, encode_pcm16(pcm))
                writer.write_frame(frame, last=frame.index == total - 1)
                produced += 1
        except StreamAborted:
            pass
        finally:
            stream.close()
        return produced

    def _render_live(self, job: _LiveJob, inbox: _Inbox, writer: WebSocketFrameWriter) -> _LiveResult:
        """The live pipeline: chunks from ``inbox`` -> 16 kHz -> backend -> writer, with idling.

        The media clock starts when the first chunk arrives (t0): by wall time ``t`` a
        real-time client has sent ``t - t0`` seconds of audio. Once no chunk is waiting,
        none arrived for ``live_idle_after_s`` and the audio fed is more than that behind
        the clock, silence is fed up to the clock at 25 fps (IDLE frames); audio that comes
        later continues after it. A client sending ahead of real time never idles.
        """
        s = self.ctx.settings
        stream = self.ctx.backend.open_stream(job.avatar, seed=job.seed)
        resampler = StreamingResampler(job.audio_format.sample_rate_hz)
        pipe = _LivePipeline(stream, writer, self.ctx.metrics, self._cancel, job.echo_audio)
        idle_after = s.live_idle_after_s
        t0: float | None = None
        try:
            while not self._cancel.is_set():
                item = inbox.get(_FRAME_S / 2 if t0 is not None else 0.1)
                if item is _END_OF_AUDIO:
                    pipe.feed(resampler.flush())
                    pipe.finish()
                    break
                if isinstance(item, _Chunk):
                    if t0 is None:
                        t0 = pipe.t0 = writer.stream_started_at = item.received_at
                    pipe.feed(resampler.push(item.samples))
                if t0 is not None and inbox.empty():
                    now = time.monotonic()
                    clock_s = now - t0 - idle_after
                    if now - (inbox.last_arrival or t0) > idle_after and clock_s > pipe.fed_s:
                        pipe.idle_until(clock_s)
                if pipe.fed_s > s.max_audio_seconds:
                    raise MediaError(f"live session exceeds the server's limit of {s.max_audio_seconds:.0f} s "
                                     "of audio and idle time", code=ErrorCode.AUDIO_TOO_LONG)
        except StreamAborted:
            pass
        finally:
            stream.close()
        return _LiveResult(pipe.frames, writer.frames_skipped, pipe.idle_frames)

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


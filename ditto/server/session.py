"""One object per WebSocket connection: protocol handling, media preparation, and the
render loop started in a worker thread, with every outgoing message going through the
session's :class:`~ditto.server.writer.WebSocketFrameWriter`.

Two modes, chosen by ``start_streaming``:

* file mode: the whole recording comes in ``start_streaming``; frames are rendered as
  fast as the client takes them (the writer waits, nothing is dropped), by
  :func:`~ditto.server.file_mode.render_file`;
* live mode (``live: true``): audio arrives in chunks, in utterances; a receiver task decodes
  and resamples them and a ticker tells the time to the session's
  :class:`~ditto.server.conversation.Conversation` (the protocol, free of I/O), whose actions
  this module carries out: render commands into a bounded :class:`~ditto.server.live.Inbox` for
  :func:`~ditto.server.live.render_live`, discards and playback events on the writer.
  A client that falls behind has video frames skipped (counted).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import logging
import threading
import time
from typing import Callable, TypeVar

import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected, WebSocketState

from ditto import FPS
from ditto.backends.base import AnimationStream, AnimatorBackend, Avatar, StreamOptions
from ditto.errors import BackendError, CloseCode, DittoError, ErrorCode, MediaError, ProtocolError, SessionTimeout
from ditto.media.audio import Audio, decode_audio
from ditto.media.image import decode_image
from ditto.media.paths import resolve_media_path
from ditto.media.pcm import StreamingResampler, decode_pcm
from ditto.protocol import messages as msg
from ditto.protocol.frames import AudioChunkHeader, SampleType
from ditto.server import LOGGER_NAME
from ditto.server.avatars import AvatarCache
from ditto.server.conversation import (
    Action,
    Conversation,
    ConversationLimits,
    DiscardUnsentFrames,
    DropQueuedAudio,
    Send,
)
from ditto.server.file_mode import render_file
from ditto.server.live import Inbox, render_live
from ditto.server.metrics import ServerMetrics
from ditto.server.sessions import SessionRegistry
from ditto.server.writer import StreamAborted, WebSocketFrameWriter
from ditto.settings import Settings

logger = logging.getLogger(LOGGER_NAME)

_Result = TypeVar("_Result")

_TICK_S = 0.02  # a live session's conversation is told the time this often (half a frame)

CLIENT_LEFT = (WebSocketDisconnect, WebSocketDisconnected, StreamAborted, OSError)
"""What the socket side raises once the client is gone (uvicorn turns websockets' ConnectionClosed into
an OSError). Nothing from the render pool is among them: :meth:`Session._in_render_pool` makes its
failures errors."""


@dataclasses.dataclass(frozen=True, slots=True)
class SessionContext:
    """What every session shares: built once in the app's lifespan."""

    settings: Settings
    backend: AnimatorBackend
    avatars: AvatarCache
    metrics: ServerMetrics
    render_pool: concurrent.futures.ThreadPoolExecutor  # one render loop per session
    encode_pool: concurrent.futures.ThreadPoolExecutor  # JPEG encoding, shared
    registry: SessionRegistry  # admission (live capacity)


@dataclasses.dataclass(frozen=True, slots=True)
class _Job:
    """What ``start_streaming`` asked for, read and checked."""

    avatar: Avatar
    seed: int
    source_name: str
    echo_audio: bool
    audio: Audio | None  # file mode: the whole recording; live: None (it comes in chunks)
    audio_name: str  # display name; "live" in live mode


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
            self.ws,
            loop,
            encoder=self.ctx.encode_pool,
            jpeg_quality=self.ctx.settings.jpeg_quality,
            queue_size=self.ctx.settings.frame_queue_size,
            metrics=self.ctx.metrics,
        )
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
            close_code = CloseCode.GOING_AWAY  # uvicorn gave up waiting for the session
            if self._shutdown_requested:
                error = DittoError("the server is shutting down", code=ErrorCode.SHUTTING_DOWN)
                close_code = error.close_code
                await self._report(error, writer, sender)
        except CLIENT_LEFT as exc:
            logger.info("Client %s disconnected (%s)", self.client_id, type(exc).__name__)
        except Exception as exc:  # a fault of the session's own code
            error = DittoError(f"internal error: {type(exc).__name__}")
            error.__cause__ = exc
            close_code = error.close_code
            await self._report(error, writer, sender)
        finally:
            self._cancel.set()
            writer.abort()
            sender.cancel()
            if self._render is not None:
                await asyncio.wait({self._render})
            await self._close(close_code)
            self.closed.set()

    async def _stream(self, start: msg.StartStreaming, writer: WebSocketFrameWriter, sender: asyncio.Task) -> None:
        """Prepare the job, announce it, then render it while listening to the client."""
        if start.live:
            self.ctx.registry.start_live(self)  # busy past the live sessions the backend keeps real time
            logger.info("Starting live streaming for client %s", self.client_id)
        else:
            writer.begin_file(time.monotonic())
            logger.info("Starting streaming for client %s", self.client_id)
        job = await self._in_render_pool(functools.partial(self._prepare, start))
        await writer.send_control(
            msg.StreamingStarted(
                client_id=self.client_id,
                backend=self.ctx.backend.name,
                audio=job.audio_name,
                source=job.source_name,
                live=start.live,
                server_id=self.ctx.settings.server_name,
            )
        )
        audio = job.audio
        await writer.send_control(
            msg.Metadata(
                duration_s=None if audio is None else round(audio.duration_s, 3),
                total_frames=None if audio is None else audio.total_frames,
                fps=FPS,
                width=job.avatar.width,
                height=job.avatar.height,
            )
        )
        if start.live:
            assert start.audio_format is not None  # StartStreaming requires it in live mode
            await self._stream_live(job, start.audio_format, writer, sender)
        else:
            await self._stream_file(job, writer, sender)

    async def _stream_file(self, job: _Job, writer: WebSocketFrameWriter, sender: asyncio.Task) -> None:
        assert job.audio is not None  # file mode: decoded by _prepare
        render = functools.partial(
            render_file,
            audio=job.audio,
            writer=writer,
            metrics=self.ctx.metrics,
            cancel=self._cancel,
            echo_audio=job.echo_audio,
        )
        frames = await self._until_rendered(
            self._start_render(job, render, live=False), asyncio.create_task(self._receive_while_streaming()), sender
        )
        await writer.send_control(msg.StreamingCompleted(frames_sent=frames))
        logger.info("Streaming completed for client %s: %d frames", self.client_id, frames)

    async def _stream_live(
        self, job: _Job, fmt: msg.AudioFormat, writer: WebSocketFrameWriter, sender: asyncio.Task
    ) -> None:
        s = self.ctx.settings
        loop = asyncio.get_running_loop()
        inbox = Inbox(loop, s.live_inbox_chunks)
        conversation = Conversation(
            ConversationLimits(
                idle_after_s=s.live_idle_after_s, idle_timeout_s=s.idle_timeout_s, max_audio_seconds=s.max_audio_seconds
            ),
            time.monotonic(),
        )
        execute = functools.partial(self._execute, inbox=inbox, writer=writer)
        writer.begin_live(
            on_frame_sent=lambda header: self._controls(conversation.frame_sent(header.utterance, header.index)),
            on_utterance_end=lambda utterance: self._controls(conversation.utterance_end_sent(utterance)),
        )

        def rewound(next_frame: int) -> None:  # render thread -> event loop
            loop.call_soon_threadsafe(lambda: execute(conversation.rewound(next_frame, time.monotonic())))

        render = functools.partial(
            render_live,
            inbox=inbox,
            writer=writer,
            metrics=self.ctx.metrics,
            cancel=self._cancel,
            echo_audio=job.echo_audio,
            rewound=rewound,
        )
        result = await self._until_rendered(
            self._start_render(job, render, live=True),
            asyncio.create_task(self._converse_live(conversation, fmt, inbox, writer, execute)),
            sender,
        )
        skipped = writer.frames_skipped
        await writer.send_control(
            msg.StreamingCompleted(
                frames_sent=result.frames - writer.frames_discarded, frames_skipped=skipped, idle_frames=result.idle
            )
        )
        logger.info(
            "Live streaming completed for client %s: %d frames (%d skipped, %d discarded, %d idle)",
            self.client_id,
            result.frames + skipped,
            skipped,
            writer.frames_discarded,
            result.idle,
        )

    @staticmethod
    def _controls(actions: list[Action]) -> list:
        return [action.message for action in actions if isinstance(action, Send)]

    @staticmethod
    def _execute(actions: list[Action], *, inbox: Inbox, writer: WebSocketFrameWriter) -> None:
        """Carry out a :class:`Conversation`'s actions (event loop)."""
        for action in actions:
            if isinstance(action, Send):
                writer.queue_control(action.message)
            elif isinstance(action, DropQueuedAudio):
                inbox.clear()
            elif isinstance(action, DiscardUnsentFrames):
                writer.discard_utterances(action.through)
            else:
                inbox.put(action)

    def _start_render(self, job: _Job, render: Callable[[AnimationStream], _Result], *, live: bool) -> asyncio.Future:
        """Run ``render`` on a new animation stream of ``job`` in the render pool (closing the
        stream after); ``run`` awaits the returned future on every exit."""
        s = self.ctx.settings
        options = StreamOptions(
            live=live,
            jpeg_quality=s.jpeg_quality,
            max_lag_s=s.live_max_lag_ms / 1000 if live else None,
            total_frames=None if live or job.audio is None else job.audio.total_frames,
        )

        def render_and_close() -> _Result:
            with contextlib.closing(self.ctx.backend.open_stream(job.avatar, seed=job.seed, options=options)) as stream:
                return render(stream)

        self._render = self._in_render_pool(render_and_close)
        return self._render

    def _in_render_pool(self, work: Callable[[], _Result]) -> asyncio.Future:
        """Run ``work`` in the render pool, where the backend's code runs: what it raises that is not
        a DittoError is a backend fault, and the future fails with its BackendError
        (``backend_failed``, or ``out_of_memory``), never with what looks like the client leaving."""

        def guarded() -> _Result:
            try:
                return work()
            except DittoError:
                raise
            except Exception as exc:
                raise BackendError.from_fault(exc) from exc

        return asyncio.get_running_loop().run_in_executor(self.ctx.render_pool, guarded)

    async def _until_rendered(self, render: asyncio.Future, receiver: asyncio.Task, sender: asyncio.Task):
        """Wait for the render loop; a stop, error or disconnect seen by the receiver ends it first.

        Returns:
            The render loop's result.
        Raises:
            The receiver's error (not for ``stop``), the render loop's error, or
            WebSocketDisconnect when the socket failed under the writer.
        """
        # the receiver may still end with an error after it was cancelled (a disconnect racing the
        # cancellation): its outcome is read whenever it comes, never logged as "never retrieved"
        receiver.add_done_callback(lambda task: task.cancelled() or task.exception())
        try:
            await asyncio.wait({render, receiver, sender}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            receiver.cancel()
        error = receiver.exception() if receiver.done() and not receiver.cancelled() else None
        if sender.done():
            raise WebSocketDisconnect(CloseCode.GOING_AWAY)  # the socket failed under the writer
        if not render.done():
            # stop, a second start_streaming, a bad message or a disconnect: end the render loop first
            self._cancel.set()
            await asyncio.wait({render})
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
            raise ProtocolError(
                "binary messages are only accepted as audio chunks of a live session, after start_streaming"
            )
        if len(text) > self.ctx.settings.max_upload_bytes:
            raise ProtocolError(
                f"message of {len(text) / 1e6:.1f} MB exceeds the server's limit of "
                f"{self.ctx.settings.max_upload_bytes / 1e6:.1f} MB",
                code=ErrorCode.UPLOAD_TOO_LARGE,
            )
        return text

    async def _wait_for_start(self) -> msg.StartStreaming | None:
        """The ``start_streaming`` message, or None if the client sent ``stop`` first."""
        message = msg.parse_client_message(await self._receive_text(self.ctx.settings.idle_timeout_s))
        if isinstance(message, (msg.AudioChunk, msg.EndOfUtterance, msg.Interrupt, msg.EndOfAudio)):
            raise ProtocolError(f"{message.type} before start_streaming", code=ErrorCode.INVALID_STATE)
        return None if isinstance(message, msg.Stop) else message

    async def _receive_while_streaming(self) -> None:
        """Raises once the client sends anything during a file-mode stream: any message ends it."""
        message = msg.parse_client_message(await self._receive_text(None))
        self._refuse_stop_or_restart(message)
        raise ProtocolError(
            f"{message.type} in a file-mode session (start_streaming without live: true)", code=ErrorCode.INVALID_STATE
        )

    async def _converse_live(
        self,
        conversation: Conversation,
        fmt: msg.AudioFormat,
        inbox: Inbox,
        writer: WebSocketFrameWriter,
        execute: Callable[[list[Action]], None],
    ) -> None:
        """Read the client and tick the conversation's clock until one of them ends the session
        early (``stop``, bad input, a limit, the timeout); never returns otherwise."""
        reader = asyncio.create_task(self._receive_live(conversation, fmt, inbox, writer, execute))
        ticker = asyncio.create_task(self._tick_live(conversation, execute))
        try:
            done, _ = await asyncio.wait({reader, ticker}, return_when=asyncio.FIRST_COMPLETED)
            done.pop().result()
        finally:
            reader.cancel()
            ticker.cancel()
            await asyncio.wait({reader, ticker})

    @staticmethod
    async def _tick_live(conversation: Conversation, execute: Callable[[list[Action]], None]) -> None:
        while True:
            await asyncio.sleep(_TICK_S)  # the conversation's clock, not synchronisation
            execute(conversation.tick(time.monotonic()))

    async def _receive_live(
        self,
        conversation: Conversation,
        fmt: msg.AudioFormat,
        inbox: Inbox,
        writer: WebSocketFrameWriter,
        execute: Callable[[list[Action]], None],
    ) -> None:
        """Decode each message and hand it to ``conversation``; after ``end_of_audio`` only watch for ``stop``.

        Raises:
            _ClientStopped: ``stop``.
            DittoError: a bad message, or one the conversation refuses (after ``end_of_audio``,
                over ``max_audio_seconds``).
        """
        s = self.ctx.settings
        expected_type = SampleType.from_name(fmt.sample_type)
        resampler = StreamingResampler(fmt.sample_rate_hz)
        while True:
            message = await self._receive(None)
            now = time.monotonic()
            pcm: bytes | memoryview
            if isinstance(message, bytes):
                header, pcm = AudioChunkHeader.unpack(message)
                if header.sample_type != expected_type:
                    raise ProtocolError(
                        f"audio chunk of {header.sample_type.name.lower()} samples in a session "
                        f"announced as {fmt.sample_type}"
                    )
            else:
                if len(message) > s.max_upload_bytes:
                    raise ProtocolError("message exceeds the server's upload limit", code=ErrorCode.UPLOAD_TOO_LARGE)
                parsed = msg.parse_client_message(message)
                self._refuse_stop_or_restart(parsed)
                if isinstance(parsed, msg.Interrupt):
                    logger.info("Client %s interrupted", self.client_id)
                    resampler = StreamingResampler(fmt.sample_rate_hz)  # its held-back input is dropped too
                    execute(conversation.receive_interrupt(now))
                    continue
                if isinstance(parsed, (msg.EndOfUtterance, msg.EndOfAudio)):
                    if not conversation.ended:
                        execute(conversation.receive_audio(resampler.flush(), now))
                        resampler = StreamingResampler(fmt.sample_rate_hz)
                    execute(
                        conversation.receive_end_of_utterance(now)
                        if isinstance(parsed, msg.EndOfUtterance)
                        else conversation.receive_end_of_audio(now)
                    )
                    continue
                assert isinstance(parsed, msg.AudioChunk)  # stop and start_streaming were refused above
                pcm = parsed.data
            if conversation.ended:  # before decoding: the state error is what the client needs to hear
                raise ProtocolError("audio chunk after end_of_audio", code=ErrorCode.INVALID_STATE)
            samples = resampler.push(decode_pcm(pcm, sample_type=fmt.sample_type, channels=fmt.channels))
            if len(samples):
                writer.start_clock(now)  # the first-frame latency counts from the first audio
            execute(conversation.receive_audio(samples, now))
            await inbox.room()

    def _refuse_stop_or_restart(self, message: msg.ClientMessage) -> None:
        """While streaming, ``stop`` ends the stream and a second ``start_streaming`` is an error.

        Raises:
            _ClientStopped: ``stop``.
            ProtocolError: ``start_streaming``.
        """
        if isinstance(message, msg.Stop):
            logger.info("Client %s asked to stop", self.client_id)
            raise _ClientStopped()
        if isinstance(message, msg.StartStreaming):
            raise ProtocolError("start_streaming was already received in this session", code=ErrorCode.INVALID_STATE)

    # --- work in the render pool ---------------------------------------------------------------

    def _read_media(self, ref: msg.UploadedFile | msg.ServerPath) -> tuple[bytes, str]:
        if isinstance(ref, msg.UploadedFile):
            return ref.data, ref.filename
        path = resolve_media_path(self.ctx.settings.media_root, ref.path)
        size = path.stat().st_size
        if size > self.ctx.settings.max_upload_bytes:
            raise MediaError(
                f"{ref.path} is {size / 1e6:.1f} MB, over the limit of "
                f"{self.ctx.settings.max_upload_bytes / 1e6:.1f} MB",
                code=ErrorCode.UPLOAD_TOO_LARGE,
            )
        return path.read_bytes(), ref.path

    def _prepare(self, start: msg.StartStreaming) -> _Job:
        s = self.ctx.settings
        # every file is read before any is decoded: a missing file is reported before bad content
        if start.live:
            audio_bytes, audio_name = b"", "live"
        else:
            assert start.audio is not None  # StartStreaming requires it outside live mode
            audio_bytes, audio_name = self._read_media(start.audio)
        image_bytes, source_name = self._read_media(start.source)
        audio = None if start.live else decode_audio(audio_bytes, max_seconds=s.max_audio_seconds, name=audio_name)
        image = decode_image(image_bytes, max_pixels=s.max_image_pixels, max_size=s.max_size, name=source_name)
        avatar = self.ctx.avatars.get_or_register(image)
        seed = start.seed if start.seed is not None else int(np.random.default_rng().integers(2**31))
        return _Job(avatar, seed, source_name, start.echo_audio, audio, audio_name)

    # --- ending --------------------------------------------------------------------------------

    async def _report(self, exc: DittoError, writer: WebSocketFrameWriter, sender: asyncio.Task) -> None:
        """Log ``exc`` (with its traceback when the server failed: close code 1011), count it, and send
        a final ``error`` after what is already queued, as far as the socket allows."""
        server_failed = exc.close_code == CloseCode.INTERNAL_ERROR
        logger.log(
            logging.ERROR if server_failed else logging.WARNING,
            "Client %s: %s: %s",
            self.client_id,
            exc.code.value,
            exc.message,
            exc_info=exc if server_failed else None,
        )
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

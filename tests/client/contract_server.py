"""A small WebSocket server that speaks the live conversation contract of #9 (``end_of_utterance``,
``interrupt``, ``playback_started``/``playback_finished``, frame header v2 with ``utterance`` and
``sent_us``), so the client's side can be tested before the real server learns it.

Frames are answered at once, one per 40 ms of audio received (no rendering, no clock), which
keeps the exchange deterministic:

- the first frame of an utterance is preceded by ``playback_started``; ``end_of_utterance`` sends
  the tail frame (a partial 40 ms), then ``playback_finished``, and the next audio is utterance + 1;
- ``interrupt`` sends one more speech frame (as if it was already in the socket when the interrupt
  arrived), ``playback_finished {interrupted: true}``, then ``idle_frames_after_interrupt`` IDLE frames;
- ``end_of_audio`` finishes an utterance in progress, then ``streaming_completed`` and close 1000.

Plain HTTP requests get the browser page and the example files, so the page can be tried against it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
from http import HTTPStatus

import websockets
from pydantic import BaseModel
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from ditto.protocol import messages as msg
from ditto.protocol.frames import AudioChunkHeader, FrameFlags, FrameHeader, pack_frame, stamp_sent
from tests.conftest import EXAMPLE_AUDIO, EXAMPLE_IMAGE, ROOT
from tests.server.helpers import png_bytes, portrait

FRAME_MS = 40
IMAGE = png_bytes(portrait(size=8))  # the Python client never decodes it; a browser sniffs the format
PAGE_FILES = {
    "/": (ROOT / "ditto" / "web" / "index.html", "text/html; charset=utf-8"),
    "/web/app.js": (ROOT / "ditto" / "web" / "app.js", "text/javascript; charset=utf-8"),
    "/example/image.png": (EXAMPLE_IMAGE, "image/png"),
    "/example/audio.wav": (EXAMPLE_AUDIO, "audio/wav"),
}


@dataclasses.dataclass
class _Conversation:
    """One session's state: what the server has received and the frames it owes."""

    ws: ServerConnection
    samples_per_frame: int = 0
    bytes_per_sample: int = 2
    pending_samples: int = 0  # received, not yet covered by a frame of the current utterance
    utterance: int = 1
    utterance_frames: int = 0  # frames of the current utterance sent so far
    frames_sent: int = 0
    idle_frames: int = 0

    async def send_frame(self, *, idle: bool = False) -> None:
        header = FrameHeader(
            self.frames_sent,
            self.frames_sent * FRAME_MS,
            self.frames_sent * 640,
            640,
            FrameFlags.IDLE if idle else FrameFlags.NONE,
            utterance=0 if idle else self.utterance,
        )
        if not idle and self.utterance_frames == 0:
            await self.send_control(msg.PlaybackStarted(utterance=self.utterance))
        await self.ws.send(bytes(stamp_sent(pack_frame(header, IMAGE), time.time_ns() // 1000)))
        self.frames_sent += 1
        if idle:
            self.idle_frames += 1
        else:
            self.utterance_frames += 1

    async def send_control(self, message: BaseModel) -> None:
        await self.ws.send(message.model_dump_json())

    async def audio(self, samples: int) -> None:
        self.pending_samples += samples
        while self.pending_samples >= self.samples_per_frame:
            self.pending_samples -= self.samples_per_frame
            await self.send_frame()

    async def finish_utterance(self, *, interrupted: bool) -> None:
        if self.pending_samples or interrupted:
            await self.send_frame()  # the tail, or (interrupted) the frame already in flight
        if self.utterance_frames:
            await self.send_control(
                msg.PlaybackFinished(
                    utterance=self.utterance, interrupted=interrupted, position_ms=self.utterance_frames * FRAME_MS
                )
            )
            self.utterance += 1
        self.pending_samples = self.utterance_frames = 0


@dataclasses.dataclass
class ContractServer:
    """Serves on 127.0.0.1 in a thread of its own (so a client may run its own event loop).

    ``received`` lists what clients sent, in order: control message types, and for each audio
    chunk ``("audio", samples)``.
    """

    idle_frames_after_interrupt: int = 3
    received: list = dataclasses.field(default_factory=list)
    port: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _stop: asyncio.Event | None = None
    _thread: threading.Thread | None = None

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ContractServer":
        ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve(ready)), daemon=True)
        self._thread.start()
        assert ready.wait(10), "contract server did not start"
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _serve(self, ready: threading.Event) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with serve(self._converse, "127.0.0.1", 0, max_size=None, process_request=_serve_page) as server:
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            await self._stop.wait()

    async def _converse(self, ws: ServerConnection) -> None:
        talk = _Conversation(ws)
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    header, pcm = AudioChunkHeader.unpack(message)
                    samples = len(pcm) // talk.bytes_per_sample
                    self.received.append(("audio", samples))
                    await talk.audio(samples)
                    continue
                kind = json.loads(message)["type"]
                self.received.append(kind)
                if kind == "start_streaming":
                    fmt = msg.parse_client_message(message).audio_format
                    talk.samples_per_frame = fmt.sample_rate_hz * FRAME_MS // 1000
                    talk.bytes_per_sample = fmt.bytes_per_frame
                    await talk.send_control(
                        msg.StreamingStarted(client_id="c", backend="contract", audio="live", source="s.png", live=True)
                    )
                    await talk.send_control(msg.Metadata(duration_s=None, total_frames=None, fps=25, width=8, height=8))
                elif kind == "end_of_utterance":
                    await talk.finish_utterance(interrupted=False)
                elif kind == "interrupt":
                    await talk.finish_utterance(interrupted=True)
                    for _ in range(self.idle_frames_after_interrupt):
                        await talk.send_frame(idle=True)
                elif kind == "end_of_audio":
                    await talk.finish_utterance(interrupted=False)
                    await talk.send_control(
                        msg.StreamingCompleted(frames_sent=talk.frames_sent, idle_frames=talk.idle_frames)
                    )
                    await ws.close()
        except websockets.exceptions.ConnectionClosed:
            pass  # the client went away: nothing is owed to it


def _serve_page(connection: ServerConnection, request: Request) -> Response | None:
    """A file of :data:`PAGE_FILES` for a plain GET; ``None`` lets a WebSocket upgrade through."""
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return None
    name = request.path.split("?", 1)[0]
    if name not in PAGE_FILES:
        return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
    path, content_type = PAGE_FILES[name]
    body = path.read_bytes()
    return Response(
        HTTPStatus.OK, "OK", Headers({"Content-Type": content_type, "Content-Length": str(len(body))}), body
    )

"""The async WebSocket client: send ``start_streaming``, receive control messages and
frames with their arrival times, hand each frame to a callback."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Callable

import websockets

from ditto.client import LOGGER_NAME
from ditto.errors import ProtocolError
from ditto.protocol import messages as msg
from ditto.protocol.frames import FrameHeader

logger = logging.getLogger(LOGGER_NAME)

FrameCallback = Callable[[FrameHeader, bytes], None]


@dataclasses.dataclass(slots=True)
class ReceivedFrame:
    index: int
    pts_ms: int
    size: int  # bytes of the whole binary message
    arrival_s: float  # clock reading when it arrived


@dataclasses.dataclass(slots=True)
class SessionResult:
    start_sent_s: float | None = None
    frames: list[ReceivedFrame] = dataclasses.field(default_factory=list)
    metadata: msg.Metadata | None = None
    completed: msg.StreamingCompleted | None = None
    error: msg.Error | None = None
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return (self.error is None and not self.timed_out and self.completed is not None
                and (self.metadata is None or len(self.frames) == self.metadata.total_frames))


def media_ref(path: str, *, upload: bool) -> dict:
    """An uploaded file when it exists here (and ``upload`` is on), else a path on the server."""
    local = Path(path)
    if upload and local.is_file():
        return msg.encode_upload(local.name, local.read_bytes())
    return {"kind": "path", "path": path}


async def run_session(
    server: str,
    client_id: str,
    audio_path: str,
    source_path: str,
    *,
    timeout_s: float,
    on_frame: FrameCallback | None = None,
    upload: bool = True,
    seed: int | None = None,
    clock: Callable[[], float] = time.monotonic,
    log_every: int = 25,
) -> SessionResult:
    """Stream one audio file over ``ws://server/ws/{client_id}`` and collect what comes back."""
    result = SessionResult()
    url = f"{server.rstrip('/')}/ws/{client_id}"
    start = {"type": "start_streaming", "audio": media_ref(audio_path, upload=upload),
             "source": media_ref(source_path, upload=upload)}
    if seed is not None:
        start["seed"] = seed
    try:
        async with asyncio.timeout(timeout_s):
            async with websockets.connect(url, max_size=None, open_timeout=min(timeout_s, 30)) as ws:
                logger.info("Connected to server as client %s", client_id)
                await ws.send(json.dumps(start))
                result.start_sent_s = clock()
                logger.info("Sent start streaming command")
                async for message in ws:
                    if isinstance(message, bytes):
                        header, payload = FrameHeader.unpack(message)
                        result.frames.append(ReceivedFrame(header.index, header.pts_ms, len(message), clock()))
                        if header.index % log_every == 0:
                            logger.info("Received frame %d, size: %.1fKB", header.index, len(payload) / 1024)
                        if on_frame is not None:
                            on_frame(header, bytes(payload))
                        continue
                    reply = msg.parse_server_message(message)
                    if isinstance(reply, msg.StreamingStarted):
                        logger.info("Streaming started: %s -> %s", audio_path, source_path)
                    elif isinstance(reply, msg.Metadata):
                        result.metadata = reply
                        logger.info("Metadata: %.2fs, %d frames", reply.duration_s, reply.total_frames)
                    elif isinstance(reply, msg.StreamingCompleted):
                        result.completed = reply
                        logger.info("Streaming completed")
                        break
                    elif isinstance(reply, msg.Error):
                        result.error = reply
                        logger.error("Server error [%s]: %s", reply.code.value, reply.message)
                        break
    except TimeoutError:
        result.timed_out = True
        logger.error("Timed out after %.0f s", timeout_s)
    except (OSError, websockets.exceptions.WebSocketException, ProtocolError) as exc:
        result.error = msg.Error(code="internal", message=f"connection failed: {exc}")
        logger.error("Connection to %s failed: %s", url, exc)
    return result

"""The async WebSocket client: send ``start_streaming``, receive control messages and
frames with their arrival times, hand each frame to a callback.

:func:`run_session` uploads a whole file (file mode); :func:`run_live_session` streams it
as a live source would (``live: true``): PCM chunks of ``chunk_ms``, paced at real time
or as fast as possible, then ``end_of_audio``, receiving frames meanwhile.
"""

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
from ditto.protocol.frames import AudioChunkHeader, FrameFlags, FrameHeader, FrameKind, SampleType, pack_audio_chunk

logger = logging.getLogger(LOGGER_NAME)

FrameCallback = Callable[[FrameHeader, bytes], None]


@dataclasses.dataclass(slots=True)
class ReceivedFrame:
    index: int
    pts_ms: int
    size: int  # bytes of the whole binary message
    arrival_s: float  # clock reading when it arrived
    sample_start: int = 0  # 16 kHz audio the frame covers
    sample_count: int = 0
    idle: bool = False


@dataclasses.dataclass(slots=True)
class SessionResult:
    start_sent_s: float | None = None
    frames: list[ReceivedFrame] = dataclasses.field(default_factory=list)
    metadata: msg.Metadata | None = None
    completed: msg.StreamingCompleted | None = None
    error: msg.Error | None = None
    timed_out: bool = False
    # live sessions
    live: bool = False
    audio_sample_rate_hz: int | None = None  # of the chunks sent
    first_audio_sent_s: float | None = None
    chunks_sent: list[tuple[int, float]] = dataclasses.field(default_factory=list)  # (samples so far, sent at)
    audio_echo: dict[int, bytes] = dataclasses.field(default_factory=dict)  # frame index -> 16 kHz int16 PCM

    @property
    def expected_frames(self) -> int | None:
        if self.metadata is not None and self.metadata.total_frames is not None:
            return self.metadata.total_frames
        return self.completed.frames_sent if self.completed is not None else None

    @property
    def ok(self) -> bool:
        return (self.error is None and not self.timed_out and self.completed is not None
                and len(self.frames) == self.expected_frames)


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
                        if header.kind != FrameKind.JPEG:
                            continue
                        result.frames.append(ReceivedFrame(header.index, header.pts_ms, len(message), clock(),
                                                           header.sample_start, header.sample_count))
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


@dataclasses.dataclass(frozen=True, slots=True)
class PcmAudio:
    """Audio to stream live: interleaved little-endian PCM and its format."""

    pcm: bytes
    sample_rate_hz: int
    channels: int
    sample_type: str = "int16"

    @property
    def bytes_per_frame(self) -> int:
        return self.channels * (2 if self.sample_type == "int16" else 4)

    @property
    def samples(self) -> int:
        return len(self.pcm) // self.bytes_per_frame

    @property
    def duration_s(self) -> float:
        return self.samples / self.sample_rate_hz


def read_pcm(path: str) -> PcmAudio:
    """An audio file as int16 PCM at its own rate and channels when the server takes that rate
    (8-48 kHz), else decoded to 16 kHz mono."""
    import numpy as np
    import soundfile

    try:
        data, rate = soundfile.read(path, dtype="int16", always_2d=True)
        if msg.MIN_LIVE_SAMPLE_RATE_HZ <= rate <= msg.MAX_LIVE_SAMPLE_RATE_HZ and data.shape[1] <= 8:
            return PcmAudio(data.astype("<i2").tobytes(), int(rate), int(data.shape[1]))
    except (RuntimeError, soundfile.LibsndfileError):  # not a format libsndfile knows: let FFmpeg try
        pass
    from ditto.media.audio import decode_audio

    audio = decode_audio(Path(path).read_bytes(), max_seconds=float("inf"), name=path)
    pcm = (np.clip(audio.samples, -1, 1) * 32767).round().astype("<i2").tobytes()
    return PcmAudio(pcm, 16000, 1)


async def run_live_session(
    server: str,
    client_id: str,
    audio: PcmAudio,
    source_path: str,
    *,
    timeout_s: float,
    chunk_ms: float = 200.0,
    realtime: bool = True,
    on_frame: FrameCallback | None = None,
    upload: bool = True,
    seed: int | None = None,
    echo_audio: bool = False,
    clock: Callable[[], float] = time.monotonic,
    log_every: int = 25,
) -> SessionResult:
    """Stream ``audio`` live over ``ws://server/ws/{client_id}`` and collect what comes back.

    Audio goes in binary chunks of ``chunk_ms`` (the last may be shorter) once the server
    answered ``streaming_started``; with ``realtime`` chunk k leaves at ``k * chunk_ms`` after
    the first (an absolute schedule: no drift), else as fast as the socket takes them. Then
    ``end_of_audio``. Frames are received meanwhile.
    """
    result = SessionResult(live=True, audio_sample_rate_hz=audio.sample_rate_hz)
    url = f"{server.rstrip('/')}/ws/{client_id}"
    start = {"type": "start_streaming", "live": True, "source": media_ref(source_path, upload=upload),
             "audio_format": {"sample_rate_hz": audio.sample_rate_hz, "channels": audio.channels,
                              "sample_type": audio.sample_type},
             "echo_audio": echo_audio}
    if seed is not None:
        start["seed"] = seed
    chunk_samples = max(1, int(round(audio.sample_rate_hz * chunk_ms / 1000.0)))
    sample_type = SampleType.from_name(audio.sample_type)

    async def send_audio(ws) -> None:
        step = chunk_samples * audio.bytes_per_frame
        base = None
        for k, offset in enumerate(range(0, len(audio.pcm), step)):
            if realtime and base is not None:
                await asyncio.sleep(max(0.0, base + k * chunk_ms / 1000.0 - clock()))
            await ws.send(pack_audio_chunk(AudioChunkHeader(sample_type, k), audio.pcm[offset: offset + step]))
            now = clock()
            if base is None:
                base = result.first_audio_sent_s = now
            result.chunks_sent.append((min(len(audio.pcm), offset + step) // audio.bytes_per_frame, now))
        await ws.send(json.dumps({"type": "end_of_audio"}))
        logger.info("Sent %d audio chunks (%.2fs) and end_of_audio", len(result.chunks_sent), audio.duration_s)

    sender: asyncio.Task | None = None
    try:
        async with asyncio.timeout(timeout_s):
            async with websockets.connect(url, max_size=None, open_timeout=min(timeout_s, 30)) as ws:
                logger.info("Connected to server as client %s", client_id)
                await ws.send(json.dumps(start))
                result.start_sent_s = clock()
                logger.info("Sent start streaming command (live, %d Hz, %d ch, %s chunks of %g ms)",
                            audio.sample_rate_hz, audio.channels, "real-time" if realtime else "fast",
                            chunk_ms)
                async for message in ws:
                    if isinstance(message, bytes):
                        header, payload = FrameHeader.unpack(message)
                        if header.kind == FrameKind.PCM16:
                            result.audio_echo[header.index] = bytes(payload)
                            continue
                        result.frames.append(ReceivedFrame(
                            header.index, header.pts_ms, len(message), clock(), header.sample_start,
                            header.sample_count, bool(header.flags & FrameFlags.IDLE)))
                        if header.index % log_every == 0:
                            logger.info("Received frame %d, size: %.1fKB", header.index, len(payload) / 1024)
                        if on_frame is not None:
                            on_frame(header, bytes(payload))
                        continue
                    reply = msg.parse_server_message(message)
                    if isinstance(reply, msg.StreamingStarted):
                        logger.info("Streaming started (live): %s", source_path)
                        sender = asyncio.create_task(send_audio(ws))
                    elif isinstance(reply, msg.Metadata):
                        result.metadata = reply
                        logger.info("Metadata: live, %dx%d at %d fps", reply.width, reply.height, reply.fps)
                    elif isinstance(reply, msg.StreamingCompleted):
                        result.completed = reply
                        logger.info("Streaming completed: %d frames sent, %d skipped, %d idle",
                                    reply.frames_sent, reply.frames_skipped, reply.idle_frames)
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
    finally:
        if sender is not None and not sender.done():
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        elif sender is not None and sender.exception() is not None and result.error is None:
            logger.error("Sending audio failed: %s", sender.exception())
    return result

"""The async WebSocket client: send ``start_streaming``, receive control messages and
frames with their arrival times, hand each frame to a callback.

:func:`run_session` uploads a whole file (file mode); :func:`run_live_session` streams it
as a live source would (``live: true``): PCM chunks of ``chunk_ms``, paced at real time
or as fast as possible, then ``end_of_audio``, receiving frames meanwhile; it can also split
the audio into utterances (``end_of_utterance``) and barge in (``interrupt``). Both share one
receive loop (:func:`_converse`); what differs (log lines, the live audio sender) is a ``_Mode``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Callable, Protocol, Sequence

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.frames import Close

from ditto.client import LOGGER_NAME
from ditto.errors import CloseCode, ErrorCode, ProtocolError
from ditto.protocol import messages as msg
from ditto.protocol.frames import AudioChunkHeader, FrameFlags, FrameHeader, FrameKind, SampleType, pack_audio_chunk

logger = logging.getLogger(LOGGER_NAME)

FrameCallback = Callable[[FrameHeader, bytes], None]
WallClockUs = Callable[[], int]


def wall_clock_us() -> int:
    """Microseconds since the Unix epoch: the clock the server stamps ``sent_us`` with."""
    return time.time_ns() // 1000


@dataclasses.dataclass(slots=True)
class ReceivedFrame:
    index: int
    pts_ms: int
    size: int  # bytes of the whole binary message
    arrival_s: float  # clock reading when it arrived
    sample_start: int = 0  # 16 kHz audio the frame covers
    sample_count: int = 0
    idle: bool = False
    utterance: int = 0  # live: the 1-based utterance of the frame's audio; 0 for idle frames and file mode
    sent_us: int = 0  # server wall clock at send, µs since the epoch (0: the server did not stamp it)
    arrival_wall_us: int = 0  # client wall clock when it arrived, µs since the epoch

    @property
    def transit_ms(self) -> float | None:
        """Server send -> client arrival on the two wall clocks (exact on one host; across hosts it
        includes their clock offset); ``None`` for a frame without a send time."""
        return (self.arrival_wall_us - self.sent_us) / 1000.0 if self.sent_us else None


@dataclasses.dataclass(frozen=True, slots=True)
class PlaybackEvent:
    """A ``playback_started`` or ``playback_finished`` message and when it arrived."""

    message: msg.PlaybackStarted | msg.PlaybackFinished
    arrival_s: float  # clock reading when it arrived


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
    playback: list[PlaybackEvent] = dataclasses.field(default_factory=list)  # in arrival order
    interrupt_sent_s: float | None = None  # clock reading when ``interrupt`` was sent

    @property
    def expected_frames(self) -> int | None:
        if self.metadata is not None and self.metadata.total_frames is not None:
            return self.metadata.total_frames
        return self.completed.frames_sent if self.completed is not None else None

    @property
    def ok(self) -> bool:
        return (
            self.error is None
            and not self.timed_out
            and self.completed is not None
            and len(self.frames) == self.expected_frames
        )


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
    wall_clock: WallClockUs = wall_clock_us,
    log_every: int = 25,
) -> SessionResult:
    """Stream one audio file over ``ws://server/ws/{client_id}`` and collect what comes back."""
    start = {
        "type": "start_streaming",
        "audio": media_ref(audio_path, upload=upload),
        "source": media_ref(source_path, upload=upload),
    }
    return await _converse(
        server,
        client_id,
        start,
        SessionResult(),
        _FileMode(audio_path, source_path),
        seed=seed,
        timeout_s=timeout_s,
        on_frame=on_frame,
        clock=clock,
        wall_clock=wall_clock,
        log_every=log_every,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class PcmAudio:
    """Audio to stream live: interleaved little-endian PCM and its format."""

    pcm: bytes
    sample_rate_hz: int
    channels: int
    sample_type: str = "int16"

    @property
    def bytes_per_frame(self) -> int:
        return self.channels * SampleType.from_name(self.sample_type).bytes_per_sample

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
    utterance_ends_s: Sequence[float] = (),
    interrupt_at_s: float | None = None,
    idle_after_interrupt_s: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: WallClockUs = wall_clock_us,
    log_every: int = 25,
) -> SessionResult:
    """Stream ``audio`` live over ``ws://server/ws/{client_id}`` and collect what comes back.

    Audio goes in binary chunks of ``chunk_ms`` (the last may be shorter) once the server
    answered ``streaming_started``; with ``realtime`` the chunk starting at second t of the audio
    leaves t after the first (an absolute schedule: no drift), else as fast as the socket takes
    them. Then ``end_of_audio``. Frames are received meanwhile.

    Args:
        utterance_ends_s: positions in the audio (s) where an utterance ends: the chunk reaching
            each is cut there and followed by ``end_of_utterance``.
        interrupt_at_s: barge in once this much audio was sent: ``interrupt``, the rest of the audio
            is not sent, and after ``playback_finished {interrupted: true}`` the session idles for
            ``idle_after_interrupt_s`` (so the idle frames after it are measured), then ``end_of_audio``.
            A server that never confirms the interrupt leaves the session to end by ``timeout_s``.
    """
    result = SessionResult(live=True, audio_sample_rate_hz=audio.sample_rate_hz)
    start = {
        "type": "start_streaming",
        "live": True,
        "source": media_ref(source_path, upload=upload),
        "audio_format": {
            "sample_rate_hz": audio.sample_rate_hz,
            "channels": audio.channels,
            "sample_type": audio.sample_type,
        },
        "echo_audio": echo_audio,
    }
    mode = _LiveMode(
        audio,
        source_path,
        result,
        chunk_ms=chunk_ms,
        realtime=realtime,
        clock=clock,
        utterance_ends_s=tuple(utterance_ends_s),
        interrupt_at_s=interrupt_at_s,
        idle_after_interrupt_s=idle_after_interrupt_s,
    )
    try:
        return await _converse(
            server,
            client_id,
            start,
            result,
            mode,
            seed=seed,
            timeout_s=timeout_s,
            on_frame=on_frame,
            clock=clock,
            wall_clock=wall_clock,
            log_every=log_every,
        )
    finally:
        await mode.stop_sending()


# --- the receive loop both modes share ----------------------------------------------------------


class _Mode(Protocol):
    """What differs between file and live sessions around :func:`_converse`: the log lines,
    and (live) sending the audio once the server answered ``streaming_started``."""

    def start_sent(self) -> None: ...

    def streaming_started(self, ws: ClientConnection) -> None: ...

    def metadata(self, reply: msg.Metadata) -> None: ...

    def completed(self, reply: msg.StreamingCompleted) -> None: ...

    def playback_finished(self, reply: msg.PlaybackFinished) -> None: ...


@dataclasses.dataclass(frozen=True, slots=True)
class _FileMode:
    audio_path: str
    source_path: str

    def start_sent(self) -> None:
        logger.info("Sent start streaming command")

    def streaming_started(self, ws: ClientConnection) -> None:
        logger.info("Streaming started: %s -> %s", self.audio_path, self.source_path)

    def metadata(self, reply: msg.Metadata) -> None:
        logger.info("Metadata: %.2fs, %d frames", reply.duration_s, reply.total_frames)

    def completed(self, reply: msg.StreamingCompleted) -> None:
        logger.info("Streaming completed")

    def playback_finished(self, reply: msg.PlaybackFinished) -> None:
        pass  # utterances are a live-mode notion: nothing waits for one here


@dataclasses.dataclass(slots=True)
class _LiveMode:
    """Live sessions: the audio sender (a task started on ``streaming_started``) and its log lines.

    Call :meth:`stop_sending` once the receive loop is over, whatever its outcome.
    """

    audio: PcmAudio
    source_path: str
    result: SessionResult  # where the chunks sent are recorded
    chunk_ms: float
    realtime: bool
    clock: Callable[[], float]
    utterance_ends_s: tuple[float, ...] = ()
    interrupt_at_s: float | None = None
    idle_after_interrupt_s: float = 1.0
    _sender: asyncio.Task | None = dataclasses.field(default=None, init=False)
    _interrupt_finished: asyncio.Event = dataclasses.field(default_factory=asyncio.Event, init=False)

    def start_sent(self) -> None:
        logger.info(
            "Sent start streaming command (live, %d Hz, %d ch, %s chunks of %g ms)",
            self.audio.sample_rate_hz,
            self.audio.channels,
            "real-time" if self.realtime else "fast",
            self.chunk_ms,
        )

    def streaming_started(self, ws: ClientConnection) -> None:
        logger.info("Streaming started (live): %s", self.source_path)
        self._sender = asyncio.create_task(self._send_audio(ws))

    def metadata(self, reply: msg.Metadata) -> None:
        logger.info("Metadata: live, %dx%d at %d fps", reply.width, reply.height, reply.fps)

    def completed(self, reply: msg.StreamingCompleted) -> None:
        logger.info(
            "Streaming completed: %d frames sent, %d skipped, %d idle",
            reply.frames_sent,
            reply.frames_skipped,
            reply.idle_frames,
        )

    def playback_finished(self, reply: msg.PlaybackFinished) -> None:
        if reply.interrupted:
            self._interrupt_finished.set()

    def _samples_at(self, seconds: float) -> int:
        return min(self.audio.samples, max(0, int(round(seconds * self.audio.sample_rate_hz))))

    def _chunk_ends(self, stop_at: int, utterance_ends: set[int]) -> list[int]:
        """Where each chunk of the first ``stop_at`` samples ends: every ``chunk_ms``, and at each utterance end."""
        chunk_samples = max(1, int(round(self.audio.sample_rate_hz * self.chunk_ms / 1000.0)))
        return sorted(
            {*range(chunk_samples, stop_at, chunk_samples), *(e for e in utterance_ends if e < stop_at), stop_at} - {0}
        )

    async def _send_audio(self, ws: ClientConnection) -> None:
        """The chunks (an ``end_of_utterance`` after each utterance end, an ``interrupt`` after the one
        reaching ``interrupt_at_s``), then ``end_of_audio``. With ``realtime`` the chunk starting at
        second t of the audio leaves t after the first was sent (an absolute schedule, so sleeps do
        not add up to drift)."""
        audio, result = self.audio, self.result
        sample_type = SampleType.from_name(audio.sample_type)
        utterance_ends = {self._samples_at(t) for t in self.utterance_ends_s}
        stop_at = audio.samples if self.interrupt_at_s is None else self._samples_at(self.interrupt_at_s)
        start = 0
        for seq, end in enumerate(self._chunk_ends(stop_at, utterance_ends)):
            if self.realtime and result.first_audio_sent_s is not None:
                await asyncio.sleep(max(0.0, result.first_audio_sent_s + start / audio.sample_rate_hz - self.clock()))
            pcm = audio.pcm[start * audio.bytes_per_frame : end * audio.bytes_per_frame]
            await ws.send(pack_audio_chunk(AudioChunkHeader(sample_type, seq), pcm))
            now = self.clock()
            if result.first_audio_sent_s is None:
                result.first_audio_sent_s = now
            result.chunks_sent.append((end, now))
            if end in utterance_ends:
                await ws.send(json.dumps({"type": "end_of_utterance"}))
                logger.info("Sent end_of_utterance at %.2fs of audio", end / audio.sample_rate_hz)
            start = end
        if self.interrupt_at_s is not None:
            await self._interrupt(ws, stop_at / audio.sample_rate_hz)
        await ws.send(json.dumps({"type": "end_of_audio"}))
        logger.info(
            "Sent %d audio chunks (%.2fs) and end_of_audio", len(result.chunks_sent), start / audio.sample_rate_hz
        )

    async def _interrupt(self, ws: ClientConnection, position_s: float) -> None:
        """Barge in, wait for the server to confirm (``playback_finished {interrupted: true}``),
        then let the face idle for ``idle_after_interrupt_s``."""
        await ws.send(json.dumps({"type": "interrupt"}))
        self.result.interrupt_sent_s = self.clock()
        logger.info("Sent interrupt at %.2fs of audio", position_s)
        await self._interrupt_finished.wait()
        await asyncio.sleep(self.idle_after_interrupt_s)

    async def stop_sending(self) -> None:
        """Cancel a sender still running; log why it failed if that went unreported."""
        sender = self._sender
        if sender is not None and not sender.done():
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        elif sender is not None and sender.exception() is not None and self.result.error is None:
            logger.error("Sending audio failed: %s", sender.exception())


_ERRORS_BY_CLOSE_CODE: dict[int, ErrorCode] = {
    CloseCode.TRY_AGAIN_LATER: ErrorCode.BUSY,
    CloseCode.SERVICE_RESTART: ErrorCode.SHUTTING_DOWN,
}


def error_from_close(close: Close | None) -> msg.Error:
    """The error a close frame stands for when no ``error`` message came before it."""
    if close is None:
        return msg.Error(code=ErrorCode.INTERNAL, message="the connection was lost without a close frame")
    reason = f": {close.reason}" if close.reason else ""
    return msg.Error(
        code=_ERRORS_BY_CLOSE_CODE.get(close.code, ErrorCode.INTERNAL),
        message=f"server closed the connection ({close.code}{reason})",
    )


async def _converse(
    server: str,
    client_id: str,
    start: dict,
    result: SessionResult,
    mode: _Mode,
    *,
    seed: int | None,
    timeout_s: float,
    on_frame: FrameCallback | None,
    clock: Callable[[], float],
    wall_clock: WallClockUs,
    log_every: int,
) -> SessionResult:
    """Send ``start`` (with ``seed``), then fill ``result`` from what the server sends until
    ``streaming_completed``, an ``error``, ``timeout_s`` or a failed connection."""
    url = f"{server.rstrip('/')}/ws/{client_id}"
    try:
        async with asyncio.timeout(timeout_s):
            # no permessage-deflate: frames are JPEG, which it cannot shrink, and a server or proxy that
            # accepts it (Ray Serve's does) would spend milliseconds of CPU per frame on both ends
            async with websockets.connect(url, max_size=None, open_timeout=min(timeout_s, 30), compression=None) as ws:
                logger.info("Connected to server as client %s", client_id)
                try:
                    await ws.send(json.dumps(start if seed is None else {**start, "seed": seed}))
                except websockets.exceptions.ConnectionClosed:
                    pass  # refused on connect (busy, ...): the error it sent before closing is read below
                else:
                    result.start_sent_s = clock()
                    mode.start_sent()
                async for message in ws:
                    if isinstance(message, bytes):
                        _receive_frame(message, result, on_frame, clock, wall_clock, log_every)
                        continue
                    reply = msg.parse_server_message(message)
                    if isinstance(reply, (msg.PlaybackStarted, msg.PlaybackFinished)):
                        result.playback.append(PlaybackEvent(reply, clock()))
                        logger.info("%s: utterance %d%s", reply.type, reply.utterance, _playback_detail(reply))
                        if isinstance(reply, msg.PlaybackFinished):
                            mode.playback_finished(reply)
                    elif isinstance(reply, msg.StreamingStarted):
                        mode.streaming_started(ws)
                    elif isinstance(reply, msg.Metadata):
                        result.metadata = reply
                        mode.metadata(reply)
                    elif isinstance(reply, msg.StreamingCompleted):
                        result.completed = reply
                        mode.completed(reply)
                        break
                    elif isinstance(reply, msg.Error):
                        result.error = reply
                        logger.error("Server error [%s]: %s", reply.code.value, reply.message)
                        break
    except TimeoutError:
        result.timed_out = True
        logger.error("Timed out after %.0f s", timeout_s)
    except websockets.exceptions.ConnectionClosed as exc:
        if result.error is None:  # closed without an error message: its close code and reason explain it
            result.error = error_from_close(exc.rcvd)
            logger.error("Server closed the connection: [%s] %s", result.error.code.value, result.error.message)
    except (OSError, websockets.exceptions.WebSocketException, ProtocolError) as exc:
        result.error = msg.Error(code=ErrorCode.INTERNAL, message=f"connection failed: {exc}")
        logger.error("Connection to %s failed: %s", url, exc)
    return result


def _playback_detail(reply: msg.PlaybackStarted | msg.PlaybackFinished) -> str:
    if isinstance(reply, msg.PlaybackStarted):
        return ""
    return f" at {reply.position_ms} ms{' (interrupted)' if reply.interrupted else ''}"


def _receive_frame(
    message: bytes,
    result: SessionResult,
    on_frame: FrameCallback | None,
    clock: Callable[[], float],
    wall_clock: WallClockUs,
    log_every: int,
) -> None:
    """Record one binary message: a video frame (handed to ``on_frame``) or an audio echo."""
    arrival_wall_us = wall_clock()
    header, payload = FrameHeader.unpack(message)
    if header.kind == FrameKind.PCM16:  # only sent to a client that asked for echo_audio
        result.audio_echo[header.index] = bytes(payload)
        return
    result.frames.append(
        ReceivedFrame(
            header.index,
            header.pts_ms,
            len(message),
            clock(),
            header.sample_start,
            header.sample_count,
            bool(header.flags & FrameFlags.IDLE),
            header.utterance,
            header.sent_us,
            arrival_wall_us,
        )
    )
    if header.index % log_every == 0:
        logger.info("Received frame %d, size: %.1fKB", header.index, len(payload) / 1024)
    if on_frame is not None:
        on_frame(header, bytes(payload))

"""A raw protocol client for tests: send given messages, collect what comes back."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json

import httpx
import numpy as np
import websockets

from ditto.protocol import messages as msg
from ditto.protocol.frames import FrameHeader


@dataclasses.dataclass
class Transcript:
    controls: list = dataclasses.field(default_factory=list)  # parsed server messages
    frames: list = dataclasses.field(default_factory=list)  # (FrameHeader, jpeg bytes)
    close_code: int | None = None

    def of_type(self, kind: type) -> list:
        return [m for m in self.controls if isinstance(m, kind)]

    @property
    def error(self) -> msg.Error | None:
        errors = self.of_type(msg.Error)
        return errors[0] if errors else None


def wav_bytes(samples: np.ndarray, rate: int = 16000) -> bytes:
    import soundfile

    buf = io.BytesIO()
    soundfile.write(buf, samples, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def png_bytes(image: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", image[:, :, ::-1])
    return buf.tobytes()


def speech_like(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t)) * (np.sin(2 * np.pi * 0.5 * t) > -0.3)
    return (0.3 * envelope * (np.sin(2 * np.pi * 150 * t) + 0.3 * rng.standard_normal(len(t)))).astype(np.float32)


def portrait(seed: int = 0, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (size, size, 3), dtype=np.uint8)


def start_message(audio: bytes, image: bytes, **extra) -> str:
    return json.dumps(
        {
            "type": "start_streaming",
            "audio": msg.encode_upload("a.wav", audio),
            "source": msg.encode_upload("s.png", image),
            **extra,
        }
    )


async def converse(
    url: str,
    *messages: str | bytes,
    timeout_s: float = 30.0,
    close_after: int | None = None,
    answered: asyncio.Event | None = None,
) -> Transcript:
    """Send ``messages``, then read until the server closes (or ``close_after`` frames arrived);
    ``answered`` is set once the server's first control message is in."""
    out = Transcript()
    async with asyncio.timeout(timeout_s):
        async with websockets.connect(url, max_size=None) as ws:
            try:
                for m in messages:
                    await ws.send(m)
            except websockets.exceptions.ConnectionClosed:
                pass  # refused early: what the server said before closing is still readable
            try:
                async for reply in ws:
                    if isinstance(reply, bytes):
                        header, payload = FrameHeader.unpack(reply)
                        out.frames.append((header, bytes(payload)))
                        if close_after is not None and len(out.frames) >= close_after:
                            break
                    else:
                        out.controls.append(msg.parse_server_message(reply))
                        if answered is not None:
                            answered.set()
            except websockets.exceptions.ConnectionClosed:
                pass
            out.close_code = ws.close_code
    return out


async def stream_then(url: str, start: str, action, timeout_s: float = 30.0) -> Transcript:
    """Send ``start``, read until the first frame, await ``action()``, then read until the server closes."""
    out = Transcript()

    async def read(ws, until_first_frame: bool) -> None:
        async for reply in ws:
            if isinstance(reply, bytes):
                header, payload = FrameHeader.unpack(reply)
                out.frames.append((header, bytes(payload)))
                if until_first_frame:
                    return
            else:
                out.controls.append(msg.parse_server_message(reply))

    async with asyncio.timeout(timeout_s):
        async with websockets.connect(url, max_size=None) as ws:
            await ws.send(start)
            await read(ws, until_first_frame=True)
            acting = asyncio.create_task(action())
            try:
                await read(ws, until_first_frame=False)
            except websockets.exceptions.ConnectionClosed:
                pass
            out.close_code = ws.close_code
            await acting
    return out


def wait_until(condition, timeout_s: float = 5.0, interval_s: float = 0.02) -> bool:
    """Poll ``condition()`` every ``interval_s`` until it holds or ``timeout_s`` passed; return its last
    value. Only for conditions with no event to await; the caller still asserts the condition."""
    import time

    deadline = time.monotonic() + timeout_s
    while not (ok := condition()) and time.monotonic() < deadline:
        time.sleep(interval_s)
    return ok


def metric_values(server) -> dict[str, float]:
    text = httpx.get(f"{server.http}/metrics", timeout=5).text
    return {
        line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line and not line.startswith("#")
    }


# --- live sessions ------------------------------------------------------------------------------


@dataclasses.dataclass
class LiveTranscript(Transcript):
    echoes: list = dataclasses.field(default_factory=list)  # (FrameHeader, int16 PCM bytes) audio echo
    frame_arrivals: list = dataclasses.field(default_factory=list)  # monotonic s, per video frame
    chunk_sent_at: list = dataclasses.field(default_factory=list)  # monotonic s, per chunk sent

    @property
    def completed(self) -> msg.StreamingCompleted | None:
        done = self.of_type(msg.StreamingCompleted)
        return done[0] if done else None


def live_start(
    sample_rate_hz: int = 16000, *, channels: int = 1, sample_type: str = "int16", image: bytes | None = None, **extra
) -> str:
    return json.dumps(
        {
            "type": "start_streaming",
            "live": True,
            "audio_format": {"sample_rate_hz": sample_rate_hz, "channels": channels, "sample_type": sample_type},
            "source": msg.encode_upload("s.png", image or png_bytes(portrait())),
            **extra,
        }
    )


def pcm_bytes(samples: np.ndarray, sample_type: str) -> bytes:
    """float32 samples ((n,) or (n, channels)) as interleaved little-endian PCM."""
    if sample_type == "int16":
        return (np.clip(samples, -1, 1) * 32767).round().astype("<i2").tobytes()
    return samples.astype("<f4").tobytes()


def binary_chunk(pcm: bytes, sample_type: str = "int16", seq: int = 0) -> bytes:
    from ditto.protocol.frames import AudioChunkHeader, SampleType, pack_audio_chunk

    return pack_audio_chunk(AudioChunkHeader(SampleType.from_name(sample_type), seq), pcm)


def json_chunk(pcm: bytes, seq: int | None = None) -> str:
    return json.dumps(msg.encode_audio_chunk(pcm, seq))


END_OF_AUDIO = json.dumps({"type": "end_of_audio"})


def split_chunks(samples: np.ndarray, sizes: list[int] | int) -> list[np.ndarray]:
    if isinstance(sizes, int):
        sizes = [sizes]
    out, i, k = [], 0, 0
    while i < len(samples):
        n = sizes[k % len(sizes)]
        out.append(samples[i : i + n])
        i, k = i + n, k + 1
    return out


async def live_converse(
    url: str,
    start: str,
    chunks: list,
    *,
    pace_s: float = 0.0,
    pauses: dict[int, float] | None = None,
    wait_started: bool = True,
    read_delay_s: float = 0.0,
    max_queue: int | None = 16,
    timeout_s: float = 30.0,
) -> LiveTranscript:
    """Start a live session, send ``chunks`` (bytes or JSON text, END_OF_AUDIO included by the
    caller), ``pace_s`` apart, sleeping ``pauses[i]`` before chunk i; read everything until close."""
    import time

    from ditto.protocol.frames import FrameKind

    out = LiveTranscript()
    started = asyncio.Event()
    pauses = pauses or {}

    async def reader(ws):
        await asyncio.sleep(read_delay_s)  # the scenario (a client that stalls), not synchronisation
        try:
            async for reply in ws:
                if isinstance(reply, bytes):
                    header, payload = FrameHeader.unpack(reply)
                    if header.kind == FrameKind.PCM16:
                        out.echoes.append((header, bytes(payload)))
                    else:
                        out.frames.append((header, bytes(payload)))
                        out.frame_arrivals.append(time.monotonic())
                else:
                    m = msg.parse_server_message(reply)
                    out.controls.append(m)
                    if isinstance(m, msg.StreamingStarted):
                        started.set()
        except websockets.exceptions.ConnectionClosed:
            pass
        finally:
            started.set()

    async with asyncio.timeout(timeout_s):
        async with websockets.connect(url, max_size=None, max_queue=max_queue) as ws:
            await ws.send(start)
            task = asyncio.create_task(reader(ws))
            try:
                if wait_started:
                    await started.wait()
                for i, chunk in enumerate(chunks):
                    if i in pauses:
                        await asyncio.sleep(pauses[i])  # the scenario (an audio gap), not synchronisation
                    elif i and pace_s:
                        await asyncio.sleep(pace_s)  # the scenario (real-time pacing), not synchronisation
                    await ws.send(chunk)
                    out.chunk_sent_at.append(time.monotonic())
            except websockets.exceptions.ConnectionClosed:
                pass
            await task
            out.close_code = ws.close_code
    return out


# --- conversations -------------------------------------------------------------------------------

END_OF_UTTERANCE = json.dumps({"type": "end_of_utterance"})
INTERRUPT = json.dumps({"type": "interrupt"})


class LiveClient:
    """A live session driven step by step: send messages, await what the server sent.

    ``events`` holds every video frame header and control message in arrival order (echoes apart),
    each with its arrival time (monotonic s); tests wait on it with :meth:`wait_for`, never by sleeping.
    """

    def __init__(self, ws) -> None:
        self.ws = ws
        self.events: list[tuple[float, object]] = []  # (arrival, FrameHeader | server message)
        self.close_code: int | None = None
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, url: str, start: str) -> "LiveClient":
        client = cls(await websockets.connect(url, max_size=None))
        await client.ws.send(start)
        # a real backend analyses the portrait first (face detection): slow on a loaded 2-core machine
        await client.wait_for(lambda c: c.of_type(msg.StreamingStarted), timeout_s=60.0)
        return client

    async def _read(self) -> None:
        import time

        from ditto.protocol.frames import FrameKind

        try:
            async for reply in self.ws:
                if isinstance(reply, bytes):
                    header, _ = FrameHeader.unpack(reply)
                    if header.kind == FrameKind.PCM16:
                        continue
                    event = header
                else:
                    event = msg.parse_server_message(reply)
                async with self._changed:
                    self.events.append((time.monotonic(), event))
                    self._changed.notify_all()
        except websockets.exceptions.ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            async with self._changed:
                self._changed.notify_all()

    async def send(self, *messages: str | bytes) -> None:
        for m in messages:
            await self.ws.send(m)

    async def wait_for(self, condition, timeout_s: float = 10.0):
        """Until ``condition(self)`` is truthy (returned) or the connection closed (AssertionError)."""
        async with asyncio.timeout(timeout_s):
            async with self._changed:
                while not (result := condition(self)):
                    assert not self._reader.done(), f"connection closed first: {self.controls}"
                    await self._changed.wait()
        return result

    async def close(self) -> None:
        """Await the server's close (after end_of_audio or an error)."""
        await self._reader

    @property
    def frames(self) -> list[FrameHeader]:
        return [e for _, e in self.events if isinstance(e, FrameHeader)]

    @property
    def controls(self) -> list:
        return [e for _, e in self.events if not isinstance(e, FrameHeader)]

    def of_type(self, kind: type) -> list:
        return [m for m in self.controls if isinstance(m, kind)]

    def finished(self, utterance: int):
        """The playback_finished of ``utterance``, if it came."""
        return next((m for m in self.of_type(msg.PlaybackFinished) if m.utterance == utterance), None)

    def index_of(self, event) -> int:
        return next(i for i, (_, e) in enumerate(self.events) if e is event)

"""A raw protocol client for tests: send given messages, collect what comes back."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json

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
    return json.dumps({"type": "start_streaming", "audio": msg.encode_upload("a.wav", audio),
                       "source": msg.encode_upload("s.png", image), **extra})


async def converse(url: str, *messages: str | bytes, timeout_s: float = 30.0,
                   close_after: int | None = None) -> Transcript:
    """Send ``messages``, then read until the server closes (or ``close_after`` frames arrived)."""
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
            except websockets.exceptions.ConnectionClosed:
                pass
            out.close_code = ws.close_code
    return out

"""Outputs of the client: one JPEG per frame, an MP4 with the original audio, a JSON report."""

from __future__ import annotations

import json
import logging
from fractions import Fraction
from pathlib import Path

from ditto import FPS
from ditto.client import LOGGER_NAME

logger = logging.getLogger(LOGGER_NAME)


class FrameFolderWriter:
    """Writes ``frame_00000.jpg``, ``frame_00001.jpg``... as frames arrive."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.count = 0

    def path_for(self, index: int) -> Path:
        return self.folder / f"frame_{index:05d}.jpg"

    def write(self, index: int, jpeg: bytes) -> None:
        self.path_for(index).write_bytes(jpeg)
        self.count += 1


def _decode_rgb(path: Path):
    import av

    with av.open(str(path)) as src:
        return next(src.decode(video=0)).to_ndarray(format="rgb24")


def mux_mp4(frame_paths: list[Path], audio_path: Path | None, output: Path, fps: int = FPS) -> None:
    """Encode JPEG frames as H.264 (yuv420p, 25 fps) and mux the original audio as AAC,
    cut to the video's duration."""
    import av
    import numpy as np

    if not frame_paths:
        raise ValueError("no frames to write")
    first = _decode_rgb(frame_paths[0])
    with av.open(str(output), mode="w") as out:
        # every stream must exist before the first packet is muxed
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height = first.shape[1] // 2 * 2, first.shape[0] // 2 * 2
        video.pix_fmt = "yuv420p"
        video.options = {"crf": "18", "preset": "veryfast"}
        audio_src = av.open(str(audio_path)) if audio_path is not None and audio_path.is_file() else None
        try:
            audio = None
            if audio_src is not None and audio_src.streams.audio:
                in_stream = audio_src.streams.audio[0]
                audio = out.add_stream("aac", rate=in_stream.rate or 16000)
                audio.layout = "stereo" if (in_stream.channels or 1) > 1 else "mono"
            for i, path in enumerate(frame_paths):
                image = first if i == 0 else _decode_rgb(path)
                frame = av.VideoFrame.from_ndarray(
                    np.ascontiguousarray(image[: video.height, : video.width]), format="rgb24"
                )
                frame.pts, frame.time_base = i, Fraction(1, fps)
                out.mux(video.encode(frame))
            out.mux(video.encode())
            if audio is not None:
                _mux_audio(out, audio_src, audio, duration_s=len(frame_paths) / fps)
        finally:
            if audio_src is not None:
                audio_src.close()


def _mux_audio(out, src, stream, duration_s: float) -> None:
    import av

    rate = stream.rate
    resampler = av.AudioResampler(format="fltp", layout=stream.layout.name, rate=rate)
    max_samples = int(round(duration_s * rate))
    written = 0
    for frame in src.decode(src.streams.audio[0]):
        for chunk in resampler.resample(frame):
            if written >= max_samples:
                break
            chunk.pts = written
            written += chunk.samples
            out.mux(stream.encode(chunk))
    out.mux(stream.encode(None))


def write_wav_pcm16(path: Path, chunks: list[bytes], sample_rate_hz: int = 16000) -> None:
    """A mono 16-bit WAV of little-endian int16 chunks (the server's audio echo)."""
    import wave

    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate_hz)
        out.writeframes(b"".join(chunks))


def write_json(path: Path, report: dict) -> None:
    path.write_text(json.dumps(report, indent=2, default=str))

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


def mux_mp4(frame_paths: list[Path], audio_path: Path | None, output: Path, fps: int = FPS) -> None:
    """Encode JPEG frames as H.264 (yuv420p, 25 fps) and mux the original audio as AAC."""
    import av
    import numpy as np

    with av.open(str(output), mode="w") as out:
        video = None
        for i, path in enumerate(frame_paths):
            with av.open(str(path)) as src:
                image = next(src.decode(video=0)).to_ndarray(format="rgb24")
            if video is None:
                video = out.add_stream("libx264", rate=fps)
                video.width, video.height = image.shape[1] // 2 * 2, image.shape[0] // 2 * 2
                video.pix_fmt = "yuv420p"
                video.options = {"crf": "18", "preset": "veryfast"}
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[: video.height, : video.width]),
                                               format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in video.encode(frame):
                out.mux(packet)
        if video is not None:
            for packet in video.encode():
                out.mux(packet)
        if audio_path is not None and audio_path.is_file():
            _mux_audio(out, audio_path, duration_s=len(frame_paths) / fps)


def _mux_audio(out, audio_path: Path, duration_s: float) -> None:
    import av

    with av.open(str(audio_path)) as src:
        in_stream = src.streams.audio[0]
        rate = in_stream.rate or 16000
        stream = out.add_stream("aac", rate=rate)
        stream.layout = "stereo" if (in_stream.channels or 1) > 1 else "mono"
        resampler = av.AudioResampler(format="fltp", layout=stream.layout.name, rate=rate)
        max_samples = int(round(duration_s * rate))
        written = 0
        for frame in src.decode(in_stream):
            for chunk in resampler.resample(frame):
                if written >= max_samples:
                    break
                chunk.pts = written
                written += chunk.samples
                for packet in stream.encode(chunk):
                    out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def write_json(path: Path, report: dict) -> None:
    path.write_text(json.dumps(report, indent=2, default=str))

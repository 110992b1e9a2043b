"""``streaming_client.py --realtime`` end to end against a real server: paced chunks, frames
while sending, the statistics block with the live lines, an MP4 with the audio muxed."""

from __future__ import annotations

import json
import re

import numpy as np

from ditto.client.cli import main
from tests.conftest import FakeBackend
from tests.server.helpers import png_bytes, portrait, speech_like


def test_realtime_client_end_to_end(start_server, tmp_path, capsys):
    import av
    import soundfile

    server = start_server(backend=FakeBackend(delay_s=0.002))
    mono = speech_like(1.5, rate=22050)
    audio_path = tmp_path / "speech.wav"
    soundfile.write(audio_path, np.stack([mono, mono], axis=1), 22050, subtype="PCM_16")  # stereo, 22.05 kHz
    image_path = tmp_path / "face.png"
    image_path.write_bytes(png_bytes(portrait(size=96)))
    out, report = tmp_path / "out.mp4", tmp_path / "stats.json"

    code = main(
        [
            "--server",
            server.ws,
            "--client_id",
            "cli-live",
            "--audio_path",
            str(audio_path),
            "--source_path",
            str(image_path),
            "--realtime",
            "--chunk_ms",
            "100",
            "--timeout",
            "30",
            "--output",
            str(out),
            "--json",
            str(report),
        ]
    )
    text = capsys.readouterr().out
    assert code == 0, text
    assert "Total Frames Received: 38" in text  # ceil(1.5 * 25)
    lag = re.search(r"^End-to-end Lag: p50 (\d+) ms, p95 (\d+) ms, p99 (\d+) ms$", text, re.M)
    assert lag and int(lag.group(1)) <= int(lag.group(2)) <= int(lag.group(3)) < 1000
    assert "Frames Skipped: 0" in text.splitlines()
    latency = float(re.search(r"^Streaming Latency: ([\d.]+)s", text, re.M).group(1))
    assert latency < 1.0  # counted from the first audio chunk sent
    duration = float(re.search(r"^Total Duration: ([\d.]+)s", text, re.M).group(1))
    assert 1.3 < duration < 2.5  # paced at real time: about the clip's length, not instant

    stats = json.loads(report.read_text())
    assert stats["ok"] and stats["live"] and stats["expected_frames"] == 38 and stats["stats"]["lag"]["count"] == 38

    with av.open(str(out)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0]
        assert video.frames == 38
        video_s = float(video.duration * video.time_base)
        audio_s = float(audio.duration * audio.time_base)
    assert abs(video_s - 1.52) < 1e-6
    assert abs(audio_s - 1.5) <= 0.04 + 1e-6 and abs(audio_s - video_s) <= 0.04 + 1e-6

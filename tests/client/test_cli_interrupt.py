"""``streaming_client.py --realtime --interrupt_at SECONDS``: the flag's checks, and the interrupt
lines of the statistics block against a server speaking the #9 contract."""

from __future__ import annotations

import json
import re

import pytest

from ditto.client.cli import main
from tests.server.helpers import png_bytes, portrait, speech_like, wav_bytes


@pytest.fixture
def media(tmp_path):
    audio, image = tmp_path / "a.wav", tmp_path / "s.png"
    audio.write_bytes(wav_bytes(speech_like(1.0)))
    image.write_bytes(png_bytes(portrait()))
    return ["--audio_path", str(audio), "--source_path", str(image), "--timeout", "20"]


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--interrupt_at", "0.5"], "--interrupt_at needs --realtime"),
        (["--realtime", "--interrupt_at", "0"], "--interrupt_at must be > 0"),
        (["--realtime", "--interrupt_at", "1.0"], "--interrupt_at must be under the audio's 1.00 s"),
    ],
)
def test_interrupt_at_is_checked_before_connecting(media, flags, message, capsys):
    assert main(["--server", "ws://127.0.0.1:9", *media, *flags]) == 2
    assert message in capsys.readouterr().err


def test_interrupt_at_reports_the_interrupt(contract_server, media, tmp_path, capsys):
    report = tmp_path / "stats.json"
    code = main(
        [
            "--server",
            contract_server.ws,
            *media,
            "--realtime",
            "--chunk_ms",
            "100",
            "--interrupt_at",
            "0.5",
            "--json",
            str(report),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    audio_sent = sum(item[1] for item in contract_server.received if isinstance(item, tuple))
    assert audio_sent == 8000 and contract_server.received[-2:] == ["interrupt", "end_of_audio"]
    latency = re.search(r"^Interrupt Latency: last speech frame (\d+) ms, playback_finished (\d+) ms$", out, re.M)
    assert latency and int(latency.group(1)) <= int(latency.group(2)) < 1000, out
    gap = re.search(r"^Idle Continuity: largest frame gap after the interrupt (\d+) ms$", out, re.M)
    assert gap, out
    interrupt = json.loads(report.read_text())["stats"]["interrupt"]
    assert set(interrupt) == {"to_last_speech_frame_ms", "to_playback_finished_ms", "max_gap_after_ms"}

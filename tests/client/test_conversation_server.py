"""The conversation client (#9) end to end against the real server (FakeBackend)."""

from __future__ import annotations

import asyncio

from ditto.client.connection import PcmAudio, run_live_session
from ditto.protocol import messages as msg
from tests.conftest import FakeBackend
from tests.server.helpers import png_bytes, portrait, speech_like

RATE_HZ = 16000


def live(server, tmp_path, **options):
    image = tmp_path / "face.png"
    image.write_bytes(png_bytes(portrait(size=64)))
    audio = PcmAudio((speech_like(1.0, rate=RATE_HZ) * 32767).astype("<i2").tobytes(), RATE_HZ, 1)
    return asyncio.run(
        run_live_session(server.ws, "conv", audio, str(image), timeout_s=20, chunk_ms=100, realtime=False, **options)
    )


def test_frames_carry_the_server_send_time(start_server, tmp_path):
    result = live(start_server(backend=FakeBackend()), tmp_path)
    assert result.ok, result.error
    assert result.frames and all(f.sent_us > 0 for f in result.frames)
    assert all(0 <= f.transit_ms < 5000 for f in result.frames)  # one host: one wall clock


def test_interrupt_ends_the_utterance_and_the_session_stays_open(start_server, tmp_path):
    result = live(start_server(backend=FakeBackend()), tmp_path, interrupt_at_s=0.5, idle_after_interrupt_s=0.3)
    assert result.ok, result.error
    finished = [e.message for e in result.playback if isinstance(e.message, msg.PlaybackFinished)]
    assert [(f.utterance, f.interrupted) for f in finished] == [(1, True)]
    assert any(f.idle for f in result.frames if f.arrival_s > result.interrupt_sent_s)


def test_end_of_utterance_numbers_the_utterances(start_server, tmp_path):
    result = live(start_server(backend=FakeBackend()), tmp_path, utterance_ends_s=[0.4])
    assert result.ok, result.error
    assert [(type(e.message), e.message.utterance) for e in result.playback] == [
        (msg.PlaybackStarted, 1),
        (msg.PlaybackFinished, 1),
        (msg.PlaybackStarted, 2),
        (msg.PlaybackFinished, 2),
    ]
    assert {f.utterance for f in result.frames if not f.idle} == {1, 2}

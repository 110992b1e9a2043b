"""``streaming_client.py`` exit codes: missing frames always fail; ``--require_realtime`` also
fails a stream whose statistics block shows ❌."""

from __future__ import annotations

import pytest

from ditto.client.cli import exit_code, main
from ditto.client.connection import ReceivedFrame, SessionResult
from ditto.client.stats import compute_stats
from ditto.protocol import messages as msg
from tests.conftest import FakeBackend
from tests.server.helpers import png_bytes, portrait, speech_like, wav_bytes

FRAMES = 1000  # 40 s: FPS counts from the start command, a long stream amortises the wait for frame 0
ON_TIME = [0.5 + 0.04 * i for i in range(FRAMES)]  # 25 fps, first frame after 0.5 s
LATE = [3.5 + 0.04 * i for i in range(FRAMES)]  # still 23 fps overall, but the first frame after 3.5 s
SLOW = [0.5 + 0.1 * i for i in range(FRAMES)]  # 10 fps


def session(received: int = FRAMES) -> SessionResult:
    return SessionResult(
        start_sent_s=0.0,
        frames=[ReceivedFrame(i, 40 * i, 1000, 0.0) for i in range(received)],
        metadata=msg.Metadata(duration_s=FRAMES / 25, total_frames=FRAMES, fps=25, width=64, height=64),
        completed=msg.StreamingCompleted(frames_sent=received),
    )


@pytest.mark.parametrize(
    "arrivals,failed",
    [(ON_TIME, []), (LATE, ["latency"]), (SLOW, ["fps", "intervals"])],
    ids=["on_time", "late", "slow"],
)
def test_exit_code_from_the_realtime_checks(arrivals, failed):
    stats = compute_stats(0.0, arrivals, [1000] * FRAMES)
    assert [name for name, ok in stats.checks.items() if not ok] == failed
    assert exit_code(session(), stats, require_realtime=False) == 0  # today's default
    assert exit_code(session(), stats, require_realtime=True) == (1 if failed else 0)


def test_missing_frames_fail_either_way():
    stats = compute_stats(0.0, ON_TIME[:-1], [1000] * (FRAMES - 1))
    for require in (False, True):
        assert exit_code(session(FRAMES - 1), stats, require_realtime=require) == 1


@pytest.fixture
def media(tmp_path):
    audio, image = tmp_path / "a.wav", tmp_path / "s.png"
    audio.write_bytes(wav_bytes(speech_like(0.5)))  # 13 frames
    image.write_bytes(png_bytes(portrait()))
    return ["--audio_path", str(audio), "--source_path", str(image), "--timeout", "30"]


def test_require_realtime_fails_a_slow_stream(start_server, media, capsys):
    """50 ms per frame: at most 20 fps, under the 22.5 fps check, however fast the machine."""
    server = start_server(backend=FakeBackend(delay_s=0.05))
    argv = ["--server", server.ws, *media]
    assert main(argv) == 0
    assert "❌ Frame rate suitable for real-time" in capsys.readouterr().out
    assert main([*argv, "--require_realtime"]) == 1
    assert "❌ Frame rate suitable for real-time" in capsys.readouterr().out


def test_require_realtime_passes_a_fast_stream(start_server, media, capsys):
    server = start_server()
    assert main(["--server", server.ws, *media, "--require_realtime"]) == 0
    assert "❌" not in capsys.readouterr().out

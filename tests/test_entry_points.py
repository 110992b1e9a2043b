"""The three scripts as a user runs them: real processes, real files, the embedded animator."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import EXAMPLE_AUDIO, EXAMPLE_IMAGE, ROOT, free_port

PY = sys.executable


def wait_healthy(port: int, proc: subprocess.Popen, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as reply:
                return json.load(reply)
        except OSError:
            time.sleep(0.2)  # poll interval of a bounded poll of /healthz (no event to await from a process)
    raise AssertionError("server never became healthy")


def test_demo_streams_the_example_in_real_time(tmp_path):
    """The README's demo: 394 frames of the 15.75 s / 1432x1432 example, all real-time checks passing."""
    frames_dir = tmp_path / "frames"
    stats_json = tmp_path / "stats.json"
    out = subprocess.run(
        [
            PY,
            "run_streaming_test.py",
            "--mode",
            "both",
            "--save_frames",
            "--frames_dir",
            str(frames_dir),
            "--json",
            str(stats_json),
            "--seed",
            "3",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    log = out.stderr
    for line in (
        "INFO:streaming_client:Connected to server as client test_client",
        "INFO:streaming_client:Sent start streaming command",
        "INFO:streaming_client:Streaming started: ./example/audio.wav -> ./example/image.png",
        "INFO:streaming_client:Metadata: 15.75s, 394 frames",
        "INFO:streaming_client:Received frame 0, size: ",
        "INFO:streaming_client:Streaming completed",
        "INFO:streaming_client:Writer closed. Total frames: 394",
        "INFO:streaming_server:Client test_client connected",
        "INFO:streaming_server:Starting streaming for client test_client",
    ):
        assert line in log, line
    assert "Total Frames Received: 394" in out.stdout
    assert len(re.findall(r"^✅ ", out.stdout, re.M)) == 3, out.stdout
    assert len(list(frames_dir.glob("frame_*.jpg"))) == 394
    report = json.loads(stats_json.read_text())
    assert report["ok"] and report["stats"]["frames"] == 394


def test_demo_saves_nothing_unless_asked(tmp_path):
    out = subprocess.run(
        [
            PY,
            str(ROOT / "run_streaming_test.py"),
            "--mode",
            "both",
            "--audio_path",
            str(EXAMPLE_AUDIO),
            "--source_path",
            str(EXAMPLE_IMAGE),
            "--max_size",
            "256",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert list(tmp_path.iterdir()) == []


def test_client_writes_mp4_with_audio(tmp_path):
    import av

    output = tmp_path / "out.mp4"
    out = subprocess.run(
        [PY, "run_streaming_test.py", "--mode", "both", "--max_size", "256", "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    with av.open(str(output)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert video.frames == 394 and (video.width, video.height) == (256, 256)
        assert abs(float(container.duration / 1e6) - 15.76) < 0.1
        assert audio.rate == 24000


def test_server_exits_zero_on_sigterm_and_sigint():
    for sig in (signal.SIGTERM, signal.SIGINT):
        port = free_port()
        proc = subprocess.Popen(
            [PY, "streaming_server.py", "--port", str(port)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            health = wait_healthy(port, proc)
            assert health == {
                "status": "ok",
                "backend": "lite",
                "engine": {},
                "sessions": {"active": 0, "max": 4, "live": 0, "live_max": 4},
            }
            proc.send_signal(sig)
            assert proc.wait(30) == 0
        finally:
            proc.kill()


def test_server_reads_ditto_variables_and_flags_win():
    """DITTO_MAX_SESSIONS applies (no flag); --port wins over DITTO_PORT."""
    port = free_port()
    env = {**os.environ, "DITTO_MAX_SESSIONS": "2", "DITTO_PORT": str(free_port())}
    proc = subprocess.Popen(
        [PY, "streaming_server.py", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_healthy(port, proc)["sessions"]["max"] == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        proc.kill()


def test_sigterm_mid_session_sends_shutting_down_then_closes_1012():
    """The README's promise: a client streaming when the server is stopped is told why (the
    ``shutting_down`` error), then the socket closes with 1012, and the server exits 0."""
    import asyncio

    from ditto.errors import ErrorCode
    from ditto.protocol import messages as msg
    from tests.server.helpers import start_message, stream_then

    port = free_port()
    proc = subprocess.Popen(
        [PY, "streaming_server.py", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_healthy(port, proc)

        async def sigterm():
            proc.send_signal(signal.SIGTERM)

        start = start_message(EXAMPLE_AUDIO.read_bytes(), EXAMPLE_IMAGE.read_bytes())
        t = asyncio.run(stream_then(f"ws://127.0.0.1:{port}/ws/stopped", start, sigterm))
        assert isinstance(t.controls[-1], msg.Error) and t.controls[-1].code == ErrorCode.SHUTTING_DOWN, t.controls
        assert t.close_code == 1012 and 0 < len(t.frames) < 394
        assert proc.wait(30) == 0
    finally:
        proc.kill()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--data_root", "x"], "--data_root and --cfg_pkl go together"),
        (["--backend", "ditto"], "--backend ditto needs --data_root and --cfg_pkl"),
        (["--jpeg_quality", "0"], "jpeg_quality"),
    ],
)
def test_server_flag_errors_are_one_line(argv, message):
    out = subprocess.run([PY, "streaming_server.py", *argv], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr


def test_client_fails_nonzero_when_no_server():
    out = subprocess.run(
        [PY, "streaming_client.py", "--server", f"ws://127.0.0.1:{free_port()}", "--timeout", "5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and "Total Frames Received: 0" in out.stdout and "❌" in out.stdout

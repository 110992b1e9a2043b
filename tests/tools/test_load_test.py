"""``python -m ditto.tools.load_test``: the level statistics on made-up sessions, and the tool end
to end against a real uvicorn server with the lite backend (a 1.5 s clip, levels 1 and 2)."""

from __future__ import annotations

import argparse
import asyncio
import json

import pytest

from ditto.client.connection import ReceivedFrame, SessionResult, read_pcm
from ditto.protocol import messages as msg
from ditto.tools.load_test import (
    CLIENT_TIMEOUT,
    LevelReport,
    LoadPlan,
    SessionOutcome,
    capacity,
    format_table,
    main,
    parse_levels,
    run_level,
    session_outcome,
    summarize_level,
)
from tests.conftest import EXAMPLE_AUDIO, EXAMPLE_IMAGE, free_port

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LEVEL_FIELDS = {
    "sessions",
    "sustained",
    "admitted_sustained",
    "fps_min",
    "fps_aggregate",
    "first_frame_p95_s",
    "lag_p50_ms",
    "lag_p95_ms",
    "skipped",
    "idle",
    "busy",
    "errors",
}


def outcome(
    *, complete=True, frames=100, fps=25.0, first_frame_s=0.1, lags_ms=(50.0,), skipped=0, error_code=None
) -> SessionOutcome:
    return SessionOutcome(
        complete=complete,
        frames=frames,
        fps=fps,
        first_frame_s=first_frame_s,
        lags_ms=tuple(lags_ms),
        skipped=skipped,
        idle=0,
        error_code=error_code,
    )


# --- pure statistics ----------------------------------------------------------------------------


def test_live_level_figures_over_all_frames_of_all_sessions():
    level = summarize_level(
        [
            outcome(fps=24.0, lags_ms=range(0, 100), first_frame_s=0.2),
            outcome(fps=26.0, lags_ms=range(100, 200), first_frame_s=0.4),
        ],
        8.0,
        live=True,
        lag_bound_ms=500.0,
    )
    assert level.sessions == 2 and level.sustained
    assert level.fps_min == 24.0 and level.fps_aggregate == 200 / 8.0
    assert level.lag_p50_ms == pytest.approx(99.5) and level.lag_p95_ms == pytest.approx(189.05)
    assert level.first_frame_p95_s == pytest.approx(0.39)
    assert level.skipped == 0 and level.busy == 0 and level.errors == {}


@pytest.mark.parametrize(
    "second,why",
    [
        (outcome(lags_ms=[600.0] * 10), "lag p95 over the bound"),
        (outcome(skipped=1), "a frame skipped"),
        (outcome(complete=False), "a frame missing"),
        (outcome(complete=False, frames=0, fps=0.0, first_frame_s=None, lags_ms=(), error_code="busy"), "refused"),
    ],
)
def test_live_level_not_sustained(second, why):
    level = summarize_level([outcome(), second], 5.0, live=True, lag_bound_ms=500.0)
    assert not level.sustained, why


@pytest.mark.parametrize("live", [True, False])
def test_past_the_admission_limit_the_admitted_sessions_are_judged_alone(live):
    refused = outcome(complete=False, frames=0, fps=0.0, first_frame_s=None, lags_ms=(), error_code="busy")
    lags = {} if live else {"lags_ms": ()}
    admitted_ok = summarize_level([outcome(**lags), outcome(**lags), refused], 5.0, live=live, lag_bound_ms=500.0)
    assert not admitted_ok.sustained and admitted_ok.admitted_sustained and admitted_ok.busy == 1
    slow = outcome(lags_ms=[600.0] * 10) if live else outcome(fps=20.0, lags_ms=())
    admitted_slow = summarize_level([outcome(**lags), slow, refused], 5.0, live=live, lag_bound_ms=500.0)
    assert not admitted_slow.admitted_sustained
    all_refused = summarize_level([refused, refused], 5.0, live=live, lag_bound_ms=500.0)
    assert not all_refused.admitted_sustained
    failed = outcome(complete=False, frames=0, fps=0.0, first_frame_s=None, lags_ms=(), error_code="no_face")
    assert not summarize_level(
        [outcome(**lags), failed, refused], 5.0, live=live, lag_bound_ms=500.0
    ).admitted_sustained


def test_busy_is_counted_apart_from_other_errors():
    refused = dict(complete=False, frames=0, fps=0.0, first_frame_s=None, lags_ms=())
    level = summarize_level(
        [
            outcome(),
            outcome(**refused, error_code="busy"),
            outcome(**refused, error_code="busy"),
            outcome(**refused, error_code="no_face"),
            outcome(**refused, error_code=CLIENT_TIMEOUT),
        ],
        5.0,
        live=True,
        lag_bound_ms=500.0,
    )
    assert level.busy == 2 and level.errors == {"no_face": 1, CLIENT_TIMEOUT: 1}
    assert level.fps_min == 0.0 and level.first_frame_p95_s == pytest.approx(0.1)


def test_file_level_is_judged_by_the_slowest_session_fps():
    file_outcome = dict(lags_ms=())
    fast = summarize_level(
        [outcome(fps=40.0, **file_outcome), outcome(fps=25.0, **file_outcome)], 5.0, live=False, lag_bound_ms=500.0
    )
    slow = summarize_level(
        [outcome(fps=40.0, **file_outcome), outcome(fps=24.9, **file_outcome)], 5.0, live=False, lag_bound_ms=500.0
    )
    assert fast.sustained and not slow.sustained
    assert fast.lag_p50_ms is None and fast.lag_p95_ms is None


def test_capacity_is_the_largest_sustained_level():
    def level(sessions: int, sustained: bool) -> LevelReport:
        return summarize_level([outcome(complete=sustained)] * sessions, 1.0, live=True, lag_bound_ms=500.0)

    assert capacity([level(1, True), level(2, True), level(4, False), level(6, True), level(8, False)]) == 6
    assert capacity([level(1, False)]) is None
    table = format_table([level(1, True), level(2, False)]).splitlines()
    assert table[0].split()[:3] == ["sessions", "sustained", "fps_min"]
    assert table[1].split()[:2] == ["1", "yes"] and table[2].split()[:2] == ["2", "no"]


def test_session_outcome_from_a_live_result():
    # 16 kHz, 2 chunks of 80 ms (2 frames each) sent at t = 10.0 and 10.08
    result = SessionResult(
        start_sent_s=9.5,
        live=True,
        audio_sample_rate_hz=16000,
        first_audio_sent_s=10.0,
        chunks_sent=[(1280, 10.0), (2560, 10.08)],
        completed=msg.StreamingCompleted(frames_sent=4, frames_skipped=0),
    )
    result.frames = [
        ReceivedFrame(i, 40 * i, 1000, arrival, 640 * i, 640) for i, arrival in enumerate([10.05, 10.1, 10.13, 10.2])
    ]
    o = session_outcome(result)
    assert o.complete and o.frames == 4 and o.error_code is None
    assert o.first_frame_s == pytest.approx(0.05) and o.fps == pytest.approx(4 / 0.2)
    assert [round(x) for x in o.lags_ms] == [50, 100, 50, 120]

    timed_out = session_outcome(SessionResult(start_sent_s=1.0, timed_out=True))
    assert not timed_out.complete and timed_out.error_code == CLIENT_TIMEOUT and timed_out.first_frame_s is None
    busy = session_outcome(SessionResult(error=msg.Error(code="busy", message="full")))
    assert busy.error_code == "busy" and busy.fps == 0.0


def test_parse_levels():
    assert parse_levels("1,2, 4,8") == [1, 2, 4, 8]
    for bad in ("", "0,1", "1,x"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_levels(bad)


# --- end to end ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lite_backend():
    from ditto.backends.lite import LiteBackend

    return LiteBackend()


@pytest.fixture
def short_clip(tmp_path):
    import soundfile

    samples, rate = soundfile.read(EXAMPLE_AUDIO, dtype="int16")
    path = tmp_path / "clip.wav"
    soundfile.write(path, samples[: int(rate * 1.5)], rate, subtype="PCM_16")  # 1.5 s -> 38 frames
    return path


def run_tool(server_ws: str, clip, tmp_path, *levels: str) -> tuple[int, dict, bytes]:
    report, plot = tmp_path / "load.json", tmp_path / "load.png"
    code = main(
        [
            "--server",
            server_ws,
            "--sessions",
            ",".join(levels),
            "--mode",
            "live",
            "--audio",
            str(clip),
            "--source",
            str(EXAMPLE_IMAGE),
            "--chunk_ms",
            "100",
            "--json",
            str(report),
            "--plot",
            str(plot),
        ]
    )
    return code, json.loads(report.read_text()), plot.read_bytes()


def test_levels_against_the_lite_backend(start_server, lite_backend, short_clip, tmp_path, capsys):
    server = start_server(backend=lite_backend, max_size=256, max_sessions=4)
    code, report, png = run_tool(server.ws, short_clip, tmp_path, "1", "2")
    out = capsys.readouterr().out
    assert code == 0, out
    assert report["mode"] == "live" and report["backend"] == "lite"
    levels = report["levels"]
    assert [level["sessions"] for level in levels] == [1, 2]
    for level in levels:
        assert set(level) == LEVEL_FIELDS
        assert level["busy"] == 0 and level["errors"] == {} and level["skipped"] == 0
        assert level["fps_min"] > 0 and level["fps_aggregate"] > 0 and level["first_frame_p95_s"] < 1.0
        assert 0 <= level["lag_p50_ms"] <= level["lag_p95_ms"]
    assert levels[0]["sustained"]
    assert report["capacity"] == max(level["sessions"] for level in levels if level["sustained"])
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000
    assert out.splitlines()[0].split()[:2] == ["sessions", "sustained"]


def test_sessions_cycle_through_several_portraits(start_server, short_clip, tmp_path):
    """With two ``--source`` portraits, the warm-up registers each and a level's sessions bring them in
    turn: the backend registers both, once each (the server caches avatars by their pixels)."""
    import cv2

    from ditto.backends.lite import LiteBackend

    registered: list[tuple[int, ...]] = []  # shapes of the images registered

    class RegisterCounting(LiteBackend):
        def register_source(self, image_rgb):
            registered.append(image_rgb.shape)
            return super().register_source(image_rgb)

    mirrored = tmp_path / "mirrored.png"
    assert cv2.imwrite(str(mirrored), cv2.flip(cv2.imread(str(EXAMPLE_IMAGE)), 1))
    server = start_server(backend=RegisterCounting(), max_size=256, max_sessions=4)
    at_start = len(registered)  # the backend's own warm-up portrait
    report = tmp_path / "load.json"
    argv = ["--server", server.ws, "--sessions", "2", "--audio", str(short_clip), "--chunk_ms", "100"]
    assert main([*argv, "--source", str(EXAMPLE_IMAGE), str(mirrored), "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["sources"] == [str(EXAMPLE_IMAGE), str(mirrored)]
    (level,) = result["levels"]
    assert level["errors"] == {} and level["busy"] == 0 and level["fps_min"] > 0
    assert len(registered) - at_start == 2  # two portraits, each registered once: by its warm-up


def test_refused_sessions_are_counted_as_busy(start_server, lite_backend, short_clip, tmp_path):
    server = start_server(backend=lite_backend, max_size=256, max_sessions=1)
    code, report, png = run_tool(server.ws, short_clip, tmp_path, "2")
    assert code == 0
    (level,) = report["levels"]
    assert level["busy"] == 1 and level["errors"] == {} and not level["sustained"]
    assert level["admitted_sustained"]  # the one admitted session, alone on the server
    assert level["fps_min"] == 0.0 and report["capacity"] is None
    assert png.startswith(PNG_MAGIC)


def test_unreachable_server_is_one_error_line(short_clip, tmp_path, capsys):
    code = main(
        [
            "--server",
            f"ws://127.0.0.1:{free_port()}",
            "--sessions",
            "1",
            "--audio",
            str(short_clip),
            "--source",
            str(EXAMPLE_IMAGE),
            "--json",
            str(tmp_path / "load.json"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert err[0].startswith("python -m ditto.tools.load_test: error: cannot reach the server at ws://127.0.0.1:")
    assert not (tmp_path / "load.json").exists()


def test_spawn_rate_staggers_the_sessions_of_a_level(start_server, lite_backend, short_clip):
    server = start_server(backend=lite_backend, max_size=256, max_sessions=4)
    plan = LoadPlan(
        server.ws, True, str(short_clip), read_pcm(str(short_clip)), (str(EXAMPLE_IMAGE),), 200.0, 60.0, spawn_rate=4.0
    )
    import time

    level_started = time.monotonic()
    results, wall_s = asyncio.run(run_level(plan, 3))
    assert all(r.ok for r in results)
    # session i sends its start message no earlier than i / 4 s into the level (all at once: within ms)
    offsets = [r.start_sent_s - level_started for r in results]
    assert offsets[1] >= 0.25 and offsets[2] >= 0.5, offsets
    assert wall_s > 0.5


def test_a_spawn_rate_must_be_positive(short_clip, tmp_path, capsys):
    code = main(
        ["--server", "ws://127.0.0.1:9", "--sessions", "1", "--audio", str(short_clip), "--source", str(short_clip)]
        + ["--spawn_rate", "0"]
    )
    assert code == 2 and "--spawn_rate must be > 0" in capsys.readouterr().err

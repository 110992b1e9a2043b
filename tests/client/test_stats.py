import re

from ditto.client.stats import compute_stats, format_report


def test_report_layout_and_values():
    start = 100.0
    arrivals = [start + 1.0 + 0.03 * i for i in range(394)]
    stats = compute_stats(start, arrivals, [46_000] * 394)
    report = format_report(stats)
    assert stats.frames == 394 and abs(stats.first_frame_latency_s - 1.0) < 1e-9
    assert abs(stats.intervals.mean_ms - 30.0) < 1e-6 and stats.intervals.count == 393
    lines = report.splitlines()
    assert lines[0] == "=" * 70 and lines[1] == "STREAMING CLIENT STATISTICS" and lines[-1] == "=" * 70
    assert "Total Frames Received: 394" in lines
    assert "Streaming Latency: 1.00s (time to first frame)" in lines
    for label in ("Count", "Mean", "Median", "Std Dev", "Min", "Max", "P95", "P99"):
        assert any(line.startswith(f"  {label}: ") for line in lines)
    assert re.search(r"^✅ Frame rate suitable for real-time \(\d+\.\d >= 22.5 FPS\)$", report, re.M)
    assert "✅ Streaming latency acceptable (1.0s <= 3.0s)" in report
    assert "✅ Frame intervals consistent (30.0ms <= 60.0ms)" in report


def test_failed_checks_are_marked():
    start = 0.0
    arrivals = [5.0 + 0.1 * i for i in range(20)]  # late and slow
    report = format_report(compute_stats(start, arrivals, [1000] * 20))
    assert "❌ Frame rate suitable for real-time (2.9 < 22.5 FPS)" in report
    assert "❌ Streaming latency acceptable (5.0s > 3.0s)" in report
    assert "❌ Frame intervals consistent (100.0ms > 60.0ms)" in report


def test_no_frames():
    stats = compute_stats(0.0, [], [])
    assert stats.frames == 0 and not stats.realtime_ok
    assert "Total Frames Received: 0" in format_report(stats)


def test_end_to_end_lag_per_frame():
    from ditto.client.stats import FrameTiming, end_to_end_lags_ms

    # 48 kHz input in 200 ms chunks sent at t = 10.0, 10.2, 10.4 (cumulative samples 9600, 19200, 24000)
    chunks = [(9600, 10.0), (19200, 10.2), (24000, 10.4)]
    frames = [
        FrameTiming(0, 640, 10.05, False),  # audio ends at 40 ms: in chunk 0 -> 50 ms
        FrameTiming(4 * 640, 640, 10.25, False),  # ends at 200 ms = sample 9600: still chunk 0 -> 250 ms
        FrameTiming(5 * 640, 640, 10.30, False),  # ends at 240 ms: chunk 1 -> 100 ms
        FrameTiming(6 * 640, 640, 10.31, True),  # idle: no lag, shifts what follows by one frame
        FrameTiming(13 * 640, 640, 10.50, False),  # 14 frames - 1 idle = 520 ms: chunk 2 (till 500 ms: last) -> 100 ms
    ]
    lags = end_to_end_lags_ms(chunks, 48000, frames)
    assert [round(x) for x in lags] == [50, 250, 100, 100]


def test_live_report_lines():
    stats = compute_stats(0.0, [0.5, 0.54], [1000, 1000], lags_ms=[10.0, 20.0, 30.0, 400.0], frames_skipped=3)
    report = format_report(stats)
    assert re.search(r"^End-to-end Lag: p50 25 ms, p95 \d+ ms, p99 \d+ ms$", report, re.M)
    assert "Frames Skipped: 3" in report.splitlines()
    assert "End-to-end Lag: n/a (file mode)" in format_report(compute_stats(0.0, [0.5], [10]))

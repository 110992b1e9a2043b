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

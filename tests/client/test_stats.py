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


def test_interrupt_latency_and_idle_continuity():
    from ditto.client.stats import FrameTiming, interrupt_stats

    def frame(arrival_s, idle=False):
        return FrameTiming(0, 640, arrival_s, idle)

    frames = [
        frame(1.00),
        frame(1.04),  # interrupt sent at 1.05
        frame(1.08),  # a speech frame that was already on its way
        frame(1.12, idle=True),
        frame(1.30, idle=True),
        frame(1.34, idle=True),
    ]
    stats = interrupt_stats(1.05, frames, interrupted_finished_s=1.10)
    assert round(stats.to_last_speech_frame_ms) == 30 and round(stats.to_playback_finished_ms) == 50
    assert round(stats.max_gap_after_ms) == 180  # 1.12 -> 1.30: the face froze for 180 ms

    quiet = interrupt_stats(1.05, [frame(1.00), frame(1.06, idle=True)], interrupted_finished_s=None)
    assert quiet.to_last_speech_frame_ms is None and quiet.to_playback_finished_ms is None
    assert round(quiet.max_gap_after_ms) == 60  # from the last frame before the interrupt


def test_interrupt_report_lines():
    from ditto.client.stats import InterruptStats

    lines = format_report(compute_stats(0.0, [0.5], [10], interrupt=InterruptStats(31.6, 52.0, 180.4))).splitlines()
    assert "Interrupt Latency: last speech frame 32 ms, playback_finished 52 ms" in lines
    assert "Idle Continuity: largest frame gap after the interrupt 180 ms" in lines
    lines = format_report(compute_stats(0.0, [0.5], [10], interrupt=InterruptStats(None, None, None))).splitlines()
    assert "Interrupt Latency: last speech frame none after it, playback_finished never" in lines
    assert not any(line.startswith("Interrupt") for line in format_report(compute_stats(0.0, [0.5], [10])).splitlines())


def test_frame_transit_line():
    lines = format_report(compute_stats(0.0, [0.5], [10], transits_ms=[1.0, 2.0, 3.0, 40.0])).splitlines()
    assert any(
        re.fullmatch(r"Frame Transit: p50 2 ms, p95 \d+ ms, p99 \d+ ms \(server send -> received\)", line)
        for line in lines
    ), lines
    assert "Frame Transit: n/a (no send times)" in format_report(compute_stats(0.0, [0.5], [10])).splitlines()

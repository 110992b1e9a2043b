"""Streaming statistics: pure functions over arrival times and sizes (no I/O)."""

from __future__ import annotations

import bisect
import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from ditto import SAMPLE_RATE_HZ
from ditto.protocol import messages as msg

if TYPE_CHECKING:
    from ditto.client.connection import SessionResult

MIN_REALTIME_FPS = 22.5  # 90 % of 25 fps
MAX_FIRST_FRAME_LATENCY_S = 3.0
MAX_MEAN_INTERVAL_MS = 60.0
MB = 1024 * 1024
KB = 1024


@dataclasses.dataclass(frozen=True, slots=True)
class IntervalStats:
    count: int
    mean_ms: float
    median_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    p95_ms: float
    p99_ms: float


@dataclasses.dataclass(frozen=True, slots=True)
class LagStats:
    """Percentiles of a per-frame delay, ms (which one: the :class:`StreamStats` field)."""

    count: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


@dataclasses.dataclass(frozen=True, slots=True)
class StreamStats:
    frames: int
    duration_s: float  # start command (live --realtime: first audio chunk) sent -> last frame received
    first_frame_latency_s: float | None  # start command (live --realtime: first audio chunk) sent -> first frame
    fps: float
    total_bytes: int
    intervals: IntervalStats | None
    lag: LagStats | None = None  # live only: frame received - end of that frame's audio sent
    frames_skipped: int = 0  # reported by the server (live: frames not sent to a client that fell behind)
    transit: LagStats | None = None  # frame received - the server's sent_us, on the wall clocks
    interrupt: InterruptStats | None = None  # live sessions that sent an interrupt

    @property
    def average_frame_bytes(self) -> float:
        return self.total_bytes / self.frames if self.frames else 0.0

    @property
    def bandwidth_mbps(self) -> float:
        return self.total_bytes / MB * 8 / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def fps_ok(self) -> bool:
        return self.fps >= MIN_REALTIME_FPS

    @property
    def latency_ok(self) -> bool:
        return self.first_frame_latency_s is not None and self.first_frame_latency_s <= MAX_FIRST_FRAME_LATENCY_S

    @property
    def intervals_ok(self) -> bool:
        return self.intervals is not None and self.intervals.mean_ms <= MAX_MEAN_INTERVAL_MS

    @property
    def checks(self) -> dict[str, bool]:
        """The real-time checks of the statistics block, by name, in its order."""
        return {"fps": self.fps_ok, "latency": self.latency_ok, "intervals": self.intervals_ok}

    @property
    def realtime_ok(self) -> bool:
        return all(self.checks.values())

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.update(
            average_frame_bytes=self.average_frame_bytes, bandwidth_mbps=self.bandwidth_mbps, realtime=self.checks
        )
        return out


def interval_stats(arrivals_s: list[float]) -> IntervalStats | None:
    if len(arrivals_s) < 2:
        return None
    ms = np.diff(np.asarray(arrivals_s, dtype=np.float64)) * 1000.0
    return IntervalStats(
        count=len(ms),
        mean_ms=float(ms.mean()),
        median_ms=float(np.median(ms)),
        std_ms=float(ms.std()),
        min_ms=float(ms.min()),
        max_ms=float(ms.max()),
        p95_ms=float(np.percentile(ms, 95)),
        p99_ms=float(np.percentile(ms, 99)),
    )


def lag_stats(lags_ms: list[float]) -> LagStats | None:
    if not lags_ms:
        return None
    ms = np.asarray(lags_ms, dtype=np.float64)
    return LagStats(
        count=len(ms),
        p50_ms=float(np.percentile(ms, 50)),
        p95_ms=float(np.percentile(ms, 95)),
        p99_ms=float(np.percentile(ms, 99)),
        max_ms=float(ms.max()),
    )


@dataclasses.dataclass(frozen=True, slots=True)
class InterruptStats:
    """How an ``interrupt`` took effect, in ms after it was sent."""

    to_last_speech_frame_ms: float | None  # the last speech frame that still arrived (None: none did)
    to_playback_finished_ms: float | None  # ``playback_finished {interrupted: true}`` (None: never came)
    max_gap_after_ms: float | None  # idle continuity: the largest arrival interval from the frame before it on


@dataclasses.dataclass(frozen=True, slots=True)
class FrameTiming:
    """What the lag of one received frame depends on."""

    sample_start: int  # 16 kHz sample the frame starts at (from its header)
    sample_count: int
    arrival_s: float
    idle: bool  # IDLE frames have no audio that was sent: they get no lag


def end_to_end_lags_ms(
    chunks_sent: list[tuple[int, float]], sample_rate_hz: int, frames: list[FrameTiming]
) -> list[float]:
    """Per speech frame: its arrival minus the wall time its audio's last sample was sent.

    Args:
        chunks_sent: per audio chunk sent, in order, (input samples sent so far including this
            chunk, clock reading when it was sent).
        sample_rate_hz: rate of those input samples.
        frames: received frames in arrival order. Idle silence the server inserted shifts the
            16 kHz timeline; it is taken out using the IDLE frames received before each frame.
    """
    if not chunks_sent:
        return []
    ends = [end for end, _ in chunks_sent]
    total = ends[-1]
    idle_samples = 0
    out = []
    for f in frames:
        if f.idle:
            idle_samples += f.sample_count
            continue
        end_16k = f.sample_start + f.sample_count - idle_samples
        needed = min(total, -(-end_16k * sample_rate_hz // SAMPLE_RATE_HZ))  # input samples of the frame's end
        i = min(bisect.bisect_left(ends, needed), len(ends) - 1)
        out.append((f.arrival_s - chunks_sent[i][1]) * 1000.0)
    return out


def interrupt_stats(
    interrupt_sent_s: float, frames: list[FrameTiming], interrupted_finished_s: float | None
) -> InterruptStats:
    """Args: the clock reading when ``interrupt`` was sent, the frames received in arrival order,
    and when ``playback_finished {interrupted: true}`` arrived (``None``: it did not)."""
    after = [f for f in frames if f.arrival_s >= interrupt_sent_s]
    speech_after = [f.arrival_s for f in after if not f.idle]
    before = [f.arrival_s for f in frames if f.arrival_s < interrupt_sent_s][-1:]
    gaps = interval_stats(before + [f.arrival_s for f in after])
    return InterruptStats(
        to_last_speech_frame_ms=(speech_after[-1] - interrupt_sent_s) * 1000.0 if speech_after else None,
        to_playback_finished_ms=(
            None if interrupted_finished_s is None else (interrupted_finished_s - interrupt_sent_s) * 1000.0
        ),
        max_gap_after_ms=gaps.max_ms if gaps is not None else None,
    )


def compute_stats(
    start_s: float,
    arrivals_s: list[float],
    sizes: list[int],
    *,
    lags_ms: list[float] | None = None,
    frames_skipped: int = 0,
    transits_ms: list[float] | None = None,
    interrupt: InterruptStats | None = None,
) -> StreamStats:
    """Statistics of one stream; times are one monotonic clock's readings in seconds."""
    frames = len(arrivals_s)
    duration = (arrivals_s[-1] - start_s) if frames else 0.0
    return StreamStats(
        frames=frames,
        duration_s=duration,
        first_frame_latency_s=(arrivals_s[0] - start_s) if frames else None,
        fps=frames / duration if duration > 0 else 0.0,
        total_bytes=int(sum(sizes)),
        intervals=interval_stats(arrivals_s),
        lag=lag_stats(lags_ms or []),
        frames_skipped=frames_skipped,
        transit=lag_stats(transits_ms or []),
        interrupt=interrupt,
    )


def _frame_timings(result: "SessionResult") -> list[FrameTiming]:
    return [FrameTiming(f.sample_start, f.sample_count, f.arrival_s, f.idle) for f in result.frames]


def session_lags_ms(result: "SessionResult") -> list[float] | None:
    """Live sessions: the end-to-end lag of each speech frame received; file mode: ``None``."""
    if not result.live:
        return None
    return end_to_end_lags_ms(result.chunks_sent, result.audio_sample_rate_hz or SAMPLE_RATE_HZ, _frame_timings(result))


def session_interrupt_stats(result: "SessionResult") -> InterruptStats | None:
    """How the session's ``interrupt`` took effect; ``None`` when it sent none."""
    if result.interrupt_sent_s is None:
        return None
    finished = [
        e.arrival_s
        for e in result.playback
        if isinstance(e.message, msg.PlaybackFinished)
        and e.message.interrupted
        and e.arrival_s >= result.interrupt_sent_s
    ]
    return interrupt_stats(result.interrupt_sent_s, _frame_timings(result), finished[0] if finished else None)


def session_stats(result: "SessionResult") -> StreamStats:
    """Statistics of one client session. File mode counts from ``start_streaming``; live from
    the first audio chunk sent (when one was), with end-to-end lags (and the interrupt's effect)."""
    frames = result.frames
    start = result.start_sent_s or 0.0
    if result.live and result.first_audio_sent_s is not None:
        start = result.first_audio_sent_s
    return compute_stats(
        start,
        [f.arrival_s for f in frames],
        [f.size for f in frames],
        lags_ms=session_lags_ms(result),
        frames_skipped=result.completed.frames_skipped if result.completed else 0,
        transits_ms=[f.transit_ms for f in frames if f.transit_ms is not None],
        interrupt=session_interrupt_stats(result),
    )


def _check(ok: bool, text: str) -> str:
    return f"{'✅' if ok else '❌'} {text}"


def _ms(value: float | None, missing: str) -> str:
    return f"{value:.0f} ms" if value is not None else missing


def _interrupt_lines(interrupt: InterruptStats | None) -> list[str]:
    if interrupt is None:
        return []
    return [
        f"Interrupt Latency: last speech frame {_ms(interrupt.to_last_speech_frame_ms, 'none after it')}, "
        f"playback_finished {_ms(interrupt.to_playback_finished_ms, 'never')}",
        f"Idle Continuity: largest frame gap after the interrupt {_ms(interrupt.max_gap_after_ms, 'n/a')}",
    ]


def format_report(stats: StreamStats) -> str:
    """The statistics block, in the seed README's layout."""
    rule = "=" * 70
    latency = stats.first_frame_latency_s
    lines = [
        rule,
        "STREAMING CLIENT STATISTICS",
        rule,
        f"Total Frames Received: {stats.frames}",
        f"Total Duration: {stats.duration_s:.2f}s",
        f"Streaming Latency: {latency:.2f}s (time to first frame)"
        if latency is not None
        else "Streaming Latency: n/a (no frame received)",
        f"Average FPS: {stats.fps:.1f}",
        f"Total Data: {stats.total_bytes / MB:.1f} MB",
        f"Average Frame Size: {stats.average_frame_bytes / KB:.1f} KB",
        f"Bandwidth: {stats.bandwidth_mbps:.1f} Mbps",
        f"End-to-end Lag: p50 {stats.lag.p50_ms:.0f} ms, p95 {stats.lag.p95_ms:.0f} ms, p99 {stats.lag.p99_ms:.0f} ms"
        if stats.lag is not None
        else "End-to-end Lag: n/a (file mode)",
        f"Frames Skipped: {stats.frames_skipped}",
        f"Frame Transit: p50 {stats.transit.p50_ms:.0f} ms, p95 {stats.transit.p95_ms:.0f} ms, "
        f"p99 {stats.transit.p99_ms:.0f} ms (server send -> received)"
        if stats.transit is not None
        else "Frame Transit: n/a (no send times)",
        *_interrupt_lines(stats.interrupt),
        "",
        "FRAME INTERVALS:",
    ]
    iv = stats.intervals
    if iv is None:
        lines.append("  Count: 0")
    else:
        lines += [
            f"  Count: {iv.count}",
            f"  Mean: {iv.mean_ms:.1f}ms",
            f"  Median: {iv.median_ms:.1f}ms",
            f"  Std Dev: {iv.std_ms:.1f}ms",
            f"  Min: {iv.min_ms:.1f}ms",
            f"  Max: {iv.max_ms:.1f}ms",
            f"  P95: {iv.p95_ms:.1f}ms",
            f"  P99: {iv.p99_ms:.1f}ms",
        ]
    mean_ms = iv.mean_ms if iv else float("nan")
    lat = latency if latency is not None else float("nan")
    lines += [
        "",
        "REAL-TIME SUITABILITY:",
        _check(
            stats.fps_ok,
            f"Frame rate suitable for real-time ({stats.fps:.1f} "
            f"{'>=' if stats.fps_ok else '<'} {MIN_REALTIME_FPS} FPS)",
        ),
        _check(
            stats.latency_ok,
            f"Streaming latency acceptable ({lat:.1f}s "
            f"{'<=' if stats.latency_ok else '>'} {MAX_FIRST_FRAME_LATENCY_S}s)",
        ),
        _check(
            stats.intervals_ok,
            f"Frame intervals consistent ({mean_ms:.1f}ms "
            f"{'<=' if stats.intervals_ok else '>'} {MAX_MEAN_INTERVAL_MS}ms)",
        ),
        rule,
    ]
    return "\n".join(lines)

"""``python -m ditto.tools.load_test``: how many concurrent sessions a running server sustains.

Usage::

    python -m ditto.tools.load_test --server ws://127.0.0.1:8765 --sessions 1,2,4,8 --mode live \\
        --audio example/audio.wav --source example/image.png --chunk_ms 200 --lag_bound_ms 500 \\
        --json load.json --plot load.png

For each level N of ``--sessions``, one after another, N client sessions run at once against
the server (the client's own :func:`~ditto.client.connection.run_session` /
:func:`~ditto.client.connection.run_live_session`; live sessions send the audio in
``--chunk_ms`` chunks paced at real time, as ``streaming_client.py --realtime`` does). A level
is *sustained* when every session got every frame the server sent, the server skipped none,
and (live) the end-to-end lag p95 over all frames is within ``--lag_bound_ms``, or (file mode)
the slowest session still ran at 25 fps or more. Sessions the server refuses (``busy``) are
counted, as are other error codes; a level past the server's admission limit is not sustained, and
*admitted sustained* says whether the sessions it admitted were (the rule, over those alone).

Before the levels, ``/healthz`` is read (a server that can't be reached ends the tool with
one error line and exit code 1) and one 40 ms live session per portrait registers it, which the
server caches, so level 1 does not measure face analysis. With several ``--source`` portraits,
session i of a level brings portrait i modulo their number: a deployment's sessions mostly animate
different avatars, whose frames the device engine pastes back apart.

The statistics (:func:`session_outcome`, :func:`summarize_level`, :func:`capacity`,
:func:`format_table`) are pure; the sessions, the files and the plot are the edges.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from ditto import FPS
from ditto.client import LOGGER_NAME as CLIENT_LOGGER_NAME
from ditto.client.connection import PcmAudio, SessionResult, read_pcm, run_live_session, run_session
from ditto.client.stats import session_lags_ms, session_stats
from ditto.client.writers import write_json
from ditto.errors import ErrorCode

logger = logging.getLogger(__name__)

PROG = "python -m ditto.tools.load_test"
CLIENT_TIMEOUT = "client_timeout"  # the error key of a session that ran past --timeout on the client
WARMUP_AUDIO_S = 0.04  # one frame of audio: enough to register the portrait
NO_LOGGING = 10**9  # log_every for the sessions: no per-frame lines


# --- pure statistics ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class SessionOutcome:
    """What one session contributes to its level's figures."""

    complete: bool  # completed without error and every frame the server announced or sent arrived
    frames: int  # video frames received
    fps: float  # frames / (start command, live: first audio chunk, sent -> last frame received)
    first_frame_s: float | None  # the same start -> first frame; None without frames
    lags_ms: tuple[float, ...]  # live: end-to-end lag of each speech frame; file mode: empty
    skipped: int  # frames the server reported skipped (live sessions that fell behind)
    idle: int  # frames the server rendered while no audio was due (live)
    error_code: str | None  # the server's error code, CLIENT_TIMEOUT, or None


@dataclasses.dataclass(frozen=True, slots=True)
class LevelReport:
    """One level of the load test: ``sessions`` clients at once."""

    sessions: int
    sustained: bool
    admitted_sustained: bool  # the sessions not refused with busy (at least one) met the same rule
    fps_min: float  # the slowest session's fps (a refused session: 0)
    fps_aggregate: float  # frames of all sessions / wall time of the level
    first_frame_p95_s: float | None  # over the sessions that received a frame
    lag_p50_ms: float | None  # over all speech frames of all sessions; None in file mode
    lag_p95_ms: float | None
    skipped: int  # summed over the sessions
    idle: int  # summed over the sessions
    busy: int  # sessions refused with ``busy``
    errors: dict[str, int]  # other error codes -> sessions that ended with them


def session_outcome(result: SessionResult) -> SessionOutcome:
    """Reduce one session's result to what the level figures need."""
    stats = session_stats(result)
    error_code = result.error.code.value if result.error is not None else None
    if error_code is None and result.timed_out:
        error_code = CLIENT_TIMEOUT
    return SessionOutcome(
        complete=result.ok,
        frames=stats.frames,
        fps=stats.fps,
        first_frame_s=stats.first_frame_latency_s,
        lags_ms=tuple(session_lags_ms(result) or ()),
        skipped=stats.frames_skipped,
        idle=result.completed.idle_frames if result.completed else 0,
        error_code=error_code,
    )


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summarize_level(
    outcomes: list[SessionOutcome], wall_s: float, *, live: bool, lag_bound_ms: float, min_fps: float = FPS
) -> LevelReport:
    """The figures of one level and whether it was sustained.

    Args:
        outcomes: one per session started at this level (refused ones included).
        wall_s: from starting the sessions to the last one ending.
        live: live sessions are judged by lag (p95 <= ``lag_bound_ms``), file sessions by
            the slowest session's fps (>= ``min_fps``).
    """
    lags_ms = [lag for o in outcomes for lag in o.lags_ms]
    first_frames_s = [o.first_frame_s for o in outcomes if o.first_frame_s is not None]
    errors: dict[str, int] = {}
    for o in outcomes:
        if o.error_code is not None and o.error_code != ErrorCode.BUSY.value:
            errors[o.error_code] = errors.get(o.error_code, 0) + 1
    fps_min = min((o.fps for o in outcomes), default=0.0)
    skipped = sum(o.skipped for o in outcomes)
    lag_p95_ms = _percentile(lags_ms, 95) if live else None

    def sustained(group: list[SessionOutcome]) -> bool:
        if not group or not all(o.complete and o.skipped == 0 for o in group):
            return False
        if live:
            p95 = _percentile([lag for o in group for lag in o.lags_ms], 95)
            return p95 is not None and p95 <= lag_bound_ms
        return min(o.fps for o in group) >= min_fps

    return LevelReport(
        sessions=len(outcomes),
        sustained=sustained(outcomes),
        admitted_sustained=sustained([o for o in outcomes if o.error_code != ErrorCode.BUSY.value]),
        fps_min=fps_min,
        fps_aggregate=sum(o.frames for o in outcomes) / wall_s if wall_s > 0 else 0.0,
        first_frame_p95_s=_percentile(first_frames_s, 95),
        lag_p50_ms=_percentile(lags_ms, 50) if live else None,
        lag_p95_ms=lag_p95_ms,
        skipped=skipped,
        idle=sum(o.idle for o in outcomes),
        busy=sum(o.error_code == ErrorCode.BUSY.value for o in outcomes),
        errors=errors,
    )


def capacity(levels: list[LevelReport]) -> int | None:
    """The largest sustained level, or ``None`` when none was."""
    return max((level.sessions for level in levels if level.sustained), default=None)


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(levels: list[LevelReport]) -> str:
    """The levels as a fixed-width text table, one row per level."""
    header = (
        f"{'sessions':>8} {'sustained':>9} {'fps_min':>7} {'fps_agg':>7} {'first_p95_s':>11} "
        f"{'lag_p50_ms':>10} {'lag_p95_ms':>10} {'skipped':>7} {'idle':>5} {'busy':>4} {'admitted_ok':>11}  errors"
    )
    rows = [header]
    for level in levels:
        errors = ", ".join(f"{code}={n}" for code, n in sorted(level.errors.items())) or "-"
        rows.append(
            f"{level.sessions:>8} {'yes' if level.sustained else 'no':>9} {level.fps_min:>7.1f} "
            f"{level.fps_aggregate:>7.1f} {_cell(level.first_frame_p95_s, '.2f'):>11} "
            f"{_cell(level.lag_p50_ms, '.0f'):>10} {_cell(level.lag_p95_ms, '.0f'):>10} "
            f"{level.skipped:>7} {level.idle:>5} {level.busy:>4} {'yes' if level.admitted_sustained else 'no':>11}  {errors}"
        )
    return "\n".join(rows)


def parse_levels(text: str) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]``; every level a positive integer."""
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"levels must be integers >= 1: {text!r}")
    return levels


# --- the edges: server, sessions, files --------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class LoadPlan:
    """What every session of every level sends."""

    server: str
    live: bool
    audio_path: str
    audio: PcmAudio  # the same audio, decoded once: what live sessions stream
    source_paths: tuple[str, ...]  # session i of a level brings portrait i modulo their number
    chunk_ms: float
    timeout_s: float
    spawn_rate: float | None = None  # sessions started per second within a level; None: all at once


async def run_one(plan: LoadPlan, client_id: str, index: int) -> SessionResult:
    """Session ``index`` of its level."""
    source_path = plan.source_paths[index % len(plan.source_paths)]
    if plan.live:
        return await run_live_session(
            plan.server,
            client_id,
            plan.audio,
            source_path,
            timeout_s=plan.timeout_s,
            chunk_ms=plan.chunk_ms,
            realtime=True,
            log_every=NO_LOGGING,
        )
    return await run_session(
        plan.server, client_id, plan.audio_path, source_path, timeout_s=plan.timeout_s, log_every=NO_LOGGING
    )


async def run_level(plan: LoadPlan, sessions: int) -> tuple[list[SessionResult], float]:
    """``sessions`` sessions, started at once or ``plan.spawn_rate`` a second; their results and the
    level's wall time in seconds (the ramp included)."""

    async def session(i: int) -> SessionResult:
        if plan.spawn_rate:
            await asyncio.sleep(i / plan.spawn_rate)  # the ramp itself, not a wait for anything
        return await run_one(plan, f"load-{sessions}-{i}", i)

    started_s = time.monotonic()
    results = await asyncio.gather(*(session(i) for i in range(sessions)))
    return list(results), time.monotonic() - started_s


def http_url(server: str) -> str:
    """``ws://HOST:PORT`` -> ``http://HOST:PORT`` (``wss`` -> ``https``)."""
    scheme, sep, rest = server.rstrip("/").partition("://")
    return {"ws": "http", "wss": "https"}.get(scheme, scheme) + sep + rest


def read_health(server: str, timeout_s: float = 10.0) -> dict:
    """The server's ``/healthz``. Raises OSError (URLError included) when it can't be reached."""
    with urllib.request.urlopen(f"{http_url(server)}/healthz", timeout=timeout_s) as reply:
        return json.load(reply)


def warmup_audio(audio: PcmAudio) -> PcmAudio:
    frame_bytes = audio.bytes_per_frame
    return dataclasses.replace(audio, pcm=audio.pcm[: int(audio.sample_rate_hz * WARMUP_AUDIO_S) * frame_bytes])


def plot_levels(levels: list[LevelReport], path: Path, *, lag_bound_ms: float, title: str) -> None:
    """The capacity curve as a PNG: fps (min and aggregate) and lag p95 against sessions,
    sustained levels shaded, hatched where only the admitted sessions were (the rest: busy)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sessions = [level.sessions for level in levels]
    fig = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for level in levels:
        if level.sustained:
            ax.axvspan(level.sessions - 0.4, level.sessions + 0.4, color="tab:green", alpha=0.15, lw=0)
        elif level.admitted_sustained:  # past the admission limit: the extra sessions got busy
            ax.axvspan(level.sessions - 0.4, level.sessions + 0.4, color="tab:green", alpha=0.15, lw=0, hatch="//")
    ax.plot(sessions, [level.fps_aggregate for level in levels], "s-", color="tab:blue", label="fps aggregate")
    ax.plot(sessions, [level.fps_min for level in levels], "o-", color="tab:cyan", label="fps min (slowest session)")
    ax.axhline(FPS, color="tab:cyan", ls=":", lw=1)
    for level in levels:
        ax.plot(
            level.sessions,
            level.fps_min,
            "o" if level.sustained else "x",
            ms=10,
            mfc="none",
            color="tab:green" if level.sustained else "tab:red",
        )
    ax.set_xlabel("concurrent sessions")
    ax.set_ylabel("frames per second")
    ax.set_xticks(sessions)
    ax.set_ylim(bottom=0)
    handles, labels = ax.get_legend_handles_labels()
    lags = [(level.sessions, level.lag_p95_ms) for level in levels if level.lag_p95_ms is not None]
    if lags:
        lag_ax = ax.twinx()
        lag_ax.plot(*zip(*lags), "^--", color="tab:orange", label="lag p95 (ms)")
        lag_ax.axhline(lag_bound_ms, color="tab:orange", ls=":", lw=1, label=f"lag bound {lag_bound_ms:g} ms")
        lag_ax.set_ylabel("end-to-end lag p95 (ms)")
        lag_ax.set_ylim(0, 1.2 * max(lag_bound_ms, *(lag for _, lag in lags)))
        more_handles, more_labels = lag_ax.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, loc="upper left", fontsize="small")
    best = capacity(levels)
    fig.suptitle(
        f"{title}: capacity {best if best is not None else 'none'} (shaded: sustained; hatched: admitted ones sustained, the rest busy)"
    )
    fig.savefig(path, format="png")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="How many concurrent sessions a running server sustains.")
    p.add_argument("--server", required=True, help="server base URL (ws://HOST:PORT)")
    p.add_argument("--sessions", type=parse_levels, required=True, help="levels, e.g. 1,2,4,8")
    p.add_argument("--mode", choices=["live", "file"], default="live")
    p.add_argument("--audio", required=True, help="audio file every session streams")
    p.add_argument(
        "--source",
        required=True,
        nargs="+",
        help="portrait(s): session i of a level brings the i-th, cycling (several: as many avatars as a "
        "deployment of different users renders at once; each is registered by the warm-up)",
    )
    p.add_argument("--chunk_ms", type=float, default=200.0, help="live audio chunk length in ms")
    p.add_argument("--lag_bound_ms", type=float, default=500.0, help="live: sustained needs lag p95 <= this")
    p.add_argument(
        "--timeout", type=float, help="seconds before a session counts as failed (default: 60 + 3 x the audio's length)"
    )
    p.add_argument(
        "--spawn_rate",
        type=float,
        help="start a level's sessions at this many per second (default: all at once, the harshest case; "
        "behind a router such as Ray Serve's, simultaneous handshakes can find a replica full before it "
        "counts the others)",
    )
    p.add_argument("--json", type=Path, help="write the levels as JSON")
    p.add_argument("--plot", type=Path, help="write the capacity curve as PNG")
    return p


def _fail(text: str, code: int = 1) -> int:
    print(f"{PROG}: error: {text}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    logging.getLogger(CLIENT_LOGGER_NAME).setLevel(logging.WARNING)  # per-session chatter; errors still show
    if args.chunk_ms <= 0:
        return _fail("--chunk_ms must be > 0", 2)
    if args.spawn_rate is not None and args.spawn_rate <= 0:
        return _fail("--spawn_rate must be > 0", 2)
    for name in (args.audio, *args.source):
        if not Path(name).is_file():
            return _fail(f"no such file: {name}", 2)
    try:
        health = read_health(args.server)
    except (OSError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        return _fail(f"cannot reach the server at {args.server}: {reason}")
    audio = read_pcm(args.audio)
    plan = LoadPlan(
        args.server,
        args.mode == "live",
        args.audio,
        audio,
        tuple(args.source),
        args.chunk_ms,
        args.timeout if args.timeout is not None else 60.0 + 3.0 * audio.duration_s,
        args.spawn_rate,
    )
    logger.info("Server %s: backend %s, sessions %s", args.server, health.get("backend"), health.get("sessions"))

    for i, source in enumerate(plan.source_paths):  # the server registers each portrait before any level
        warmup = asyncio.run(
            run_live_session(
                args.server,
                f"load-warmup-{i}",
                warmup_audio(audio),
                source,
                timeout_s=plan.timeout_s,
                realtime=False,
                log_every=NO_LOGGING,
            )
        )
        if not warmup.ok:
            what = f"[{warmup.error.code.value}] {warmup.error.message}" if warmup.error else "timed out"
            return _fail(f"the warm-up session with {source} failed: {what}")

    levels = []
    for sessions in args.sessions:
        logger.info("Level %d: %d %s sessions of %.2f s audio", sessions, sessions, args.mode, audio.duration_s)
        results, wall_s = asyncio.run(run_level(plan, sessions))
        level = summarize_level(
            [session_outcome(r) for r in results], wall_s, live=plan.live, lag_bound_ms=args.lag_bound_ms
        )
        logger.info("Level %d: %s in %.1f s", sessions, "sustained" if level.sustained else "not sustained", wall_s)
        levels.append(level)

    best = capacity(levels)
    print(format_table(levels))
    print(
        f"capacity: {best if best is not None else 'none'} "
        f"({args.mode}, {'lag p95 <= %g ms' % args.lag_bound_ms if plan.live else 'fps >= %d' % FPS})",
        flush=True,
    )
    if args.json:
        write_json(
            args.json,
            {
                "capacity": best,
                "mode": args.mode,
                "server": args.server,
                "backend": health.get("backend"),
                "audio_s": audio.duration_s,
                "sources": list(plan.source_paths),
                "chunk_ms": args.chunk_ms if plan.live else None,
                "lag_bound_ms": args.lag_bound_ms if plan.live else None,
                "levels": [dataclasses.asdict(level) for level in levels],
            },
        )
    if args.plot:
        plot_levels(
            levels, args.plot, lag_bound_ms=args.lag_bound_ms, title=f"{health.get('backend')} backend, {args.mode}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark of a live session: a real server process and a real-time client on loopback.

Usage::

    python bench/bench_live.py [--chunk_ms 200] [--max_size 1920] [--json out.json] [--server_arg=--jpeg_quality=70]

Starts ``streaming_server.py`` (embedded animator unless ``--server_arg`` says otherwise) on a
free local port, streams ``example/audio.wav`` (15.75 s) with ``example/image.png`` as a live
session (``--realtime``: chunks of ``--chunk_ms`` paced at real time), and prints:

* first-frame latency: first frame received - first audio chunk sent (target <= 1.0 s);
* end-to-end lag p50/p95/p99: per frame, received - the wall time the end of its audio was
  sent (target p95 <= 500 ms);
* frames received, skipped and idle (target: exactly 394 = ceil(15.75 x 25), none skipped).

Exits 0 when every target is met.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.server_process import free_port  # noqa: E402
from ditto.client.connection import read_pcm, run_live_session  # noqa: E402
from ditto.client.stats import FrameTiming, compute_stats, end_to_end_lags_ms  # noqa: E402

FIRST_FRAME_TARGET_S = 1.0
LAG_P95_TARGET_MS = 500.0


def wait_healthy(url: str, server: subprocess.Popen, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"server exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if json.load(reply).get("status") == "ok":
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("server did not become healthy")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--audio", default=str(ROOT / "example" / "audio.wav"))
    p.add_argument("--image", default=str(ROOT / "example" / "image.png"))
    p.add_argument("--chunk_ms", type=float, default=200.0)
    p.add_argument("--max_size", type=int, default=1920)
    p.add_argument("--server_arg", action="append", default=[], help="extra server flag (repeatable)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "streaming_server.py"),
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--max_size",
            str(args.max_size),
            *args.server_arg,
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/healthz", server)
        audio = read_pcm(args.audio)
        # warm-up: register the portrait once (cached by the server), so the run measures streaming
        asyncio.run(
            run_live_session(
                f"ws://127.0.0.1:{port}",
                "warmup",
                read_pcm(args.audio),
                args.image,
                timeout_s=120,
                chunk_ms=1000,
                realtime=False,
                log_every=10**9,
            )
        )
        result = asyncio.run(
            run_live_session(
                f"ws://127.0.0.1:{port}",
                "bench",
                audio,
                args.image,
                timeout_s=audio.duration_s + 60,
                chunk_ms=args.chunk_ms,
                realtime=True,
                log_every=10**9,
            )
        )
    finally:
        server.terminate()
        server.wait(30)

    if not result.completed:
        print(f"stream failed: {result.error}", file=sys.stderr)
        return 1
    frames = result.frames
    lags = end_to_end_lags_ms(
        result.chunks_sent,
        audio.sample_rate_hz,
        [FrameTiming(f.sample_start, f.sample_count, f.arrival_s, f.idle) for f in frames],
    )
    stats = compute_stats(
        result.first_audio_sent_s,
        [f.arrival_s for f in frames],
        [f.size for f in frames],
        lags_ms=lags,
        frames_skipped=result.completed.frames_skipped,
    )
    expected = -(-audio.samples * 25 // audio.sample_rate_hz)
    checks = {
        "first_frame": stats.first_frame_latency_s is not None and stats.first_frame_latency_s <= FIRST_FRAME_TARGET_S,
        "lag_p95": stats.lag is not None and stats.lag.p95_ms <= LAG_P95_TARGET_MS,
        "frame_count": len(frames) == expected and result.completed.frames_skipped == 0,
    }
    mark = {True: "✅", False: "❌"}
    print(
        f"live session: {audio.duration_s:.2f} s of {audio.sample_rate_hz} Hz audio in {args.chunk_ms:g} ms "
        f"chunks at real time, portrait {Path(args.image).name}, max_size {args.max_size}"
    )
    print(
        f"{mark[checks['first_frame']]} first-frame latency: {stats.first_frame_latency_s * 1000:.0f} ms "
        f"after the first audio chunk (target <= {FIRST_FRAME_TARGET_S * 1000:.0f} ms)"
    )
    print(
        f"{mark[checks['lag_p95']]} end-to-end lag: p50 {stats.lag.p50_ms:.0f} ms, p95 {stats.lag.p95_ms:.0f} ms, "
        f"p99 {stats.lag.p99_ms:.0f} ms, max {stats.lag.max_ms:.0f} ms (target p95 <= {LAG_P95_TARGET_MS:.0f} ms)"
    )
    print(
        f"{mark[checks['frame_count']]} frames: {len(frames)} received of {expected}, "
        f"{result.completed.frames_skipped} skipped, {result.completed.idle_frames} idle"
    )
    print(
        f"   fps {stats.fps:.1f}, {stats.total_bytes / 2**20:.1f} MB, mean frame {stats.average_frame_bytes / 1024:.0f} KB"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "stats": stats.to_dict(),
                    "expected_frames": expected,
                    "idle_frames": result.completed.idle_frames,
                    "checks": checks,
                },
                indent=2,
            )
        )
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

"""The Ray Serve path's overhead: the same live load on the plain server and on one Serve replica.

Usage::

    python bench/bench_serve.py [--sessions 4] [--rounds 3] [--audio_s 8] [--json out.json]

Starts ``streaming_server.py --backend lite --max_size 256`` (small frames: the load must fit the
machine, or the figures measure its saturation, not Serve) and then ``python -m ditto.serve --replicas 1`` (same
flags, same port, one after the other on the same machine), warms each up with one short session
(the portrait is registered and cached), then runs ``--rounds`` times ``--sessions`` live sessions
at once (the load test's client, audio sent in 200 ms chunks at real time). Per path: first frame
(first audio chunk sent -> first frame received, per session) and per-frame lag (end-to-end, every
speech frame), median and p95. The target: Serve's medians within +50 ms (first frame) and +10 ms
(lag) of the plain server's. Each server is stopped with SIGTERM and must exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.server_process import free_port, wait_for_health  # noqa: E402
from ditto.client.connection import read_pcm, run_live_session  # noqa: E402
from ditto.tools import load_test  # noqa: E402

FIRST_FRAME_BUDGET_MS = 50.0
LAG_BUDGET_MS = 10.0
SERVER_FLAGS = [
    "--backend",
    "lite",
    "--max_sessions",
    "4",
    "--max_size",
    "256",
    "--host",
    "127.0.0.1",
    "--log-level",
    "warning",
]


@dataclasses.dataclass(frozen=True)
class PathFigures:
    startup_s: float
    first_frame_ms: list[float]  # one per session
    lag_ms: list[float]  # every speech frame of every session
    incomplete: int  # sessions that missed frames or ended with an error

    def summary(self) -> dict:
        def stats(values: list[float]) -> dict:
            return {"median": float(np.median(values)), "p95": float(np.percentile(values, 95)), "n": len(values)}

        return {
            "startup_s": round(self.startup_s, 1),
            "first_frame_ms": stats(self.first_frame_ms),
            "lag_ms": stats(self.lag_ms),
            "incomplete_sessions": self.incomplete,
        }


def measure(command: list[str], plan: load_test.LoadPlan, sessions: int, rounds: int) -> PathFigures:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    try:
        wait_for_health(plan.server, process, timeout_s=180)
        startup_s = time.monotonic() - started
        warmup = asyncio.run(
            run_live_session(
                plan.server,
                "warmup",
                load_test.warmup_audio(plan.audio),
                plan.source_path,
                timeout_s=60,
                realtime=False,
                log_every=load_test.NO_LOGGING,
            )
        )
        assert warmup.ok, warmup.error
        outcomes = []
        for _ in range(rounds):
            results, _ = asyncio.run(load_test.run_level(plan, sessions))
            outcomes += [load_test.session_outcome(r) for r in results]
    finally:
        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(120)
    assert exit_code == 0, f"{command} exited {exit_code}"
    return PathFigures(
        startup_s,
        [1000 * o.first_frame_s for o in outcomes if o.first_frame_s is not None],
        [lag for o in outcomes for lag in o.lags_ms],
        sum(not o.complete for o in outcomes),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--audio_s", type=float, default=8.0, help="seconds of example/audio.wav each session streams")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    port = free_port()
    server = f"ws://127.0.0.1:{port}"
    audio = read_pcm(str(ROOT / "example" / "audio.wav"))
    audio = dataclasses.replace(
        audio, pcm=audio.pcm[: int(args.audio_s * audio.sample_rate_hz) * audio.bytes_per_frame]
    )
    plan = load_test.LoadPlan(server, True, "", audio, str(ROOT / "example" / "image.png"), 200.0, 120.0)
    flags = [*SERVER_FLAGS, "--port", str(port)]
    paths = {
        "plain": measure([sys.executable, "streaming_server.py", *flags], plan, args.sessions, args.rounds),
        "serve": measure(
            [sys.executable, "-m", "ditto.serve", "--replicas", "1", *flags], plan, args.sessions, args.rounds
        ),
    }
    figures = {name: f.summary() for name, f in paths.items()}
    deltas = {
        f"{metric}_{stat}_ms": figures["serve"][metric][stat] - figures["plain"][metric][stat]
        for metric in ("first_frame_ms", "lag_ms")
        for stat in ("median", "p95")
    }
    passed = (
        deltas["first_frame_ms_median_ms"] <= FIRST_FRAME_BUDGET_MS
        and deltas["lag_ms_median_ms"] <= LAG_BUDGET_MS
        and not any(f.incomplete for f in paths.values())
    )
    for name, f in figures.items():
        print(
            f"{name:>5}: start-up {f['startup_s']:5.1f} s | first frame median {f['first_frame_ms']['median']:6.1f} "
            f"p95 {f['first_frame_ms']['p95']:6.1f} ms | lag median {f['lag_ms']['median']:6.1f} "
            f"p95 {f['lag_ms']['p95']:6.1f} ms | incomplete {f['incomplete_sessions']}"
        )
    print("delta: " + ", ".join(f"{k} {v:+.1f}" for k, v in deltas.items()))
    print(
        f"target (medians): first frame <= +{FIRST_FRAME_BUDGET_MS:g} ms, lag <= +{LAG_BUDGET_MS:g} ms: "
        f"{'PASS' if passed else 'FAIL'}"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "backend": "lite",
                    "mode": "live",
                    "sessions": args.sessions,
                    "rounds": args.rounds,
                    "audio_s": args.audio_s,
                    "chunk_ms": 200,
                    "cpu_cores": os.cpu_count(),
                    "paths": figures,
                    "deltas": deltas,
                    "budget_ms": {"first_frame": FIRST_FRAME_BUDGET_MS, "lag": LAG_BUDGET_MS},
                    "passed": passed,
                },
                indent=2,
            )
            + "\n"
        )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())

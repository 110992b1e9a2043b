"""The Ray Serve path's overhead: the same live load on the plain server and on one Serve replica.

Usage::

    python bench/bench_serve.py [--sessions 4] [--rounds 3] [--audio_s 8] [--json out.json]

Starts ``streaming_server.py --backend lite --max_size 256`` (small frames: the load must fit the
machine, or the figures measure its saturation, not Serve) and ``python -m ditto.serve --replicas 1`` (same
flags, each on its own port, both running at once), warms each up with one short session (the
portrait is registered and cached), then runs ``--rounds`` rounds of ``--sessions`` live sessions at
once on each, alternating between the two and swapping their order every round (the load test's
client, audio sent in 200 ms chunks at real time). Per path: first frame
(first audio chunk sent -> first frame received, per session) and per-frame lag (end-to-end, every
speech frame), median and p95, and each frame's transit (the server's ``sent_us`` stamp -> received: the
Serve proxy's hop alone, free of the render's noise). The target: Serve's medians within +50 ms (first frame) and +10 ms
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
    transit_ms: list[float]  # every frame: the server's send (sent_us) -> received; the Serve proxy's hop
    incomplete: int  # sessions that missed frames or ended with an error

    def summary(self) -> dict:
        def stats(values: list[float]) -> dict:
            return {"median": float(np.median(values)), "p95": float(np.percentile(values, 95)), "n": len(values)}

        return {
            "startup_s": round(self.startup_s, 1),
            "first_frame_ms": stats(self.first_frame_ms),
            "lag_ms": stats(self.lag_ms),
            "transit_ms": stats(self.transit_ms),
            "incomplete_sessions": self.incomplete,
        }


@dataclasses.dataclass
class _Path:
    """One server being measured: its process, its plan (address) and what its rounds gave."""

    command: list[str]
    plan: load_test.LoadPlan
    process: subprocess.Popen | None = None
    startup_s: float = 0.0
    outcomes: list = dataclasses.field(default_factory=list)
    transits: list[float] = dataclasses.field(default_factory=list)

    def start(self) -> None:
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
        started = time.monotonic()
        self.process = subprocess.Popen(self.command, cwd=ROOT, env=env)
        wait_for_health(self.plan.server, self.process, timeout_s=180)
        self.startup_s = time.monotonic() - started
        warmup = asyncio.run(
            run_live_session(
                self.plan.server,
                "warmup",
                load_test.warmup_audio(self.plan.audio),
                self.plan.source_paths[0],
                timeout_s=60,
                realtime=False,
                log_every=load_test.NO_LOGGING,
            )
        )
        assert warmup.ok, warmup.error

    def run_round(self, sessions: int) -> None:
        results, _ = asyncio.run(load_test.run_level(self.plan, sessions))
        self.outcomes += [load_test.session_outcome(r) for r in results]
        self.transits += [f.transit_ms for r in results for f in r.frames if f.transit_ms is not None]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            exit_code = self.process.wait(120)
            assert exit_code == 0, f"{self.command} exited {exit_code}"

    def figures(self) -> PathFigures:
        return PathFigures(
            self.startup_s,
            [1000 * o.first_frame_s for o in self.outcomes if o.first_frame_s is not None],
            [lag for o in self.outcomes for lag in o.lags_ms],
            self.transits,
            sum(not o.complete for o in self.outcomes),
        )


def measure(paths: dict[str, _Path], sessions: int, rounds: int) -> dict[str, PathFigures]:
    """Both servers up at once (the machine's state the same for both), their rounds alternating and
    the order swapped each round, so that drift and the frame clock's phase fall on both alike."""
    try:
        for path in paths.values():
            path.start()
        order = list(paths.values())
        for _ in range(rounds):
            for path in order:
                path.run_round(sessions)
            order.reverse()
    finally:
        for path in paths.values():
            path.stop()
    return {name: path.figures() for name, path in paths.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=4)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--audio_s", type=float, default=8.0, help="seconds of example/audio.wav each session streams")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    audio = read_pcm(str(ROOT / "example" / "audio.wav"))
    audio = dataclasses.replace(
        audio, pcm=audio.pcm[: int(args.audio_s * audio.sample_rate_hz) * audio.bytes_per_frame]
    )

    def path(command: list[str]) -> _Path:
        port = free_port()
        plan = load_test.LoadPlan(
            f"ws://127.0.0.1:{port}", True, "", audio, (str(ROOT / "example" / "image.png"),), 200.0, 120.0
        )
        return _Path([*command, *SERVER_FLAGS, "--port", str(port)], plan)

    paths = measure(
        {
            "plain": path([sys.executable, "streaming_server.py"]),
            "serve": path([sys.executable, "-m", "ditto.serve", "--replicas", "1"]),
        },
        args.sessions,
        args.rounds,
    )
    figures = {name: f.summary() for name, f in paths.items()}
    deltas = {
        f"{metric}_{stat}_ms": figures["serve"][metric][stat] - figures["plain"][metric][stat]
        for metric in ("first_frame_ms", "lag_ms", "transit_ms")
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
            f"p95 {f['lag_ms']['p95']:6.1f} ms | frame transit median {f['transit_ms']['median']:5.1f} "
            f"p95 {f['transit_ms']['p95']:5.1f} ms | incomplete {f['incomplete_sessions']}"
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

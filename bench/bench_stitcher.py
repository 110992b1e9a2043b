"""Per-frame motion stitching on the host: what a session's thread spends, alone and beside others.

    python bench/bench_stitcher.py [--frames 2000] [--threads 10] [--seconds 4] [--json out.json]

Every live session stitches its frames on its own thread (``MotionStitcher`` on the host, as
``DittoStream`` does), and the device engine's thread launches everyone's batches in the same
interpreter. On the H200 at 10 live sessions with the stitcher in torch, py-spy found the GIL
held all the time, ~70 % of it by the stitching threads
(``bench/results/2026-12-02-h200-live-session7-b-torch-stitcher-gil-profile.json``).

Three figures: the cost of a frame on one thread; the frames per second of ``--threads``
threads stitching flat out; and, with those threads stitching at the live rate (25 frames a
second each, 5 at a time as 200 ms chunks bring them), how much slower a probe thread standing in
for the engine (small host tensor work, timed again and again) runs than on an idle interpreter.
The stitching keeps the online pkl's controls (image source, eye drive, blinks, ``delta_pitch``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ditto.backends.talkinghead.pipeline.audio2motion import (  # noqa: E402
    MOTION_DIM,
    vector_to_arrays,
    vector_to_motion,
)
from ditto.backends.talkinghead.pipeline.motion_stitch import MotionStitcher  # noqa: E402
from ditto.backends.talkinghead.pipeline.stages import SourceFrame, SourceInfo  # noqa: E402

FPS = 25
BURST = 5  # frames a 200 ms audio chunk brings


def _source(rng: np.random.Generator) -> SourceInfo:
    """An image source whose motion is a random motion row (small: scale near 1) plus canonical keypoints."""
    row = torch.as_tensor(rng.normal(0, 0.1, MOTION_DIM), dtype=torch.float32)
    kp = torch.as_tensor(rng.normal(0, 0.3, (1, 63)), dtype=torch.float32)
    frame = SourceFrame(
        x_s_info=dataclasses.replace(vector_to_motion(row), kp=kp),
        f_s=torch.zeros(1),
        M_c2o=np.eye(3),
        image=torch.zeros(4, 4, 3, dtype=torch.uint8),
        eye_open=torch.zeros(1, 2),
        eye_ball=torch.zeros(1, 6),
    )
    assert frame.x_s_info.kp is not None
    return SourceInfo(frames=(frame,), sc=frame.x_s_info.kp.reshape(63), is_image=True)


def _stitcher(seed: int) -> MotionStitcher:
    rng = np.random.default_rng(seed)
    return MotionStitcher(
        _source(rng),
        flag_stitching=False,
        delta_eye_arr=rng.normal(0, 0.01, (15, 63)).astype(np.float32),
        delta_eye_open_n=-1,
        rng=random.Random(seed),
        overall_ctrl_info={"delta_pitch": 2},
    )


def _rows(frames: int, seed: int) -> torch.Tensor:
    return torch.as_tensor(np.random.default_rng(seed).normal(0, 0.5, (frames, MOTION_DIM)), dtype=torch.float32)


def _stitch_frames(frames: int, seed: int) -> float:
    """Stitch ``frames`` frames as one session does, flat out; seconds per frame."""
    stitcher, rows = _stitcher(seed), _rows(frames, seed)
    started = time.perf_counter()
    for row in rows:
        stitcher(0, vector_to_arrays(row), {})
    return (time.perf_counter() - started) / frames


def _stitch_live(seconds: float, seed: int, start: threading.Barrier) -> None:
    """Stitch at the live rate: ``BURST`` frames every ``BURST / FPS`` seconds (a benchmark's pacing)."""
    stitcher, rows = _stitcher(seed), _rows(int(seconds * FPS) + BURST, seed)
    start.wait()
    began = time.perf_counter()
    for burst in range(int(seconds * FPS) // BURST):
        for row in rows[burst * BURST : (burst + 1) * BURST]:
            stitcher(0, vector_to_arrays(row), {})
        time.sleep(max(0.0, began + (burst + 1) * BURST / FPS - time.perf_counter()))


def _probe(stop: threading.Event, samples: list[float]) -> None:
    """Engine stand-in: small host tensor work (~ a batch's preparation), timed again and again."""
    a = torch.randn(16, 63)
    while not stop.is_set():
        started = time.perf_counter()
        for _ in range(50):
            a = torch.cat([a[:8], a[8:]]) * 1.0
        samples.append(time.perf_counter() - started)


def _probed(run: Callable[[], None]) -> list[float]:
    """The probe's times while ``run()`` runs."""
    samples: list[float] = []
    stop = threading.Event()
    probe = threading.Thread(target=_probe, args=(stop, samples))
    probe.start()
    try:
        run()
    finally:
        stop.set()
        probe.join()
    return samples


def _in_threads(count: int, target: Callable[[int], None]) -> None:
    workers = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=2000)
    p.add_argument("--threads", type=int, default=10)
    p.add_argument("--seconds", type=float, default=4.0, help="of live-rate stitching beside the probe")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    alone = min(_stitch_frames(args.frames, seed=0) for _ in range(3))  # the quietest of three
    started = time.perf_counter()
    _in_threads(args.threads, lambda i: _stitch_frames(args.frames, seed=i))
    flat_out_wall = time.perf_counter() - started

    idle = _probed(lambda: time.sleep(args.seconds))  # the probe alone

    barrier = threading.Barrier(args.threads)
    live = _probed(lambda: _in_threads(args.threads, lambda i: _stitch_live(args.seconds, i, barrier)))

    def ms(samples: list[float], q: float) -> float:
        return 1000 * float(np.quantile(samples, q))

    result = {
        "frames": args.frames,
        "threads": args.threads,
        "ms_per_frame_alone": 1000 * alone,
        "frames_per_s_flat_out": args.threads * args.frames / flat_out_wall,
        "live_gil_share_estimate": args.threads * FPS * alone,
        "probe_ms_p50_idle": ms(idle, 0.5),
        "probe_ms_p50_live": ms(live, 0.5),
        "probe_ms_p95_idle": ms(idle, 0.95),
        "probe_ms_p95_live": ms(live, 0.95),
    }
    result["probe_slowdown_p50"] = result["probe_ms_p50_live"] / result["probe_ms_p50_idle"]
    result["probe_slowdown_p95"] = result["probe_ms_p95_live"] / result["probe_ms_p95_idle"]
    for key, value in result.items():
        print(f"{key:28s} {value:.3f}" if isinstance(value, float) else f"{key:28s} {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

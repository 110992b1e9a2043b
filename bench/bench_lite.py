"""Benchmark of the lite animator: per-frame render and JPEG cost, and concurrent real-time sessions.

Usage::

    python bench/bench_lite.py [--json out.json] [--seconds 10] [--max-sessions 8]

Measures, each after a warm-up, with OpenCV pinned to one thread (``cv2.setNumThreads(1)``):

* render ms/frame (mean, p50, p95) and JPEG q85 ms/frame at 512x512 and 1432x1432;
* the most concurrent 25 fps sessions the machine sustains at 512x512: N threads, each
  rendering and JPEG-encoding a clip as fast as it can; N is sustained when every session
  runs at >= 25 fps (so the aggregate is >= 25 N fps);
* 1432x1432 with render and JPEG on two threads (a pipelined session), in fps.

The portrait is ``example/image.png`` when present, else scikit-image's astronaut (public
domain) cropped around the face; audio is ``example/audio.wav`` when present, else
synthetic speech (harmonic vowels with syllable envelopes, fricatives and pauses).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ditto import FPS, SAMPLE_RATE_HZ  # noqa: E402
from ditto.backends.lite import LiteBackend  # noqa: E402
from ditto.media.jpeg import encode_jpeg  # noqa: E402

JPEG_QUALITY = 85
VOWEL_FORMANTS_HZ = {
    "a": (750, 1200, 2600),
    "e": (500, 1900, 2600),
    "i": (300, 2300, 3000),
    "o": (500, 900, 2500),
    "u": (320, 800, 2400),
}


def synth_speech(seconds: float, seed: int = 0, sample_rate_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """Speech-like float32 audio: syllables (harmonic vowels with formants), fricatives, pauses."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate_hz)
    out = np.zeros(n, np.float32)
    t = 0.3
    while t < seconds - 0.3:
        for _ in range(int(rng.integers(3, 9))):  # a phrase
            dur = float(rng.uniform(0.12, 0.26))
            if t + dur > seconds:
                break
            start, length = int(t * sample_rate_hz), int(dur * sample_rate_hz)
            tt = np.arange(length) / sample_rate_hz
            f0 = float(rng.uniform(110, 190)) * (1 + 0.08 * np.sin(2 * np.pi * 3 * tt))
            phase = 2 * np.pi * np.cumsum(f0) / sample_rate_hz
            formants = VOWEL_FORMANTS_HZ[str(rng.choice(list(VOWEL_FORMANTS_HZ)))]
            wave = np.zeros(length)
            for h in range(1, 30):
                fh = h * float(f0.mean())
                if fh > 5000:
                    break
                gain = sum(1.0 / (1.0 + ((fh - f) / (80 + 0.06 * f)) ** 2) for f in formants) / h**0.3
                wave += gain * np.sin(h * phase)
            env = np.sin(np.pi * np.clip(tt / dur, 0, 1)) ** 0.7
            syllable = wave * env
            if rng.random() < 0.35:  # a fricative onset ("s", "f")
                fl = int(0.06 * sample_rate_hz)
                noise = np.diff(rng.standard_normal(fl + 1)) * np.hanning(fl) * 0.25
                syllable[:fl] = syllable[:fl] * np.linspace(0, 1, fl) + noise * np.abs(wave).max()
            out[start : start + length] += (syllable / (np.abs(syllable).max() + 1e-9) * rng.uniform(0.25, 0.6)).astype(
                np.float32
            )
            t += dur + float(rng.uniform(0.0, 0.06))
        t += float(rng.uniform(0.4, 1.0))  # pause between phrases
    return np.clip(out, -1, 1)


def load_audio(seconds: float) -> np.ndarray:
    path = ROOT / "example" / "audio.wav"
    if path.exists():
        from ditto.media.audio import decode_audio

        samples = decode_audio(path.read_bytes(), max_seconds=3600).samples
        reps = math.ceil(seconds * SAMPLE_RATE_HZ / len(samples))
        return np.tile(samples, reps)[: int(seconds * SAMPLE_RATE_HZ)]
    return synth_speech(seconds)


def load_portrait(size: int, framing: str = "example") -> np.ndarray:
    """A size x size RGB portrait.

    ``example``: example/image.png (the whole astronaut photograph, face ~20 % of the height);
    ``closeup``: the astronaut cropped to head and shoulders (face ~45 % of the height), the costly case since the face ROI is what the renderer touches.
    """
    img = cv2.cvtColor(cv2.imread(str(ROOT / "example" / "image.png"), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    if framing == "closeup":
        img = cv2.resize(img, (512, 512), interpolation=cv2.INTER_AREA)[10:270, 94:354]
    return np.ascontiguousarray(cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA))


def stats_ms(values: list[float]) -> dict:
    arr = np.asarray(values) * 1e3
    return {"mean": float(arr.mean()), "p50": float(np.percentile(arr, 50)), "p95": float(np.percentile(arr, 95))}


def bench_frames(backend: LiteBackend, size: int, framing: str, audio: np.ndarray, warmup: int = 10) -> dict:
    avatar = backend.register_source(load_portrait(size, framing))
    stream = backend.open_stream(avatar, seed=1)
    render_s, jpeg_s = [], []
    frames = stream.feed(audio)
    while True:
        t0 = time.perf_counter()
        frame = next(frames, None)
        t1 = time.perf_counter()
        if frame is None:
            break
        encode_jpeg(frame.image, JPEG_QUALITY)
        t2 = time.perf_counter()
        if frame.index >= warmup:
            render_s.append(t1 - t0)
            jpeg_s.append(t2 - t1)
    stream.close()
    roi = avatar.geometry.roi
    return {
        "size": size,
        "framing": framing,
        "roi": [roi.width, roi.height],
        "frames": len(render_s),
        "render_ms": stats_ms(render_s),
        "jpeg_ms": stats_ms(jpeg_s),
    }


def run_session(
    backend: LiteBackend, avatar, audio: np.ndarray, seed: int, barrier: threading.Barrier, result: dict
) -> None:
    stream = backend.open_stream(avatar, seed=seed)
    barrier.wait()
    t0 = time.perf_counter()
    count = 0
    for frame in stream.feed(audio):
        encode_jpeg(frame.image, JPEG_QUALITY)
        count += 1
    for frame in stream.finish():
        encode_jpeg(frame.image, JPEG_QUALITY)
        count += 1
    result[seed] = (count, time.perf_counter() - t0)
    stream.close()


def bench_sessions(backend: LiteBackend, size: int, framing: str, audio: np.ndarray, max_sessions: int) -> dict:
    avatar = backend.register_source(load_portrait(size, framing))
    rows, best = [], 0
    for n in range(1, max_sessions + 1):
        result: dict = {}
        barrier = threading.Barrier(n)
        threads = [
            threading.Thread(target=run_session, args=(backend, avatar, audio, s, barrier, result)) for s in range(n)
        ]
        t0 = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t0
        per_session = [c / s for c, s in result.values()]
        aggregate = sum(c for c, _ in result.values()) / wall
        ok = min(per_session) >= FPS and aggregate >= FPS * n
        rows.append({"sessions": n, "aggregate_fps": aggregate, "min_session_fps": min(per_session), "sustained": ok})
        if ok:
            best = n
        else:
            break
    return {"size": size, "framing": framing, "max_sessions": best, "runs": rows}


def bench_pipelined(backend: LiteBackend, size: int, framing: str, audio: np.ndarray) -> dict:
    """One session with render and JPEG on separate threads, as the server runs them."""
    avatar = backend.register_source(load_portrait(size, framing))
    stream = backend.open_stream(avatar, seed=3)
    frames_q: queue.Queue = queue.Queue(maxsize=4)
    encoded = [0]

    def encoder():
        while (frame := frames_q.get()) is not None:
            encode_jpeg(frame.image, JPEG_QUALITY)
            encoded[0] += 1

    th = threading.Thread(target=encoder)
    t0 = time.perf_counter()
    th.start()
    for frame in stream.feed(audio):
        frames_q.put(frame)
    for frame in stream.finish():
        frames_q.put(frame)
    frames_q.put(None)
    th.join()
    wall = time.perf_counter() - t0
    return {"size": size, "framing": framing, "frames": encoded[0], "fps": encoded[0] / wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length per session")
    parser.add_argument("--max-sessions", type=int, default=12)
    args = parser.parse_args(argv)

    cv2.setNumThreads(1)
    backend = LiteBackend()
    audio = load_audio(args.seconds)
    short = audio[: int(min(args.seconds, 6.0) * SAMPLE_RATE_HZ)]
    results = {
        "cpu_count": os.cpu_count(),
        "opencv_threads": cv2.getNumThreads(),
        "seconds": args.seconds,
        "frames": [],
        "sessions": [],
        "pipelined": [],
    }
    for framing in ("example", "closeup"):
        for size in (512, 1432):
            results["frames"].append(bench_frames(backend, size, framing, short))
    for framing in ("example", "closeup"):
        results["sessions"].append(bench_sessions(backend, 512, framing, audio, args.max_sessions))
        results["pipelined"].append(bench_pipelined(backend, 1432, framing, short))

    print(f"lite backend, {results['cpu_count']} CPUs, OpenCV threads {results['opencv_threads']}")
    print(
        f"{'portrait':>9} {'size':>9} {'face roi':>9} {'render ms mean/p50/p95':>24} {'jpeg q85 ms mean/p50/p95':>26}"
    )
    for row in results["frames"]:
        r, j = row["render_ms"], row["jpeg_ms"]
        print(
            f"{row['framing']:>9} {row['size']:>4}x{row['size']:<4} {row['roi'][0]:>4}x{row['roi'][1]:<4} "
            f"{r['mean']:>8.2f} {r['p50']:>7.2f} {r['p95']:>7.2f}  {j['mean']:>8.2f} {j['p50']:>7.2f} {j['p95']:>7.2f}"
        )
    for sess in results["sessions"]:
        print(
            f"\nconcurrent 25 fps sessions at 512x512, {sess['framing']} portrait (render + JPEG per thread, "
            f"{args.seconds:.0f} s clip each):"
        )
        for row in sess["runs"]:
            print(
                f"  N={row['sessions']}: aggregate {row['aggregate_fps']:7.1f} fps, slowest session "
                f"{row['min_session_fps']:6.1f} fps -> {'sustained' if row['sustained'] else 'NOT sustained'}"
            )
        print(f"  largest N sustained: {sess['max_sessions']}")
    print()
    for p in results["pipelined"]:
        print(
            f"1432x1432 {p['framing']} portrait, render and JPEG on two threads: {p['fps']:.1f} fps "
            f"over {p['frames']} frames"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

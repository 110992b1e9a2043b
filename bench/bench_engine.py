"""Many sessions on one device: the batching engine vs every model call alone, in one run.

Usage::

    python bench/bench_engine.py [--tree DIR] [--device cuda] [--sessions 1,4,8,12,16] [--seconds 8] [--json out.json]
    python bench/bench_engine.py --device cpu --quick     # CPU smoke run

In-process (no sockets: the server's own costs are measured by ``ditto.tools.load_test``
against a running server). Loads the random-weight test tree (``bench_ditto.ensure_tree``,
its online PyTorch pkl: overlap 70, 10 DDIM steps), registers the example portrait at
``--max_size``, and for two engines over the same models —

* ``alone``: ``--max_batch 1``: every HuBERT window, LMDM window and frame is its own call,
  one after another (the pre-engine path: sessions' calls serialised on shared graphs);
* ``batched``: batches of up to 16 across sessions, CUDA graphs per batch size —

runs, per level N of ``--sessions``:

* live: N sessions, each fed the example speech in 200 ms chunks paced at real time
  (threads, as the server's render pool), frames JPEG-encoded as the server asks
  (on the GPU when CUDA); per frame its lag = when it came out − when its audio was
  complete; a level is sustained when no frame was shed and the lag p95 stays under
  the look-ahead + ``--lag_bound_ms``;
* file: N sessions fed the whole clip at once; aggregate frames per second.

Prints both tables side by side with their ratio and writes ``--json``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import math
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.bench_ditto import bench_pkls, ensure_tree, load_portrait, read_audio  # noqa: E402
from ditto import SAMPLE_RATE_HZ, SAMPLES_PER_FRAME  # noqa: E402
from ditto.backends.base import StreamOptions  # noqa: E402
from ditto.backends.talkinghead.backend import DittoBackend  # noqa: E402
from ditto.backends.talkinghead.config import load_cfg  # noqa: E402

CHUNK_S = 0.2
LOOKAHEAD_S = 0.885  # online overlap 70: frames need 2V frames of audio + 85 ms HuBERT context


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def live_session(
    backend: DittoBackend, avatar, audio: np.ndarray, seed: int, start_at: float, options: StreamOptions
) -> dict[str, Any]:
    """One session fed at real time from ``start_at``: per-frame lags (s) and shed frames."""
    stream = backend.open_stream(avatar, seed=seed, options=options)
    step = int(SAMPLE_RATE_HZ * CHUNK_S)
    lags, shed, first = [], 0, None

    def take(frames) -> None:
        nonlocal shed, first
        for frame in frames:
            now = time.perf_counter()
            if frame.shed:
                shed += 1
                continue
            audio_done = start_at + min(len(audio), (frame.index + 1) * SAMPLES_PER_FRAME) / SAMPLE_RATE_HZ
            complete = start_at + math.ceil((audio_done - start_at) / CHUNK_S - 1e-9) * CHUNK_S
            lags.append(now - complete)
            if first is None:
                first = now - start_at

    for k, begin in enumerate(range(0, len(audio), step)):
        due = start_at + (k + 1) * CHUNK_S  # the chunk is complete once its last sample was spoken
        while (now := time.perf_counter()) < due:
            time.sleep(min(0.005, due - now))
        take(stream.feed(audio[begin : begin + step]))
    take(stream.finish())
    stream.close()
    return {"lags_s": lags, "shed": shed, "first_frame_s": first, "frames": len(lags) + shed}


def file_session(backend: DittoBackend, avatar, audio: np.ndarray, seed: int, options: StreamOptions) -> int:
    stream = backend.open_stream(avatar, seed=seed, options=options)
    n = sum(1 for _ in stream.feed(audio)) + sum(1 for _ in stream.finish())
    stream.close()
    return n


def run_level(
    backend: DittoBackend, avatar, audio: np.ndarray, n: int, lag_bound_s: float, jpeg_quality: int
) -> dict[str, Any]:
    expected = math.ceil(len(audio) / SAMPLES_PER_FRAME)
    live_opts = StreamOptions(live=True, jpeg_quality=jpeg_quality, max_lag_s=0.5)
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        start_at = time.perf_counter() + 0.05
        live = list(pool.map(lambda i: live_session(backend, avatar, audio, 100 + i, start_at, live_opts), range(n)))
    lags = [lag for s in live for lag in s["lags_s"]]
    shed = sum(s["shed"] for s in live)
    complete = all(s["frames"] == expected for s in live)
    p95 = percentile(lags, 95)
    file_opts = StreamOptions(jpeg_quality=jpeg_quality)
    engine = backend.models.engine
    live_stats = backend.stage_stats()
    idle_before = engine.idle_s
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        t0 = time.perf_counter()
        frames = sum(pool.map(lambda i: file_session(backend, avatar, audio, 200 + i, file_opts), range(n)))
        file_s = time.perf_counter() - t0
    stats = backend.stage_stats()
    file_batches = {
        stage: (s.items - live_stats[stage].items) / max(1, s.batches - live_stats[stage].batches)
        for stage, s in stats.items()
    }
    return {
        "sessions": n,
        "live_sustained": bool(complete and shed == 0 and p95 is not None and p95 <= LOOKAHEAD_S + lag_bound_s),
        "live_lag_p50_ms": None if not lags else 1000 * percentile(lags, 50),
        "live_lag_p95_ms": None if p95 is None else 1000 * p95,
        "live_shed": shed,
        "live_first_frame_p95_s": percentile([s["first_frame_s"] for s in live if s["first_frame_s"]], 95),
        "file_fps_aggregate": frames / file_s,
        "mean_batch": {stage: round(s.mean_batch, 2) for stage, s in stats.items()},
        "file_mean_batch": {stage: round(b, 2) for stage, b in file_batches.items()},
        "file_engine_idle_share": (engine.idle_s - idle_before) / file_s,
    }


def stage_costs(backend: DittoBackend, avatar) -> dict[str, Any]:
    """Per-item milliseconds of each engine stage at each batch size, the render's parts, and the
    session-side (host) cost of one frame's motion stitching."""
    from ditto.backends.talkinghead.engine import RenderWork, Stage, WindowWork
    from ditto.backends.talkinghead.pipeline.putback import paste_back

    engine, a2m, opts = backend.models.engine, backend.cfg.audio2motion, backend.options
    gen = torch.Generator().manual_seed(0)
    frame = avatar.source.frames[0]
    steps = opts.sampling_timesteps
    shape = (1, a2m.seq_frames, a2m.motion_feat_dim)

    def works(stage: Stage, n: int, jpeg: int | None = 85) -> list[Any]:
        if stage is Stage.HUBERT:
            return [np.zeros(6480, np.float32)] * n
        if stage is Stage.LMDM:
            return [
                WindowWork(
                    steps,
                    torch.zeros(1, a2m.motion_feat_dim),
                    torch.zeros(1, a2m.seq_frames, a2m.audio_feat_dim),
                    torch.randn(shape, generator=gen),
                    torch.randn((steps - 1, *shape), generator=gen),
                )
            ] * n
        return [
            RenderWork(
                0,
                frame.f_s,
                torch.randn((1, 21, 3), generator=gen) * 0.2,
                torch.randn((1, 21, 3), generator=gen) * 0.2,
                True,
                avatar.paste_plans[0],
                jpeg,
            )
        ] * n

    out: dict[str, Any] = {}
    for stage in Stage:
        out[stage.value] = {b: 1000 * engine.time_batch(stage, works(stage, b)) / b for b in engine.batch_sizes}
    out["render_no_jpeg"] = {
        b: 1000 * engine.time_batch(Stage.RENDER, works(Stage.RENDER, b, None)) / b for b in engine.batch_sizes
    }
    dev = backend.device
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    renderer = backend.models.renderer
    x = torch.randn((16, 21, 3), generator=gen).to(dev) * 0.2

    def timed(fn, repeats: int = 5) -> float:
        fn()
        sync()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        sync()
        return 1000 * (time.perf_counter() - t0) / repeats

    with torch.inference_mode():
        out["warp_decode"] = {
            b: timed(lambda b=b: renderer([frame.f_s] * b, x[:b], x[:b])) / b for b in engine.batch_sizes
        }
        render = torch.rand((1, 3, 512, 512), device=dev)
        out["paste_back_ms"] = timed(lambda: paste_back(avatar.paste_plans[0], render))
        image = paste_back(avatar.paste_plans[0], render)
        if dev.type == "cuda":
            from torchvision.io import encode_jpeg

            chw = image.permute(2, 0, 1).contiguous()
            out["nvjpeg_ms"] = {
                b: timed(lambda b=b: [e.cpu() for e in encode_jpeg([chw] * b, quality=85)]) / b for b in (1, 16)
            }
        stream = backend.open_stream(avatar, seed=0)
        state = stream._require_state()
        rows = [torch.randn(a2m.motion_feat_dim, generator=gen) * 0.02 for _ in range(8)]
        from ditto.backends.talkinghead.pipeline.audio2motion import vector_to_arrays

        out["stitcher_host_ms"] = timed(lambda: [state.stitcher(0, vector_to_arrays(r)) for r in rows]) / len(rows)
        stream.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tree", type=Path, help="reuse (or create) the test tree here")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--sessions", default="1,4,8,12,16")
    p.add_argument("--seconds", type=float, default=8.0, help="speech per session")
    p.add_argument("--max_size", type=int, default=1024)
    p.add_argument("--lag_bound_ms", type=float, default=500.0, help="lag allowed beyond the look-ahead")
    p.add_argument("--jpeg_quality", type=int, default=85)
    p.add_argument("--compile_min_batch", type=int, default=8, help="0: no compiled renderer")
    p.add_argument("--skip_alone", action="store_true", help="only the batched engine")
    p.add_argument(
        "--launch_compare",
        action="store_true",
        help="also the batched engine resolving each batch before launching the next (the path before overlap)",
    )
    p.add_argument("--stages", action="store_true", help="also time each engine stage per batch size")
    p.add_argument("--quick", action="store_true", help="CPU smoke run: 1 level, 1 s")
    p.add_argument("--json", type=Path)
    p.add_argument("--plot", type=Path, help="PNG of the capacity curve (file FPS and live lag p95 per level)")
    p.add_argument("--replot", type=Path, help="only draw --plot from this earlier --json")
    args = p.parse_args(argv)
    if args.replot:
        results = json.loads(args.replot.read_text())
        plot(results, args.plot or args.replot.with_suffix(".png"))
        return 0
    if args.quick:
        args.sessions, args.seconds = "1,2", 1.0
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else "cpu"
        if args.device == "auto"
        else args.device
    )
    tree = ensure_tree(args.tree)
    _, online_pkl = bench_pkls(tree)
    cfg = load_cfg(online_pkl, data_root=tree / "ditto_pytorch")
    audio = read_audio(args.seconds)
    levels = [int(n) for n in args.sessions.split(",")]
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor(),
        "seconds": args.seconds,
        "max_size": args.max_size,
        "levels": {},
    }
    batched = DittoBackend(cfg, device, max_size=args.max_size, compile_min_batch=args.compile_min_batch or None)
    variants = {"batched": batched}
    if args.launch_compare:
        variants["batched, one launch at a time"] = DittoBackend(
            cfg, device, max_size=args.max_size, models=dataclasses.replace(batched.models, launched_batches=1)
        )
    if not args.skip_alone:
        variants["alone"] = DittoBackend(
            cfg,
            device,
            max_size=args.max_size,
            models=dataclasses.replace(batched.models, batch_sizes=(1,), compile_min_batch=None),
        )
    for name, backend in variants.items():
        t0 = time.perf_counter()
        backend.warmup()
        results[f"{name}_warmup_s"] = time.perf_counter() - t0
        results[f"{name}_live_capacity"] = backend.live_capacity
        avatar = backend.register_source(load_portrait(args.max_size))
        if args.stages:
            results[f"{name}_stages"] = costs = stage_costs(backend, avatar)
            print(f"[{name}] stage costs (ms per item): {json.dumps(costs)}", flush=True)
        results["levels"][name] = [
            run_level(backend, avatar, audio, n, args.lag_bound_ms / 1000, args.jpeg_quality) for n in levels
        ]
        print(f"[{name}] measured capacity {backend.live_capacity}", flush=True)
        for row in results["levels"][name]:
            print(f"[{name}] {json.dumps(row)}", flush=True)
    print_table(results, levels)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.plot:
        plot(results, args.plot)
    return 0


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (fps_ax, lag_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for name, rows in results["levels"].items():
        sessions = [r["sessions"] for r in rows]
        fps_ax.plot(sessions, [r["file_fps_aggregate"] for r in rows], marker="o", label=name)
        lag_ax.plot(sessions, [r["live_lag_p95_ms"] for r in rows], marker="o", label=name)
        ok = [r for r in rows if r["live_sustained"]]
        lag_ax.scatter(
            [r["sessions"] for r in ok],
            [r["live_lag_p95_ms"] for r in ok],
            s=120,
            facecolors="none",
            edgecolors="green",
        )
    fps_ax.axhline(250, color="grey", linestyle=":", label="target 250 FPS")
    fps_ax.set(xlabel="sessions", ylabel="file mode: frames/s, all sessions", title="throughput")
    lag_ax.set(xlabel="sessions", ylabel="live: lag p95 (ms)", title="live (circled: sustained)")
    for ax in (fps_ax, lag_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{results['device']}, {results['max_size']} px, {results['seconds']:.0f} s of speech per session")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(results: dict[str, Any], levels: list[int]) -> None:
    names = list(results["levels"])
    print(f"\n{results['device']}, {results['seconds']:.0f} s of speech per session, {results['max_size']} px")
    header = f"{'sessions':>8} | " + " | ".join(
        f"{n + ': live p95 lag, shed, ok':>30} | {n + ' file FPS':>16}" for n in names
    )
    if len(names) > 1:
        header += " | file FPS ratio " + ", ".join(f"{names[0]} / {n}" for n in names[1:])
    print(header)
    for i, level in enumerate(levels):
        cells = []
        for name in names:
            r = results["levels"][name][i]
            lag = "-" if r["live_lag_p95_ms"] is None else f"{r['live_lag_p95_ms']:.0f} ms"
            cells.append(
                f"{lag + ', ' + str(r['live_shed']) + ', ' + ('yes' if r['live_sustained'] else 'no'):>30} | "
                f"{r['file_fps_aggregate']:16.1f}"
            )
        line = f"{level:>8} | " + " | ".join(cells)
        if len(names) > 1:
            first, *others = (results["levels"][n][i]["file_fps_aggregate"] for n in names)
            line += " | " + ", ".join(f"{first / other:.2f}x" for other in others)
        print(line)
    for name in names:
        sustained = [r["sessions"] for r in results["levels"][name] if r["live_sustained"]]
        print(
            f"{name}: live sessions sustained up to {max(sustained) if sustained else 0}; "
            f"measured capacity {results.get(name + '_live_capacity')}"
        )


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    sys.exit(main())

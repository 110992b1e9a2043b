"""The real server under load: start-up time, the capacity curve, and the server's CPU per level.

Usage::

    python bench/bench_server_load.py --tree /tmp/tree --sessions 1,4,8,10 [--mode live] \\
        [--max_live_sessions 16] [--compile_min_batch 8] [--no-motion_stream] --json out.json --plot out.png
    python bench/bench_server_load.py --tree /tmp/tree --sessions 8,16,17 --serve_replicas 1,2 \\
        --sessions_per_replica 8 --json out.json --plot out.png     # one GPU vs two (out-1.png, out-2.png)
    python bench/bench_server_load.py --backend lite --max_size 512 --sessions 6,8,10 --lite_render_slots 2,12 \\
        --json out.json --plot out.png                              # lite: 2 render slots vs 12 (out-2.png, out-12.png)

Starts ``streaming_server.py`` (Ditto backend on the test checkpoint tree with the online pkl, or
``--backend lite``) as a subprocess (with ``--serve_replicas 1,2``: the Ray Serve application
``python -m ditto.serve``, once with one replica and once with two, a curve for each), times it
from launch to the first ``/healthz`` answer, then
runs ``python -m ditto.tools.load_test`` one level at a time against it while reading the server
process tree's CPU time from ``/proc`` (cores = CPU seconds / wall seconds of the level). Prints the
load test's table plus the CPU column and writes the levels (each with ``server_cpu_cores``), the
start-up time and the server's ``/healthz`` (capacity, engine stages) as JSON; the PNG is the load
test's capacity curve. Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_engine import LOOKAHEAD_S  # noqa: E402
from bench.server_process import PLAIN_SERVER, ditto_server_flags, running_server, serve_application  # noqa: E402
from ditto.tools import load_test  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of process ``pid`` and every process below it (a Ray Serve
    application's raylet, proxy and replicas are), waited-for children included."""
    stats: dict[int, tuple[int, float]] = {}  # pid -> (parent pid, CPU seconds)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # the process ended meanwhile
                continue
            stats[int(entry.name)] = (int(fields[1]), sum(int(v) for v in fields[11:15]) / CLOCK_TICKS)

    def below(p: int) -> bool:
        while p > 1:
            if p == pid:
                return True
            p = stats[p][0] if p in stats else 0
        return False

    return sum(cpu for p, (_, cpu) in stats.items() if below(p))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=["ditto", "lite"], default="ditto")
    p.add_argument("--tree", type=Path, help="test checkpoint tree (made here when missing)")
    p.add_argument("--sessions", type=load_test.parse_levels, default=[1, 4, 8])
    p.add_argument("--mode", choices=["live", "file"], default="live")
    p.add_argument("--audio", default=str(ROOT / "example" / "audio.wav"))
    p.add_argument(
        "--source", nargs="+", default=[str(ROOT / "example" / "image.png")], help="the load test's portrait(s)"
    )
    p.add_argument("--max_size", type=int, default=1024)
    p.add_argument("--max_live_sessions", type=int, help="admission override (default: the server's measure)")
    p.add_argument("--compile_min_batch", type=int, default=8)
    p.add_argument(
        "--motion_stream",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Ditto: the server's --motion_stream",
    )
    p.add_argument(
        "--lag_bound_ms",
        type=float,
        help="sustained: lag p95 within this (default 500 ms, plus Ditto's online look-ahead)",
    )
    p.add_argument(
        "--serve_replicas",
        type=load_test.parse_levels,
        help="measure the Ray Serve application instead (python -m ditto.serve), once per replica count "
        "given (1,2: one replica, then two; Ditto replicas take a GPU each)",
    )
    p.add_argument("--sessions_per_replica", type=int, help="Serve: sessions one replica admits")
    p.add_argument(
        "--lite_render_slots",
        type=load_test.parse_levels,
        help="lite: a curve for each value of the server's --lite_render_slots (2,12: the default against one "
        "render at a time per session), with each level's aggregate fps as a ratio to the last value's",
    )
    p.add_argument("--spawn_rate", type=float, help="the load test's sessions started per second (default: at once)")
    p.add_argument("--startup_timeout", type=float, default=600.0)
    p.add_argument("--json", type=Path)
    p.add_argument("--plot", type=Path)
    args = p.parse_args(argv)
    lag_bound_ms = args.lag_bound_ms or 500.0 + (1000 * LOOKAHEAD_S if args.backend == "ditto" else 0.0)

    flags = ["--backend", args.backend, "--max_size", str(args.max_size), "--max_sessions", str(max(args.sessions) + 2)]
    if args.backend == "ditto":
        flags += ditto_server_flags(args.tree, compile_min_batch=args.compile_min_batch)
        flags += ["--motion_stream" if args.motion_stream else "--no-motion_stream"]
    if args.max_live_sessions is not None:
        flags += ["--max_live_sessions", str(args.max_live_sessions)]
    if args.serve_replicas and args.lite_render_slots:
        p.error("--serve_replicas and --lite_render_slots: one comparison at a time")
    if args.lite_render_slots and args.backend != "lite":
        p.error("--lite_render_slots compares the lite backend: give --backend lite")
    if args.serve_replicas:
        if args.sessions_per_replica is not None:
            flags += ["--sessions_per_replica", str(args.sessions_per_replica)]
        variants = [
            (f"serve, {n} replica{'s' if n > 1 else ''}", str(n), [], serve_application(n)) for n in args.serve_replicas
        ]
    elif args.lite_render_slots:
        variants = [
            (f"server, {n} render slots", str(n), ["--lite_render_slots", str(n)], PLAIN_SERVER)
            for n in args.lite_render_slots
        ]
    else:
        result = run_curve(args, flags, PLAIN_SERVER, lag_bound_ms, "server")
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
        if args.plot:
            plot(result, args.plot, f"{args.backend} server, {args.mode}, {args.max_size}px")
        return 0
    curves = {}
    for name, suffix, extra_flags, launcher in variants:
        curves[name] = run_curve(args, flags + extra_flags, launcher, lag_bound_ms, name)
        if args.plot:
            plot(curves[name], args.plot.with_stem(f"{args.plot.stem}-{suffix}"), f"{args.backend} {name}")
    print("\ncapacity: " + ", ".join(f"{name}: {c['capacity']}" for name, c in curves.items()))
    print(format_ratios(curves))
    if args.json:
        args.json.write_text(json.dumps({"curves": curves}, indent=1))
    return 0


def format_ratios(curves: dict[str, dict]) -> str:
    """Each level's aggregate fps in every curve, and as a ratio to the last curve's."""
    *_, (base_name, base) = curves.items()
    base_fps = {level["sessions"]: level["fps_aggregate"] for level in base["levels"]}
    rows = [f"aggregate fps, ratio to {base_name}:"]
    for name, curve in curves.items():
        cells = [
            f"{lv['sessions']}: {lv['fps_aggregate']:.1f} ({lv['fps_aggregate'] / base_fps[lv['sessions']]:.2f}x)"
            for lv in curve["levels"]
            if base_fps.get(lv["sessions"])
        ]
        rows.append(f"  {name}: " + ", ".join(cells))
    return "\n".join(rows)


def run_curve(
    args: argparse.Namespace, flags: list[str], launcher: tuple[str, ...], lag_bound_ms: float, name: str
) -> dict:
    """Start the server (``launcher``), run every level of ``args.sessions`` against it, stop it."""
    with running_server(flags, startup_timeout_s=args.startup_timeout, launcher=launcher) as started:
        server, log, startup_s = started.url, started.log, started.startup_s
        print(f"# {name} up in {startup_s:.1f} s: {json.dumps(started.health['sessions'])}", flush=True)
        levels = []
        for n in args.sessions:
            level_json = log.with_name(f"level{n}.json")
            cpu0, t0 = cpu_seconds(started.process.pid), time.monotonic()
            code = load_test.main(
                [
                    "--server",
                    server,
                    "--sessions",
                    str(n),
                    "--mode",
                    args.mode,
                    "--audio",
                    args.audio,
                    "--source",
                    *args.source,
                    "--lag_bound_ms",
                    str(lag_bound_ms),
                    "--json",
                    str(level_json),
                    *(["--spawn_rate", str(args.spawn_rate)] if args.spawn_rate else []),
                ]
            )
            cores = (cpu_seconds(started.process.pid) - cpu0) / (time.monotonic() - t0)
            if code != 0:
                raise RuntimeError(f"load test level {n} failed (exit {code}); server log: {log}")
            level = json.loads(level_json.read_text())["levels"][0]
            level["server_cpu_cores"] = round(cores, 2)
            levels.append(level)
            print(f"# {name}, level {n}: server CPU {cores:.2f} cores", flush=True)
        final_health = load_test.read_health(server)
    reports = reports_of(levels)
    print(f"{name}:")
    print(load_test.format_table(reports))
    print("server CPU (cores):", ", ".join(f"{lv['sessions']}: {lv['server_cpu_cores']}" for lv in levels))
    return {
        "backend": args.backend,
        "mode": args.mode,
        "max_size": args.max_size,
        "startup_s": round(startup_s, 1),
        "compile_min_batch": args.compile_min_batch,
        "motion_stream": args.motion_stream,
        "lag_bound_ms": lag_bound_ms,
        "capacity": load_test.capacity(reports),
        "health": final_health,
        "levels": levels,
        "server_log_tail": log.read_text().splitlines()[-15:],
    }


def reports_of(levels: list[dict]) -> list[load_test.LevelReport]:
    return [load_test.LevelReport(**{k: v for k, v in level.items() if k != "server_cpu_cores"}) for level in levels]


def plot(result: dict, path: Path, title: str) -> None:
    load_test.plot_levels(reports_of(result["levels"]), path, lag_bound_ms=result["lag_bound_ms"], title=title)


if __name__ == "__main__":
    raise SystemExit(main())

"""The real server under load: start-up time, the capacity curve, and the server's CPU per level.

Usage::

    python bench/bench_server_load.py --tree /tmp/tree --sessions 1,4,8,10 [--mode live] \\
        [--max_live_sessions 16] [--compile_min_batch 16] --json out.json --plot out.png

Starts ``streaming_server.py`` (Ditto backend on the test checkpoint tree with the online pkl, or
``--backend lite``) as a subprocess, times it from launch to the first ``/healthz`` answer, then
runs ``python -m ditto.tools.load_test`` one level at a time against it while reading the server
process's CPU time from ``/proc`` (cores = CPU seconds / wall seconds of the level). Prints the
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
from bench.server_process import ditto_server_flags, running_server  # noqa: E402
from ditto.tools import load_test  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` and its waited-for children so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / CLOCK_TICKS  # utime stime cutime cstime


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=["ditto", "lite"], default="ditto")
    p.add_argument("--tree", type=Path, help="test checkpoint tree (made here when missing)")
    p.add_argument("--sessions", type=load_test.parse_levels, default=[1, 4, 8])
    p.add_argument("--mode", choices=["live", "file"], default="live")
    p.add_argument("--audio", default=str(ROOT / "example" / "audio.wav"))
    p.add_argument("--source", default=str(ROOT / "example" / "image.png"))
    p.add_argument("--max_size", type=int, default=1024)
    p.add_argument("--max_live_sessions", type=int, help="admission override (default: the server's measure)")
    p.add_argument("--compile_min_batch", type=int, default=16)
    p.add_argument(
        "--lag_bound_ms",
        type=float,
        help="sustained: lag p95 within this (default 500 ms, plus Ditto's online look-ahead)",
    )
    p.add_argument("--startup_timeout", type=float, default=600.0)
    p.add_argument("--json", type=Path)
    p.add_argument("--plot", type=Path)
    args = p.parse_args(argv)
    lag_bound_ms = args.lag_bound_ms or 500.0 + (1000 * LOOKAHEAD_S if args.backend == "ditto" else 0.0)

    flags = ["--backend", args.backend, "--max_size", str(args.max_size), "--max_sessions", str(max(args.sessions) + 2)]
    if args.backend == "ditto":
        flags += ditto_server_flags(args.tree, compile_min_batch=args.compile_min_batch)
    if args.max_live_sessions is not None:
        flags += ["--max_live_sessions", str(args.max_live_sessions)]
    with running_server(flags, startup_timeout_s=args.startup_timeout) as started:
        server, log, startup_s = started.url, started.log, started.startup_s
        print(f"# server up in {startup_s:.1f} s: {json.dumps(started.health['sessions'])}", flush=True)
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
                    args.source,
                    "--lag_bound_ms",
                    str(lag_bound_ms),
                    "--json",
                    str(level_json),
                ]
            )
            cores = (cpu_seconds(started.process.pid) - cpu0) / (time.monotonic() - t0)
            if code != 0:
                raise RuntimeError(f"load test level {n} failed (exit {code}); server log: {log}")
            level = json.loads(level_json.read_text())["levels"][0]
            level["server_cpu_cores"] = round(cores, 2)
            levels.append(level)
            print(f"# level {n}: server CPU {cores:.2f} cores", flush=True)
        final_health = load_test.read_health(server)
    reports = [load_test.LevelReport(**{k: v for k, v in level.items() if k != "server_cpu_cores"}) for level in levels]
    print(load_test.format_table(reports))
    print("server CPU (cores):", ", ".join(f"{lv['sessions']}: {lv['server_cpu_cores']}" for lv in levels))
    result = {
        "backend": args.backend,
        "mode": args.mode,
        "max_size": args.max_size,
        "startup_s": round(startup_s, 1),
        "compile_min_batch": args.compile_min_batch,
        "lag_bound_ms": lag_bound_ms,
        "capacity": load_test.capacity(reports),
        "health": final_health,
        "levels": levels,
        "server_log_tail": log.read_text().splitlines()[-15:],
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if args.plot:
        load_test.plot_levels(
            reports,
            args.plot,
            lag_bound_ms=lag_bound_ms,
            title=f"{args.backend} server, {args.mode}, {args.max_size}px",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m ditto.serve``: the server as Ray Serve replicas on a local Ray (or a running cluster).

Usage::

    python -m ditto.serve --replicas 2 [--sessions_per_replica 8] [server flags]   # serve until Ctrl+C
    python -m ditto.serve --min_replicas 1 --max_replicas 4 [server flags]       # autoscaling
    python -m ditto.serve status [--address auto] [--json]                       # every replica's sessions

Server flags are those of ``streaming_server.py`` (``--host``/``--port`` are Serve's proxy). Without
``--replicas`` there is one replica per GPU for the Ditto backend, one CPU replica for lite.
SIGINT/SIGTERM stop the application: replicas end their sessions (``shutting_down``, close code
1012) within ``--shutdown_grace_s``, then Serve shuts down.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time

from pydantic import ValidationError

from ditto.serve.options import ServeOptions
from ditto.server.main import build_parser as build_server_parser

logger = logging.getLogger(__name__)

PROG = "python -m ditto.serve"
APP_NAME = "ditto"
LITE_SESSIONS_PER_REPLICA = 4  # the plain server's default max_sessions


def build_parser() -> argparse.ArgumentParser:
    p = build_server_parser()
    p.prog = PROG
    p.description = (
        "The streaming server as Ray Serve replicas (one per GPU, or N CPU replicas of the lite "
        "backend); clients connect to ws://HOST:PORT/ws/{client_id} as to the plain server. "
        f"'{PROG} status' shows every replica's sessions."
    )
    g = p.add_argument_group("Ray Serve")
    g.add_argument(
        "--replicas",
        type=int,
        help="replicas (default: one per GPU for Ditto, 1 for lite); with --max_replicas: the initial count",
    )
    g.add_argument("--min_replicas", type=int, help="autoscaling lower bound (with --max_replicas; default 1)")
    g.add_argument("--max_replicas", type=int, help="autoscale on ongoing sessions up to this many replicas")
    g.add_argument(
        "--sessions_per_replica",
        type=int,
        help="sessions one replica admits: its measured live capacity (default --max_sessions, else "
        f"8 for Ditto on an H200 at 1024 px, {LITE_SESSIONS_PER_REPLICA} for lite)",
    )
    g.add_argument("--cpus_per_replica", type=float, help="CPU cores Ray reserves per replica (default 1)")
    g.add_argument(
        "--drain_timeout_s",
        type=float,
        help="scale-down: how long a stopping replica waits for its sessions (default 600)",
    )
    g.add_argument("--address", help="a running Ray cluster ('auto', or ray://HOST:10001); default: start a local Ray")
    return p


SERVE_FLAGS = (
    "replicas",
    "min_replicas",
    "max_replicas",
    "sessions_per_replica",
    "cpus_per_replica",
    "drain_timeout_s",
    "address",
)


def options_from_args(args: argparse.Namespace, gpus: int) -> ServeOptions:
    """The application's options from the flags; ``gpus``: GPUs of the Ray cluster (one replica each)."""
    flags = vars(args)
    settings = {k: v for k, v in flags.items() if v is not None and k not in SERVE_FLAGS}
    settings = json.loads(json.dumps(settings, default=str))  # Paths as strings: the options travel as data
    options = ServeOptions(settings=settings)
    ditto = options.server_settings().backend_name == "ditto"
    values = {
        "settings": settings,
        "sessions_per_replica": flags["sessions_per_replica"]
        or flags["max_sessions"]
        or (options.sessions_per_replica if ditto else LITE_SESSIONS_PER_REPLICA),
        "num_replicas": flags["replicas"] or (max(1, gpus) if ditto else 1),
    }
    for name in ("min_replicas", "max_replicas", "cpus_per_replica", "drain_timeout_s"):
        if flags[name] is not None:
            values[name] = flags[name]
    return ServeOptions(**values)


def _fail(text: str, code: int = 2) -> int:
    print(f"{PROG}: error: {text}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["status"]:
        return status(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level="DEBUG" if args.log_level == "trace" else (args.log_level or "info").upper())
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine unasked
    import ray
    from ray import serve

    from ditto.serve.board import BOARD_DEPLOYMENT
    from ditto.serve.deployment import build_app

    ray.init(address=args.address, include_dashboard=False)
    try:
        try:
            options = options_from_args(args, gpus=int(ray.cluster_resources().get("GPU", 0)))
        except ValidationError as exc:
            return _fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
        settings = options.server_settings()
        serve.start(http_options={"host": settings.host, "port": settings.port})
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        serve.run(build_app(options.model_dump(mode="json")), name=APP_NAME, route_prefix="/")
        logger.info(
            "Serving ws://%s:%d/ws/{client_id}: %s", settings.host, settings.port, options.replica_deployment_options()
        )
        stop.wait()
        board = serve.get_deployment_handle(BOARD_DEPLOYMENT, app_name=APP_NAME)
        board.drain.remote().result()
        deadline = time.monotonic() + settings.shutdown_grace_s + 2 * options.report_interval_s
        while board.summary.remote().result()["sessions"]["active"] and time.monotonic() < deadline:
            time.sleep(0.2)  # bounded: replicas end their sessions within shutdown_grace_s
        serve.shutdown()
    finally:
        ray.shutdown()
    return 0


def status(argv: list[str]) -> int:
    """Print every replica's sessions (from the session board of a running application)."""
    p = argparse.ArgumentParser(prog=f"{PROG} status", description="Sessions of every replica of the application.")
    p.add_argument("--address", default="auto", help="the Ray cluster (default auto: the local one)")
    p.add_argument("--app", default=APP_NAME, help=f"Serve application name (default {APP_NAME})")
    p.add_argument("--json", action="store_true", help="print the board's JSON")
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    from ditto.serve.board import BOARD_DEPLOYMENT

    try:
        ray.init(address=args.address, include_dashboard=False, logging_level=logging.WARNING)
    except ConnectionError as exc:
        return _fail(f"no Ray cluster at {args.address}: {exc}", 1)
    try:
        summary = serve.get_deployment_handle(BOARD_DEPLOYMENT, app_name=args.app).summary.remote().result()
    finally:
        ray.shutdown()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{'replica':<12} {'backend':<8} {'status':<14} {'active':>6} {'max':>4} {'live':>5} {'live_max':>8}")
    for r in summary["replicas"]:
        s = r["sessions"]
        print(
            f"{r['server_id']:<12} {r['backend']:<8} {r['status']:<14} {s['active']:>6} {s['max']:>4} "
            f"{s['live']:>5} {s['live_max']:>8}"
        )
    t = summary["sessions"]
    print(
        f"{'total':<36} {t['active']:>6} {t['max']:>4} {t['live']:>5} {t['live_max']:>8}"
        + ("  (draining)" if summary["draining"] else "")
    )
    return 0

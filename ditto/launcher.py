"""``python run_streaming_test.py --mode both|server|client``: start the server, the client, or
both (server on a free local port, client once ``/healthz`` answers, server stopped after).

Server flags (``--data_root``, ``--jpeg_quality``...) and client flags (``--audio_path``,
``--save_frames``...) may be mixed on one command line; each goes to its program.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from pydantic import ValidationError

from ditto.client.cli import build_parser as client_parser
from ditto.server.main import build_parser as server_parser
from ditto.server.main import settings_from_args

logger = logging.getLogger("run_streaming_test")
ROOT = Path(__file__).resolve().parent.parent


def split_flags(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split mixed flags into (server argv, client argv) by which parser knows each flag."""
    owners: list[tuple[argparse.ArgumentParser, list[str]]] = [(server_parser(), []), (client_parser(), [])]
    i = 0
    while i < len(argv):
        token = argv[i]
        name = token.split("=", 1)[0]
        for parser, out in owners:
            action = parser._option_string_actions.get(name)
            if action is not None:
                takes_value = action.nargs != 0 and "=" not in token
                out.extend(argv[i : i + 2] if takes_value else [token])
                i += 2 if takes_value else 1
                break
        else:
            raise SystemExit(f"run_streaming_test.py: error: unknown flag {token!r}")
    return owners[0][1], owners[1][1]


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if json.load(reply).get("status") == "ok":
                    return True
        except OSError:
            time.sleep(0.2)
    return False


def stop(server: subprocess.Popen, timeout_s: float = 15.0) -> int:
    if server.poll() is None:
        server.send_signal(signal.SIGINT)
        try:
            return server.wait(timeout_s)
        except subprocess.TimeoutExpired:
            server.kill()
    return server.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="run_streaming_test.py",
        description=__doc__.split("\n\n")[0],
        epilog="Any flag of streaming_server.py or streaming_client.py may follow; each goes to its program "
        "(see their --help).",
    )
    parser.add_argument("--mode", choices=["both", "server", "client"], default="both")
    parser.add_argument(
        "--startup_timeout",
        type=float,
        default=300.0,
        help="seconds to wait for the server's /healthz (model loading included)",
    )
    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO)
    server_argv, client_argv = split_flags(rest)
    python = sys.executable
    server_cmd = [python, str(ROOT / "streaming_server.py")]
    client_cmd = [python, str(ROOT / "streaming_client.py")]
    if args.mode == "server":
        return subprocess.call(server_cmd + server_argv)
    if args.mode == "client":
        return subprocess.call(client_cmd + client_argv)

    known, _ = server_parser().parse_known_args(server_argv)
    try:
        listen = settings_from_args(known).host  # flag > DITTO_HOST > default, as the server resolves it
    except ValidationError:  # bad flags or DITTO_* values: the server says which, and exits 2
        return subprocess.call(server_cmd + server_argv)
    host = "127.0.0.1" if listen in ("0.0.0.0", "::") else listen
    port = known.port
    if port is None:  # a free one, given as a flag (it wins over DITTO_PORT)
        port = free_port(host)
        server_argv = [*server_argv, "--port", str(port)]
    logger.info("Starting server on %s:%d", host, port)
    server = subprocess.Popen(server_cmd + server_argv)
    try:
        if not wait_healthy(f"http://{host}:{port}/healthz", server, args.startup_timeout):
            logger.error("Server did not become healthy (exit code %s)", server.poll())
            return 1
        if "--server" not in client_argv:
            client_argv += ["--server", f"ws://{host}:{port}"]
        code = subprocess.call(client_cmd + client_argv)
    finally:
        server_code = stop(server)
        logger.info("Server stopped (exit code %s)", server_code)
    return code

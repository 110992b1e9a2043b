"""A real ``streaming_server.py`` in a subprocess, for the benchmarks that measure the server as deployed.

:func:`running_server` picks a free loopback port, launches the server with the flags given, times it
from launch to the first ``/healthz`` answer and terminates it on exit; :func:`ditto_server_flags` are
the flags of the Ditto backend on the test checkpoint tree with the online pkl, on CUDA.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

from ditto.tools import load_test

ROOT = Path(__file__).resolve().parents[1]
STARTUP_FAILURE_LINES = 40  # of the server's log, in the error when it dies while starting


@dataclasses.dataclass(frozen=True, slots=True)
class ServerProcess:
    process: subprocess.Popen
    url: str  # ws://127.0.0.1:PORT
    log: Path  # the server's stdout and stderr; a fresh folder, so callers may write beside it
    startup_s: float  # launch -> first /healthz answer
    health: dict  # that first /healthz answer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_health(server: str, process: subprocess.Popen, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode} during start-up")
        try:
            return load_test.read_health(server, timeout_s=1.0)
        except (OSError, ValueError):
            time.sleep(0.2)  # polling a process that is starting: nothing to wait on but the port
    raise RuntimeError(f"no /healthz answer within {timeout_s:.0f} s")


def log_tail(log: Path, lines: int = STARTUP_FAILURE_LINES) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def ditto_server_flags(tree: Path | None, *, compile_min_batch: int) -> list[str]:
    """Ditto on the test checkpoint tree ``tree`` (made when missing) with the online pkl, on CUDA."""
    from bench.bench_ditto import bench_pkls, ensure_tree  # imports torch: only the Ditto path needs it

    tree = ensure_tree(tree)
    _, online = bench_pkls(tree)
    return [
        "--data_root",
        str(tree / "ditto_pytorch"),
        "--cfg_pkl",
        str(online),
        "--device",
        "cuda",
        "--compile_min_batch",
        str(compile_min_batch),
    ]


PLAIN_SERVER = (str(ROOT / "streaming_server.py"),)


def serve_application(replicas: int) -> tuple[str, ...]:
    """The launcher of the Ray Serve application with ``replicas`` replicas (for :func:`running_server`)."""
    return ("-m", "ditto.serve", "--replicas", str(replicas))


@contextlib.contextmanager
def running_server(
    flags: list[str], *, startup_timeout_s: float, launcher: tuple[str, ...] = PLAIN_SERVER
) -> Iterator[ServerProcess]:
    """``python LAUNCHER --port FREE *flags`` (the plain ``streaming_server.py``, or
    :func:`serve_application`) until the block ends (then terminated and waited for).

    Raises:
        RuntimeError: the server exited, or did not answer ``/healthz`` within ``startup_timeout_s``
            (the message ends with the last lines of the server's log).
    """
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    log = Path(tempfile.mkdtemp(prefix="ditto_server_")) / "server.log"
    launched = time.monotonic()
    with open(log, "w") as log_file:
        process = subprocess.Popen(
            [sys.executable, *launcher, "--port", str(port), *flags],
            cwd=ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        try:
            health = wait_for_health(url, process, startup_timeout_s)
        except RuntimeError as error:
            raise RuntimeError(f"{error}; the last lines of {log}:\n{log_tail(log)}") from None
        yield ServerProcess(process, url, log, time.monotonic() - launched, health)
    finally:
        process.terminate()
        process.wait(timeout=60)

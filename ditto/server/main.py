"""``python streaming_server.py``: parse flags, load the backend, serve with uvicorn.

The backend is loaded before uvicorn starts, so a bad checkpoint setup ends the
process with one clear message and a non-zero exit code, and ``/healthz`` answers as
soon as the server accepts connections. SIGINT/SIGTERM are handled by uvicorn (:class:`Server`):
end sessions (an ``error`` with code ``shutting_down``, then close code 1012), stop accepting, exit 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, cast

import uvicorn
from pydantic import ValidationError

from ditto.errors import ConfigError
from ditto.server import LOGGER_NAME

if TYPE_CHECKING:
    from fastapi import FastAPI

logger = logging.getLogger(LOGGER_NAME)


def build_parser() -> argparse.ArgumentParser:
    """Flags default to None: only flags given reach :class:`~ditto.settings.Settings`, which fills the
    rest from ``DITTO_*`` variables, then its own defaults (flag > environment > default)."""
    p = argparse.ArgumentParser(
        prog="streaming_server.py",
        description="Real-time talking-head streaming server (WebSocket). Without --data_root/--cfg_pkl the "
        "weights-free embedded animator serves.",
        epilog="Every setting is also read from its DITTO_* variable (DITTO_PORT=9000); a flag given wins.",
    )
    p.add_argument("--data_root", type=Path, help="Ditto checkpoint folder, e.g. ../checkpoints/ditto_pytorch")
    p.add_argument(
        "--cfg_pkl", type=Path, help="Ditto cfg pkl, e.g. ../checkpoints/ditto_cfg/v0.4_hubert_cfg_pytorch.pkl"
    )
    p.add_argument("--host", help="interface to listen on (default 127.0.0.1; 0.0.0.0: every interface)")
    p.add_argument("--port", type=int, help="default 8000")
    p.add_argument(
        "--log-level",
        "--log_level",
        dest="log_level",
        choices=["critical", "error", "warning", "info", "debug", "trace"],
        help="default info",
    )
    p.add_argument(
        "--backend",
        choices=["auto", "lite", "ditto"],
        help="auto (default): Ditto when --cfg_pkl is given, else the embedded default (lite)",
    )
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], help="Ditto backend device (default auto)")
    p.add_argument(
        "--trt_plugin",
        type=Path,
        help="GridSample3D TensorRT plugin library for the warp network engine "
        "(default: libgrid_sample_3d_plugin.so next to the engines, or in ditto_onnx/ beside them)",
    )
    p.add_argument(
        "--fallback",
        action="store_true",
        default=None,
        help="if the TensorRT engines cannot run here, serve the ditto_pytorch (or ditto_onnx) "
        "checkpoints beside --data_root instead of exiting",
    )
    p.add_argument(
        "--media_root", type=Path, help="folder whose files clients may name by relative path (default: uploads only)"
    )
    p.add_argument("--max_sessions", type=int, help="concurrent sessions; more are refused (busy). Default 4")
    p.add_argument(
        "--max_live_sessions",
        type=int,
        help="live sessions kept real time; more are refused (busy). Default: the capacity the Ditto "
        "backend measures at start-up on a GPU, else --max_sessions",
    )
    p.add_argument(
        "--live_max_lag_ms",
        type=float,
        help="live: a frame still waiting to be rendered this long after it could be shown (its audio arrived "
        "and its time came on the media clock) is shed (counted as skipped) so the session catches up (default 500)",
    )
    p.add_argument(
        "--max_batch",
        type=int,
        help="Ditto: most frames (or LMDM / HuBERT windows) of all sessions the GPU runs as one batch "
        "(default 16; 1 runs every call alone)",
    )
    p.add_argument(
        "--compile_min_batch",
        type=int,
        help="Ditto on CUDA: render batches of at least this many frames run torch.compile-d fp16 "
        "networks (2.2x faster per frame at 16; ~40 s more start-up per graph size compiled). Default 8; 0: never",
    )
    p.add_argument(
        "--motion_stream",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Ditto on CUDA: run the HuBERT and LMDM batches on a CUDA stream of their own, concurrently with "
        "the render batches (their small kernels use the GPU the render leaves idle). Default on",
    )
    p.add_argument(
        "--lite_render_slots",
        type=int,
        help="lite: frames of all sessions rendered at once (default 2: more threads at once contend for the GIL)",
    )
    p.add_argument("--jpeg_quality", type=int, help="JPEG quality of streamed frames (1-100, default 85)")
    p.add_argument("--max_size", type=int, help="longest side of the output video in pixels (default 1920)")
    return p


def settings_from_args(args: argparse.Namespace):
    from ditto.settings import Settings

    values = {k: v for k, v in vars(args).items() if v is not None}
    return Settings(**values)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            print(f"streaming_server.py: error: {where + ': ' if where else ''}{err['msg']}", file=sys.stderr)
        return 2
    logging.basicConfig(level="DEBUG" if settings.log_level == "trace" else settings.log_level.upper())

    from ditto.backends.factory import create_backend
    from ditto.server.app import create_app

    try:
        backend = create_backend(settings)
    except ConfigError as exc:
        print(f"streaming_server.py: error: {exc}", file=sys.stderr)
        return 1
    app = create_app(settings, backend_factory=lambda _settings: backend)
    # uvicorn handles SIGINT/SIGTERM itself (graceful shutdown), then re-raises the signal to the
    # handler that was installed before it: make that one a no-op so a requested stop exits 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    server = Server(
        uvicorn.Config(
            app, host=settings.host, port=settings.port, log_level=settings.log_level, **uvicorn_options(settings)
        )
    )
    server.run()
    return 0 if server.started else 1


def uvicorn_options(settings) -> dict:
    """The WebSocket and shutdown options uvicorn serves with (tests start their servers with them too).

    permessage-deflate is off: frames are JPEG, which deflate cannot shrink, and compressing
    them cost about 5 ms of CPU per 52 KB frame, six times the JPEG encoding itself.
    """
    return {
        "ws_max_size": settings.max_upload_bytes + (1 << 20),
        "ws_per_message_deflate": False,
        "timeout_graceful_shutdown": int(settings.shutdown_grace_s) + 1,
    }


class Server(uvicorn.Server):
    """uvicorn's server, ending the app's sessions before uvicorn's own shutdown does.

    uvicorn's shutdown fails every open WebSocket with close code 1012 at once, before the app's
    lifespan shutdown runs, so a client would never get its ``shutting_down`` error. Here the
    app's session registry ends them first (error, then 1012; see ``SessionRegistry.close_all``),
    then uvicorn shuts down as usual. ``config.app`` must be an app of :func:`create_app`.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._first_seen: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # connection -> monotonic s

    @property
    def _app(self) -> FastAPI:
        return cast("FastAPI", self.config.app)  # an app of create_app (see above)

    async def shutdown(self, sockets=None) -> None:
        state = self._app.state
        await state.registry.close_all(state.settings.shutdown_grace_s)
        await super().shutdown(sockets)

    async def on_tick(self, counter: int) -> bool:
        """Once a second, also drop connections that sent no complete request for
        ``request_timeout_s`` (half-open or slow clients, each holding a descriptor: uvicorn
        itself times out only idle keep-alive connections, after a response)."""
        if counter % 10 == 0:
            self._drop_stalled_connections(time.monotonic())
        return await super().on_tick(counter)

    def _drop_stalled_connections(self, now: float) -> None:
        timeout_s = self._app.state.settings.request_timeout_s
        first_seen = self._first_seen
        for connection in list(self.server_state.connections):
            if getattr(connection, "cycle", True) is not None:  # a request arrived, or not HTTP (WebSocket)
                first_seen.pop(connection, None)
                continue
            since = first_seen.setdefault(connection, now)
            if now - since > timeout_s and not connection.transport.is_closing():
                logger.info("Dropping a connection that sent no request in %.0f s", timeout_s)
                connection.transport.close()

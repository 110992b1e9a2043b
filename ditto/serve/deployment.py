"""The streaming server as a Ray Serve application: :class:`StreamingReplica` replicas behind Serve's
proxy, plus the :class:`~ditto.serve.board.SessionBoard`.

Each replica is the plain server, not a copy of it: its constructor loads the backend once (on the
GPU Serve reserved for it), then ``__serve_build_asgi_app__`` returns the app of
:func:`~ditto.server.app.create_app` with that backend, and Serve runs the app's lifespan and hands
it every WebSocket the proxy routes here. Sessions, admission (``busy``), writers and metrics are
the server's own; this module adds only what a replica needs beyond them:

* its replica id as ``server_id`` (named in ``streaming_started``);
* ``check_health``: the app is up and the backend still renders a frame of silence for a portrait
  registered at start-up; Serve restarts a replica whose check fails;
* a reporter that tells the session board the replica's counters, and ends the replica's sessions
  (``shutting_down``, close code 1012) when the board says the application is stopping, or, when
  Serve is stopping this replica (scale-down, redeploy), lets them run and ends those still running
  just before Serve's drain timeout would kill the replica;
* ``GET /serve/sessions``: the board's view of every replica.

``serve run serve_config.yaml`` calls :func:`build_app` with the file's ``args`` (a
:class:`~ditto.serve.options.ServeOptions`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import AsyncIterator

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from ditto.backends.factory import create_backend
from ditto.serve.board import ReplicaReport, SessionBoard
from ditto.serve.health import load_probe_avatar, probe_backend
from ditto.serve.options import ServeOptions
from ditto.server.app import create_app

logger = logging.getLogger(__name__)

STREAMING_DEPLOYMENT = "StreamingReplica"


@serve.deployment(name=STREAMING_DEPLOYMENT)
@serve.ingress()
class StreamingReplica:
    """One server per replica; see the module docstring."""

    def __init__(self, options: dict, board: DeploymentHandle) -> None:
        self._options = ServeOptions.model_validate(options)
        self._board = board
        self.server_id = serve.get_replica_context().replica_tag
        self._settings = self._options.server_settings(server_id=self.server_id)
        self._backend = create_backend(self._settings)  # the models, once per replica
        self._probe_avatar = load_probe_avatar(self._backend)
        self._app: FastAPI | None = None
        logger.info("Replica %s: backend %s loaded", self.server_id, self._backend.name)

    async def __serve_build_asgi_app__(self) -> FastAPI:
        app = create_app(self._settings, backend_factory=lambda _settings: self._backend)
        server_lifespan = app.router.lifespan_context

        @contextlib.asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            async with server_lifespan(app):
                reporter = asyncio.create_task(self._report_forever(app))
                try:
                    yield
                finally:
                    reporter.cancel()
                    with contextlib.suppress(Exception):
                        await self._board.leave.remote(self.server_id)

        app.router.lifespan_context = lifespan
        app.add_api_route("/serve/sessions", self._application_sessions, methods=["GET"])
        self._app = app
        return app

    async def _application_sessions(self) -> dict:
        """Every replica's sessions, from the session board."""
        return await self._board.summary.remote()

    async def check_health(self) -> None:
        """Called by Serve every ``health_check_period_s``; raising marks the replica unhealthy."""
        state = self._app.state if self._app is not None else None
        if state is None or not hasattr(state, "context"):
            raise RuntimeError("the server's lifespan has not started")
        await asyncio.to_thread(probe_backend, self._backend, self._probe_avatar)

    def _report(self, app: FastAPI) -> ReplicaReport:
        registry = app.state.registry
        return ReplicaReport(
            server_id=self.server_id,
            backend=self._backend.name,
            accepting=registry.accepting,
            active=registry.active,
            max_sessions=registry.max_sessions,
            live=registry.live,
            max_live=registry.max_live,
        )

    async def _report_forever(self, app: FastAPI) -> None:
        registry = app.state.registry
        board_reachable = True
        drain_deadline: float | None = None  # monotonic s: when a stopping replica ends what still runs
        loop = asyncio.get_running_loop()
        while True:
            try:
                reply = await self._board.report.remote(self._report(app))
            except Exception as exc:  # the board is a view: serving goes on without it
                if board_reachable:
                    logger.warning("Replica %s: session board unreachable (%s)", self.server_id, exc)
                board_reachable = False
            else:
                board_reachable = True
                if reply.application_stopping and registry.accepting:
                    logger.info("Replica %s: application stopping, ending %d sessions", self.server_id, registry.active)
                    await registry.close_all(self._settings.shutdown_grace_s)
                elif reply.replica_stopping and drain_deadline is None:
                    grace = self._options.forced_stop_after_s(self._settings.shutdown_grace_s)
                    drain_deadline = loop.time() + grace
                    logger.info(
                        "Replica %s: stopping (scale-down or redeploy); its %d sessions may run %.0f s more",
                        self.server_id,
                        registry.active,
                        grace,
                    )
            if drain_deadline is not None and loop.time() >= drain_deadline and registry.accepting:
                logger.info(
                    "Replica %s: drain timeout, ending %d sessions with shutting_down", self.server_id, registry.active
                )
                await registry.close_all(self._settings.shutdown_grace_s)
            await asyncio.sleep(self._options.report_interval_s)  # a period, not synchronisation


def build_app(args: dict) -> serve.Application:
    """The application ``serve run serve_config.yaml`` (and ``python -m ditto.serve``) deploys."""
    options = ServeOptions.model_validate(args)
    # @serve.deployment turns both classes into Deployments; mypy does not apply class decorators.
    board = SessionBoard.bind(stale_after_s=3 * options.report_interval_s + 2)  # type: ignore[attr-defined]
    replica = StreamingReplica.options(**options.replica_deployment_options())  # type: ignore[attr-defined]
    return replica.bind(options.model_dump(mode="json"), board)

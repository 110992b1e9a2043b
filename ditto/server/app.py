"""``create_app(settings)``: the FastAPI application and its lifespan.

Startup loads the backend once (a bad checkpoint setup raises ConfigError before the
server accepts anything); shutdown stops admitting sessions, ends the open ones with
close code 1012 and releases the backend and the worker pools.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
from typing import AsyncIterator, Callable

from fastapi import FastAPI

from ditto.backends.base import AnimatorBackend
from ditto.backends.factory import create_backend
from ditto.server.avatars import AvatarCache
from ditto.server.metrics import ServerMetrics
from ditto.server.routes import router
from ditto.server.session import SessionContext
from ditto.server.sessions import SessionRegistry
from ditto.settings import Settings

logger = logging.getLogger(__name__)


def _invalid_utf8_in_one_line(record: logging.LogRecord) -> bool:
    """A ``uvicorn.error`` filter. uvicorn (0.54, websockets-sansio, the default ``ws``) closes a
    connection whose text message is not UTF-8 with 1007, as RFC 6455 §8.1 asks, but logs the
    UnicodeDecodeError with a traceback: the client's bytes are at fault, not the server. Keep
    the line, with the decoder's reason, without the traceback."""
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, UnicodeDecodeError) and str(record.msg).startswith("Invalid UTF-8"):
        record.msg, record.args = f"{record.getMessage()} ({exc.reason} at byte {exc.start}); closed with 1007", ()
        record.exc_info = None
    return True


def create_app(
    settings: Settings,
    backend_factory: Callable[[Settings], AnimatorBackend] = create_backend,
) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logging.getLogger("uvicorn.error").addFilter(_invalid_utf8_in_one_line)  # no-op if already added
        backend = backend_factory(settings)
        logger.info("Backend %s ready", backend.name)
        metrics = ServerMetrics()
        render_pool = concurrent.futures.ThreadPoolExecutor(settings.max_sessions, thread_name_prefix="render")
        encode_pool = concurrent.futures.ThreadPoolExecutor(
            max(2, min(8, os.cpu_count() or 2)), thread_name_prefix="jpeg"
        )
        app.state.settings = settings
        max_live = settings.max_live_sessions or backend.live_capacity
        app.state.registry = registry = SessionRegistry(settings.max_sessions, max_live)
        logger.info(
            "Admitting %d sessions, %d of them live (%s)",
            registry.max_sessions,
            registry.max_live,
            "configured"
            if settings.max_live_sessions
            else "measured capacity"
            if backend.live_capacity
            else "--max_sessions",
        )
        metrics.watch(registry, backend)
        app.state.context = SessionContext(
            settings, backend, AvatarCache(backend), metrics, render_pool, encode_pool, registry
        )
        try:
            yield
        finally:
            await app.state.registry.close_all(settings.shutdown_grace_s)
            render_pool.shutdown(wait=True, cancel_futures=True)
            encode_pool.shutdown(wait=True, cancel_futures=True)
            backend.close()
            logger.info("Backend %s closed", backend.name)

    app = FastAPI(title="Ditto streaming server", lifespan=lifespan)
    app.include_router(router)
    return app

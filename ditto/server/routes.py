"""HTTP and WebSocket routes. The WebSocket handler admits the connection and hands it to a Session.

``/`` is the browser page (static files of :mod:`ditto.web`, no build step); it may load the
repository's example portrait and speech from ``/example/`` when they are there.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request, Response, WebSocket
from fastapi.responses import FileResponse

from ditto.errors import DittoError
from ditto.protocol import messages as msg
from ditto.server import LOGGER_NAME
from ditto.server.session import Session

logger = logging.getLogger(LOGGER_NAME)
router = APIRouter()

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "example"
# Only these names are served: a request never names a path on disk.
WEB_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8"}
EXAMPLE_FILES = {"image.png": "image/png", "audio.wav": "audio/wav"}


def _static(folder: Path, name: str, table: dict[str, str]) -> FileResponse:
    path = folder / name
    if name not in table or not path.is_file():
        raise HTTPException(status_code=404, detail="not found")
    return FileResponse(path, media_type=table[name], headers={"Cache-Control": "no-cache"})


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return _static(WEB_DIR, "index.html", WEB_FILES)


@router.get("/web/{name}", include_in_schema=False)
async def web_file(name: str) -> FileResponse:
    return _static(WEB_DIR, name, WEB_FILES)


@router.get("/example/{name}", include_in_schema=False)
async def example_file(name: str) -> FileResponse:
    return _static(EXAMPLE_DIR, name, EXAMPLE_FILES)


@router.get("/healthz")
async def healthz(request: Request) -> dict:
    state = request.app.state
    registry, backend = state.registry, state.context.backend
    return {
        "status": "ok" if registry.accepting else "shutting_down",
        "backend": backend.name,
        "sessions": {
            "active": registry.active,
            "max": registry.max_sessions,
            "live": registry.live,
            "live_max": registry.max_live,
        },
        "engine": {
            stage: {
                "batches": s.batches,
                "items": s.items,
                "mean_batch": round(s.mean_batch, 2),
                "last_batch": s.last_batch,
                "queued": s.queued,
                "ms_per_batch": round(1000 * s.busy_s / s.batches, 2) if s.batches else None,
                "launch_ms_per_batch": round(1000 * s.launch_s / s.batches, 2) if s.batches else None,
            }
            for stage, s in backend.stage_stats().items()
        },
    }


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(request.app.state.context.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.websocket("/ws/{client_id}")
async def stream(websocket: WebSocket, client_id: str) -> None:
    state = websocket.app.state
    context = state.context
    await websocket.accept()
    try:
        msg.check_client_id(client_id)  # before anything logs it: ids are safe to log from here on
        session = Session(websocket, client_id, context)
        state.registry.admit(session)
    except DittoError as exc:
        logger.warning("Refused client %r: %s", client_id, exc.message)
        context.metrics.sessions_refused.labels(exc.code.value).inc()
        context.metrics.errors.labels(exc.code.value).inc()
        await websocket.send_text(msg.Error(code=exc.code, message=exc.message).model_dump_json())
        await websocket.close(code=int(exc.close_code))
        return
    logger.info("Client %s connected", client_id)
    context.metrics.sessions_total.inc()
    try:
        await session.run()
    finally:
        state.registry.release(session)
        logger.info("Client %s disconnected", client_id)

"""HTTP and WebSocket routes. The WebSocket handler admits the connection and hands it to a Session."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response, WebSocket

from ditto.errors import DittoError
from ditto.protocol import messages as msg
from ditto.server import LOGGER_NAME
from ditto.server.session import Session

logger = logging.getLogger(LOGGER_NAME)
router = APIRouter()


@router.get("/healthz")
async def healthz(request: Request) -> dict:
    state = request.app.state
    return {
        "status": "ok" if state.registry.accepting else "shutting_down",
        "backend": state.context.backend.name,
        "sessions": {"active": state.registry.active, "max": state.registry.max_sessions},
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
    session = Session(websocket, client_id, context)
    try:
        state.registry.admit(session)
    except DittoError as exc:
        logger.warning("Refused client %s: %s", client_id, exc.message)
        context.metrics.sessions_refused.labels(exc.code.value).inc()
        context.metrics.errors.labels(exc.code.value).inc()
        await websocket.send_text(msg.Error(code=exc.code, message=exc.message).model_dump_json())
        await websocket.close(code=int(exc.close_code))
        return
    logger.info("Client %s connected", client_id)
    context.metrics.sessions_total.inc()
    context.metrics.sessions_active.inc()
    try:
        await session.run()
    finally:
        state.registry.release(session)
        context.metrics.sessions_active.dec()
        logger.info("Client %s disconnected", client_id)

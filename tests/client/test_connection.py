"""The client explains a refusal by the close frame when the server sent no error message."""

from __future__ import annotations

import asyncio

import websockets

from ditto.client.connection import run_session
from ditto.errors import ErrorCode
from tests.conftest import EXAMPLE_AUDIO, EXAMPLE_IMAGE


async def _session_against_a_server_that_closes(code: int, reason: str):
    async def refuse(ws) -> None:
        await ws.close(code, reason)

    async with websockets.serve(refuse, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        return await run_session(f"ws://127.0.0.1:{port}", "c1", str(EXAMPLE_AUDIO), str(EXAMPLE_IMAGE), timeout_s=20)


def test_a_1013_close_without_an_error_message_reads_as_busy() -> None:
    result = asyncio.run(_session_against_a_server_that_closes(1013, "at capacity"))
    assert result.error is not None and result.error.code == ErrorCode.BUSY
    assert "1013" in result.error.message and "at capacity" in result.error.message


def test_other_close_codes_keep_their_number_and_reason() -> None:
    result = asyncio.run(_session_against_a_server_that_closes(1011, "boom"))
    assert result.error is not None and result.error.code == ErrorCode.INTERNAL
    assert "1011" in result.error.message and "boom" in result.error.message

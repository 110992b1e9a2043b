"""JSON control messages, validated by pydantic.

Client -> server: ``start_streaming``, ``stop``.
Server -> client: ``streaming_started``, ``metadata``, ``streaming_completed``, ``error``.
Frames travel as binary messages (see :mod:`ditto.protocol.frames`).

:func:`parse_client_message` turns raw text into a model or raises
:class:`~ditto.errors.ProtocolError` with a stable code; it never touches a socket.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from ditto.errors import ErrorCode, ProtocolError


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- media references -------------------------------------------------------------------------


class UploadedFile(_Message):
    """File bytes sent inside the message (base64), the default when the client has the file."""

    kind: Literal["upload"] = "upload"
    filename: str = Field(max_length=255)
    data: bytes  # base64 on the wire, raw bytes after validation

    @field_validator("data", mode="before")
    @classmethod
    def _decode_base64(cls, value: object) -> bytes:
        if isinstance(value, bytes):
            return value
        if not isinstance(value, str):
            raise ValueError("data must be a base64 string")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"data is not valid base64: {exc}") from None


class ServerPath(_Message):
    """A file on the server, named relative to the server's ``--media_root``."""

    kind: Literal["path"] = "path"
    path: str = Field(min_length=1, max_length=4096)


MediaRef = Annotated[Union[UploadedFile, ServerPath], Field(discriminator="kind")]


def encode_upload(filename: str, payload: bytes) -> dict:
    """The JSON form of an :class:`UploadedFile` (what a client puts in ``start_streaming``)."""
    return {"kind": "upload", "filename": filename, "data": base64.b64encode(payload).decode("ascii")}


# --- client -> server -------------------------------------------------------------------------


class StartStreaming(_Message):
    type: Literal["start_streaming"] = "start_streaming"
    audio: MediaRef
    source: MediaRef
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)


class Stop(_Message):
    type: Literal["stop"] = "stop"


ClientMessage = Annotated[Union[StartStreaming, Stop], Field(discriminator="type")]
_client_adapter: TypeAdapter[ClientMessage] = TypeAdapter(ClientMessage)
CLIENT_MESSAGE_TYPES = ("start_streaming", "stop")


def parse_client_message(text: str | bytes) -> StartStreaming | Stop:
    """Validate one client text message.

    Raises:
        ProtocolError: ``bad_message`` for malformed JSON or fields,
            ``unknown_message`` for a ``type`` this server does not know.
    """
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"message is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ProtocolError("message must be a JSON object")
    kind = raw.get("type")
    if kind not in CLIENT_MESSAGE_TYPES:
        raise ProtocolError(
            f"unknown message type {kind!r}; expected one of {', '.join(CLIENT_MESSAGE_TYPES)}",
            code=ErrorCode.UNKNOWN_MESSAGE,
        )
    try:
        return _client_adapter.validate_python(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ProtocolError(f"invalid {kind} message: {where}: {first['msg']}") from None


# --- server -> client -------------------------------------------------------------------------


class StreamingStarted(_Message):
    type: Literal["streaming_started"] = "streaming_started"
    client_id: str
    backend: str
    audio: str  # display name of the audio (file name or server path)
    source: str


class Metadata(_Message):
    type: Literal["metadata"] = "metadata"
    duration_s: float
    total_frames: int
    fps: int
    width: int
    height: int


class StreamingCompleted(_Message):
    type: Literal["streaming_completed"] = "streaming_completed"
    frames_sent: int
    frames_skipped: int = 0


class Error(_Message):
    type: Literal["error"] = "error"
    code: ErrorCode
    message: str


ServerMessage = Annotated[
    Union[StreamingStarted, Metadata, StreamingCompleted, Error], Field(discriminator="type")
]
_server_adapter: TypeAdapter[ServerMessage] = TypeAdapter(ServerMessage)


def parse_server_message(text: str | bytes) -> StreamingStarted | Metadata | StreamingCompleted | Error:
    """Validate one server text message (used by clients)."""
    try:
        return _server_adapter.validate_json(text)
    except ValidationError as exc:
        raise ProtocolError(f"invalid server message: {exc.errors()[0]['msg']}") from None

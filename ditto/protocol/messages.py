"""JSON control messages, validated by pydantic.

Client -> server: ``start_streaming``, ``stop``; in live sessions (``live: true``) also
``audio_chunk`` (or binary audio chunks), ``end_of_utterance``, ``interrupt`` and ``end_of_audio``.
Server -> client: ``streaming_started``, ``metadata``, ``playback_started``, ``playback_finished``
(live), ``streaming_completed``, ``error``.
Frames (and audio echo) travel as binary messages (see :mod:`ditto.protocol.frames`).

:func:`parse_client_message` turns raw text into a model or raises
:class:`~ditto.errors.ProtocolError` with a stable code; it never touches a socket.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Annotated, Any, Callable, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from ditto.errors import ErrorCode, ProtocolError


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- media references -------------------------------------------------------------------------


def _decode_base64(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        raise ValueError("data must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"data is not valid base64: {exc}") from None


class UploadedFile(_Message):
    """File bytes sent inside the message (base64), the default when the client has the file."""

    kind: Literal["upload"] = "upload"
    filename: str = Field(max_length=255)
    data: bytes  # base64 on the wire, raw bytes after validation

    _decode = field_validator("data", mode="before")(classmethod(lambda cls, v: _decode_base64(v)))


class ServerPath(_Message):
    """A file on the server, named relative to the server's ``--media_root``."""

    kind: Literal["path"] = "path"
    path: str = Field(min_length=1, max_length=4096)


MediaRef = Annotated[Union[UploadedFile, ServerPath], Field(discriminator="kind")]


def encode_upload(filename: str, payload: bytes) -> dict:
    """The JSON form of an :class:`UploadedFile` (what a client puts in ``start_streaming``)."""
    return {"kind": "upload", "filename": filename, "data": base64.b64encode(payload).decode("ascii")}


# --- client -> server -------------------------------------------------------------------------


MIN_LIVE_SAMPLE_RATE_HZ = 8000
MAX_LIVE_SAMPLE_RATE_HZ = 48000


class AudioFormat(_Message):
    """The PCM format of a live session's audio chunks (interleaved channels, little-endian)."""

    sample_rate_hz: int = Field(ge=MIN_LIVE_SAMPLE_RATE_HZ, le=MAX_LIVE_SAMPLE_RATE_HZ)
    channels: int = Field(default=1, ge=1, le=8)
    sample_type: Literal["int16", "float32"] = "int16"

    @property
    def bytes_per_frame(self) -> int:
        """Bytes of one sample of every channel (a chunk's size must be a multiple of this)."""
        return self.channels * (2 if self.sample_type == "int16" else 4)


class StartStreaming(_Message):
    """File mode: ``audio`` holds the whole recording. Live mode (``live: true``): no ``audio``;
    ``audio_format`` announces the chunks that follow (then ``end_of_audio``)."""

    type: Literal["start_streaming"] = "start_streaming"
    audio: MediaRef | None = None
    source: MediaRef
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    live: bool = False
    audio_format: AudioFormat | None = None
    echo_audio: bool = False  # also send each frame's 16 kHz audio (binary kind 2) before the frame

    @model_validator(mode="after")
    def _audio_matches_mode(self) -> "StartStreaming":
        if self.live:
            if self.audio is not None:
                raise ValueError("a live session sends its audio in audio_chunk messages, not in start_streaming")
            if self.audio_format is None:
                raise ValueError("live: true needs audio_format (sample_rate_hz, channels, sample_type)")
        else:
            if self.audio is None:
                raise ValueError("audio is required (or live: true with audio_format)")
            if self.audio_format is not None:
                raise ValueError("audio_format is only for live sessions (live: true)")
        return self


class AudioChunk(_Message):
    """Live audio as JSON: ``data`` is base64 of PCM bytes in the announced format."""

    type: Literal["audio_chunk"] = "audio_chunk"
    data: bytes
    seq: int | None = Field(default=None, ge=0)

    _decode = field_validator("data", mode="before")(classmethod(lambda cls, v: _decode_base64(v)))


class EndOfAudio(_Message):
    """No more live audio: the server renders the remaining frames and completes."""

    type: Literal["end_of_audio"] = "end_of_audio"


class EndOfUtterance(_Message):
    """Live: the current utterance's audio is complete. Its tail is rendered now (the model's
    look-ahead padded with silence) and the session stays open for the next utterance."""

    type: Literal["end_of_utterance"] = "end_of_utterance"


class Interrupt(_Message):
    """Live (barge-in): drop the queued audio and every frame not yet sent; the face returns to
    idle and the session stays open for the next utterance."""

    type: Literal["interrupt"] = "interrupt"


class Stop(_Message):
    type: Literal["stop"] = "stop"


ClientMessage = Annotated[
    Union[StartStreaming, AudioChunk, EndOfUtterance, Interrupt, EndOfAudio, Stop], Field(discriminator="type")
]
_client_adapter: TypeAdapter[ClientMessage] = TypeAdapter(ClientMessage)
CLIENT_MESSAGE_TYPES = ("start_streaming", "audio_chunk", "end_of_utterance", "interrupt", "end_of_audio", "stop")


def encode_audio_chunk(pcm: bytes, seq: int | None = None) -> dict:
    """The JSON form of an :class:`AudioChunk`."""
    out: dict[str, Any] = {"type": "audio_chunk", "data": base64.b64encode(pcm).decode("ascii")}
    if seq is not None:
        out["seq"] = seq
    return out


CLIENT_ID_PATTERN = re.compile(r"[A-Za-z0-9._~-]{1,64}")
"""A client id (the ``/ws/{client_id}`` path segment): 1-64 of URL-safe letters, digits and ``._~-``.
Ids are logged and keyed on, so nothing else (no control characters, separators or spaces) gets in."""


def check_client_id(client_id: str) -> None:
    """Refuse an id outside :data:`CLIENT_ID_PATTERN`; call it before the id is logged or used.

    Raises:
        ProtocolError: ``bad_client_id``.
    """
    if CLIENT_ID_PATTERN.fullmatch(client_id) is None:
        raise ProtocolError("client id must be 1-64 characters of A-Z a-z 0-9 . _ ~ -", code=ErrorCode.BAD_CLIENT_ID)


MAX_JSON_DEPTH = 32
"""Most levels of nested objects/arrays a client message may have (a valid one has 2)."""
MAX_NUMBER_CHARS = 100
"""Longest number literal a client message may have (Python's ``int()`` refuses over 4300 digits)."""

_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def _check_nesting(text: str) -> None:
    """Refuse JSON nested deeper than :data:`MAX_JSON_DEPTH` before ``json.loads`` recurses into it.

    Brackets inside strings do not count. The scan is linear in the message size (bounded by the
    server's message limit); a message with few brackets, such as a base64 upload, skips it.
    """
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return
    depth = 0
    for bracket in _NOT_BRACKET.sub("", _JSON_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        if depth > MAX_JSON_DEPTH:
            raise ProtocolError(f"message is nested more than {MAX_JSON_DEPTH} levels deep")


def _bounded_number(convert: type[int] | type[float]) -> Callable[[str], int | float]:
    def parse(literal: str) -> int | float:
        if len(literal) > MAX_NUMBER_CHARS:
            raise ProtocolError(f"message has a number of {len(literal)} characters; the limit is {MAX_NUMBER_CHARS}")
        return convert(literal)

    return parse


_parse_int, _parse_float = _bounded_number(int), _bounded_number(float)


def parse_client_message(text: str) -> ClientMessage:
    """Validate one client text message, within limits: at most :data:`MAX_JSON_DEPTH` levels
    of nesting, number literals of at most :data:`MAX_NUMBER_CHARS` characters (the size limit
    is the server's, checked before), and types as declared (pydantic strict mode: ``"7"`` is
    not an int, ``"yes"`` not a bool).

    Raises:
        ProtocolError: ``bad_message`` for malformed JSON or fields, or a limit exceeded,
            ``unknown_message`` for a ``type`` this server does not know.
    """
    _check_nesting(text)
    try:
        raw = json.loads(text, parse_int=_parse_int, parse_float=_parse_float)
    except json.JSONDecodeError as exc:
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
        return _client_adapter.validate_python(raw, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:])  # loc[0] is the union tag
        raise ProtocolError(f"invalid {kind} message: {where + ': ' if where else ''}{first['msg']}") from None


# --- server -> client -------------------------------------------------------------------------


class StreamingStarted(_Message):
    """Sent once the source is ready; a live client may send audio from now on."""

    type: Literal["streaming_started"] = "streaming_started"
    client_id: str
    backend: str
    audio: str  # display name of the audio (file name or server path; "live" in live mode)
    source: str
    live: bool = False
    server_id: str | None = None  # the server (or Ray Serve replica) that serves this session


class Metadata(_Message):
    type: Literal["metadata"] = "metadata"
    duration_s: float | None  # None in live mode (not known yet)
    total_frames: int | None  # None in live mode: streaming_completed tells
    fps: int
    width: int
    height: int


class StreamingCompleted(_Message):
    type: Literal["streaming_completed"] = "streaming_completed"
    frames_sent: int
    frames_skipped: int = 0  # live mode: video frames not sent to a client that fell behind
    idle_frames: int = 0  # live mode: frames rendered while no audio arrived (flag IDLE)


class PlaybackStarted(_Message):
    """Live: the first frame of utterance ``utterance`` (1-based) was sent."""

    type: Literal["playback_started"] = "playback_started"
    utterance: int = Field(ge=1)


class PlaybackFinished(_Message):
    """Live: the last frame of utterance ``utterance`` was sent, or it was interrupted.
    ``position_ms``: how much of the utterance's audio the frames sent covered."""

    type: Literal["playback_finished"] = "playback_finished"
    utterance: int = Field(ge=1)
    position_ms: int = Field(ge=0)
    interrupted: bool = False


class Error(_Message):
    type: Literal["error"] = "error"
    code: ErrorCode
    message: str


ServerMessage = Annotated[
    Union[StreamingStarted, Metadata, PlaybackStarted, PlaybackFinished, StreamingCompleted, Error],
    Field(discriminator="type"),
]
_server_adapter: TypeAdapter[ServerMessage] = TypeAdapter(ServerMessage)


def parse_server_message(text: str | bytes) -> ServerMessage:
    """Validate one server text message (used by clients)."""
    try:
        return _server_adapter.validate_json(text)
    except ValidationError as exc:
        raise ProtocolError(f"invalid server message: {exc.errors()[0]['msg']}") from None

"""Errors with stable codes.

Every failure a client can cause is a :class:`DittoError` subclass. Each carries
an :class:`ErrorCode` (a stable string sent in the protocol's ``error`` message)
and the WebSocket close code the session ends with::

    DittoError
    ├── ProtocolError        bad_message, unknown_message, invalid_state, upload_too_large,
    │                        bad_client_id
    ├── MediaError           file_not_found, path_forbidden, audio_invalid, audio_empty,
    │                        audio_silent, audio_too_long, image_invalid, image_too_large
    ├── SourceError          no_face
    ├── CapacityError        busy, client_id_in_use, shutting_down
    ├── SessionTimeout       timeout
    └── BackendError         backend_failed, out_of_memory

Codes are never reused for a new meaning.
"""

from __future__ import annotations

import enum


class ErrorCode(str, enum.Enum):
    BAD_MESSAGE = "bad_message"
    UNKNOWN_MESSAGE = "unknown_message"
    INVALID_STATE = "invalid_state"
    UPLOAD_TOO_LARGE = "upload_too_large"
    BAD_CLIENT_ID = "bad_client_id"
    FILE_NOT_FOUND = "file_not_found"
    PATH_FORBIDDEN = "path_forbidden"
    AUDIO_INVALID = "audio_invalid"
    AUDIO_EMPTY = "audio_empty"
    AUDIO_SILENT = "audio_silent"
    AUDIO_TOO_LONG = "audio_too_long"
    IMAGE_INVALID = "image_invalid"
    IMAGE_TOO_LARGE = "image_too_large"
    NO_FACE = "no_face"
    BUSY = "busy"
    CLIENT_ID_IN_USE = "client_id_in_use"
    SHUTTING_DOWN = "shutting_down"
    TIMEOUT = "timeout"
    BACKEND_FAILED = "backend_failed"
    OUT_OF_MEMORY = "out_of_memory"
    INTERNAL = "internal"


class CloseCode(enum.IntEnum):
    """WebSocket close codes (RFC 6455 §7.4.1, plus the IANA-registered 1012/1013)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    # 4000-4999 are private: ours.
    BAD_INPUT = 4000
    TIMEOUT = 4008


class DittoError(Exception):
    """Root of every error the project reports to a user."""

    code: ErrorCode = ErrorCode.INTERNAL
    close_code: CloseCode = CloseCode.INTERNAL_ERROR

    def __init__(self, message: str, *, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ProtocolError(DittoError):
    code = ErrorCode.BAD_MESSAGE
    close_code = CloseCode.POLICY_VIOLATION


class MediaError(DittoError):
    code = ErrorCode.AUDIO_INVALID
    close_code = CloseCode.BAD_INPUT


class SourceError(DittoError):
    code = ErrorCode.NO_FACE
    close_code = CloseCode.BAD_INPUT


class CapacityError(DittoError):
    code = ErrorCode.BUSY
    close_code = CloseCode.TRY_AGAIN_LATER


class SessionTimeout(DittoError):
    code = ErrorCode.TIMEOUT
    close_code = CloseCode.TIMEOUT


class BackendError(DittoError):
    code = ErrorCode.BACKEND_FAILED
    close_code = CloseCode.INTERNAL_ERROR


class ConfigError(Exception):
    """A startup problem (settings, checkpoints): reported once, then the process exits non-zero."""

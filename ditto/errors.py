"""Errors with stable codes.

Every failure a client can cause is a :class:`DittoError` subclass. Each carries
an :class:`ErrorCode` (a stable string sent in the protocol's ``error`` message);
:data:`CLOSE_CODES` gives the WebSocket close code the session ends with::

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


CLOSE_CODES: dict[ErrorCode, CloseCode] = {
    ErrorCode.BAD_MESSAGE: CloseCode.POLICY_VIOLATION,
    ErrorCode.UNKNOWN_MESSAGE: CloseCode.POLICY_VIOLATION,
    ErrorCode.INVALID_STATE: CloseCode.POLICY_VIOLATION,
    ErrorCode.UPLOAD_TOO_LARGE: CloseCode.POLICY_VIOLATION,
    ErrorCode.BAD_CLIENT_ID: CloseCode.POLICY_VIOLATION,
    ErrorCode.FILE_NOT_FOUND: CloseCode.BAD_INPUT,
    ErrorCode.PATH_FORBIDDEN: CloseCode.BAD_INPUT,
    ErrorCode.AUDIO_INVALID: CloseCode.BAD_INPUT,
    ErrorCode.AUDIO_EMPTY: CloseCode.BAD_INPUT,
    ErrorCode.AUDIO_SILENT: CloseCode.BAD_INPUT,
    ErrorCode.AUDIO_TOO_LONG: CloseCode.BAD_INPUT,
    ErrorCode.IMAGE_INVALID: CloseCode.BAD_INPUT,
    ErrorCode.IMAGE_TOO_LARGE: CloseCode.BAD_INPUT,
    ErrorCode.NO_FACE: CloseCode.BAD_INPUT,
    ErrorCode.BUSY: CloseCode.TRY_AGAIN_LATER,
    ErrorCode.CLIENT_ID_IN_USE: CloseCode.TRY_AGAIN_LATER,
    ErrorCode.SHUTTING_DOWN: CloseCode.SERVICE_RESTART,
    ErrorCode.TIMEOUT: CloseCode.TIMEOUT,
    ErrorCode.BACKEND_FAILED: CloseCode.INTERNAL_ERROR,
    ErrorCode.OUT_OF_MEMORY: CloseCode.INTERNAL_ERROR,
    ErrorCode.INTERNAL: CloseCode.INTERNAL_ERROR,
}
"""The close code of each error code: the one table (1011 means the server failed, not the client)."""


class DittoError(Exception):
    """Root of every error the project reports to a user."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, *, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    @property
    def close_code(self) -> CloseCode:
        return CLOSE_CODES[self.code]


class ProtocolError(DittoError):
    code = ErrorCode.BAD_MESSAGE


class MediaError(DittoError):
    code = ErrorCode.AUDIO_INVALID


class SourceError(DittoError):
    code = ErrorCode.NO_FACE


class CapacityError(DittoError):
    code = ErrorCode.BUSY


class SessionTimeout(DittoError):
    code = ErrorCode.TIMEOUT


class BackendError(DittoError):
    code = ErrorCode.BACKEND_FAILED

    @classmethod
    def from_fault(cls, exc: BaseException) -> "BackendError":
        """What the client is told of ``exc``, raised inside a backend (torch, onnxruntime, TensorRT,
        the backend's own code): ``out_of_memory`` when the device or host ran out, else ``backend_failed``."""
        if is_out_of_memory(exc):
            return cls(
                "the backend ran out of memory for this session; retry later or with fewer sessions",
                code=ErrorCode.OUT_OF_MEMORY,
            )
        return cls(f"the backend failed: {type(exc).__name__}")


def is_out_of_memory(exc: BaseException) -> bool:
    """torch.OutOfMemoryError (matched by name: this module does not import torch), and the device
    allocation failures onnxruntime and TensorRT report as plain RuntimeErrors that say so."""
    return (
        isinstance(exc, MemoryError)
        or any(c.__name__ == "OutOfMemoryError" for c in type(exc).__mro__)
        or isinstance(exc, RuntimeError)
        and "out of memory" in str(exc).lower()
    )


class ConfigError(Exception):
    """A startup problem (settings, checkpoints): reported once, then the process exits non-zero."""

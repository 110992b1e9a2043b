"""Binary messages: frames (server -> client) and audio chunks (client -> server).

Server -> client, a fixed 36-byte little-endian header, then the payload:

====== ====== ======================================================================
offset type   field
====== ====== ======================================================================
0      2s     magic ``b"DF"``
2      u8     version (2)
3      u8     kind (:class:`FrameKind`: 1 = JPEG video frame, 2 = audio echo)
4      u16    flags (:class:`FrameFlags`)
6      u16    reserved (0)
8      u32    frame index (0-based, per session)
12     u32    pts_ms: presentation time, ms from the start of the audio
16     u32    sample_start: first audio sample (16 kHz) the frame covers
20     u32    sample_count: number of audio samples the frame covers (640 at 25 fps)
24     u32    utterance: live sessions, the 1-based utterance the frame's audio belongs to
              (0: idle, and every frame of a file-mode session)
28     u64    sent_us: the server's wall clock (µs since the Unix epoch) when the message was
              handed to the socket; stamped at send time (:func:`stamp_sent`)
====== ====== ======================================================================

An audio echo (kind 2, sent only when ``start_streaming`` asked for ``echo_audio``) carries
the 16 kHz mono audio of frame ``index`` as ``sample_count`` little-endian int16 samples; it
is sent just before that frame, and also for frames skipped for a slow client, so a player
gets gap-free audio aligned to the frames.

Client -> server (live sessions), an 8-byte little-endian header, then PCM samples in the
format announced by ``start_streaming`` (interleaved channels, little-endian):

====== ====== ======================================================================
offset type   field
====== ====== ======================================================================
0      2s     magic ``b"DA"``
2      u8     version (1)
3      u8     sample type (:class:`SampleType`: 1 = int16, 2 = float32); must match
              the announced format
4      u32    seq: chunk number (0-based, informational; gaps are not detected)
====== ====== ======================================================================
"""

from __future__ import annotations

import dataclasses
import enum
import struct
from typing import TypeVar

from ditto.errors import ProtocolError

MAGIC = b"DF"
VERSION = 2
_HEADER = struct.Struct("<2sBBHHIIIIIQ")
HEADER_SIZE = _HEADER.size  # 36
_SENT = struct.Struct("<Q")
_SENT_OFFSET = HEADER_SIZE - _SENT.size


class FrameKind(enum.IntEnum):
    JPEG = 1  # payload: a baseline JPEG image
    PCM16 = 2  # payload: the frame's audio, 16 kHz mono int16 little-endian (audio echo)


class FrameFlags(enum.IntFlag):
    NONE = 0
    LAST = 1  # the final frame of the stream
    IDLE = 2  # rendered with no speech (live idling)


@dataclasses.dataclass(frozen=True, slots=True)
class FrameHeader:
    index: int
    pts_ms: int
    sample_start: int
    sample_count: int
    flags: FrameFlags = FrameFlags.NONE
    kind: FrameKind = FrameKind.JPEG
    utterance: int = 0  # live: the 1-based utterance; 0 for idle frames and file mode
    sent_us: int = 0  # server wall clock at send (µs since the epoch); 0 until stamped

    def pack(self) -> bytes:
        return _HEADER.pack(
            MAGIC,
            VERSION,
            self.kind,
            self.flags,
            0,
            self.index,
            self.pts_ms,
            self.sample_start,
            self.sample_count,
            self.utterance,
            self.sent_us,
        )

    @classmethod
    def unpack(cls, message: bytes) -> tuple["FrameHeader", memoryview]:
        """Split a binary message into its header and payload.

        Raises:
            ProtocolError: the message is too short or not a frame of this version.
        """
        (kind, flags, _, index, pts_ms, start, count, utterance, sent_us), payload = _split(
            _HEADER, message, magic=MAGIC, version=VERSION, article="a", name="frame"
        )
        header = cls(
            index,
            pts_ms,
            start,
            count,
            FrameFlags(flags),
            _wire_enum(FrameKind, kind, "frame kind"),
            utterance,
            sent_us,
        )
        return header, payload


def pack_frame(header: FrameHeader, payload: bytes) -> bytearray:
    """Header and payload as one buffer; :func:`stamp_sent` fills in the send time in place."""
    return bytearray(header.pack()) + payload


def stamp_sent(message: bytearray, sent_us: int) -> bytearray:
    """Write the send time (µs since the epoch) into a packed frame message, in place."""
    _SENT.pack_into(message, _SENT_OFFSET, sent_us)
    return message


# --- client -> server: audio chunks -----------------------------------------------------------

AUDIO_MAGIC = b"DA"
AUDIO_VERSION = 1
_AUDIO_HEADER = struct.Struct("<2sBBI")
AUDIO_HEADER_SIZE = _AUDIO_HEADER.size  # 8


class SampleType(enum.IntEnum):
    """PCM sample types of live audio; the JSON name is the lower-case member name."""

    INT16 = 1  # signed 16-bit, full scale 32768
    FLOAT32 = 2  # IEEE float, full scale 1.0; NaN and infinities are refused

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self is SampleType.INT16 else 4

    @classmethod
    def from_name(cls, name: str) -> "SampleType":
        return cls[name.upper()]


@dataclasses.dataclass(frozen=True, slots=True)
class AudioChunkHeader:
    sample_type: SampleType
    seq: int = 0

    def pack(self) -> bytes:
        return _AUDIO_HEADER.pack(AUDIO_MAGIC, AUDIO_VERSION, self.sample_type, self.seq)

    @classmethod
    def unpack(cls, message: bytes) -> tuple["AudioChunkHeader", memoryview]:
        """Split a binary audio message into its header and PCM payload.

        Raises:
            ProtocolError: too short, not an audio chunk of this version, or an unknown sample type.
        """
        (sample_type, seq), payload = _split(
            _AUDIO_HEADER, message, magic=AUDIO_MAGIC, version=AUDIO_VERSION, article="an", name="audio chunk"
        )
        return cls(_wire_enum(SampleType, sample_type, "sample type"), seq), payload


def pack_audio_chunk(header: AudioChunkHeader, pcm: bytes) -> bytes:
    return header.pack() + pcm


# --- shared by both directions -------------------------------------------------------------------

_Wire = TypeVar("_Wire", bound=enum.IntEnum)


def _split(
    layout: struct.Struct, message: bytes, *, magic: bytes, version: int, article: str, name: str
) -> tuple[tuple, memoryview]:
    """Check a binary message's length, magic and version (the first two fields of ``layout``).

    Returns:
        The header's other fields, and the payload after the header.
    Raises:
        ProtocolError: too short, or not a ``name`` of this ``version``.
    """
    if len(message) < layout.size:
        raise ProtocolError(f"binary message of {len(message)} bytes is shorter than {article} {name} header")
    found_magic, found_version, *fields = layout.unpack_from(message)
    if found_magic != magic or found_version != version:
        raise ProtocolError(f"not a version-{version} {name} (magic {found_magic!r}, version {found_version})")
    return tuple(fields), memoryview(message)[layout.size :]


def _wire_enum(kind: type[_Wire], value: int, what: str) -> _Wire:
    """``value`` as a member of ``kind``; ProtocolError names ``what`` when it is none."""
    try:
        return kind(value)
    except ValueError:
        raise ProtocolError(f"unknown {what} {value}") from None

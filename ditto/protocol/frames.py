"""Binary frame messages: a fixed 24-byte little-endian header, then the payload.

====== ====== ======================================================================
offset type   field
====== ====== ======================================================================
0      2s     magic ``b"DF"``
2      u8     version (1)
3      u8     kind (1 = JPEG video frame)
4      u16    flags (:class:`FrameFlags`)
6      u16    reserved (0)
8      u32    frame index (0-based, per session)
12     u32    pts_ms: presentation time, ms from the start of the audio
16     u32    sample_start: first audio sample (16 kHz) the frame covers
20     u32    sample_count: number of audio samples the frame covers (640 at 25 fps)
====== ====== ======================================================================
"""

from __future__ import annotations

import dataclasses
import enum
import struct

from ditto.errors import ProtocolError

MAGIC = b"DF"
VERSION = 1
_HEADER = struct.Struct("<2sBBHHIIII")
HEADER_SIZE = _HEADER.size  # 24


class FrameKind(enum.IntEnum):
    JPEG = 1


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

    def pack(self) -> bytes:
        return _HEADER.pack(
            MAGIC, VERSION, self.kind, self.flags, 0,
            self.index, self.pts_ms, self.sample_start, self.sample_count,
        )

    @classmethod
    def unpack(cls, message: bytes) -> tuple["FrameHeader", memoryview]:
        """Split a binary message into its header and payload.

        Raises:
            ProtocolError: the message is too short or not a frame of this version.
        """
        if len(message) < HEADER_SIZE:
            raise ProtocolError(f"binary message of {len(message)} bytes is shorter than a frame header")
        magic, version, kind, flags, _, index, pts_ms, start, count = _HEADER.unpack_from(message)
        if magic != MAGIC or version != VERSION:
            raise ProtocolError(f"not a version-{VERSION} frame (magic {magic!r}, version {version})")
        try:
            frame_kind = FrameKind(kind)
        except ValueError:
            raise ProtocolError(f"unknown frame kind {kind}") from None
        header = cls(index, pts_ms, start, count, FrameFlags(flags), frame_kind)
        return header, memoryview(message)[HEADER_SIZE:]


def pack_frame(header: FrameHeader, payload: bytes) -> bytes:
    return header.pack() + payload

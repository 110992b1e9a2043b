import pytest

from ditto.errors import ProtocolError
from ditto.protocol.frames import HEADER_SIZE, FrameFlags, FrameHeader, pack_frame


def test_header_round_trip():
    header = FrameHeader(index=393, pts_ms=15720, sample_start=251520, sample_count=640,
                         flags=FrameFlags.LAST | FrameFlags.IDLE)
    message = pack_frame(header, b"\xff\xd8jpeg")
    assert len(header.pack()) == HEADER_SIZE == 24
    parsed, payload = FrameHeader.unpack(message)
    assert parsed == header and bytes(payload) == b"\xff\xd8jpeg"


@pytest.mark.parametrize("message", [b"", b"DF\x01", b"XX" + bytes(30), b"DF\x02" + bytes(30), b"DF\x01\x09" + bytes(30)])
def test_bad_headers_are_refused(message):
    with pytest.raises(ProtocolError):
        FrameHeader.unpack(message)

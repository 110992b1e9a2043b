import pytest

from ditto.errors import ProtocolError
from ditto.protocol.frames import HEADER_SIZE, FrameFlags, FrameHeader, pack_frame


def test_header_round_trip():
    header = FrameHeader(
        index=393, pts_ms=15720, sample_start=251520, sample_count=640, flags=FrameFlags.LAST | FrameFlags.IDLE
    )
    message = pack_frame(header, b"\xff\xd8jpeg")
    assert len(header.pack()) == HEADER_SIZE == 36
    parsed, payload = FrameHeader.unpack(message)
    assert parsed == header and bytes(payload) == b"\xff\xd8jpeg"


@pytest.mark.parametrize(
    "message", [b"", b"DF\x01", b"XX" + bytes(30), b"DF\x02" + bytes(30), b"DF\x01\x09" + bytes(30)]
)
def test_bad_headers_are_refused(message):
    with pytest.raises(ProtocolError):
        FrameHeader.unpack(message)


def test_send_time_and_utterance_round_trip():
    from ditto.protocol.frames import stamp_sent

    header = FrameHeader(index=7, pts_ms=280, sample_start=4480, sample_count=640, utterance=3)
    message = stamp_sent(pack_frame(header, b"jpeg"), 1_790_000_000_123_456)
    parsed, payload = FrameHeader.unpack(bytes(message))
    assert parsed.utterance == 3 and parsed.sent_us == 1_790_000_000_123_456 and bytes(payload) == b"jpeg"

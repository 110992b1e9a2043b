import json

import pytest

from ditto.errors import ErrorCode, ProtocolError
from ditto.protocol import messages as msg


def test_start_streaming_with_upload_and_path():
    m = msg.parse_client_message(json.dumps({
        "type": "start_streaming", "audio": msg.encode_upload("a.wav", b"RIFFdata"),
        "source": {"kind": "path", "path": "faces/me.png"}, "seed": 7}))
    assert isinstance(m, msg.StartStreaming)
    assert m.audio.data == b"RIFFdata" and m.audio.filename == "a.wav"
    assert m.source.path == "faces/me.png" and m.seed == 7


@pytest.mark.parametrize("text,code", [
    ("nope", ErrorCode.BAD_MESSAGE),
    ('"string"', ErrorCode.BAD_MESSAGE),
    ('{"type": "jump"}', ErrorCode.UNKNOWN_MESSAGE),
    ('{"no_type": 1}', ErrorCode.UNKNOWN_MESSAGE),
    ('{"type": "stop", "extra": 1}', ErrorCode.BAD_MESSAGE),
    ('{"type": "start_streaming", "audio": {"kind": "ftp", "path": "x"}, "source": {"kind": "path", "path": "y"}}',
     ErrorCode.BAD_MESSAGE),
    ('{"type": "start_streaming", "audio": {"kind": "path", "path": ""}, "source": {"kind": "path", "path": "y"}}',
     ErrorCode.BAD_MESSAGE),
])
def test_invalid_client_messages(text, code):
    with pytest.raises(ProtocolError) as info:
        msg.parse_client_message(text)
    assert info.value.code == code


def test_server_messages_round_trip():
    for m in (msg.StreamingStarted(client_id="c", backend="lite", audio="a.wav", source="s.png"),
              msg.Metadata(duration_s=15.75, total_frames=394, fps=25, width=1432, height=1432),
              msg.StreamingCompleted(frames_sent=394), msg.Error(code=ErrorCode.NO_FACE, message="no face")):
        assert msg.parse_server_message(m.model_dump_json()) == m

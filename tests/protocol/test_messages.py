import json

import pytest

from ditto.errors import ErrorCode, ProtocolError
from ditto.protocol import messages as msg


def test_start_streaming_with_upload_and_path():
    m = msg.parse_client_message(
        json.dumps(
            {
                "type": "start_streaming",
                "audio": msg.encode_upload("a.wav", b"RIFFdata"),
                "source": {"kind": "path", "path": "faces/me.png"},
                "seed": 7,
            }
        )
    )
    assert isinstance(m, msg.StartStreaming)
    assert m.audio.data == b"RIFFdata" and m.audio.filename == "a.wav"
    assert m.source.path == "faces/me.png" and m.seed == 7


@pytest.mark.parametrize(
    "text,code",
    [
        ("nope", ErrorCode.BAD_MESSAGE),
        ('"string"', ErrorCode.BAD_MESSAGE),
        ('{"type": "jump"}', ErrorCode.UNKNOWN_MESSAGE),
        ('{"no_type": 1}', ErrorCode.UNKNOWN_MESSAGE),
        ('{"type": "stop", "extra": 1}', ErrorCode.BAD_MESSAGE),
        (
            '{"type": "start_streaming", "audio": {"kind": "ftp", "path": "x"}, "source": {"kind": "path", "path": "y"}}',
            ErrorCode.BAD_MESSAGE,
        ),
        (
            '{"type": "start_streaming", "audio": {"kind": "path", "path": ""}, "source": {"kind": "path", "path": "y"}}',
            ErrorCode.BAD_MESSAGE,
        ),
    ],
)
def test_invalid_client_messages(text, code):
    with pytest.raises(ProtocolError) as info:
        msg.parse_client_message(text)
    assert info.value.code == code


LIVE = {"live": True, "audio_format": {"sample_rate_hz": 16000}}


def start(**fields) -> str:
    return json.dumps({"type": "start_streaming", "source": {"kind": "path", "path": "a[{.png"}, **fields})


@pytest.mark.parametrize(
    "text",
    [
        start(seed="7", audio={"kind": "path", "path": "a.wav"}),
        start(live="yes", audio_format={"sample_rate_hz": 16000}),
        start(live=1, audio_format={"sample_rate_hz": 16000}),
        start(live=True, audio_format={"sample_rate_hz": "16000"}),
        start(live=True, audio_format={"sample_rate_hz": 16000.0}),
        start(echo_audio="true", **LIVE),
        json.dumps({"type": "audio_chunk", "data": "AAA=", "seq": "1"}),
    ],
)
def test_types_are_strict(text):
    with pytest.raises(ProtocolError) as info:
        msg.parse_client_message(text)
    assert info.value.code == ErrorCode.BAD_MESSAGE


def test_strict_types_accept_the_valid_forms():
    m = msg.parse_client_message(start(seed=7, audio=msg.encode_upload("a.wav", b"RIFF"), echo_audio=True))
    assert m.seed == 7 and m.echo_audio and m.audio.data == b"RIFF" and m.source.path == "a[{.png"
    m = msg.parse_client_message(start(live=True, audio_format={"sample_rate_hz": 16000, "channels": 2}))
    assert m.live and m.audio_format.sample_rate_hz == 16000 and m.audio_format.channels == 2


def nested(depth: int) -> str:
    """A start_streaming message whose ``seed`` is ``depth`` - 1 nested arrays (``depth`` levels in all)."""
    return '{"type": "start_streaming", "seed": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"


@pytest.mark.parametrize(
    "text",
    [
        nested(msg.MAX_JSON_DEPTH + 1),
        nested(10_000),  # json.loads would raise RecursionError
        "[" * 10_000,
        '{"type": "stop", "x": ' + "[[]," * 10_000 + "}",
        start(seed=7).replace("7", "7" * 5000),  # int() would raise ValueError (over 4300 digits)
        start(seed=7).replace("7", "7" * (msg.MAX_NUMBER_CHARS + 1)),
        '{"type": "stop", "x": 1.' + "5" * msg.MAX_NUMBER_CHARS + "}",
    ],
)
def test_messages_over_the_parse_limits_are_bad_messages(text):
    with pytest.raises(ProtocolError) as info:
        msg.parse_client_message(text)
    assert info.value.code == ErrorCode.BAD_MESSAGE


def test_messages_at_the_parse_limits_parse_to_their_fields():
    # at the depth limit the message parses and fails on the field's type, not on nesting
    with pytest.raises(ProtocolError, match="invalid start_streaming message"):
        msg.parse_client_message(nested(msg.MAX_JSON_DEPTH))
    # brackets inside strings are not nesting
    m = msg.parse_client_message(start(audio={"kind": "path", "path": "[{" * 100}, seed=7))
    assert m.audio.path == "[{" * 100
    # a number of MAX_NUMBER_CHARS digits is read, then checked against the field's range
    with pytest.raises(ProtocolError, match="seed: Input should be less than"):
        msg.parse_client_message(start(seed=10 ** (msg.MAX_NUMBER_CHARS - 1), **LIVE))


def test_server_messages_round_trip():
    for m in (
        msg.StreamingStarted(client_id="c", backend="lite", audio="a.wav", source="s.png"),
        msg.Metadata(duration_s=15.75, total_frames=394, fps=25, width=1432, height=1432),
        msg.StreamingCompleted(frames_sent=394),
        msg.Error(code=ErrorCode.NO_FACE, message="no face"),
    ):
        assert msg.parse_server_message(m.model_dump_json()) == m


def test_every_error_code_has_one_close_code() -> None:
    from ditto.errors import CLOSE_CODES, ErrorCode

    assert set(CLOSE_CODES) == set(ErrorCode)

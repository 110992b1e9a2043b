import json

import pytest

from ditto.errors import ErrorCode, ProtocolError
from ditto.protocol import messages as msg
from ditto.protocol.frames import (
    AUDIO_HEADER_SIZE,
    AudioChunkHeader,
    FrameHeader,
    FrameKind,
    SampleType,
    pack_audio_chunk,
    pack_frame,
)


def test_audio_chunk_header_round_trip():
    message = pack_audio_chunk(AudioChunkHeader(SampleType.FLOAT32, seq=42), b"\x00" * 8)
    assert AUDIO_HEADER_SIZE == 8 and message[:4] == b"DA\x01\x02"
    header, pcm = AudioChunkHeader.unpack(message)
    assert header == AudioChunkHeader(SampleType.FLOAT32, 42) and bytes(pcm) == b"\x00" * 8


@pytest.mark.parametrize(
    "message", [b"", b"DA\x01", b"DF\x01\x01" + bytes(8), b"DA\x02\x01" + bytes(8), b"DA\x01\x03" + bytes(8)]
)
def test_bad_audio_chunk_headers(message):
    with pytest.raises(ProtocolError):
        AudioChunkHeader.unpack(message)


def test_audio_echo_frame_kind():
    header = FrameHeader(3, 120, 1920, 640, kind=FrameKind.PCM16)
    parsed, payload = FrameHeader.unpack(pack_frame(header, bytes(1280)))
    assert parsed.kind == FrameKind.PCM16 and len(payload) == 1280


def test_live_start_and_chunks_parse():
    start = msg.parse_client_message(
        json.dumps(
            {
                "type": "start_streaming",
                "live": True,
                "echo_audio": True,
                "source": {"kind": "path", "path": "a.png"},
                "audio_format": {"sample_rate_hz": 44100, "channels": 2, "sample_type": "float32"},
            }
        )
    )
    assert start.live and start.audio is None and start.audio_format.bytes_per_frame == 8
    chunk = msg.parse_client_message(json.dumps(msg.encode_audio_chunk(b"\x01\x02", seq=5)))
    assert isinstance(chunk, msg.AudioChunk) and chunk.data == b"\x01\x02" and chunk.seq == 5
    assert isinstance(msg.parse_client_message('{"type": "end_of_audio"}'), msg.EndOfAudio)


@pytest.mark.parametrize(
    "start",
    [
        {"live": True},  # no audio_format
        {"live": True, "audio_format": {"sample_rate_hz": 16000}, "audio": {"kind": "path", "path": "a.wav"}},
        {"audio_format": {"sample_rate_hz": 16000}, "audio": {"kind": "path", "path": "a.wav"}},  # format, not live
        {},  # neither audio nor live
        {"live": True, "audio_format": {"sample_rate_hz": 7999}},
        {"live": True, "audio_format": {"sample_rate_hz": 48001}},
        {"live": True, "audio_format": {"sample_rate_hz": 16000, "channels": 0}},
        {"live": True, "audio_format": {"sample_rate_hz": 16000, "sample_type": "int8"}},
    ],
)
def test_invalid_live_starts(start):
    with pytest.raises(ProtocolError) as info:
        msg.parse_client_message(
            json.dumps({"type": "start_streaming", "source": {"kind": "path", "path": "a.png"}, **start})
        )
    assert info.value.code == ErrorCode.BAD_MESSAGE


def test_live_server_messages_round_trip():
    for m in (
        msg.Metadata(duration_s=None, total_frames=None, fps=25, width=64, height=64),
        msg.StreamingStarted(client_id="c", backend="lite", audio="live", source="s.png", live=True),
        msg.StreamingCompleted(frames_sent=90, frames_skipped=4, idle_frames=12),
    ):
        assert msg.parse_server_message(m.model_dump_json()) == m

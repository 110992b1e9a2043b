"""Conversations (many utterances in one live session, barge-in) through a real uvicorn server and a
real websockets client: frames numbered by utterance, playback events in order with the frames,
interrupt, bad input. Tests wait on messages, never on sleeps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ditto.errors import ErrorCode
from ditto.protocol import messages as msg
from ditto.protocol.frames import FrameFlags, FrameHeader
from tests.conftest import EXAMPLE_IMAGE, FakeBackend, run
from tests.server.helpers import (
    END_OF_AUDIO,
    END_OF_UTTERANCE,
    INTERRUPT,
    LiveClient,
    binary_chunk,
    converse,
    json_chunk,
    live_converse,
    live_start,
    pcm_bytes,
    png_bytes,
    portrait,
    speech_like,
    split_chunks,
    start_message,
    wav_bytes,
)
from tests.server.test_session import assert_still_serving

RATE = 24000  # 24 kHz PCM16: what speech APIs send


def utterance_chunks(seconds: float, seed: int, transport: str) -> list:
    samples = speech_like(seconds, rate=RATE, seed=seed)
    parts = [pcm_bytes(p, "int16") for p in split_chunks(samples, 2400)]  # 100 ms chunks
    return [binary_chunk(p, "int16", i) if transport == "binary" else json_chunk(p, i) for i, p in enumerate(parts)]


def frames_of(client: LiveClient, utterance: int) -> list[FrameHeader]:
    return [h for h in client.frames if h.utterance == utterance]


def assert_one_timeline(client: LiveClient) -> None:
    indices = [h.index for h in client.frames]
    assert indices == sorted(set(indices)), indices
    assert all(h.pts_ms == h.index * 40 and h.sample_start == h.index * 640 for h in client.frames)
    assert all(bool(h.flags & FrameFlags.IDLE) == (h.utterance == 0) for h in client.frames)


def test_two_utterances_with_end_of_utterance(start_server):
    backend = FakeBackend()
    server = start_server(backend=backend)

    async def scenario():
        client = await LiveClient.start(f"{server.ws}/ws/talk", live_start(RATE))
        await client.send(*utterance_chunks(0.5, 1, "binary"), END_OF_UTTERANCE)
        await client.wait_for(lambda c: c.finished(1))
        await client.send(*utterance_chunks(0.3, 2, "json"), END_OF_UTTERANCE)
        await client.wait_for(lambda c: c.finished(2))
        await client.send(END_OF_AUDIO)
        await client.close()
        return client

    client = run(scenario())
    assert client.close_code == 1000 and not client.of_type(msg.Error), client.controls
    assert_one_timeline(client)
    first, second = frames_of(client, 1), frames_of(client, 2)
    assert [h.index for h in first] == list(range(13))  # ceil(0.5 * 25), the padded tail flushed at once
    assert len(second) == math.ceil(0.3 * 25)
    assert [h.index for h in second] == list(range(second[0].index, second[0].index + len(second)))
    assert all(h.utterance == 0 for h in client.frames if 13 <= h.index < second[0].index)  # idle between
    # playback_started right after each utterance's first frame, playback_finished right after its last
    events = [e for _, e in client.events]
    for number, frames, duration_ms in ((1, first, 500), (2, second, 300)):
        started = next(m for m in client.of_type(msg.PlaybackStarted) if m.utterance == number)
        finished = client.finished(number)
        assert finished == msg.PlaybackFinished(utterance=number, position_ms=duration_ms, interrupted=False)
        assert events[client.index_of(started) - 1] is frames[0]
        assert events[client.index_of(finished) - 1] is frames[-1]
    assert [m.type for m in client.controls] == [
        "streaming_started",
        "metadata",
        "playback_started",
        "playback_finished",
        "playback_started",
        "playback_finished",
        "streaming_completed",
    ]
    done = client.of_type(msg.StreamingCompleted)[0]
    assert done.frames_sent == len(client.frames) and done.idle_frames == len(frames_of(client, 0))
    assert [c[0] for c in backend.streams[0].calls if c[0] != "idle"] == ["flush", "flush"]


def test_interrupt_mid_utterance(start_server):
    backend = FakeBackend(delay_s=0.005)  # renders ahead of real time: frames wait in the writer
    server = start_server(backend=backend, frame_queue_size=4)

    async def scenario():
        client = await LiveClient.start(f"{server.ws}/ws/barge", live_start(RATE))
        await client.send(*utterance_chunks(4.0, 1, "binary"))  # 4 s at once
        await client.wait_for(lambda c: len(frames_of(c, 1)) >= 10)
        await client.send(INTERRUPT)
        finished = await client.wait_for(lambda c: c.finished(1))
        await client.wait_for(lambda c: len(c.frames) > c.index_of(finished) + 5)  # idling
        await client.send(*utterance_chunks(0.2, 2, "json"), END_OF_UTTERANCE)
        await client.wait_for(lambda c: c.finished(2))
        await client.send(END_OF_AUDIO)
        await client.close()
        return client

    client = run(scenario())
    assert client.close_code == 1000 and not client.of_type(msg.Error), client.controls
    assert_one_timeline(client)
    finished = client.finished(1)
    cut = client.index_of(finished)
    before = [e for _, e in client.events[:cut] if isinstance(e, FrameHeader)]
    after = [(t, e) for t, e in client.events[cut + 1 :] if isinstance(e, FrameHeader)]
    sent_of_first = [h for h in before if h.utterance == 1]
    assert finished.interrupted and finished.position_ms == len(sent_of_first) * 40
    assert len(sent_of_first) < 100  # far from the 4 s sent
    assert not any(h.utterance == 1 for _, h in after)  # nothing of the interrupted utterance after
    # idle frames right away (no gap over 100 ms), then at real-time pace (no burst)
    last_before = max(t for t, e in client.events[:cut] if isinstance(e, FrameHeader))
    idle = [(t, h) for t, h in after if h.utterance == 0]
    assert idle and idle[0][0] - last_before < 0.1
    assert idle[5][0] - idle[0][0] > 5 * 0.04 * 0.6, [t for t, _ in idle[:6]]
    interrupt_calls = [c for c in backend.streams[0].calls if c[0] == "interrupt"]
    assert len(interrupt_calls) == 1 and after[0][1].index >= interrupt_calls[0][1] > before[-1].index
    second = frames_of(client, 2)
    assert len(second) == 5 and client.finished(2) == msg.PlaybackFinished(utterance=2, position_ms=200)
    started = [m.utterance for m in client.of_type(msg.PlaybackStarted)]
    assert started == [1, 2]
    done = client.of_type(msg.StreamingCompleted)[0]
    assert done.frames_sent == len(client.frames)


def test_interrupt_and_end_of_utterance_before_audio_and_twice_are_no_ops(start_server):
    backend = FakeBackend()
    server = start_server(backend=backend)
    wire = [
        INTERRUPT,
        END_OF_UTTERANCE,
        *utterance_chunks(0.4, 1, "binary"),
        END_OF_UTTERANCE,
        END_OF_UTTERANCE,
        END_OF_AUDIO,
    ]
    t = run(live_converse(f"{server.ws}/ws/noop", live_start(RATE), wire))
    assert t.error is None and t.close_code == 1000, t.controls
    assert [h.utterance for h, _ in t.frames] == [1] * 10
    assert t.of_type(msg.PlaybackFinished) == [msg.PlaybackFinished(utterance=1, position_ms=400)]
    assert backend.streams[0].calls == [("flush",)]  # neither no-op reached the stream

    async def interrupt_twice():
        client = await LiveClient.start(f"{server.ws}/ws/twice", live_start(RATE))
        await client.send(*utterance_chunks(2.0, 1, "binary"))
        await client.wait_for(lambda c: frames_of(c, 1))
        await client.send(INTERRUPT, INTERRUPT)
        await client.wait_for(lambda c: c.finished(1))
        await client.send(END_OF_AUDIO)
        await client.close()
        return client

    client = run(interrupt_twice())
    assert client.close_code == 1000 and len(client.of_type(msg.PlaybackFinished)) == 1
    assert len([c for c in backend.streams[1].calls if c[0] == "interrupt"]) == 1  # the second: a no-op


CONVERSATION_BAD_INPUTS = {
    # name: (messages after start_streaming, code)
    "odd_byte_count_base64": ([json_chunk(b"\x00\x01\x02")], ErrorCode.AUDIO_INVALID),
    "odd_byte_count_binary": ([binary_chunk(b"\x00" * 4801)], ErrorCode.AUDIO_INVALID),
    "interrupt_after_end_of_audio": ([binary_chunk(bytes(48000)), END_OF_AUDIO, INTERRUPT], ErrorCode.INVALID_STATE),
    "end_of_utterance_after_end_of_audio": (
        [binary_chunk(bytes(48000)), END_OF_AUDIO, END_OF_UTTERANCE],
        ErrorCode.INVALID_STATE,
    ),
    "chunk_after_end_of_audio": (
        [binary_chunk(bytes(48000)), END_OF_AUDIO, json_chunk(bytes(480))],
        ErrorCode.INVALID_STATE,
    ),
}


@pytest.mark.parametrize("name", sorted(CONVERSATION_BAD_INPUTS))
def test_conversation_bad_input_gets_error_and_server_keeps_serving(start_server, name):
    server = start_server(backend=FakeBackend(delay_s=0.02))  # still rendering when the late message comes
    after, code = CONVERSATION_BAD_INPUTS[name]
    t = run(live_converse(f"{server.ws}/ws/bad", live_start(RATE), after, wait_started=False))
    assert t.error is not None and t.error.code == code and t.close_code not in (None, 1000), t.controls
    assert_still_serving(server)


@pytest.mark.parametrize("message", [INTERRUPT, END_OF_UTTERANCE])
def test_conversation_messages_before_start_or_in_file_mode_are_refused(start_server, message):
    server = start_server(backend=FakeBackend(delay_s=0.02))
    early = run(converse(f"{server.ws}/ws/early", message))
    assert early.error is not None and early.error.code == ErrorCode.INVALID_STATE and not early.frames
    file_mode = run(
        converse(f"{server.ws}/ws/file", start_message(wav_bytes(speech_like(2.0)), png_bytes(portrait())), message)
    )
    assert file_mode.error is not None and file_mode.error.code == ErrorCode.INVALID_STATE
    assert "file-mode" in file_mode.error.message
    assert_still_serving(server)


def _lite_has_conversations() -> bool:
    from ditto.backends.lite.backend import LiteStream

    return all(callable(getattr(LiteStream, name, None)) for name in ("idle", "flush", "interrupt"))


@pytest.mark.skipif(
    not _lite_has_conversations(),
    reason="the lite backend's flush()/interrupt() (issue #9, backend side) have not landed yet",
)
def test_conversation_with_the_lite_backend(start_server):
    from ditto.backends.lite import LiteBackend

    server = start_server(backend=LiteBackend(), max_size=256)

    async def scenario():
        client = await LiveClient.start(f"{server.ws}/ws/lite", live_start(RATE, image=EXAMPLE_IMAGE.read_bytes()))
        await client.send(*utterance_chunks(0.6, 1, "binary"), END_OF_UTTERANCE)
        await client.wait_for(lambda c: c.finished(1))
        await client.send(*utterance_chunks(3.0, 2, "binary"))
        await client.wait_for(lambda c: len(frames_of(c, 2)) >= 5)
        await client.send(INTERRUPT)
        finished = await client.wait_for(lambda c: c.finished(2))
        await client.wait_for(lambda c: len(c.frames) > c.index_of(finished) + 3)
        await client.send(END_OF_AUDIO)
        await client.close()
        return client

    client = run(scenario())
    assert client.close_code == 1000 and not client.of_type(msg.Error), client.controls
    assert_one_timeline(client)
    assert [h.index for h in frames_of(client, 1)] == list(range(15))
    assert client.finished(1) == msg.PlaybackFinished(utterance=1, position_ms=600)
    finished = client.finished(2)
    assert finished.interrupted and 0 < finished.position_ms < 3000
    cut = client.index_of(finished)
    assert not any(isinstance(e, FrameHeader) and e.utterance == 2 for _, e in client.events[cut:])
    assert any(isinstance(e, FrameHeader) and e.utterance == 0 for _, e in client.events[cut:])
    assert client.of_type(msg.StreamingCompleted)[0].frames_sent == len(client.frames)
    assert np.all(np.diff([h.index for h in client.frames]) > 0)

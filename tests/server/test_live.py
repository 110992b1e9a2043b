"""Live sessions (``live: true``) through a real uvicorn server and a real websockets client:
chunked audio in any size, format and rate, frames out as soon as rendered, audio echo,
idling, skipping for slow clients, bad input and the timeout."""

from __future__ import annotations

import asyncio
import json
import math

import numpy as np
import pytest

from ditto.errors import ErrorCode
from ditto.media.audio import to_mono_16k
from ditto.protocol import messages as msg
from ditto.protocol.frames import FrameFlags
from tests.conftest import EXAMPLE_AUDIO, EXAMPLE_IMAGE, FakeBackend, FaultyBackend, run
from tests.server.helpers import (
    END_OF_AUDIO,
    binary_chunk,
    json_chunk,
    live_converse,
    live_start,
    metric_values,
    pcm_bytes,
    png_bytes,
    portrait,
    speech_like,
    split_chunks,
)
from tests.server.test_session import BACKEND_FAULTS, assert_still_serving, healthz


def assert_frames_in_order(frames, count: int) -> None:
    headers = [h for h, _ in frames]
    assert [h.index for h in headers] == list(range(count))
    assert [h.pts_ms for h in headers] == [i * 640 * 1000 // 16000 for i in range(count)]
    assert [h.sample_start for h in headers] == [i * 640 for i in range(count)]
    assert all(h.sample_count == 640 for h in headers)


@pytest.mark.parametrize(
    "rate,channels,sample_type,transport",
    [
        (8000, 1, "int16", "binary"),
        (11025, 2, "float32", "json"),
        (16000, 1, "float32", "json"),
        (22050, 2, "int16", "binary"),
        (44100, 1, "float32", "binary"),
        (48000, 1, "int16", "json"),
    ],
)
def test_live_chunks_any_size_format_and_rate(start_server, rate, channels, sample_type, transport):
    server = start_server()
    duration_s = 1.37  # -> ceil(1.37 * 25) = 35 frames, whatever the rate
    mono = speech_like(duration_s, rate=rate, seed=rate)
    samples = np.stack([mono, 0.5 * mono], axis=1) if channels == 2 else mono
    rng = np.random.default_rng(rate)
    sizes = [int(s) for s in rng.integers(1, rate // 5, 40)]  # odd sizes too, never frame-aligned
    chunks = [pcm_bytes(part, sample_type) for part in split_chunks(samples, sizes)]
    wire = [
        binary_chunk(c, sample_type, i) if transport == "binary" else json_chunk(c, i) for i, c in enumerate(chunks)
    ]
    start = live_start(rate, channels=channels, sample_type=sample_type, echo_audio=True)
    t = run(live_converse(f"{server.ws}/ws/live", start, wire + [END_OF_AUDIO]))

    total = math.ceil(duration_s * 25)
    assert t.error is None and t.close_code == 1000, t.controls
    started, meta = t.of_type(msg.StreamingStarted)[0], t.of_type(msg.Metadata)[0]
    assert started.live and meta.total_frames is None and meta.fps == 25
    assert_frames_in_order(t.frames, total)
    assert t.frames[-1][0].flags & FrameFlags.LAST and not any(h.flags & FrameFlags.IDLE for h, _ in t.frames)
    assert t.completed.frames_sent == total and t.completed.frames_skipped == 0 and t.completed.idle_frames == 0

    # the echo: one message per frame, same index/pts/range, holding the resampled audio of that frame
    assert [(h.index, h.pts_ms, h.sample_start, h.sample_count) for h, _ in t.echoes] == [
        (h.index, h.pts_ms, h.sample_start, h.sample_count) for h, _ in t.frames
    ]
    echoed = np.concatenate([np.frombuffer(p, "<i2") for _, p in t.echoes]).astype(np.float32) / 32767
    sent = samples.astype(np.float32)
    if sample_type == "int16":
        sent = np.frombuffer(b"".join(chunks), "<i2").astype(np.float32).reshape(sent.shape) / 32768
    expected = to_mono_16k(sent, rate)
    assert len(expected) == math.ceil(len(mono) * 16000 / rate)
    expected = np.pad(expected, (0, total * 640 - len(expected)))
    assert np.abs(echoed - expected).max() < 3e-4


def test_frames_flow_before_end_of_audio_with_the_lite_backend(start_server):
    from ditto.backends.lite import LiteBackend

    if not EXAMPLE_IMAGE.is_file() or not EXAMPLE_AUDIO.is_file():
        pytest.skip("example files needed")
    import soundfile

    audio, rate = soundfile.read(EXAMPLE_AUDIO, dtype="int16")
    audio = audio[: int(rate * 1.5)]  # 1.5 s -> 38 frames
    server = start_server(backend=LiteBackend(), max_size=256)
    chunk = rate // 10  # 100 ms, sent at real time
    wire = [binary_chunk(audio[i : i + chunk].tobytes(), "int16", k) for k, i in enumerate(range(0, len(audio), chunk))]
    t = run(
        live_converse(
            f"{server.ws}/ws/lite",
            live_start(rate, image=EXAMPLE_IMAGE.read_bytes()),
            wire + [END_OF_AUDIO],
            pace_s=0.1,
        )
    )  # real-time pacing: the scenario, not synchronisation
    assert t.error is None and t.completed.frames_sent == 38
    assert_frames_in_order(t.frames, 38)
    last_chunk_sent = t.chunk_sent_at[len(wire) - 1]
    assert t.frame_arrivals[0] < last_chunk_sent - 0.5  # frames came while audio was still being sent
    assert t.frame_arrivals[0] - t.chunk_sent_at[0] < 1.0  # first frame within 1 s of the first chunk
    # frame i arrives soon after the audio of frames i..i+1 (look-ahead 1) was sent, not at the end
    assert sum(a < last_chunk_sent for a in t.frame_arrivals) >= 25


def test_audio_sent_ahead_of_real_time_is_not_shed_with_the_lite_backend(start_server):
    """8 s of speech sent at once, a 300 ms lag bound: the frames are due on the media clock as their
    audio would have played (frame i at (i + 1) / 25 s), and the server renders them faster than
    that, so none is shed. Counting the lag from the audio's arrival instead sheds every frame
    rendered more than 300 ms after the burst (rendering 200 frames takes longer than that)."""
    from ditto.backends.lite import LiteBackend

    if not EXAMPLE_IMAGE.is_file():
        pytest.skip("example image needed")
    server = start_server(backend=LiteBackend(), max_size=256, live_max_lag_ms=300)
    audio = speech_like(8.0)
    wire = [binary_chunk(pcm_bytes(part, "int16"), "int16", k) for k, part in enumerate(np.array_split(audio, 40))]
    t = run(
        live_converse(
            f"{server.ws}/ws/burst", live_start(16000, image=EXAMPLE_IMAGE.read_bytes()), wire + [END_OF_AUDIO]
        )
    )
    assert t.error is None, t.controls
    assert t.completed.frames_skipped == 0 and t.completed.frames_sent == 200
    assert_frames_in_order(t.frames, 200)


@pytest.mark.parametrize("backend_name", ["fake", "lite"])
def test_face_idles_when_audio_pauses(start_server, backend_name):
    if backend_name == "lite":
        from ditto.backends.lite import LiteBackend

        if not EXAMPLE_IMAGE.is_file():
            pytest.skip("example image needed")
        server, image = start_server(backend=LiteBackend(), max_size=256), EXAMPLE_IMAGE.read_bytes()
    else:
        server, image = start_server(), None
    speech = speech_like(0.41)  # 10 frames + 160 samples: the idle silence first completes frame 10
    more = speech_like(0.4, seed=1)
    wire = [binary_chunk(pcm_bytes(speech, "int16")), binary_chunk(pcm_bytes(more, "int16")), END_OF_AUDIO]
    t = run(
        live_converse(f"{server.ws}/ws/idle", live_start(16000, image=image, echo_audio=True), wire, pauses={1: 1.2})
    )  # a 1.2 s audio gap: the scenario, not synchronisation
    assert t.error is None, t.controls
    headers = [h for h, _ in t.frames]
    idle = [h.index for h in headers if h.flags & FrameFlags.IDLE]
    # audio ran out at 0.41 s of media; idling starts 0.2 s after that and lasts until audio resumes at 1.2 s
    assert 8 <= len(idle) <= 20, idle
    assert idle == list(range(11, 11 + len(idle)))  # one contiguous stretch, after the padded frame 10
    total = 11 + len(idle) + 10
    assert_frames_in_order(t.frames, total)
    assert t.completed.frames_sent == total and t.completed.idle_frames == len(idle)
    echo = {h.index: np.frombuffer(p, "<i2") for h, p in t.echoes}
    assert all(not echo[i].any() for i in idle) and echo[idle[-1] + 1].any()  # silence, then speech again
    # idle frames come at about 25 fps in real time (not in a burst, not frozen)
    arrivals = [t.frame_arrivals[i] for i in idle]
    assert 0.025 < (arrivals[-1] - arrivals[0]) / (len(idle) - 1) < 0.06


def test_client_faster_than_real_time_gets_every_frame_with_a_small_inbox(start_server):
    server = start_server(backend=FakeBackend(delay_s=0.002), live_inbox_chunks=2)
    audio = speech_like(3.0)
    wire = [binary_chunk(pcm_bytes(c, "int16"), "int16", i) for i, c in enumerate(split_chunks(audio, 160))]
    t = run(live_converse(f"{server.ws}/ws/fast", live_start(16000), wire + [END_OF_AUDIO]))
    assert t.error is None and t.completed.frames_sent == 75 and t.completed.idle_frames == 0
    assert_frames_in_order(t.frames, 75)


def test_stalled_client_gets_frames_skipped_not_buffered(start_server):
    server = start_server(frame_queue_size=2)
    big = portrait(5, size=512)  # ~400 KB JPEG frames: socket buffers hold only a few
    wire = [binary_chunk(pcm_bytes(speech_like(6.01), "int16")), END_OF_AUDIO]
    t = run(
        live_converse(
            f"{server.ws}/ws/stalled",
            live_start(16000, image=png_bytes(big), echo_audio=True),
            wire,
            wait_started=False,
            read_delay_s=2.5,
            max_queue=1,
        )
    )  # stall: the scenario
    assert t.error is None, t.controls
    done = t.completed
    received = [h.index for h, _ in t.frames]
    # frames due while the client read nothing (2.5 s of media, less what the socket buffers held) were
    # skipped; frames not yet due were not: the pipeline never ran ahead of real time into a buffer
    assert 15 <= done.frames_skipped <= 60 and done.frames_sent == len(received)
    assert done.frames_sent + done.frames_skipped == 151
    assert received == sorted(received) and received[-1] == 150 and t.frames[-1][0].flags & FrameFlags.LAST
    assert set(range(70, 151)) <= set(received)  # once the client reads again, every frame arrives
    assert [h.index for h, _ in t.echoes] == list(range(151))  # the audio echo is never skipped
    assert metric_values(server)["ditto_frames_skipped_total"] == done.frames_skipped


def test_stop_ends_a_live_session(start_server):
    server = start_server()
    wire = [binary_chunk(pcm_bytes(speech_like(0.4), "int16")), json.dumps({"type": "stop"})]
    t = run(live_converse(f"{server.ws}/ws/stop", live_start(16000), wire))
    assert t.error is None and t.completed is not None and t.close_code == 1000
    assert t.completed.frames_sent == len(t.frames) <= 10


def test_live_session_times_out_and_frees_everything(start_server):
    backend = FakeBackend()
    server = start_server(backend=backend, idle_timeout_s=1.0)
    wire = [binary_chunk(pcm_bytes(speech_like(0.2), "int16"))]  # then nothing, no end_of_audio
    t = run(live_converse(f"{server.ws}/ws/quiet", live_start(16000), wire))
    assert t.error is not None and t.error.code == ErrorCode.TIMEOUT and t.close_code == 4008
    assert any(h.flags & FrameFlags.IDLE for h, _ in t.frames)  # it idled while waiting
    assert healthz(server)["sessions"]["active"] == 0 and backend.streams[0].closed
    assert_still_serving(server)


def _chunk_after_end():
    return [
        binary_chunk(pcm_bytes(speech_like(1.0), "int16")),
        END_OF_AUDIO,
        binary_chunk(pcm_bytes(speech_like(0.1), "int16")),
    ]


LIVE_BAD_INPUTS = {
    # name: (start message, messages after it, code, backend render delay)
    "odd_byte_count_int16": (live_start(16000), [binary_chunk(b"\x00\x01\x02")], ErrorCode.AUDIO_INVALID),
    "stereo_int16_half_frame": (live_start(16000, channels=2), [binary_chunk(bytes(6))], ErrorCode.AUDIO_INVALID),
    "float32_not_multiple_of_4": (
        live_start(16000, sample_type="float32"),
        [json_chunk(bytes(10))],
        ErrorCode.AUDIO_INVALID,
    ),
    "float32_nan": (
        live_start(16000, sample_type="float32"),
        [json_chunk(np.array([0.1, np.nan, 0.2], "<f4").tobytes())],
        ErrorCode.AUDIO_INVALID,
    ),
    "float32_inf": (
        live_start(16000, sample_type="float32"),
        [binary_chunk(np.array([np.inf] * 4, "<f4").tobytes(), "float32")],
        ErrorCode.AUDIO_INVALID,
    ),
    "header_type_mismatch": (live_start(16000), [binary_chunk(bytes(8), "float32")], ErrorCode.BAD_MESSAGE),
    "binary_not_an_audio_chunk": (live_start(16000), [b"DF\x01\x01" + bytes(40)], ErrorCode.BAD_MESSAGE),
    "bad_base64_chunk": (live_start(16000), [json.dumps({"type": "audio_chunk", "data": "@@"})], ErrorCode.BAD_MESSAGE),
    "chunk_after_end_of_audio": (live_start(16000), _chunk_after_end(), ErrorCode.INVALID_STATE),
    "end_of_audio_twice": (
        live_start(16000),
        [binary_chunk(pcm_bytes(speech_like(1.0), "int16")), END_OF_AUDIO, END_OF_AUDIO],
        ErrorCode.INVALID_STATE,
    ),
    "second_start": (live_start(16000), [live_start(16000)], ErrorCode.INVALID_STATE),
    "rate_below_8k": (live_start(7999), [], ErrorCode.BAD_MESSAGE),
    "rate_above_48k": (live_start(96000), [], ErrorCode.BAD_MESSAGE),
    "unknown_sample_type": (live_start(16000, sample_type="int24"), [], ErrorCode.BAD_MESSAGE),
    "live_without_format": (
        json.dumps({"type": "start_streaming", "live": True, "source": {"kind": "path", "path": "x.png"}}),
        [],
        ErrorCode.BAD_MESSAGE,
    ),
}
BEFORE_START = {
    "binary_audio_before_start": (binary_chunk(bytes(640)), ErrorCode.BAD_MESSAGE),
    "json_audio_before_start": (json_chunk(bytes(640)), ErrorCode.INVALID_STATE),
    "end_of_audio_before_start": (END_OF_AUDIO, ErrorCode.INVALID_STATE),
}


@pytest.mark.parametrize("name", sorted(LIVE_BAD_INPUTS))
def test_live_bad_input_gets_error_and_server_keeps_serving(start_server, name):
    # a slow backend keeps the session rendering, so a message after end_of_audio is still read
    server = start_server(backend=FakeBackend(delay_s=0.02))
    start, after, code = LIVE_BAD_INPUTS[name]
    t = run(live_converse(f"{server.ws}/ws/bad", start, after, wait_started=False))
    assert t.error is not None and t.error.code == code, (t.controls, t.close_code)
    assert t.error.message and t.close_code not in (None, 1000)
    assert t.completed is None
    assert_still_serving(server)


@pytest.mark.parametrize("name", sorted(BEFORE_START))
def test_audio_before_start_is_refused(start_server, name):
    from tests.server.helpers import converse

    server = start_server()
    message, code = BEFORE_START[name]
    t = run(converse(f"{server.ws}/ws/early", message))
    assert t.error is not None and t.error.code == code and not t.frames
    assert_still_serving(server)


def test_audio_chunk_in_a_file_mode_session_is_refused(start_server):
    from tests.server.helpers import converse, start_message, wav_bytes

    server = start_server(backend=FakeBackend(delay_s=0.02))
    t = run(
        converse(
            f"{server.ws}/ws/file",
            start_message(wav_bytes(speech_like(2.0)), png_bytes(portrait())),
            json_chunk(bytes(640)),
        )
    )
    assert t.error is not None and t.error.code == ErrorCode.INVALID_STATE


def test_live_audio_over_the_length_limit(start_server):
    server = start_server(max_audio_seconds=1.0)
    wire = [binary_chunk(pcm_bytes(c, "int16")) for c in split_chunks(speech_like(1.5), 4000)]
    t = run(live_converse(f"{server.ws}/ws/long", live_start(16000), wire + [END_OF_AUDIO]))
    assert t.error is not None and t.error.code == ErrorCode.AUDIO_TOO_LONG
    assert_still_serving(server)


def test_file_mode_echo_audio(start_server):
    from tests.server.helpers import converse, start_message, wav_bytes

    server = start_server()
    audio = speech_like(0.5)
    t = run(converse(f"{server.ws}/ws/echo", start_message(wav_bytes(audio), png_bytes(portrait()), echo_audio=True)))
    echoes = [(h, p) for h, p in t.frames if h.kind == 2]
    video = [h for h, _ in t.frames if h.kind == 1]
    assert [h.index for h, _ in echoes] == [h.index for h in video] == list(range(13))
    echoed = np.concatenate([np.frombuffer(p, "<i2") for _, p in echoes]).astype(np.float32) / 32767
    assert np.abs(echoed[: len(audio)] - audio).max() < 2e-4 and not echoed[len(audio) :].any()


def test_live_sessions_past_the_backends_capacity_are_busy_and_the_others_stay_live(start_server):
    """live_capacity 1: a second live session is refused (busy, 1013) while the first streams on;
    a file-mode session still gets the capacity that is left; /healthz and /metrics report it."""
    import websockets

    from tests.server.helpers import converse
    from tests.server.test_session import good_start

    server = start_server(backend=FakeBackend(live_capacity=1), max_sessions=4)

    async def scenario():
        async with websockets.connect(f"{server.ws}/ws/first", max_size=None) as first:
            await first.send(live_start(16000))
            while not isinstance(msg.parse_server_message(await first.recv()), msg.StreamingStarted):
                pass
            live_now = healthz(server)["sessions"]
            refused = await converse(f"{server.ws}/ws/second", live_start(16000))
            file_mode = await converse(f"{server.ws}/ws/file", good_start(0.4))
            await first.send(binary_chunk(pcm_bytes(speech_like(0.4), "int16")))
            await first.send(END_OF_AUDIO)
            frames, completed = 0, None
            async for reply in first:
                if isinstance(reply, bytes):
                    frames += 1
                elif isinstance(m := msg.parse_server_message(reply), msg.StreamingCompleted):
                    completed = m
            return live_now, refused, file_mode, frames, completed

    live_now, refused, file_mode, frames, completed = run(scenario())
    assert live_now == {"active": 1, "max": 4, "live": 1, "live_max": 1}
    assert refused.error is not None and refused.error.code == ErrorCode.BUSY and refused.close_code == 1013
    assert file_mode.error is None and len(file_mode.frames) == 10
    assert completed is not None and completed.frames_sent == 10 and frames == 10
    values = metric_values(server)
    assert values["ditto_live_sessions_capacity"] == 1 and values["ditto_live_sessions_active"] == 0
    assert healthz(server)["sessions"]["live"] == 0
    assert_still_serving(server)


def test_max_live_sessions_setting_overrides_the_backend(start_server):
    server = start_server(backend=FakeBackend(live_capacity=3), max_sessions=4, max_live_sessions=2)
    assert healthz(server)["sessions"]["live_max"] == 2
    server = start_server(backend=FakeBackend(), max_sessions=4)
    assert healthz(server)["sessions"]["live_max"] == 4  # unknown capacity: the session limit


@pytest.mark.parametrize("name", ["cuda_error", "runtime_out_of_memory"])
def test_backend_fault_mid_live_stream_fails_only_its_session(start_server, name):
    error, code = BACKEND_FAULTS[name]
    faulty, healthy = portrait(1), portrait(2)
    backend = FaultyBackend(faulty, error, fail_at=5, sessions=2)
    server = start_server(backend=backend)
    wire = [binary_chunk(pcm_bytes(c, "int16")) for c in split_chunks(speech_like(2.0), 3200)] + [END_OF_AUDIO]

    async def both():
        return await asyncio.gather(
            live_converse(f"{server.ws}/ws/bad", live_start(16000, image=png_bytes(faulty)), wire),
            live_converse(f"{server.ws}/ws/good", live_start(16000, image=png_bytes(healthy)), wire),
        )

    bad, good = run(both())
    assert bad.error is not None and bad.error.code == code and bad.close_code == 1011, bad.controls
    assert len(bad.frames) <= 5 and bad.completed is None
    assert good.error is None and good.close_code == 1000 and good.completed.frames_sent == 50
    assert_frames_in_order(good.frames, 50)
    assert metric_values(server)[f'ditto_errors_total{{code="{code.value}"}}'] == 1
    assert all(s.closed for s in backend.streams) and healthz(server)["sessions"]["live"] == 0
    assert_still_serving(server)

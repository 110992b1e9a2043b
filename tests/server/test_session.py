"""Sessions through a real uvicorn server on 127.0.0.1 and a real websockets client."""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import threading
import zlib

import cv2
import httpx
import numpy as np
import pytest
import websockets

from ditto.errors import BackendError, ErrorCode
from ditto.protocol import messages as msg
from ditto.protocol.frames import FrameFlags
from tests.conftest import FakeBackend, FaultyBackend, GatedRegistration, run
from tests.server.helpers import (
    converse,
    live_start,
    metric_values,
    png_bytes,
    portrait,
    speech_like,
    start_message,
    stream_then,
    wait_until,
    wav_bytes,
)


def good_start(seconds: float = 1.0, seed: int = 0) -> str:
    return start_message(wav_bytes(speech_like(seconds)), png_bytes(portrait(seed)))


def assert_still_serving(server) -> None:
    reply = httpx.get(f"{server.http}/healthz", timeout=5).json()
    assert reply["status"] == "ok"
    t = run(converse(f"{server.ws}/ws/after", good_start(0.2)))
    assert t.error is None and len(t.frames) == 5


def test_happy_path_frames_in_order_with_metadata(start_server):
    server = start_server()
    audio = speech_like(1.01)  # 16160 samples -> ceil(16160 / 640) = 26 frames
    t = run(converse(f"{server.ws}/ws/c1", start_message(wav_bytes(audio), png_bytes(portrait()))))
    started, meta, done = t.of_type(msg.StreamingStarted), t.of_type(msg.Metadata), t.of_type(msg.StreamingCompleted)
    assert started[0].client_id == "c1" and started[0].backend == "fake"
    assert meta[0].total_frames == 26 and meta[0].fps == 25 and (meta[0].width, meta[0].height) == (64, 64)
    assert [h.index for h, _ in t.frames] == list(range(26))
    assert [h.pts_ms for h, _ in t.frames[:3]] == [0, 40, 80]
    assert t.frames[-1][0].flags & FrameFlags.LAST and not t.frames[0][0].flags & FrameFlags.LAST
    assert t.frames[1][0].sample_start == 640 and t.frames[1][0].sample_count == 640
    assert done[0].frames_sent == 26 and t.error is None and t.close_code == 1000
    # control messages come in protocol order around the frames
    assert isinstance(t.controls[0], msg.StreamingStarted) and isinstance(t.controls[-1], msg.StreamingCompleted)


def test_two_concurrent_clients_each_get_exactly_their_own_frames(start_server):
    server = start_server(backend=FakeBackend(delay_s=0.002))
    red = np.clip(portrait(1).astype(int) // 4 + [180, 20, 20], 0, 255).astype(np.uint8)
    blue = np.clip(portrait(2).astype(int) // 4 + [20, 20, 180], 0, 255).astype(np.uint8)
    audio = wav_bytes(speech_like(2.0))

    async def both():
        return await asyncio.gather(
            converse(f"{server.ws}/ws/red", start_message(audio, png_bytes(red))),
            converse(f"{server.ws}/ws/blue", start_message(audio, png_bytes(blue))),
        )

    t_red, t_blue = run(both())
    for t, colour in ((t_red, 0), (t_blue, 2)):
        assert [h.index for h, _ in t.frames] == list(range(50))
        for _, jpeg in t.frames:
            mean = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1].reshape(-1, 3).mean(0)
            assert mean.argmax() == colour


BAD_INPUTS = {
    "malformed_json": ("{not json", ErrorCode.BAD_MESSAGE),
    "not_an_object": ("[1, 2]", ErrorCode.BAD_MESSAGE),
    "unknown_type": (json.dumps({"type": "dance"}), ErrorCode.UNKNOWN_MESSAGE),
    "missing_field": (json.dumps({"type": "start_streaming"}), ErrorCode.BAD_MESSAGE),
    "bad_base64": (
        json.dumps(
            {
                "type": "start_streaming",
                "audio": {"kind": "upload", "filename": "a", "data": "@@"},
                "source": {"kind": "path", "path": "x.png"},
            }
        ),
        ErrorCode.BAD_MESSAGE,
    ),
    "binary_before_start": (b"\x00\x01", ErrorCode.BAD_MESSAGE),
    "corrupt_audio": (start_message(b"RIFF....WAVEjunk" * 10, png_bytes(portrait())), ErrorCode.AUDIO_INVALID),
    "empty_audio": (start_message(b"", png_bytes(portrait())), ErrorCode.AUDIO_EMPTY),
    "zero_sample_audio": (
        start_message(wav_bytes(np.zeros(0, np.float32)), png_bytes(portrait())),
        ErrorCode.AUDIO_EMPTY,
    ),
    "silent_audio": (
        start_message(wav_bytes(np.zeros(16000, np.float32)), png_bytes(portrait())),
        ErrorCode.AUDIO_SILENT,
    ),
    "not_an_image": (start_message(wav_bytes(speech_like(0.5)), b"hello, I am text"), ErrorCode.IMAGE_INVALID),
    "no_face": (
        start_message(wav_bytes(speech_like(0.5)), png_bytes(np.full((64, 64, 3), 128, np.uint8))),
        ErrorCode.NO_FACE,
    ),
}


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height with a tiny (all-zero) compressed body."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = zlib.compress(b"\x00" * (1 + width) * 16)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", raw)
        + chunk(b"IEND", b"")
    )


BAD_INPUTS.update(
    {
        # parse limits: RecursionError and int()'s ValueError inside json.loads before
        "nested_10000_deep": (
            '{"type": "start_streaming", "seed": ' + "[" * 10_000 + "]" * 10_000 + "}",
            ErrorCode.BAD_MESSAGE,
        ),
        "number_of_5000_digits": ('{"type": "stop", "n": ' + "7" * 5000 + "}", ErrorCode.BAD_MESSAGE),
        # strict types
        "seed_as_string": (
            start_message(wav_bytes(speech_like(0.5)), png_bytes(portrait()), seed="7"),
            ErrorCode.BAD_MESSAGE,
        ),
        "live_as_string": (live_start(live="yes"), ErrorCode.BAD_MESSAGE),
        "sample_rate_as_string": (live_start(sample_rate_hz="16000"), ErrorCode.BAD_MESSAGE),
    }
)
BAD_INPUTS["decompression_bomb"] = (
    start_message(wav_bytes(speech_like(0.5)), bomb_png(30000, 30000)),
    ErrorCode.IMAGE_TOO_LARGE,
)


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_gets_error_and_server_keeps_serving(start_server, name):
    server = start_server()
    message, code = BAD_INPUTS[name]
    t = run(converse(f"{server.ws}/ws/bad", message))
    assert t.error is not None and t.error.code == code, t.controls
    assert t.error.message
    assert not t.frames and t.close_code not in (None, 1000)
    assert_still_serving(server)


@pytest.fixture
def media_root(tmp_path):
    root = tmp_path / "media"
    root.mkdir()
    (root / "voice.wav").write_bytes(wav_bytes(speech_like(0.4)))
    (root / "face.png").write_bytes(png_bytes(portrait()))
    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bytes(portrait(3)))
    (root / "link.png").symlink_to(secret)
    return root


def path_start(audio: str, source: str) -> str:
    return json.dumps(
        {
            "type": "start_streaming",
            "audio": {"kind": "path", "path": audio},
            "source": {"kind": "path", "path": source},
        }
    )


@pytest.mark.parametrize(
    "audio,source,code",
    [
        ("voice.wav", "missing.png", ErrorCode.FILE_NOT_FOUND),
        ("../../etc/passwd", "face.png", ErrorCode.PATH_FORBIDDEN),
        ("/etc/passwd", "face.png", ErrorCode.PATH_FORBIDDEN),
        ("voice.wav", "link.png", ErrorCode.PATH_FORBIDDEN),
    ],
)
def test_server_paths_stay_inside_media_root(start_server, media_root, audio, source, code):
    server = start_server(media_root=media_root)
    t = run(converse(f"{server.ws}/ws/p", path_start(audio, source)))
    assert t.error is not None and t.error.code == code
    assert_still_serving(server)


def test_server_paths_inside_media_root_work(start_server, media_root):
    server = start_server(media_root=media_root)
    t = run(converse(f"{server.ws}/ws/p", path_start("voice.wav", "face.png")))
    assert t.error is None and len(t.frames) == 10


def test_server_paths_refused_without_media_root(start_server):
    server = start_server()
    t = run(converse(f"{server.ws}/ws/p", path_start("voice.wav", "face.png")))
    assert t.error.code == ErrorCode.PATH_FORBIDDEN and "--media_root" in t.error.message


def test_upload_over_limit(start_server):
    server = start_server(max_upload_bytes=100_000)
    t = run(converse(f"{server.ws}/ws/big", start_message(wav_bytes(speech_like(5.0)), png_bytes(portrait()))))
    assert t.error.code == ErrorCode.UPLOAD_TOO_LARGE
    assert_still_serving(server)


def test_text_message_not_utf8_closes_1007_with_one_log_line(start_server, caplog):
    server = start_server()

    async def send_invalid_utf8() -> int:
        async with websockets.connect(f"{server.ws}/ws/latin1") as ws:
            await ws.send(b'{"type": "stop", "x": "\xe9"}', text=True)  # websockets sends the bytes unchecked
            with pytest.raises(websockets.exceptions.ConnectionClosed):
                await ws.recv()
            return ws.close_code

    uvicorn_log = logging.getLogger("uvicorn.error")  # does not propagate to caplog's root handler
    uvicorn_log.addHandler(caplog.handler)
    try:
        assert run(send_invalid_utf8()) == 1007  # uvicorn logs before it sends the close
    finally:
        uvicorn_log.removeHandler(caplog.handler)
    utf8_lines = [r for r in caplog.records if "UTF-8" in r.getMessage()]
    assert len(utf8_lines) == 1 and "invalid continuation byte at byte 23" in utf8_lines[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info], "no traceback"
    assert_still_serving(server)


def test_start_twice_is_refused(start_server):
    server = start_server(backend=FakeBackend(delay_s=0.01))
    t = run(converse(f"{server.ws}/ws/twice", good_start(2.0), good_start(2.0)))
    assert t.error is not None and t.error.code == ErrorCode.INVALID_STATE
    assert len(t.frames) < 50
    assert_still_serving(server)


@pytest.mark.parametrize(
    "settings,second_id,code,close_code",
    [
        pytest.param({"max_sessions": 1}, "second", ErrorCode.BUSY, 1013, id="busy_at_max_sessions"),
        pytest.param({}, "first", ErrorCode.CLIENT_ID_IN_USE, None, id="duplicate_client_id"),
    ],
)
def test_second_session_refused_while_first_streams(start_server, settings, second_id, code, close_code):
    server = start_server(backend=FakeBackend(delay_s=0.02), **settings)

    async def scenario():
        seconds = []

        async def second_session():  # once the first session's first frame arrived: it is streaming
            seconds.append(await converse(f"{server.ws}/ws/{second_id}", good_start(0.2)))

        first = await stream_then(f"{server.ws}/ws/first", good_start(1.0), second_session)
        return first, seconds[0]

    first, second = run(scenario())
    assert second.error.code == code
    if close_code is not None:
        assert second.close_code == close_code
    assert first.error is None and len(first.frames) == 25


def test_stop_ends_stream_early(start_server):
    backend = FakeBackend(delay_s=0.01)
    server = start_server(backend=backend)

    async def scenario():
        async with websockets.connect(f"{server.ws}/ws/stopper") as ws:
            await ws.send(good_start(4.0))
            frames = 0
            async for reply in ws:
                if isinstance(reply, bytes):
                    frames += 1
                    if frames == 5:
                        await ws.send(json.dumps({"type": "stop"}))
                else:
                    m = msg.parse_server_message(reply)
                    if isinstance(m, msg.StreamingCompleted):
                        return frames, m

    frames, completed = run(scenario())
    assert completed.frames_sent < 100 and frames == completed.frames_sent
    assert backend.streams[0].closed


def test_idle_client_times_out(start_server):
    server = start_server(idle_timeout_s=0.5)
    t = run(converse(f"{server.ws}/ws/idle"))
    assert t.error.code == ErrorCode.TIMEOUT


def healthz(server) -> dict:
    return httpx.get(f"{server.http}/healthz", timeout=5).json()


def test_disconnect_mid_stream_frees_session_at_once(start_server):
    backend = FakeBackend(delay_s=0.02)
    server = start_server(backend=backend)
    t = run(converse(f"{server.ws}/ws/leaver", good_start(10.0), close_after=3))
    assert len(t.frames) == 3
    wait_until(lambda: healthz(server)["sessions"]["active"] == 0, timeout_s=2.0)
    assert healthz(server)["sessions"]["active"] == 0
    assert backend.streams[0].closed and backend.streams[0].emitted < 250


def test_slow_client_gets_every_frame_with_bounded_buffering(start_server):
    backend = FakeBackend()
    server = start_server(backend=backend, frame_queue_size=2)
    big = portrait(5, size=512)  # ~400 KB JPEG frames: socket buffers hold only a few

    async def scenario():
        async with websockets.connect(f"{server.ws}/ws/slow", max_size=None, max_queue=1) as ws:
            await ws.send(start_message(wav_bytes(speech_like(8.0)), png_bytes(big)))
            await asyncio.sleep(1.5)  # read nothing: the pipeline must wait (the scenario, not synchronisation)
            produced_while_stalled = backend.streams[0].emitted
            frames = []
            async for reply in ws:
                if isinstance(reply, bytes):
                    frames.append(reply)
                elif isinstance(msg.parse_server_message(reply), msg.StreamingCompleted):
                    return produced_while_stalled, len(frames)

    stalled, received = run(scenario())
    assert stalled < 100  # of 200: bounded by queue + socket buffers, not by the clip length
    assert received == 200


def test_connect_disconnect_cycles_leave_nothing_behind(start_server):
    server = start_server(backend=FakeBackend(delay_s=0.005))
    loop = server.server.servers[0].get_loop()

    async def count_tasks():
        return len(asyncio.all_tasks())

    run(converse(f"{server.ws}/ws/warm", good_start(0.2)))
    threads_before = threading.active_count()
    tasks_before = asyncio.run_coroutine_threadsafe(count_tasks(), loop).result()

    async def cycles():
        for i in range(50):
            if i % 2:
                await converse(f"{server.ws}/ws/cycle{i}", good_start(2.0), close_after=2)
            else:
                async with websockets.connect(f"{server.ws}/ws/cycle{i}"):
                    pass

    run(cycles())
    wait_until(lambda: healthz(server)["sessions"]["active"] == 0, timeout_s=3.0)
    assert healthz(server)["sessions"]["active"] == 0
    tasks_now = lambda: asyncio.run_coroutine_threadsafe(count_tasks(), loop).result()  # noqa: E731
    wait_until(lambda: tasks_now() <= tasks_before, timeout_s=3.0)  # the last tasks finish after the close
    assert tasks_now() <= tasks_before
    # worker pools are bounded: render threads <= max_sessions, encoder threads fixed
    assert threading.active_count() <= threads_before + 4 + 2
    assert all(s.closed for s in server.app.state.context.backend.streams)


def test_healthz_and_metrics(start_server):
    server = start_server(max_sessions=3)
    assert healthz(server) == {
        "status": "ok",
        "backend": "fake",
        "engine": {},
        "sessions": {"active": 0, "max": 3, "live": 0, "live_max": 3},
    }
    run(converse(f"{server.ws}/ws/m", good_start(0.4)))
    run(converse(f"{server.ws}/ws/m2", "{bad"))
    text = httpx.get(f"{server.http}/metrics", timeout=5).text
    values = {
        line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line and not line.startswith("#")
    }
    assert values["ditto_frames_sent_total"] == 10
    assert values["ditto_sessions_total"] == 2
    assert values["ditto_bytes_sent_total"] > 10 * 24
    assert values["ditto_first_frame_latency_seconds_count"] == 1
    assert values["ditto_frame_render_seconds_count"] == 10
    assert values['ditto_errors_total{code="bad_message"}'] == 1
    assert values["ditto_sessions_active"] == 0


def test_shutdown_sends_shutting_down_then_closes_with_1012(start_server):
    server = start_server(backend=FakeBackend(delay_s=0.02))
    t = run(stream_then(f"{server.ws}/ws/live", good_start(20.0), lambda: asyncio.to_thread(server.stop)))
    assert isinstance(t.controls[-1], msg.Error) and t.controls[-1].code == ErrorCode.SHUTTING_DOWN
    assert t.close_code == 1012
    assert 0 < len(t.frames) < 500


BACKEND_FAULTS = {
    "cuda_error": (RuntimeError("CUDA error: an illegal memory access was encountered"), ErrorCode.BACKEND_FAILED),
    "any_exception": (KeyError("warp"), ErrorCode.BACKEND_FAILED),
    "runtime_out_of_memory": (
        RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory: CUDA out of memory"),
        ErrorCode.OUT_OF_MEMORY,
    ),
    "backend_out_of_memory": (
        BackendError("the GPU ran out of memory", code=ErrorCode.OUT_OF_MEMORY),
        ErrorCode.OUT_OF_MEMORY,
    ),
}


def test_frames_are_not_deflated(start_server):
    """The client offers permessage-deflate (websockets does by default); the server declines it:
    JPEG frames don't compress, and deflating them costs more CPU than encoding them."""
    server = start_server()

    async def handshake():
        async with websockets.connect(f"{server.ws}/ws/deflate") as ws:
            offered = ws.request.headers.get("Sec-WebSocket-Extensions")
            return offered, ws.response.headers.get("Sec-WebSocket-Extensions")

    offered, accepted = run(handshake())
    assert offered and "permessage-deflate" in offered
    assert accepted is None


@pytest.mark.parametrize(
    "raw_id",
    [
        "%0D%0AX-Injected%3A1",  # CR LF: would forge a log line
        "a%00b",  # NUL
        "caf%C3%A9",  # non-ASCII
        "has%20space",
        "x" * 65,  # too long
    ],
)
def test_bad_client_id_is_refused_before_it_is_logged(start_server, caplog, raw_id):
    server = start_server()
    with caplog.at_level("INFO", logger="streaming_server"):
        t = run(converse(f"{server.ws}/ws/{raw_id}", good_start(0.2)))
    assert t.error is not None and t.error.code == ErrorCode.BAD_CLIENT_ID and t.close_code == 1008
    assert not t.frames and not t.of_type(msg.StreamingStarted)
    lines = [r.getMessage() for r in caplog.records if r.name == "streaming_server"]
    assert lines and not any(c in line for line in lines for c in "\r\n\x00")
    assert not any("connected" in line for line in lines)
    assert_still_serving(server)


@pytest.mark.parametrize("client_id", ["x" * 64, "AZaz09._~-", "web-k3j9x0qz", "load-4-3"])
def test_client_ids_of_the_allowed_set_are_served(start_server, client_id):
    server = start_server()
    t = run(converse(f"{server.ws}/ws/{client_id}", good_start(0.2)))
    assert t.error is None and len(t.frames) == 5
    assert t.of_type(msg.StreamingStarted)[0].client_id == client_id


@pytest.mark.parametrize("name", BACKEND_FAULTS)
def test_backend_fault_mid_stream_fails_only_its_session(start_server, caplog, name):
    """The fault reaches its client as an error (1011), counted and logged once with its traceback,
    while a session streaming at the same time gets all its frames."""
    error, code = BACKEND_FAULTS[name]
    faulty, healthy = portrait(1), portrait(2)
    backend = FaultyBackend(faulty, error, fail_at=5, sessions=2)
    server = start_server(backend=backend)
    audio = wav_bytes(speech_like(2.0))  # 50 frames

    async def both():
        return await asyncio.gather(
            converse(f"{server.ws}/ws/bad", start_message(audio, png_bytes(faulty))),
            converse(f"{server.ws}/ws/good", start_message(audio, png_bytes(healthy))),
        )

    bad, good = run(both())
    assert bad.error is not None and bad.error.code == code and bad.close_code == 1011, bad.controls
    assert [h.index for h, _ in bad.frames] == list(range(5)) and not bad.of_type(msg.StreamingCompleted)
    assert good.error is None and good.close_code == 1000
    assert [h.index for h, _ in good.frames] == list(range(50))
    assert metric_values(server)[f'ditto_errors_total{{code="{code.value}"}}'] == 1
    logged = [r for r in caplog.records if "Client bad" in r.getMessage() and r.levelname == "ERROR"]
    assert len(logged) == 1 and logged[0].exc_info is not None
    assert all(s.closed for s in backend.streams)
    assert_still_serving(server)


def _two_sessions_with_one_portrait(server, backend: GatedRegistration, start: str) -> list:
    """Two sessions that send ``start`` at once; registration is let go once both have looked the portrait up."""
    arrived = _count_cache_lookups(server)

    async def both():
        sessions = [asyncio.create_task(converse(f"{server.ws}/ws/{name}", start)) for name in ("one", "two")]
        await asyncio.to_thread(_release_when_both_looked_up, backend, arrived)
        return await asyncio.gather(*sessions)

    return run(both())


def test_concurrent_sessions_with_one_portrait_register_it_once(start_server):
    backend = GatedRegistration()
    server = start_server(backend=backend)
    start = start_message(wav_bytes(speech_like(0.4)), png_bytes(portrait(3)))
    for t in _two_sessions_with_one_portrait(server, backend, start):
        assert t.error is None and len(t.frames) == 10
    assert backend.calls == 1 and server.app.state.context.avatars.hits == 1


def test_a_failed_registration_fails_every_waiting_session_and_is_retried(start_server):
    backend = GatedRegistration(first_error=RuntimeError("CUDA error: an illegal memory access was encountered"))
    server = start_server(backend=backend)
    start = start_message(wav_bytes(speech_like(0.4)), png_bytes(portrait(3)))
    for t in _two_sessions_with_one_portrait(server, backend, start):
        assert t.error is not None and t.error.code == ErrorCode.BACKEND_FAILED and t.close_code == 1011
        assert not t.frames
    assert backend.calls == 1
    again = run(converse(f"{server.ws}/ws/again", start))
    assert again.error is None and len(again.frames) == 10 and backend.calls == 2


class _CountingLock:
    """The avatar cache's lock, counting the times it is let go: a session's lookup lets it go
    once before registering or waiting, so two counts mean both sessions chose what to do."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.released = threading.Semaphore(0)

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc) -> None:
        self._lock.release()
        self.released.release()


def _count_cache_lookups(server) -> threading.Semaphore:
    lock = server.app.state.context.avatars._lock = _CountingLock()
    return lock.released


def _release_when_both_looked_up(backend: GatedRegistration, looked_up: threading.Semaphore) -> None:
    assert looked_up.acquire(timeout=10) and looked_up.acquire(timeout=10) and backend.entered.wait(10)
    backend.release.set()


def test_connections_that_send_no_request_are_dropped(start_server):
    """Half-open or stalled TCP connections (no complete HTTP request) are closed after
    request_timeout_s instead of holding a descriptor for ever."""
    import socket

    server = start_server(request_timeout_s=1.0)
    silent = socket.create_connection(("127.0.0.1", server.port))
    partial = socket.create_connection(("127.0.0.1", server.port))
    partial.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # headers never finished
    for sock in (silent, partial):
        sock.settimeout(20)
        try:
            assert sock.recv(1024) == b""  # closed by the server
        finally:
            sock.close()
    assert_still_serving(server)

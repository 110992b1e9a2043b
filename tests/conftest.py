"""Shared fixtures: a FakeBackend, a real uvicorn server on 127.0.0.1, example media."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest

from ditto import SAMPLES_PER_FRAME
from ditto.backends.base import StageStats, StreamOptions, VideoFrame
from ditto.errors import SourceError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_AUDIO = ROOT / "example" / "audio.wav"
EXAMPLE_IMAGE = ROOT / "example" / "image.png"


def astronaut(size: int = 512) -> np.ndarray:
    """The example portrait (scikit-image's public-domain astronaut) as RGB uint8, size x size."""
    import cv2

    bgr = cv2.imread(str(EXAMPLE_IMAGE), cv2.IMREAD_COLOR)
    return np.ascontiguousarray(cv2.resize(bgr[:, :, ::-1], (size, size), interpolation=cv2.INTER_AREA))


class FakeClock:
    """Monotonic seconds that move only when a test sets ``now``."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeAvatar:
    def __init__(self, image: np.ndarray) -> None:
        self.image = image
        self.height, self.width = image.shape[:2]


class FakeStream:
    """One frame per 640 samples, no look-ahead; each frame is the source image (so sessions are told
    apart by it). Implements the whole :class:`~ditto.backends.base.AnimationStream` contract and
    records the calls that are not ``feed`` in ``calls``."""

    def __init__(self, avatar: FakeAvatar, delay_s: float) -> None:
        self.avatar, self.delay_s = avatar, delay_s
        self.samples = 0
        self.emitted = 0
        self.calls: list[tuple] = []  # ("idle", n), ("flush",), ("interrupt", next frame)
        self.closed = False

    def _frames(self, upto: int, idle: bool = False) -> Iterator[VideoFrame]:
        while self.emitted < upto:
            if self.delay_s:
                time.sleep(self.delay_s)
            yield VideoFrame(self.emitted, self.avatar.image, idle=idle)
            self.emitted += 1

    def feed(
        self, audio: np.ndarray, *, received_at: float | None = None, clock_origin: float | None = None
    ) -> Iterator[VideoFrame]:
        self.samples += len(audio)
        return self._frames(self.samples // SAMPLES_PER_FRAME)

    def idle(
        self, frames: int, *, requested_at: float | None = None, clock_origin: float | None = None
    ) -> Iterator[VideoFrame]:
        assert self.samples % SAMPLES_PER_FRAME == 0, "idle() off a frame boundary"
        self.calls.append(("idle", frames))
        self.samples += frames * SAMPLES_PER_FRAME
        return self._frames(self.samples // SAMPLES_PER_FRAME, idle=True)

    def flush(self) -> Iterator[VideoFrame]:
        self.calls.append(("flush",))
        self.samples = -(-self.samples // SAMPLES_PER_FRAME) * SAMPLES_PER_FRAME  # the padded tail
        return self._frames(self.samples // SAMPLES_PER_FRAME)

    def interrupt(self) -> int:
        self.samples = self.emitted * SAMPLES_PER_FRAME  # audio of frames not yielded is dropped
        self.calls.append(("interrupt", self.emitted))
        return self.emitted

    def finish(self) -> Iterator[VideoFrame]:
        return self._frames(-(-self.samples // SAMPLES_PER_FRAME))

    def close(self) -> None:
        self.closed = True


class FakeBackend:
    """Needs no model: a flat image has "no face", anything else animates as itself."""

    name = "fake"

    def __init__(self, delay_s: float = 0.0, live_capacity: int | None = None) -> None:
        self.live_capacity = live_capacity
        self.delay_s = delay_s
        self.registered = 0
        self.streams: list[FakeStream] = []

    def register_source(self, image_rgb: np.ndarray) -> FakeAvatar:
        if float(image_rgb.std()) < 1.0:
            raise SourceError("no face found in the source image")
        self.registered += 1
        return FakeAvatar(image_rgb)

    def open_stream(self, avatar: FakeAvatar, *, seed: int, options: StreamOptions = StreamOptions()) -> FakeStream:
        stream = FakeStream(avatar, self.delay_s)
        self.options = options
        self.streams.append(stream)
        return stream

    def stage_stats(self) -> dict[str, StageStats]:
        return {}

    def close(self) -> None:
        pass


class FaultyStream(FakeStream):
    """A FakeStream that meets the backend's other streams at frame ``fail_at`` (a barrier), then
    raises the backend's ``error`` if its avatar is the faulty one, else goes on."""

    def __init__(self, avatar: FakeAvatar, backend: "FaultyBackend") -> None:
        super().__init__(avatar, backend.delay_s)
        self.backend = backend

    def _frames(self, upto: int, idle: bool = False) -> Iterator[VideoFrame]:
        b = self.backend
        for frame in super()._frames(upto, idle):
            if frame.index == b.fail_at:
                b.rendezvous.wait(timeout=30)  # every session is mid-stream here
                if np.array_equal(self.avatar.image, b.faulty):
                    raise b.error
            yield frame


class FaultyBackend(FakeBackend):
    """A FakeBackend whose streams of one portrait fail mid-stream, as a GPU fault would: each of
    ``sessions`` streams renders ``fail_at`` frames, they all wait for each other, then the streams
    of ``faulty`` raise ``error`` and the others stream to the end."""

    def __init__(self, faulty: np.ndarray, error: Exception, *, fail_at: int = 5, sessions: int = 1) -> None:
        super().__init__()
        self.faulty, self.error, self.fail_at = faulty, error, fail_at
        self.rendezvous = threading.Barrier(sessions)

    def open_stream(self, avatar: FakeAvatar, *, seed: int, options: StreamOptions = StreamOptions()) -> FakeStream:
        stream = FaultyStream(avatar, self)
        self.streams.append(stream)
        return stream


class GatedRegistration(FakeBackend):
    """A FakeBackend whose ``register_source`` counts its calls, then blocks until ``release`` is set;
    the first call raises ``first_error`` (if given) once released."""

    def __init__(self, first_error: Exception | None = None) -> None:
        super().__init__()
        self.calls = 0
        self.entered = threading.Event()
        self.release = threading.Event()
        self.first_error = first_error

    def register_source(self, image_rgb: np.ndarray) -> FakeAvatar:
        self.calls += 1
        self.entered.set()
        assert self.release.wait(30), "the test never released the registration"
        if self.calls == 1 and self.first_error is not None:
            raise self.first_error
        return super().register_source(image_rgb)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningServer:
    """A real uvicorn server (the server's own :class:`~ditto.server.main.Server`) on 127.0.0.1 in a
    background thread."""

    def __init__(self, app, port: int, settings) -> None:
        import uvicorn

        from ditto.server.main import Server, uvicorn_options

        self.port = port
        self.app = app
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **uvicorn_options(settings))
        self.server = Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> "RunningServer":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture
def start_server(tmp_path) -> Iterator[Callable[..., RunningServer]]:
    """Factory: ``start_server(backend=..., **settings)`` -> a started RunningServer."""
    from ditto.server.app import create_app
    from ditto.settings import Settings

    servers: list[RunningServer] = []

    def start(backend=None, **overrides) -> RunningServer:
        backend = backend or FakeBackend()
        settings = Settings(**{"max_sessions": 4, **overrides})
        app = create_app(settings, backend_factory=lambda _s: backend)
        server = RunningServer(app, free_port(), settings).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def run(coro):
    return asyncio.run(coro)


def pytest_collection_modifyitems(config, items) -> None:
    """``slow`` tests (full-size models on the CPU) run only when selected: ``-m slow``."""
    markexpr = config.getoption("markexpr") or ""
    if "slow" in markexpr and "not slow" not in markexpr:
        return
    skip = pytest.mark.skip(reason="full-size CPU run; select with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)

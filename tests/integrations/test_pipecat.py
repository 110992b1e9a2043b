"""DittoVideoService in a real Pipecat pipeline against a real server (lite backend) on 127.0.0.1.

pipecat-ai and the server can't share an environment (protobuf), so these tests run in the
Pipecat one (``requirements-pipecat.txt``) and start the server as a subprocess with the
server's Python, named by ``DITTO_SERVER_PYTHON``. Without pipecat or that variable they skip;
``DITTO_REQUIRE_PIPECAT=1`` (CI) turns the skip into a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import importlib.util
import os
import queue
import re
import subprocess
import threading
import wave
from pathlib import Path
from typing import AsyncIterator, Callable, Iterator

import pytest

SERVER_PYTHON = os.environ.get("DITTO_SERVER_PYTHON")
if importlib.util.find_spec("pipecat") is None:
    _missing = "pipecat-ai is not installed (pip install -r requirements-pipecat.txt)"
else:
    _missing = None if SERVER_PYTHON else "DITTO_SERVER_PYTHON (the server's Python) is not set"
if _missing is not None:
    if os.environ.get("DITTO_REQUIRE_PIPECAT") == "1":
        pytest.fail(f"DITTO_REQUIRE_PIPECAT=1 but {_missing}", pytrace=False)
    pytest.skip(_missing, allow_module_level=True)

from pipecat.frames.frames import (  # noqa: E402
    EndFrame,
    ErrorFrame,
    Frame,
    InterruptionFrame,
    OutputImageRawFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.worker import PipelineParams, PipelineWorker  # noqa: E402
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402
from pipecat.workers.runner import WorkerRunner  # noqa: E402

from ditto.integrations.pipecat import DittoVideoService  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PORTRAIT = REPO / "example" / "image.png"
TTS_RATE_HZ = 24_000  # what realtime TTS engines emit; example/audio.wav is already at this rate
FRAME_BYTES = TTS_RATE_HZ // 25 * 2  # PCM16 audio of one 40 ms video frame
WAIT_S = 60.0  # bound on every wait for frames (a loaded 2-core machine renders slowly)


def example_speech(seconds: float, offset_s: float = 0.0) -> bytes:
    """PCM16 mono at 24 kHz from the example recording."""
    with wave.open(str(REPO / "example" / "audio.wav")) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (TTS_RATE_HZ, 1, 2)
        wav.setpos(int(offset_s * TTS_RATE_HZ))
        return wav.readframes(int(seconds * TTS_RATE_HZ))


def tts_frames(pcm: bytes, context_id: str, chunk_ms: int = 20) -> list[Frame]:
    """One TTS response as a TTS service pushes it: started, audio chunks (no stop)."""
    step = TTS_RATE_HZ * chunk_ms // 1000 * 2
    return [
        TTSStartedFrame(context_id=context_id),
        *(TTSAudioRawFrame(pcm[i : i + step], TTS_RATE_HZ, 1, context_id=context_id) for i in range(0, len(pcm), step)),
    ]


# --- the server, a subprocess of the server's own Python -------------------------------------


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    """``streaming_server.py --backend lite`` on a free loopback port (uvicorn logs the port)."""
    server = subprocess.Popen(
        [
            SERVER_PYTHON,
            "streaming_server.py",
            "--backend",
            "lite",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--max_size",
            "256",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def read_log() -> None:  # keeps the pipe drained for the server's whole life
        for line in server.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read_log, daemon=True).start()
    log: list[str] = []
    try:
        while True:
            line = lines.get(timeout=WAIT_S)
            assert line is not None, "the server exited at start-up:\n" + "".join(log)
            log.append(line)
            if found := re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line):
                break
        yield f"ws://127.0.0.1:{found.group(1)}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


# --- a pipeline around the service -------------------------------------------------------------


class FrameLog(FrameProcessor):
    """Passes frames on and records those going one way; a test waits on what it recorded."""

    def __init__(self, direction: FrameDirection) -> None:
        super().__init__(enable_direct_mode=True)  # recorded in the order they pass
        self.direction = direction
        self.frames: list[Frame] = []
        self._changed = asyncio.Condition()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == self.direction and not isinstance(frame, StartFrame):
            self.frames.append(frame)
            async with self._changed:
                self._changed.notify_all()
        await self.push_frame(frame, direction)

    async def wait_for(self, what: str, condition: Callable[[list[Frame]], bool]) -> None:
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: condition(self.frames)), WAIT_S)
            except TimeoutError:
                pytest.fail(f"no {what} within {WAIT_S:.0f} s; got {summary(self.frames)}")


@dataclasses.dataclass
class RunningPipeline:
    worker: PipelineWorker
    upstream: FrameLog  # what reached the head going up (ErrorFrames)
    downstream: FrameLog  # what left the service going down
    run: asyncio.Task

    async def send(self, frames: list[Frame]) -> None:
        await self.worker.queue_frames(frames)

    async def end(self) -> None:
        await self.worker.queue_frame(EndFrame())
        await asyncio.wait_for(asyncio.shield(self.run), WAIT_S)


@contextlib.asynccontextmanager
async def pipeline(service: DittoVideoService) -> AsyncIterator[RunningPipeline]:
    """``Pipeline([head, service, tail])`` run by a WorkerRunner; cancelled if the test did not end it."""
    head, tail = FrameLog(FrameDirection.UPSTREAM), FrameLog(FrameDirection.DOWNSTREAM)
    worker = PipelineWorker(
        Pipeline([head, service, tail]),
        cancel_on_idle_timeout=False,
        params=PipelineParams(audio_out_sample_rate=TTS_RATE_HZ),
    )
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _on_started(worker, frame) -> None:
        started.set()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    run = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(started.wait(), WAIT_S)
        yield RunningPipeline(worker, head, tail, run)
    finally:
        if not run.done():
            await worker.cancel()
            await asyncio.wait_for(run, WAIT_S)


def in_event_loop(test: Callable) -> Callable:
    """Run an async test in a fresh event loop (the suite has no asyncio plugin)."""

    @functools.wraps(test)
    def run(*args, **kwargs) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


def service(server_url: str, **options) -> DittoVideoService:
    return DittoVideoService(server_url=server_url, **{"portrait": PORTRAIT, "seed": 7, **options})


# --- reading what came out ---------------------------------------------------------------------


def summary(frames: list[Frame]) -> str:
    counts: dict[str, int] = {}
    for frame in frames:
        counts[type(frame).__name__] = counts.get(type(frame).__name__, 0) + 1
    return ", ".join(f"{n} {name}" for name, n in counts.items()) or "nothing"


def audio_of(frames: list[Frame], context_id: str | None = None) -> bytes:
    return b"".join(
        f.audio
        for f in frames
        if isinstance(f, TTSAudioRawFrame) and (context_id is None or f.context_id == context_id)
    )


def images_after_last_audio(frames: list[Frame]) -> int:
    last_audio = max((i for i, f in enumerate(frames) if isinstance(f, TTSAudioRawFrame)), default=None)
    return 0 if last_audio is None else sum(isinstance(f, OutputImageRawFrame) for f in frames[last_audio:])


def index_of(frames: list[Frame], kind: type[Frame], nth: int = 1) -> int:
    return [i for i, f in enumerate(frames) if isinstance(f, kind)][nth - 1]


def assert_paired(frames: list[Frame]) -> None:
    """Each audio frame comes right after the image it is the sound of, and covers one video frame
    (the utterance's last may cover less); images are RGB of one size."""
    for i, frame in enumerate(frames):
        if isinstance(frame, TTSAudioRawFrame):
            assert i > 0 and isinstance(frames[i - 1], OutputImageRawFrame), f"audio frame {i} has no image before it"
            assert 0 < len(frame.audio) <= FRAME_BYTES and frame.sample_rate == TTS_RATE_HZ
    images = [f for f in frames if isinstance(f, OutputImageRawFrame)]
    assert images and {(f.format, f.size) for f in images} == {("RGB", images[0].size)}
    assert max(images[0].size) <= 256 and all(len(f.image) == f.size[0] * f.size[1] * 3 for f in images)


def assert_no_error(upstream: FrameLog) -> None:
    errors = [f.error for f in upstream.frames if isinstance(f, ErrorFrame)]
    assert not errors, errors


# --- today's server -------------------------------------------------------------------------------


@in_event_loop
async def test_speech_becomes_video_frames_each_with_the_audio_it_shows(server_url):
    speech = example_speech(2.0)
    async with pipeline(service(server_url)) as run:
        await run.send(tts_frames(speech, "reply-1"))
        # Idle pictures once the speech is shown; the server keeps the last few samples in its
        # resampler until more audio (or the end) comes, so not all audio is out yet.
        await run.downstream.wait_for(
            "idle frames after the speech",
            lambda frames: len(audio_of(frames)) >= len(speech) - FRAME_BYTES and images_after_last_audio(frames) >= 2,
        )
        await run.end()
    frames = run.downstream.frames
    assert audio_of(frames) == speech  # all of it, in order, nothing added
    assert_paired(frames)
    speech_frames = [f for f in frames if isinstance(f, TTSAudioRawFrame)]
    assert len(speech_frames) == -(-len(speech) // FRAME_BYTES)  # one per 40 ms: ceil(2.0 s x 25)
    assert {f.context_id for f in speech_frames} == {"reply-1"}
    assert index_of(frames, TTSStartedFrame) < index_of(frames, TTSAudioRawFrame)
    assert_no_error(run.upstream)


@in_event_loop
async def test_idle_frames_keep_the_video_alive_after_speech(server_url):
    async with pipeline(service(server_url)) as run:
        await run.send(tts_frames(example_speech(0.5), "reply-1"))
        await run.downstream.wait_for("10 idle frames", lambda frames: images_after_last_audio(frames) >= 10)
        await run.end()
    assert_paired(run.downstream.frames)
    assert_no_error(run.upstream)


@in_event_loop
async def test_a_server_error_becomes_an_error_frame_and_the_audio_passes_through(server_url):
    first, second = example_speech(0.5), example_speech(0.5, offset_s=1.0)
    # A server path is refused: this server has no --media_root.
    async with pipeline(service(server_url, portrait="portraits/missing.png", portrait_on_server=True)) as run:
        await run.send([*tts_frames(first, "reply-1"), TTSStoppedFrame(context_id="reply-1")])
        await run.upstream.wait_for("ErrorFrame", lambda frames: any(isinstance(f, ErrorFrame) for f in frames))
        await run.downstream.wait_for(
            "the first reply", lambda frames: any(isinstance(f, TTSStoppedFrame) for f in frames)
        )
        await run.send([*tts_frames(second, "reply-2"), TTSStoppedFrame(context_id="reply-2")])
        await run.downstream.wait_for(
            "the second reply", lambda frames: sum(isinstance(f, TTSStoppedFrame) for f in frames) == 2
        )
        await run.end()
    frames = run.downstream.frames
    assert audio_of(frames, "reply-1") == first and audio_of(frames, "reply-2") == second
    assert index_of(frames, TTSStoppedFrame, 2) > index_of(frames, TTSStartedFrame, 2)
    assert not any(isinstance(f, OutputImageRawFrame) for f in frames)
    [error] = [f for f in run.upstream.frames if isinstance(f, ErrorFrame)]
    assert "path_forbidden" in error.error and not error.fatal


# --- the conversation messages (#9) -------------------------------------------------------------


@in_event_loop
async def test_tts_stopped_waits_for_playback_finished_and_the_next_reply_plays_too(server_url):
    first, second = example_speech(1.0), example_speech(0.6, offset_s=2.0)
    async with pipeline(service(server_url)) as run:
        await run.send([*tts_frames(first, "reply-1"), TTSStoppedFrame(context_id="reply-1")])
        await run.downstream.wait_for(
            "the first TTSStoppedFrame", lambda frames: any(isinstance(f, TTSStoppedFrame) for f in frames)
        )
        assert audio_of(run.downstream.frames) == first  # all of it before the stop: the tail was rendered
        await run.send([*tts_frames(second, "reply-2"), TTSStoppedFrame(context_id="reply-2")])
        await run.downstream.wait_for(
            "the second TTSStoppedFrame", lambda frames: sum(isinstance(f, TTSStoppedFrame) for f in frames) == 2
        )
        await run.end()
    frames = run.downstream.frames
    assert_no_error(run.upstream)
    assert audio_of(frames, "reply-2") == second
    assert_paired(frames)
    first_stop, second_start = index_of(frames, TTSStoppedFrame), index_of(frames, TTSStartedFrame, 2)
    assert all(f.context_id == "reply-1" for f in frames[:first_stop] if isinstance(f, TTSAudioRawFrame))
    assert all(f.context_id == "reply-2" for f in frames[second_start:] if isinstance(f, TTSAudioRawFrame))


@in_event_loop
async def test_an_interruption_drops_the_held_audio_and_the_next_reply_plays(server_url):
    long_reply, next_reply = example_speech(8.0), example_speech(0.6, offset_s=9.0)
    async with pipeline(service(server_url)) as run:
        await run.send(tts_frames(long_reply, "reply-1"))
        await run.downstream.wait_for("the first reply's video", lambda frames: audio_of(frames) != b"")
        await run.send([InterruptionFrame()])
        await run.downstream.wait_for(
            "the interruption", lambda frames: any(isinstance(f, InterruptionFrame) for f in frames)
        )
        await run.send([*tts_frames(next_reply, "reply-2"), TTSStoppedFrame(context_id="reply-2")])
        await run.downstream.wait_for(
            "the next reply's TTSStoppedFrame", lambda frames: any(isinstance(f, TTSStoppedFrame) for f in frames)
        )
        await run.end()
    frames = run.downstream.frames
    assert_no_error(run.upstream)
    interruption = index_of(frames, InterruptionFrame)
    assert audio_of(frames[interruption:], "reply-1") == b""  # nothing of the interrupted reply after it
    assert len(audio_of(frames, "reply-1")) < len(long_reply)
    assert audio_of(frames, "reply-2") == next_reply
    assert index_of(frames, TTSStoppedFrame) > max(i for i, f in enumerate(frames) if isinstance(f, TTSAudioRawFrame))
    assert_paired(frames)

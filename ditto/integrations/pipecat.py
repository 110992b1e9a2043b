"""A Pipecat frame processor that gives a voice agent a talking face: :class:`DittoVideoService`.

Place it after the TTS service::

    transport.input() -> STT -> LLM -> TTS -> DittoVideoService -> transport.output()

It opens one live session (``start_streaming`` with ``live: true``) on a running Ditto server
when the pipeline starts, and then, for the frames going downstream:

- ``TTSAudioRawFrame``: its PCM16 goes to the server as a binary live audio chunk, at the TTS's
  own sample rate (the session announces the pipeline's output rate), and the frame is held.
- Each JPEG frame from the server becomes an ``OutputImageRawFrame`` (RGB, ``sync_with_audio``)
  pushed together with the held audio it covers, as a ``TTSAudioRawFrame``: image, then its
  40 ms of audio, so the output transport shows each picture when its audio starts playing.
  Idle frames (no speech) are pushed alone and keep the video alive between utterances.
- ``TTSStoppedFrame``: sends ``end_of_utterance`` and is held until the server's
  ``playback_finished`` for that utterance, so it leaves after the utterance's last picture
  and audio.
- ``InterruptionFrame``: sends ``interrupt`` (when something is playing or held), drops the held
  audio and pushes the interruption on, followed by the held ``TTSStoppedFrame``s (the TTS
  responses did end). Frames of interrupted utterances still in flight are dropped.
- ``EndFrame``: sends ``end_of_audio``, waits (at most ``finish_timeout_s``) for the server to
  send the rest and complete, then pushes whatever is still held, then the ``EndFrame``.

A server ``error`` (or a lost connection) becomes a non-fatal ``ErrorFrame`` upstream; the held
audio and ``TTSStoppedFrame``s are pushed at once and from then on every frame passes through,
so the agent keeps talking without video.

Pairing audio with video: through the frame header, not the audio echo. Each non-idle frame
says which utterance it shows (``utterance``) and how much 16 kHz audio it covers
(``sample_count``); the service releases that much of the utterance's held audio, converted to
the TTS's rate, in order. The echo (``echo_audio``) would hand back the same audio at 16 kHz,
the server's internal rate: a 24 kHz TTS voice would lose its top octave, and the socket would
carry the audio twice. What the echo adds, audio for idle stretches, the output transport does
itself (it plays silence when no audio comes). Frames skipped for a slow client show up as gaps
in the frame index; the audio they covered is released with the next frame of the utterance.

Utterances are numbered as the server numbers them: 1 for the first audio chunk of the
session, and the next number for the first chunk after an ``end_of_utterance`` or an
``interrupt``. A server that leaves ``utterance`` at 0 on speech frames (one without the
conversation messages) gets its frames paired with the oldest utterance that still holds audio.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import os
import secrets
from pathlib import Path

import websockets
from websockets.asyncio.client import ClientConnection

from ditto import SAMPLE_RATE_HZ
from ditto.client.connection import error_from_close
from ditto.errors import ErrorCode, ProtocolError
from ditto.protocol import messages as msg
from ditto.protocol.frames import AudioChunkHeader, FrameFlags, FrameHeader, FrameKind, SampleType, pack_audio_chunk

try:
    from PIL import Image
    from pipecat.frames.frames import (
        CancelFrame,
        EndFrame,
        Frame,
        InterruptionFrame,
        OutputImageRawFrame,
        StartFrame,
        TTSAudioRawFrame,
        TTSStoppedFrame,
    )
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor, FrameProcessorSetup
    from pipecat.utils.errors import ErrorCategory
except ModuleNotFoundError as exc:  # an optional extra: say how to get it
    raise ImportError(
        f"ditto.integrations.pipecat needs pipecat-ai ({exc}); install it with: pip install -r requirements-pipecat.txt"
    ) from exc

logger = logging.getLogger(__name__)

_PCM16_BYTES = 2  # the service sends and releases mono int16 audio: 2 bytes a sample
_END_OF_UTTERANCE = json.dumps({"type": "end_of_utterance"})
_INTERRUPT = json.dumps({"type": "interrupt"})
_END_OF_AUDIO = json.dumps({"type": "end_of_audio"})


@dataclasses.dataclass(slots=True)
class _Utterance:
    number: int  # 1-based, as the server counts them
    context_id: str | None  # the TTS context of its audio, kept on the audio released
    audio: bytearray = dataclasses.field(default_factory=bytearray)  # PCM16 mono not yet released
    released_bytes: int = 0  # of this utterance's audio, pushed downstream so far
    covered_samples_16k: int = 0  # 16 kHz samples of it the video frames received so far cover
    open: bool = True  # still taking audio: no end_of_utterance or interrupt since it began
    stopped: TTSStoppedFrame | None = None  # held until playback_finished


class AudioVideoPairing:
    """Holds TTS audio until the video frames that show it arrive and releases the two together.

    No I/O: each method takes what happened and returns the frames to push downstream, in order.
    Audio is PCM16 mono at ``sample_rate_hz``.
    """

    def __init__(self, sample_rate_hz: int) -> None:
        self.sample_rate_hz = sample_rate_hz
        self._utterances: dict[int, _Utterance] = {}  # not finished yet, in the order they began
        self._last_number = 0
        self._interrupted_through = 0  # speech frames of utterances up to this one are dropped
        self._previous: FrameHeader | None = None  # the last video frame received

    @property
    def speaking(self) -> bool:
        """Some utterance has audio sent whose playback has not finished."""
        return bool(self._utterances)

    def hold_audio(self, frame: TTSAudioRawFrame) -> int:
        """Hold ``frame``'s audio in the open utterance, or in a new one; returns its number."""
        current = self._open_utterance()
        if current is None:
            self._last_number += 1
            current = self._utterances[self._last_number] = _Utterance(self._last_number, frame.context_id)
        current.audio += frame.audio
        return current.number

    def hold_stop(self, frame: TTSStoppedFrame) -> int | None:
        """Close the open utterance and hold ``frame`` until it finished playing.

        Returns:
            The utterance's number, or None when no audio came since the last boundary: then
            there is nothing to end, and the caller pushes ``frame`` on.
        """
        current = self._open_utterance()
        if current is None:
            return None
        current.open, current.stopped = False, frame
        return current.number

    def video(self, header: FrameHeader, image: OutputImageRawFrame) -> list[Frame]:
        """A video frame arrived: its image, then the audio it covers (and skipped frames covered)."""
        previous, self._previous = self._previous, header
        if header.flags & FrameFlags.IDLE:
            return [image]
        if 0 < header.utterance <= self._interrupted_through:
            return []  # in flight when the interrupt was sent: its audio is gone, so is its picture
        utterance = (
            self._utterances.get(header.utterance)
            if header.utterance
            else next((u for u in self._utterances.values() if u.audio), None)
        )
        if utterance is None:
            return [image]
        covered = header.sample_count
        if (
            previous is not None
            and not previous.flags & FrameFlags.IDLE
            and previous.utterance == header.utterance
            and header.index > previous.index + 1
        ):
            covered += (header.index - previous.index - 1) * header.sample_count  # skipped for a slow client
        audio = self._take(utterance, covered)
        return [image, audio] if audio is not None else [image]

    def finished(self, number: int, *, interrupted: bool) -> list[Frame]:
        """The server's ``playback_finished``: the rest of the utterance's audio (unless it was
        interrupted) and its held ``TTSStoppedFrame``."""
        utterance = self._utterances.pop(number, None)
        if utterance is None:  # already dropped by an interrupt, or released after an error
            return []
        return self._rest(utterance, with_audio=not interrupted)

    def interrupt(self) -> list[Frame]:
        """Barge-in: drop every utterance's held audio; returns their held ``TTSStoppedFrame``s."""
        self._interrupted_through = self._last_number
        dropped, self._utterances = self._utterances, {}
        return [u.stopped for u in dropped.values() if u.stopped is not None]

    def release_all(self) -> list[Frame]:
        """Everything held, in order (no more video will come: an error, or the end)."""
        held, self._utterances = self._utterances, {}
        return [frame for utterance in held.values() for frame in self._rest(utterance, with_audio=True)]

    def _open_utterance(self) -> _Utterance | None:
        last = self._utterances.get(self._last_number)
        return last if last is not None and last.open else None

    def _take(self, utterance: _Utterance, samples_16k: int) -> TTSAudioRawFrame | None:
        """Release the audio up to the end of what the frames so far cover (at most all held).
        Counted from the utterance's start, so rounding never accumulates."""
        utterance.covered_samples_16k += samples_16k
        covered_bytes = utterance.covered_samples_16k * self.sample_rate_hz // SAMPLE_RATE_HZ * _PCM16_BYTES
        count = min(len(utterance.audio), covered_bytes - utterance.released_bytes)
        return self._release(utterance, count) if count > 0 else None

    def _rest(self, utterance: _Utterance, *, with_audio: bool) -> list[Frame]:
        frames: list[Frame] = []
        if with_audio and utterance.audio:
            frames.append(self._release(utterance, len(utterance.audio)))
        if utterance.stopped is not None:
            frames.append(utterance.stopped)
        return frames

    def _release(self, utterance: _Utterance, count: int) -> TTSAudioRawFrame:
        audio = bytes(utterance.audio[:count])
        del utterance.audio[:count]
        utterance.released_bytes += count
        return TTSAudioRawFrame(
            audio=audio, sample_rate=self.sample_rate_hz, num_channels=1, context_id=utterance.context_id
        )


class DittoVideoService(FrameProcessor):
    """Animates a portrait with the TTS audio through a Ditto server; see the module docstring.

    Args:
        server_url: the server's base URL, e.g. ``ws://127.0.0.1:8000``.
        portrait: the source image: a local file, uploaded when the session starts (read now), or
            with ``portrait_on_server`` a path inside the server's ``--media_root``.
        client_id: the session's id (``[A-Za-z0-9._~-]{1,64}``); default ``pipecat-`` and 12 random
            hex digits.
        sample_rate_hz: the TTS audio's rate; default the pipeline's ``audio_out_sample_rate``.
            Mono PCM16 at another rate or channel count is passed on without video.
        seed: the server's seed for blinks and sway (reproducible video).
        connect_timeout_s: longest wait for the WebSocket to open.
        finish_timeout_s: at ``EndFrame``, longest wait for the server to send the rest.
        keepalive_s: with nothing to send for this long an empty audio chunk is sent, so the server's
            idle timeout (30 s without a message) does not end the session while the user talks.

    Raises:
        FileNotFoundError: ``portrait`` is not a local file (and not ``portrait_on_server``).
        ProtocolError: ``client_id`` is not a valid id.
    """

    def __init__(
        self,
        *,
        server_url: str,
        portrait: str | os.PathLike[str],
        portrait_on_server: bool = False,
        client_id: str | None = None,
        sample_rate_hz: int | None = None,
        seed: int | None = None,
        connect_timeout_s: float = 30.0,
        finish_timeout_s: float = 10.0,
        keepalive_s: float = 10.0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self._client_id = client_id or f"pipecat-{secrets.token_hex(6)}"
        msg.check_client_id(self._client_id)
        self._url = f"{server_url.rstrip('/')}/ws/{self._client_id}"
        if portrait_on_server:
            self._source = {"kind": "path", "path": str(portrait)}
        else:
            path = Path(portrait)
            self._source = msg.encode_upload(path.name, path.read_bytes())
        self._requested_sample_rate_hz = sample_rate_hz
        self._seed = seed
        self._connect_timeout_s = connect_timeout_s
        self._finish_timeout_s = finish_timeout_s
        self._keepalive_s = keepalive_s
        self._pairing: AudioVideoPairing | None = None  # made in setup(), once the rate is known
        self._outbox: asyncio.Queue[str | bytes] = asyncio.Queue()  # to the server, sent in order
        self._chunks_queued = 0
        self._session_task: asyncio.Task | None = None
        self._sender_task: asyncio.Task | None = None
        self._video_failed = False  # after an error every frame passes through
        self._warned_format = False

    @property
    def _paired(self) -> AudioVideoPairing:
        """The pairing made in ``setup()``; Pipecat calls ``setup()`` before any frame arrives."""
        if self._pairing is None:
            raise RuntimeError("DittoVideoService used before setup()")
        return self._pairing

    async def setup(self, setup: FrameProcessorSetup) -> None:
        await super().setup(setup)
        self._pairing = AudioVideoPairing(self._requested_sample_rate_hz or setup.audio_out_sample_rate)

    async def cleanup(self) -> None:
        await super().cleanup()
        await self._close()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        downstream = direction == FrameDirection.DOWNSTREAM
        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            self._session_task = self.create_task(self._run_session(), f"{self}::session")
        elif isinstance(frame, TTSAudioRawFrame) and downstream:
            await self._handle_audio(frame)
        elif isinstance(frame, TTSStoppedFrame) and downstream:
            await self._handle_tts_stopped(frame)
        elif isinstance(frame, InterruptionFrame):
            await self._handle_interruption(frame, direction)
        elif isinstance(frame, EndFrame):
            await self._finish()
            await self.push_frame(frame, direction)
        elif isinstance(frame, CancelFrame):
            await self._close()
            await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)

    # --- frames from the pipeline ------------------------------------------------------------

    async def _handle_audio(self, frame: TTSAudioRawFrame) -> None:
        if self._video_failed:
            await self.push_frame(frame)
            return
        if frame.sample_rate != self._paired.sample_rate_hz or frame.num_channels != 1:
            if not self._warned_format:
                self._warned_format = True
                logger.warning(
                    "TTS audio at %d Hz, %d channel(s) is not the session's %d Hz mono: passed on without video",
                    frame.sample_rate,
                    frame.num_channels,
                    self._paired.sample_rate_hz,
                )
            await self.push_frame(frame)
            return
        self._paired.hold_audio(frame)
        self._outbox.put_nowait(pack_audio_chunk(AudioChunkHeader(SampleType.INT16, self._chunks_queued), frame.audio))
        self._chunks_queued += 1

    async def _handle_tts_stopped(self, frame: TTSStoppedFrame) -> None:
        if self._video_failed or self._paired.hold_stop(frame) is None:
            await self.push_frame(frame)
            return
        self._outbox.put_nowait(_END_OF_UTTERANCE)

    async def _handle_interruption(self, frame: InterruptionFrame, direction: FrameDirection) -> None:
        if not self._video_failed and self._paired.speaking:
            # Queued behind the audio already queued, so the server counts utterances as we do.
            self._outbox.put_nowait(_INTERRUPT)
        released = self._paired.interrupt()
        await self.push_frame(frame, direction)
        for stopped in released:
            await self.push_frame(stopped)

    async def _finish(self) -> None:
        """End of the pipeline: let the server render what it has, then push what is left."""
        if self._session_task is not None and not self._video_failed:
            self._outbox.put_nowait(_END_OF_AUDIO)
            _, pending = await asyncio.wait({self._session_task}, timeout=self._finish_timeout_s)
            if pending:
                logger.warning(
                    "The Ditto server did not finish within %.0f s; ending without the rest of the video",
                    self._finish_timeout_s,
                )
        await self._close()
        for frame in self._paired.release_all():
            await self.push_frame(frame)

    async def _close(self) -> None:
        for task in (self._sender_task, self._session_task):
            if task is not None and not task.done():
                await self.cancel_task(task)
        self._sender_task = self._session_task = None

    # --- the server session --------------------------------------------------------------------

    def _start_message(self) -> dict:
        start = {
            "type": "start_streaming",
            "live": True,
            "source": self._source,
            "audio_format": {"sample_rate_hz": self._paired.sample_rate_hz, "channels": 1, "sample_type": "int16"},
        }
        return start if self._seed is None else {**start, "seed": self._seed}

    async def _run_session(self) -> None:
        """Connect, start the live session, then turn what the server sends into frames until
        ``streaming_completed`` (after our ``end_of_audio``), an error or a lost connection."""
        try:
            async with websockets.connect(self._url, max_size=None, open_timeout=self._connect_timeout_s) as ws:
                await ws.send(json.dumps(self._start_message()))
                async for message in ws:
                    if isinstance(message, bytes):
                        await self._handle_video(message)
                        continue
                    reply = msg.parse_server_message(message)
                    if isinstance(reply, msg.StreamingStarted):
                        logger.info("Ditto live session %s started (backend %s)", self._client_id, reply.backend)
                        self._sender_task = self.create_task(self._send(ws), f"{self}::sender")
                    elif isinstance(reply, msg.PlaybackFinished):
                        for frame in self._paired.finished(reply.utterance, interrupted=reply.interrupted):
                            await self.push_frame(frame)
                    elif isinstance(reply, msg.StreamingCompleted):
                        return
                    elif isinstance(reply, msg.Error):
                        await self._fail(reply)
                        return
                await self._fail(error_from_close(ws.protocol.close_rcvd))  # closed before completing
        except websockets.exceptions.ConnectionClosed as exc:
            await self._fail(error_from_close(exc.rcvd))
        except (OSError, TimeoutError, websockets.exceptions.WebSocketException, ProtocolError) as exc:
            await self._fail(
                msg.Error(code=ErrorCode.INTERNAL, message=f"connection to {self._url} failed: {exc}"),
                category=ErrorCategory.CONNECTIVITY,
            )

    async def _send(self, ws: ClientConnection) -> None:
        """Send the outbox in order (audio queued before ``streaming_started`` included)."""
        keepalive = pack_audio_chunk(AudioChunkHeader(SampleType.INT16), b"")
        while True:
            try:
                item = await asyncio.wait_for(self._outbox.get(), self._keepalive_s)
            except TimeoutError:
                item = keepalive
            try:
                await ws.send(item)
            except websockets.exceptions.ConnectionClosed:
                return  # the receive loop reports why
            if item == _END_OF_AUDIO:
                return

    async def _handle_video(self, message: bytes) -> None:
        header, payload = FrameHeader.unpack(message)
        if header.kind != FrameKind.JPEG:
            return  # an audio echo: this session does not ask for them
        image = await asyncio.to_thread(_decode_jpeg, bytes(payload))  # ~ms per frame: off the event loop
        for frame in self._paired.video(header, image):
            await self.push_frame(frame)

    async def _fail(self, error: msg.Error, category: ErrorCategory = ErrorCategory.SERVER) -> None:
        """No more video: report it, and let the audio through (held and to come)."""
        self._video_failed = True
        held = self._paired.release_all()
        await self.push_error(
            f"Ditto video stopped, the audio goes on without it: [{error.code.value}] {error.message}",
            category=category,
        )
        for frame in held:
            await self.push_frame(frame)


def _decode_jpeg(jpeg: bytes) -> OutputImageRawFrame:
    with Image.open(io.BytesIO(jpeg)) as image:
        rgb = image.convert("RGB")
    frame = OutputImageRawFrame(image=rgb.tobytes(), size=rgb.size, format="RGB")
    frame.sync_with_audio = True  # shown when the audio pushed before it has played
    return frame

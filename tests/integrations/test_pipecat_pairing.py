"""AudioVideoPairing on its own (no server): which audio each video frame releases."""

from __future__ import annotations

import os

import pytest

if os.environ.get("DITTO_REQUIRE_PIPECAT") != "1":  # CI: a missing pipecat fails the import below
    pytest.importorskip("pipecat", reason="pipecat-ai is not installed (pip install -r requirements-pipecat.txt)")

from pipecat.frames.frames import OutputImageRawFrame, TTSAudioRawFrame, TTSStoppedFrame  # noqa: E402

from ditto.integrations.pipecat import AudioVideoPairing  # noqa: E402
from ditto.protocol.frames import FrameFlags, FrameHeader  # noqa: E402

RATE_HZ = 24_000
FRAME_BYTES = RATE_HZ // 25 * 2


def audio(n_bytes: int, context_id: str = "reply") -> TTSAudioRawFrame:
    return TTSAudioRawFrame(bytes(i % 251 for i in range(n_bytes)), RATE_HZ, 1, context_id=context_id)


def image() -> OutputImageRawFrame:
    return OutputImageRawFrame(b"\0" * 12, (2, 2), "RGB")


def frame(index: int, utterance: int, flags: FrameFlags = FrameFlags.NONE) -> FrameHeader:
    return FrameHeader(index, index * 40, index * 640, 640, flags, utterance=utterance)


def released_audio(frames) -> list[int]:
    return [len(f.audio) for f in frames if isinstance(f, TTSAudioRawFrame)]


def test_each_frame_releases_its_40_ms_and_the_tail_frame_the_rest():
    pairing = AudioVideoPairing(RATE_HZ)
    spoken = audio(2 * FRAME_BYTES + 100)
    assert pairing.hold_audio(spoken) == 1
    out = [f for i in range(3) for f in pairing.video(frame(i, 1), image())]
    assert released_audio(out) == [FRAME_BYTES, FRAME_BYTES, 100]
    assert [type(f) for f in out[:2]] == [OutputImageRawFrame, TTSAudioRawFrame]
    assert b"".join(f.audio for f in out if isinstance(f, TTSAudioRawFrame)) == spoken.audio


def test_idle_frames_release_nothing_and_frames_skipped_for_a_slow_client_keep_their_audio():
    pairing = AudioVideoPairing(RATE_HZ)
    pairing.hold_audio(audio(4 * FRAME_BYTES))
    assert pairing.video(frame(0, 0, FrameFlags.IDLE), image())[1:] == []
    assert released_audio(pairing.video(frame(1, 1), image())) == [FRAME_BYTES]
    assert released_audio(pairing.video(frame(4, 1), image())) == [3 * FRAME_BYTES]  # frames 2, 3 skipped


def test_tts_stopped_is_held_until_playback_finished_and_utterances_are_numbered_at_their_first_audio():
    pairing = AudioVideoPairing(RATE_HZ)
    assert pairing.hold_stop(TTSStoppedFrame()) is None  # nothing said: nothing to hold
    pairing.hold_audio(audio(FRAME_BYTES + 10, "one"))
    stop = TTSStoppedFrame(context_id="one")
    assert pairing.hold_stop(stop) == 1
    assert pairing.hold_audio(audio(FRAME_BYTES, "two")) == 2
    assert released_audio(pairing.video(frame(0, 1), image())) == [FRAME_BYTES]
    rest = pairing.finished(1, interrupted=False)
    assert released_audio(rest) == [10] and rest[-1] is stop
    assert pairing.speaking  # utterance 2 still holds its audio


def test_an_interrupt_drops_held_audio_and_the_interrupted_frames_still_in_flight():
    pairing = AudioVideoPairing(RATE_HZ)
    pairing.hold_audio(audio(5 * FRAME_BYTES))
    stop = TTSStoppedFrame()
    pairing.hold_stop(stop)
    assert pairing.interrupt() == [stop] and not pairing.speaking
    assert pairing.video(frame(0, 1), image()) == []
    assert pairing.finished(1, interrupted=True) == []
    assert pairing.hold_audio(audio(FRAME_BYTES)) == 2
    assert released_audio(pairing.video(frame(1, 2), image())) == [FRAME_BYTES]


def test_a_server_without_utterance_numbers_pairs_speech_with_the_oldest_held_audio():
    pairing = AudioVideoPairing(RATE_HZ)
    pairing.hold_audio(audio(FRAME_BYTES + 4))
    assert released_audio(pairing.video(frame(0, 0), image())) == [FRAME_BYTES]
    assert released_audio(pairing.release_all()) == [4]


def test_rates_that_do_not_divide_evenly_release_all_audio_without_drift():
    odd = AudioVideoPairing(12_345)  # 493.8 samples a frame: counted from the start, not rounded per frame
    odd.hold_audio(TTSAudioRawFrame(b"\1\0" * 12_345, 12_345, 1))
    sizes = [n for i in range(25) for n in released_audio(odd.video(frame(i, 1), image()))]
    assert sum(sizes) == 2 * 12_345 and set(sizes) <= {986, 988}

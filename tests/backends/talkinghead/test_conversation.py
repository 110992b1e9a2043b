"""Conversations on the Ditto backend (CPU, stand-in renderer): idle, flush and interrupt keep one
frame timeline, flush continues the motion, interrupt eases the face back instead of popping.

Most tests use ``online_backend`` (overlap_v2 75: 5 new frames per LMDM window), the cfg a live
conversation runs; the offline cfg (``fast_backend``) gets the same calls once.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from ditto import SAMPLES_PER_FRAME
from ditto.backends.talkinghead import stream as ditto_stream
from tests.backends.talkinghead.conftest import speech_like


def fed(stream, audio: np.ndarray, chunk: int = 1600) -> list:
    """Every frame ``stream.feed`` yields for ``audio`` fed in chunks."""
    return [frame for start in range(0, len(audio), chunk) for frame in stream.feed(audio[start : start + chunk])]


def step(a, b) -> float:
    """Mean absolute pixel change between two frames."""
    return float(np.abs(a.image.astype(np.int16) - b.image.astype(np.int16)).mean())


def test_flush_yields_the_utterance_and_the_next_one_continues(online_backend, avatar) -> None:
    stream = online_backend.open_stream(avatar, seed=1)
    first = fed(stream, speech_like(0.3)[:4500])  # 7.03 frames
    flushed = list(stream.flush())
    assert [f.index for f in first + flushed] == list(range(math.ceil(4500 / SAMPLES_PER_FRAME)))
    assert list(stream.flush()) == []
    second = fed(stream, speech_like(0.4, seed=1)) + list(stream.finish())
    frames = first + flushed + second
    assert [f.index for f in frames] == list(range(8 + 10)) and not any(f.idle for f in frames)
    stream.close()  # how the motion continues: test_pipeline_math.py, test_online_flush_*


def test_idle_frames_are_flagged_and_continue_the_timeline(online_backend, avatar) -> None:
    stream = online_backend.open_stream(avatar, seed=2)
    talk = fed(stream, speech_like(0.2)[:3000])  # 4.7 frames: idle completes frame 4 first
    idle = list(stream.idle(12)) + list(stream.idle(12))  # silence through the normal path
    assert idle  # out before the flush once the look-ahead silence has arrived
    idle += list(stream.flush())
    frames = talk + idle
    assert [f.index for f in frames] == list(range(5 + 24))
    assert [f.idle for f in frames] == [False] * 5 + [True] * 24
    stream.close()


def _interrupted(backend, avatar, shown: int = 6):
    """A stream that showed ``shown`` frames of an utterance, then was interrupted and idled."""
    stream = backend.open_stream(avatar, seed=3)
    speaking = stream.feed(speech_like(1.0, seed=3))
    before = [next(speaking) for _ in range(shown)]
    assert stream.interrupt() == shown
    assert list(speaking) == []  # nothing stale: the rest of the utterance and its frames in flight are gone
    after = list(stream.idle(20)) + list(stream.flush())
    stream.close()
    return before, after


def test_interrupt_eases_the_face_back_instead_of_cutting(online_backend, avatar, monkeypatch) -> None:
    ease = ditto_stream.INTERRUPT_EASE_FRAMES
    before, eased = _interrupted(online_backend, avatar)
    monkeypatch.setattr(ditto_stream, "INTERRUPT_EASE_FRAMES", 0)
    _, cut = _interrupted(online_backend, avatar)
    assert [f.index for f in eased] == [f.index for f in cut] == list(range(6, 26))
    assert all(f.idle for f in eased)
    # the hard cut jumps to the restarted (neutral) motion at once; the ease starts where the face was
    pop = step(before[-1], cut[0])
    assert pop > 1.0
    eased_steps = [step(a, b) for a, b in zip([before[-1]] + eased[:ease], eased[:ease])]
    assert eased_steps[0] < 0.2 * pop and max(eased_steps) < 0.5 * pop
    for a, b in zip(eased[ease - 1 :], cut[ease - 1 :]):  # then the same neutral restart
        np.testing.assert_array_equal(a.image, b.image)


def test_idle_between_utterances_comes_at_once_from_the_neutral_motion(online_backend, avatar) -> None:
    stream = online_backend.open_stream(avatar, seed=6)
    talk = fed(stream, speech_like(0.3)) + list(stream.flush())
    model_work = {name: s.items for name, s in online_backend.stage_stats().items() if name != "render"}
    idle = list(stream.idle(12))
    assert [f.index for f in idle] == list(range(8, 20)) and all(f.idle for f in idle)  # no look-ahead wait
    assert {name: s.items for name, s in online_backend.stage_stats().items() if name != "render"} == model_work
    ease = ditto_stream.INTERRUPT_EASE_FRAMES
    steps = [step(a, b) for a, b in zip([talk[-1]] + idle, idle)]
    assert max(steps[:ease]) > 0  # eased from the utterance's last motion...
    assert max(steps[ease:]) < 0.5 * max(steps[:ease])  # ...to the neutral face (blinks aside)
    speech = fed(stream, speech_like(0.4, seed=6)) + list(stream.finish())  # the recursion restarts at 20
    assert [f.index for f in speech] == list(range(20, 30)) and not any(f.idle for f in speech)
    assert step(idle[-1], speech[0]) < 0.5 * step(talk[-1], idle[-1])  # eased in from neutral, no pop
    stream.close()


def test_a_conversation_is_one_timeline(online_backend, avatar) -> None:
    """feed / flush / feed / interrupt / idle / feed / finish."""
    stream = online_backend.open_stream(avatar, seed=4)
    frames = fed(stream, speech_like(0.3)) + list(stream.flush())
    assert len(frames) == 8  # 7.5 frames
    speaking = stream.feed(speech_like(0.8, seed=4))
    frames += [next(speaking) for _ in range(3)]
    assert stream.interrupt() == 11
    frames += list(speaking) + list(stream.idle(10))
    frames += fed(stream, speech_like(0.4, seed=5)) + list(stream.finish())
    assert [f.index for f in frames] == list(range(11 + 10 + 10))
    assert [f.idle for f in frames] == [False] * 11 + [True] * 10 + [False] * 10
    with pytest.raises(RuntimeError):
        stream.interrupt()
    stream.close()


def test_the_offline_cfg_takes_the_same_calls(fast_backend, avatar) -> None:
    stream = fast_backend.open_stream(avatar, seed=5)
    assert fed(stream, speech_like(0.1)) == []  # offline: a clip is generated when it is complete
    flushed = list(stream.flush())
    assert [f.index for f in flushed] == [0, 1, 2]
    assert list(stream.feed(speech_like(0.12, seed=1))) == []
    clip = stream.flush()
    shown = next(clip)
    assert stream.interrupt() == 4 and list(clip) == []
    idle = list(stream.idle(2)) + list(stream.flush())
    rest = list(stream.feed(speech_like(0.04))) + list(stream.finish())
    frames = flushed + [shown] + idle + rest
    assert [f.index for f in frames] == list(range(3 + 1 + 2 + 1))
    assert [f.idle for f in frames] == [False] * 4 + [True] * 2 + [False]
    stream.close()

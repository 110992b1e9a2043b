"""The live session's I/O-free protocol (:class:`~ditto.server.conversation.Conversation`): messages and
an injected clock in, actions out; no sockets, threads or sleeps."""

from __future__ import annotations

import numpy as np
import pytest

from ditto.errors import ErrorCode, MediaError, ProtocolError, SessionTimeout
from ditto.protocol import messages as msg
from ditto.server.conversation import (
    Conversation,
    ConversationLimits,
    DiscardUnsentFrames,
    DropQueuedAudio,
    FeedAudio,
    Finish,
    Flush,
    Idle,
    Interrupt,
    Send,
)

LIMITS = ConversationLimits(idle_after_s=0.2, idle_timeout_s=30.0, max_audio_seconds=600.0)
FRAME = 640


def audio(frames: float) -> np.ndarray:
    return np.full(int(frames * FRAME), 0.1, np.float32)


def sends(actions) -> list:
    return [a.message for a in actions if isinstance(a, Send)]


def of(kind, actions) -> list:
    return [a for a in actions if isinstance(a, kind)]


def send_frames(c: Conversation, utterance: int, indices) -> list:
    """The writer handing frames of ``utterance`` to the socket; the control messages due after them."""
    return [m for i in indices for m in sends(c.frame_sent(utterance, i))]


def test_utterances_are_numbered_from_the_first_chunk_after_each_end():
    c = Conversation(LIMITS, now=0.0)
    feeds = c.receive_audio(audio(2), 0.0) + c.receive_audio(audio(1.5), 0.01)
    assert [f.utterance for f in feeds] == [1, 1]
    assert c.receive_end_of_utterance(0.02) == [Flush(1)]
    second = c.receive_audio(audio(1), 0.03)
    assert [f.utterance for f in second] == [2]
    interrupt = c.receive_interrupt(0.04)
    assert of(Interrupt, interrupt) and of(DiscardUnsentFrames, interrupt) == [DiscardUnsentFrames(2)]
    assert c.rewound(4, 0.05) == []
    assert [f.utterance for f in c.receive_audio(audio(1), 0.06)] == [3]
    assert c.receive_audio(np.zeros(0, np.float32), 0.07) == []  # an empty chunk opens nothing


def test_end_of_utterance_and_interrupt_are_no_ops_before_audio_and_twice_in_a_row():
    c = Conversation(LIMITS, now=0.0)
    assert c.receive_end_of_utterance(0.0) == [] and c.receive_interrupt(0.0) == []
    c.receive_audio(audio(3), 0.1)
    assert c.receive_end_of_utterance(0.1) == [Flush(1)]
    assert c.receive_end_of_utterance(0.1) == []  # twice in a row
    assert send_frames(c, 1, range(3)) == [msg.PlaybackStarted(utterance=1)]
    assert sends(c.utterance_end_sent(1)) == [msg.PlaybackFinished(utterance=1, position_ms=120)]
    assert c.receive_interrupt(0.3) == []  # nothing playing any more
    c.receive_audio(audio(3), 0.4)
    assert of(Interrupt, c.receive_interrupt(0.5))
    assert c.receive_interrupt(0.5) == []  # twice in a row


def test_playback_events_come_with_the_frames_sent():
    c = Conversation(LIMITS, now=0.0)
    c.receive_audio(audio(2.5), 0.0)  # 100 ms: 3 frames, the last one padded
    assert send_frames(c, 0, [0]) == []  # idle frames start nothing
    assert send_frames(c, 1, [0]) == [msg.PlaybackStarted(utterance=1)]
    assert send_frames(c, 1, [1]) == []
    c.receive_end_of_utterance(0.1)
    assert send_frames(c, 1, [2]) == []
    assert sends(c.utterance_end_sent(1)) == [msg.PlaybackFinished(utterance=1, position_ms=100, interrupted=False)]
    assert send_frames(c, 1, [3]) == []  # nothing after its end


def test_playback_position_counts_only_frames_sent():
    c = Conversation(LIMITS, now=0.0)
    c.receive_audio(audio(10), 0.0)
    c.receive_end_of_utterance(0.0)
    send_frames(c, 1, [0, 1, 2, 5])  # frames 3, 4 and 6-9 skipped for a slow client: 6 frames sent at most
    assert sends(c.utterance_end_sent(1)) == [msg.PlaybackFinished(utterance=1, position_ms=240)]


def test_utterance_with_no_frame_sent_gets_no_playback_events():
    c = Conversation(LIMITS, now=0.0)
    c.receive_audio(audio(2), 0.0)
    c.receive_end_of_utterance(0.0)
    assert c.utterance_end_sent(1) == []


def test_interrupt_drops_queued_audio_and_frames_and_finishes_the_playing_utterance():
    c = Conversation(LIMITS, now=0.0)
    c.receive_audio(audio(50), 0.0)  # 2 s sent at once
    send_frames(c, 1, range(10))
    actions = c.receive_interrupt(0.5)
    assert actions == [
        DropQueuedAudio(),
        DiscardUnsentFrames(1),
        Send(msg.PlaybackFinished(utterance=1, position_ms=400, interrupted=True)),
        Interrupt(),
    ]
    assert send_frames(c, 1, [10]) == []  # a frame already on its way is not reported
    assert c.utterance_end_sent(1) == []


def test_interrupt_before_the_first_frame_is_sent_is_still_answered():
    c = Conversation(LIMITS, now=0.0)
    c.receive_audio(audio(5), 0.0)
    actions = c.receive_interrupt(0.01)
    assert sends(actions) == [msg.PlaybackFinished(utterance=1, position_ms=0, interrupted=True)]
    assert of(Interrupt, actions)
    assert c.frame_sent(1, 0) == []  # a frame of it that raced the interrupt starts nothing


def test_interrupt_after_end_of_utterance_ends_the_tail_still_playing():
    c = Conversation(LIMITS, now=0.0)
    c.receive_audio(audio(20), 0.0)
    c.receive_end_of_utterance(0.0)
    send_frames(c, 1, range(5))
    assert sends(c.receive_interrupt(0.3)) == [msg.PlaybackFinished(utterance=1, position_ms=200, interrupted=True)]


def test_input_while_rewinding_waits_for_the_streams_next_frame():
    c = Conversation(LIMITS, now=0.0)
    c.receive_audio(audio(50), 0.0)
    c.receive_interrupt(1.0)
    assert c.receive_audio(audio(2), 1.001) == []  # utterance 2, held: where it starts is not known yet
    assert c.receive_end_of_utterance(1.002) == []
    assert c.tick(1.5) == []  # no idling either
    replayed = c.rewound(30, 1.003)
    assert [type(a) for a in replayed] == [FeedAudio, Flush]
    assert replayed[0].utterance == 2 and replayed[1] == Flush(2)


def test_a_second_interrupt_while_rewinding_drops_what_was_held():
    c = Conversation(LIMITS, now=0.0)
    c.receive_audio(audio(50), 0.0)
    assert of(Interrupt, c.receive_interrupt(1.0))
    c.receive_audio(audio(2), 1.001)
    second = c.receive_interrupt(1.002)
    assert second == [
        DropQueuedAudio(),
        DiscardUnsentFrames(2),  # no second stream.interrupt()
        Send(msg.PlaybackFinished(utterance=2, position_ms=0, interrupted=True)),
    ]
    assert c.rewound(30, 1.003) == []
    assert [f.utterance for f in c.receive_audio(audio(1), 1.004)] == [3]


def test_idle_starts_when_audio_is_overdue_and_goes_at_real_time_pace():
    c = Conversation(LIMITS, now=0.0)
    c.receive_audio(audio(10.25), 0.0)  # 0.41 s of audio, all at t=0
    assert c.tick(0.15) == [] and c.tick(0.5) == []  # audio still covers the clock (minus idle_after)
    first = c.tick(0.63)  # due: 0.43 s of media
    assert [type(a) for a in first] == [FeedAudio, Idle]
    assert len(first[0].samples) == 480 and first[0].utterance == 1  # frame 10 completed with silence
    assert first[1].frames == 1
    frames = [a.frames for t in np.arange(0.65, 2.0, 0.02) for a in of(Idle, c.tick(float(t)))]
    assert sum(frames) == pytest.approx(1.8 * 25 - 12, abs=1) and max(frames) == 1  # 25 fps, no burst


def test_no_idle_while_a_chunk_is_expected_soon():
    c = Conversation(LIMITS, now=0.0)
    for k in range(10):  # a real-time client: 40 ms chunks, 40 ms apart, the last one a bit late
        c.receive_audio(audio(1), k * 0.04)
    assert c.tick(0.55) == []  # audio is 0.15 s behind the clock, but only 0.19 s since the last chunk
    assert of(Idle, c.tick(0.61))


def test_idle_continues_after_an_utterance_with_no_gap():
    c = Conversation(LIMITS, now=0.0)
    c.receive_audio(audio(25), 0.0)  # 1 s at once
    c.receive_end_of_utterance(0.0)
    assert c.tick(1.19) == []  # the utterance plays until 1 s of media (+ idle_after)
    assert of(Idle, c.tick(1.21)) == [Idle(1, 0.0, 1.21)]


def test_interrupt_re_anchors_the_media_clock():
    c = Conversation(LIMITS, now=0.0)
    c.receive_audio(audio(250), 0.0)  # 10 s sent at once
    c.receive_interrupt(1.0)
    c.rewound(40, 1.0)  # the stream resumes at frame 40 (1.6 s of media, ahead of the clock)
    idle = [(a.frames, a.clock_origin) for t in np.arange(1.02, 2.01, 0.02) for a in of(Idle, c.tick(float(t)))]
    assert idle[0] == (1, pytest.approx(1.0 - 40 / 25 - 0.2))  # right away, from the new position
    assert sum(n for n, _ in idle) == pytest.approx(25, abs=1) and max(n for n, _ in idle) == 1
    assert c.media_s == pytest.approx(1.6 + 1.0, abs=0.05)  # real time from the new position: no burst


def test_interrupt_behind_the_clock_does_not_burst_to_catch_up():
    c = Conversation(LIMITS, now=0.0)
    c.receive_audio(audio(250), 0.0)
    c.receive_interrupt(5.0)
    c.rewound(10, 5.0)  # the stream had rendered only 10 frames (0.4 s) by 5 s
    assert [a.frames for a in of(Idle, c.tick(5.02))] == [1]


def test_timeout_before_end_of_audio_only():
    c = Conversation(LIMITS, now=0.0)
    c.receive_audio(audio(1), 1.0)
    c.tick(30.9)
    with pytest.raises(SessionTimeout):
        c.tick(31.1)
    c = Conversation(LIMITS, now=0.0)
    c.receive_audio(audio(1), 1.0)
    c.receive_end_of_audio(2.0)
    assert c.tick(100.0) == []


def test_no_idle_and_no_timeout_reset_needed_before_the_first_audio():
    c = Conversation(LIMITS, now=0.0)
    assert c.tick(10.0) == []
    c.receive_interrupt(20.0)  # a message: the timeout counts from here
    assert c.tick(49.9) == []
    with pytest.raises(SessionTimeout):
        c.tick(50.1)


def test_audio_over_the_limit():
    c = Conversation(ConversationLimits(0.2, 30.0, max_audio_seconds=1.0), now=0.0)
    c.receive_audio(audio(25), 0.0)
    with pytest.raises(MediaError) as raised:
        c.receive_audio(audio(1), 0.1)
    assert raised.value.code == ErrorCode.AUDIO_TOO_LONG


def test_audio_and_idle_time_over_the_limit():
    c = Conversation(ConversationLimits(0.2, 30.0, max_audio_seconds=1.0), now=0.0)
    c.receive_audio(audio(5), 0.0)
    with pytest.raises(MediaError) as raised:
        for t in np.arange(0.0, 2.0, 0.02):
            c.tick(float(t))
    assert raised.value.code == ErrorCode.AUDIO_TOO_LONG


def test_end_of_audio_finishes_the_open_utterance_and_refuses_what_follows():
    c = Conversation(LIMITS, now=0.0)
    c.receive_audio(audio(2.5), 0.0)
    assert c.receive_end_of_audio(0.1) == [Finish(1)]
    assert c.media_s == pytest.approx(3 * 0.04)
    for receive in (
        lambda: c.receive_audio(audio(1), 0.2),
        lambda: c.receive_end_of_utterance(0.2),
        lambda: c.receive_interrupt(0.2),
        lambda: c.receive_end_of_audio(0.2),
    ):
        with pytest.raises(ProtocolError) as raised:
            receive()
        assert raised.value.code == ErrorCode.INVALID_STATE
    c = Conversation(LIMITS, now=0.0)
    c.receive_audio(audio(2), 0.0)
    c.receive_end_of_utterance(0.0)
    assert c.receive_end_of_audio(0.1) == [Finish(None)]  # no utterance open at the end


def test_frames_of_each_utterance_start_at_a_frame_boundary():
    c = Conversation(LIMITS, now=0.0)
    c.receive_audio(audio(1.5), 0.0)
    c.receive_end_of_utterance(0.0)
    assert c.media_s == pytest.approx(0.08)  # the padded tail
    c.receive_audio(audio(1), 0.0)  # utterance 2 is frame 2 exactly
    c.receive_end_of_utterance(0.0)
    assert send_frames(c, 2, [2]) == [msg.PlaybackStarted(utterance=2)]
    assert sends(c.utterance_end_sent(2)) == [msg.PlaybackFinished(utterance=2, position_ms=40)]

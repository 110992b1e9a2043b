"""The live client's side of conversations (#9) against a server that speaks the contract
(:mod:`tests.client.contract_server`): ``interrupt`` and ``end_of_utterance`` go out where asked,
and the playback events, utterances and send times that come back are recorded."""

from __future__ import annotations

import asyncio
import time

from ditto.client.connection import PcmAudio, run_live_session
from ditto.client.stats import session_stats
from ditto.protocol import messages as msg
from tests.client.contract_server import ContractServer
from tests.server.helpers import speech_like

RATE_HZ = 16000


def one_second_of_speech() -> PcmAudio:
    pcm = (speech_like(1.0, rate=RATE_HZ) * 32767).astype("<i2").tobytes()
    return PcmAudio(pcm, RATE_HZ, 1)


def live(server: ContractServer, **options):
    return asyncio.run(
        run_live_session(
            server.ws,
            "c1",
            one_second_of_speech(),
            "face.png",
            timeout_s=20,
            chunk_ms=100,
            realtime=False,
            upload=False,
            **options,
        )
    )


def sent_audio(received: list) -> list[int]:
    return [item[1] for item in received if isinstance(item, tuple)]


def test_interrupt_stops_the_audio_and_ends_after_the_interrupted_playback(contract_server):
    result = live(contract_server, interrupt_at_s=0.45, idle_after_interrupt_s=0.0)

    assert result.ok, result.error
    received = contract_server.received
    assert sum(sent_audio(received)) == int(0.45 * RATE_HZ)  # cut exactly there, the rest never sent
    assert sent_audio(received)[-1] == int(0.05 * RATE_HZ)
    assert [m for m in received if isinstance(m, str)] == ["start_streaming", "interrupt", "end_of_audio"]
    finished = [e.message for e in result.playback if isinstance(e.message, msg.PlaybackFinished)]
    assert [(f.utterance, f.interrupted) for f in finished] == [(1, True)]
    assert result.interrupt_sent_s is not None
    # 11 speech frames (11 x 40 ms of 450 ms) + the one in flight, then the 3 idle ones
    assert [f.utterance for f in result.frames] == [1] * 12 + [0] * 3
    assert [f.idle for f in result.frames][-3:] == [True] * 3

    stats = session_stats(result).interrupt
    assert stats is not None and stats.to_last_speech_frame_ms is not None
    assert 0 <= stats.to_last_speech_frame_ms <= stats.to_playback_finished_ms < 5000
    assert stats.max_gap_after_ms is not None and 0 <= stats.max_gap_after_ms < 5000


def test_end_of_utterance_splits_the_audio_into_numbered_utterances(contract_server):
    result = live(contract_server, utterance_ends_s=[0.3])

    assert result.ok, result.error
    received = contract_server.received
    kinds = [m if isinstance(m, str) else "audio" for m in received]
    cut = kinds.index("end_of_utterance")
    assert sum(sent_audio(received[:cut])) == int(0.3 * RATE_HZ)  # the chunk reaching 0.3 s is cut there
    assert sum(sent_audio(received)) == RATE_HZ and kinds[-1] == "end_of_audio"
    events = [(type(e.message).__name__, e.message.utterance) for e in result.playback]
    assert events == [("PlaybackStarted", 1), ("PlaybackFinished", 1), ("PlaybackStarted", 2), ("PlaybackFinished", 2)]
    arrivals = [e.arrival_s for e in result.playback]
    assert arrivals == sorted(arrivals)
    utterances = [f.utterance for f in result.frames]
    assert utterances == sorted(utterances) and set(utterances) == {1, 2}
    assert result.interrupt_sent_s is None and session_stats(result).interrupt is None


def test_frames_record_the_server_send_time_and_their_transit(contract_server):
    result = live(contract_server)

    assert result.ok and len(result.frames) == 25
    assert all(f.sent_us > 0 for f in result.frames)
    transits = [f.transit_ms for f in result.frames]
    assert all(t is not None and 0 <= t < 5000 for t in transits), transits
    transit = session_stats(result).transit
    assert transit is not None and transit.count == 25


def test_transit_counts_on_the_injected_wall_clock(contract_server):
    """A client clock 2 s ahead of the server's (another host) shows up in every transit."""
    result = live(contract_server, wall_clock=lambda: time.time_ns() // 1000 + 2_000_000)
    assert result.frames and all(2000 <= f.transit_ms < 7000 for f in result.frames)

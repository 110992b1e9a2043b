"""Conversations on a real server (issue #9): how fast utterances start, end and are interrupted.

Usage::

    python bench/bench_conversation.py [--repeats 5] [--json out.json]     # lite, 512 px
    python bench/bench_conversation.py --backend ditto --tree /tmp/tree    # CUDA: test tree, online pkl
    python bench/bench_conversation.py --quick                             # 1 repetition, short utterances

Starts ``streaming_server.py`` (as ``bench_server_load.py`` does, same flags), registers the portrait
with one short session, then runs ``--repeats`` live sessions of one scripted conversation: 24 kHz PCM16
(what realtime speech APIs emit) in 200 ms chunks paced at real time,

    utterance 1 → end_of_utterance → --pause_s without audio (idle frames) → utterance 2, cut by
    ``interrupt`` right after the chunk reaching its middle → --idle_s idling → end_of_audio.

Every time is read on this host's wall clock: the server's send time in each frame header (``sent_us``),
the client's send times of chunks and control messages, and the arrival of ``playback_started`` /
``playback_finished``. Per repetition, in ms: first chunk of each utterance → its first frame sent;
``end_of_utterance`` → utterance 1's last frame sent; ``interrupt`` → utterance 2's last frame sent
(negative when every frame of it had left before); the largest gap between frames sent from the interrupt
(the first gap: interrupt → next frame) through the next --idle_s, while the face idles; each playback
event's arrival after what caused it. Prints each metric's median and max over the repetitions against its
target (met: the max within it) and exits 0 when every target is met.

Targets (issue #9, lite on 2 cores over loopback): interrupt → last speech frame 200 ms, idle gap 100 ms,
end_of_utterance → last frame 300 ms, first frame of an utterance 300 ms after its first chunk; Ditto
online: first frame within the online look-ahead + 150 ms (the other targets as for lite).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import websockets

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.server_process import ditto_server_flags, running_server  # noqa: E402
from ditto.client.connection import PcmAudio, PlaybackEvent, media_ref, read_pcm, run_live_session  # noqa: E402
from ditto.protocol import messages as msg  # noqa: E402
from ditto.protocol.frames import AudioChunkHeader, FrameHeader, SampleType, pack_audio_chunk  # noqa: E402

SPEECH_RATE_HZ = 24000
SAMPLE_BYTES = 2  # mono PCM16
CHUNK_S = 0.2
# Ditto's first frame of an utterance waits for its look-ahead (0.885 s of audio), so utterance 2 is
# longer there: its middle, where the interrupt comes, must be past its first frame.
UTTERANCE_S = {"lite": 2.0, "ditto": 3.0}
QUICK_UTTERANCE_S = {"lite": 0.8, "ditto": 3.0}
MAX_SIZE = {"lite": 512, "ditto": 1024}  # ditto: bench_server_load.py's default


@dataclasses.dataclass(frozen=True, slots=True)
class Metric:
    label: str
    target_ms: float | None  # issue #9's, for lite (None: reported, no target)


METRICS = {
    "utterance1_first_frame_ms": Metric("utterance 1: first chunk → first frame", 300.0),
    "utterance2_first_frame_ms": Metric("utterance 2: first chunk → first frame", 300.0),
    "end_of_utterance_to_last_frame_ms": Metric("end_of_utterance → last frame of 1", 300.0),
    "interrupt_to_last_speech_frame_ms": Metric("interrupt → last frame of 2", 200.0),
    "idle_gap_after_interrupt_max_ms": Metric("largest frame gap after interrupt", 100.0),
    "playback_started1_after_first_chunk_ms": Metric("playback_started 1 (after first chunk)", None),
    "playback_finished1_after_end_of_utterance_ms": Metric("playback_finished 1 (after end_of_utterance)", None),
    "playback_started2_after_first_chunk_ms": Metric("playback_started 2 (after first chunk)", None),
    "playback_finished2_after_interrupt_ms": Metric("playback_finished 2 (after interrupt)", None),
}
FIRST_FRAME_METRICS = ("utterance1_first_frame_ms", "utterance2_first_frame_ms")
DITTO_FIRST_FRAME_MARGIN_MS = 150.0  # issue #9: Ditto's first frame within its look-ahead + this


@dataclasses.dataclass(frozen=True, slots=True)
class Script:
    utterance_s: float  # speech in each utterance (utterance 2 is cut in its middle)
    pause_s: float  # no audio from utterance 1's end on the real-time schedule to utterance 2
    idle_s: float  # idling after the interrupt is confirmed, before end_of_audio


@dataclasses.dataclass(frozen=True, slots=True)
class SentFrame:
    sent_s: float  # server wall clock at send, s since the epoch
    utterance: int  # 0: idle


@dataclasses.dataclass(slots=True)
class Conversation:
    """What one scripted session sent and saw; every time in s since the epoch on this host's wall clock."""

    first_chunk_s: dict[int, float] = dataclasses.field(default_factory=dict)  # utterance -> its first chunk sent
    end_of_utterance_s: float = math.nan
    interrupt_s: float = math.nan
    frames: list[SentFrame] = dataclasses.field(default_factory=list)
    playback: list[PlaybackEvent] = dataclasses.field(default_factory=list)  # arrival_s on the wall clock
    completed: msg.StreamingCompleted | None = None


def speech_24k(path: str) -> bytes:
    """``path`` as 24 kHz mono PCM16."""
    from scipy.signal import resample_poly

    audio = read_pcm(path)
    samples = np.frombuffer(audio.pcm, "<i2").reshape(-1, audio.channels).mean(axis=1)
    gcd = math.gcd(SPEECH_RATE_HZ, audio.sample_rate_hz)
    samples = resample_poly(samples, SPEECH_RATE_HZ // gcd, audio.sample_rate_hz // gcd)
    return np.clip(samples, -32768, 32767).round().astype("<i2").tobytes()


def speech_bytes(seconds: float) -> int:
    return round(seconds * SPEECH_RATE_HZ) * SAMPLE_BYTES


async def send_speech(ws, pcm: bytes, starts_at_s: float, seq: Iterator[int]) -> float:
    """Send ``pcm`` in chunks, the one at second t of it leaving at ``starts_at_s`` + t (an absolute
    schedule: no drift), numbered from ``seq``. Returns when the first chunk was sent."""
    chunk_bytes = speech_bytes(CHUNK_S)
    first_sent_s = math.nan
    for offset in range(0, len(pcm), chunk_bytes):
        await asyncio.sleep(max(0.0, starts_at_s + offset / speech_bytes(1.0) - time.time()))
        await ws.send(
            pack_audio_chunk(AudioChunkHeader(SampleType.INT16, next(seq)), pcm[offset : offset + chunk_bytes])
        )
        if math.isnan(first_sent_s):
            first_sent_s = time.time()
    return first_sent_s


async def send_script(
    ws,
    speech: bytes,
    script: Script,
    seen: Conversation,
    streaming_started: asyncio.Event,
    interrupt_confirmed: asyncio.Event,
) -> None:
    await streaming_started.wait()
    utterance_bytes, seq = speech_bytes(script.utterance_s), itertools.count()
    schedule_s = time.time()  # pacing and measuring share the wall clock the server stamps sent_us with
    seen.first_chunk_s[1] = await send_speech(ws, speech[:utterance_bytes], schedule_s, seq)
    await ws.send(json.dumps({"type": "end_of_utterance"}))
    seen.end_of_utterance_s = time.time()
    first_half = speech[utterance_bytes : utterance_bytes + speech_bytes(script.utterance_s / 2)]
    seen.first_chunk_s[2] = await send_speech(ws, first_half, schedule_s + script.utterance_s + script.pause_s, seq)
    await ws.send(json.dumps({"type": "interrupt"}))
    seen.interrupt_s = time.time()
    await interrupt_confirmed.wait()
    await asyncio.sleep(script.idle_s)
    await ws.send(json.dumps({"type": "end_of_audio"}))


async def receive(ws, seen: Conversation, streaming_started: asyncio.Event, interrupt_confirmed: asyncio.Event) -> None:
    async for message in ws:
        if isinstance(message, bytes):
            header, _ = FrameHeader.unpack(message)  # a video frame: no audio echo was asked for
            seen.frames.append(SentFrame(header.sent_us / 1e6, header.utterance))
            continue
        reply = msg.parse_server_message(message)
        if isinstance(reply, msg.StreamingStarted):
            streaming_started.set()
        elif isinstance(reply, (msg.PlaybackStarted, msg.PlaybackFinished)):
            seen.playback.append(PlaybackEvent(reply, time.time()))
            if isinstance(reply, msg.PlaybackFinished) and reply.interrupted:
                interrupt_confirmed.set()
        elif isinstance(reply, msg.StreamingCompleted):
            seen.completed = reply
            return
        elif isinstance(reply, msg.Error):
            raise RuntimeError(f"server error [{reply.code.value}]: {reply.message}")


async def converse(server: str, client_id: str, speech: bytes, source: str, script: Script) -> Conversation:
    """One live session of ``script``. Raises on a server error or after a generous timeout."""
    seen, streaming_started, interrupt_confirmed = Conversation(), asyncio.Event(), asyncio.Event()
    start = {
        "type": "start_streaming",
        "live": True,
        "source": media_ref(source, upload=True),
        "audio_format": {"sample_rate_hz": SPEECH_RATE_HZ, "channels": 1, "sample_type": "int16"},
    }
    async with asyncio.timeout(2 * script.utterance_s + script.pause_s + script.idle_s + 60):
        async with websockets.connect(f"{server}/ws/{client_id}", max_size=None) as ws:
            await ws.send(json.dumps(start))
            async with asyncio.TaskGroup() as tasks:  # a failed receive cancels the sender
                tasks.create_task(receive(ws, seen, streaming_started, interrupt_confirmed))
                tasks.create_task(send_script(ws, speech, script, seen, streaming_started, interrupt_confirmed))
    if seen.completed is None:
        raise RuntimeError(f"session {client_id} closed before streaming_completed")
    return seen


def measure(seen: Conversation, script: Script) -> dict[str, float | None]:
    """The metrics of one conversation (ms, ``None`` where there was nothing to measure)."""

    def ms(later_s: float | None, earlier_s: float) -> float | None:
        return None if later_s is None else round(1000 * (later_s - earlier_s), 1)

    def event_s(kind: type, utterance: int) -> float | None:
        return next(
            (e.arrival_s for e in seen.playback if isinstance(e.message, kind) and e.message.utterance == utterance),
            None,
        )

    sent_s = {u: [f.sent_s for f in seen.frames if f.utterance == u] for u in (1, 2)}
    # from the interrupt on (not the frame before it: speech frames come in bursts, one per chunk)
    idling_s = [
        seen.interrupt_s,
        *(f.sent_s for f in seen.frames if seen.interrupt_s < f.sent_s <= seen.interrupt_s + script.idle_s),
    ]
    gaps_s = [later - earlier for earlier, later in zip(idling_s, idling_s[1:])]
    return {
        "utterance1_first_frame_ms": ms(min(sent_s[1], default=None), seen.first_chunk_s[1]),
        "utterance2_first_frame_ms": ms(min(sent_s[2], default=None), seen.first_chunk_s[2]),
        "end_of_utterance_to_last_frame_ms": ms(max(sent_s[1], default=None), seen.end_of_utterance_s),
        "interrupt_to_last_speech_frame_ms": ms(max(sent_s[2], default=None), seen.interrupt_s),
        "idle_gap_after_interrupt_max_ms": ms(max(gaps_s, default=None), 0.0),
        "playback_started1_after_first_chunk_ms": ms(event_s(msg.PlaybackStarted, 1), seen.first_chunk_s[1]),
        "playback_finished1_after_end_of_utterance_ms": ms(event_s(msg.PlaybackFinished, 1), seen.end_of_utterance_s),
        "playback_started2_after_first_chunk_ms": ms(event_s(msg.PlaybackStarted, 2), seen.first_chunk_s[2]),
        "playback_finished2_after_interrupt_ms": ms(event_s(msg.PlaybackFinished, 2), seen.interrupt_s),
    }


def summarize(repetitions: list[dict[str, float | None]], targets_ms: dict[str, float | None]) -> dict[str, dict]:
    """Per metric: median and max over the repetitions, the target and whether the max met it (a
    repetition without the value fails it)."""
    summary = {}
    for name, target_ms in targets_ms.items():
        values = [r[name] for r in repetitions if r[name] is not None]
        complete = len(values) == len(repetitions)
        worst = max(values, default=None)
        summary[name] = {
            "median_ms": statistics.median(values) if values else None,
            "max_ms": worst,
            "target_ms": target_ms,
            "met": None if target_ms is None else complete and worst is not None and worst <= target_ms,
        }
    return summary


def format_table(summary: dict[str, dict]) -> str:
    def number(value: float | None) -> str:
        return "—" if value is None else f"{value:.0f}"

    rows = [f"{'metric':<46} {'median':>7} {'max':>7} {'target':>7}  met"]
    for name, s in summary.items():
        verdict = {True: "✅", False: "❌", None: ""}[s["met"]]
        target = "—" if s["target_ms"] is None else f"≤ {s['target_ms']:.0f}"
        rows.append(
            f"{METRICS[name].label:<46} {number(s['median_ms']):>7} {number(s['max_ms']):>7} {target:>7}  {verdict}"
        )
    return "\n".join(rows)


async def run_conversations(
    server: str, speech: bytes, source: str, script: Script, repeats: int
) -> list[Conversation]:
    # the portrait registered (and cached by the server) first, so the repetitions measure streaming only
    warmup = PcmAudio(speech[: speech_bytes(1.0)], SPEECH_RATE_HZ, 1)
    warmed = await run_live_session(server, "warmup", warmup, source, timeout_s=600, realtime=False, log_every=10**9)
    if not warmed.ok:
        raise RuntimeError(f"warm-up session failed: {warmed.error}")
    return [await converse(server, f"conversation{i}", speech, source, script) for i in range(repeats)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=["lite", "ditto"], default="lite")
    p.add_argument("--tree", type=Path, help="ditto: test checkpoint tree (made here when missing)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="1 repetition, short utterances and pauses")
    p.add_argument("--utterance_s", type=float, help="speech per utterance (default 2.0 s; ditto 3.0 s)")
    p.add_argument("--pause_s", type=float, default=1.0)
    p.add_argument("--idle_s", type=float, default=1.0)
    p.add_argument("--audio", default=str(ROOT / "example" / "audio.wav"))
    p.add_argument("--source", default=str(ROOT / "example" / "image.png"))
    p.add_argument("--max_size", type=int, help="default 512 (lite), 1024 (ditto)")
    p.add_argument("--compile_min_batch", type=int, default=8)
    p.add_argument("--startup_timeout", type=float, default=600.0)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.quick:
        repeats, script = 1, Script(args.utterance_s or QUICK_UTTERANCE_S[args.backend], 0.4, 0.4)
    else:
        repeats, script = args.repeats, Script(args.utterance_s or UTTERANCE_S[args.backend], args.pause_s, args.idle_s)
    max_size = args.max_size or MAX_SIZE[args.backend]
    targets_ms = {name: metric.target_ms for name, metric in METRICS.items()}
    flags = ["--backend", args.backend, "--max_size", str(max_size)]
    if args.backend == "ditto":
        from bench.bench_engine import LOOKAHEAD_S  # imports torch: only the Ditto path needs it

        targets_ms.update({name: 1000 * LOOKAHEAD_S + DITTO_FIRST_FRAME_MARGIN_MS for name in FIRST_FRAME_METRICS})
        flags += ditto_server_flags(args.tree, compile_min_batch=args.compile_min_batch)
    speech = speech_24k(args.audio)
    load_average_start = os.getloadavg()
    with running_server(flags, startup_timeout_s=args.startup_timeout) as started:
        print(f"# {args.backend} server up in {started.startup_s:.1f} s (log: {started.log})", flush=True)
        conversations = asyncio.run(run_conversations(started.url, speech, args.source, script, repeats))
    repetitions = [measure(c, script) for c in conversations]
    summary = summarize(repetitions, targets_ms)
    print(
        f"{args.backend}, {max_size} px, {repeats} repetitions: utterances of {script.utterance_s:g} s "
        f"(the second interrupted in its middle), {script.pause_s:g} s pause, {script.idle_s:g} s idle; "
        f"{CHUNK_S * 1000:.0f} ms chunks of {SPEECH_RATE_HZ // 1000} kHz PCM16 at real time"
    )
    print(format_table(summary))
    result = {
        "backend": args.backend,
        "max_size": max_size,
        "repeats": repeats,
        "script": dataclasses.asdict(script),
        "chunk_ms": CHUNK_S * 1000,
        "sample_rate_hz": SPEECH_RATE_HZ,
        "startup_s": round(started.startup_s, 1),
        "load_average_start": load_average_start,
        "load_average_end": os.getloadavg(),
        "cpus": os.cpu_count(),
        "summary": summary,
        "repetitions": repetitions,
        "completed": [c.completed.model_dump() for c in conversations],
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0 if all(s["met"] is not False for s in summary.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())

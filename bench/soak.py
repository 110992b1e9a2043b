"""Soak run: one real server process under many short sessions, abrupt disconnects, a stalled
consumer, half-open TCP connections and a SIGTERM under load; resources read from /proc.

Usage::

    python bench/soak.py [--sessions 500] [--killed 50] [--stall_s 30] [--half_open 50] [--json out.json]

Starts ``streaming_server.py`` (lite backend, ``--max_sessions 8 --max_size 256``) on a free
loopback port and waits for ``/healthz``. After a warm-up (a few sessions at once, so the
worker threads exist) it records the start level, then:

* opens ``--half_open`` raw TCP connections (half send nothing, half a partial HTTP request) and
  holds them for the whole run;
* runs ``--sessions`` short sessions one after another (0.4 s cut from ``example/audio.wav``, a
  128-px portrait; file mode, every ``--live_every``-th live), ``--killed`` of them (seeded) aborted
  by the client (TCP reset) after a random number of frames;
* meanwhile one consumer streams the whole example audio, stops reading for ``--stall_s``
  after a few frames, then reads the rest;
* after each session samples VmRSS, Threads (/proc/PID/status) and open fds (/proc/PID/fd);
* closes the half-open sockets, then sends SIGTERM while ``--under_load`` live sessions stream.

Targets (exit 0 when all are met): RSS growth from the mean of the first 50 sessions to the mean
of the last 50 < 5 %; fds no higher than start + the half-open sockets while they are open (once
the sessions ended; + 2 in the per-session samples: the stalled consumer and the session just
closed), and back to the start level after they close; threads back to the start level; every session that
was not killed completed with all its frames (the stalled one too); ``ditto_sessions_active`` 0 at
the end; on SIGTERM every streaming client got ``shutting_down`` then close code 1012 and the
server exited 0; no "Traceback" in the server's stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import wave
from pathlib import Path

import numpy as np
import websockets

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.server_process import free_port  # noqa: E402
from ditto.protocol import messages as msg  # noqa: E402
from ditto.protocol.frames import AudioChunkHeader, FrameHeader, FrameKind, SampleType, pack_audio_chunk  # noqa: E402

RATE_HZ = 16000
CLIP_S = 0.4
CLIP_FRAMES = 10  # 0.4 s at 25 fps
RSS_GROWTH_TARGET = 0.05
RSS_WINDOW = 50  # sessions averaged at each end
END_OF_AUDIO = json.dumps({"type": "end_of_audio"})


# --- the server process ----------------------------------------------------------------------


def poll_until(predicate, timeout_s: float, step_s: float = 0.05) -> bool:
    """Poll another process's state (no event to await across processes), for at most ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step_s)


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return reply.read().decode()


def healthy(url: str) -> bool:
    try:
        return json.loads(http_get(url)).get("status") == "ok"
    except OSError:
        return False


def metric(http: str, name: str) -> float | None:
    for line in http_get(f"{http}/metrics").splitlines():
        if line.startswith(name + " "):
            return float(line.split(" ")[1])
    return None


@dataclasses.dataclass(frozen=True)
class Sample:
    rss_kb: int
    threads: int
    fds: int


def read_proc(pid: int) -> Sample:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.split()
    return Sample(int(fields["VmRSS"][0]), int(fields["Threads"][0]), len(os.listdir(f"/proc/{pid}/fd")))


# --- media -----------------------------------------------------------------------------------


def example_audio_16k() -> np.ndarray:
    """``example/audio.wav`` as 16 kHz mono int16."""
    from ditto.media.audio import decode_audio

    audio = decode_audio((ROOT / "example" / "audio.wav").read_bytes(), max_seconds=float("inf"))
    return (np.clip(audio.samples, -1, 1) * 32767).round().astype("<i2")


def wav_bytes(pcm: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE_HZ)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def portrait_png(size: int = 128) -> bytes:
    import cv2

    bgr = cv2.imread(str(ROOT / "example" / "image.png"), cv2.IMREAD_COLOR)
    ok, buf = cv2.imencode(".png", cv2.resize(bgr, (size, size), interpolation=cv2.INTER_AREA))
    assert ok
    return buf.tobytes()


def file_start(pcm: np.ndarray, image: bytes) -> str:
    return json.dumps(
        {
            "type": "start_streaming",
            "audio": msg.encode_upload("a.wav", wav_bytes(pcm)),
            "source": msg.encode_upload("s.png", image),
        }
    )


def live_start(image: bytes) -> str:
    return json.dumps(
        {
            "type": "start_streaming",
            "live": True,
            "source": msg.encode_upload("s.png", image),
            "audio_format": {"sample_rate_hz": RATE_HZ, "channels": 1, "sample_type": "int16"},
        }
    )


def live_chunks(pcm: np.ndarray, chunk_ms: int = 100) -> list[bytes]:
    step = RATE_HZ * chunk_ms // 1000
    return [
        pack_audio_chunk(AudioChunkHeader(SampleType.INT16, k), pcm[i : i + step].tobytes())
        for k, i in enumerate(range(0, len(pcm), step))
    ]


# --- sessions --------------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    frames: int = 0
    completed: msg.StreamingCompleted | None = None
    errors: list[str] = dataclasses.field(default_factory=list)
    close_code: int | None = None
    killed: bool = False
    failure: str | None = None  # a client-side exception

    @property
    def ok(self) -> bool:
        c = self.completed
        return (
            self.failure is None
            and not self.errors
            and c is not None
            and self.frames == c.frames_sent
            and c.frames_sent > 0
        )


async def session(
    ws_url: str,
    client_id: str,
    pcm: np.ndarray,
    image: bytes,
    *,
    live: bool,
    kill_after: int | None = None,
    stall_after: int | None = None,
    stall_s: float = 0.0,
    pace_s: float = 0.0,
    first_frame: asyncio.Event | None = None,
    timeout_s: float = 60.0,
) -> Outcome:
    """One session. ``kill_after``: abort the TCP connection (reset, no close frame) once that many
    frames arrived. ``stall_after``: stop reading for ``stall_s`` once that many frames arrived.
    Live audio goes in 100 ms chunks once ``streaming_started`` came, ``pace_s`` apart."""
    out = Outcome(killed=kill_after is not None)
    started = asyncio.Event()

    async def send_live(ws) -> None:
        await started.wait()
        try:
            for i, chunk in enumerate(live_chunks(pcm)):
                if i and pace_s:
                    await asyncio.sleep(pace_s)  # real-time pacing, not synchronisation
                await ws.send(chunk)
            await ws.send(END_OF_AUDIO)
        except websockets.exceptions.ConnectionClosed:
            pass

    try:
        async with asyncio.timeout(timeout_s):
            # max_queue 1: a consumer that stops reading stops the TCP reads too (backpressure)
            # a stalled reader stops websockets' keepalive too (pongs wait behind the unread frames),
            # so the stalled consumer sends no pings of its own: the server's pings are what is tested
            async with websockets.connect(
                f"{ws_url}/ws/{client_id}",
                max_size=None,
                max_queue=1,
                compression=None,
                ping_interval=None if stall_after is not None else 20,
            ) as ws:
                await ws.send(live_start(image) if live else file_start(pcm, image))
                if kill_after == 0:
                    ws.transport.abort()
                    return out
                sender = asyncio.create_task(send_live(ws)) if live else None
                try:
                    async for reply in ws:
                        if isinstance(reply, bytes):
                            header, _ = FrameHeader.unpack(reply)
                            if header.kind == FrameKind.PCM16:
                                continue
                            out.frames += 1
                            if first_frame is not None:
                                first_frame.set()
                            if kill_after is not None and out.frames >= kill_after:
                                ws.transport.abort()
                                break
                            if stall_after is not None and out.frames == stall_after:
                                await asyncio.sleep(stall_s)  # the stall under test
                        else:
                            m = msg.parse_server_message(reply)
                            if isinstance(m, msg.StreamingStarted):
                                started.set()
                            elif isinstance(m, msg.StreamingCompleted):
                                out.completed = m
                            elif isinstance(m, msg.Error):
                                out.errors.append(m.code.value)
                except websockets.exceptions.ConnectionClosed:
                    pass
                finally:
                    started.set()
                    if sender is not None:
                        if kill_after is not None:
                            sender.cancel()
                        await asyncio.gather(sender, return_exceptions=True)
                out.close_code = ws.close_code
    except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
        if not out.killed:
            out.failure = f"{type(exc).__name__}: {exc}"
    return out


def open_half_open(port: int, count: int) -> list[socket.socket]:
    """Raw TCP connections: even ones send nothing, odd ones the start of an HTTP request."""
    socks = []
    for i in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if i % 2:
            s.sendall(b"GET /ws/half-open HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
        socks.append(s)
    return socks


def dropped_by_server(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        s.recv(1 << 16)  # b"": closed; any bytes: the server answered (and will close)
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True


# --- the run ---------------------------------------------------------------------------------


async def soak(args, ws_url: str, http: str, pid: int, port: int, report: dict) -> None:
    rng = random.Random(args.seed)
    audio = example_audio_16k()
    image = portrait_png()
    clip = int(CLIP_S * RATE_HZ)

    def cut() -> np.ndarray:
        """A 0.4 s cut that holds speech (peak above -30 dBFS): the server refuses silence (audio_silent)."""
        while True:
            start = rng.randrange(0, len(audio) - clip)
            if np.abs(audio[start : start + clip]).max() > 1000:
                return audio[start : start + clip]

    # warm-up: sessions at once, file and live, so the portrait is cached and the worker threads exist
    warm = await asyncio.gather(
        *(session(ws_url, f"warm-{i}", cut(), image, live=bool(i % 2)) for i in range(args.warmup))
    )
    report["warmup_ok"] = sum(o.ok for o in warm)
    poll_until(lambda: metric(http, "ditto_sessions_active") == 0, 10)
    start = read_proc(pid)
    report["start"] = dataclasses.asdict(start)

    half = open_half_open(port, args.half_open)
    poll_until(lambda: read_proc(pid).fds >= start.fds + args.half_open, 10)
    report["half_open_fds_held"] = read_proc(pid).fds - start.fds

    killed = set(rng.sample(range(args.sessions), min(args.killed, args.sessions)))
    stall_at = args.sessions // 5
    stall_task = None
    samples: list[Sample] = []
    outcomes: list[Outcome] = []
    during_stall = 0
    for i in range(args.sessions):
        if i == stall_at and args.stall_s > 0:
            stall_began = time.monotonic()
            stall_task = asyncio.create_task(
                session(
                    ws_url,
                    "stalled",
                    audio,
                    image,
                    live=False,
                    stall_after=5,
                    stall_s=args.stall_s,
                    timeout_s=args.stall_s + 120,
                )
            )
        live = args.live_every > 0 and i % args.live_every == args.live_every - 1
        kill_after = rng.randrange(0, CLIP_FRAMES) if i in killed else None
        outcomes.append(await session(ws_url, f"soak-{i}", cut(), image, live=live, kill_after=kill_after))
        if stall_task is not None and not stall_task.done() and time.monotonic() - stall_began < args.stall_s:
            during_stall += 1
        samples.append(read_proc(pid))
    stall = await stall_task if stall_task is not None else None

    poll_until(lambda: metric(http, "ditto_sessions_active") == 0, 15)
    # a session's socket can outlive its registration a moment (an aborted client's reset)
    poll_until(lambda: read_proc(pid).fds <= start.fds + args.half_open, 10)
    open_end = read_proc(pid)
    report["half_open_dropped_by_server"] = sum(dropped_by_server(s) for s in half)
    for s in half:
        s.close()
    poll_until(lambda: read_proc(pid).fds <= start.fds, 10)
    end = read_proc(pid)

    window = min(RSS_WINDOW, max(1, len(samples) // 4))
    rss_first = float(np.mean([s.rss_kb for s in samples[:window]]))
    rss_last = float(np.mean([s.rss_kb for s in samples[-window:]]))
    not_killed = [o for i, o in enumerate(outcomes) if i not in killed]
    failed = [
        (i, o.failure or o.errors or "incomplete") for i, o in enumerate(outcomes) if i not in killed and not o.ok
    ]
    report.update(
        {
            "sessions": args.sessions,
            "killed": len(killed),
            "live": sum(
                1 for i in range(args.sessions) if args.live_every > 0 and i % args.live_every == args.live_every - 1
            ),
            "sessions_ok": sum(o.ok for o in not_killed),
            "sessions_failed": failed[:10],
            "killed_errors": sorted({e for i in killed for e in outcomes[i].errors}),
            "rss_window": window,
            "rss_first_kb": rss_first,
            "rss_last_kb": rss_last,
            "rss_growth": rss_last / rss_first - 1,
            "max_during": dataclasses.asdict(
                Sample(max(s.rss_kb for s in samples), max(s.threads for s in samples), max(s.fds for s in samples))
            ),
            "half_open_end": dataclasses.asdict(open_end),
            "end": dataclasses.asdict(end),
            "stall": None
            if stall is None
            else {
                "stall_s": args.stall_s,
                "ok": stall.ok,
                "frames": stall.frames,
                "errors": stall.errors,
                "failure": stall.failure,
                "close_code": stall.close_code,
                "completed": stall.completed is not None,
                "sessions_during_stall": during_stall,
            },
            "sessions_active_end": metric(http, "ditto_sessions_active"),
            "sessions_total": metric(http, "ditto_sessions_total"),
        }
    )

    # SIGTERM while sessions stream (live, real-time pace: they would run 15 s)
    first_frames = [asyncio.Event() for _ in range(args.under_load)]
    streams = [
        asyncio.create_task(
            session(ws_url, f"load-{i}", audio, image, live=True, pace_s=0.1, first_frame=first_frames[i], timeout_s=60)
        )
        for i in range(args.under_load)
    ]
    async with asyncio.timeout(30):
        await asyncio.gather(*(e.wait() for e in first_frames))
    os.kill(pid, signal.SIGTERM)
    loaded = await asyncio.gather(*streams)
    report["sigterm_clients"] = [
        {"errors": o.errors, "close_code": o.close_code, "frames": o.frames, "failure": o.failure} for o in loaded
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=500)
    p.add_argument("--killed", type=int, default=50, help="sessions the client aborts after a random frame count")
    p.add_argument("--stall_s", type=float, default=30.0, help="how long the stalled consumer stops reading (0: none)")
    p.add_argument("--half_open", type=int, default=50, help="raw TCP connections held open during the run")
    p.add_argument("--live_every", type=int, default=10, help="every n-th session is live (0: none)")
    p.add_argument("--under_load", type=int, default=3, help="sessions streaming when SIGTERM is sent")
    p.add_argument("--warmup", type=int, default=4, help="sessions at once before the start level is read")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    p.add_argument("--server_log", type=Path, help="write the server's stderr here")
    args = p.parse_args()

    port = free_port()
    http, ws_url = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}"
    report: dict = {"load_average_start": os.getloadavg(), "cpus": os.cpu_count()}
    began = time.monotonic()
    with tempfile.TemporaryFile("w+") as stderr:
        server = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "streaming_server.py"),
                "--backend",
                "lite",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--max_sessions",
                "8",
                "--max_size",
                "256",
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            if (
                not poll_until(lambda: server.poll() is not None or healthy(f"{http}/healthz"), 120, 0.2)
                or server.poll() is not None
            ):
                print(f"server did not become healthy (exit code {server.poll()})", file=sys.stderr)
                return 1
            asyncio.run(soak(args, ws_url, http, server.pid, port, report))
            report["exit_code"] = server.wait(30)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
            stderr.seek(0)
            log = stderr.read()
    report["tracebacks"] = log.count("Traceback")
    lines = log.splitlines()
    report["traceback_excerpts"] = [
        "\n".join(lines[max(0, i - 2) : i + 12]) for i, line in enumerate(lines) if "Traceback" in line
    ][:5]
    if args.server_log:
        args.server_log.write_text(log)
    report["stderr_tail"] = log[-2000:]
    report["wall_s"] = time.monotonic() - began
    report["load_average_end"] = os.getloadavg()

    start, open_end, end, top = report["start"], report["half_open_end"], report["end"], report["max_during"]
    held = args.half_open
    checks = {
        "rss_growth": report["rss_growth"] < RSS_GROWTH_TARGET,
        # sampled right after each session: the stalled consumer's connection and the one just ended
        # (a killed session's reset reaches the server a moment later) may still be open
        "fds_while_half_open": top["fds"] <= start["fds"] + held + 2 and open_end["fds"] <= start["fds"] + held,
        "fds_after": end["fds"] <= start["fds"],
        "threads": end["threads"] <= start["threads"],
        "sessions_ok": report["sessions_ok"] == args.sessions - report["killed"]
        and (report["stall"] is None or report["stall"]["ok"]),
        "sessions_active_0": report["sessions_active_end"] == 0,
        "sigterm": all(c["errors"] == ["shutting_down"] and c["close_code"] == 1012 for c in report["sigterm_clients"])
        and report["exit_code"] == 0,
        "no_traceback": report["tracebacks"] == 0,
    }
    report["checks"] = checks
    mark = {True: "✅", False: "❌"}
    stall = report["stall"]
    rows = [
        (
            "rss_growth",
            f"first {report['rss_window']} sessions {report['rss_first_kb'] / 1024:.1f} MiB -> last "
            f"{report['rss_window']} {report['rss_last_kb'] / 1024:.1f} MiB: "
            f"{report['rss_growth'] * 100:+.2f} % (max {top['rss_kb'] / 1024:.1f} MiB)",
            "< 5 %",
        ),
        (
            "fds_while_half_open",
            f"start {start['fds']}, {report['half_open_fds_held']} held by {held} half-open, "
            f"max {top['fds']}, end of run {open_end['fds']}; server dropped "
            f"{report['half_open_dropped_by_server']}/{held}",
            f"end of run <= {start['fds'] + held}, max <= {start['fds'] + held + 2}",
        ),
        ("fds_after", f"{end['fds']} after the half-open sockets closed", f"<= {start['fds']}"),
        ("threads", f"start {start['threads']}, max {top['threads']}, end {end['threads']}", f"<= {start['threads']}"),
        (
            "sessions_ok",
            f"{report['sessions_ok']}/{args.sessions - report['killed']} completed "
            f"({report['live']} live), {report['killed']} killed; stalled consumer "
            + (
                "none"
                if stall is None
                else f"{'ok' if stall['ok'] else 'FAILED'}, {stall['frames']} "
                f"frames, {stall['sessions_during_stall']} sessions during its {stall['stall_s']:g} s"
            ),
            "all",
        ),
        (
            "sessions_active_0",
            f"ditto_sessions_active {report['sessions_active_end']:g} (sessions_total {report['sessions_total']:g})",
            "0",
        ),
        (
            "sigterm",
            f"clients {[(c['errors'], c['close_code']) for c in report['sigterm_clients']]}, "
            f"exit code {report['exit_code']}",
            "shutting_down, 1012, exit 0",
        ),
        ("no_traceback", f"{report['tracebacks']} in stderr", "0"),
    ]
    print(
        f"soak: {args.sessions} sessions in {report['wall_s']:.0f} s, {report['cpus']} CPUs, load average "
        f"{report['load_average_start'][0]:.2f} at start, {report['load_average_end'][0]:.2f} at end"
    )
    width = max(len(r[0]) for r in rows)
    for name, seen, target in rows:
        print(f"{mark[checks[name]]} {name:<{width}}  {seen}  (target {target})")
    for excerpt in report["traceback_excerpts"]:
        print("   server traceback:\n      " + excerpt.replace("\n", "\n      "))
    if report["sessions_failed"]:
        print(f"   failed sessions (first 10): {report['sessions_failed']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

"""``python streaming_client.py``: stream an audio file and a portrait, report statistics.

Without ``--realtime`` the audio file is uploaded whole (file mode); with it, it is sent
live, in ``--chunk_ms`` chunks paced at real time, as a microphone or TTS engine would;
``--interrupt_at`` then barges in part-way (see :func:`run_live_session`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
from pathlib import Path

from ditto.client import LOGGER_NAME
from ditto.client.connection import SessionResult, read_pcm, run_live_session, run_session
from ditto.client.stats import StreamStats, format_report, session_stats
from ditto.client.writers import FrameFolderWriter, mux_mp4, write_json, write_wav_pcm16

logger = logging.getLogger(LOGGER_NAME)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streaming_client.py", description="Ditto streaming client")
    p.add_argument("--server", default="ws://localhost:8000", help="server base URL (ws://HOST:PORT)")
    p.add_argument("--client_id", default="test_client")
    p.add_argument("--audio_path", default="./example/audio.wav")
    p.add_argument("--source_path", default="./example/image.png")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds before the stream counts as failed")
    p.add_argument("--save_frames", action="store_true", help="save every frame as JPEG in --frames_dir")
    p.add_argument("--frames_dir", type=Path, default=Path("received_frames"))
    p.add_argument("--output", type=Path, help="write an MP4 of the frames with the original audio")
    p.add_argument("--json", type=Path, help="write the statistics as JSON")
    p.add_argument(
        "--server_paths",
        action="store_true",
        help="send --audio_path/--source_path as paths inside the server's --media_root instead of uploading the files",
    )
    p.add_argument("--seed", type=int, help="animation seed (reproducible blinks and head motion)")
    p.add_argument(
        "--realtime",
        action="store_true",
        help="live session: send the audio in chunks paced at real time instead of uploading it whole",
    )
    p.add_argument("--chunk_ms", type=float, default=200.0, help="live audio chunk length in ms (with --realtime)")
    p.add_argument(
        "--interrupt_at",
        type=float,
        metavar="SECONDS",
        help="with --realtime: send interrupt once SECONDS of audio were sent, send none of the rest, "
        "idle 1 s after playback_finished, then end_of_audio; reports the interrupt latency",
    )
    p.add_argument(
        "--require_realtime",
        action="store_true",
        help="exit non-zero also when a real-time check of the statistics block fails (❌)",
    )
    return p


def exit_code(result: SessionResult, stats: StreamStats, *, require_realtime: bool) -> int:
    """0 when every announced frame arrived (and, with ``require_realtime``, every real-time
    check passed); else 1, with the reason logged."""
    if not result.ok:
        expected = result.expected_frames if result.expected_frames is not None else "?"
        logger.error("Stream failed: %d of %s frames received", len(result.frames), expected)
        return 1
    failed = [name for name, ok in stats.checks.items() if not ok]
    if require_realtime and failed:
        logger.error("Real-time check failed: %s", ", ".join(failed))
        return 1
    return 0


def _write_mp4(result: SessionResult, writer: FrameFolderWriter, audio_path: Path, output: Path, scratch: Path) -> None:
    """File mode: the received frames with the original audio. Live: every frame slot
    (a skipped frame repeats the previous one) with the echoed audio, so idle stretches stay in sync."""
    indices = sorted(f.index for f in result.frames)
    if not result.live:
        mux_mp4([writer.path_for(i) for i in indices], audio_path, output)
        return
    total = indices[-1] + 1
    received = set(indices)
    paths, current = [], writer.path_for(indices[0])
    for i in range(total):
        if i in received:
            current = writer.path_for(i)
        paths.append(current)
    audio = audio_path
    if result.audio_echo:
        audio = scratch / "echo.wav"
        write_wav_pcm16(audio, [result.audio_echo.get(i, bytes(1280)) for i in range(total)])
    mux_mp4(paths, audio, output)


def _usage_error(text: str) -> int:
    print(f"streaming_client.py: error: {text}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if args.realtime and args.chunk_ms <= 0:
        return _usage_error("--chunk_ms must be > 0")
    if args.interrupt_at is not None and not args.realtime:
        return _usage_error("--interrupt_at needs --realtime (a live session)")
    if args.interrupt_at is not None and args.interrupt_at <= 0:
        return _usage_error("--interrupt_at must be > 0")
    with tempfile.TemporaryDirectory(prefix="ditto_frames_") as scratch:
        writer = None
        if args.save_frames:
            writer = FrameFolderWriter(args.frames_dir)
        elif args.output:
            writer = FrameFolderWriter(Path(scratch) / "frames")
        on_frame = (lambda header, jpeg: writer.write(header.index, jpeg)) if writer else None
        if args.realtime:
            if not Path(args.audio_path).is_file():
                return _usage_error(f"--realtime needs a local audio file: {args.audio_path}")
            audio = read_pcm(args.audio_path)
            if args.interrupt_at is not None and args.interrupt_at >= audio.duration_s:
                return _usage_error(f"--interrupt_at must be under the audio's {audio.duration_s:.2f} s")
            result = asyncio.run(
                run_live_session(
                    args.server,
                    args.client_id,
                    audio,
                    args.source_path,
                    timeout_s=args.timeout,
                    chunk_ms=args.chunk_ms,
                    realtime=True,
                    on_frame=on_frame,
                    upload=not args.server_paths,
                    seed=args.seed,
                    echo_audio=args.output is not None,
                    interrupt_at_s=args.interrupt_at,
                )
            )
        else:
            result = asyncio.run(
                run_session(
                    args.server,
                    args.client_id,
                    args.audio_path,
                    args.source_path,
                    timeout_s=args.timeout,
                    on_frame=on_frame,
                    upload=not args.server_paths,
                    seed=args.seed,
                )
            )
        logger.info("Writer closed. Total frames: %d", len(result.frames))
        if args.output and writer is not None and writer.count:
            _write_mp4(result, writer, Path(args.audio_path), args.output, Path(scratch))
            logger.info("Wrote %s", args.output)
    stats = session_stats(result)
    print("\n" + format_report(stats), flush=True)
    if args.json:
        report = {
            "ok": result.ok,
            "live": result.live,
            "stats": stats.to_dict(),
            "error": result.error.model_dump(mode="json") if result.error else None,
            "timed_out": result.timed_out,
            "expected_frames": result.expected_frames,
        }
        write_json(args.json, report)
    return exit_code(result, stats, require_realtime=args.require_realtime)

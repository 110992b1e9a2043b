"""``python streaming_client.py``: stream an audio file and a portrait, report statistics."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
from pathlib import Path

from ditto.client import LOGGER_NAME
from ditto.client.connection import run_session
from ditto.client.stats import compute_stats, format_report
from ditto.client.writers import FrameFolderWriter, mux_mp4, write_json

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
    p.add_argument("--server_paths", action="store_true",
                   help="send --audio_path/--source_path as paths inside the server's --media_root "
                        "instead of uploading the files")
    p.add_argument("--seed", type=int, help="animation seed (reproducible blinks and head motion)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    with tempfile.TemporaryDirectory(prefix="ditto_frames_") as scratch:
        writer = None
        if args.save_frames:
            writer = FrameFolderWriter(args.frames_dir)
        elif args.output:
            writer = FrameFolderWriter(Path(scratch))
        result = asyncio.run(run_session(
            args.server, args.client_id, args.audio_path, args.source_path, timeout_s=args.timeout,
            on_frame=(lambda header, jpeg: writer.write(header.index, jpeg)) if writer else None,
            upload=not args.server_paths, seed=args.seed))
        logger.info("Writer closed. Total frames: %d", len(result.frames))
        if args.output and writer is not None and writer.count:
            indices = sorted(f.index for f in result.frames)
            mux_mp4([writer.path_for(i) for i in indices], Path(args.audio_path), args.output)
            logger.info("Wrote %s", args.output)
    stats = compute_stats(result.start_sent_s or 0.0, [f.arrival_s for f in result.frames],
                          [f.size for f in result.frames])
    print("\n" + format_report(stats), flush=True)
    if args.json:
        report = {"ok": result.ok, "stats": stats.to_dict(),
                  "error": result.error.model_dump(mode="json") if result.error else None,
                  "timed_out": result.timed_out,
                  "expected_frames": result.metadata.total_frames if result.metadata else None}
        write_json(args.json, report)
    if not result.ok:
        expected = result.metadata.total_frames if result.metadata else "?"
        logger.error("Stream failed: %d of %s frames received", len(result.frames), expected)
        return 1
    return 0

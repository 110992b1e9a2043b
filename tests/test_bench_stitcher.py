"""``bench/bench_stitcher.py`` runs (a few frames, two threads) and reports what its docstring says."""

from __future__ import annotations

import json

import pytest

from bench import bench_stitcher


def test_bench_stitcher_smoke(tmp_path) -> None:
    out = tmp_path / "stitcher.json"
    assert bench_stitcher.main(["--frames", "20", "--threads", "2", "--seconds", "0.4", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["ms_per_frame_alone"] > 0 and result["frames_per_s_flat_out"] > 0
    # two threads at 25 frames/s for 0.4 s: the live share is what that many frames cost
    assert result["live_gil_share_estimate"] == pytest.approx(
        2 * bench_stitcher.FPS * result["ms_per_frame_alone"] / 1000
    )
    assert result["probe_slowdown_p50"] > 0 and result["probe_slowdown_p95"] > 0

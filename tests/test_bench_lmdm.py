"""``bench/bench_lmdm.py`` on the CPU, full-size LMDM, three DDIM steps: it runs, and the prepared window
does less work than the per-step call while computing the same windows."""

from __future__ import annotations

import json

from bench import bench_lmdm


def test_bench_lmdm_cpu_smoke(tmp_path, capsys) -> None:
    out = tmp_path / "lmdm.json"
    assert (
        bench_lmdm.main(
            ["--device", "cpu", "--batches", "1,2", "--steps", "3", "--repeats", "1", "--profile", "--json", str(out)]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert set(result["ms_per_window"]) == {"per_step", "window"}
    gflop = result["gflop_per_window"]
    assert gflop["window"] < 0.9 * gflop["per_step"]  # the condition encoder and memory keys/values once, not per step
    for batch in ("1", "2"):
        assert result["launches_per_window"]["window"][batch] < result["launches_per_window"]["per_step"][batch]
        assert result["max_abs_diff_vs_per_step"]["window"][batch] < 1e-3
    assert "ratio vs per_step" in capsys.readouterr().out

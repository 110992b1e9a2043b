"""``bench/bench_server_load.py``'s comparison line: each level's aggregate fps against the last curve's."""

from __future__ import annotations

from bench.bench_server_load import format_ratios


def _curve(*fps: tuple[int, float]) -> dict:
    return {"levels": [{"sessions": n, "fps_aggregate": f} for n, f in fps]}


def test_ratios_are_to_the_last_curve_level_by_level() -> None:
    text = format_ratios({"new": _curve((8, 200.0), (10, 240.0)), "old": _curve((8, 200.0), (10, 160.0))})
    lines = text.splitlines()
    assert lines[0] == "aggregate fps, ratio to old:"
    assert lines[1] == "  new: 8: 200.0 (1.00x), 10: 240.0 (1.50x)"
    assert lines[2] == "  old: 8: 200.0 (1.00x), 10: 160.0 (1.00x)"

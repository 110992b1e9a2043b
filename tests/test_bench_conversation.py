"""The conversation benchmark (``bench/bench_conversation.py --quick``) against a real lite server: it
runs the whole script and reports every metric. Its timing targets are the benchmark's to judge (the
machines the tests run on are noisy), so the exit code is not checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_conversation import METRICS  # noqa: E402


def test_quick_conversation_reports_every_metric(tmp_path: Path) -> None:
    out = tmp_path / "conversation.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_conversation.py"), "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.is_file(), run.stdout + run.stderr
    report = json.loads(out.read_text())
    assert report["backend"] == "lite" and report["repeats"] == 1
    (repetition,) = report["repetitions"]
    missing = [name for name in METRICS if repetition.get(name) is None]
    assert not missing, f"{missing}\n{run.stdout}"
    assert set(report["summary"]) == set(METRICS)
    assert report["completed"][0]["idle_frames"] > 0  # the pause and the interrupt both idled the face

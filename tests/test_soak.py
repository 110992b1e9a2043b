"""The soak run (``bench/soak.py``) in a short version: a real server process, 40 sessions (5 killed by
the client), a consumer stalled for 3 s, 5 half-open connections, SIGTERM under load."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_short_soak_meets_every_target(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "soak.py"),
            "--sessions",
            "40",
            "--killed",
            "5",
            "--stall_s",
            "3",
            "--half_open",
            "5",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(out.read_text())
    failed = [name for name, ok in report["checks"].items() if not ok]
    assert not failed, f"{failed}\n{run.stdout}\n{report['stderr_tail']}"
    assert run.returncode == 0, run.stdout + run.stderr
    assert report["rss_growth"] < 0.05
    assert report["end"]["fds"] <= report["start"]["fds"]
    assert report["end"]["threads"] <= report["start"]["threads"]
    assert report["sessions_active_end"] == 0
    assert report["exit_code"] == 0 and report["tracebacks"] == 0
    assert all(c["errors"] == ["shutting_down"] and c["close_code"] == 1012 for c in report["sigterm_clients"])

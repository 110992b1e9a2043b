"""``bench/server_process.py``: a server that dies while starting is reported with the end of its log."""

from __future__ import annotations

import pytest

from bench.server_process import running_server


def test_server_dying_at_startup_reports_its_log() -> None:
    with pytest.raises(RuntimeError, match="exited with code 2 during start-up") as caught:
        with running_server(["--no_such_flag"], startup_timeout_s=60):
            pytest.fail("a server given an unknown flag must not answer /healthz")
    assert "unrecognized arguments: --no_such_flag" in str(caught.value)

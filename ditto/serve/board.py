"""The session board: one small Serve deployment that holds the whole application's sessions.

Replicas share no state; each one reports its admission counters here every
``report_interval_s`` (:class:`ReplicaReport`), so one place answers "how many sessions run, and
where" (``GET /serve/sessions`` on any replica, ``python -m ditto.serve status``). It is a view, not
a dependency: a replica keeps serving when the board is unreachable, and a replica that stops
reporting (killed, restarted under a new id) drops off the board after ``stale_after_s``.

The answer to a report also carries the application's stop: ``python -m ditto.serve`` sets
``draining`` before it shuts Serve down, and each replica then ends its sessions with
``shutting_down`` / close code 1012, as the plain server does on SIGTERM.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pydantic import BaseModel, ConfigDict
from ray import serve

logger = logging.getLogger(__name__)

BOARD_DEPLOYMENT = "SessionBoard"


class ReplicaReport(BaseModel):
    """One replica's admission counters (its ``/healthz`` ``sessions``), as it last reported them."""

    model_config = ConfigDict(frozen=True)

    server_id: str
    backend: str
    accepting: bool
    active: int
    max_sessions: int
    live: int
    max_live: int


@serve.deployment(
    name=BOARD_DEPLOYMENT,
    num_replicas=1,
    max_ongoing_requests=1000,
    ray_actor_options={"num_cpus": 0},
    logging_config={"enable_access_log": False},
)  # a report a second per replica: no log line each
class SessionBoard:
    def __init__(self, stale_after_s: float) -> None:
        self._stale_after_s = stale_after_s
        self._reports: dict[str, tuple[float, ReplicaReport]] = {}  # server_id -> (monotonic s, report)
        self._draining = False

    def report(self, report: ReplicaReport) -> bool:
        """Record ``report``; returns True when the application is stopping (end your sessions)."""
        self._reports[report.server_id] = (time.monotonic(), report)
        return self._draining

    def leave(self, server_id: str) -> None:
        """A replica stopped cleanly: take it off the board at once."""
        self._reports.pop(server_id, None)

    def drain(self) -> None:
        """The application is stopping: replicas learn it with their next report."""
        logger.info("Draining: replicas end their sessions with shutting_down (1012)")
        self._draining = True

    def summary(self) -> dict:
        """Every replica that reported within ``stale_after_s``, and the totals over them."""
        now = time.monotonic()
        for server_id, (at, _) in list(self._reports.items()):
            if now - at > self._stale_after_s:
                del self._reports[server_id]
        replicas: list[dict[str, Any]] = [
            {
                "server_id": r.server_id,
                "backend": r.backend,
                "status": "ok" if r.accepting else "shutting_down",
                "reported_s_ago": round(now - at, 2),
                "sessions": {"active": r.active, "max": r.max_sessions, "live": r.live, "live_max": r.max_live},
            }
            for at, r in sorted(self._reports.values(), key=lambda item: item[1].server_id)
        ]
        totals = {key: sum(r["sessions"][key] for r in replicas) for key in ("active", "max", "live", "live_max")}
        return {"replicas": replicas, "sessions": totals, "draining": self._draining}

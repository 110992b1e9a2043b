"""The session board: one small Serve deployment that holds the whole application's sessions.

Replicas share no state; each one reports its admission counters here every
``report_interval_s`` (:class:`ReplicaReport`), so one place answers "how many sessions run, and
where" (``GET /serve/sessions`` on any replica, ``python -m ditto.serve status``). It is a view, not
a dependency: a replica keeps serving when the board is unreachable, and a replica that stops
reporting (killed, restarted under a new id) drops off the board after ``stale_after_s``.

The answer to a report (:class:`BoardReply`) also carries two stops:

* the application's: ``python -m ditto.serve`` sets ``draining`` before it shuts Serve down, and
  each replica then ends its sessions with ``shutting_down`` / close code 1012, as the plain server
  does on SIGTERM;
* the replica's own: Serve is stopping it (scale-down, redeploy). Serve routes it no new sessions
  and waits up to the drain timeout for its running ones; it calls no hook before it then kills the
  replica, so the board reads the replica states from the Serve controller and tells a stopping
  replica, which ends what still runs with 1012 just before that deadline.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pydantic import BaseModel, ConfigDict
from ray import serve

logger = logging.getLogger(__name__)

BOARD_DEPLOYMENT = "SessionBoard"


STOPPING_POLL_S = 0.5
"""The board asks the Serve controller for the stopping replicas at most this often."""


class BoardReply(BaseModel):
    """What a replica learns from its report."""

    model_config = ConfigDict(frozen=True)

    application_stopping: bool  # end every session now (1012)
    replica_stopping: bool  # Serve is draining this replica: end what still runs before its drain timeout


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
        self._stopping: frozenset[str] = frozenset()  # replica ids the Serve controller is stopping
        self._stopping_read_at = -float("inf")

    def report(self, report: ReplicaReport) -> BoardReply:
        """Record ``report``; the reply says whether the application or this replica is stopping."""
        self._reports[report.server_id] = (time.monotonic(), report)
        return BoardReply(
            application_stopping=self._draining, replica_stopping=report.server_id in self._stopping_ids()
        )

    def _stopping_ids(self) -> frozenset[str]:
        now = time.monotonic()
        if now - self._stopping_read_at >= STOPPING_POLL_S:
            self._stopping_read_at = now
            try:
                self._stopping = stopping_replicas(_serve_details())
            except Exception as exc:  # the controller restarting: keep the last answer
                logger.warning("Session board: replica states unavailable (%s)", exc)
        return self._stopping

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


def _serve_details() -> dict[str, Any]:
    """The Serve controller's view of every application (``serve status``'s source), as a dict."""
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    assert client is not None  # inside a Serve application the controller runs
    return client.get_serve_details()


def stopping_replicas(details: dict[str, Any]) -> frozenset[str]:
    """The ids of the replicas in state STOPPING in ``details`` (a ``ServeInstanceDetails`` dict)."""
    return frozenset(
        replica["replica_id"]
        for application in (details.get("applications") or {}).values()
        for deployment in (application.get("deployments") or {}).values()
        for replica in deployment.get("replicas") or ()
        if replica.get("state") == "STOPPING"
    )

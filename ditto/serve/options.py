"""The options of the Ray Serve application, as data: one frozen model that ``serve_config.yaml``'s
``args`` and ``python -m ditto.serve`` both fill, and that turns into the deployments' options."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ditto.settings import Settings


class ServeOptions(BaseModel):
    """How the streaming server runs as Serve replicas.

    ``settings`` are the server's own settings (the ``DITTO_*`` names without the prefix, e.g.
    ``{"backend": "lite", "max_size": 512}``); every replica serves with them, its ``max_sessions``
    set to ``sessions_per_replica`` and its ``server_id`` to its replica id.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    settings: dict[str, Any] = Field(default_factory=dict)
    # sessions one replica admits: its measured live capacity (H200, 1024 px: 8; see docs/scaling.md)
    sessions_per_replica: int = Field(8, ge=1, le=256)
    num_replicas: int = Field(1, ge=1)  # without autoscaling
    # autoscaling on ongoing sessions when max_replicas is given: between min_replicas and max_replicas
    min_replicas: int = Field(1, ge=0)
    max_replicas: int | None = Field(None, ge=1)
    target_utilization: float = Field(0.75, gt=0, le=1)  # autoscaling aims at this share of the sessions
    gpus_per_replica: float | None = Field(None, ge=0)  # None: 1 for Ditto (unless device cpu), 0 for lite
    cpus_per_replica: float = Field(1.0, ge=0)
    # scale-down / redeploy: a stopping replica gets no new sessions and waits this long for its running
    # ones to end before Serve stops it
    drain_timeout_s: float = Field(600.0, ge=0)
    health_check_period_s: float = Field(10.0, gt=0)
    health_check_timeout_s: float = Field(30.0, gt=0)
    report_interval_s: float = Field(1.0, gt=0)  # replica -> session board (the application-wide view)

    @model_validator(mode="after")
    def _valid(self) -> "ServeOptions":
        self.server_settings()  # the server's own validation, once, where the options are built
        if self.max_replicas is not None and self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self

    def server_settings(self, server_id: str | None = None) -> Settings:
        """One replica's server settings."""
        values = {**self.settings, "max_sessions": self.sessions_per_replica}
        if server_id is not None:
            values["server_id"] = server_id
        return Settings(**values)

    @property
    def replica_gpus(self) -> float:
        if self.gpus_per_replica is not None:
            return self.gpus_per_replica
        settings = self.server_settings()
        return 1.0 if settings.backend_name == "ditto" and settings.device != "cpu" else 0.0

    def forced_stop_after_s(self, shutdown_grace_s: float) -> float:
        """How long a stopping replica lets its sessions run once it learns it is stopping: the drain
        timeout less the time to learn it (two report intervals) and to close them (``shutdown_grace_s``),
        so that they end with 1012 before Serve kills the replica."""
        return max(0.0, self.drain_timeout_s - 2 * self.report_interval_s - shutdown_grace_s)

    def replica_deployment_options(self) -> dict[str, Any]:
        """``Deployment.options`` of the streaming replicas.

        ``max_ongoing_requests`` is one more than the sessions a replica admits: Serve routes a new
        WebSocket only to a replica below it, so sessions go to replicas with room; the one spare
        slot lets a replica that is full answer ``busy`` (1013) at once when every replica is full,
        where Serve would otherwise hold the handshake in its queue. Every connection (HTTP probes
        too) counts as one ongoing request while it is open.
        """
        options: dict[str, Any] = {
            "max_ongoing_requests": self.sessions_per_replica + 1,
            "ray_actor_options": {"num_gpus": self.replica_gpus, "num_cpus": self.cpus_per_replica},
            "graceful_shutdown_timeout_s": self.drain_timeout_s,
            "health_check_period_s": self.health_check_period_s,
            "health_check_timeout_s": self.health_check_timeout_s,
        }
        if self.max_replicas is None:
            options["num_replicas"] = self.num_replicas
        else:
            options["autoscaling_config"] = {
                "min_replicas": self.min_replicas,
                "max_replicas": self.max_replicas,
                "initial_replicas": max(self.min_replicas, min(self.num_replicas, self.max_replicas)),
                "target_ongoing_requests": max(1.0, self.target_utilization * self.sessions_per_replica),
            }
        return options

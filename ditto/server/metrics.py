"""Prometheus metrics, in a registry owned by one app (no process-global collectors)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ditto.backends.base import AnimatorBackend

if TYPE_CHECKING:
    from ditto.server.sessions import SessionRegistry

LATENCY_BUCKETS_S = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
RENDER_BUCKETS_S = (0.002, 0.005, 0.01, 0.02, 0.03, 0.04, 0.06, 0.08, 0.1, 0.2, 0.5)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions_active = Gauge(
            "ditto_sessions_active", "Sessions open now (read from the session registry)", registry=r
        )
        self.sessions_total = Counter("ditto_sessions", "Sessions accepted", registry=r)
        self.sessions_refused = Counter("ditto_sessions_refused", "Sessions refused", ["reason"], registry=r)
        self.errors = Counter("ditto_errors", "Errors sent to clients", ["code"], registry=r)
        self.frames_sent = Counter("ditto_frames_sent", "Video frames sent", registry=r)
        self.frames_skipped = Counter("ditto_frames_skipped", "Video frames skipped for slow clients", registry=r)
        self.bytes_sent = Counter("ditto_bytes_sent", "Bytes of frame messages sent", registry=r)
        self.first_frame_latency = Histogram(
            "ditto_first_frame_latency_seconds",
            "start_streaming received -> first frame sent",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.frame_render = Histogram(
            "ditto_frame_render_seconds", "Backend time to produce one frame", buckets=RENDER_BUCKETS_S, registry=r
        )
        self.frame_encode = Histogram(
            "ditto_frame_encode_seconds", "JPEG encoding time of one frame", buckets=RENDER_BUCKETS_S, registry=r
        )

    def watch(self, sessions: "SessionRegistry", backend: AnimatorBackend) -> None:
        """Read admission and the backend's engine at scrape time (they are the one source of truth)."""
        self.sessions_active.set_function(lambda: sessions.active)
        r = self.registry
        Gauge("ditto_live_sessions_active", "Live sessions streaming now", registry=r).set_function(
            lambda: sessions.live
        )
        Gauge(
            "ditto_live_sessions_capacity", "Live sessions admitted at most (kept real time)", registry=r
        ).set_function(lambda: sessions.max_live)
        r.register(_EngineCollector(backend))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector(Collector):
    """The backend's per-stage batch counters (``stage_stats``), read at each scrape."""

    def __init__(self, backend: AnimatorBackend) -> None:
        self._backend = backend

    def collect(self) -> Iterator[Metric]:
        stats = self._backend.stage_stats()
        families = (
            (CounterMetricFamily, "ditto_engine_batches", "Batches the device engine ran", "batches"),
            (CounterMetricFamily, "ditto_engine_items", "Work items (windows, frames) in those batches", "items"),
            (CounterMetricFamily, "ditto_engine_busy_seconds", "Time the device engine spent on batches", "busy_s"),
            (CounterMetricFamily, "ditto_engine_launch_seconds", "Host time spent launching batches", "launch_s"),
            (CounterMetricFamily, "ditto_engine_batch_failures", "Batches that raised", "failures"),
            (GaugeMetricFamily, "ditto_engine_last_batch_size", "Size of the stage's latest batch", "last_batch"),
            (GaugeMetricFamily, "ditto_engine_mean_batch_size", "Mean batch size so far", "mean_batch"),
            (GaugeMetricFamily, "ditto_engine_queued", "Items waiting for the device engine", "queued"),
        )
        for family_type, name, doc, field in families:
            family = family_type(name, doc, labels=["stage"])
            for stage, values in stats.items():
                family.add_metric([stage], float(getattr(values, field)))
            yield family

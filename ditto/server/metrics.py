"""Prometheus metrics, in a registry owned by one app (no process-global collectors)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS_S = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
RENDER_BUCKETS_S = (0.002, 0.005, 0.01, 0.02, 0.03, 0.04, 0.06, 0.08, 0.1, 0.2, 0.5)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions_active = Gauge("ditto_sessions_active", "Sessions open now (read from the session registry)",
                                     registry=r)
        self.sessions_total = Counter("ditto_sessions", "Sessions accepted", registry=r)
        self.sessions_refused = Counter("ditto_sessions_refused", "Sessions refused", ["reason"], registry=r)
        self.errors = Counter("ditto_errors", "Errors sent to clients", ["code"], registry=r)
        self.frames_sent = Counter("ditto_frames_sent", "Video frames sent", registry=r)
        self.frames_skipped = Counter("ditto_frames_skipped", "Video frames skipped for slow clients", registry=r)
        self.bytes_sent = Counter("ditto_bytes_sent", "Bytes of frame messages sent", registry=r)
        self.first_frame_latency = Histogram(
            "ditto_first_frame_latency_seconds", "start_streaming received -> first frame sent",
            buckets=LATENCY_BUCKETS_S, registry=r)
        self.frame_render = Histogram(
            "ditto_frame_render_seconds", "Backend time to produce one frame", buckets=RENDER_BUCKETS_S, registry=r)
        self.frame_encode = Histogram(
            "ditto_frame_encode_seconds", "JPEG encoding time of one frame", buckets=RENDER_BUCKETS_S, registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)

"""Prometheus metrics of the server, in a registry of its own (served at GET /metrics on the HTTP port).

Route labels are route templates ("/v2/models/{name}/infer"), never raw paths, so a client cannot grow
the series count by inventing URLs. The autoscaler reads lepton_server_inflight_requests (metric
"concurrency") and lepton_server_requests_total (metric "rps") through the custom metrics API.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .drift import DriftCollector

LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "lepton_server_requests", "HTTP requests answered, by route template and status code.",
            ["route", "code"], registry=r,
        )  # fmt: skip
        self.request_seconds = Histogram(
            "lepton_server_request_seconds", "Time to answer a request (to its last byte), by route template.",
            ["route"], buckets=LATENCY, registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "lepton_server_time_to_first_token_seconds",
            "Time from a generation request's arrival to its first generated token.", buckets=LATENCY, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "lepton_server_batch_size", "Requests per forward batch.", buckets=SIZES, registry=r
        )
        self.queue_wait = Histogram(
            "lepton_server_queue_wait_seconds", "Time a request waited in the batching queue.",
            buckets=LATENCY, registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge("lepton_server_queue_depth", "Requests waiting in the batching queue.", registry=r)
        self.inflight = Gauge(
            "lepton_server_inflight_requests", "Requests being answered now (health and metrics excluded).",
            registry=r,
        )  # fmt: skip
        # Wall-clock time of the last request (or of the model being ready): the operator scales a service
        # with minReplicas 0 to zero once every replica's is older than idleSeconds. A timestamp rather than
        # a counter, so that the decision needs no memory of earlier scrapes (a new leader decides at once).
        self.last_request = Gauge(
            "lepton_server_last_request_timestamp_seconds",
            "Unix time the last request arrived (health and metrics excluded), or the model became ready.",
            registry=r,
        )  # fmt: skip
        self.load_seconds = Gauge(
            "lepton_server_model_load_seconds", "Time to load and warm the model (0 until loaded).", registry=r
        )
        self.drift = DriftCollector()  # lepton_server_drift_*: the service attaches its monitor (spec.drift)
        r.register(self.drift)

    # the batcher's Observer
    def batch(self, size: int, queue_waits: Sequence[float]) -> None:
        self.batch_size.observe(size)
        for wait in queue_waits:
            self.queue_wait.observe(wait)

    def depth(self, queued: int) -> None:
        self.queue_depth.set(queued)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

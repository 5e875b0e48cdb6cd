"""Prometheus metrics of the operator, in a registry of its own (no process-wide globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.reconciles = Counter(
            "lepton_reconcile_total",
            "Reconciles by kind and outcome (ok, invalid, error).",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "lepton_reconcile_duration_seconds",
            "Time spent in one reconcile, by kind.",
            ["kind"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.errors = Counter(
            "lepton_reconcile_errors_total",
            "Reconcile passes that raised, by kind and reason (exception type or HTTP status); each is retried "
            "with capped exponential backoff.",
            ["kind", "reason"],
            registry=self.registry,
        )
        self.loops = Gauge(
            "lepton_reconcile_loops",
            "Per-object reconcile loops alive, by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.resources = Gauge(
            "lepton_resources",
            "Resources the operator knows, by kind and phase.",
            ["kind", "phase"],
            registry=self.registry,
        )
        self._phases: dict[tuple[str, str, str], str] = {}

    def observe_phase(self, kind: str, namespace: str, name: str, phase: str | None) -> None:
        """Record the phase of one resource (None: it is gone); the per-phase gauge moves by one, so a
        call costs the same at 10 objects or 10,000."""
        key = (kind, namespace, name)
        old = self._phases.get(key)
        if old == phase:
            return
        if old is not None:
            self.resources.labels(kind=kind, phase=old).dec()
        if phase is None:
            self._phases.pop(key, None)
        else:
            self._phases[key] = phase
            self.resources.labels(kind=kind, phase=phase).inc()

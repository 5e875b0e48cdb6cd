"""Prometheus metrics of the operator, in a registry of its own (no process-wide globals).

Labels stay bounded: kind, phase, state, reason, outcome and namespace, never an object's name; what is
per object (its phase, its trial counts, the GPUs it holds) is kept here and summed into the families.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from lepton.api import KINDS
from lepton.api.common import CommonStatus
from lepton.api.constants import TERMINAL_PHASES, Phase
from lepton.api.inferenceservice import InferenceServiceStatus
from lepton.api.trainingjob import TrainingJobStatus
from lepton.api.tuningstudy import TuningStudyStatus
from lepton.status.observations import PREPARATION, QUEUE_WAIT, READY, RESTART, STARTUP, observations

# Seconds: from a CPU job starting at once to a gang waiting an hour for GPUs.
WAIT_BUCKETS = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
TRIAL_STATES = ("running", "succeeded", "pruned", "failed", "retried")
RECONCILE_OUTCOMES = ("ok", "invalid", "error")
RESTART_REASONS = ("Error", "OOMKilled", "Evicted", "Deleted", "DeadlineExceeded", "Unknown")  # kubelet's, and ours
PREPARATION_OUTCOMES = ("succeeded", "failed")


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, kinds: Sequence[str] = tuple(KINDS)) -> None:
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
        self.ages = PhaseAges()
        self.registry.register(self.ages)
        self.startup = Histogram(
            "lepton_trainingjob_startup_seconds",
            "TrainingJob: from creation until every pod of its first gang runs.",
            buckets=WAIT_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "lepton_trainingjob_queue_wait_seconds",
            "TrainingJob: from creation until its first gang is scheduled (admitted by the queue, placed).",
            buckets=WAIT_BUCKETS,
            registry=self.registry,
        )
        self.restarts = Counter(
            "lepton_trainingjob_restarts_total",
            "TrainingJob rank failures (each a gang restart or an elastic replacement), by the failure's reason.",
            ["reason"],
            registry=self.registry,
        )
        self.ready = Histogram(
            "lepton_inferenceservice_ready_seconds",
            "InferenceService: from creation, or from losing Ready, until Ready (every wanted replica serves).",
            buckets=WAIT_BUCKETS,
            registry=self.registry,
        )
        self.preparation = Histogram(
            "lepton_dataset_preparation_seconds",
            "Dataset: one preparation, from its start until published (succeeded) or failed.",
            ["outcome"],
            buckets=WAIT_BUCKETS,
            registry=self.registry,
        )
        self.trials = Gauge(
            "lepton_tuningstudy_trials",
            "TuningStudy trials summed over every study, by state (retried: runs retried after infrastructure "
            "failures).",
            ["state"],
            registry=self.registry,
        )
        self._trials: dict[tuple[str, str], tuple[int, ...]] = {}
        self.gpus = GpuSeconds()
        self.registry.register(self.gpus)
        self.leader = Gauge(
            "lepton_operator_leader",
            "1 while this replica leads (acts), 0 while it stands by; without leader election always 1.",
            registry=self.registry,
        )
        self.leader_transitions = Counter(
            "lepton_operator_leader_transitions_total",
            "Times this replica started or stopped leading.",
            registry=self.registry,
        )
        self._start_at_zero(kinds)

    def _start_at_zero(self, kinds: Sequence[str]) -> None:
        """Every series of a known, bounded label value exists from the start, at 0 (Prometheus's advice):
        a rate, a dashboard panel or an alert over it has a series before the first error, restart or
        failed preparation, instead of no data, and `increase` sees the first one."""
        for kind in kinds:
            self.loops.labels(kind=kind)
            self.duration.labels(kind=kind)
            for outcome in RECONCILE_OUTCOMES:
                self.reconciles.labels(kind=kind, outcome=outcome)
            for phase in Phase:
                self.resources.labels(kind=kind, phase=phase.value)
        for reason in RESTART_REASONS:
            self.restarts.labels(reason=reason)
        for state in TRIAL_STATES:
            self.trials.labels(state=state)
        for outcome in PREPARATION_OUTCOMES:
            self.preparation.labels(outcome=outcome)
        self.ages.kinds = tuple(kinds)

    def observe_phase(self, kind: str, namespace: str, name: str, phase: str | None) -> None:
        """Record the phase of one resource (None: it is gone); the per-phase gauge moves by one, so a
        call costs the same at 10 objects or 10,000."""
        key = (kind, namespace, name)
        old = self._phases.get(key)
        if old == phase:
            return
        self.ages.enter(key, phase)
        if old is not None:
            self.resources.labels(kind=kind, phase=old).dec()
        if phase is None:
            self._phases.pop(key, None)
        else:
            self._phases[key] = phase
            self.resources.labels(kind=kind, phase=phase).inc()

    def observe(self, kind: str, body: Mapping[str, Any], old: CommonStatus, new: CommonStatus,
                now: datetime | None = None) -> None:  # fmt: skip
        """Everything one status transition of one resource (`body`, as read) tells."""
        meta, spec = body.get("metadata") or {}, body.get("spec") or {}
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        self.observe_phase(kind, namespace, name, new.phase)
        for o in observations(kind, meta.get("creationTimestamp"), old, new, now or datetime.now(UTC)):
            if o.family == STARTUP:
                self.startup.observe(o.value)
            elif o.family == QUEUE_WAIT:
                self.queue_wait.observe(o.value)
            elif o.family == RESTART:
                self.restarts.labels(reason=o.reason or "Unknown").inc()
            elif o.family == READY:
                self.ready.observe(o.value)
            elif o.family == PREPARATION:
                self.preparation.labels(outcome=o.outcome).observe(o.value)
        if isinstance(new, TuningStudyStatus):
            counts = new.trials.model_dump() if new.trials is not None else {}
            self._set_trials((namespace, name), tuple(int(counts.get(s, 0)) for s in TRIAL_STATES))
        if isinstance(new, TrainingJobStatus):
            self.gpus.hold(namespace, name, _running(new.ready) * int(spec.get("gpusPerNode") or 0))
        if isinstance(new, InferenceServiceStatus):  # replicas that exist hold their GPUs, serving or not
            replicas = new.replicas + (new.canary_ready_replicas or 0)
            self.gpus.hold(namespace, f"{kind}/{name}", replicas * int(spec.get("gpus") or 0))

    def forget(self, kind: str, namespace: str, name: str) -> None:
        """The resource is gone: it holds no phase, no trials and no GPU any more."""
        self.observe_phase(kind, namespace, name, None)
        if kind == "TuningStudy":
            self._set_trials((namespace, name), None)
        if kind == "TrainingJob":
            self.gpus.hold(namespace, name, 0)
        if kind == "InferenceService":
            self.gpus.hold(namespace, f"{kind}/{name}", 0)

    def _set_trials(self, key: tuple[str, str], counts: tuple[int, ...] | None) -> None:
        old = self._trials.get(key, (0,) * len(TRIAL_STATES))
        new = counts or (0,) * len(TRIAL_STATES)
        for state, a, b in zip(TRIAL_STATES, old, new, strict=True):
            if a != b:
                self.trials.labels(state=state).inc(b - a)
        if counts is None:
            self._trials.pop(key, None)
        else:
            self._trials[key] = counts


class PhaseAges(Collector):
    """How long the oldest resource of each kind has been in its current phase (finished phases left
    out; 0 while none is in it): what an alert on a job stuck Pending, or a service not Ready, reads.
    Counted from when this operator process first saw it in that phase."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.kinds: tuple[str, ...] = ()  # each with every phase that does not end it: 0 while none is in it
        self._entered: dict[tuple[str, str, str], tuple[str, float]] = {}

    def enter(self, key: tuple[str, str, str], phase: str | None) -> None:
        if phase is None or phase in TERMINAL_PHASES:
            self._entered.pop(key, None)
        else:
            self._entered[key] = (phase, self.clock())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = self.clock()
        oldest = {(kind, p.value): 0.0 for kind in self.kinds for p in Phase if p not in TERMINAL_PHASES}
        for (kind, _, _), (phase, since) in self._entered.items():
            oldest[(kind, phase)] = max(oldest.get((kind, phase), 0.0), now - since)
        family = GaugeMetricFamily(
            "lepton_phase_oldest_seconds",
            "Seconds the oldest resource of a kind has been in its phase (phases that end a resource left out).",
            labels=["kind", "phase"],
        )
        for (kind, phase), age in sorted(oldest.items()):
            family.add_metric([kind, phase], age)
        yield family


class GpuSeconds(Collector):
    """GPU-seconds allocated to running TrainingJob pods and InferenceService replicas, per namespace (a
    counter computed at scrape time, so its rate is exact whatever the reconcile cadence), and the GPUs
    allocated now."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._held: dict[tuple[str, str], tuple[int, float]] = {}  # (namespace, name) -> (gpus, since)
        self._spent: dict[str, float] = {}  # namespace -> GPU-seconds of allocations that ended

    def hold(self, namespace: str, name: str, gpus: int) -> None:
        now = self.clock()
        before, since = self._held.get((namespace, name), (0, now))
        if before == gpus:
            return
        self._spent[namespace] = self._spent.get(namespace, 0.0) + before * (now - since)
        if gpus:
            self._held[(namespace, name)] = (gpus, now)
        else:
            self._held.pop((namespace, name), None)

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        now = self.clock()
        spent = dict(self._spent)
        held: dict[str, int] = {}
        for (namespace, _), (gpus, since) in self._held.items():
            spent[namespace] = spent.get(namespace, 0.0) + gpus * (now - since)
            held[namespace] = held.get(namespace, 0) + gpus
        seconds = CounterMetricFamily("lepton_gpu_seconds", "GPU-seconds allocated to running TrainingJob pods and "
                                      "InferenceService replicas, by namespace.", labels=["namespace"])  # fmt: skip
        allocated = GaugeMetricFamily("lepton_gpus_allocated", "GPUs allocated to running TrainingJob pods and "
                                      "InferenceService replicas now, by namespace.", labels=["namespace"])  # fmt: skip
        for namespace in sorted(spent):
            seconds.add_metric([namespace], spent[namespace])
            allocated.add_metric([namespace], held.get(namespace, 0))
        yield seconds
        yield allocated


def _running(ready: str | None) -> int:
    """'3/4' -> 3 (status.ready: pods running of the gang)."""
    try:
        return int((ready or "0/0").split("/")[0])
    except ValueError:
        return 0

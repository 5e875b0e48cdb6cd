"""The tuner's Prometheus metrics, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from lepton.api.tuner import StudySummary

STATES = ("running", "waiting", "complete", "pruned", "fail")
OUTCOMES = ("ok", "bad_request", "unauthorized", "conflict", "too_large", "error")
# A trial runs minutes to days; a suggestion takes milliseconds (TPE) to seconds (GP at thousands).
DURATION_BUCKETS = (30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0)
SUGGEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class TunerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.trials = Gauge("lepton_tuner_trials", "Trials in the study's storage, by state.", ["state"],
                            registry=self.registry)  # fmt: skip
        self.duration = Histogram(
            "lepton_tuner_trial_duration_seconds",
            "Start to finish of a trial, observed when the tuner finishes it.",
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.best = Gauge("lepton_tuner_best_value", "Best value of the (first) objective so far.",
                          registry=self.registry)  # fmt: skip
        self.suggest = Histogram(
            "lepton_tuner_suggest_seconds",
            "Time of one ask: creating a trial and sampling all its parameters.",
            buckets=SUGGEST_BUCKETS,
            registry=self.registry,
        )
        self.syncs = Counter("lepton_tuner_syncs", "Sync requests, by outcome.", ["outcome"], registry=self.registry)
        for state in STATES:
            self.trials.labels(state=state)
        for outcome in OUTCOMES:
            self.syncs.labels(outcome=outcome)

    def observe_summary(self, summary: StudySummary) -> None:
        for state in STATES:
            self.trials.labels(state=state).set(getattr(summary, state))
        if summary.best and summary.best[0].values:
            self.best.set(summary.best[0].values[0])

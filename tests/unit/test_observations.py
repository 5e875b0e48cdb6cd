"""Lifecycle metrics: what a status transition tells (status/observations.py), and how the operator's
families sum it up with bounded labels (controller/metrics.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import generate_latest

from lepton.api.common import CommonStatus
from lepton.api.dataset import DatasetStatus
from lepton.api.inferenceservice import InferenceServiceStatus
from lepton.api.trainingjob import TrainingJobStatus
from lepton.api.tuningstudy import TuningStudyStatus
from lepton.controller.metrics import GpuSeconds, OperatorMetrics, PhaseAges
from lepton.status.observations import Observation, observations

CREATED = "2026-01-01T12:00:00Z"
NOW = datetime(2026, 1, 1, 12, 1, 30, tzinfo=UTC)  # 90 s after creation


def cond(type_: str, status: str, at: str = "2026-01-01T12:00:30Z") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": "R", "lastTransitionTime": at}


def tj(phase: str | None, **fields: Any) -> TrainingJobStatus:
    return TrainingJobStatus.model_validate({"phase": phase, **fields})


FAIL = {"attempt": 0, "pod": "j-0-1", "reason": "OOMKilled", "exitCode": 137, "time": "2026-01-01T12:01:00Z"}


@pytest.mark.parametrize(
    ("name", "kind", "old", "new", "expected"),
    [
        ("a new job placed at once", "TrainingJob", tj(None), tj("Starting"), [Observation("queue_wait", 90.0)]),
        ("scheduled then running", "TrainingJob", tj("Starting"), tj("Running"), [Observation("startup", 90.0)]),
        ("placed and running in one pass", "TrainingJob", tj("Pending"), tj("Running"),
         [Observation("queue_wait", 90.0), Observation("startup", 90.0)]),
        ("still pending", "TrainingJob", tj("Pending"), tj("Pending"), []),
        ("running again after a gang restart: not a startup", "TrainingJob",
         tj("Starting", attempt=1, restarts=1), tj("Running", attempt=1, restarts=1), []),
        ("a rank failed: one restart by its reason", "TrainingJob", tj("Running"),
         tj("Restarting", attempt=1, restarts=1, failures=[FAIL]), [Observation("restart", reason="OOMKilled")]),
        ("the same failure seen again", "TrainingJob", tj("Restarting", failures=[FAIL]),
         tj("Restarting", failures=[FAIL]), []),
        ("a preparation published", "Dataset",
         DatasetStatus.model_validate({"phase": "Preparing", "conditions": [cond("Reconciling", "True")]}),
         DatasetStatus(phase="Ready"), [Observation("preparation", 60.0, outcome="succeeded")]),
        ("a preparation failed", "Dataset",
         DatasetStatus.model_validate({"phase": "Preparing", "conditions": [cond("Reconciling", "True")]}),
         DatasetStatus(phase="Failed"), [Observation("preparation", 60.0, outcome="failed")]),
        ("ready for the first time", "InferenceService", InferenceServiceStatus(),
         InferenceServiceStatus.model_validate({"conditions": [cond("Ready", "True")]}), [Observation("ready", 90.0)]),
        ("ready again, since it lost Ready", "InferenceService",
         InferenceServiceStatus.model_validate({"conditions": [cond("Ready", "False", "2026-01-01T12:01:20Z")]}),
         InferenceServiceStatus.model_validate({"conditions": [cond("Ready", "True")]}), [Observation("ready", 10.0)]),
        ("ready stays ready", "InferenceService",
         InferenceServiceStatus.model_validate({"conditions": [cond("Ready", "True")]}),
         InferenceServiceStatus.model_validate({"conditions": [cond("Ready", "True")]}), []),
    ],
)  # fmt: skip
def test_observations(name: str, kind: str, old: CommonStatus, new: CommonStatus, expected: list[Observation]) -> None:
    assert observations(kind, CREATED, old, new, NOW) == expected, name


def body(kind: str, name: str, ns: str = "team-a", **spec: Any) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"namespace": ns, "name": name, "creationTimestamp": CREATED}, "spec": spec}


def sample(metrics: OperatorMetrics, line: str) -> float:
    text = generate_latest(metrics.registry).decode()
    return float(next(row.rsplit(" ", 1)[1] for row in text.splitlines() if row.startswith(line + " ")))


def test_families_sum_objects_with_bounded_labels() -> None:
    m = OperatorMetrics()
    m.observe("TrainingJob", body("TrainingJob", "a", gpusPerNode=8), tj("Pending"), tj("Running", ready="2/2"), NOW)
    m.observe("TrainingJob", body("TrainingJob", "a"), tj("Running"), tj("Restarting", failures=[FAIL]), NOW)
    study = {"trials": {"total": 5, "running": 2, "succeeded": 3}}
    m.observe(
        "TuningStudy", body("TuningStudy", "s1"), TuningStudyStatus(), TuningStudyStatus.model_validate(study), NOW
    )
    m.observe(
        "TuningStudy", body("TuningStudy", "s2"), TuningStudyStatus(), TuningStudyStatus.model_validate(study), NOW
    )
    assert sample(m, "lepton_trainingjob_startup_seconds_count") == 1
    assert sample(m, 'lepton_trainingjob_restarts_total{reason="OOMKilled"}') == 1
    assert sample(m, 'lepton_tuningstudy_trials{state="running"}') == 4
    m.forget("TuningStudy", "team-a", "s1")
    assert sample(m, 'lepton_tuningstudy_trials{state="succeeded"}') == 3
    text = generate_latest(m.registry).decode()
    assert '"a"' not in text and '"s2"' not in text  # no object's name in any label


def test_gpu_seconds_accrue_while_pods_run_and_stop_with_them() -> None:
    clock = [100.0]
    gpus = GpuSeconds(clock=lambda: clock[0])
    gpus.hold("team-a", "big", 16)
    clock[0] = 110.0
    gpus.hold("team-b", "small", 1)
    clock[0] = 130.0
    assert _values(gpus) == {
        ("lepton_gpu_seconds_total", "team-a"): 480.0, ("lepton_gpu_seconds_total", "team-b"): 20.0,
        ("lepton_gpus_allocated", "team-a"): 16.0, ("lepton_gpus_allocated", "team-b"): 1.0,
    }  # fmt: skip
    gpus.hold("team-a", "big", 0)  # finished
    clock[0] = 200.0
    values = _values(gpus)
    assert values[("lepton_gpu_seconds_total", "team-a")] == 480.0 and values[("lepton_gpus_allocated", "team-a")] == 0


def _values(collector: GpuSeconds) -> dict[tuple[str, str], float]:
    return {(s.name, s.labels["namespace"]): s.value for family in collector.collect() for s in family.samples}


def test_the_oldest_in_each_phase_is_what_a_stuck_alert_reads() -> None:
    clock = [0.0]
    ages = PhaseAges(clock=lambda: clock[0])
    ages.enter(("TrainingJob", "a", "old"), "Pending")
    clock[0] = 100.0
    ages.enter(("TrainingJob", "a", "new"), "Pending")
    ages.enter(("InferenceService", "a", "web"), "Starting")
    clock[0] = 160.0
    ages.enter(("InferenceService", "a", "web"), "Running")
    ages.enter(("TrainingJob", "b", "done"), "Succeeded")  # finished: no age
    got = {(s.labels["kind"], s.labels["phase"]): s.value for f in ages.collect() for s in f.samples}
    assert got == {("TrainingJob", "Pending"): 160.0, ("InferenceService", "Running"): 0.0}
    ages.enter(("TrainingJob", "a", "old"), None)  # deleted
    got = {(s.labels["kind"], s.labels["phase"]): s.value for f in ages.collect() for s in f.samples}
    assert got[("TrainingJob", "Pending")] == 60.0


def test_inferenceservice_replicas_hold_their_gpus_until_they_go() -> None:
    from lepton.api.inferenceservice import InferenceServiceStatus

    m = OperatorMetrics()
    svc = body("InferenceService", "chat", gpus=2)
    m.observe("InferenceService", svc, InferenceServiceStatus(), InferenceServiceStatus(replicas=3), NOW)
    assert sample(m, 'lepton_gpus_allocated{namespace="team-a"}') == 6
    m.observe("InferenceService", svc, InferenceServiceStatus(replicas=3),
              InferenceServiceStatus(replicas=1, canary_ready_replicas=1), NOW)  # fmt: skip
    assert sample(m, 'lepton_gpus_allocated{namespace="team-a"}') == 4
    m.forget("InferenceService", "team-a", "chat")
    assert sample(m, 'lepton_gpus_allocated{namespace="team-a"}') == 0

"""TrainingJob lifecycle as a table: observed pods (and time) in, phase, reason and gang decision out."""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from lepton.api.conditions import get_condition
from lepton.api.contract import ProgressReport
from lepton.api.kinds import TrainingJob
from lepton.api.validation import parse
from lepton.status.events import trainingjob_events
from lepton.status.trainingjob import Decision, PodView, backoff_seconds, decide
from tests.conftest import EXAMPLES

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
BASE = yaml.safe_load((EXAMPLES / "trainingjob.yaml").read_text())


def job(status: dict[str, Any] | None = None, **spec: Any) -> TrainingJob:
    doc = copy.deepcopy(BASE)
    doc["metadata"] = {"name": "llm", "namespace": "ns", "uid": "u-1", "generation": 2}
    doc["spec"].update(spec)
    doc["status"] = status or {}
    result = parse(doc)
    assert isinstance(result, TrainingJob)
    return result


def pod(index: int, phase: str = "Running", attempt: int = 0, **kw: Any) -> PodView:
    return PodView(name=f"llm-{attempt}-{index}", attempt=attempt, phase=phase, scheduled=phase != "Pending",
                   index=index, uid=kw.pop("uid", f"uid-{attempt}-{index}"), created=NOW - timedelta(seconds=30),
                   **kw)  # fmt: skip


RUNNING = [pod(0), pod(1)]
UNSCHED = "0/5 nodes are available: 4 Insufficient nvidia.com/gpu. pod group is unschedulable"


@pytest.mark.parametrize(
    ("name", "the_job", "pods", "phase", "reason", "create", "ready"),
    [
        ("new job: create the gang", job(), [], "Pending", "Pending", True, "0/2"),
        (
            "unschedulable: scheduler's words",
            job(),
            [pod(0, "Pending", unschedulable=UNSCHED), pod(1, "Pending", unschedulable=UNSCHED)],
            "Pending",
            "Unschedulable",
            True,
            "0/2",
        ),
        (
            "scheduled, not running yet",
            job(),
            [replace(pod(0, "Pending"), scheduled=True), replace(pod(1, "Pending"), scheduled=True)],
            "Starting",
            "Starting",
            True,
            "0/2",
        ),
        (
            "image pull backoff stalls",
            job(),
            [
                replace(
                    pod(0, "Pending"),
                    scheduled=True,
                    waiting_reason="ImagePullBackOff",
                    waiting_message='Back-off pulling image "x"',
                ),
                pod(1),
            ],
            "Starting",
            "ImagePullBackOff",
            True,
            "1/2",
        ),
        ("all running", job(), RUNNING, "Running", "Running", True, "2/2"),
        (
            "crash loop in a sidecar stalls",
            job(),
            [replace(pod(0, "Pending"), scheduled=True, waiting_reason="CrashLoopBackOff"), pod(1)],
            "Starting",
            "CrashLoopBackOff",
            True,
            "1/2",
        ),
        ("all succeeded", job(), [pod(0, "Succeeded"), pod(1, "Succeeded")], "Succeeded", "Succeeded", False, "0/2"),
        (
            "rank OOM-killed: gang restart",
            job(),
            [pod(0), pod(1, "Failed", terminated_reason="OOMKilled", exit_code=137)],
            "Restarting",
            "OOMKilled",
            False,
            "0/2",
        ),
        (
            "backoff limit reached",
            job(status={"restarts": 3, "attempt": 3, "phase": "Running"}, backoffLimit=3),
            [pod(0, attempt=3), pod(1, "Failed", attempt=3, terminated_reason="Error", exit_code=1)],
            "Failed",
            "BackoffLimitExceeded",
            False,
            "0/2",
        ),
        ("suspended", job(suspend=True), RUNNING, "Suspended", "Suspended", False, "0/2"),
        (
            "deadline exceeded",
            job(status={"startTime": "2026-01-01T10:00:00Z", "phase": "Running"}, activeDeadlineSeconds=3600),
            RUNNING,
            "Failed",
            "DeadlineExceeded",
            False,
            "0/2",
        ),
        (
            "startup deadline while unschedulable",
            job(startupDeadlineSeconds=10),
            [pod(0, "Pending", unschedulable=UNSCHED), pod(1, "Pending", unschedulable=UNSCHED)],
            "Failed",
            "Unschedulable",
            False,
            "0/2",
        ),
        (
            "waiting out the backoff",
            job(status={"restarts": 1, "attempt": 1, "nextAttemptTime": "2026-01-01T12:00:20Z", "phase": "Restarting"}),
            [],
            "Restarting",
            None,
            False,
            "0/2",
        ),
        (
            "backoff over: next attempt",
            job(status={"restarts": 1, "attempt": 1, "nextAttemptTime": "2026-01-01T11:59:50Z", "phase": "Restarting"}),
            [],
            "Pending",
            "Pending",
            True,
            "0/2",
        ),
        (
            "finished stays finished",
            job(status={"phase": "Succeeded"}),
            [pod(0, "Succeeded")],
            "Succeeded",
            None,
            False,
            "0/2",
        ),
    ],
)
def test_lifecycle(name: str, the_job: TrainingJob, pods: list[PodView], phase: str, reason: str | None,
                   create: bool, ready: str) -> None:  # fmt: skip
    decision = decide(the_job, pods, NOW)
    assert decision.status.phase == phase, name
    assert decision.create is create, name
    assert decision.status.ready == ready, name
    assert decision.status.observed_generation == 2
    if reason is not None:
        cond = get_condition(decision.status.conditions, "Ready")
        assert cond is not None and cond.reason == reason, (name, cond)


def test_unschedulable_message_is_the_schedulers() -> None:
    d = decide(job(), [pod(0, "Pending", unschedulable=UNSCHED), pod(1, "Pending", unschedulable=UNSCHED)], NOW)
    ready = get_condition(d.status.conditions, "Ready")
    assert ready is not None and UNSCHED in ready.message


def test_gang_restart_bumps_attempt_records_failure_and_backs_off() -> None:
    d = decide(job(), [pod(0), pod(1, "Failed", terminated_reason="OOMKilled", exit_code=137)], NOW)
    assert d.attempt == 1 and d.status.restarts == 1 and d.status.attempt == 1 and d.keep == frozenset()
    assert d.requeue_after == backoff_seconds(1) == 10
    assert d.status.next_attempt_time == "2026-01-01T12:00:10Z"
    (failure,) = d.status.failures
    assert (failure.pod, failure.reason, failure.exit_code) == ("llm-0-1", "OOMKilled", 137)


def test_backoff_failed_reports_the_first_failure() -> None:
    first = {"attempt": 0, "pod": "llm-0-1", "reason": "OOMKilled", "exitCode": 137, "time": "2026-01-01T11:00:00Z"}
    d = decide(
        job(status={"restarts": 1, "attempt": 1, "failures": [first]}, backoffLimit=1),
        [pod(0, attempt=1), pod(1, "Failed", attempt=1, terminated_reason="Error", exit_code=2)],
        NOW,
    )
    failed = get_condition(d.status.conditions, "Failed")
    assert d.status.phase == "Failed" and failed is not None and failed.status == "True"
    assert "first failure: llm-0-1: OOMKilled (exit code 137)" in failed.message
    assert [f.reason for f in d.status.failures] == ["OOMKilled", "Error"]


def test_a_new_gang_waits_until_the_old_one_is_gone() -> None:
    terminating = replace(pod(0, attempt=1), deleting=True)
    d = decide(job(status={"restarts": 2, "attempt": 2}), [terminating], NOW)
    assert (d.status.phase, d.create, d.keep) == ("Restarting", False, frozenset())
    d = decide(job(status={"restarts": 2, "attempt": 2}), [], NOW)
    assert d.create and d.keep == {"llm-2-0", "llm-2-1"}


STARTED = {"phase": "Running", "startTime": "2026-01-01T11:50:00Z"}


@pytest.mark.parametrize(
    ("name", "status", "pods", "restarts", "lost"),
    [
        ("seen deleting while running", STARTED, [pod(0), replace(pod(1), deleting=True)], 1, "llm-0-1"),
        ("seen deleting before the job saw it run", {}, [pod(0), replace(pod(1), deleting=True)], 1, "llm-0-1"),
        ("gone from a started gang", STARTED, [pod(0)], 1, "llm-0-1"),
        ("the whole started gang gone", STARTED, [], 1, "llm-0-0"),
        # not lost: not created yet (or not seen yet) before the gang ever ran
        ("missing before the gang ran", {"phase": "Pending"}, [pod(0)], 0, None),
        # not lost: it finished, and its deletion is someone's cleanup
        ("a finished rank deleted", STARTED, [pod(0), replace(pod(1, "Succeeded"), deleting=True)], 0, None),
        # not lost: a new attempt's pods are not created yet (the restart reset startTime)
        ("after a restart", {"phase": "Restarting", "attempt": 1, "restarts": 1}, [], 1, None),
    ],
)
def test_a_rank_deleted_from_outside_restarts_the_gang_once(
    name: str, status: dict[str, Any], pods: list[PodView], restarts: int, lost: str | None
) -> None:
    """kubectl delete, an eviction or a preemption: the gang cannot go on, and the same pod made again in
    the same attempt would join a closed rendezvous. The restart is counted and says why."""
    d = decide(job(status=status), pods, NOW)
    assert d.status.restarts == restarts, name
    if lost is None:
        assert not d.status.failures or d.status.failures[-1].reason != "Deleted", name
        return
    assert (d.status.phase, d.attempt, d.keep, d.create) == ("Restarting", 1, frozenset(), False), name
    failure = d.status.failures[-1]
    assert (failure.pod, failure.reason) == (lost, "Deleted"), name
    ready = get_condition(d.status.conditions, "Ready")
    assert ready is not None and f"{lost}: Deleted" in ready.message and "before it finished" in ready.message


def test_an_elastic_gang_replaces_a_deleted_rank_instead() -> None:
    elastic = job(status=STARTED, nodes=None, minNodes=2, maxNodes=3)
    d = decide(elastic, [pod(0), pod(1)], NOW)
    assert (d.status.phase, d.status.restarts, d.create) == ("Running", 0, True)


def test_suspend_then_resume_keeps_active_time_and_counts_on() -> None:
    running = job(status={"startTime": "2026-01-01T11:50:00Z", "phase": "Running"}, suspend=True)
    suspended = decide(running, RUNNING, NOW).status
    assert suspended.active_seconds == 600 and suspended.start_time is None
    resumed = job(status=suspended.to_wire(), suspend=False)
    d = decide(resumed, [], NOW + timedelta(hours=5))
    assert d.attempt == 1 and d.status.attempt == 1 and d.status.restarts == 0, "a new gang, not a failure"
    assert d.keep == {"llm-1-0", "llm-1-1"} and d.create
    again = job(status=d.status.to_wire(), suspend=False)
    d = decide(again, [pod(0, attempt=1), pod(1, attempt=1)], NOW + timedelta(hours=5))
    assert d.status.phase == "Running" and d.status.active_seconds == 600 and d.attempt == 1
    cond = get_condition(d.status.conditions, "Suspended")
    assert cond is not None and cond.status == "False"


def test_elastic_job_runs_with_min_nodes() -> None:
    elastic = job(nodes=None, minNodes=2, maxNodes=4)
    d = decide(elastic, [pod(0), pod(1), pod(2, "Pending", unschedulable="no room"), pod(3, "Pending")], NOW)
    assert d.status.phase == "Running" and d.status.ready == "2/4" and len(d.keep) == 4


ELASTIC = {"nodes": None, "minNodes": 2, "maxNodes": 3}
LOST = {"terminated_reason": "Error", "exit_code": 1}
RECORDED = {"restarts": 1, "failures": [{"attempt": 0, "pod": "llm-0-2", "podUID": "uid-0-2", "elastic": True,
                                         "reason": "Error", "time": "2026-01-01T11:59:00Z"}]}  # fmt: skip


@pytest.mark.parametrize(
    ("name", "the_job", "pods", "phase", "attempt", "restarts", "keep"),
    [
        (
            "a lost rank: go on with the rest, replace it",
            job(**ELASTIC),
            [pod(0), pod(1), pod(2, "Failed", **LOST)],
            "Running",
            0,
            1,
            {"llm-0-0", "llm-0-1"},
        ),
        (
            "the same loss seen again: counted once",
            job(status=RECORDED, **ELASTIC),
            [pod(0), pod(1), pod(2, "Failed", **LOST)],
            "Running",
            0,
            1,
            {"llm-0-0", "llm-0-1"},
        ),
        (
            "the replacement lost too: counted again",
            job(status=RECORDED, **ELASTIC),
            [pod(0), pod(1), pod(2, "Failed", uid="uid-0-2-again", **LOST)],
            "Running",
            0,
            2,
            {"llm-0-0", "llm-0-1"},
        ),
        (
            "replacement running: all nodes again",
            job(status=RECORDED, **ELASTIC),
            [pod(0), pod(1), pod(2, uid="uid-0-2-again")],
            "Running",
            0,
            1,
            {"llm-0-0", "llm-0-1", "llm-0-2"},
        ),
        (
            "pod 0 hosts the rendezvous: gang restart",
            job(**ELASTIC),
            [pod(0, "Failed", **LOST), pod(1), pod(2)],
            "Restarting",
            1,
            1,
            set(),
        ),
        (
            "fewer than minNodes left: gang restart",
            job(**ELASTIC),
            [pod(0), pod(1, "Failed", **LOST), pod(2, "Failed", **LOST)],
            "Restarting",
            1,
            1,
            set(),
        ),
        (
            "no recovery left: failed",
            job(status={"restarts": 3}, backoffLimit=3, **ELASTIC),
            [pod(0), pod(1), pod(2, "Failed", **LOST)],
            "Failed",
            0,
            3,
            {"llm-0-2"},  # finished pods stay for their logs
        ),
    ],
)
def test_elastic_job_goes_on_without_a_lost_node(name: str, the_job: TrainingJob, pods: list[PodView], phase: str,
                                                 attempt: int, restarts: int, keep: set[str]) -> None:  # fmt: skip
    d = decide(the_job, pods, NOW)
    assert (d.status.phase, d.attempt, d.status.restarts, set(d.keep)) == (phase, attempt, restarts, keep), name
    if phase == "Running":
        assert d.create, name


def test_elastic_loss_is_recorded_and_explained() -> None:
    d = decide(job(**ELASTIC), [pod(0), pod(1), pod(2, "Failed", terminated_reason="OOMKilled", exit_code=137)], NOW)
    (failure,) = d.status.failures
    assert (failure.pod, failure.pod_uid, failure.elastic, failure.reason) == ("llm-0-2", "uid-0-2", True, "OOMKilled")
    ready = get_condition(d.status.conditions, "Ready")
    assert ready is not None and ready.status == "True" and ready.reason == "NodeLost"
    assert ready.message == "Going on with 2 of 3 nodes (minNodes 2); replacing llm-0-2: OOMKilled"


def test_status_is_stable_when_nothing_changes() -> None:
    first = decide(job(), RUNNING, NOW).status
    again = decide(job(status=first.to_wire()), RUNNING, NOW + timedelta(seconds=5)).status
    assert again == first


@pytest.mark.parametrize(("restarts", "seconds"), [(1, 10), (2, 20), (3, 40), (6, 300), (20, 300)])
def test_backoff_grows_exponentially_to_a_cap(restarts: int, seconds: float) -> None:
    assert backoff_seconds(restarts) == seconds


def test_pod_view_reads_a_real_pod() -> None:
    raw = {
        "metadata": {"name": "llm-0-1", "labels": {"lepton.ai/attempt": "0"},
                     "creationTimestamp": "2026-01-01T11:00:00Z"},
        "spec": {"nodeName": "gpu-node-1"},
        "status": {"phase": "Failed", "containerStatuses": [
            {"state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]},
    }  # fmt: skip
    view = PodView.of(raw)
    assert (view.phase, view.scheduled, view.terminated_reason, view.exit_code) == ("Failed", True, "OOMKilled", 137)


def test_a_job_waits_for_what_it_references() -> None:
    d = decide(job(), [], NOW, waiting_for=["Dataset 'support-tickets' has no published version yet"])
    assert (d.status.phase, d.create) == ("Pending", False)
    assert d.requeue_after == 5.0  # nothing wakes it when the Dataset changes: it looks again
    refs = get_condition(d.status.conditions, "ReferencesResolved")
    assert refs is not None and refs.status == "False" and "support-tickets" in refs.message
    resolved = decide(job(status=d.status.to_wire()), [], NOW)
    refs = get_condition(resolved.status.conditions, "ReferencesResolved")
    assert resolved.create and refs is not None and refs.status == "True"


def test_rank_zero_progress_reaches_status() -> None:
    report = {"step": 30, "totalSteps": 120, "epoch": 0.75, "loss": 2.345678, "samplesPerSecond": 912.44,
              "etaSeconds": 40.2, "checkpoint": "/mnt/pvc/models/llm/checkpoints/step-00000030"}  # fmt: skip
    st = decide(job(), RUNNING, NOW, progress=ProgressReport.parse(report)).status
    assert st.progress is not None and st.progress.to_wire() == {
        "step": 30, "totalSteps": 120, "percent": 25, "epoch": 0.75, "loss": "2.3457",
        "samplesPerSecond": "912.4", "etaSeconds": 40,
    }  # fmt: skip
    assert st.latest_checkpoint == report["checkpoint"]
    odd = decide(job(), RUNNING, NOW, progress=ProgressReport.parse({"step": "x", "loss": None})).status
    assert odd.progress is not None and odd.progress.step is None and odd.phase == "Running"


def test_success_records_where_the_model_is() -> None:
    d = decide(job(), [pod(0, "Succeeded"), pod(1, "Succeeded")], NOW)
    assert d.status.output_model == "pvc://models/tiny-gpt2-support"


def test_evaluations_reach_status_one_per_step_merged_with_earlier_ones() -> None:
    earlier = {"evaluations": [{"step": 10, "metrics": {"eval_loss": "2.5"}}], "phase": "Running"}
    report = {"step": 30, "evaluations": [
        {"step": 20, "metrics": {"eval_loss": 2.123456789, "loss": 2.4}},
        {"step": 30, "metrics": {"eval_loss": float("nan"), "loss": 2.2}},  # NaN dropped, the rest kept
        {"step": "x", "metrics": {"eval_loss": 1.0}},  # an odd entry: dropped
    ]}  # fmt: skip
    st = decide(job(earlier), RUNNING, NOW, progress=ProgressReport.parse(report)).status
    assert [(e.step, e.metrics) for e in st.evaluations] == [
        (10, {"eval_loss": "2.5"}), (20, {"eval_loss": "2.12346", "loss": "2.4"}), (30, {"loss": "2.2"}),
    ]  # fmt: skip
    many = {"evaluations": [{"step": s, "metrics": {"loss": 1.0}} for s in range(1, 40)]}
    kept = decide(job(earlier), RUNNING, NOW, progress=ProgressReport.parse(many)).status.evaluations
    assert len(kept) == 20 and kept[-1].step == 39  # the latest 20, oldest first


@pytest.mark.parametrize(
    ("message", "metrics"),
    [
        (
            '{"step": 12, "metrics": {"eval_loss": 1.5, "loss": 1.75}, "model": "/out"}',
            {"eval_loss": "1.5", "loss": "1.75"},
        ),
        ("Traceback (most recent call last): ...", {}),  # a log tail, not a summary
        ('{"metrics": {"eval_loss": "Infinity"}}', {}),
    ],
)
def test_success_records_rank_zeros_final_metrics(message: str, metrics: dict[str, str]) -> None:
    d = decide(job(), [pod(0, "Succeeded", summary=message), pod(1, "Succeeded", summary="{}")], NOW)
    assert d.status.metrics == metrics


def test_finished_jobs_read_as_done_to_gitops_tools() -> None:
    """kstatus (Flux) reads Ready=True as Current and Stalled=True as Failed; a finished job must not read
    InProgress forever. A failure is told as one Failed event, not a Stalled one as well."""

    def story(d: Decision) -> tuple[str, ...]:
        return tuple(c.status for t in ("Ready", "Reconciling", "Stalled")
                     if (c := get_condition(d.status.conditions, t)) is not None)  # fmt: skip

    running = decide(job(), [pod(0), pod(1)], NOW)
    ok = decide(job(), [pod(0, "Succeeded"), pod(1, "Succeeded")], NOW)
    failed = decide(job(backoffLimit=0), [pod(0), pod(1, "Failed", terminated_reason="Error", exit_code=1)], NOW)
    assert (story(running), story(ok), story(failed)) == (
        ("True", "False", "False"), ("True", "False", "False"), ("False", "False", "True"))  # fmt: skip
    assert [e.reason for e in trainingjob_events(running.status, failed.status)] == ["RankFailed", "Failed"]

"""A TuningStudy's pure decisions, table-tested: what it tells the tuner, and from the tuner's reply and
its trial runs, the phase, the conditions, the counters, which runs to create, stop, resume or delete."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from lepton.api import TuningStudy
from lepton.api.conditions import ConditionType, get_condition
from lepton.api.tuner import StudySummary, SyncReply, TrialInfo
from lepton.api.tuningstudy import trial_name
from lepton.api.validation import parse
from lepton.status.tuningstudy import RunView, StudyDecision, TunerView, decide, sync_request

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
UID = "7e1d2c3b-4a59-4e6f-8a7b-9c0d1e2f3a4b"
TEMPLATE = {"model": {"uri": "/m", "init": "config"}, "data": {"uri": "/d"}, "nodes": 1, "output": {"uri": "/out"},
            "hyperparameters": {"maxSteps": 100, "evalEverySteps": 10}}  # fmt: skip


def study(status: dict[str, Any] | None = None, **spec: Any) -> TuningStudy:
    doc = {
        "apiVersion": "lepton.ai/v1alpha1", "kind": "TuningStudy",
        "metadata": {"name": "s", "namespace": "ns", "uid": UID, "generation": 1},
        "spec": {"objective": {"metric": "eval_loss"}, "maxTrials": 4, "parallelism": 2, "backoffLimit": 1,
                 "searchSpace": [{"name": "learningRate", "type": "float", "low": 0.0001, "high": 0.1}],
                 "trialTemplate": {"trainingJob": TEMPLATE}} | spec,
        "status": status or {},
    }  # fmt: skip
    resource = parse(doc)
    assert isinstance(resource, TuningStudy)
    return resource


RUNNING = {"phase": "Running", "startTime": "2026-11-28T11:00:00Z"}


def run(number: int, phase: str | None = "Running", *, retry: int = 0, reason: str = "", suspend: bool = False,
        evaluations: dict[int, float] | None = None, metrics: dict[str, str] | None = None,
        failures: tuple[str, ...] = ()) -> RunView:  # fmt: skip
    name = f"s-{number}" + (f"-r{retry}" if retry else "")
    status: dict[str, Any] = {"phase": phase, "outputModel": f"/out/s-{number}"}
    if reason:
        status["conditions"] = [{"type": "Failed", "status": "True", "reason": reason, "message": "why"}]
    if evaluations:
        status["evaluations"] = [{"step": s, "metrics": {"eval_loss": str(v)}} for s, v in evaluations.items()]
    status["metrics"] = metrics or {}
    status["failures"] = [{"reason": r} for r in failures]
    obj = {"apiVersion": "lepton.ai/v1alpha1", "kind": "TrainingJob",
           "metadata": {"name": name, "namespace": "ns", "labels": {"lepton.ai/trial": str(number)},
                        "annotations": {"lepton.ai/retry": str(retry)}},
           "spec": {**TEMPLATE, "suspend": suspend}, "status": status}  # fmt: skip
    view = RunView.of(obj)
    assert view is not None
    return view


def trial(number: int, state: str = "running", value: float | None = None) -> TrialInfo:
    return TrialInfo(number=number, state=state, parameters={"learningRate": 0.001 * (number + 1)},
                     values=[value] if value is not None else None)  # fmt: skip


def reply(*trials: TrialInfo, **counts: int) -> SyncReply:
    done = [t for t in trials if t.state == "complete" and t.values]
    best = sorted(done, key=lambda t: (t.values or [0])[0])
    summary = StudySummary(total=counts.get("total", len(trials)), running=sum(t.state == "running" for t in trials),
                           complete=len(done), pruned=sum(t.state == "pruned" for t in trials),
                           fail=sum(t.state == "fail" for t in trials), best=best[:1], top=best[:5])  # fmt: skip
    return SyncReply(trials=list(trials), summary=summary)


def names(d: StudyDecision) -> list[tuple[str, bool]]:
    """Runs stopped (True) or resumed (False), then runs created (False), by name."""
    return [(body["metadata"]["name"], flag) for body, flag in d.suspend] + [
        (trial_name("s", t.number, t.retry), False) for t in d.start
    ]


def condition(d: StudyDecision, type_: str) -> tuple[str, str] | None:
    c = get_condition(d.status.conditions, type_)
    return (c.status, c.reason) if c is not None else None


# --- what the tuner is told --------------------------------------------------------------------------
def test_a_study_asks_only_once_running_and_not_suspended() -> None:
    assert sync_request(study(), [], NOW).parallelism == 0  # Pending: the first sync only reads the study
    assert sync_request(study(RUNNING), [], NOW).parallelism == 2
    assert sync_request(study(RUNNING, suspend=True), [], NOW).parallelism == 0


@pytest.mark.parametrize(
    ("runs", "told"),
    [
        ([run(0, "Succeeded", metrics={"eval_loss": "0.5", "loss": "0.7"})], [(0, "complete", [0.5])]),
        ([run(0, "Succeeded", metrics={"loss": "0.7"})], [(0, "fail", None)]),  # the objective never reported
        ([run(0, "Failed", reason="BackoffLimitExceeded", failures=("OOMKilled",))], [(0, "fail", None)]),
        ([run(0, "Failed", reason="Unschedulable")], []),  # infrastructure: retried, not told
        ([run(0, "Failed", reason="Unschedulable", retry=1)], [(0, "fail", None)]),  # retries spent
        ([run(0, "Failed", reason="BackoffLimitExceeded", failures=("Evicted", "Preempted"))], []),
        ([run(0), run(1, "Suspended", suspend=True)], []),
    ],
)
def test_results_are_told_for_runs_that_ended(runs: list[RunView], told: list[tuple[int, str, Any]]) -> None:
    request = sync_request(study(RUNNING), runs, NOW)
    assert [(r.number, r.state, r.values) for r in request.results] == told


def test_every_evaluation_is_reported_at_its_step_for_single_objective_studies() -> None:
    runs = [
        run(0, evaluations={10: 2.0, 20: 1.5}),
        run(1, "Succeeded", evaluations={10: 3.0}, metrics={"eval_loss": "3"}),
    ]
    request = sync_request(study(RUNNING), runs, NOW)
    assert [(r.number, r.step, r.value) for r in request.reports] == [(0, 10, 2.0), (0, 20, 1.5), (1, 10, 3.0)]
    assert request.known == [0, 1]
    two = study(RUNNING, objective=None, objectives=[{"metric": "eval_loss"}, {"metric": "loss"}],
                pruner={"type": "none"})  # fmt: skip
    assert sync_request(two, runs, NOW).reports == []  # Optuna prunes no multi-objective study


def test_an_ending_study_stops_its_running_trials_as_pruned() -> None:
    last = reply(trial(0, "complete", 0.4), trial(1, "complete", 0.5), trial(2, "complete", 0.6), trial(3))
    request = sync_request(study(RUNNING, goal=0.45), [run(3)], NOW, last)
    assert request.parallelism == 0
    assert [(r.number, r.state) for r in request.results] == [(3, "pruned")]
    assert "goal" in request.results[0].message
    # A trial asked in the very sync that reached the goal has no run yet: it is told too, or it would
    # stay running in the tuner and the study would never end.
    late = reply(trial(0, "complete", 0.4), trial(1, "complete", 0.5), trial(2, "complete", 0.6), trial(3), trial(4))
    request = sync_request(study(RUNNING, goal=0.45), [run(3)], NOW, late)
    assert [(r.number, r.state) for r in request.results] == [(3, "pruned"), (4, "pruned")]
    assert request.known == [3, 4]


# --- decisions --------------------------------------------------------------------------------------
def test_a_new_study_waits_for_its_tuner_then_runs() -> None:
    d = decide(study(), [], TunerView(), now=NOW)
    assert (d.status.phase, d.tuner, condition(d, ConditionType.READY)) == ("Pending", True, ("False", "TunerStarting"))
    d = decide(study(), [], TunerView(exists=True, ready=True, error="connection refused"), now=NOW)
    assert condition(d, ConditionType.RECONCILING) == ("True", "TunerUnreachable")
    d = decide(study(), [], TunerView(exists=True, waiting_reason="ImagePullBackOff", message="no such image"),
               now=NOW)  # fmt: skip
    assert condition(d, ConditionType.STALLED) == ("True", "ImagePullBackOff")
    d = decide(study(RUNNING), [], TunerView(exists=True, ready=True, error="HTTP 401", refused=True), now=NOW)
    assert (d.tuner, d.status.phase) == (False, "Running")  # deleted, and created with the current token next
    d = decide(study(), [], TunerView(exists=True, unschedulable="0/5 nodes are available"), now=NOW)
    assert condition(d, ConditionType.RECONCILING) == ("True", "Unschedulable")
    d = decide(study(), [], TunerView(exists=True, ready=True, reply=reply()), now=NOW)
    assert d.status.phase == "Running" and d.status.start_time and d.requeue_after == 2.0  # asks next pass


def test_running_trials_without_a_run_get_one_and_finished_ones_are_stopped() -> None:
    r = reply(trial(0), trial(1), trial(2, "pruned"))
    d = decide(study(RUNNING), [run(0), run(2)], TunerView(exists=True, ready=True, reply=r), now=NOW)
    assert names(d) == [("s-2", True), ("s-1", False)]  # pruned: suspended (checkpoint kept); 1: created
    assert d.status.phase == "Running" and condition(d, ConditionType.READY) == ("True", "TrialsRunning")
    assert d.status.trials is not None and (d.status.trials.running, d.status.trials.pruned) == (2, 1)
    assert d.status.trials_done == "1/4"


def test_an_infrastructure_failure_is_retried_without_spending_the_budget() -> None:
    r = reply(trial(0))
    failed = run(0, "Failed", reason="Unschedulable")
    d = decide(study(RUNNING), [failed], TunerView(exists=True, ready=True, reply=r), now=NOW)
    assert names(d) == [("s-0-r1", False)]
    assert "s-0" in d.keep  # the failed run stays for its story (retention applies)
    d = decide(study(RUNNING), [failed, run(0, retry=1)], TunerView(exists=True, ready=True, reply=r), now=NOW)
    assert names(d) == [] and d.status.trials is not None and d.status.trials.retried == 1


@pytest.mark.parametrize(
    ("spec", "counts", "phase", "reason"),
    [
        ({}, ["complete"] * 3 + ["pruned"], "Succeeded", "MaxTrialsReached"),
        ({"goal": 0.15}, ["complete"], "Succeeded", "GoalReached"),
        ({"maxFailedTrials": 1}, ["fail", "fail"], "Failed", "TooManyFailedTrials"),
        ({"maxDurationSeconds": 60}, ["complete"], "Succeeded", "MaxDurationReached"),
        ({"activeDeadlineSeconds": 60}, ["complete"], "Failed", "DeadlineExceeded"),
    ],
)
def test_budgets_end_the_study(spec: dict[str, Any], counts: list[str], phase: str, reason: str) -> None:
    r = reply(*[trial(i, s, 0.1 * (i + 1) if s == "complete" else None) for i, s in enumerate(counts)])
    s = study(RUNNING, **spec)  # started an hour ago
    d = decide(s, [], TunerView(exists=True, ready=True, reply=r), now=NOW)
    assert (d.status.phase, d.tuner, d.status.completion_time) == (phase, False, "2026-11-28T12:00:00Z")
    kind = ConditionType.SUCCEEDED if phase == "Succeeded" else ConditionType.FAILED
    assert condition(d, kind) == ("True", reason)
    # kstatus: a study that succeeded is Current (Ready), one that failed is Failed (Stalled)
    assert condition(d, ConditionType.READY if phase == "Succeeded" else ConditionType.STALLED) == ("True", reason)


def test_an_ending_study_stops_running_trials_before_it_ends() -> None:
    r = reply(trial(0, "complete", 0.1), trial(1, "pruned"))
    d = decide(study(RUNNING, goal=0.2), [run(0, "Succeeded"), run(1)], TunerView(exists=True, ready=True, reply=r),
               now=NOW)  # fmt: skip
    assert d.status.phase == "Running" and names(d) == [("s-1", True)]
    assert condition(d, ConditionType.READY) == ("True", "StoppingTrials")
    d = decide(study(RUNNING, goal=0.2), [run(0, "Succeeded"), run(1, "Suspended", suspend=True)],
               TunerView(exists=True, ready=True, reply=r), now=NOW)  # fmt: skip
    assert d.status.phase == "Succeeded" and not d.tuner


def test_suspend_stops_trials_and_the_tuner_and_resume_starts_them_again() -> None:
    d = decide(study(RUNNING, suspend=True), [run(0), run(1)], TunerView(), now=NOW)
    assert (d.status.phase, d.tuner, names(d)) == ("Suspended", False, [("s-0", True), ("s-1", True)])
    assert {"s-0", "s-1"} <= d.keep
    suspended = {"phase": "Suspended", "startTime": "2026-11-28T11:00:00Z",
                 "conditions": [{"type": "Suspended", "status": "True", "reason": "Suspended", "message": "",
                                 "lastTransitionTime": "2026-11-28T11:30:00Z"}]}  # fmt: skip
    runs = [run(0, "Suspended", suspend=True), run(1, "Suspended", suspend=True)]
    d = decide(study(suspended), runs, TunerView(exists=True, ready=True, reply=reply(trial(0), trial(1))), now=NOW)
    assert names(d) == [("s-0", False), ("s-1", False)]
    assert condition(d, ConditionType.SUSPENDED) == ("False", "Resumed")


def test_retention_keeps_live_runs_the_best_and_the_newest_finished() -> None:
    r = reply(*[trial(i, "complete", 1.0 - 0.01 * (i == 1)) for i in range(5)], trial(5))
    runs = [run(i, "Succeeded", metrics={"eval_loss": "1"}) for i in range(5)] + [run(5)]
    d = decide(study(RUNNING, trialRetention=2, maxTrials=10), runs, TunerView(exists=True, ready=True, reply=r),
               now=NOW)  # fmt: skip
    assert d.keep == {"s-5", "s-4", "s-3", "s-1"}  # running 5, newest 4 and 3, best 1
    assert d.status.best_trial is not None and (d.status.best_trial.number, d.status.best_trial.model) == (
        1,
        "/out/s-1",
    )
    assert [t.number for t in d.status.top_trials] == [1, 0, 2, 3, 4]


def test_the_study_waits_for_its_references_with_a_condition() -> None:
    d = decide(study(), [], TunerView(), waiting=["Dataset 'tickets' has no published version yet"], now=NOW)
    assert (d.status.phase, d.tuner) == ("Pending", False)
    assert condition(d, ConditionType.REFERENCES_RESOLVED) == ("False", "ReferenceNotReady")


def test_the_dataset_version_is_pinned_once() -> None:
    d = decide(study(), [], TunerView(), dataset_version="aaaa", now=NOW)
    assert d.status.dataset_version == "aaaa"
    pinned = study({"datasetVersion": "aaaa"})
    assert decide(pinned, [], TunerView(), dataset_version="bbbb", now=NOW).status.dataset_version == "aaaa"


def test_a_finished_study_runs_nothing() -> None:
    done = study({"phase": "Succeeded", "completionTime": "2026-11-28T11:59:00Z"})
    d = decide(done, [run(0, "Succeeded")], TunerView(exists=True, ready=True), now=NOW + timedelta(hours=1))
    assert (d.status.phase, d.tuner, d.start, d.suspend) == ("Succeeded", False, [], [])


def test_a_grid_search_ends_when_its_points_are_spent() -> None:
    grid = study(RUNNING, sampler={"type": "grid"}, maxTrials=20,
                 searchSpace=[{"name": "learningRate", "type": "float", "low": 0.01, "high": 0.03, "step": 0.01},
                              {"name": "batchSize", "type": "categorical", "choices": ["8", "16"]}])  # fmt: skip
    assert sync_request(grid, [], NOW).max_trials == 6  # 3 x 2 points: Optuna would repeat them after
    r = reply(*[trial(i, "complete", 1.0) for i in range(6)])
    d = decide(grid, [], TunerView(exists=True, ready=True, reply=r), now=NOW)
    assert (d.status.phase, d.status.trials_done) == ("Succeeded", "6/6")
    assert "grid's 6 points" in (get_condition(d.status.conditions, ConditionType.SUCCEEDED) or d).message  # type: ignore[union-attr]

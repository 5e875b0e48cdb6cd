"""A Dataset's status from its preparation Job and the summary its pod left: a table of situations."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lepton.api.conditions import get_condition
from lepton.api.dataset import PreparationError, PreparationSummary, SplitRows, StepCount
from lepton.api.validation import parse
from lepton.status.dataset import JOB_NAME_LABEL, PreparationView, decide
from lepton.status.events import dataset_events

NOW = "2026-11-28T12:00:00Z"
JOB, PREP = "tickets-0123abcd", "0123abcd" + "0" * 56
ROOT = "pvc://datasets/tickets"
SUMMARY = PreparationSummary(
    version="a1b2c3d4e5f60718", rows=SplitRows(train=90, validation=10), bytes=4096, columns=["text", "label"],
    steps=[StepCount(step="0:dedupe", rows_in=120, rows_out=100, details={"removed": 20})],
    versions=["a1b2c3d4e5f60718", "99887766aabbccdd"],
)  # fmt: skip


def dataset(status: dict[str, Any] | None = None, **spec: Any) -> Any:
    return parse({
        "apiVersion": "lepton.ai/v1alpha1", "kind": "Dataset",
        "metadata": {"name": "tickets", "namespace": "a", "uid": "u", "generation": 2},
        "spec": {"sources": [{"pvc": {"claimName": "raw"}}], "output": {"pvc": {"claimName": "datasets",
                                                                             "path": "tickets"}}} | spec,
        "status": status or {},
    })  # fmt: skip


def job(*, active: int = 0, complete: bool = False, failed: str | None = None) -> dict[str, Any]:
    conditions = [{"type": "Complete", "status": "True", "lastTransitionTime": "2026-11-28T11:59:00Z"}] * complete
    if failed:
        conditions.append({"type": "Failed", "status": "True", "reason": failed})
    return {"metadata": {"name": JOB}, "status": {"active": active, "conditions": conditions}}


def pod(message: str | None, finished: str = "2026-11-28T11:58:00Z", job_name: str = JOB) -> dict[str, Any]:
    term = {"exitCode": 0, "finishedAt": finished} | ({"message": message} if message else {})
    return {"metadata": {"labels": {JOB_NAME_LABEL: job_name}},
            "status": {"containerStatuses": [{"state": {"terminated": term}}]}}  # fmt: skip


FAILED = PreparationSummary(error=PreparationError(reason="BadFormat", message="not JSON", file="a.jsonl", line=7))
PUBLISHED = {"version": "99887766aabbccdd", "location": f"{ROOT}/versions/99887766aabbccdd", "preparedSpec": "old",
             "conditions": [{"type": "Ready", "status": "True", "reason": "Prepared", "message": "m",
                             "lastTransitionTime": NOW}]}  # fmt: skip

# name: (status, spec, job, pods, waiting) -> (phase, ready, reconciling, stalled, reason, message part)
CASES: dict[str, tuple[Any, dict[str, Any], Any, list[Any], list[str], tuple[str, str, str, str, str, str]]] = {
    "new, job being created": (None, {}, None, [], [], ("Preparing", "False", "True", "False", "Preparing",
                                                        f"Job {JOB} being created")),
    "running": (None, {}, job(active=1), [], [], ("Preparing", "False", "True", "False", "Preparing", "running")),
    "running, old version stays": (PUBLISHED, {}, job(active=1), [], [],
                                   ("Preparing", "True", "True", "False", "Preparing", "99887766aabbccdd stays")),
    "complete with summary": (None, {}, job(complete=True), [pod(SUMMARY.model_dump_json(by_alias=True))], [],
                              ("Ready", "True", "False", "False", "Prepared", "100 rows (90 train, 10 validation)")),
    "complete, reused": (None, {}, job(complete=True),
                         [pod(SUMMARY.model_copy(update={"reused": True}).model_dump_json(by_alias=True))], [],
                         ("Ready", "True", "False", "False", "VersionReused", "nothing recomputed")),
    "failed with a bad file": (None, {}, job(failed="BackoffLimitExceeded"), [pod(FAILED.model_dump_json())], [],
                               ("Failed", "False", "False", "True", "BadFormat", "a.jsonl:7: not JSON")),
    "failed, died before a summary": (None, {}, job(failed="BackoffLimitExceeded"),
                                      [pod("Traceback…\nMemoryError")], [],
                                      ("Failed", "False", "False", "True", "BackoffLimitExceeded", "MemoryError")),
    "failed, deadline": (None, {}, job(failed="DeadlineExceeded"), [], [],
                         ("Failed", "False", "False", "True", "DeadlineExceeded", "DeadlineExceeded")),
    "complete without a summary": (None, {}, job(complete=True), [pod(None)], [],
                                   ("Failed", "False", "False", "True", "PreparationFailed", "without a summary")),
    "an odd reason is not copied": (None, {}, job(failed="BackoffLimitExceeded"),
                                    [pod(json.dumps({"error": {"reason": "no spaces!", "message": "x"}}))], [],
                                    ("Failed", "False", "False", "True", "PreparationFailed", "x")),
    "pods of another job are ignored": (None, {}, job(active=1), [pod(FAILED.model_dump_json(), job_name="other")],
                                        [], ("Preparing", "False", "True", "False", "Preparing", "running")),
    "suspended": (None, {"suspend": True}, None, [], [], ("Suspended", "False", "False", "False", "Suspended",
                                                           "no preparation runs")),
    "waiting for the tokenizer": (None, {}, None, [], ["TrainingJob 'base' has not produced its model yet"],
                                  ("Pending", "False", "True", "False", "ReferenceNotReady", "TrainingJob 'base'")),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_decide(case: str) -> None:
    status, spec, the_job, pods, waiting, expected = CASES[case]
    ds = dataset(status, **spec)
    new = decide(ds, PreparationView.of(the_job, pods), job=JOB, preparation=PREP, output_root=ROOT,
                 waiting=waiting, now=NOW)  # fmt: skip
    phase, ready, reconciling, stalled, reason, part = expected
    got = {t: get_condition(new.conditions, t) for t in ("Ready", "Reconciling", "Stalled")}
    assert (new.phase, got["Ready"].status, got["Reconciling"].status, got["Stalled"].status) == (  # type: ignore[union-attr]
        phase, ready, reconciling, stalled)  # fmt: skip
    assert got["Ready"].reason == reason and part in got["Ready"].message  # type: ignore[union-attr]
    assert new.observed_generation == 2


def test_ready_records_the_summary() -> None:
    new = decide(dataset(), PreparationView.of(job(complete=True), [pod(SUMMARY.model_dump_json(by_alias=True))]),
                 job=JOB, preparation=PREP, output_root=ROOT, now=NOW)  # fmt: skip
    assert new.version == "a1b2c3d4e5f60718" and new.location == f"{ROOT}/versions/a1b2c3d4e5f60718"
    assert new.total_rows == 100 and new.bytes == 4096 and new.columns == ["text", "label"]
    assert new.steps[0].details == {"removed": 20} and new.versions == SUMMARY.versions
    assert new.prepared_spec == PREP and new.last_prepared_time == "2026-11-28T11:59:00Z"


def test_an_outcome_stands_once_recorded_even_when_the_job_is_gone() -> None:
    ready = decide(dataset(), PreparationView.of(job(complete=True), [pod(SUMMARY.model_dump_json(by_alias=True))]),
                   job=JOB, preparation=PREP, output_root=ROOT, now=NOW)  # fmt: skip
    again = decide(dataset(ready.to_wire()), PreparationView(), job=JOB, preparation=PREP, output_root=ROOT,
                   now="2026-11-28T13:00:00Z")  # fmt: skip
    assert again == ready


def test_the_newest_finished_pod_speaks() -> None:
    pods = [pod(FAILED.model_dump_json(), finished="2026-11-28T11:00:00Z"),
            pod(SUMMARY.model_dump_json(by_alias=True), finished="2026-11-28T11:30:00Z")]  # fmt: skip
    assert PreparationView.of(job(complete=True), pods).summary == SUMMARY


@pytest.mark.parametrize(
    ("old", "new_view", "reasons"),
    [
        (None, PreparationView.of(job(active=1), []), ["Preparing"]),
        (None, PreparationView.of(job(complete=True), [pod(SUMMARY.model_dump_json(by_alias=True))]), ["Prepared"]),
        (None, PreparationView.of(job(failed="BackoffLimitExceeded"), [pod(FAILED.model_dump_json())]),
         ["PreparationFailed"]),
    ],
)  # fmt: skip
def test_events_tell_each_outcome_once(old: Any, new_view: PreparationView, reasons: list[str]) -> None:
    ds = dataset(old)
    new = decide(ds, new_view, job=JOB, preparation=PREP, output_root=ROOT, now=NOW)
    assert [n.reason for n in dataset_events(ds.status, new)] == reasons
    again = decide(dataset(new.to_wire()), new_view, job=JOB, preparation=PREP, output_root=ROOT, now=NOW)
    assert dataset_events(new, again) == []

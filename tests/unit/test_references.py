"""datasetRef and modelFrom references resolve from the referenced objects' status, or say why not."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from lepton.api.kinds import TrainingJob
from lepton.api.validation import parse
from lepton.status.references import references, resolve
from tests.conftest import EXAMPLES

BASE = yaml.safe_load((EXAMPLES / "trainingjob.yaml").read_text())
READY = [{"type": "Ready", "status": "True"}]


def job(**spec: Any) -> TrainingJob:
    doc = copy.deepcopy(BASE)
    doc["spec"].update(spec)
    result = parse(doc)
    assert isinstance(result, TrainingJob)
    return result


def test_references_are_listed() -> None:
    j = job(model={"trainingJob": {"name": "base"}},
            distillation={"teacher": {"tuningStudy": {"name": "search"}}})  # fmt: skip
    assert references(j) == [("TrainingJob", "base"), ("Dataset", "support-tickets"), ("TuningStudy", "search")]


@pytest.mark.parametrize(
    ("found", "uris", "waiting"),
    [
        ({}, {}, "Dataset 'support-tickets' not found"),
        ({("Dataset", "support-tickets"): {"status": {"conditions": []}}}, {}, "has no published version yet"),
        (
            {("Dataset", "support-tickets"): {"status": {"conditions": READY, "location": "s3://d/v1/"}}},
            {"data": "s3://d/v1/train"},
            None,
        ),
    ],
    ids=["missing", "not-ready", "ready"],
)
def test_dataset_ref(found: dict[Any, Any], uris: dict[str, str], waiting: str | None) -> None:
    r = resolve(job(), found)
    assert r.uris == uris
    assert (waiting in " ".join(r.waiting)) if waiting else r.ready


@pytest.mark.parametrize(
    ("status", "uri"),
    [({"phase": "Running"}, None), ({"phase": "Succeeded", "outputModel": "s3://m/base"}, "s3://m/base")],
)
def test_model_from_a_trainingjob(status: dict[str, Any], uri: str | None) -> None:
    j = job(model={"trainingJob": {"name": "base"}}, data={"uri": "/d"})
    r = resolve(j, {("TrainingJob", "base"): {"status": status}})
    assert r.uris.get("model") == uri
    assert r.ready == (uri is not None)


BEST = {"number": 3, "value": "0.1", "model": "pvc://m/t3"}


@pytest.mark.parametrize(
    ("status", "uri", "why"),
    [
        ({}, None, "has not finished yet"),
        ({"phase": "Running", "bestTrial": BEST}, None, "has not finished yet (phase Running)"),  # may still change
        ({"phase": "Failed", "bestTrial": BEST}, None, "has not finished yet"),
        ({"phase": "Succeeded"}, None, "has no best trial with a model"),
        ({"phase": "Succeeded", "bestTrial": BEST}, "pvc://m/t3", None),
    ],
)
def test_model_from_a_tuningstudys_best_trial_once_it_succeeded(status: dict[str, Any], uri: str | None,
                                                                why: str | None) -> None:  # fmt: skip
    j = job(model={"tuningStudy": {"name": "s"}}, data={"uri": "/d"})
    r = resolve(j, {("TuningStudy", "s"): {"status": status}})
    assert r.uris.get("model") == uri
    assert (why is None) == r.ready and all(why in w for w in r.waiting)


PUBLISHED = {"status": {"conditions": READY, "version": "bbbb", "versions": ["bbbb", "aaaa"],
                        "location": "pvc://datasets/t/versions/bbbb"}}  # fmt: skip


@pytest.mark.parametrize(
    ("ref", "recorded", "uri", "version", "waiting"),
    [
        ({"name": "support-tickets"}, None, "pvc://datasets/t/versions/bbbb/train", "bbbb", None),
        ({"name": "support-tickets", "version": "aaaa", "split": "validation"}, None,
         "pvc://datasets/t/versions/aaaa/validation", "aaaa", None),
        ({"name": "support-tickets", "version": "cccc"}, None, None, None, "has no version 'cccc'"),
        # a job that started on a version keeps it (a gang restart reads the same data)
        ({"name": "support-tickets"}, "aaaa", "pvc://datasets/t/versions/aaaa/train", "aaaa", None),
    ],
    ids=["current", "pinned-older", "pinned-unknown", "recorded-by-the-job"],
)  # fmt: skip
def test_dataset_versions(ref: dict[str, Any], recorded: str | None, uri: str | None, version: str | None,
                          waiting: str | None) -> None:  # fmt: skip
    j = job(data={"datasetRef": ref})
    if recorded:
        j = j.model_copy(update={"status": j.status.model_copy(update={"dataset_version": recorded})})
    r = resolve(j, {("Dataset", "support-tickets"): PUBLISHED})
    assert r.uris.get("data") == uri and r.dataset_version == version
    assert (waiting in " ".join(r.waiting)) if waiting else r.ready


# --- lineage: what a model is built from, end to end ----------------------------------------------------
DATASET = {"status": {"conditions": READY, "location": "pvc://datasets/tickets/versions/v7", "version": "v7"}}
STUDY = {
    "status": {
        "phase": "Succeeded",
        "lineage": {"dataset": "support-tickets", "datasetVersion": "v7", "baseModel": "pvc://models/tiny"},
        "bestTrial": {"number": 3, "value": "0.5", "trainingJob": "search-3", "model": "pvc://o/search-3"},
    }
}
FINAL = {
    "status": {
        "phase": "Succeeded",
        "outputModel": "pvc://o/final",
        "lineage": {
            "dataset": "support-tickets",
            "datasetVersion": "v7",
            "tuningStudy": "search",
            "trial": 3,
            "trainingJob": "final",
            "baseModel": "pvc://o/search-3",
        },
    }
}


def service(model: dict[str, Any]) -> Any:
    doc = yaml.safe_load((EXAMPLES / "inferenceservice.yaml").read_text())
    doc["spec"]["model"] = model
    return parse(doc)


@pytest.mark.parametrize(
    ("resource", "found", "lineage"),
    [
        (lambda: job(model={"tuningStudy": {"name": "search"}}),
         {("TuningStudy", "search"): STUDY, ("Dataset", "support-tickets"): DATASET},
         {"dataset": "support-tickets", "datasetVersion": "v7", "tuningStudy": "search", "trial": 3,
          "trainingJob": "tiny-gpt2-support", "baseModel": "pvc://o/search-3"}),
        (lambda: job(data={"uri": "/d"}), {},
         {"trainingJob": "tiny-gpt2-support", "baseModel": "examples/models/tiny-gpt2"}),
        (lambda: service({"trainingJob": {"name": "final"}}), {("TrainingJob", "final"): FINAL},
         FINAL["status"]["lineage"]),
        (lambda: service({"tuningStudy": {"name": "search"}}), {("TuningStudy", "search"): STUDY},
         {"dataset": "support-tickets", "datasetVersion": "v7", "baseModel": "pvc://models/tiny",
          "tuningStudy": "search", "trial": 3, "trainingJob": "search-3"}),
        (lambda: service({"uri": "/models/m"}), {}, {"baseModel": "/models/m"}),
    ],
    ids=["job-from-study", "job-direct", "service-from-job", "service-from-study", "service-direct"],
)  # fmt: skip
def test_lineage_carries_the_data_version_study_and_trial_end_to_end(resource: Any, found: dict[Any, Any],
                                                                     lineage: dict[str, Any]) -> None:  # fmt: skip
    r = resolve(resource(), found)
    assert r.ready and r.lineage is not None and r.lineage.to_wire() == lineage


def test_lineage_waits_with_its_references_and_a_status_keeps_what_it_had() -> None:
    from lepton.api.common import Lineage
    from lepton.api.trainingjob import TrainingJobStatus
    from lepton.status.references import with_lineage

    waiting = resolve(job(model={"tuningStudy": {"name": "search"}}), {("Dataset", "support-tickets"): DATASET})
    assert not waiting.ready and waiting.lineage is None
    before = TrainingJobStatus(lineage=Lineage(dataset="support-tickets", dataset_version="v6"))
    assert with_lineage(before, waiting) is before
    ready = resolve(job(data={"uri": "/d"}), {})
    assert with_lineage(before, ready).lineage == ready.lineage
    assert with_lineage(with_lineage(before, ready), ready).lineage == ready.lineage

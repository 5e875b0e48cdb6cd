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

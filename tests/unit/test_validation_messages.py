"""Local validation words its errors as the apiserver does, so a fix reads the same everywhere."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from lepton.api.validation import ManifestError, parse
from tests.conftest import EXAMPLES

BASE = yaml.safe_load((EXAMPLES / "trainingjob.yaml").read_text())


def broken(**spec: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    doc["spec"].update(spec)
    return dict(doc)


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (
            broken(nodes=0),
            "spec.nodes: Invalid value: 0: spec.nodes in body should be greater than or equal to 1",
        ),
        (
            broken(nodes="two"),
            'spec.nodes: Invalid value: "string": spec.nodes in body must be of type integer: "string"',
        ),
        (broken(gpusPerNode=65), "spec.gpusPerNode in body should be less than or equal to 64"),
        (
            broken(task="translation"),
            'spec.task: Unsupported value: "translation": supported values: "causal-lm", "sequence-classification"',
        ),
        (broken(extra=True), 'unknown field "spec.extra"'),
        (broken(model={"uri": ""}), "spec.model.uri in body should be at least 1 chars long"),
        ({**BASE, "apiVersion": "lepton.ai/v1"}, 'apiVersion: Unsupported value: "lepton.ai/v1"'),
        ({**BASE, "kind": "TrainJob"}, 'kind: Unsupported value: "TrainJob"'),
        (
            {**BASE, "metadata": {"name": "Bad_Name"}},
            'metadata.name: Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain must consist of',
        ),
    ],
    ids=["minimum", "type", "maximum", "enum", "unknown-field", "min-length", "api-version", "kind", "name"],
)
def test_error_wording(doc: dict[str, Any], expected: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse(doc)
    assert expected in str(caught.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ManifestError) as caught:
        parse(broken(nodes=0, backend="mpi", gpusPerNode=-1))
    assert len(caught.value.problems) == 3
    assert str(caught.value).startswith("TrainingJob 'tiny-gpt2-support' is invalid:")


def test_every_broken_rule_of_an_object_is_reported() -> None:
    with pytest.raises(ManifestError) as caught:
        parse(broken(minNodes=2))  # nodes is set too, and maxNodes is missing: two rules
    first, second = caught.value.problems
    assert first.startswith("spec: Invalid value: nodes fixes the size")
    assert second == "spec: Invalid value: minNodes and maxNodes go together: set both for an elastic job"


def test_defaults_are_filled_in() -> None:
    job = parse(broken())
    assert job.kind == "TrainingJob"
    assert job.spec.backoff_limit == 3 and job.spec.backend == "auto" and job.spec.checkpoint.resume == "latest"

"""Local validation words its errors as the apiserver does, so a fix reads the same everywhere."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from lepton.api.validation import ManifestError, go_float, go_value, parse
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


@pytest.mark.parametrize(
    ("value", "printed"),
    [  # as kube-apiserver v1.37 printed them (Go's %v of a float64)
        (1e8, "1e+08"),
        (1234567.0, "1.234567e+06"),
        (123456.5, "123456.5"),
        (100000.0, "100000"),
        (-5e-08, "-5e-08"),
        (1e-07, "1e-07"),
        (0.0001, "0.0001"),
        (2e30, "2e+30"),
        (float(2**63), "9.223372036854776e+18"),
        (0.5, "0.5"),
        (-0.0, "-0"),
    ],
)
def test_floats_are_printed_as_go_prints_them(value: float, printed: str) -> None:
    assert go_float(value) == printed


def test_values_are_printed_as_the_apiserver_received_them() -> None:
    assert go_value(2.0) == "2"  # a Go client sends an integral float as an integer
    assert go_value(2**63) == "9.223372036854776e+18"  # beyond int64: a float64 on the apiserver
    assert go_value('Ab\u200d\n\x01é"') == '"Ab\\u200d\\n\\x01é\\""'  # Go's %q: printable characters stay
    assert go_value(True) == "true"

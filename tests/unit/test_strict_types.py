"""The local validator rejects what the apiserver rejects, with its words (issue 7, defects 2 and 3):
no coercion, no snake_case field names, no inf/NaN, integers within the maximum the CRD states,
Kubernetes quantities, DNS-1035 names where a name becomes a Service or host name. Each expected
line is what kube-apiserver v1.37 prints for the same manifest (tests/cluster/test_validation_parity.py
checks that on the real apiserver, for thousands of generated manifests)."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import yaml

from lepton.api.validation import ManifestError, ManifestLoader, parse
from tests.conftest import EXAMPLES

JOB = yaml.safe_load((EXAMPLES / "trainingjob.yaml").read_text())
SERVICE = yaml.safe_load((EXAMPLES / "inferenceservice.yaml").read_text())
STUDY = yaml.safe_load((EXAMPLES / "tuningstudy.yaml").read_text())


def job(path: str = "", value: Any = None, base: dict[str, Any] = JOB) -> dict[str, Any]:
    """The example TrainingJob with `value` set at a dotted `path` (or the key removed for ...)."""
    doc = copy.deepcopy(base)
    if path:
        *parents, last = path.split(".")
        target = doc
        for part in parents:
            target = target.setdefault(part, {})
        target[last] = value
    return doc


def renamed(name: str, base: dict[str, Any] = JOB) -> dict[str, Any]:
    doc = copy.deepcopy(base)
    doc["metadata"]["name"] = name
    return doc


def type_line(path: str, actual: str, expected: str) -> str:
    return f'{path}: Invalid value: "{actual}": {path} in body must be of type {expected}: "{actual}"'


REJECTED = [
    ("nodes-string", job("spec.nodes", "2"), type_line("spec.nodes", "string", "integer")),
    ("nodes-bool", job("spec.nodes", True), type_line("spec.nodes", "boolean", "integer")),
    ("nodes-fraction", job("spec.nodes", 2.5), type_line("spec.nodes", "number", "integer")),
    ("suspend-string", job("spec.suspend", "yes"), type_line("spec.suspend", "string", "boolean")),
    ("suspend-int", job("spec.suspend", 1), type_line("spec.suspend", "integer", "boolean")),
    ("image-int", job("spec.image", 5), type_line("spec.image", "integer", "string")),
    ("rate-string", job("spec.hyperparameters.learningRate", "0.1"),
     type_line("spec.hyperparameters.learningRate", "string", "number")),
    ("env-not-list", job("spec.env", {}), type_line("spec.env", "object", "array")),
    ("model-not-object", job("spec.model", "x"), type_line("spec.model", "string", "object")),
    ("list-item-null", job("spec.env", [None]), type_line("spec.env[0]", "null", "object")),
    ("snake-case", job("spec.gpus_per_node", 0), 'unknown field "spec.gpus_per_node"'),
    ("snake-case-nested", job("spec.hyperparameters.learning_rate", 0.1),
     'unknown field "spec.hyperparameters.learning_rate"'),
    ("object-where-int", job("spec.nodes", {"a": 1}), 'unknown field "spec.nodes.a"'),
    ("epochs-inf", job("spec.hyperparameters.epochs", math.inf), "spec.hyperparameters.epochs: Invalid value: +Inf"),
    ("epochs-nan", job("spec.hyperparameters.epochs", math.nan), "must be a finite number"),
    ("epochs-huge", job("spec.hyperparameters.epochs", 1e30),
     "spec.hyperparameters.epochs: Invalid value: 1e+30: spec.hyperparameters.epochs in body should be less than "
     "or equal to 100000"),
    ("seed-1e30", job("spec.hyperparameters.seed", 1e30), type_line("spec.hyperparameters.seed", "number", "integer")),
    ("seed-int-beyond-int64", job("spec.hyperparameters.seed", 10**30),
     type_line("spec.hyperparameters.seed", "number", "integer")),
    ("seed-beyond-uint32", job("spec.hyperparameters.seed", 2**40),
     "spec.hyperparameters.seed: Invalid value: 1099511627776: spec.hyperparameters.seed in body should be less "
     "than or equal to 4294967295"),
    ("max-steps-beyond-int32", job("spec.hyperparameters.maxSteps", 2**31),
     "spec.hyperparameters.maxSteps in body should be less than or equal to 2147483647"),
    ("cpu-lots", job("spec.resources", {"requests": {"cpu": "lots"}}),
     'spec.resources.requests.cpu: Invalid value: "lots": spec.resources.requests.cpu in body should match'),
    ("memory-negative", job("spec.resources", {"requests": {"memory": -5}}),
     "spec.resources.requests.memory: Invalid value: -5: spec.resources.requests.memory in body should be greater "
     "than or equal to 0"),
    ("quantity-negative-string", job("spec.resources", {"limits": {"memory": "-1Gi"}}),
     'spec.resources.limits.memory: Invalid value: "-1Gi"'),
    ("quantity-newline", job("spec.resources", {"limits": {"memory": "1\n"}}),
     'spec.resources.limits.memory: Invalid value: "1\\n"'),
    ("quantity-bool", job("spec.resources", {"limits": {"cpu": True}}),
     type_line("spec.resources.limits.cpu", "boolean", "integer,string")),
    ("quantity-fraction", job("spec.resources", {"limits": {"cpu": 1.5}}),
     type_line("spec.resources.limits.cpu", "number", "integer,string")),
    ("name-with-dot", renamed("tiny.gpt2"), "TrainingJob names must start with a letter"),
    ("name-leading-digit", renamed("1-job"), "TrainingJob names must start with a letter"),
    ("service-name-with-dot", renamed("a.b", SERVICE), "InferenceService names must start with a letter"),
    ("study-name-leading-digit", renamed("7-search", STUDY), "TuningStudy names must start with a letter"),
    ("name-not-subdomain", renamed("Bad_Name"),
     'metadata.name: Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain must consist of'),
    ("name-missing", renamed(""), "metadata.name: Required value: name or generateName is required"),
    ("name-int", renamed(5),  # type: ignore[arg-type]
     "json: cannot unmarshal number into Go struct field ObjectMeta.name of type string"),
    ("metadata-unknown", job("metadata.nam", "x"), 'unknown field "metadata.nam"'),
    ("s3-model", job("spec.model", {"uri": "s3://models/x"}), "model source: s3:// and gs:// URIs are not supported"),
    ("gs-data", job("spec.data", {"uri": "gs://data/x.jsonl"}), "data: s3:// and gs:// URIs are not supported yet"),
    ("s3-output", job("spec.output", {"uri": "s3://out"}), "storage location: s3:// and gs:// URIs are not supported"),
    ("other-scheme", job("spec.output", {"uri": "hdfs://nn/out"}), "storage location: s3:// and gs:// URIs"),
    ("credentials", job("spec.output", {"uri": "/out", "credentialsSecretRef": {"name": "s", "key": "k"}}),
     "storage location: credentialsSecretRef is not supported yet"),
    ("hub-revision", job("spec.model", {"hub": {"id": "a/b", "revision": "v1"}}), "hub: revision is not supported yet"),
    ("priority-class", job("spec.scheduling", {"priorityClassName": "High"}), "spec.scheduling.priorityClassName"),
    ("split", job("spec.data", {"datasetRef": {"name": "d", "split": "dev"}}),
     'spec.data.datasetRef.split: Unsupported value: "dev": supported values: "train", "validation", "test"'),
]  # fmt: skip


@pytest.mark.parametrize(("doc", "expected"), [c[1:] for c in REJECTED], ids=[c[0] for c in REJECTED])
def test_rejected_with_the_apiservers_words(doc: dict[str, Any], expected: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse(doc)
    assert any(expected in line for line in caught.value.problems), caught.value.problems


ACCEPTED = [
    ("integral-float-is-an-integer", job("spec.nodes", 2.0)),  # a Go client sends 2.0 as 2
    ("int-for-number", job("spec.hyperparameters.learningRate", 1)),
    ("null-is-dropped", job("spec.task", None)),  # the apiserver prunes it, then defaults
    ("null-quantity-is-dropped", job("spec.resources", {"requests": {"cpu": None}})),
    ("quantities", job("spec.resources", {"requests": {"cpu": "500m", "memory": 1024, "x.io/y": "+.5e3"}})),
    ("file-uri", job("spec.output", {"uri": "file:///models/out"})),
    ("name-at-most-50", renamed("a" * 50)),
    ("seed-at-max", job("spec.hyperparameters.seed", 2**32 - 1)),
    ("status-is-discarded", job("status", 0)),  # on create the apiserver drops what a manifest says of status
]


@pytest.mark.parametrize("doc", [c[1] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_accepted_as_by_the_apiserver(doc: dict[str, Any]) -> None:
    parse(doc)


def test_an_integral_float_becomes_an_int() -> None:
    resource = parse(job("spec.nodes", 2.0))
    assert resource.spec.nodes == 2 and isinstance(resource.spec.nodes, int)  # type: ignore[union-attr]


def test_unknown_fields_are_reported_alone_as_the_apiserver_decodes_first() -> None:
    doc = job("spec.gpus_per_node", 0)
    doc["spec"]["nodes"] = "two"  # a schema error the apiserver never reaches
    with pytest.raises(ManifestError) as caught:
        parse(doc)
    assert caught.value.problems == ['unknown field "spec.gpus_per_node"']


def test_no_rule_is_reported_after_a_blocking_error() -> None:
    doc = job("spec.nodes", "2")  # a type error: the apiserver evaluates no CEL rule after it
    doc["spec"]["model"] = {"uri": "a", "pvc": {"claimName": "b"}}  # breaks "exactly one"
    with pytest.raises(ManifestError) as caught:
        parse(doc)
    assert caught.value.problems == [type_line("spec.nodes", "string", "integer")]


def test_code_still_builds_models_by_field_name() -> None:
    from lepton.api.common import PvcPath

    assert PvcPath(claim_name="models", read_only=True).to_wire() == {
        "claimName": "models",
        "path": "",
        "readOnly": True,
    }


@pytest.mark.parametrize(
    ("text", "value"),
    [  # what kubectl's YAML library (go-yaml v2, through sigs.k8s.io/yaml) makes of a plain scalar
        ("1e-4", 1e-4),  # PyYAML: the string "1e-4", which strict types would reject
        ("1e30", 1e30),
        ("-.5", -0.5),
        ("0o17", 15),
        ("0777", 511),
        ("1_000", 1000),
        ("1:30", "1:30"),  # PyYAML: 90 (YAML 1.1 sexagesimal)
        ("2024-01-01", "2024-01-01"),  # PyYAML: a date
        ("y", True),
        ("'y'", "y"),
        ('"1e-4"', "1e-4"),
        ("~", None),
        ("Infinity", "Infinity"),
        ("18446744073709551615", 2**64 - 1),
        ("99999999999999999999", 1e20),
    ],
)
def test_yaml_is_read_as_kubectl_reads_it(text: str, value: Any) -> None:
    assert yaml.load(f"v: {text}", Loader=ManifestLoader) == {"v": value}


def test_a_learning_rate_in_e_notation_is_valid_yaml() -> None:
    text = (EXAMPLES / "trainingjob.yaml").read_text().replace("learningRate: 0.0003", "learningRate: 3e-4")
    resource = parse(yaml.load(text, Loader=ManifestLoader))
    assert resource.spec.hyperparameters.learning_rate == 3e-4  # type: ignore[union-attr]

"""Dataset rendering, golden-tested for each shape of preparation, plus what every rendering must
hold: a restricted pod without API access, secrets only as secretKeyRefs, a Job per preparation."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from lepton.api.contract import DATA_CONFIG_ENV, DataConfig
from lepton.api.validation import parse
from lepton.render.common import RESTRICTED_CONTAINER, RESTRICTED_POD
from lepton.render.dataset import DataSettings, memory_bytes, render
from lepton.render.networkpolicy import NetworkSettings
from tests.conftest import assert_golden

UID = "5d0c9e7a-1b2c-4d3e-8f40-a1b2c3d4e5f6"
PVC_OUT = {"pvc": {"claimName": "datasets", "path": "tickets"}}
SOURCES = [
    {"pvc": {"claimName": "raw", "path": "tickets/2026"}},
    {"http": {"url": "https://data.example.com/t.csv", "headersSecretRef": {"name": "web", "key": "headers"}},
     "format": "csv"},
    {"s3": {"uri": "s3://corpus/tickets/", "endpoint": "http://store:8333",
            "credentials": {"secretName": "store-keys"}}},
    {"hub": {"id": "org/tickets", "files": "data/*.parquet", "tokenSecretRef": {"name": "hub", "key": "token"}}},
]  # fmt: skip


def dataset(**spec: Any) -> Any:
    doc: dict[str, Any] = {
        "apiVersion": "lepton.ai/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": "tickets", "namespace": "team-a", "uid": UID},
        "spec": {"sources": SOURCES, "output": PVC_OUT, "pipeline": [{"dedupe": {"method": "minhash"}}]} | spec,
    }
    return parse(doc)


CASES: dict[str, tuple[dict[str, Any], NetworkSettings | None]] = {
    "every-source": (dict(resources={"requests": {"cpu": "2"}, "limits": {"memory": "4Gi"}}), None),
    "tokenized-ttl": (dict(split={"train": 0.8, "validation": 0.1, "test": 0.1}, ttlSecondsAfterFinished=600,
                           tokenize={"tokenizer": {"pvc": {"claimName": "models", "path": "tiny"}}},
                           activeDeadlineSeconds=3600, scheduling={"priorityClassName": "batch"}),
                      NetworkSettings("lepton-system", "monitoring")),
    "suspended": (dict(suspend=True), None),
}  # fmt: skip


def children(case: str) -> list[dict[str, Any]]:
    spec, network = CASES[case]
    return render(dataset(**spec), DataSettings(), network=network).children


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    assert_golden(f"dataset-{case}.yaml", yaml.safe_dump_all(children(case), sort_keys=False))


def _container(job: dict[str, Any]) -> dict[str, Any]:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_pod_is_restricted_and_has_no_api_access(case: str) -> None:
    job = children(case)[0]
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"] == RESTRICTED_POD and _container(job)["securityContext"] == RESTRICTED_CONTAINER
    assert pod["automountServiceAccountToken"] is False and pod["restartPolicy"] == "Never"
    assert _container(job)["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_secrets_arrive_only_as_secret_key_refs() -> None:
    container = _container(children("every-source")[0])
    secret = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert secret == {
        "LEPTON_SOURCE_1_HEADERS": {"name": "web", "key": "headers"},
        "LEPTON_SOURCE_2_ACCESS_KEY_ID": {"name": "store-keys", "key": "accessKeyId"},
        "LEPTON_SOURCE_2_SECRET_ACCESS_KEY": {"name": "store-keys", "key": "secretAccessKey"},
        "LEPTON_SOURCE_3_HUB_TOKEN": {"name": "hub", "key": "token"},
    }
    config = DataConfig.model_validate_json(next(e["value"] for e in container["env"] if e["name"] == DATA_CONFIG_ENV))
    assert config.sources[2].access_key_env == "LEPTON_SOURCE_2_ACCESS_KEY_ID" and "store-keys" not in str(config)


def test_pvcs_are_mounted_sources_read_only_output_writable() -> None:
    job = children("tokenized-ttl")[0]
    mounts = {m["mountPath"]: m["readOnly"] for m in _container(job)["volumeMounts"] if m["name"] != "tmp"}
    assert mounts == {"/mnt/pvc/datasets": False, "/mnt/pvc/models": True, "/mnt/pvc/raw": True}
    config = json.loads(next(e["value"] for e in _container(job)["env"] if e["name"] == DATA_CONFIG_ENV))
    assert config["outputDir"] == "/mnt/pvc/datasets/tickets" and config["tokenizerPath"] == "/mnt/pvc/models/tiny"
    assert config["sources"][0]["path"] == "/mnt/pvc/raw/tickets/2026"


@pytest.mark.parametrize(
    ("change", "new_job"),
    [
        ({"retain": 5}, True),
        ({"pipeline": [{"dedupe": {"method": "exact"}}]}, True),
        ({"refresh": "2026-11-28"}, True),
        ({"resources": {"limits": {"memory": "8Gi"}}}, True),
        ({"suspend": True}, False),
        ({"ttlSecondsAfterFinished": 60}, False),
    ],
)
def test_a_job_per_preparation(change: dict[str, Any], new_job: bool) -> None:
    before = render(dataset(), DataSettings())
    after = render(dataset(**change), DataSettings())
    assert (before.job != after.job) == new_job and (before.preparation != after.preparation) == new_job
    assert after.job.startswith("tickets-") and len(after.job) == len("tickets-") + 8


def test_a_new_data_image_is_a_new_job() -> None:
    assert render(dataset(), DataSettings("lepton/data:0.2.0")).job != render(dataset(), DataSettings()).job


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [("4Gi", 4 * 2**30), ("512Mi", 512 * 2**20), ("1G", 10**9), (1000, 1000), ("1.5Gi", int(1.5 * 2**30)),
     ("2e9", 2 * 10**9), (None, None)],
)  # fmt: skip
def test_memory_limit_in_bytes(quantity: Any, expected: int | None) -> None:
    assert memory_bytes(quantity) == expected

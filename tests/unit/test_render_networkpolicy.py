"""The per-job NetworkPolicy, golden-tested, plus what it must say whatever the job's shape."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from lepton.api.constants import Label
from lepton.api.contract import METRICS_PORT
from lepton.render.networkpolicy import NetworkSettings, render_network_policy
from tests.conftest import assert_golden
from tests.unit.test_render_trainingjob import job

CASES: dict[str, tuple[dict[str, Any], NetworkSettings]] = {
    "multi-node": (dict(nodes=2, gpusPerNode=8), NetworkSettings("lepton-system", "monitoring")),
    "no-prometheus": (dict(nodes=2, gpusPerNode=8), NetworkSettings("lepton-system")),
    "cpu-gloo": (dict(nodes=2, gpusPerNode=0, procsPerNode=2), NetworkSettings("lepton-system", "monitoring")),
    "single-process": (dict(nodes=1, gpusPerNode=1), NetworkSettings("ops", "ops")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_network_policy_matches_golden(case: str) -> None:
    spec, settings = CASES[case]
    text = yaml.safe_dump(render_network_policy(job(**spec), settings), sort_keys=True, width=120)
    assert_golden(f"networkpolicy-{case}.yaml", text)


@pytest.mark.parametrize("case", sorted(CASES))
def test_only_the_gang_and_the_metrics_readers_get_in(case: str) -> None:
    spec, settings = CASES[case]
    policy = render_network_policy(job(**spec), settings)
    meta, body = policy["metadata"], policy["spec"]
    assert (meta["name"], meta["namespace"]) == ("llm", "team-a")
    ref = meta["ownerReferences"][0]
    assert (ref["kind"], ref["name"], ref["controller"]) == ("TrainingJob", "llm", True)
    assert ref["uid"] == "0f3c9a51-7d2e-4c1b-9a77-5be2c0d1e2f3"
    gang = {Label.KIND: "TrainingJob", Label.NAME: "llm"}
    assert body["podSelector"] == {"matchLabels": gang}
    assert body["policyTypes"] == ["Ingress"], "egress to storage and hubs stays open"
    peers, metrics = body["ingress"]
    assert peers == {"from": [{"podSelector": {"matchLabels": gang}}]}, "ranks talk on any port, only to ranks"
    namespaces = [p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in metrics["from"]]
    assert namespaces == list(dict.fromkeys(filter(None, (settings.operator_namespace, settings.prometheus_namespace))))
    assert all(set(p) == {"namespaceSelector"} for p in metrics["from"]), "whole namespaces, no other peer"
    (port,) = metrics["ports"]
    assert port["port"] == METRICS_PORT and port["protocol"] == "TCP"
    procs = spec.get("procsPerNode") or max(spec["gpusPerNode"], 1)  # one metrics port per local rank
    assert port.get("endPort", METRICS_PORT) == METRICS_PORT + procs - 1

"""The operator against the real apiserver: observedGeneration and kstatus conditions on every kind,
kopf's bookkeeping kept out of status, metrics that count what happened."""

from __future__ import annotations

from typing import Any

import pytest

from lepton.api import KINDS
from tests.cluster.conftest import OperatorProcess
from tests.cluster.kube import Kube, eventually
from tests.conftest import EXAMPLES

NAMES = {
    "Dataset": ("dataset", "support-tickets"),
    "TrainingJob": ("trainingjob", "tiny-gpt2-support"),
    "TuningStudy": ("tuningstudy", "tiny-gpt2-lr-search"),
    "InferenceService": ("inferenceservice", "quickstart-chat"),
}


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_operator_sets_observed_generation_and_conditions(
    kube: Kube, namespace: str, operator: OperatorProcess, kind: str
) -> None:
    resource, name = NAMES[kind]
    kube.run("create", "-n", namespace, "-f", str(EXAMPLES / f"{resource}.yaml"))

    def observed(generation: int) -> dict[str, Any] | None:
        obj = kube.get(resource, name, namespace)
        return obj if obj.get("status", {}).get("observedGeneration") == generation else None

    obj = eventually(lambda: observed(1), what=f"{kind} status for generation 1")
    conds = conditions(obj)
    assert conds["Ready"]["status"] == "False" and conds["Reconciling"]["status"] == "True"
    assert conds["Stalled"]["status"] == "False"
    assert all(c["observedGeneration"] == 1 and c["reason"] and c["lastTransitionTime"] for c in conds.values())
    assert obj["status"]["phase"] == ("Preparing" if kind == "Dataset" else "Pending")
    # kopf's bookkeeping lives in annotations under our prefix, never in status.
    assert not any(k.startswith("kopf") for k in obj["status"])
    assert all(k.startswith("lepton.ai/") for k in obj["metadata"].get("annotations", {}) if "kopf" in k)
    first_transition = conds["Ready"]["lastTransitionTime"]

    # A spec change moves observedGeneration; the unchanged Ready condition keeps its transition time.
    kube.run("label", resource, name, "-n", namespace, "team=ml")  # metadata only: no new generation
    spec_change = (
        {"spec": {"suspend": True}}
        if kind in ("TrainingJob", "TuningStudy")
        else ({"spec": {"retain": 5}} if kind == "Dataset" else {"spec": {"runtime": {"maxBatchSize": 4}}})
    )
    kube.patch(resource, name, namespace, spec_change)
    obj = eventually(lambda: observed(2), what=f"{kind} status for generation 2")
    assert conditions(obj)["Ready"]["lastTransitionTime"] == first_transition
    assert conditions(obj)["Ready"]["observedGeneration"] == 2


def test_metrics_count_reconciles(kube: Kube, namespace: str, operator: OperatorProcess) -> None:
    kube.run("create", "-n", namespace, "-f", str(EXAMPLES / "trainingjob.yaml"))
    eventually(
        lambda: 'lepton_reconcile_total{kind="TrainingJob",outcome="ok"}' in operator.metrics(),
        what="reconcile counter",
    )
    text = operator.metrics()
    assert 'lepton_resources{kind="TrainingJob",phase="Pending"}' in text
    assert "lepton_reconcile_duration_seconds_bucket" in text

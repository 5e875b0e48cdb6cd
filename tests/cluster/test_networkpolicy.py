"""The per-job NetworkPolicy on the real apiserver: every shape the renderer makes is accepted, and a
policy rendered from a real TrainingJob is owned by it (garbage-collected with it).

kwok runs no network plugin, so enforcement itself is not tested here; what the policy admits is
pinned by the golden files of tests/unit/test_render_networkpolicy.py."""

from __future__ import annotations

import json

import pytest

from lepton.api.validation import parse
from lepton.render.networkpolicy import NetworkSettings, render_network_policy
from tests.cluster.kube import Kube, eventually
from tests.cluster.test_trainingjob import trainingjob
from tests.unit.test_render_networkpolicy import CASES
from tests.unit.test_render_networkpolicy import job as unit_job


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_apiserver_accepts_every_rendered_shape(kube: Kube, namespace: str, case: str) -> None:
    spec, settings = CASES[case]
    policy = render_network_policy(unit_job(**spec), settings)
    policy["metadata"]["namespace"] = namespace
    proc = kube.run("apply", "--server-side", "--field-manager=lepton-operator", "--dry-run=server", "-o", "json",
                    "-f", "-", stdin=json.dumps(policy))  # fmt: skip
    accepted = json.loads(proc.stdout)
    assert accepted["spec"]["ingress"] == policy["spec"]["ingress"], "the apiserver kept every rule as written"
    assert accepted["spec"]["podSelector"] == policy["spec"]["podSelector"]


def test_a_policy_rendered_from_a_real_job_is_owned_by_it(kube: Kube, namespace: str) -> None:
    kube.apply(trainingjob("fenced", nodes=2, suspend=True), namespace)
    job = parse(kube.get("trainingjob", "fenced", namespace))
    kube.apply(render_network_policy(job, NetworkSettings("lepton-system", "monitoring")))
    policy = kube.get("networkpolicy", "fenced", namespace)
    assert policy["metadata"]["ownerReferences"][0]["uid"] == job.metadata.uid
    kube.run("delete", "trainingjob", "fenced", "-n", namespace)

    def collected() -> bool:
        names = [p["metadata"]["name"] for p in kube.get("networkpolicies", namespace=namespace)["items"]]
        return "fenced" not in names

    eventually(collected, timeout=60, what="the policy garbage-collected with its job")

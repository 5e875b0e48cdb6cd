"""The real apiserver accepts the CRDs and the examples and rejects every invalid example with the
message the user needs; kubectl shows what users rely on (get lepton, explain, printer columns)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lepton.api import GROUP, KINDS
from lepton.api.validation import ManifestError, parse
from lepton.cli.devcluster import DevCluster
from tests.cluster.kube import Kube, KubectlError
from tests.conftest import EXAMPLES, expected_messages

VALID = sorted(EXAMPLES.glob("*.yaml"))
INVALID = sorted((EXAMPLES / "invalid").glob("*.yaml"))


def test_the_control_plane_is_real_processes(dev_cluster: DevCluster) -> None:
    running = dev_cluster.processes()
    assert set(running) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok-controller"}
    for name, (_, exe) in running.items():
        built = dev_cluster.bins["kwok" if name == "kwok-controller" else name]
        assert exe == built, f"{name} runs {exe}, not the binary built from Go modules"


def test_every_crd_is_established(kube: Kube) -> None:
    for info in KINDS.values():
        crd = kube.get("crd", info.crd_name)
        established = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert established.get("Established") == "True", info.crd_name
    resources = kube.run("api-resources", f"--api-group={GROUP}", "-o", "name").stdout.split()
    assert sorted(resources) == sorted(info.crd_name for info in KINDS.values())


def test_every_example_is_accepted(kube: Kube, namespace: str) -> None:
    for path in VALID:
        kube.run("create", "-n", namespace, "-f", str(path))
    listed = kube.run("get", "lepton", "-n", namespace, "-o", "name").stdout.split()
    assert len(listed) == len(VALID)


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_example_is_rejected_with_its_message(kube: Kube, namespace: str, path: Path) -> None:
    with pytest.raises(KubectlError) as caught:
        kube.run("create", "-n", namespace, "--validate=strict", "-f", str(path))
    for message in expected_messages(path):
        assert message in caught.value.stderr
    # The local validator words it exactly as the apiserver does.
    with pytest.raises(ManifestError) as local:
        parse(yaml.safe_load(path.read_text()))
    for problem in local.value.problems:
        assert problem in caught.value.stderr, (problem, caught.value.stderr)
    name = yaml.safe_load(path.read_text())["metadata"]["name"]
    assert kube.run("get", "lepton", "-n", namespace, "-o", "name").stdout.strip() == "", f"{name} was stored"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("task", "sequence-classification", "task is immutable"),
        ("gpusPerNode", 4, "gpusPerNode is immutable"),
        ("model", {"uri": "/models/other-model"}, "model is immutable"),
    ],
)
def test_fields_that_must_not_change_mid_run_are_immutable(
    kube: Kube, namespace: str, field: str, value: object, message: str
) -> None:
    kube.run("create", "-n", namespace, "-f", str(EXAMPLES / "trainingjob.yaml"))
    with pytest.raises(KubectlError) as caught:
        kube.patch("trainingjob", "tiny-gpt2-support", namespace, {"spec": {field: value}})
    assert message in caught.value.stderr
    # A mutable field still changes.
    kube.patch("trainingjob", "tiny-gpt2-support", namespace, {"spec": {"suspend": True}})


def test_get_lepton_lists_every_kind_with_its_columns(kube: Kube, namespace: str) -> None:
    for path in VALID:
        kube.run("create", "-n", namespace, "-f", str(path))
    out = kube.run("get", "lepton", "-n", namespace).stdout
    for info in KINDS.values():
        assert f"{info.kind.lower()}.{GROUP}/" in out
        header = next(
            line
            for line in out.splitlines()
            if line.startswith("NAME") and all(c.name.upper() in line for c in info.columns if not c.priority)
        )
        assert header
    wide = kube.run("get", "trainingjobs", "-n", namespace, "-o", "wide").stdout
    assert "CHECKPOINT" in wide.splitlines()[0]
    for info in KINDS.values():
        for short in info.short_names:
            assert kube.run("get", short, "-n", namespace, "-o", "name").stdout.strip()


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("trainingjob.spec.checkpoint.everySteps", "Save every N optimizer steps."),
        ("trainingjob.spec.gpusPerNode", "nvidia.com/gpu per pod"),
        ("inferenceservice.spec.runtime.maxBatchDelayMs", "Longest the first request of a batch waits"),
        ("dataset.spec.split.train", "Fraction of rows for training"),
        ("tuningstudy.spec.pruner.type", "stops unpromising trials early"),
        ("trainingjob.status.progress.loss", "Latest training loss"),
    ],
)
def test_kubectl_explain_shows_descriptions(kube: Kube, path: str, expected: str) -> None:
    assert expected in kube.run("explain", path).stdout


def test_scale_subresource_on_inferenceservice(kube: Kube, namespace: str) -> None:
    kube.run("create", "-n", namespace, "-f", str(EXAMPLES / "inferenceservice.yaml"))
    kube.run("scale", "inferenceservice", "quickstart-chat", "-n", namespace, "--replicas=2")
    assert kube.get("inferenceservice", "quickstart-chat", namespace)["spec"]["replicas"] == 2

"""TrainingJob rendering, golden-tested: the exact children for each shape of job, plus the
properties every rendered pod must have whatever the shape."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml

from lepton.api.contract import TRAINER_CONFIG_ENV, TrainerConfig
from lepton.api.validation import parse
from lepton.render.trainingjob import RenderSettings, render
from tests.conftest import EXAMPLES, assert_golden

BASE = yaml.safe_load((EXAMPLES / "trainingjob.yaml").read_text())


def job(**spec: Any) -> Any:
    doc = copy.deepcopy(BASE)
    doc["metadata"] = {"name": "llm", "namespace": "team-a", "uid": "0f3c9a51-7d2e-4c1b-9a77-5be2c0d1e2f3"}
    doc["spec"]["data"] = {"pvc": {"claimName": "datasets", "path": "tickets/v1"}}
    for key, value in spec.items():
        if value is None:
            doc["spec"].pop(key, None)
        else:
            doc["spec"][key] = value
    return parse(doc)


CUSTOM = yaml.safe_load((EXAMPLES / "trainingjob-custom.yaml").read_text())


def custom_job(**spec: Any) -> Any:
    """A custom-mode job (your own program): the example, with a PVC for data and output."""
    doc = copy.deepcopy(CUSTOM)
    doc["metadata"] = {"name": "mnist", "namespace": "team-a", "uid": "7a1d2c3e-0b9f-4e8d-8c6b-1f2e3d4c5b6a"}
    doc["spec"] |= {"data": {"pvc": {"claimName": "datasets", "path": "mnist"}},
                    "output": {"pvc": {"claimName": "models", "path": "mnist"}}}  # fmt: skip
    for key, value in spec.items():
        if value is None:
            doc["spec"].pop(key, None)
        elif key == "trainer":
            doc["spec"]["trainer"] = {**doc["spec"]["trainer"], **value}
        else:
            doc["spec"][key] = value
    return parse(doc)


CUSTOM_CASES = {
    # A Kubeflow PyTorchJob's mnist, moved over: 2 nodes x 4 GPUs, NCCL.
    "custom-plain": dict(nodes=2, gpusPerNode=4, procsPerNode=None, backend="auto",
                         trainer={"image": "registry.example.com/team/mnist:1", "command": ["python", "mnist.py"],
                                  "args": ["--epochs", "3"], "workingDir": "/workspace"}),
    "custom-elastic": dict(nodes=None, minNodes=1, maxNodes=3, gpusPerNode=0, procsPerNode=2),
    # The user's command starts torchrun itself: the gang's options arrive as PET_* variables.
    "custom-own-torchrun": dict(nodes=2, gpusPerNode=8, procsPerNode=None, backend="auto",
                                trainer={"command": ["torchrun", "--max-restarts=0", "train.py"]}),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CUSTOM_CASES))
def test_custom_render_matches_golden(case: str) -> None:
    rendered = render(custom_job(**CUSTOM_CASES[case]), attempt=3, settings=RenderSettings())
    text = yaml.safe_dump_all(rendered, sort_keys=True, width=120)
    assert_golden(f"trainingjob-{case}.yaml", text)


def _container_env(pod: dict[str, Any]) -> dict[str, str]:
    (container,) = pod["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


@pytest.mark.parametrize("case", sorted(CUSTOM_CASES))
def test_custom_program_gets_the_documented_environment(case: str) -> None:
    """Every LEPTON_* name the SDK documents that the job defines is set; the built-in trainer's config
    is not; the pod is the same gang pod (restricted, owned, /dev/shm)."""
    from lepton.sdk import env as sdk_env

    job_ = custom_job(**CUSTOM_CASES[case])
    for pod in pods(render(job_, attempt=0, settings=RenderSettings())):
        env = _container_env(pod)
        assert TRAINER_CONFIG_ENV not in env
        assert env[sdk_env.JOB] == "team-a/mnist"
        assert env[sdk_env.OUTPUT_DIR] == "/mnt/models/mnist" or env[sdk_env.OUTPUT_DIR].endswith("mnist")
        assert env[sdk_env.CHECKPOINT_DIR].startswith(env[sdk_env.OUTPUT_DIR])
        assert env[sdk_env.DATA_PATH].endswith("mnist")
        assert json.loads(env[sdk_env.HYPERPARAMETERS]) == job_.spec.trainer.hyperparameters
        assert env[sdk_env.METRICS_PORT] == "9090" and env[sdk_env.RESUME] == "latest"
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        assert any(v["name"] == "dshm" for v in pod["spec"]["volumes"])
        (container,) = pod["spec"]["containers"]
        assert container["image"] == job_.spec.trainer.image


def test_custom_command_runs_under_torchrun_or_gets_its_options() -> None:
    plain = pods(render(custom_job(**CUSTOM_CASES["custom-plain"]), attempt=1, settings=RenderSettings()))[0]
    (container,) = plain["spec"]["containers"]
    command = container["command"]
    assert command[:2] == ["python3", "-c"] and "torch.distributed.run" in command[2]
    assert "--nnodes=2" in command and "--nproc-per-node=4" in command
    assert command[command.index("--no-python") + 1 :] == ["python", "mnist.py", "--epochs", "3"]
    assert container["workingDir"] == "/workspace"
    own = pods(render(custom_job(**CUSTOM_CASES["custom-own-torchrun"]), attempt=1, settings=RenderSettings()))[0]
    (container,) = own["spec"]["containers"]
    assert container["command"] == ["torchrun", "--max-restarts=0", "train.py"]
    env = _container_env(own)
    assert env["PET_NNODES"] == "2" and env["PET_NPROC_PER_NODE"] == "8" and env["PET_RDZV_BACKEND"] == "c10d"
    assert env["PET_RDZV_ID"] == "7a1d2c3e-1" and env["PET_RDZV_ENDPOINT"] == "mnist-0.mnist.team-a.svc:29500"


CASES = {
    "single-node": dict(nodes=1, gpusPerNode=8),
    "multi-node": dict(nodes=2, gpusPerNode=8),
    "elastic": dict(nodes=None, minNodes=2, maxNodes=4, gpusPerNode=8),
    "suspended": dict(nodes=2, suspend=True),
    "kueue-queued": dict(nodes=2, scheduling={"queueName": "team-a", "priorityClassName": "training"}),
    "cpu-gloo": dict(nodes=2, gpusPerNode=0, procsPerNode=2, resources={"requests": {"cpu": "2"}}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_render_matches_golden(case: str) -> None:
    rendered = render(job(**CASES[case]), attempt=3, settings=RenderSettings())
    text = yaml.safe_dump_all(rendered, sort_keys=True, width=120)
    assert_golden(f"trainingjob-{case}.yaml", text)


def pods(children: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for c in children if c["kind"] == "Pod"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_pod_is_restricted_owned_and_labelled(case: str) -> None:
    children = render(job(**CASES[case]), attempt=0, settings=RenderSettings())
    for child in children:
        ref = child["metadata"]["ownerReferences"][0]
        assert ref["kind"] == "TrainingJob" and ref["controller"] is True and ref["name"] == "llm"
        assert child["metadata"]["labels"]["lepton.ai/name"] == "llm"
        assert child["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "lepton-operator"
    for pod in pods(children):
        sc = pod["spec"]["securityContext"]
        assert sc["runAsNonRoot"] and sc["seccompProfile"]["type"] == "RuntimeDefault"
        (container,) = pod["spec"]["containers"]
        csc = container["securityContext"]
        assert csc["allowPrivilegeEscalation"] is False and csc["capabilities"]["drop"] == ["ALL"]
        assert pod["spec"]["restartPolicy"] == "Never" and pod["spec"]["automountServiceAccountToken"] is False
        config = next(e["value"] for e in container["env"] if e["name"] == TRAINER_CONFIG_ENV)
        TrainerConfig.model_validate_json(config)  # the workload can read what the operator wrote


@pytest.mark.parametrize(
    ("spec", "nnodes", "pod_count", "min_count"),
    [
        (dict(nodes=1), "1", 1, None),
        (dict(nodes=4), "4", 4, 4),
        (dict(nodes=None, minNodes=2, maxNodes=3), "2:3", 3, 2),
    ],
)
def test_gang_and_torchrun_sizes(spec: dict[str, Any], nnodes: str, pod_count: int, min_count: int | None) -> None:
    children = render(job(**spec), attempt=1, settings=RenderSettings())
    groups = [c for c in children if c["kind"] == "PodGroup"]
    assert [g["spec"]["schedulingPolicy"]["gang"]["minCount"] for g in groups] == ([min_count] if min_count else [])
    assert len(pods(children)) == pod_count
    for pod in pods(children):
        command = pod["spec"]["containers"][0]["command"]
        assert f"--nnodes={nnodes}" in command and "--rdzv-backend=c10d" in command
        assert "--rdzv-endpoint=llm-0.llm.team-a.svc:29500" in command
        if min_count:
            assert pod["spec"]["schedulingGroup"] == {"podGroupName": "llm-gang-1"}


def test_rendezvous_id_changes_with_every_gang_attempt() -> None:
    ids = {
        pod["metadata"]["annotations"]["lepton.ai/rendezvous-id"]
        for attempt in range(3)
        for pod in pods(render(job(nodes=2), attempt=attempt, settings=RenderSettings()))
    }
    assert len(ids) == 3


def test_user_env_overrides_defaults_and_secrets_stay_references() -> None:
    children = render(
        job(nodes=1, env=[{"name": "NCCL_DEBUG", "value": "INFO"},
                          {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "key"}}}]),
        attempt=0, settings=RenderSettings(),
    )  # fmt: skip
    env = {e["name"]: e for e in pods(children)[0]["spec"]["containers"][0]["env"]}
    assert env["NCCL_DEBUG"]["value"] == "INFO"
    assert env["WANDB_API_KEY"] == {
        "name": "WANDB_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "key"}},
    }
    assert "wandb" not in env[TRAINER_CONFIG_ENV]["value"]


def test_gpu_pods_get_limits_toleration_and_shared_memory() -> None:
    pod = pods(render(job(nodes=1, gpusPerNode=4), attempt=0, settings=RenderSettings()))[0]
    container = pod["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"]["tolerations"]
    shm = next(v for v in pod["spec"]["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "32Gi"}
    assert "--nproc-per-node=4" in container["command"]

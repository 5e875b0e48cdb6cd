"""Render a TrainingJob into its children (pure): a headless Service for the rendezvous, a PodGroup for
gang scheduling, and one pod per node running torchrun.

Why pods and not an indexed Job: a gang restart replaces every pod at once with a new rendezvous id,
and a PodGroup (native gang scheduling) or a Kueue pod group admits exactly these pods; a Job's own
retry logic would restart single ranks, which is what leaves other frameworks with hung jobs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from lepton.api.common import Lineage
from lepton.api.constants import Label
from lepton.api.contract import (
    METRICS_PORT,
    RENDEZVOUS_PORT,
    TERMINATION_LOG,
    TRAINER_CONFIG_ENV,
    TrainerConfig,
    TrainerData,
)
from lepton.api.kinds import TrainingJob
from lepton.api.trainingjob import TrainingJobSpec, pod_name
from lepton.render.common import (
    RESTRICTED_CONTAINER,
    RESTRICTED_POD,
    Mounts,
    child_metadata,
    merge_env,
    model_location,
    placement,
    resources,
    secret_env,
    selector,
)
from lepton.sdk import env as sdk_env

COMPONENT = "trainer"
SHM_PER_GPU_GI = 8  # NCCL's shared-memory transport; /dev/shm defaults to 64Mi in a container
# Defaults a user overrides through spec.env (the user's value wins).
TORCH_ENV = {
    "NCCL_DEBUG": "WARN",
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
    "TORCH_NCCL_BLOCKING_WAIT": "0",
    "OMP_NUM_THREADS": "1",
    "PYTHONUNBUFFERED": "1",
    "HOME": "/tmp/home",
    "HF_HOME": "/tmp/hf",
    "TRITON_CACHE_DIR": "/tmp/triton",
}

# Elastic gangs only. torchrun's agents share their rendezvous TCP store with the workers by default,
# and rank 0's agent then publishes the workers' master address only in the first round: a node that
# joins a later round (a replaced pod) waits for it forever. Per-round bootstrap stores avoid that.
ELASTIC_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


@dataclass(frozen=True)
class RenderSettings:
    trainer_image: str = "lepton/trainer:0.1.0"
    gang_scheduling: bool = True  # the cluster serves scheduling.k8s.io/v1beta1 PodGroups
    termination_grace_seconds: int = 60  # time for the last checkpoint to reach storage


@dataclass(frozen=True)
class Resolved:
    """References the controller resolved to concrete locations (another job's output, a Dataset)."""

    model_uri: str | None = None
    data_uri: str | None = None
    dataset_version: str | None = None  # the Dataset version data_uri points at
    teacher_uri: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    lineage: Lineage | None = None  # what the model is built from: the trainer writes it into the model's metadata


def rendezvous_id(uid: str, attempt: int) -> str:
    """Unique per gang attempt: torchrun never joins a rendezvous of an earlier, failed gang."""
    return f"{uid[:8]}-{attempt}"


def pod_group_name(job: str, attempt: int) -> str:
    return f"{job}-gang-{attempt}"


def procs_per_node(spec: TrainingJobSpec) -> int:
    return spec.procs_per_node or max(spec.gpus_per_node, 1)


def backend(spec: TrainingJobSpec) -> Literal["nccl", "gloo"]:
    if spec.backend != "auto":
        return spec.backend
    return "nccl" if spec.gpus_per_node > 0 else "gloo"


def _strip_file(uri: str) -> str:
    return uri.removeprefix("file://")


def data_path(job: TrainingJob, resolved: Resolved, mounts: Mounts) -> str | None:
    """The training data as the pod sees it (None: a custom program that reads none)."""
    data = job.spec.data
    if resolved.data_uri:
        return model_location(resolved.data_uri, mounts)  # a Dataset on a PVC is mounted read-only
    if data is None:
        return None
    if data.pvc is not None:
        return mounts.path(data.pvc.claim_name, data.pvc.path, read_only=True)
    return _strip_file(data.uri or "")


def output_and_checkpoint_dirs(job: TrainingJob, mounts: Mounts) -> tuple[str, str]:
    spec = job.spec
    out = spec.output
    output_dir = mounts.path(out.pvc.claim_name, out.pvc.path, False) if out.pvc else _strip_file(out.uri or "")
    ckpt = spec.checkpoint.location
    if ckpt is None:
        checkpoint_dir = f"{output_dir}/checkpoints"
    elif ckpt.pvc is not None:
        checkpoint_dir = mounts.path(ckpt.pvc.claim_name, ckpt.pvc.path, read_only=False)
    else:
        checkpoint_dir = _strip_file(ckpt.uri or "")
    return output_dir, checkpoint_dir


def trainer_config(job: TrainingJob, resolved: Resolved, mounts: Mounts) -> TrainerConfig:
    """The built-in trainer's configuration (a job with spec.model)."""
    spec = job.spec
    model, data, hyper = spec.model, spec.data, spec.hyperparameters
    if model is None or data is None or hyper is None:
        raise ValueError("the built-in trainer needs model, data and hyperparameters")
    if resolved.model_uri:
        model_path = model_location(resolved.model_uri, mounts)
    elif model.pvc is not None:
        model_path = mounts.path(model.pvc.claim_name, model.pvc.path, read_only=True)
    elif model.hub is not None:
        model_path = model.hub.id
    else:
        model_path = _strip_file(model.uri or "")
    output_dir, checkpoint_dir = output_and_checkpoint_dirs(job, mounts)
    return TrainerConfig(
        job=f"{job.metadata.namespace or 'default'}/{job.metadata.name}",
        task=spec.task,
        model_path=model_path,
        init=model.init,
        num_labels=model.num_labels,
        data=TrainerData(
            path=data_path(job, resolved, mounts) or "",
            format=data.format,
            text_field=data.text_field,
            image_field=data.image_field,
            label_field=data.label_field,
            validation_fraction=data.validation_fraction,
            dataset=data.dataset_ref.name if data.dataset_ref else None,
            dataset_version=resolved.dataset_version,
        ),
        hyperparameters=hyper,
        backend=backend(spec),
        strategy=spec.strategy,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every_steps=spec.checkpoint.every_steps,
        checkpoint_keep=spec.checkpoint.keep,
        resume=spec.checkpoint.resume,
        output_dir=output_dir,
        distillation=spec.distillation,
        teacher_path=_teacher_path(job, resolved, mounts),
        quantization=spec.export.quantization,
        termination_log=TERMINATION_LOG,
        lineage=resolved.lineage,
    )


def program_env(job: TrainingJob, resolved: Resolved, mounts: Mounts) -> dict[str, str]:
    """What a custom program learns from its environment (`lepton.sdk.env`), in the names it reads."""
    spec = job.spec
    output_dir, checkpoint_dir = output_and_checkpoint_dirs(job, mounts)
    env = {
        sdk_env.JOB: f"{job.metadata.namespace or 'default'}/{job.metadata.name}",
        sdk_env.OUTPUT_DIR: output_dir,
        sdk_env.CHECKPOINT_DIR: checkpoint_dir,
        sdk_env.CHECKPOINT_EVERY_STEPS: str(spec.checkpoint.every_steps),
        sdk_env.CHECKPOINT_KEEP: str(spec.checkpoint.keep),
        sdk_env.RESUME: spec.checkpoint.resume,
        sdk_env.HYPERPARAMETERS: json.dumps(spec.trainer.hyperparameters if spec.trainer else {}, sort_keys=True),
        sdk_env.METRICS_PORT: str(METRICS_PORT),
        sdk_env.TERMINATION_LOG: TERMINATION_LOG,
    }
    path = data_path(job, resolved, mounts)
    if path is not None:
        env[sdk_env.DATA_PATH] = path
    if spec.data is not None and spec.data.dataset_ref is not None:
        env[sdk_env.DATASET] = spec.data.dataset_ref.name
    if resolved.dataset_version:
        env[sdk_env.DATASET_VERSION] = resolved.dataset_version
    return env


def _teacher_path(job: TrainingJob, resolved: Resolved, mounts: Mounts) -> str | None:
    teacher = job.spec.distillation.teacher if job.spec.distillation else None
    if teacher is None:
        return None
    if resolved.teacher_uri:
        return model_location(resolved.teacher_uri, mounts)
    if teacher.pvc is not None:
        return mounts.path(teacher.pvc.claim_name, teacher.pvc.path, read_only=True)
    if teacher.hub is not None:
        return teacher.hub.id
    return _strip_file(teacher.uri) if teacher.uri else None


QUIET_TORCHRUN = "import sys; from torch.distributed.run import main; sys.tracebacklimit = 0; main()"


def torchrun_options(job: TrainingJob, attempt: int, service: str) -> dict[str, str]:
    """torchrun's options for one gang attempt, by their names (nnodes, rdzv_id, …)."""
    spec = job.spec
    total, minimum = spec.node_counts()
    namespace = job.metadata.namespace or "default"
    return {
        "nnodes": str(total) if total == minimum else f"{minimum}:{total}",
        "nproc_per_node": str(procs_per_node(spec)),
        "rdzv_backend": "c10d",
        "rdzv_endpoint": f"{job.metadata.name}-0.{service}.{namespace}.svc:{RENDEZVOUS_PORT}",
        "rdzv_id": rendezvous_id(job.metadata.uid or job.metadata.name, attempt),
        # A fixed-size gang never restarts ranks in place: the operator restarts it whole. An elastic
        # gang's agents re-form the rendezvous when a node is lost or (re)joins, resuming from the latest
        # checkpoint; the operator counts those losses against the same backoffLimit.
        "max_restarts": str(spec.backoff_limit if total != minimum else 0),
    }


def launches_torchrun(command: list[str]) -> bool:
    """Whether a custom command starts torchrun itself: `torchrun …` or `python -m torch.distributed.run …`."""
    program = command[0].rsplit("/", 1)[-1]
    if program == "torchrun":
        return True
    return program.startswith("python") and command[1:3] in (["-m", "torch.distributed.run"],
                                                              ["-m", "torch.distributed.launch"])  # fmt: skip


def torchrun_command(job: TrainingJob, attempt: int, service: str) -> list[str]:
    """The container's command. The built-in trainer and a custom command run under torchrun with the
    gang's options; a custom command that starts torchrun itself gets them as PET_* variables instead
    (torchrun reads each option from PET_<NAME>), so its own flags still win where it sets some."""
    options = [f"--{k.replace('_', '-')}={v}" for k, v in torchrun_options(job, attempt, service).items()]
    program = job.spec.trainer
    if program is None:
        return ["torchrun", *options, "-m", "lepton.workloads.trainer"]
    if launches_torchrun(program.command):
        return [*program.command, *program.args]
    # torchrun without its launcher's traceback: Kubernetes keeps the last 2 KiB of a failed container's
    # log as its termination message, and that traceback alone would fill it; the program's own last
    # lines and torchrun's summary (the worker's exit code) fit. --no-python: the command runs as given.
    return ["python3", "-c", QUIET_TORCHRUN, *options, "--no-python", *program.command, *program.args]


def torchrun_env(job: TrainingJob, attempt: int, service: str) -> dict[str, str]:
    """PET_* variables: the gang's torchrun options for a custom command that starts torchrun itself."""
    program = job.spec.trainer
    if program is None or not launches_torchrun(program.command):
        return {}
    return {f"PET_{k.upper()}": v for k, v in torchrun_options(job, attempt, service).items()}


def _env(job: TrainingJob, attempt: int, resolved: Resolved, mounts: Mounts) -> list[dict[str, Any]]:
    total, minimum = job.spec.node_counts()
    if job.spec.trainer is None:
        config = trainer_config(job, resolved, mounts)
        ours = [{"name": TRAINER_CONFIG_ENV, "value": json.dumps(config.to_wire(), sort_keys=True)}]
    else:
        program = program_env(job, resolved, mounts) | torchrun_env(job, attempt, job.metadata.name)
        ours = [{"name": k, "value": v} for k, v in program.items()]
    ours += [{"name": k, "value": v} for k, v in resolved.extra_env.items()]
    hub = job.spec.model.hub if job.spec.model else None
    if hub is not None and hub.token_secret_ref is not None:
        ours.append(secret_env("HF_TOKEN", hub.token_secret_ref.name, hub.token_secret_ref.key))
    defaults = TORCH_ENV | (ELASTIC_ENV if total != minimum else {})
    return merge_env(defaults, ours, user=job.spec.env)


def render_service(job: TrainingJob) -> dict[str, Any]:
    name = job.metadata.name
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(job, name, COMPONENT),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,  # ranks meet before any of them is ready
            "selector": selector(job),
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT}],
        },
    }


def render_pod_group(job: TrainingJob, attempt: int) -> dict[str, Any]:
    _, minimum = job.spec.node_counts()
    spec: dict[str, Any] = {"schedulingPolicy": {"gang": {"minCount": minimum}}}
    if job.spec.scheduling.priority_class_name:
        spec["priorityClassName"] = job.spec.scheduling.priority_class_name
    return {
        "apiVersion": "scheduling.k8s.io/v1beta1",
        "kind": "PodGroup",
        "metadata": child_metadata(
            job, pod_group_name(job.metadata.name, attempt), COMPONENT, **{Label.ATTEMPT: str(attempt)}
        ),
        "spec": spec,
    }


def render_pod(
    job: TrainingJob, attempt: int, index: int, settings: RenderSettings, resolved: Resolved | None = None
) -> dict[str, Any]:
    resolved = resolved or Resolved()
    spec = job.spec
    name = job.metadata.name
    total, minimum = spec.node_counts()
    mounts = Mounts()
    env = _env(job, attempt, resolved, mounts)
    metadata = child_metadata(job, pod_name(name, attempt, index), COMPONENT,
                              **{Label.ATTEMPT: str(attempt), Label.NODE_INDEX: str(index)})  # fmt: skip
    labels = metadata["labels"]
    annotations: dict[str, str] = {Label.RENDEZVOUS_ID: rendezvous_id(job.metadata.uid or name, attempt)}
    gates: list[dict[str, str]] = []
    if spec.scheduling.queue_name:
        # Kueue's plain-pod integration admits the group as one workload.
        labels |= {
            "kueue.x-k8s.io/queue-name": spec.scheduling.queue_name,
            "kueue.x-k8s.io/pod-group-name": pod_group_name(name, attempt),
        }
        annotations["kueue.x-k8s.io/pod-group-total-count"] = str(total)
        # Created suspended: nothing schedules until Kueue admits the group and lifts the gate.
        gates = [{"name": "kueue.x-k8s.io/admission"}]
    shm = f"{max(spec.gpus_per_node, 1) * SHM_PER_GPU_GI}Gi" if spec.gpus_per_node else "1Gi"
    container: dict[str, Any] = {
        "name": COMPONENT,
        "image": spec.trainer.image if spec.trainer else spec.image or settings.trainer_image,
        "command": torchrun_command(job, attempt, name),
        "env": env,
        "ports": [
            {"name": "rendezvous", "containerPort": RENDEZVOUS_PORT},
            {"name": "metrics", "containerPort": METRICS_PORT},
        ],
        "resources": resources(spec.resources, spec.gpus_per_node),
        "securityContext": RESTRICTED_CONTAINER,
        # Rank 0 writes its TrainingSummary (final metrics) there on success; a failure's log tail otherwise.
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        **({"workingDir": spec.trainer.working_dir} if spec.trainer and spec.trainer.working_dir else {}),
        "volumeMounts": [
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "tmp", "mountPath": "/tmp"},
            *mounts.volume_mounts(),
        ],
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "hostname": f"{name}-{index}",
        "subdomain": name,
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,  # the trainer never talks to the API
        "terminationGracePeriodSeconds": settings.termination_grace_seconds,
        "securityContext": RESTRICTED_POD,
        "containers": [container],
        "volumes": [
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "20Gi"}},
            *mounts.volumes(),
        ],
    }
    if gates:
        pod_spec["schedulingGates"] = gates
    if settings.gang_scheduling and minimum > 1 and not spec.scheduling.queue_name:
        pod_spec["schedulingGroup"] = {"podGroupName": pod_group_name(name, attempt)}
    pod_spec |= placement(spec.scheduling, spec.gpus_per_node)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata | {"labels": labels, "annotations": annotations},
        "spec": pod_spec,
    }


def render(
    job: TrainingJob, attempt: int, settings: RenderSettings, resolved: Resolved | None = None
) -> list[dict[str, Any]]:
    """Every child of one gang attempt, in creation order (Service, PodGroup, pods). A suspended job
    keeps only its Service; with a Kueue queue, Kueue's pod group replaces the native one."""
    total, minimum = job.spec.node_counts()
    children = [render_service(job)]
    if job.spec.suspend:
        return children
    if settings.gang_scheduling and minimum > 1 and not job.spec.scheduling.queue_name:
        children.append(render_pod_group(job, attempt))
    children += [render_pod(job, attempt, i, settings, resolved) for i in range(total)]
    return children


__all__ = ["RenderSettings", "Resolved", "render", "render_pod", "rendezvous_id"]

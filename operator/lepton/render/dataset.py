"""A Dataset's children (pure): one batch/v1 Job per preparation spec, and its NetworkPolicy.

The Job is named NAME-<first 8 hex digits of its preparation hash> (a hash of the pod template and
the retry settings), so a changed spec, `refresh` or data image gets a Job of its own (a Job's template
cannot be changed), and an unchanged one never runs twice. Its pod has no API access (no ServiceAccount
token): it hands its summary back through its termination message, which the operator reads from the
pod's status. Sources' secrets reach it only as secretKeyRef environment variables.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from lepton.api import Dataset
from lepton.api.common import Resources
from lepton.api.constants import Label
from lepton.api.contract import DATA_CONFIG_ENV, METRICS_PORT, TERMINATION_LOG, DataConfig, DataInput
from lepton.api.dataset import DataSource
from lepton.render.common import (
    RESTRICTED_CONTAINER,
    RESTRICTED_POD,
    Mounts,
    child_labels,
    child_metadata,
    model_location,
    placement,
    resources,
    secret_env,
    selector,
)
from lepton.render.networkpolicy import NetworkSettings, namespace_peer

COMPONENT = "data"
# A preparation pod without resources in the spec gets these: bounded memory is what the workload sizes
# its batches for, and a scheduler needs requests to place it.
DEFAULT_RESOURCES = Resources(requests={"cpu": "1", "memory": "2Gi"}, limits={"memory": "2Gi"})
MIN_JOB_TTL = 30  # a finished Job lives at least this long, so the operator reads its summary first
_UNITS = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


@dataclass(frozen=True)
class DataSettings:
    data_image: str = "lepton/data:0.1.0"
    metrics_linger_seconds: float | None = None  # /metrics stays up for two last scrapes


@dataclass(frozen=True)
class Rendered:
    children: list[dict[str, Any]]
    job: str  # the preparation Job's name
    preparation: str  # its preparation hash: status.preparedSpec once it has run


def preparation_hash(job_spec: dict[str, Any]) -> str:
    """sha256 of what a Job runs (template and retry settings; not suspend or its TTL, which may change)."""
    doc = {k: v for k, v in job_spec.items() if k not in ("suspend", "ttlSecondsAfterFinished")}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def memory_bytes(quantity: int | str | None) -> int | None:
    """A memory quantity in bytes (the workload sizes its batches from it); None when not given."""
    if quantity is None:
        return None
    if isinstance(quantity, int):
        return quantity
    match = re.fullmatch(r"\+?([0-9.]+)(?:[eE]([+-]?[0-9]+))?([kMGT]i?|[numkMGTPE])?", quantity)
    if match is None:
        return None
    number, exponent, unit = float(match.group(1)), match.group(2), match.group(3) or ""
    factor = _UNITS.get(unit, {"n": 1e-9, "u": 1e-6, "m": 1e-3, "P": 1e15, "E": 1e18}.get(unit, 1))
    return int(number * 10 ** int(exponent or 0) * factor)


def _input(source: DataSource, index: int, mounts: Mounts, env: list[dict[str, Any]]) -> DataInput:
    """A source as the pod sees it; each secret becomes a secretKeyRef env var named for its source."""
    if source.request_log is not None:  # a log directory, read-only here (the servers append to it)
        rl = source.request_log
        path = mounts.path(rl.pvc.claim_name, rl.pvc.path, True) if rl.pvc else (rl.uri or "").removeprefix("file://")
        return DataInput(path=path, request_log=True, feedback=rl.feedback)
    if source.pvc is not None:
        return DataInput(format=source.format, path=mounts.path(source.pvc.claim_name, source.pvc.path, True))
    if source.http is not None:
        http, headers = source.http, None
        if http.headers_secret_ref is not None:
            headers = f"LEPTON_SOURCE_{index}_HEADERS"
            env.append(secret_env(headers, http.headers_secret_ref.name, http.headers_secret_ref.key))
        return DataInput(format=source.format, url=http.url, sha256=http.sha256, headers_env=headers)
    if source.s3 is not None:
        s3, access, secret = source.s3, None, None
        if s3.credentials is not None:
            access, secret = f"LEPTON_SOURCE_{index}_ACCESS_KEY_ID", f"LEPTON_SOURCE_{index}_SECRET_ACCESS_KEY"
            env.append(secret_env(access, s3.credentials.secret_name, s3.credentials.access_key_id_key))
            env.append(secret_env(secret, s3.credentials.secret_name, s3.credentials.secret_access_key_key))
        return DataInput(format=source.format, s3_uri=s3.uri, endpoint=s3.endpoint, region=s3.region,
                         access_key_env=access, secret_key_env=secret)  # fmt: skip
    if source.hub is not None:
        hub, token = source.hub, None
        if hub.token_secret_ref is not None:
            token = f"LEPTON_SOURCE_{index}_HUB_TOKEN"
            env.append(secret_env(token, hub.token_secret_ref.name, hub.token_secret_ref.key))
        return DataInput(format=source.format, hub_id=hub.id, revision=hub.revision, files=hub.files, token_env=token)
    return DataInput(format=source.format, path=(source.uri or "").removeprefix("file://"))


def output_root(dataset: Dataset, mounts: Mounts | None = None) -> str:
    """The output root as the pod sees it (mounted read-write), or as status names it without mounts."""
    out = dataset.spec.output
    if out.pvc is not None:
        return mounts.path(out.pvc.claim_name, out.pvc.path, False) if mounts else out.pvc.location()
    return (out.uri or "").removeprefix("file://")


def pod_resources(dataset: Dataset) -> Resources:
    spec = dataset.spec.resources
    return spec if spec.requests or spec.limits else DEFAULT_RESOURCES


def data_config(dataset: Dataset, mounts: Mounts, env: list[dict[str, Any]], tokenizer_uri: str | None,
                *, metrics_port: int = METRICS_PORT, termination_log: str = TERMINATION_LOG,
                metrics_linger_seconds: float | None = None) -> DataConfig:  # fmt: skip
    """The workload's configuration: secrets appended to `env` as secretKeyRefs, PVCs added to `mounts`."""
    spec = dataset.spec
    tokenizer_path = None
    if spec.tokenize is not None:
        source = spec.tokenize.tokenizer
        if tokenizer_uri:
            tokenizer_path = model_location(tokenizer_uri, mounts)
        elif source.pvc is not None:
            tokenizer_path = mounts.path(source.pvc.claim_name, source.pvc.path, True)
        else:
            tokenizer_path = (source.uri or (source.hub.id if source.hub else "")).removeprefix("file://")
    return DataConfig(
        dataset=f"{dataset.metadata.namespace or 'default'}/{dataset.metadata.name}",
        sources=[_input(s, i, mounts, env) for i, s in enumerate(spec.sources)],
        text_field=spec.text_field,
        pipeline=spec.pipeline,
        split=spec.split,
        decontaminate=spec.decontaminate,
        augment=spec.augment,
        tokenizer_path=tokenizer_path,
        max_length=spec.tokenize.max_length if spec.tokenize else 512,
        output_dir=output_root(dataset, mounts),
        retain=spec.retain,
        memory_limit_bytes=memory_bytes(pod_resources(dataset).limits.get("memory")),
        metrics_port=metrics_port,
        metrics_linger_seconds=metrics_linger_seconds,
        termination_log=termination_log,
    )


def render_job(
    dataset: Dataset, settings: DataSettings, tokenizer_uri: str | None = None
) -> tuple[dict[str, Any], str]:
    """The preparation Job and its preparation hash."""
    spec = dataset.spec
    mounts, env = Mounts(), list[dict[str, Any]]()
    config = data_config(dataset, mounts, env, tokenizer_uri, metrics_linger_seconds=settings.metrics_linger_seconds)
    labels = child_labels(dataset, COMPONENT)
    container: dict[str, Any] = {
        "name": COMPONENT,
        "image": spec.image or settings.data_image,
        "command": ["python", "-m", "lepton.workloads.data"],
        "env": [
            {"name": DATA_CONFIG_ENV, "value": json.dumps(config.to_wire(), sort_keys=True)},
            {"name": "HOME", "value": "/tmp/home"},
            {"name": "HF_HOME", "value": "/tmp/hf"},
            *env,
        ],
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "resources": resources(pod_resources(dataset)),
        "securityContext": RESTRICTED_CONTAINER,
        "terminationMessagePath": TERMINATION_LOG,
        # The summary on success and on a handled failure; the log's tail when the process died first.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [*mounts.volume_mounts(), {"name": "tmp", "mountPath": "/tmp"}],
    }
    job_spec: dict[str, Any] = {
        "backoffLimit": spec.backoff_limit,
        "suspend": spec.suspend,
        "template": {
            # refresh: a new value is a new template, hence a new Job, with an unchanged spec.
            "metadata": {"labels": labels, **({"annotations": {Label.REFRESH: spec.refresh}} if spec.refresh else {})},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,  # no API access: the summary leaves by termination message
                "enableServiceLinks": False,
                "securityContext": RESTRICTED_POD,
                "containers": [container],
                "volumes": [*mounts.volumes(), {"name": "tmp", "emptyDir": {"sizeLimit": "20Gi"}}],
                **placement(spec.scheduling, 0),
            },
        },
    }
    if spec.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    if spec.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = max(spec.ttl_seconds_after_finished, MIN_JOB_TTL)
    digest = preparation_hash(job_spec)
    name = f"{dataset.metadata.name}-{digest[:8]}"
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": child_metadata(dataset, name, COMPONENT),
            "spec": job_spec}, digest  # fmt: skip


def render_network_policy(dataset: Dataset, settings: NetworkSettings) -> dict[str, Any]:
    """Only the metrics port is reachable, from the operator's and Prometheus's namespaces. Ingress only:
    egress to the sources (HTTP, object stores, the hub) and DNS is untouched."""
    readers = dict.fromkeys(n for n in (settings.operator_namespace, settings.prometheus_namespace) if n)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": child_metadata(dataset, dataset.metadata.name, COMPONENT),
        "spec": {
            "podSelector": {"matchLabels": selector(dataset)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [namespace_peer(n) for n in readers], "ports": [{"protocol": "TCP", "port": METRICS_PORT}]}
            ],
        },
    }


def render(dataset: Dataset, settings: DataSettings, tokenizer_uri: str | None = None,
           network: NetworkSettings | None = None) -> Rendered:  # fmt: skip
    """Every child, in creation order."""
    job, digest = render_job(dataset, settings, tokenizer_uri)
    children = [job]
    if network is not None:
        children.append(render_network_policy(dataset, network))
    return Rendered(children, job["metadata"]["name"], digest)


__all__ = ["COMPONENT", "DataSettings", "Rendered", "data_config", "output_root", "render"]

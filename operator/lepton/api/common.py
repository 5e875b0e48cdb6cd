"""Types shared by several kinds: references, model and data sources, env, resources, scheduling,
job lifecycle and the status fields every kind has."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, WithJsonSchema
from pydantic_core import PydanticCustomError

from lepton.api.base import (
    INT32_MAX,
    ApiModel,
    Int,
    exactly_one,
    full_match,
    json_type,
    local_uri,
    not_supported,
    type_error,
)
from lepton.api.conditions import Condition

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
# A non-negative Kubernetes quantity ("500m", "4Gi", "1e3"), as a string; ints are accepted too
# (int-or-string), from 0. [0-9], not \d: RE2 and Rust read \d differently outside ASCII.
QUANTITY = r"^\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|[numkMGTPE]|[KMGTPE]i)?$"
_QUANTITY = full_match(QUANTITY)


def _quantity(value: Any) -> int | str:
    kind = json_type(value)
    if kind == "string":
        if not _QUANTITY.fullmatch(value):
            raise PydanticCustomError("string_pattern_mismatch", "should match {pattern}", {"pattern": QUANTITY})
        return str(value)
    if kind == "integer":
        number = int(value)
        if number < 0:
            raise PydanticCustomError("greater_than_equal", "should be greater than or equal to {ge}", {"ge": 0})
        return number
    raise type_error("integer,string", value)


Quantity = Annotated[
    int | str,
    BeforeValidator(_quantity),
    WithJsonSchema({"x-kubernetes-int-or-string": True, "pattern": QUANTITY, "minimum": 0}),
]


class LocalObjectReference(ApiModel):
    """A reference to an object of a known kind in the same namespace."""

    name: str = Field(description="Name of the referenced object.", max_length=253, pattern=DNS_SUBDOMAIN)


class SecretKeyRef(ApiModel):
    """A key of a Secret in the same namespace. Secret values never appear in status, events or logs."""

    name: str = Field(description="Name of the Secret.", max_length=253, pattern=DNS_SUBDOMAIN)
    key: str = Field(description="Key within the Secret.", min_length=1, max_length=253)


class PvcPath(ApiModel):
    """A path inside a PersistentVolumeClaim in the same namespace."""

    claim_name: str = Field(description="Name of the PersistentVolumeClaim.", max_length=253, pattern=DNS_SUBDOMAIN)
    path: str = Field(default="", description="Path inside the volume; empty means its root.", max_length=1024)
    read_only: bool | None = Field(default=None, description="Mount read-only. Defaults per use.")

    def location(self) -> str:
        """As status and references name it: pvc://CLAIM/PATH (render/common.model_location mounts it)."""
        return f"pvc://{self.claim_name}/{self.path}".rstrip("/")


class DatasetRef(ApiModel):
    """A Dataset in the same namespace, optionally pinned to one content-hash version."""

    name: str = Field(description="Name of the Dataset.", max_length=253, pattern=DNS_SUBDOMAIN)
    version: str | None = Field(
        default=None,
        description="Content-hash version to use; empty means the Dataset's current version at start.",
        max_length=128,
    )
    split: Literal["train", "validation", "test"] = Field(default="train", description="Which split to read.")


class Lineage(ApiModel):
    """What a model was built from, recorded by the operator as references resolve and carried into the
    model's own metadata (lepton-training.json) and the serving model's metadata: the data version it
    was trained on, the study and trial that chose its training, the job that wrote it, and the model
    that job started from."""

    dataset: str | None = Field(default=None, description="The Dataset the training data came from.")
    dataset_version: str | None = Field(default=None, description="Its content-hash version trained on.")
    tuning_study: str | None = Field(default=None, description="The TuningStudy whose best trial it comes from.")
    trial: int | None = Field(default=None, description="That study's trial number (its best trial).")
    training_job: str | None = Field(default=None, description="The TrainingJob that wrote the model.")
    base_model: str | None = Field(default=None, description="Where that training started from (a location).")


class HubModel(ApiModel):
    """A model from a model hub, fetched by the workload at start (the hub's default revision)."""

    rules = (not_supported("revision", "hub", "the hub's default revision is used; to pin one, copy it to a PVC"),)

    id: str = Field(description="Repository id on the hub, e.g. 'org/model-name'.", min_length=1, max_length=256)
    revision: str | None = Field(
        default=None, description="Not supported yet (rejected when set): the hub's default revision is used."
    )
    token_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding an access token for gated or private models."
    )


class ModelSource(ApiModel):
    """Where a model comes from: exactly one of a hub id, a local path, a PVC path, or the output of
    another resource (a TrainingJob's final model, a TuningStudy's best trial)."""

    rules = (
        exactly_one("hub", "uri", "pvc", "trainingJob", "tuningStudy", where="model source"),
        local_uri("model source"),
    )

    hub: HubModel | None = Field(default=None, description="A model on a model hub.")
    uri: str | None = Field(
        default=None,
        description="A model directory: a local path or file:// URI (s3:// and gs:// are not supported yet).",
        min_length=1,
        max_length=2048,
    )
    pvc: PvcPath | None = Field(default=None, description="A model directory inside a PersistentVolumeClaim.")
    training_job: LocalObjectReference | None = Field(
        default=None, description="Use the final model written by this TrainingJob (waits until it succeeds)."
    )
    tuning_study: LocalObjectReference | None = Field(
        default=None, description="Use the best trial's model of this TuningStudy (waits until it has one)."
    )


class StorageLocation(ApiModel):
    """Where outputs are written: exactly one of a PVC path or a local path."""

    rules = (
        exactly_one("pvc", "uri", where="storage location"),
        local_uri("storage location"),
        not_supported("credentialsSecretRef", "storage location", "object-store credentials arrive with object stores"),
    )

    pvc: PvcPath | None = Field(default=None, description="A directory inside a PersistentVolumeClaim.")
    uri: str | None = Field(
        default=None,
        description="A local path or file:// URI (s3:// and gs:// are not supported yet).",
        min_length=1,
        max_length=2048,
    )
    credentials_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Not supported yet (rejected when set): object-store credentials."
    )


class EnvVarSource(ApiModel):
    secret_key_ref: SecretKeyRef = Field(description="Take the value from a Secret key.")


class EnvVar(ApiModel):
    """An environment variable for the workload containers; secrets only through valueFrom."""

    rules = (exactly_one("value", "valueFrom", where="env"),)

    name: str = Field(description="Variable name.", min_length=1, max_length=256, pattern=ENV_NAME)
    value: str | None = Field(default=None, description="Literal value. Use valueFrom for secrets.")
    value_from: EnvVarSource | None = Field(default=None, description="Take the value from a Secret key.")


class Resources(ApiModel):
    """Compute resources per pod, as in corev1.ResourceRequirements (GPUs are set by their own field)."""

    requests: dict[str, Quantity] = Field(
        default_factory=dict, description="Minimum resources, e.g. {cpu: '4', memory: 32Gi} (quantities, from 0)."
    )
    limits: dict[str, Quantity] = Field(
        default_factory=dict,
        description="Maximum resources, e.g. {memory: 64Gi}. Each limit must be at least its request "
        "(Kubernetes rejects the pods otherwise).",
    )


class Toleration(ApiModel):
    """A pod toleration, as in corev1.Toleration."""

    key: str | None = Field(default=None, description="Taint key; empty with operator Exists matches all.")
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="Exists or Equal.")
    value: str | None = Field(default=None, description="Taint value for operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: Int | None = Field(
        default=None, le=INT32_MAX, description="For NoExecute: how long to stay bound."
    )


class Scheduling(ApiModel):
    """Where and with what priority the pods run."""

    queue_name: str | None = Field(
        default=None,
        description="Kueue LocalQueue: the workload is created suspended and admitted by Kueue.",
        max_length=63,
        pattern=DNS_LABEL,
    )
    priority_class_name: str | None = Field(
        default=None, description="PriorityClass of the pods.", max_length=253, pattern=DNS_SUBDOMAIN
    )
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the pods require.")
    tolerations: list[Toleration] = Field(
        default_factory=list, description="Extra tolerations; the GPU toleration is added automatically."
    )


class JobLifecycle(ApiModel):
    """Lifecycle fields of job-like kinds, with the meaning they have on a batch/v1 Job."""

    suspend: bool = Field(
        default=False,
        description="Stop the pods but keep the resource and its checkpoints; false again resumes.",
    )
    active_deadline_seconds: Int | None = Field(
        default=None,
        ge=1,
        le=INT32_MAX,
        description="Fail with DeadlineExceeded when running longer than this (suspended time excluded).",
    )
    ttl_seconds_after_finished: Int | None = Field(
        default=None,
        ge=0,
        le=INT32_MAX,
        description="Delete the resource this many seconds after it succeeds or fails.",
    )
    backoff_limit: Int = Field(
        default=3,
        ge=0,
        le=100,
        description="Recoveries allowed after failures before the job fails (gang restarts, and pods an elastic "
        "job replaces).",
    )
    startup_deadline_seconds: Int | None = Field(
        default=None,
        ge=1,
        le=INT32_MAX,
        description="Fail when pods are not all running this long after creation (e.g. unschedulable).",
    )


class CommonStatus(ApiModel):
    """Fields every kind's status has."""

    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation the status was computed from."
    )
    phase: str | None = Field(default=None, description="One-word summary for humans; use conditions in code.")
    conditions: list[Condition] = Field(default_factory=list, description="Ready, Reconciling, Stalled and others.")

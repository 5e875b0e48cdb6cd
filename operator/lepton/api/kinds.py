"""The four kinds: their envelopes (apiVersion, kind, metadata, spec, status) and the facts the CRDs
and the operator need about each (names, short names, printer columns, subresources)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from lepton.api.base import ApiModel, Rule
from lepton.api.common import CommonStatus
from lepton.api.dataset import DatasetSpec, DatasetStatus
from lepton.api.inferenceservice import InferenceServiceSpec, InferenceServiceStatus
from lepton.api.trainingjob import TrainingJobSpec, TrainingJobStatus
from lepton.api.tuningstudy import MAX_NAME as TUNINGSTUDY_MAX_NAME
from lepton.api.tuningstudy import TuningStudySpec, TuningStudyStatus

GROUP = "lepton.ai"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "lepton"


# metav1.ObjectMeta's JSON fields: any other key under metadata is an unknown field.
OBJECT_META_FIELDS = frozenset(
    [
        "name",
        "generateName",
        "namespace",
        "selfLink",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "labels",
        "annotations",
        "ownerReferences",
        "finalizers",
        "managedFields",
    ]
)
_DNS1123_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
# What the apiserver says of a bad name (k8s.io/apimachinery/pkg/util/validation, IsDNS1123Subdomain).
NAME_TOO_LONG = "must be no more than 253 characters"
NAME_NOT_SUBDOMAIN = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must "
    f"start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    f"'{_DNS1123_SUBDOMAIN}')"
)


class ObjectMeta(BaseModel):
    """The part of metav1.ObjectMeta the project reads; everything else is kept as it came."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(default="", validate_default=True)  # missing: "name or generateName is required"
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _dns_subdomain(cls, name: str) -> str:
        if not name:
            raise PydanticCustomError("field_required", "name or generateName is required", {"detail": ""})
        details = [NAME_TOO_LONG] if len(name) > 253 else []
        if not re.fullmatch(_DNS1123_SUBDOMAIN, name):
            details.append(NAME_NOT_SUBDOMAIN)
        if details:
            raise PydanticCustomError("field_invalid", "; ".join(details), {"details": details})
        return name


class _Envelope(ApiModel):
    api_version: Literal["lepton.ai/v1alpha1"] = Field(description="lepton.ai/v1alpha1")
    metadata: ObjectMeta = Field(description="Standard object metadata.")


class Dataset(_Envelope):
    rules = (
        Rule(
            cel="self.metadata.name.size() <= 54",
            message="Dataset names are at most 54 characters: its preparation Jobs are named NAME-<8 hex digits>, "
            "and a Job name becomes a label value (at most 63)",
            check=lambda dataset: len(dataset.metadata.name) <= 54,
        ),
    )

    kind: Literal["Dataset"] = Field(description="Dataset")
    spec: DatasetSpec
    status: DatasetStatus = Field(default_factory=DatasetStatus)


DNS1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
_DNS1035 = re.compile(DNS1035_LABEL[1:-1])


def dns1035_name(kind: str, becomes: str) -> Rule:
    """A name that becomes a Service name or a host name: a DNS-1035 label (no dots, a letter first)."""
    return Rule(
        cel=f"self.metadata.name.matches('{DNS1035_LABEL}')",
        message=f"{kind} names must start with a letter and hold only lowercase letters, digits and '-' "
        f"(no dots): they become {becomes}",
        check=lambda resource: _DNS1035.fullmatch(resource.metadata.name) is not None,
    )


# Pods are named <job>-<attempt>-<index> and their hostnames <job>-<index> (at most 63 characters).
TRAININGJOB_NAME_RULE = Rule(
    cel="self.metadata.name.size() <= 50",
    message="TrainingJob names are at most 50 characters: they become pod host names",
    check=lambda job: len(job.metadata.name) <= 50,
)


class TrainingJob(_Envelope):
    rules = (dns1035_name("TrainingJob", "a Service name and pod host names"), TRAININGJOB_NAME_RULE)

    kind: Literal["TrainingJob"] = Field(description="TrainingJob")
    spec: TrainingJobSpec
    status: TrainingJobStatus = Field(default_factory=TrainingJobStatus)


class TuningStudy(_Envelope):
    rules = (
        dns1035_name("TuningStudy", "the first part of its trials' TrainingJob names"),
        Rule(
            cel=f"self.metadata.name.size() <= {TUNINGSTUDY_MAX_NAME}",
            message=f"TuningStudy names are at most {TUNINGSTUDY_MAX_NAME} characters: trials are TrainingJobs "
            "named NAME-<number>-r<retry>",
            check=lambda study: len(study.metadata.name) <= TUNINGSTUDY_MAX_NAME,
        ),
    )

    kind: Literal["TuningStudy"] = Field(description="TuningStudy")
    spec: TuningStudySpec
    status: TuningStudyStatus = Field(default_factory=TuningStudyStatus)


class InferenceService(_Envelope):
    rules = (
        dns1035_name("InferenceService", "a Service name"),
        Rule(
            cel="self.metadata.name.size() <= 55",
            message="InferenceService names are at most 55 characters: they become Service names with a "
            "-primary or -canary suffix",
            check=lambda service: len(service.metadata.name) <= 55,
        ),
    )

    kind: Literal["InferenceService"] = Field(description="InferenceService")
    spec: InferenceServiceSpec
    status: InferenceServiceStatus = Field(default_factory=InferenceServiceStatus)


Resource = Dataset | TrainingJob | TuningStudy | InferenceService


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    json_path: str
    type: Literal["string", "integer", "number", "boolean", "date"] = "string"
    description: str = ""
    priority: int = 0

    def to_crd(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.description:
            out["description"] = self.description
        if self.priority:
            out["priority"] = self.priority
        return out


PHASE = PrinterColumn("Phase", ".status.phase", description="Summary of the state")
AGE = PrinterColumn("Age", ".metadata.creationTimestamp", "date")


@dataclass(frozen=True)
class KindInfo:
    kind: str
    plural: str
    short_names: tuple[str, ...]
    description: str
    model: type[_Envelope]
    spec: type[ApiModel]
    status: type[CommonStatus]
    columns: tuple[PrinterColumn, ...]
    scale: bool = False

    @property
    def root_rules(self) -> tuple[Rule, ...]:
        """Rules on the whole object (e.g. on metadata.name), enforced at the schema's root."""
        return self.model.rules

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


KINDS: dict[str, KindInfo] = {
    info.kind: info
    for info in (
        KindInfo(
            kind="Dataset",
            plural="datasets",
            short_names=("lds",),
            description="A declarative data preparation pipeline whose outputs are versioned by content hash.",
            model=Dataset,
            spec=DatasetSpec,
            status=DatasetStatus,
            columns=(
                PHASE,
                PrinterColumn("Version", ".status.version", description="Current content-hash version"),
                PrinterColumn("Rows", ".status.totalRows", "integer", "Rows of the current version, all splits"),
                AGE,
                PrinterColumn("Train", ".status.rows.train", "integer", "Rows in the training split", priority=1),
                PrinterColumn("Job", ".status.job", description="Preparation Job of the current spec", priority=1),
            ),
        ),
        KindInfo(
            kind="TrainingJob",
            plural="trainingjobs",
            short_names=("ltj",),
            description="Distributed (torchrun) fine-tuning of a transformers model on one or more nodes.",
            model=TrainingJob,
            spec=TrainingJobSpec,
            status=TrainingJobStatus,
            columns=(
                PHASE,
                PrinterColumn("Ready", ".status.ready", description="Pods running / pods of the gang"),
                PrinterColumn("Progress", ".status.progress.percent", "integer", "Percent of steps done"),
                PrinterColumn("Loss", ".status.progress.loss", description="Latest training loss"),
                PrinterColumn("Restarts", ".status.restarts", "integer", "Gang restarts"),
                AGE,
                PrinterColumn("Checkpoint", ".status.latestCheckpoint", priority=1),
            ),
        ),
        KindInfo(
            kind="TuningStudy",
            plural="tuningstudies",
            short_names=("lts",),
            description="An Optuna hyper-parameter search whose trials run as TrainingJobs.",
            model=TuningStudy,
            spec=TuningStudySpec,
            status=TuningStudyStatus,
            columns=(
                PHASE,
                PrinterColumn("Trials", ".status.trialsDone", description="Finished trials / maxTrials"),
                PrinterColumn("Best", ".status.bestTrial.value", description="Best objective value"),
                AGE,
                PrinterColumn("Running", ".status.trials.running", "integer", "Trials running", priority=1),
                PrinterColumn("Objective", ".spec.objective.metric", priority=1),
            ),
        ),
        KindInfo(
            kind="InferenceService",
            plural="inferenceservices",
            short_names=("lis",),
            description="An autoscaled model server with dynamic batching and canary rollout.",
            model=InferenceService,
            spec=InferenceServiceSpec,
            status=InferenceServiceStatus,
            columns=(
                PHASE,
                PrinterColumn("Ready", ".status.ready", description="Replicas with the model loaded / wanted"),
                PrinterColumn("Replicas", ".status.desiredReplicas", "integer", "Primary replicas wanted now"),
                PrinterColumn("Canary", ".status.traffic.canaryPercent", "integer", "Requests to the canary, %"),
                PrinterColumn("URL", ".status.url", description="In-cluster URL"),
                AGE,
            ),
            scale=True,
        ),
    )
}

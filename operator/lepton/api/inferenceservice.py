"""InferenceService: an autoscaled model server with dynamic batching and canary rollout."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lepton.api.base import ApiModel, Int, Rule, ordered
from lepton.api.common import CommonStatus, EnvVar, ModelSource, Resources, Scheduling
from lepton.api.trainingjob import Task


class Autoscaling(ApiModel):
    rules = (ordered("minReplicas", "maxReplicas", where="autoscaling"),)

    min_replicas: Int = Field(default=1, ge=0, le=10000, description="Fewest replicas; 0 allows scale to zero.")
    max_replicas: Int = Field(default=1, ge=1, le=10000, description="Most replicas.")
    metric: Literal["concurrency", "rps", "cpu"] = Field(
        default="concurrency", description="Scaling signal: in-flight requests, requests/s, or CPU %."
    )
    target: Int = Field(default=8, ge=1, le=1000000, description="Target value of the metric per replica.")


class Batching(ApiModel):
    max_batch_size: Int = Field(default=8, ge=1, le=4096, description="Requests merged into one forward pass.")
    max_latency_ms: Int = Field(
        default=10, ge=0, le=60000, description="Longest a request waits for its batch to fill."
    )


class Canary(ApiModel):
    model: ModelSource = Field(description="The candidate model.")
    traffic_percent: Int = Field(ge=0, le=100, description="Share of requests sent to the candidate.")


class ServerLimits(ApiModel):
    max_request_bytes: Int = Field(
        default=1048576, ge=1024, le=1073741824, description="Larger requests get 413 (at most 1 GiB)."
    )
    timeout_seconds: Int = Field(default=30, ge=1, le=3600, description="Requests running longer get 504.")
    max_concurrency: Int = Field(default=256, ge=1, le=100000, description="In-flight requests beyond this get 503.")


Protocol = Literal["v2", "openai"]
ALL_PROTOCOLS: tuple[Protocol, ...] = ("v2", "openai")


class InferenceServiceSpec(ApiModel):
    rules = (
        Rule(
            cel="!has(self.autoscaling) || !has(self.replicas) || "
            "(self.replicas >= self.autoscaling.minReplicas && self.replicas <= self.autoscaling.maxReplicas)",
            message="replicas must lie within autoscaling.minReplicas and autoscaling.maxReplicas",
            check=lambda s: (
                s.autoscaling is None
                or s.replicas is None
                or s.autoscaling.min_replicas <= s.replicas <= s.autoscaling.max_replicas
            ),
        ),
        Rule(
            cel="self.task != 'sequence-classification' || !self.protocols.exists(p, p == 'openai')",
            message="the openai protocol serves generation: drop it for task sequence-classification",
            check=lambda s: s.task != "sequence-classification" or "openai" not in s.protocols,
        ),
    )

    model: ModelSource = Field(description="The model to serve.")
    task: Task = Field(default="causal-lm", description="causal-lm or sequence-classification.")
    image: str | None = Field(
        default=None, description="Server image; default: the operator's server image.", max_length=1024
    )
    replicas: Int | None = Field(
        default=None, ge=0, le=10000, description="Replicas when not autoscaled (scale subresource)."
    )
    autoscaling: Autoscaling | None = Field(default=None, description="Horizontal autoscaling.")
    gpus: Int = Field(default=0, ge=0, le=64, description="nvidia.com/gpu per replica.")
    resources: Resources = Field(default_factory=Resources, description="CPU/memory per replica.")
    batching: Batching = Field(default_factory=Batching, description="Dynamic batching.")
    limits: ServerLimits = Field(default_factory=ServerLimits, description="Request size, time and concurrency.")
    protocols: list[Protocol] = Field(
        default=list(ALL_PROTOCOLS),  # a schema default too: a CEL rule reads it
        min_length=1,
        max_length=2,
        description="Routes: Open Inference Protocol v2 and OpenAI-compatible.",
    )
    canary: Canary | None = Field(default=None, description="Split traffic to a candidate model.")
    env: list[EnvVar] = Field(default_factory=list, max_length=256, description="Extra env for the server.")
    scheduling: Scheduling = Field(default_factory=Scheduling, description="Priority and placement.")


class InferenceServiceStatus(CommonStatus):
    replicas: int = Field(default=0, description="Replicas that exist (scale subresource).")
    ready_replicas: int = Field(default=0, description="Replicas ready to serve.")
    selector: str | None = Field(default=None, description="Label selector of the replicas (scale subresource).")
    url: str | None = Field(default=None, description="In-cluster URL of the service.")
    model: str | None = Field(default=None, description="Resolved location of the served model.")
    canary_traffic_percent: int | None = Field(default=None, description="Share of traffic on the canary.")

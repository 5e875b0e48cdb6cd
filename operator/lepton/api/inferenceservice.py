"""InferenceService: a model server that is Ready only once its model is loaded, batches requests
dynamically, autoscales, and splits traffic to a canary for real."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lepton.api.base import ApiModel, Int, Rule, ordered
from lepton.api.common import CommonStatus, EnvVar, Lineage, ModelSource, Resources, Scheduling
from lepton.api.drift import DriftMonitoring, DriftStatus
from lepton.api.requestlog import RequestLogging

ServeTask = Literal["causal-lm", "sequence-classification", "embeddings"]
Protocol = Literal["v2", "openai"]
ALL_PROTOCOLS: tuple[Protocol, ...] = ("v2", "openai")
TrafficMode = Literal["gateway-api", "replicas"]


class Autoscaling(ApiModel):
    rules = (ordered("minReplicas", "maxReplicas", where="autoscaling"),)

    min_replicas: Int = Field(
        default=1,
        ge=0,
        le=10000,
        description="Fewest replicas. 0: after idleSeconds without a request the service scales to zero; "
        "requests that arrive then are held by the activator (installed by the chart) while one replica loads "
        "its model, and answered by it.",
    )
    max_replicas: Int = Field(default=1, ge=1, le=10000, description="Most replicas.")
    metric: Literal["concurrency", "rps", "cpu"] = Field(
        default="concurrency",
        description="Scaling signal per replica: in-flight requests (concurrency), requests/s (rps), or CPU "
        "utilisation in percent of the request (cpu). concurrency and rps are read through the custom metrics "
        "API (e.g. prometheus-adapter) from the server's lepton_server_inflight_requests and "
        "lepton_server_requests_total.",
    )
    target: Int = Field(default=8, ge=1, le=1000000, description="Target value of the metric per replica.")
    idle_seconds: Int = Field(
        default=300,
        ge=10,
        le=604800,
        description="With minReplicas 0: time without a request (as the replicas' own request metrics tell) "
        "before the service scales to zero.",
    )
    activation_timeout_seconds: Int = Field(
        default=300,
        ge=1,
        le=3600,
        description="With minReplicas 0: longest a request that arrives at zero is held while a replica loads "
        "its model; past it the activator answers 503 with Retry-After.",
    )


class Runtime(ApiModel):
    """How the server runs the model: device, precision, dynamic batching and request limits."""

    rules = (
        Rule(
            cel="self.maxBatchTokens >= self.maxInputTokens",
            message="runtime.maxBatchTokens must be at least runtime.maxInputTokens: a batch holds one longest request",
            check=lambda r: r.max_batch_tokens >= r.max_input_tokens,
        ),
    )

    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto: cuda when a GPU is given.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        default="auto", description="Weights' precision; auto: the model's own (float32 on CPU)."
    )
    max_batch_size: Int = Field(default=8, ge=1, le=1024, description="Most requests in one forward pass.")
    max_batch_delay_ms: Int = Field(
        default=5,
        ge=0,
        le=10000,
        description="Longest the first request of a batch waits for more; no wait once a batch is full.",
    )
    max_batch_tokens: Int = Field(
        default=8192, ge=1, le=1048576, description="Most tokens in one batch, padding included."
    )
    max_input_tokens: Int = Field(default=1024, ge=1, le=1048576, description="Longer inputs get 400/422.")
    max_output_tokens: Int = Field(default=256, ge=1, le=1048576, description="Most tokens one request generates.")
    request_timeout_seconds: Int = Field(
        default=30, ge=1, le=3600, description="A request not answered in this time gets 504."
    )
    max_queue_length: Int = Field(
        default=256, ge=1, le=100000, description="Queued requests beyond this get 429 with Retry-After."
    )
    max_request_bytes: Int = Field(
        default=1048576, ge=1024, le=67108864, description="Larger request bodies get 413 (at most 64 MiB)."
    )
    startup_seconds: Int = Field(
        default=600, ge=10, le=86400, description="Time allowed to load and warm the model before a restart."
    )
    drain_seconds: Int = Field(
        default=30, ge=0, le=3600, description="On termination: time in-flight requests get to finish."
    )


class Canary(ApiModel):
    model: ModelSource = Field(description="The candidate model, served by a Deployment of its own.")
    traffic_percent: Int = Field(ge=0, le=100, description="Share of requests sent to the candidate.")


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
            cel="!has(self.scheduling) || !has(self.scheduling.queueName)",
            message="scheduling.queueName is not supported yet for InferenceService: Kueue admission of serving "
            "replicas is not built; remove it",
            check=lambda s: s.scheduling.queue_name is None,
        ),
        Rule(
            cel="!has(self.autoscaling) || self.autoscaling.minReplicas > 0 || !has(self.canary)",
            message="autoscaling.minReplicas 0 with a canary is not supported yet: scale to zero serves one "
            "model; set minReplicas to 1 or remove the canary",
            check=lambda s: s.autoscaling is None or s.autoscaling.min_replicas > 0 or s.canary is None,
        ),
        Rule(
            cel="self.task == 'causal-lm' || !self.protocols.exists(p, p == 'openai')",
            message="the openai protocol serves completions and embeddings of causal-lm models: drop it for "
            "sequence-classification and embeddings (they are served on v2)",
            check=lambda s: s.task == "causal-lm" or "openai" not in s.protocols,
        ),
    )

    model: ModelSource = Field(description="The model to serve: a path, a PVC, or another resource's output.")
    task: ServeTask = Field(
        default="causal-lm", description="causal-lm (text generation), sequence-classification or embeddings."
    )
    image: str | None = Field(
        default=None, description="Server image; default: the operator's server image.", max_length=1024
    )
    replicas: Int | None = Field(
        default=None,
        ge=0,
        le=10000,
        description="Replicas when not autoscaled (kubectl scale sets it); default 1. With autoscaling, the "
        "HorizontalPodAutoscaler decides.",
    )
    autoscaling: Autoscaling | None = Field(
        default=None, description="Horizontal autoscaling (autoscaling/v2) of the primary Deployment."
    )
    gpus: Int = Field(default=0, ge=0, le=64, description="nvidia.com/gpu per replica.")
    resources: Resources = Field(default_factory=Resources, description="CPU/memory per replica.")
    runtime: Runtime = Field(default_factory=Runtime, description="Device, precision, batching and limits.")
    protocols: list[Protocol] = Field(
        default=list(ALL_PROTOCOLS),  # a schema default too: a CEL rule reads it
        min_length=1,
        max_length=2,
        description="Routes: Open Inference Protocol v2 (/v2) and OpenAI-compatible (/v1).",
    )
    canary: Canary | None = Field(
        default=None,
        description="Split traffic to a candidate model: by HTTPRoute weights where the cluster serves the "
        "Gateway API, otherwise by replica counts under one Service (status.traffic says which). To promote, "
        "move canary.model to model and remove canary in one edit: the primary rolls to it replica by replica, "
        "each new replica taking traffic only once its model is loaded.",
    )
    drift: DriftMonitoring | None = Field(
        default=None,
        description="Score live inputs against the model's training data (the dataStats the trainer writes "
        "beside the model) and set DriftDetected past a threshold; the servers export the scores as "
        "lepton_server_drift_score. None: no scoring.",
    )
    suspend: bool = Field(default=False, description="Stop serving (no replicas) but keep the resource.")
    env: list[EnvVar] = Field(default_factory=list, max_length=256, description="Extra env for the server.")
    scheduling: Scheduling = Field(default_factory=Scheduling, description="Priority and placement.")
    service_monitor: bool = Field(
        default=False,
        description="A Prometheus Operator ServiceMonitor scraping every replica's /metrics. Needs the "
        "monitoring.coreos.com/v1 API; without it the Monitored condition says so and nothing is created.",
    )
    pod_disruption_budget: bool = Field(
        default=True,
        description="A PodDisruptionBudget: voluntary disruptions (node drains) evict one replica at a time; "
        "it never blocks a drain.",
    )
    logging: RequestLogging | None = Field(
        default=None,
        description="Record a sampled share of requests and responses, PII-masked, to a rotated store that a "
        "Dataset's requestLog source reads back; clients add labels with POST /v1/feedback.",
    )


class TrafficSplit(ApiModel):
    mode: TrafficMode = Field(description="gateway-api: HTTPRoute weights; replicas: replica counts under one Service.")
    primary_percent: int = Field(description="Share of requests the primary model gets now.")
    canary_percent: int = Field(description="Share of requests the canary model gets now.")


class InferenceServiceStatus(CommonStatus):
    replicas: int = Field(default=0, description="Replicas of the primary that exist (scale subresource).")
    ready_replicas: int = Field(default=0, description="Primary replicas with the model loaded.")
    desired_replicas: int = Field(default=0, description="Primary replicas wanted now.")
    canary_ready_replicas: int | None = Field(default=None, description="Canary replicas with the model loaded.")
    ready: str | None = Field(default=None, description="Ready replicas / desired, primary and canary together.")
    selector: str | None = Field(default=None, description="Label selector of the replicas (scale subresource).")
    url: str | None = Field(default=None, description="In-cluster URL of the service.")
    model: str | None = Field(default=None, description="Resolved location of the served model.")
    canary_model: str | None = Field(default=None, description="Resolved location of the canary model.")
    lineage: Lineage | None = Field(
        default=None,
        description="Where the served (primary) model comes from, end to end: the data version it was trained on, "
        "the study and trial, the job that wrote it; the server's model metadata carries the same.",
    )

    traffic: TrafficSplit | None = Field(default=None, description="The traffic split in force.")
    drift: DriftStatus | None = Field(
        default=None, description="Drift scores of live inputs against the training data (with spec.drift)."
    )

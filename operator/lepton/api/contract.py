"""The contracts between the operator and its workloads (trainer, server, data): one JSON document
each, validated on both sides. A workload never reads its resource itself; the operator (or the local
backend) resolves references and paths."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from lepton.api.base import ApiModel, exactly_one
from lepton.api.common import Lineage
from lepton.api.dataset import Augment, Decontaminate, Split, Step
from lepton.api.drift import DriftMonitoring
from lepton.api.inferenceservice import ALL_PROTOCOLS, Protocol, ServeTask
from lepton.api.pii import ALL_PII, PiiEntity
from lepton.api.trainingjob import DistillationSpec, Hyperparameters, Task
from lepton.sdk.progress import MAX_EVALUATIONS  # one number, the SDK's

TRAINER_CONFIG_ENV = "LEPTON_TRAINER_CONFIG"
METRICS_PORT = 9090
RENDEZVOUS_PORT = 29500


class TrainerData(ApiModel):
    path: str = Field(description="File or directory of the training data, as seen by the pod.")
    format: Literal["auto", "jsonl", "csv", "parquet"] = Field(default="auto", description="File format.")
    text_field: str = Field(default="text", description="Column with the text.")
    label_field: str = Field(default="label", description="Column with the label.")
    image_field: str = Field(default="image", description="Column with encoded image bytes (Parquet).")
    validation_fraction: float = Field(default=0.0, ge=0, lt=1, description="Held-out fraction.")
    dataset: str | None = Field(default=None, description="The Dataset read (datasetRef), for the model's metadata.")
    dataset_version: str | None = Field(default=None, description="Its version, for the model's metadata.")


class TrainerConfig(ApiModel):
    """Everything one trainer process needs; rank and world size come from torchrun's environment."""

    job: str = Field(description="namespace/name of the TrainingJob, for logs and metadata.")
    task: Task = Field(description="causal-lm, sequence-classification or image-classification.")
    model_path: str = Field(description="Model directory (config.json, weights unless init=config).")
    init: Literal["pretrained", "config"] = Field(default="pretrained", description="Load weights or init fresh.")
    num_labels: int | None = Field(default=None, description="Classes, for sequence-classification.")
    data: TrainerData = Field(description="Training data.")
    hyperparameters: Hyperparameters = Field(description="Optimisation settings.")
    backend: Literal["nccl", "gloo"] = Field(description="torch.distributed backend.")
    strategy: Literal["ddp", "fsdp"] = Field(default="ddp", description="Parallelism strategy.")
    checkpoint_dir: str = Field(description="Directory for checkpoints (shared by all ranks).")
    checkpoint_every_steps: int = Field(default=500, ge=1, description="Save every N steps.")
    checkpoint_keep: int = Field(default=2, ge=1, description="Checkpoints to keep.")
    resume: Literal["latest", "none"] = Field(default="latest", description="Resume policy.")
    output_dir: str = Field(description="Where rank 0 writes the final model.")
    distillation: DistillationSpec | None = Field(default=None, description="Teacher settings.")
    teacher_path: str | None = Field(default=None, description="Resolved teacher model directory.")
    quantization: Literal["none", "dynamic-int8"] = Field(default="none", description="Export quantization.")
    lineage: Lineage | None = Field(default=None, description="What the model is built from, for its metadata.")
    metrics_port: int = Field(default=METRICS_PORT, description="Prometheus and /progress port (0: off).")
    metrics_host: str = Field(default="0.0.0.0", description="Address the metrics port binds.")
    termination_log: str | None = Field(
        default=None, description="Where rank 0 writes its TrainingSummary when it succeeds (None: nowhere)."
    )


# MAX_EVALUATIONS: the evaluations a progress report (and a TrainingJob's status) carries, newest last.


class TrainingSummary(ApiModel):
    """What rank 0 writes to its termination log on success: the final metrics, read into the
    TrainingJob's status (and from there into a TuningStudy's trial result)."""

    step: int = Field(description="Optimizer steps done.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Final metrics, e.g. eval_loss, loss.")
    model: str | None = Field(default=None, description="Where the model was written.")


def _finite(value: Any) -> float | None:
    """A real, finite number, or None: JSON from a process may hold NaN, Infinity, strings or bools."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


class ProgressReport(BaseModel):
    """What a workload reports on GET /progress (trainer rank 0; later tuner and data workloads), read by
    the operator and by the local backend alike. Parsing never fails: an odd field is dropped."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    step: int | None = None
    total_steps: int | None = None
    start_step: int | None = None
    epoch: float | None = None
    loss: float | None = None
    eval_loss: float | None = None
    samples_per_second: float | None = None
    eta_seconds: int | None = None
    checkpoint: str | None = None
    # The latest evaluations, newest last (at most MAX_EVALUATIONS): (step, {metric: value}).
    evaluations: tuple[tuple[int, tuple[tuple[str, float], ...]], ...] = ()

    @classmethod
    def parse(cls, doc: Any) -> ProgressReport:
        """The report in `doc` (a decoded JSON value), keeping only the fields that make sense."""
        if not isinstance(doc, dict):
            return cls()
        values: dict[str, Any] = {}
        for name, info in cls.model_fields.items():
            raw = doc.get(info.alias or name)
            if name == "checkpoint":
                values[name] = raw if isinstance(raw, str) and raw else None
                continue
            if name == "evaluations":
                values[name] = _evaluations(raw)
                continue
            number = _finite(raw)
            if number is not None and info.annotation == int | None:
                values[name] = int(number) if abs(number) < 2**53 and number >= 0 else None
            else:
                values[name] = number
        return cls(**values)

    def to_wire(self) -> dict[str, Any]:
        wire = self.model_dump(by_alias=True, exclude_none=True, mode="json", exclude={"evaluations"})
        if self.evaluations:
            wire["evaluations"] = [{"step": s, "metrics": dict(m)} for s, m in self.evaluations]
        return wire

    def metrics_at(self) -> dict[int, dict[str, float]]:
        """{step: {metric: value}} of the evaluations reported."""
        return {step: dict(metrics) for step, metrics in self.evaluations}


def _evaluations(raw: Any) -> tuple[tuple[int, tuple[tuple[str, float], ...]], ...]:
    """[{"step": 10, "metrics": {"eval_loss": 1.2}}, …] as sorted tuples; odd entries are dropped."""
    if not isinstance(raw, list):
        return ()
    found: dict[int, tuple[tuple[str, float], ...]] = {}
    for entry in raw[-MAX_EVALUATIONS:]:
        step = _finite(entry.get("step")) if isinstance(entry, dict) else None
        metrics = entry.get("metrics") if isinstance(entry, dict) else None
        if step is None or step < 0 or step != int(step) or not isinstance(metrics, dict):
            continue
        kept = tuple(sorted((str(k), v) for k, raw_v in metrics.items() if (v := _finite(raw_v)) is not None))
        if kept:
            found[int(step)] = kept
    return tuple(sorted(found.items()))


class RequestLogConfig(ApiModel):
    """The request log as the server sees it: a directory it may write (a mounted PVC or a local one)."""

    directory: str = Field(description="Directory the log files are appended in (created if missing).")
    sample_rate: float = Field(default=0.1, gt=0, le=1, description="Share of responses recorded.")
    max_bytes_per_day: int = Field(default=1073741824, ge=1, description="Bytes this replica writes per UTC day.")
    max_file_bytes: int = Field(default=67108864, ge=1, description="A file past this size is closed.")
    entities: list[PiiEntity] = Field(default_factory=lambda: list(ALL_PII), description="PII masked.")
    replica: str | None = Field(default=None, description="Name part of this replica's files; default: host-pid.")
    max_queue_bytes: int = Field(
        default=67108864, ge=1, description="Bytes of records waiting for the writer; beyond it they are dropped."
    )


SERVER_CONFIG_ENV = "LEPTON_SERVER_CONFIG"
SERVER_PORT = 8080


class ServerConfig(ApiModel):
    """Everything one model server process needs (`python -m lepton.workloads.server`), as one JSON
    document in $LEPTON_SERVER_CONFIG. The operator and the local backend build it from the
    InferenceService; the server never reads the resource itself."""

    name: str = Field(description="Model name in the routes (/v2/models/{name}, OpenAI 'model').")
    task: ServeTask = Field(description="causal-lm, sequence-classification or embeddings.")
    model_path: str = Field(description="Model directory (save_pretrained layout), read-only.")
    role: Literal["primary", "canary"] = Field(default="primary", description="Told in the X-Lepton-Role header.")
    port: int = Field(default=SERVER_PORT, ge=0, le=65535, description="HTTP port (0: any free port).")
    host: str = Field(default="0.0.0.0", description="Address to bind.")
    protocols: list[Protocol] = Field(default=list(ALL_PROTOCOLS), description="Route families served.")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto: cuda when available.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(default="auto", description="Precision.")
    max_batch_size: int = Field(default=8, ge=1, description="Most requests in one forward pass.")
    max_batch_delay_ms: int = Field(default=5, ge=0, description="Longest wait for a batch to fill.")
    max_batch_tokens: int = Field(default=8192, ge=1, description="Most tokens per batch, padding included.")
    max_input_tokens: int = Field(default=1024, ge=1, description="Longest input in tokens.")
    max_output_tokens: int = Field(default=256, ge=1, description="Most generated tokens per request.")
    request_timeout_seconds: float = Field(default=30, gt=0, description="Deadline of one request.")
    max_queue_length: int = Field(default=256, ge=1, description="Queued requests beyond this get 429.")
    max_request_bytes: int = Field(default=1048576, ge=1024, description="Larger bodies get 413.")
    drain_seconds: float = Field(default=30, ge=0, description="On SIGTERM: time in-flight requests get.")
    metadata: dict[str, str] = Field(
        default_factory=dict, description="Lineage shown on GET /v2/models/{name} (e.g. the source TrainingJob)."
    )
    drift: DriftMonitoring | None = Field(
        default=None, description="Score drift of live inputs against the model's dataStats; none: no scoring."
    )
    request_log: RequestLogConfig | None = Field(
        default=None, description="Record sampled requests and serve POST /v1/feedback; none: neither."
    )


DATA_CONFIG_ENV = "LEPTON_DATA_CONFIG"
DATA_FORMAT_VERSION = "2"  # bump when the same inputs and pipeline would give different output bytes
TERMINATION_LOG = "/dev/termination-log"


class DataInput(ApiModel):
    """One source as the pod sees it: a mounted path, a URL, an S3 location or a hub dataset. Secrets
    arrive only as the names of environment variables set from secretKeyRefs."""

    rules = (exactly_one("path", "url", "s3Uri", "hubId", where="data input"),)

    format: Literal["auto", "jsonl", "csv", "parquet", "text"] = Field(default="auto", description="File format.")
    path: str | None = Field(default=None, description="A local or mounted file or directory.")
    url: str | None = Field(default=None, description="http(s) URL of one file.")
    sha256: str | None = Field(default=None, description="Expected SHA-256 of the downloaded file.")
    headers_env: str | None = Field(default=None, description="Env var with extra headers, one 'Name: value' a line.")
    s3_uri: str | None = Field(default=None, description="s3://bucket/key, or s3://bucket/prefix/.")
    endpoint: str | None = Field(default=None, description="S3-compatible endpoint URL.")
    region: str | None = Field(default=None, description="S3 region.")
    access_key_env: str | None = Field(default=None, description="Env var holding the S3 access key id.")
    secret_key_env: str | None = Field(default=None, description="Env var holding the S3 secret access key.")
    hub_id: str | None = Field(default=None, description="Hub dataset repository id.")
    revision: str | None = Field(default=None, description="Hub revision.")
    files: str = Field(default="*", description="Hub: glob of the files to read.")
    token_env: str | None = Field(default=None, description="Env var holding the hub token.")
    # None rather than False: a source that is no request log renders exactly as before (same Job name).
    request_log: bool | None = Field(default=None, description="path is a request log directory (format ignored).")
    feedback: bool | None = Field(default=None, description="Request log: join feedback labels by response id.")


class DataConfig(ApiModel):
    """Everything one preparation (`python -m lepton.workloads.data`) needs, as one JSON document in
    $LEPTON_DATA_CONFIG. The operator and the local backend build it from the Dataset."""

    dataset: str = Field(description="namespace/name of the Dataset, for logs and the manifest.")
    sources: list[DataInput] = Field(min_length=1, description="Inputs, concatenated in order.")
    text_field: str = Field(default="text", description="Default text column.")
    pipeline: list[Step] = Field(default_factory=list, description="Steps, in order.")
    split: Split | None = Field(default=None, description="Split; none: every row is train.")
    decontaminate: Decontaminate | None = Field(default=None, description="Decontamination.")
    augment: Augment | None = Field(default=None, description="Augmentation of the training split.")
    tokenizer_path: str | None = Field(default=None, description="Directory with tokenizer.json (tokenize).")
    max_length: int = Field(default=512, ge=1, description="Tokenize: most tokens per row.")
    output_dir: str = Field(description="Root of the versions: <output_dir>/versions/<version>/.")
    retain: int = Field(default=3, ge=1, description="Published versions kept.")
    memory_limit_bytes: int | None = Field(
        default=None, ge=1, description="The pod's memory limit: batch sizes are chosen to stay well under it."
    )
    metrics_port: int = Field(default=METRICS_PORT, ge=0, le=65535, description="Prometheus and /progress (0: off).")
    metrics_host: str | None = Field(default=None, description="Address the metrics port binds (none: every one).")
    metrics_linger_seconds: float | None = Field(
        default=None,
        ge=0,
        le=600,
        description="After the end, /metrics stays up until two scrapes read the final "
        "values, at most this long (none: it closes at once); for a Prometheus that scrapes preparation pods.",
    )
    termination_log: str = Field(default=TERMINATION_LOG, description="Where the PreparationSummary is written.")

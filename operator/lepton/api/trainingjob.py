"""TrainingJob: multi-node, multi-GPU torchrun training of a transformers model."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, JsonValue, WithJsonSchema

from lepton.api.base import INT32_MAX, UINT32_MAX, ApiModel, Int, Rule, exactly_one, immutable, local_uri, ordered
from lepton.api.common import (
    CommonStatus,
    DatasetRef,
    EnvVar,
    JobLifecycle,
    Lineage,
    ModelSource,
    PvcPath,
    Resources,
    Scheduling,
    StorageLocation,
)

Task = Literal["causal-lm", "sequence-classification", "image-classification"]
CLASSIFICATION_TASKS = ("sequence-classification", "image-classification")


class ModelSpec(ModelSource):
    """The model to fine-tune: a source (exactly one) and how to initialise it."""

    init: Literal["pretrained", "config"] = Field(
        default="pretrained",
        description="pretrained: load the weights; config: build the architecture from config.json with "
        "fresh weights (training from scratch, tiny test models).",
    )
    num_labels: Int | None = Field(
        default=None, ge=2, le=1000000, description="Number of classes, for sequence-classification."
    )


class DataSpec(ApiModel):
    """Training data: a Dataset, or files (jsonl, csv, parquet) at a URI or in a PVC."""

    rules = (exactly_one("datasetRef", "uri", "pvc", where="data"), local_uri("data"))

    dataset_ref: DatasetRef | None = Field(default=None, description="A Dataset in this namespace.")
    uri: str | None = Field(
        default=None,
        description="File or directory: a local path or file:// URI (s3:// and gs:// are not supported yet).",
        min_length=1,
        max_length=2048,
    )
    pvc: PvcPath | None = Field(default=None, description="File or directory inside a PersistentVolumeClaim.")
    format: Literal["auto", "jsonl", "csv", "parquet"] = Field(
        default="auto", description="File format; auto guesses from the extension."
    )
    text_field: str = Field(default="text", description="Column holding the input text.", min_length=1)
    label_field: str = Field(default="label", description="Column holding the label (classification).")
    image_field: str = Field(
        default="image",
        description="image-classification from Parquet: the column of encoded image bytes (PNG, JPEG). A "
        "directory of class subfolders needs no columns: each subfolder's name is a label.",
        min_length=1,
    )
    validation_fraction: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="Held-out fraction for evaluation when no split exists."
    )


class Hyperparameters(ApiModel):
    """Optimisation settings. Per-device batch size; the global batch is batch × accumulation × world."""

    rules = (
        Rule(
            cel="has(self.epochs) || has(self.maxSteps)",
            message="hyperparameters: set epochs or maxSteps so the job knows when to stop",
            check=lambda h: h.epochs is not None or h.max_steps is not None,
        ),
    )

    learning_rate: float = Field(default=5e-5, gt=0, le=1, description="Peak learning rate.")
    batch_size: Int = Field(default=8, ge=1, le=65536, description="Samples per device per step.")
    gradient_accumulation_steps: Int = Field(default=1, ge=1, le=4096, description="Micro-steps per update.")
    epochs: float | None = Field(default=None, gt=0, le=100000, description="Passes over the data.")
    max_steps: Int | None = Field(
        default=None, ge=1, le=INT32_MAX, description="Optimizer steps; overrides epochs if set."
    )
    warmup_steps: Int = Field(default=0, ge=0, le=INT32_MAX, description="Linear warm-up steps.")
    weight_decay: float = Field(default=0.0, ge=0, le=1000, description="AdamW weight decay.")
    lr_scheduler: Literal["constant", "linear", "cosine"] = Field(default="linear", description="LR schedule.")
    max_grad_norm: float = Field(default=1.0, ge=0, le=1e9, description="Gradient clipping norm; 0 disables.")
    max_seq_length: Int = Field(default=512, ge=8, le=131072, description="Tokens per sample after truncation.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto", description="auto: bf16 on GPUs that support it, fp32 on CPU."
    )
    seed: Int = Field(default=42, ge=0, le=UINT32_MAX, description="Seed for data order and initialisation.")
    eval_every_steps: Int | None = Field(default=None, ge=1, le=INT32_MAX, description="Evaluate every N steps.")


class CheckpointSpec(ApiModel):
    """Periodic checkpoints, kept across gang restarts, suspension and resumption."""

    location: StorageLocation | None = Field(
        default=None, description="Where checkpoints go; default: under the output location."
    )
    every_steps: Int = Field(default=500, ge=1, le=INT32_MAX, description="Save every N optimizer steps.")
    keep: Int = Field(default=2, ge=1, le=100, description="How many recent checkpoints to keep.")
    resume: Literal["latest", "none"] = Field(
        default="latest", description="latest: continue from the newest checkpoint on (re)start."
    )


class DistillationSpec(ApiModel):
    """Knowledge distillation from a teacher model."""

    teacher: ModelSource = Field(description="The teacher model.")
    temperature: float = Field(default=2.0, gt=0, le=100, description="Softmax temperature.")
    alpha: float = Field(default=0.5, ge=0, le=1, description="Weight of the distillation loss (1 - alpha: labels).")


class ExportSpec(ApiModel):
    quantization: Literal["none", "dynamic-int8"] = Field(
        default="none", description="Post-training quantization of the exported model."
    )


# One hyperparameter of a program: any JSON value (numbers, strings, booleans, lists, objects); the
# apiserver keeps it as written and the program reads them all as one JSON object.
AnyJson = Annotated[JsonValue, WithJsonSchema({"x-kubernetes-preserve-unknown-fields": True})]


class CustomTrainer(ApiModel):
    """Your own program instead of the built-in trainer: a command in your image, started on every pod
    under torchrun (one process per GPU), with the job's checkpoint, output and data locations and its
    hyperparameters in LEPTON_* environment variables (see lepton.sdk)."""

    image: str = Field(description="Image with your code, Python and PyTorch.", min_length=1, max_length=1024)
    command: list[str] = Field(
        min_length=1,
        max_length=64,
        description="What each process runs, e.g. [python, train.py]. Lepton starts it under torchrun; a "
        "command that starts torchrun itself (torchrun, python -m torch.distributed.run) is run as it is, "
        "with the rendezvous in torchrun's PET_* environment.",
    )
    args: list[str] = Field(default_factory=list, max_length=256, description="Arguments after the command.")
    working_dir: str | None = Field(
        default=None, max_length=4096, description="Working directory in the container; default: the image's."
    )
    hyperparameters: dict[str, AnyJson] = Field(
        default_factory=dict,
        max_length=256,
        description="Settings for your program, given to it as one JSON object in LEPTON_HYPERPARAMETERS "
        "(lepton.sdk.hyperparameters()); a TuningStudy sets its parameters here.",
    )


class TrainingJobSpec(JobLifecycle):
    """A distributed fine-tuning run: `nodes` pods, each running torchrun with one process per GPU."""

    rules = (
        Rule(
            cel="has(self.model) || has(self.trainer)",
            message="set model, data and hyperparameters for the built-in trainer, or trainer to run your own command",
            check=lambda s: s.model is not None or s.trainer is not None,
        ),
        Rule(
            cel="!has(self.model) || !has(self.trainer)",
            message="model is for the built-in trainer and trainer runs your own command: set one or the other",
            check=lambda s: s.model is None or s.trainer is None,
        ),
        Rule(
            cel="has(self.trainer) || (has(self.data) && has(self.hyperparameters))",
            message="the built-in trainer needs data and hyperparameters",
            check=lambda s: s.trainer is not None or (s.data is not None and s.hyperparameters is not None),
        ),
        Rule(
            cel="!has(self.trainer) || (!has(self.hyperparameters) && !has(self.distillation))",
            message="hyperparameters and distillation are for the built-in trainer: give your program its "
            "settings in trainer.hyperparameters",
            check=lambda s: s.trainer is None or (s.hyperparameters is None and s.distillation is None),
        ),
        Rule(
            cel="!has(self.trainer) || !has(self.image)",
            message="your program's image goes in trainer.image (spec.image replaces the built-in trainer's)",
            check=lambda s: s.trainer is None or s.image is None,
        ),
        Rule(
            cel="!has(self.trainer) || (self.strategy == 'ddp' && (!has(self.export) || "
            "self.export.quantization == 'none'))",
            message="strategy and export are for the built-in trainer: your program chooses its own parallelism "
            "and writes its own model",
            check=lambda s: s.trainer is None or (s.strategy == "ddp" and s.export.quantization == "none"),
        ),
        Rule(
            cel="has(self.nodes) || has(self.minNodes) || has(self.maxNodes)",
            message="set nodes, or minNodes and maxNodes for an elastic job",
            check=lambda s: s.nodes is not None or s.min_nodes is not None or s.max_nodes is not None,
        ),
        Rule(
            cel="!has(self.nodes) || (!has(self.minNodes) && !has(self.maxNodes))",
            message="nodes fixes the size; minNodes and maxNodes make the job elastic: set one or the other",
            check=lambda s: s.nodes is None or (s.min_nodes is None and s.max_nodes is None),
        ),
        Rule(
            cel="has(self.minNodes) == has(self.maxNodes)",
            message="minNodes and maxNodes go together: set both for an elastic job",
            check=lambda s: (s.min_nodes is None) == (s.max_nodes is None),
        ),
        ordered("minNodes", "maxNodes", where="elastic job"),
        Rule(
            cel="self.backend != 'nccl' || self.gpusPerNode > 0",
            message="backend nccl needs GPUs: set gpusPerNode > 0 or use backend gloo",
            check=lambda s: s.backend != "nccl" or s.gpus_per_node > 0,
        ),
        Rule(
            cel="!has(self.model) || !(self.task in ['sequence-classification', 'image-classification']) || "
            "has(self.model.numLabels)",
            message="tasks sequence-classification and image-classification need model.numLabels",
            check=lambda s: s.model is None or s.task not in CLASSIFICATION_TASKS or s.model.num_labels is not None,
        ),
        immutable("task", "task"),
        immutable("model", "model"),
        immutable("trainer", "trainer"),
        immutable("gpusPerNode", "gpusPerNode"),
    )

    image: str | None = Field(
        default=None,
        description="Image of the built-in trainer; default: the operator's. Your own program's image goes in "
        "trainer.image.",
        max_length=1024,
    )
    task: Task = Field(
        default="causal-lm",
        description="causal-lm, sequence-classification (text) or image-classification (a vision model, e.g. ViT).",
    )
    model: ModelSpec | None = Field(
        default=None, description="The built-in trainer: the model to train and where it comes from."
    )
    trainer: CustomTrainer | None = Field(
        default=None, description="Your own program instead of the built-in trainer (model, hyperparameters)."
    )
    data: DataSpec | None = Field(
        default=None,
        description="The training data: required by the built-in trainer; your program finds it at LEPTON_DATA_PATH.",
    )
    hyperparameters: Hyperparameters | None = Field(
        default=None, description="The built-in trainer's optimisation settings."
    )
    nodes: Int | None = Field(default=None, ge=1, le=1024, description="Pods (machines); fixed size.")
    min_nodes: Int | None = Field(default=None, ge=1, le=1024, description="Elastic: fewest nodes to run with.")
    max_nodes: Int | None = Field(default=None, ge=1, le=1024, description="Elastic: most nodes to use.")
    gpus_per_node: Int = Field(default=0, ge=0, le=64, description="nvidia.com/gpu per pod; 0 trains on CPU.")
    procs_per_node: Int | None = Field(
        default=None, ge=1, le=256, description="Processes per pod; default: gpusPerNode, or 1 on CPU."
    )
    backend: Literal["auto", "nccl", "gloo"] = Field(
        default="auto", description="torch.distributed backend; auto: nccl with GPUs, gloo without."
    )
    strategy: Literal["ddp", "fsdp"] = Field(
        default="ddp",
        description="ddp: every process holds the whole model (DistributedDataParallel); fsdp: parameters, "
        "gradients and optimizer state are sharded over all processes (FSDP), for models too big for one GPU. "
        "A checkpoint resumes only under the strategy that wrote it.",
    )
    resources: Resources = Field(default_factory=Resources, description="CPU/memory per pod.")
    env: list[EnvVar] = Field(
        default_factory=list, max_length=256, description="Extra env; overrides NCCL/torch defaults."
    )
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec, description="Checkpoint policy.")
    output: StorageLocation = Field(description="Where the final model (save_pretrained) is written.")
    distillation: DistillationSpec | None = Field(default=None, description="Distil from a teacher.")
    export: ExportSpec = Field(default_factory=ExportSpec, description="Post-processing of the final model.")
    scheduling: Scheduling = Field(default_factory=Scheduling, description="Queue, priority and placement.")

    def node_counts(self) -> tuple[int, int]:
        """(pods to create, pods that must run together): an elastic job starts max and needs min."""
        if self.nodes is not None:
            return self.nodes, self.nodes
        if self.min_nodes is None or self.max_nodes is None:
            raise ValueError("set nodes, or minNodes and maxNodes for an elastic job")
        return self.max_nodes, self.min_nodes


def pod_name(job: str, attempt: int, index: int) -> str:
    """Pods are named per gang attempt, so a new gang never waits for the old one's names."""
    return f"{job}-{attempt}-{index}"


class Progress(ApiModel):
    """Training progress as last reported by rank 0."""

    step: int | None = Field(default=None, description="Optimizer steps done.")
    total_steps: int | None = Field(default=None, description="Optimizer steps planned.")
    percent: int | None = Field(default=None, description="step / totalSteps, 0-100.")
    epoch: float | None = Field(default=None, description="Current (fractional) epoch.")
    loss: str | None = Field(default=None, description="Latest training loss (decimal string).")
    samples_per_second: str | None = Field(default=None, description="Throughput across all ranks.")
    eta_seconds: int | None = Field(default=None, description="Estimated seconds to completion.")


class Evaluation(ApiModel):
    """One evaluation as rank 0 reported it: what a TuningStudy's pruner reads."""

    step: int = Field(description="Optimizer step of the evaluation.")
    metrics: dict[str, str] = Field(default_factory=dict, description="Metric -> value (decimal string).")


class Failure(ApiModel):
    """Why one gang attempt ended, as the pod reported it."""

    attempt: int = Field(description="Gang attempt (0 for the first).")
    pod: str = Field(description="The pod that failed first.")
    pod_uid: str | None = Field(
        default=None, alias="podUID", description="UID of that pod (a replacement keeps the name)."
    )
    elastic: bool = Field(
        default=False, description="True when the job went on without the pod (elastic) instead of restarting."
    )
    reason: str = Field(description="OOMKilled, Error, Unschedulable, ImagePullBackOff, …")
    exit_code: int | None = Field(default=None, description="Container exit code, when it ran.")
    message: str = Field(default="", description="Details from the pod or the scheduler.")
    time: str = Field(description="When the failure was observed.")


class TrainingJobStatus(CommonStatus):
    ready: str | None = Field(
        default=None, description="Pods running / pods of the gang (maxNodes for an elastic job), e.g. '2/2'."
    )
    restarts: int = Field(
        default=0,
        description="Recoveries from failures so far, counted against backoffLimit: gang restarts, and pods an "
        "elastic job replaced while it went on running.",
    )
    attempt: int = Field(
        default=0, description="Current gang: pod names and the rendezvous id change with each (restart or resume)."
    )
    rendezvous_id: str | None = Field(default=None, description="torchrun rendezvous id of the current gang.")
    start_time: str | None = Field(default=None, description="When all pods first ran.")
    completion_time: str | None = Field(default=None, description="When the job succeeded or failed.")
    progress: Progress | None = Field(default=None, description="Training progress.")
    latest_checkpoint: str | None = Field(default=None, description="Location of the newest checkpoint.")
    output_model: str | None = Field(default=None, description="Location of the final model once written.")
    dataset_version: str | None = Field(
        default=None, description="Version of the referenced Dataset the job trains on, recorded when it starts."
    )
    lineage: Lineage | None = Field(
        default=None,
        description="What the model is built from: the data version, the study and trial its starting model came "
        "from, and that model; recorded once its references resolve.",
    )
    evaluations: list[Evaluation] = Field(
        default_factory=list, max_length=20, description="The latest evaluations (evalEverySteps), oldest first."
    )
    metrics: dict[str, str] = Field(
        default_factory=dict, description="Final metrics rank 0 reported when it succeeded (e.g. eval_loss)."
    )
    failures: list[Failure] = Field(
        default_factory=list, max_length=20, description="Recent rank failures, oldest first (the first is kept)."
    )
    next_attempt_time: str | None = Field(
        default=None, description="When the next gang attempt starts (exponential backoff after a failure)."
    )
    active_seconds: int | None = Field(
        default=None, description="Seconds the job has run, suspended time excluded (for the deadline)."
    )

"""The contract between the operator and the trainer workload: one JSON document, validated on both
sides. The trainer never reads the TrainingJob itself; the operator resolves references and paths."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lepton.api.base import ApiModel
from lepton.api.trainingjob import DistillationSpec, Hyperparameters, Task

TRAINER_CONFIG_ENV = "LEPTON_TRAINER_CONFIG"
METRICS_PORT = 9090
RENDEZVOUS_PORT = 29500


class TrainerData(ApiModel):
    path: str = Field(description="File or directory of the training data, as seen by the pod.")
    format: Literal["auto", "jsonl", "csv", "parquet"] = Field(default="auto", description="File format.")
    text_field: str = Field(default="text", description="Column with the text.")
    label_field: str = Field(default="label", description="Column with the label.")
    validation_fraction: float = Field(default=0.0, ge=0, lt=1, description="Held-out fraction.")


class TrainerConfig(ApiModel):
    """Everything one trainer process needs; rank and world size come from torchrun's environment."""

    job: str = Field(description="namespace/name of the TrainingJob, for logs and metadata.")
    task: Task = Field(description="causal-lm or sequence-classification.")
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
    metrics_port: int = Field(default=METRICS_PORT, description="Prometheus and /progress port (0: off).")

"""The environment a TrainingJob gives a program it runs (custom mode: `spec.trainer.command`).

These names are the contract between the operator (or the local backend) and user code; `lepton.sdk`
reads them, and code that does not use the SDK can read them directly. Standard library only: the SDK
must import in any image that has Python.
"""

from __future__ import annotations

JOB = "LEPTON_JOB"  # namespace/name of the TrainingJob
CHECKPOINT_DIR = "LEPTON_CHECKPOINT_DIR"  # write checkpoints here; a restarted gang resumes from the newest
CHECKPOINT_EVERY_STEPS = "LEPTON_CHECKPOINT_EVERY_STEPS"  # spec.checkpoint.everySteps
CHECKPOINT_KEEP = "LEPTON_CHECKPOINT_KEEP"  # spec.checkpoint.keep: complete checkpoints to keep
RESUME = "LEPTON_RESUME"  # spec.checkpoint.resume: "latest" or "none"
OUTPUT_DIR = "LEPTON_OUTPUT_DIR"  # where the final model (or any result) goes
DATA_PATH = "LEPTON_DATA_PATH"  # file or directory of the training data (spec.data), when set
DATASET = "LEPTON_DATASET"  # the Dataset's name, when spec.data.datasetRef is set
DATASET_VERSION = "LEPTON_DATASET_VERSION"  # the Dataset's version that DATA_PATH holds
HYPERPARAMETERS = "LEPTON_HYPERPARAMETERS"  # spec.trainer.hyperparameters as a JSON object
METRICS_PORT = "LEPTON_METRICS_PORT"  # /progress and /metrics: this port + LOCAL_RANK (0: off)
METRICS_HOST = "LEPTON_METRICS_HOST"  # address the metrics port binds (default: every address)
PROGRESS_TOKEN = "LEPTON_PROGRESS_TOKEN"  # /progress answers only `Authorization: Bearer <token>` when set
TERMINATION_LOG = "LEPTON_TERMINATION_LOG"  # rank 0 writes its final summary (TrainingSummary JSON) here

ALL = (
    JOB, CHECKPOINT_DIR, CHECKPOINT_EVERY_STEPS, CHECKPOINT_KEEP, RESUME, OUTPUT_DIR, DATA_PATH, DATASET,
    DATASET_VERSION, HYPERPARAMETERS, METRICS_PORT, METRICS_HOST, PROGRESS_TOKEN, TERMINATION_LOG,
)  # fmt: skip

# Set by torchrun in every process (not by Lepton); outside torchrun the SDK assumes one process.
RANK = "RANK"  # global rank: 0 writes checkpoints, the model and the summary
WORLD_SIZE = "WORLD_SIZE"  # processes in the job
LOCAL_RANK = "LOCAL_RANK"  # rank on this node (the GPU index; the metrics port is METRICS_PORT + this)

"""Names every layer shares: label and annotation keys, and the phases shown in `kubectl get`.

No other module spells a `lepton.ai/...` key or a phase as a string literal: a typo there would be a
silent selector that matches nothing.
"""

from __future__ import annotations

from enum import StrEnum


class Label:
    """Label and annotation keys on the children the operator creates."""

    KIND = "lepton.ai/kind"  # the owning resource's kind
    NAME = "lepton.ai/name"  # the owning resource's name
    ATTEMPT = "lepton.ai/attempt"  # gang attempt of a training pod
    NODE_INDEX = "lepton.ai/node-index"  # rank of a training pod's node
    RENDEZVOUS_ID = "lepton.ai/rendezvous-id"  # annotation: torchrun rendezvous id
    ROLE = "lepton.ai/role"  # a serving pod's role: primary or canary
    REFRESH = "lepton.ai/refresh"  # annotation on a Dataset's preparation pods: spec.refresh
    TRIAL = "lepton.ai/trial"  # a trial TrainingJob's Optuna trial number
    PARAMETERS = "lepton.ai/parameters"  # annotation: a trial's parameters as JSON
    RETRY = "lepton.ai/retry"  # annotation: a trial's run after infrastructure failures (0: the first)
    DATASET_VERSION = "lepton.ai/dataset-version"  # annotation: the Dataset version a trial trains on
    FAKE_OUTCOME = "lepton.ai/fake-outcome"  # kwok test stages only (not a GPU, not a runtime)
    APP_NAME = "app.kubernetes.io/name"
    APP_INSTANCE = "app.kubernetes.io/instance"
    APP_COMPONENT = "app.kubernetes.io/component"
    APP_MANAGED_BY = "app.kubernetes.io/managed-by"


MANAGER = "lepton-operator"  # app.kubernetes.io/managed-by, and the server-side apply field manager


class Phase(StrEnum):
    """`status.phase`: a one-word summary for humans. Code reads conditions, not phases."""

    PENDING = "Pending"
    STARTING = "Starting"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    SCALED_TO_ZERO = "ScaledToZero"  # InferenceService: no replica; the first request scales it up
    PREPARING = "Preparing"  # Dataset: a preparation Job runs
    READY = "Ready"  # Dataset: a version is published
    INVALID = "Invalid"
    STALLED = "Stalled"


TERMINAL_PHASES = (Phase.SUCCEEDED, Phase.FAILED)

"""Status conditions in the kstatus shape, their type and reason constants, and pure helpers.

kstatus (sigs.k8s.io/cli-utils) reads `Reconciling` and `Stalled` as abnormal-true conditions and
`Ready` as the summary; job-like kinds add `Succeeded` / `Failed`. `lastTransitionTime` changes only
when a condition's status flips, so watchers and `kubectl wait` see real transitions, not churn.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from pydantic import Field

from lepton.api.base import ApiModel


class ConditionType(StrEnum):
    READY = "Ready"
    RECONCILING = "Reconciling"
    STALLED = "Stalled"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    REFERENCES_RESOLVED = "ReferencesResolved"
    MODEL_LOADED = "ModelLoaded"  # InferenceService: a primary replica has loaded and warmed its model
    CANARY_READY = "CanaryReady"  # InferenceService: the canary serves its share
    MONITORED = "Monitored"  # InferenceService with serviceMonitor: a ServiceMonitor scrapes it
    SCALED_TO_ZERO = "ScaledToZero"  # InferenceService with minReplicas 0: no replica; the activator holds requests
    DRIFT_DETECTED = "DriftDetected"  # InferenceService with drift: live inputs drifted from the training data


class Reason(StrEnum):
    """Machine-readable reasons (CamelCase, as Kubernetes expects)."""

    # Spec problems the user must fix; the resource stalls until they do.
    INVALID_SPEC = "InvalidSpec"
    # Lifecycle
    CREATED = "Created"
    PENDING = "Pending"
    PROGRESSING = "Progressing"
    AWAITING_CONTROLLER = "AwaitingController"
    RECONCILED = "Reconciled"
    REFERENCE_NOT_FOUND = "ReferenceNotFound"
    REFERENCE_NOT_READY = "ReferenceNotReady"
    REFERENCES_READY = "ReferencesReady"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    NODE_LOST = "NodeLost"  # an elastic job goes on with fewer nodes while the lost one is replaced
    # Copied from pods and the scheduler
    UNSCHEDULABLE = "Unschedulable"
    IMAGE_PULL_BACKOFF = "ImagePullBackOff"
    CRASH_LOOP_BACKOFF = "CrashLoopBackOff"
    OOM_KILLED = "OOMKilled"
    ERROR = "Error"
    # TrainingJob lifecycle words
    RUNNING = "Running"
    STARTING = "Starting"
    RESTARTING = "Restarting"
    RESUMED = "Resumed"
    STARTUP_DEADLINE_EXCEEDED = "StartupDeadlineExceeded"
    # InferenceService lifecycle words
    MODEL_LOADING = "ModelLoading"
    MODEL_LOADED = "ModelLoaded"
    MODEL_LOAD_FAILED = "ModelLoadFailed"
    NO_REPLICAS = "NoReplicas"
    ROLLING_OUT = "RollingOut"
    PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
    REPLICA_FAILURE = "ReplicaFailure"
    SERVING = "Serving"
    SERVICE_MONITOR_CREATED = "ServiceMonitorCreated"
    IDLE = "Idle"  # scaled to zero after idleSeconds without a request
    ACTIVATING = "Activating"  # a held request scaled it up; the activator routes until a replica is ready
    ACTIVATOR_UNAVAILABLE = "ActivatorUnavailable"  # no activator endpoints: it stays up rather than drop requests
    METRICS_UNAVAILABLE = "MetricsUnavailable"  # a replica's request metrics could not be read: no idle decision
    API_NOT_SERVED = "APINotServed"
    # InferenceService drift words (DriftDetected never affects Ready: the service keeps serving)
    DRIFT_DETECTED = "DriftDetected"  # a feature's score is past spec.drift.threshold
    NO_DRIFT = "NoDrift"
    NO_REFERENCE = "NoReference"  # the model carries no dataStats (trained elsewhere): nothing to compare with
    WINDOW_FILLING = "WindowFilling"  # fewer than spec.drift.minInputs inputs seen yet
    # Dataset lifecycle words (a failed preparation's reason is the workload's: SourceUnreachable, BadFormat…)
    PREPARING = "Preparing"
    PREPARED = "Prepared"
    VERSION_REUSED = "VersionReused"
    # TuningStudy lifecycle words
    TUNER_STARTING = "TunerStarting"
    TUNER_UNREACHABLE = "TunerUnreachable"
    TRIALS_RUNNING = "TrialsRunning"
    STOPPING_TRIALS = "StoppingTrials"
    MAX_TRIALS_REACHED = "MaxTrialsReached"
    GOAL_REACHED = "GoalReached"
    MAX_DURATION_REACHED = "MaxDurationReached"
    TOO_MANY_FAILED_TRIALS = "TooManyFailedTrials"
    # The operator cannot go on without the user's help
    NAME_CONFLICT = "NameConflict"  # a child's name is taken by an object the resource does not own
    CHILD_REJECTED = "ChildRejected"  # the apiserver refuses a child the spec renders (its message follows)
    RECONCILE_ERROR = "ReconcileError"  # an error that persisted over several retries


class EventReason(StrEnum):
    """Reasons of the Kubernetes Events the operator posts (`kubectl describe` lists them)."""

    SCHEDULED = "Scheduled"
    STARTED = "Started"
    RANK_FAILED = "RankFailed"
    GANG_RESTARTED = "GangRestarted"
    NODE_REPLACED = "NodeReplaced"
    CHECKPOINT_WRITTEN = "CheckpointWritten"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    RESUMED = "Resumed"
    TTL_DELETED = "TTLDeleted"
    INVALID_SPEC = "InvalidSpec"
    STALLED = "Stalled"
    MODEL_LOADED = "ModelLoaded"
    MODEL_LOAD_FAILED = "ModelLoadFailed"
    SERVING = "Serving"
    TRAFFIC_SHIFTED = "TrafficShifted"
    SCALED_TO_ZERO = "ScaledToZero"
    ACTIVATED = "Activated"
    PREPARING = "Preparing"
    PREPARED = "Prepared"
    PREPARATION_FAILED = "PreparationFailed"
    TRIAL_STARTED = "TrialStarted"
    TRIAL_PRUNED = "TrialPruned"
    TRIAL_RETRIED = "TrialRetried"


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """One observation of the resource's state, as in metav1.Condition."""

    type: str = Field(description="Condition type, e.g. Ready, Reconciling, Stalled, Succeeded, Failed.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(description="One CamelCase word saying why the condition has this status.")
    message: str = Field(default="", description="Human-readable details, including what to do next.")
    last_transition_time: str = Field(
        description="RFC 3339 time at which status last changed (not when the message changed)."
    )
    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation this condition was computed from."
    )


def now_rfc3339() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str = "",
    *,
    observed_generation: int | None = None,
    now: str | None = None,
) -> list[Condition]:
    """Return a new list with `type_` set; keeps lastTransitionTime unless the status flips.

    Pure: the input list is not modified. Order is stable (existing types keep their place,
    new types are appended), so an unchanged status compares equal and is not patched.
    """
    old = get_condition(conditions, type_)
    flipped = old is None or old.status != status
    new = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=(now or now_rfc3339()) if flipped or old is None else old.last_transition_time,
        observed_generation=observed_generation,
    )
    out = [new if c.type == type_ else c for c in conditions]
    if old is None:
        out.append(new)
    return out


def get_condition(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def is_true(conditions: list[Condition], type_: str) -> bool:
    cond = get_condition(conditions, type_)
    return cond is not None and cond.status == "True"

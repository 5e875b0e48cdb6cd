"""Lifecycle measurements read off a status transition, for the operator's Prometheus metrics.

Pure, like the Events beside them (events.py): given the status before and after one reconcile pass,
what happened and how long it took. Durations are counted from times the apiserver and status hold
(creation, condition transitions), so an operator restart neither loses nor repeats one: a transition
is seen by exactly the pass that writes it. Labels stay bounded: kind, reason, outcome, never a name.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from lepton.api.common import CommonStatus
from lepton.api.conditions import ConditionType, get_condition
from lepton.api.constants import Phase
from lepton.api.dataset import DatasetStatus
from lepton.api.trainingjob import TrainingJobStatus
from lepton.status.clock import parse_time

# Families (the controller maps each to a histogram or a counter).
STARTUP = "startup"  # TrainingJob: creation -> all pods of its first gang running
QUEUE_WAIT = "queue_wait"  # TrainingJob: creation -> its first gang scheduled (admitted and placed)
READY = "ready"  # InferenceService: not ready (since creation, or since it last lost Ready) -> Ready
PREPARATION = "preparation"  # Dataset: a preparation started -> published or failed
RESTART = "restart"  # TrainingJob: one rank failure (a gang restart or an elastic replacement)


@dataclass(frozen=True)
class Observation:
    family: str
    value: float = 1.0
    reason: str = ""  # RESTART: the failure's reason (OOMKilled, Error, Evicted...)
    outcome: str = ""  # PREPARATION: succeeded or failed


def observations(kind: str, created: str | None, old: CommonStatus, new: CommonStatus,
                 now: datetime) -> list[Observation]:  # fmt: skip
    """What the transition old -> new tells, for one resource created at `created` (RFC 3339)."""
    born = _time(created)
    if isinstance(old, TrainingJobStatus) and isinstance(new, TrainingJobStatus):
        return _trainingjob(born, old, new, now)
    if isinstance(old, DatasetStatus) and isinstance(new, DatasetStatus):
        return _dataset(old, new, now)
    if kind == "InferenceService":
        return _ready(born, old, new, now)
    return []


def _trainingjob(born: datetime | None, old: TrainingJobStatus, new: TrainingJobStatus,
                 now: datetime) -> list[Observation]:  # fmt: skip
    out: list[Observation] = []
    seen = {(f.attempt, f.pod, f.pod_uid, f.time) for f in old.failures}
    out += [Observation(RESTART, reason=f.reason) for f in new.failures
            if (f.attempt, f.pod, f.pod_uid, f.time) not in seen]  # fmt: skip
    first_gang = new.attempt == 0 and new.restarts == 0
    if born is None or not first_gang:
        return out
    waiting = (None, Phase.PENDING)
    if old.phase in waiting and new.phase in (Phase.STARTING, Phase.RUNNING):
        out.append(Observation(QUEUE_WAIT, _since(born, now)))
    if old.phase in (*waiting, Phase.STARTING) and new.phase == Phase.RUNNING:
        out.append(Observation(STARTUP, _since(born, now)))
    return out


def _dataset(old: DatasetStatus, new: DatasetStatus, now: datetime) -> list[Observation]:
    if old.phase != Phase.PREPARING or new.phase == Phase.PREPARING:
        return []
    outcome = {Phase.READY.value: "succeeded", Phase.FAILED.value: "failed"}.get(str(new.phase))
    began = get_condition(old.conditions, ConditionType.RECONCILING)
    start = _time(began.last_transition_time) if began is not None else None
    if outcome is None or start is None:
        return []
    return [Observation(PREPARATION, _since(start, now), outcome=outcome)]


def _ready(born: datetime | None, old: CommonStatus, new: CommonStatus, now: datetime) -> list[Observation]:
    before = get_condition(old.conditions, ConditionType.READY)
    after = get_condition(new.conditions, ConditionType.READY)
    if after is None or after.status != "True" or (before is not None and before.status == "True"):
        return []
    start = _time(before.last_transition_time) if before is not None else born
    return [Observation(READY, _since(start, now))] if start is not None else []


def _since(start: datetime, now: datetime) -> float:
    return max(0.0, (now - start).total_seconds())


def _time(value: str | None) -> datetime | None:
    try:
        return parse_time(value)
    except ValueError:
        return None

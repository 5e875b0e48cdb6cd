"""Events worth telling a user, read off the difference between the old and the new status (pure).

Deriving events from status transitions, not from code paths, means a restarted operator tells each
transition once (status is the memory), and every event is table-testable.
"""

from __future__ import annotations

from lepton.api.common import CommonStatus
from lepton.api.conditions import ConditionType, EventReason, Reason, get_condition, is_true
from lepton.api.constants import Phase
from lepton.api.dataset import DatasetStatus
from lepton.api.inferenceservice import InferenceServiceStatus
from lepton.api.trainingjob import TrainingJobStatus
from lepton.api.tuningstudy import Trials, TuningStudyStatus
from lepton.status.plan import EventNote


def _message(status: CommonStatus, type_: str) -> str:
    cond = get_condition(status.conditions, type_)
    return cond.message if cond is not None else ""


def common_events(old: CommonStatus, new: CommonStatus) -> list[EventNote]:
    """For every kind: a spec turned invalid, or the resource stalled (with the cause in words)."""
    if new.phase == Phase.INVALID and old.phase != Phase.INVALID:
        return [EventNote(EventReason.INVALID_SPEC, _message(new, ConditionType.STALLED), "Warning")]
    if is_true(new.conditions, ConditionType.STALLED) and not is_true(old.conditions, ConditionType.STALLED):
        cond = get_condition(new.conditions, ConditionType.STALLED)
        reason = cond.reason if cond is not None else ""
        return [EventNote(EventReason.STALLED, f"{reason}: {_message(new, ConditionType.STALLED)}", "Warning")]
    return []


def trainingjob_events(old: TrainingJobStatus, new: TrainingJobStatus) -> list[EventNote]:
    notes = [n for n in common_events(old, new) if new.phase != Phase.FAILED]  # a failure is told once, below
    seen = {(f.attempt, f.pod, f.pod_uid, f.time) for f in old.failures}
    for f in new.failures:
        if (f.attempt, f.pod, f.pod_uid, f.time) in seen:
            continue
        code = f" (exit code {f.exit_code})" if f.exit_code is not None else ""
        detail = f": {f.message}" if f.message and f.message != f"exit code {f.exit_code}" else ""
        notes.append(EventNote(EventReason.RANK_FAILED, f"{f.pod}: {f.reason}{code}{detail}", "Warning"))
        if f.elastic:
            notes.append(EventNote(EventReason.NODE_REPLACED, _message(new, ConditionType.READY)))
    if new.restarts > old.restarts and new.phase == Phase.RESTARTING:
        notes.append(EventNote(EventReason.GANG_RESTARTED, _message(new, ConditionType.READY), "Warning"))
    if new.latest_checkpoint and new.latest_checkpoint != old.latest_checkpoint:
        step = f" at step {new.progress.step}" if new.progress and new.progress.step is not None else ""
        notes.append(EventNote(EventReason.CHECKPOINT_WRITTEN, f"{new.latest_checkpoint}{step}"))
    was_suspended = is_true(old.conditions, ConditionType.SUSPENDED)
    if was_suspended and not is_true(new.conditions, ConditionType.SUSPENDED):
        notes.append(EventNote(EventReason.RESUMED, f"New gang (attempt {new.attempt}) from the latest checkpoint"))
    if new.phase == old.phase:
        return notes
    if new.phase == Phase.STARTING and old.phase is not None:
        # Told when a gang that was seen waiting gets its nodes; one scheduled at once is told by Started.
        notes.append(EventNote(EventReason.SCHEDULED, f"Gang attempt {new.attempt} scheduled; pods starting"))
    elif new.phase == Phase.RUNNING:
        notes.append(EventNote(EventReason.STARTED, f"{_message(new, ConditionType.READY)} (attempt {new.attempt})"))
    elif new.phase == Phase.SUCCEEDED:
        notes.append(EventNote(EventReason.SUCCEEDED, f"Training finished; model in {new.output_model}"))
    elif new.phase == Phase.FAILED:
        notes.append(EventNote(EventReason.FAILED, _message(new, ConditionType.FAILED), "Warning"))
    elif new.phase == Phase.SUSPENDED:
        notes.append(EventNote(EventReason.SUSPENDED, "Pods deleted; checkpoints kept"))
    return notes


def inferenceservice_events(old: InferenceServiceStatus, new: InferenceServiceStatus) -> list[EventNote]:
    notes = common_events(old, new)
    loaded = get_condition(new.conditions, ConditionType.MODEL_LOADED)
    was = get_condition(old.conditions, ConditionType.MODEL_LOADED)
    if loaded is not None and (was is None or (was.status, was.reason) != (loaded.status, loaded.reason)):
        if loaded.status == "True":
            notes.append(EventNote(EventReason.MODEL_LOADED, loaded.message))
        elif loaded.reason == Reason.MODEL_LOAD_FAILED:
            notes.append(EventNote(EventReason.MODEL_LOAD_FAILED, loaded.message, "Warning"))
    if is_true(new.conditions, ConditionType.READY) and not is_true(old.conditions, ConditionType.READY):
        notes.append(EventNote(EventReason.SERVING, _message(new, ConditionType.READY)))
    before = old.traffic.canary_percent if old.traffic else None
    after = new.traffic.canary_percent if new.traffic else None
    if after is not None and after != before and new.traffic is not None:
        notes.append(EventNote(EventReason.TRAFFIC_SHIFTED, f"canary {after}% ({new.traffic.mode} split)"))
    if new.phase == Phase.SUSPENDED and old.phase != Phase.SUSPENDED:
        notes.append(EventNote(EventReason.SUSPENDED, "Replicas scaled to zero; the service is kept"))
    elif old.phase == Phase.SUSPENDED and new.phase != Phase.SUSPENDED:
        notes.append(EventNote(EventReason.RESUMED, "Replicas starting again"))
    return notes


def dataset_events(old: DatasetStatus, new: DatasetStatus) -> list[EventNote]:
    notes = [n for n in common_events(old, new) if new.phase != Phase.FAILED]  # a failure is told once, below
    if new.job and new.job != old.job and new.phase == Phase.PREPARING:
        notes.append(EventNote(EventReason.PREPARING, _message(new, ConditionType.RECONCILING)))
    if new.prepared_spec == old.prepared_spec:
        return notes
    if new.phase == Phase.READY:
        notes.append(EventNote(EventReason.PREPARED, _message(new, ConditionType.READY)))
    elif new.phase == Phase.FAILED:
        cond = get_condition(new.conditions, ConditionType.STALLED)
        reason = cond.reason if cond is not None else ""
        notes.append(EventNote(EventReason.PREPARATION_FAILED, f"{reason}: {_message(new, ConditionType.STALLED)}",
                               "Warning"))  # fmt: skip
    return notes


def tuningstudy_events(old: TuningStudyStatus, new: TuningStudyStatus) -> list[EventNote]:
    notes = [n for n in common_events(old, new) if new.phase != Phase.FAILED]  # a failure is told once, below
    before, after = old.trials or Trials(), new.trials or Trials()
    if after.total > before.total:
        notes.append(EventNote(EventReason.TRIAL_STARTED, f"{after.total - before.total} trial(s) asked for "
                                                          f"({after.total} in all)"))  # fmt: skip
    if after.pruned > before.pruned:
        notes.append(EventNote(EventReason.TRIAL_PRUNED, f"{after.pruned - before.pruned} trial(s) stopped early "
                                                         f"({after.pruned} in all)"))  # fmt: skip
    if after.retried > before.retried:
        notes.append(EventNote(EventReason.TRIAL_RETRIED, f"{after.retried - before.retried} trial run(s) retried "
                                                          "after an infrastructure failure", "Warning"))  # fmt: skip
    if new.phase != old.phase and new.phase == Phase.SUCCEEDED:
        best = f"; best: trial {new.best_trial.number} = {new.best_trial.value}" if new.best_trial else ""
        notes.append(EventNote(EventReason.SUCCEEDED, _message(new, ConditionType.SUCCEEDED) + best))
    elif new.phase != old.phase and new.phase == Phase.FAILED:
        notes.append(EventNote(EventReason.FAILED, _message(new, ConditionType.FAILED), "Warning"))
    elif new.phase != old.phase and new.phase == Phase.SUSPENDED:
        notes.append(EventNote(EventReason.SUSPENDED, "Trials suspended, tuner stopped"))
    elif old.phase == Phase.SUSPENDED and new.phase != Phase.SUSPENDED:
        notes.append(EventNote(EventReason.RESUMED, "Resumed"))
    return notes

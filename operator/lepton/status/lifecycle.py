"""Status stories every kind shares: accepted (no controller for it yet), stalled on an invalid spec,
and stalled because the apiserver refuses what the operator must write.

kstatus reading: Stalled=True means the controller cannot progress without the user's help;
Reconciling=True means work is under way; Ready summarises. Exactly one story at a time.
"""

from __future__ import annotations

from typing import TypeVar

from lepton.api.common import CommonStatus
from lepton.api.conditions import ConditionType, Reason, get_condition, is_true, set_condition
from lepton.api.constants import Phase
from lepton.status.story import Story

S = TypeVar("S", bound=CommonStatus)


def invalid_spec(previous: S, generation: int, message: str, now: str) -> S:
    """The spec fails validation: stall with the validation message; nothing else is touched."""
    s = Story(previous, generation, now)
    s.set("Ready", False, Reason.INVALID_SPEC, message)
    s.set("Reconciling", False, Reason.INVALID_SPEC, "Waiting for the spec to be fixed")
    s.set("Stalled", True, Reason.INVALID_SPEC, message)
    s.update(observed_generation=generation, phase=Phase.INVALID)
    return s.status


def accepted(previous: S, generation: int, kind: str, now: str) -> S:
    """A valid spec the operator has read; no children exist for it yet."""
    message = f"{kind} spec accepted (generation {generation}); waiting for its workload to be created"
    s = Story(previous, generation, now)
    s.set("Ready", False, Reason.AWAITING_CONTROLLER, message)
    s.set("Reconciling", True, Reason.AWAITING_CONTROLLER, message)
    s.set("Stalled", False, Reason.RECONCILED, "")
    phase = previous.phase if previous.phase not in (None, Phase.INVALID, Phase.STALLED) else Phase.PENDING
    s.update(observed_generation=generation, phase=phase)
    return s.status


def stalled(previous: S, generation: int, reason: str, message: str, now: str) -> S:
    """The operator cannot make progress without the user's help (the apiserver rejects a child, a
    name is taken by an object the resource does not own, an error persists): say why, keep the rest."""
    s = Story(previous, generation, now)
    s.story(ready=False, reconciling=False, stalled=True, reason=reason, message=message)
    s.update(observed_generation=generation)
    return s.status


# Stalls the kernel writes, whatever the kind: a name taken by someone else's object, a child the
# apiserver refuses, an error that persisted. A kind's plan knows nothing of them.
KERNEL_STALLS = (Reason.NAME_CONFLICT, Reason.CHILD_REJECTED, Reason.RECONCILE_ERROR)


def kernel_stall(previous: S, generation: int, reason: str, message: str, now: str) -> S:
    """The kernel's stall: the cause in words, phase Stalled, everything else kept."""
    return stalled(previous, generation, reason, message, now).model_copy(update={"phase": Phase.STALLED})


def is_kernel_stall(status: CommonStatus) -> bool:
    cond = get_condition(status.conditions, ConditionType.STALLED)
    return cond is not None and cond.status == "True" and cond.reason in KERNEL_STALLS


def recovered(status: S, now: str) -> S:
    """A kernel stall ends once a pass goes through: Stalled=False, and a Stalled phase back to
    Pending (the kind's next plan tells the rest). Any other status is returned as it is."""
    if not is_kernel_stall(status):
        return status
    conds = set_condition(status.conditions, ConditionType.STALLED, "False", Reason.RECONCILED, "",
                          observed_generation=status.observed_generation or 0, now=now)  # fmt: skip
    phase = Phase.PENDING if status.phase == Phase.STALLED else status.phase
    return status.model_copy(update={"conditions": conds, "phase": phase})


def may_wait(old: CommonStatus, new: CommonStatus, settling: frozenset[str]) -> bool:
    """Whether writing `new` over `old` may wait a moment, to be merged with the steps that follow: both
    are on the way up (phases in `settling`, or no status yet), nothing is stalled, and no spec change
    goes unacknowledged. A gang whose pods are created, scheduled and started within that moment gets
    one status write instead of one per step; anything a user acts on (Running, a failure, a stall, a
    restart, an edit) is written at once."""
    return (
        new.phase in settling
        and (old.phase is None or old.phase in settling)
        and not is_true(new.conditions, ConditionType.STALLED)
        and (not old.observed_generation or old.observed_generation == new.observed_generation)
    )

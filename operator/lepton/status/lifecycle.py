"""Status every kind shares before it has children: accepted, or stalled on an invalid spec.

kstatus reading: Stalled=True means the controller cannot progress without the user's help;
Reconciling=True means work is under way; Ready summarises. Exactly one story at a time.
"""

from __future__ import annotations

from typing import TypeVar

from lepton.api.common import CommonStatus
from lepton.api.conditions import ConditionType, Reason, set_condition

S = TypeVar("S", bound=CommonStatus)

PHASE_INVALID = "Invalid"
PHASE_PENDING = "Pending"


def invalid_spec(previous: S, generation: int, message: str, now: str) -> S:
    """The spec fails validation: stall with the validation message; nothing else is touched."""
    conds = previous.conditions
    conds = set_condition(
        conds,
        ConditionType.READY,
        "False",
        Reason.INVALID_SPEC,
        message,
        observed_generation=generation,
        now=now,
    )
    conds = set_condition(
        conds,
        ConditionType.RECONCILING,
        "False",
        Reason.INVALID_SPEC,
        "Waiting for the spec to be fixed",
        observed_generation=generation,
        now=now,
    )
    conds = set_condition(
        conds,
        ConditionType.STALLED,
        "True",
        Reason.INVALID_SPEC,
        message,
        observed_generation=generation,
        now=now,
    )
    return previous.model_copy(update={"observed_generation": generation, "phase": PHASE_INVALID, "conditions": conds})


def accepted(previous: S, generation: int, kind: str, now: str) -> S:
    """A valid spec the operator has read; no children exist for it yet."""
    message = f"{kind} spec accepted (generation {generation}); waiting for its workload to be created"
    conds = previous.conditions
    conds = set_condition(
        conds,
        ConditionType.READY,
        "False",
        Reason.AWAITING_CONTROLLER,
        message,
        observed_generation=generation,
        now=now,
    )
    conds = set_condition(
        conds,
        ConditionType.RECONCILING,
        "True",
        Reason.AWAITING_CONTROLLER,
        message,
        observed_generation=generation,
        now=now,
    )
    conds = set_condition(
        conds, ConditionType.STALLED, "False", Reason.RECONCILED, "", observed_generation=generation, now=now
    )
    phase = previous.phase if previous.phase not in (None, PHASE_INVALID) else PHASE_PENDING
    return previous.model_copy(update={"observed_generation": generation, "phase": phase, "conditions": conds})

"""Status stories every kind shares: accepted (no controller for it yet), stalled on an invalid spec,
and stalled because the apiserver refuses what the operator must write.

kstatus reading: Stalled=True means the controller cannot progress without the user's help;
Reconciling=True means work is under way; Ready summarises. Exactly one story at a time.
"""

from __future__ import annotations

from typing import TypeVar

from lepton.api.common import CommonStatus
from lepton.api.conditions import Reason
from lepton.api.constants import Phase
from lepton.status.story import Story

S = TypeVar("S", bound=CommonStatus)

PHASE_INVALID = Phase.INVALID
PHASE_PENDING = Phase.PENDING


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

"""The kstatus conditions story, typed on any kind's status.

kstatus (what Flux computes, and Argo CD's health) reads `Ready` as the summary and `Reconciling` /
`Stalled` as abnormal-true conditions. One story is told at a time: `story` sets all three together so
they never contradict each other.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from lepton.api.common import CommonStatus
from lepton.api.conditions import ConditionType, set_condition

S = TypeVar("S", bound=CommonStatus)


class Story(Generic[S]):
    """A status under construction: conditions set with one generation and one clock reading."""

    def __init__(self, status: S, generation: int, now: str) -> None:
        self.status, self.generation, self.now = status, generation, now

    def set(self, type_: str, value: bool, reason: str, message: str = "") -> None:
        conds = set_condition(
            self.status.conditions, type_, "True" if value else "False", reason, message,
            observed_generation=self.generation, now=self.now,
        )  # fmt: skip
        self.status = self.status.model_copy(update={"conditions": conds})

    def story(self, *, ready: bool, reconciling: bool, stalled: bool, reason: str, message: str) -> None:
        self.set(ConditionType.READY, ready, reason, message)
        self.set(ConditionType.RECONCILING, reconciling, reason, message if reconciling else "")
        self.set(ConditionType.STALLED, stalled, reason, message if stalled else "")

    def update(self, **fields: object) -> None:
        self.status = self.status.model_copy(update=fields)

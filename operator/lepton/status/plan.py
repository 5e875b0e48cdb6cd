"""What a pure decision hands the controller: the status, the children that must exist, what may stay,
the events worth telling a user, and when to look again."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from lepton.api.common import CommonStatus

ChildKey = tuple[str, str]  # (kind, name) of a child in the resource's namespace


@dataclass(frozen=True)
class EventNote:
    """A Kubernetes Event about the resource (`kubectl describe` shows it)."""

    reason: str
    message: str
    type: Literal["Normal", "Warning"] = "Normal"


@dataclass(frozen=True)
class Plan:
    status: CommonStatus
    children: Sequence[Mapping[str, Any]] = ()  # must exist: created when missing, corrected when drifted
    keep: frozenset[ChildKey] = frozenset()  # owned children that may stay besides `children`; the rest go
    events: Sequence[EventNote] = ()
    requeue_after: float | None = None  # look again then, even if nothing changes
    delete_self: bool = False  # ttlSecondsAfterFinished ran out

    def wanted(self) -> frozenset[ChildKey]:
        return self.keep | {(c["kind"], c["metadata"]["name"]) for c in self.children}


@dataclass(frozen=True)
class Observed:
    """Children the controller saw (owned by the resource's UID), by kind."""

    children: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)

    def of(self, kind: str) -> list[Mapping[str, Any]]:
        return list(self.children.get(kind, ()))

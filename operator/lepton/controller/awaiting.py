"""Kinds whose controllers have not been built yet: validated, given the accepted story
(`AwaitingController`) or the invalid one, and nothing else. Each moves to a binding of its own with
its issue."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from lepton.api import KindInfo, Resource
from lepton.controller.reconciler import Binding
from lepton.status.clock import rfc3339
from lepton.status.events import common_events
from lepton.status.lifecycle import accepted
from lepton.status.plan import Observed, Plan
from lepton.status.references import Resolution


class AwaitingBinding(Binding[Resource]):
    def __init__(self, info: KindInfo) -> None:
        self.info = info

    def plan(self, resource: Resource, observed: Observed, resolution: Resolution, now: datetime,
             extra: Any) -> Plan:  # fmt: skip
        status = accepted(resource.status, int(resource.metadata.generation or 0), self.info.kind, rfc3339(now))
        return Plan(status=status, events=common_events(resource.status, status))

"""What a lifecycle decision needs to know of one pod, read from the pod as the apiserver returns it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lepton.api.constants import Label, Phase
from lepton.status.clock import parse_time


def _label_int(labels: Mapping[str, Any], key: str) -> int:
    """An integer label, or -1 when it is missing or not a number (someone edited it): such a pod belongs
    to no attempt, so the decision replaces it instead of crashing on it."""
    value = labels.get(key)
    return int(value) if isinstance(value, str) and value.isdigit() and len(value) < 10 else -1


@dataclass(frozen=True)
class PodView:
    name: str
    attempt: int
    phase: str
    index: int = 0
    uid: str | None = None
    created: datetime | None = None
    scheduled: bool = False
    unschedulable: str | None = None
    waiting_reason: str | None = None
    waiting_message: str = ""
    terminated_reason: str | None = None
    exit_code: int | None = None
    message: str = ""
    deleting: bool = False
    ready: bool = False  # the Ready condition (for a server: its model is loaded)
    role: str = ""  # a serving pod's role label
    last_reason: str | None = None  # the container's previous run, when it restarted in place
    last_exit_code: int | None = None
    last_message: str = ""  # its termination message (a server says why its model failed to load)
    summary: str = ""  # the termination message of a container that exited 0 (a workload's summary)

    @property
    def finished(self) -> bool:
        return self.phase in (Phase.SUCCEEDED, Phase.FAILED)

    @classmethod
    def of(cls, pod: Mapping[str, Any]) -> PodView:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        labels = meta.get("labels") or {}
        scheduled, unschedulable, ready = False, None, False
        for cond in status.get("conditions") or []:
            if cond.get("type") == "Ready":
                ready = cond.get("status") == "True"
            if cond.get("type") == "PodScheduled":
                scheduled = cond.get("status") == "True"
                if cond.get("status") == "False" and cond.get("reason") in ("Unschedulable", "SchedulerError"):
                    unschedulable = str(cond.get("message") or "")
        waiting_reason = waiting_message = terminated_reason = None
        exit_code = last_code = None
        last_reason, last_message, summary = None, "", ""
        for cs in status.get("containerStatuses") or []:
            state = cs.get("state") or {}
            last = (cs.get("lastState") or {}).get("terminated") or state.get("terminated")
            if last and last.get("exitCode") not in (0, None):
                code = last.get("exitCode")
                last_reason, last_code = last.get("reason") or "Error", code if isinstance(code, int) else None
                last_message = str(last.get("message") or "")
            if "waiting" in state and state["waiting"].get("reason") not in (None, "ContainerCreating"):
                waiting_reason, waiting_message = state["waiting"].get("reason"), state["waiting"].get("message", "")
            term = state.get("terminated")
            if term and term.get("exitCode") == 0:
                summary = str(term.get("message") or "")
            if term and (terminated_reason is None or term.get("exitCode", 0) != 0):  # a failing container wins
                code = term.get("exitCode")
                terminated_reason, exit_code = term.get("reason") or "Error", code if isinstance(code, int) else None
        try:
            created = parse_time(meta.get("creationTimestamp"))
        except ValueError:
            created = None
        return cls(
            name=str(meta.get("name", "")),
            attempt=_label_int(labels, Label.ATTEMPT),
            index=max(_label_int(labels, Label.NODE_INDEX), 0),
            uid=meta.get("uid"),
            phase=str(status.get("phase") or Phase.PENDING),
            created=created,
            scheduled=scheduled or bool((pod.get("spec") or {}).get("nodeName")),
            unschedulable=unschedulable,
            waiting_reason=waiting_reason,
            waiting_message=waiting_message or "",
            terminated_reason=terminated_reason,
            exit_code=exit_code,
            message=str(status.get("message", "") or status.get("reason", "")),
            deleting=bool(meta.get("deletionTimestamp")),
            ready=ready,
            role=str(labels.get(Label.ROLE, "")),
            last_reason=last_reason,
            last_exit_code=last_code,
            last_message=last_message.strip()[-2048:],  # a log's tail: its end matters
            summary=summary.strip()[:4096],
        )

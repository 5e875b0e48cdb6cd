"""A Dataset's status (pure): what its preparation Job and the Job's pod say.

The data workload has no API access; it writes a `PreparationSummary` (JSON) as its termination
message, which the kubelet copies into the pod's status. The Job's outcome and that summary decide:

- a preparation is wanted while `status.preparedSpec` differs from the rendered preparation hash;
- Job running -> Preparing (a published version stays Ready for consumers meanwhile);
- Job complete with a summary -> Ready with the version, rows, bytes, columns and step counts;
- Job failed -> Failed, with the workload's reason (SourceUnreachable, BadFormat with file and line,
  EmptyResult, CredentialsMissing, …) as the condition reason, or the log tail when it died first.

Each outcome is recorded once in status, so a Job deleted by its TTL is not run again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from lepton.api import Dataset
from lepton.api.conditions import ConditionType, Reason, get_condition
from lepton.api.constants import Phase
from lepton.api.dataset import DatasetStatus, PreparationError, PreparationSummary, version_location
from lepton.status.story import Story

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"  # set by the Job controller on its pods
_REASON = re.compile(r"[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?")  # metav1.Condition's reason pattern
PREPARATION_FAILED = "PreparationFailed"


@dataclass(frozen=True)
class PreparationView:
    """One preparation Job as observed: its state, and the summary its newest finished pod left."""

    exists: bool = False
    active: bool = False
    succeeded: bool = False
    failed: bool = False
    failure_reason: str | None = None  # the Job's Failed condition reason (BackoffLimitExceeded, DeadlineExceeded)
    finished_at: str | None = None
    summary: PreparationSummary | None = None
    message: str | None = None  # a termination message that is not a summary: the log's tail

    @classmethod
    def of(cls, job: Mapping[str, Any] | None, pods: Sequence[Mapping[str, Any]]) -> PreparationView:
        if job is None:
            return cls()
        name = job.get("metadata", {}).get("name")
        status = job.get("status") or {}
        conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
        failed = conditions.get("Failed")
        complete = conditions.get("Complete")
        summary, message = _newest_message([p for p in pods if _labels(p).get(JOB_NAME_LABEL) == name])
        done = complete or failed or {}
        return cls(
            exists=True,
            active=bool(status.get("active")) and not (complete or failed),
            succeeded=complete is not None,
            failed=failed is not None,
            failure_reason=failed.get("reason") if failed else None,
            finished_at=status.get("completionTime") or done.get("lastTransitionTime"),
            summary=summary,
            message=message,
        )


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return obj.get("metadata", {}).get("labels") or {}


def _newest_message(pods: Sequence[Mapping[str, Any]]) -> tuple[PreparationSummary | None, str | None]:
    """The termination message of the most recently finished container, parsed when it is a summary."""
    finished: list[tuple[str, str]] = []
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated")
            if term and term.get("message"):
                finished.append((str(term.get("finishedAt") or ""), str(term["message"])))
    if not finished:
        return None, None
    text = max(finished)[1]
    try:
        return PreparationSummary.model_validate(json.loads(text)), None
    except (ValueError, ValidationError):
        tail = [line for line in text.strip().splitlines() if line.strip()]
        return None, tail[-1][:500] if tail else None


def _rows_line(summary: PreparationSummary) -> str:
    rows = summary.rows
    if rows is None:
        return ""
    parts = [f"{n} {split}" for split, n in (("train", rows.train), ("validation", rows.validation),
                                              ("test", rows.test)) if n]  # fmt: skip
    return f"{rows.train + rows.validation + rows.test} rows ({', '.join(parts)})"


def _error(view: PreparationView) -> PreparationError:
    if view.summary is not None and view.summary.error is not None:
        return view.summary.error
    reason = view.failure_reason or PREPARATION_FAILED
    if view.succeeded:  # complete, but no summary came back (an image without the workload?)
        return PreparationError(reason=PREPARATION_FAILED, message="the preparation Job finished without a summary")
    return PreparationError(reason=reason, message=view.message or f"the preparation Job failed ({reason})")


def _where(error: PreparationError) -> str:
    if error.file and error.line:
        return f"{error.file}:{error.line}: "
    return f"{error.file}: " if error.file else ""


def decide(dataset: Dataset, view: PreparationView, *, job: str, preparation: str, output_root: str,
           waiting: Sequence[str] = (), now: str) -> DatasetStatus:  # fmt: skip
    """The status for one pass. `job`/`preparation`: the rendered Job's name and preparation hash;
    `output_root`: the output location as status names it (pvc://claim/path or a local path)."""
    prev = dataset.status
    generation = dataset.metadata.generation or 0
    s = Story(prev, generation, now)
    s.update(observed_generation=generation)
    has_version = prev.version is not None
    kept = f"; version {prev.version} stays current" if has_version else ""

    if prev.prepared_spec == preparation:  # this preparation ran: its outcome stands, whatever the Job does now
        ready = get_condition(prev.conditions, ConditionType.READY)
        if ready is not None:
            failed = prev.phase == Phase.FAILED
            s.story(ready=not failed, reconciling=False, stalled=failed, reason=ready.reason, message=ready.message)
        return s.status
    if waiting:
        message = "Waiting for " + "; ".join(waiting)
        s.story(ready=has_version, reconciling=True, stalled=False, reason=Reason.REFERENCE_NOT_READY,
                message=message + kept)  # fmt: skip
        s.update(phase=Phase.READY if has_version else Phase.PENDING)
        return s.status
    if view.succeeded and view.summary is not None and view.summary.error is None and view.summary.version:
        summary = view.summary
        version = summary.version or ""
        rows = summary.rows
        s.update(
            version=version,
            location=version_location(output_root, version),
            rows=rows,
            total_rows=(rows.train + rows.validation + rows.test) if rows else None,
            bytes=summary.bytes,
            columns=list(summary.columns),
            steps=list(summary.steps),
            versions=list(summary.versions) or [version],
            reused=summary.reused,
            last_prepared_time=(prev.last_prepared_time if summary.reused and version == prev.version else None)
            or view.finished_at
            or now,
            prepared_spec=preparation,
            job=job,
            phase=Phase.READY,
        )
        if summary.reused:
            reason, message = Reason.VERSION_REUSED, f"Version {version} was already published: nothing recomputed"
        else:
            reason, message = Reason.PREPARED, f"Version {version} published: {_rows_line(summary)}"
        s.story(ready=True, reconciling=False, stalled=False, reason=reason, message=message)
        return s.status
    if view.failed or view.succeeded:
        error = _error(view)
        why = error.reason if _REASON.fullmatch(error.reason) else PREPARATION_FAILED
        message = f"{_where(error)}{error.message}{kept}"
        s.story(ready=False, reconciling=False, stalled=True, reason=why, message=message)
        s.update(phase=Phase.FAILED, prepared_spec=preparation, job=job)
        return s.status
    if dataset.spec.suspend:
        message = "Suspended: no preparation runs" + kept
        s.story(ready=has_version, reconciling=False, stalled=False, reason=Reason.SUSPENDED, message=message)
        s.set(ConditionType.SUSPENDED, True, Reason.SUSPENDED, message)
        s.update(phase=Phase.SUSPENDED, job=job)
        return s.status
    if get_condition(prev.conditions, ConditionType.SUSPENDED) is not None:
        s.set(ConditionType.SUSPENDED, False, Reason.RESUMED, "")
    started = "running" if view.active else "created" if view.exists else "being created"
    message = f"Preparing: Job {job} {started}{kept}"
    s.story(ready=has_version, reconciling=True, stalled=False, reason=Reason.PREPARING, message=message)
    s.update(phase=Phase.PREPARING, job=job)
    return s.status

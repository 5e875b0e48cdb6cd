"""TrainingJob status and gang decisions, computed purely from the job and the pods observed.

`decide` answers two questions at once: what the status is, and which pods should exist. The
controller only carries out the answer (create the missing pods of the current attempt, delete the
rest), so every rule of the lifecycle lives here and is table-tested.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from lepton.api.conditions import ConditionType, Reason
from lepton.api.constants import TERMINAL_PHASES, Phase
from lepton.api.contract import ProgressReport
from lepton.api.kinds import TrainingJob
from lepton.api.trainingjob import Failure, TrainingJobStatus, pod_name
from lepton.status.clock import parse_time, rfc3339
from lepton.status.pods import PodView
from lepton.status.progress import evaluations_from, finished_progress, progress_from, summary_metrics
from lepton.status.story import Story
from lepton.status.torchrun import program_lines, worker_exit_code

MAX_FAILURES = 20  # status.failures' maxItems
MAX_FAILURE_MESSAGE = 1024  # characters of a failure's message kept (its end: the last lines)
REFERENCE_LOOK_SECONDS = 5.0  # while waiting for a Dataset or a model from another resource
STALLING_WAIT_REASONS = (
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CrashLoopBackOff",  # only from init or sidecar containers: the trainer itself never restarts in place
)


@dataclass(frozen=True)
class Decision:
    status: TrainingJobStatus
    attempt: int
    create: bool  # make sure every pod of `attempt` exists
    keep: frozenset[str]  # pods that may stay; the controller deletes every other pod of the job
    requeue_after: float | None = None  # look again then, even if nothing changes


def output_location(job: TrainingJob) -> str:
    """Where the final model is, in the form modelFrom references resolve to."""
    out = job.spec.output
    if out.pvc is not None:
        return out.pvc.location()
    return out.uri or ""


def backoff_seconds(restarts: int, base: float = 10.0, cap: float = 300.0) -> float:
    """10 s, 20 s, 40 s, … up to 5 min: time for a node or a flaky dependency to recover."""
    return float(min(cap, base * 2 ** max(restarts - 1, 0)))


def _failure(pod: PodView, attempt: int, now: datetime, *, elastic: bool = False) -> Failure:
    """The pod's failure: torchrun exits 1 whatever failed, so the worker's own exit code and last lines
    come from its report in the termination message (the log's tail), when it is there."""
    reason = pod.terminated_reason or "Error"
    exit_code = worker_exit_code(pod.last_message) if pod.last_message else None
    if exit_code is None:
        exit_code = pod.exit_code
    lines = program_lines(pod.last_message) if pod.last_message else []
    message = pod.message or "\n".join(lines) or (f"exit code {exit_code}" if exit_code is not None else "")
    return Failure(attempt=attempt, pod=pod.name, pod_uid=pod.uid, elastic=elastic, reason=reason,
                   exit_code=exit_code, message=message[-MAX_FAILURE_MESSAGE:], time=rfc3339(now))  # fmt: skip


def _told(failure: Failure) -> str:
    """A failure in one line: pod, reason, exit code and the last line the program wrote."""
    text = f"{failure.pod}: {failure.reason}"
    if failure.exit_code is not None:
        text += f" (exit code {failure.exit_code})"
    last = failure.message.strip().splitlines()[-1] if failure.message.strip() else ""
    if last and last != f"exit code {failure.exit_code}":
        text += f": {last}"
    return text


def _first_failure(pods: Sequence[PodView], attempt: int, now: datetime) -> Failure | None:
    failed = [p for p in pods if p.phase == Phase.FAILED]
    if not failed:
        return None
    return _failure(min(failed, key=lambda p: (p.created or now, p.name)), attempt, now)


DELETED = "Deleted"


def _deleted_rank(pods: Sequence[PodView], names: frozenset[str], attempt: int, started: bool,
                  now: datetime) -> Failure | None:  # fmt: skip
    """A rank of the current attempt deleted from outside before it finished (kubectl delete, an eviction,
    a preemption). Its gang cannot go on (the rendezvous lost a member), and a pod of the same name and
    attempt made again would join a rendezvous that has closed: the whole gang restarts, as for a failure.
    A pod seen deleting counts at once; a pod simply gone counts once the gang had started (before, it
    may not have been created yet)."""
    ours = [p for p in pods if p.attempt == attempt]
    deleting = sorted((p for p in ours if p.deleting and not p.finished), key=lambda p: p.name)
    missing = sorted(names - {p.name for p in ours}) if started else []
    if not deleting and not missing:
        return None
    pod, uid = (deleting[0].name, deleting[0].uid) if deleting else (missing[0], None)
    how = "deleted" if deleting else "gone"
    return Failure(attempt=attempt, pod=pod, pod_uid=uid, reason=DELETED, time=rfc3339(now),
                   message=f"{how} before it finished (kubectl delete, an eviction or a preemption)")  # fmt: skip


def _recorded(history: Sequence[Failure], new: Sequence[Failure]) -> list[Failure]:
    """The failure history with `new` appended: at most 20, and the very first (usually the cause) kept."""
    failures = [*history, *new]
    if len(failures) <= MAX_FAILURES:
        return failures
    return [failures[0], *failures[-(MAX_FAILURES - 1) :]]


def _elastic_losses(pods: Sequence[PodView], total: int, minimum: int) -> list[PodView]:
    """The failed pods an elastic gang can go on without, or [] when it must restart whole.

    torchrun's agents on the surviving pods re-form the rendezvous without the lost ones (from the
    latest checkpoint) as long as at least minNodes run. Pod 0 hosts the c10d rendezvous: losing it
    restarts the gang."""
    failed = [p for p in pods if p.phase == Phase.FAILED]
    running = [p for p in pods if p.phase == Phase.RUNNING]
    if minimum == total or not failed or any(p.index == 0 for p in failed) or len(running) < minimum:
        return []
    return failed


def decide(  # noqa: PLR0915 - the rules read top to bottom, first match wins
    job: TrainingJob,
    pods: Sequence[PodView],
    now: datetime,
    *,
    backoff_base: float = 10.0,
    waiting_for: Sequence[str] = (),
    progress: ProgressReport | None = None,
) -> Decision:
    spec, previous = job.spec, job.status
    generation = int(job.metadata.generation or 0)
    total, minimum = spec.node_counts()
    attempt = previous.attempt
    resuming = not spec.suspend and any(
        cd.type == ConditionType.SUSPENDED and cd.status == "True" for cd in previous.conditions
    )
    if resuming:  # a resumed job is a new gang: new pods, new rendezvous, from the latest checkpoint
        attempt += 1
    names = frozenset(pod_name(job.metadata.name, attempt, i) for i in range(total))
    current = [p for p in pods if p.attempt == attempt and not p.deleting]
    status = previous.model_copy(update={"observed_generation": generation, "attempt": attempt})
    if progress:  # rank 0's latest report; kept when a report is missing
        status = status.model_copy(update={
            "progress": progress_from(progress),
            "latest_checkpoint": progress.checkpoint or previous.latest_checkpoint,
            "evaluations": evaluations_from(previous.evaluations, progress),
        })  # fmt: skip
    c = Story(status, generation, rfc3339(now))

    def done(phase: str, *, create: bool, keep: frozenset[str], requeue: float | None = None) -> Decision:
        running = sum(p.phase == Phase.RUNNING for p in current)
        st = c.status.model_copy(update={"phase": phase, "ready": f"{running if create else 0}/{total}"})
        return Decision(st, attempt, create, keep, requeue)

    # Finished jobs keep their finished pods (for logs) and nothing else.
    if previous.phase in TERMINAL_PHASES:
        return done(previous.phase, create=False, keep=frozenset(p.name for p in current if p.finished))

    # Time spent running so far, suspended time excluded.
    started = parse_time(previous.start_time)
    active = (previous.active_seconds or 0) + (int((now - started).total_seconds()) if started else 0)

    if spec.suspend:
        c.set(ConditionType.SUSPENDED, True, Reason.SUSPENDED, "Pods deleted; checkpoints kept. Set suspend: false")
        c.story(ready=False, reconciling=False, stalled=False, reason=Reason.SUSPENDED, message="Suspended")
        c.status = c.status.model_copy(update={"active_seconds": active if started else previous.active_seconds,
                                               "start_time": None})  # fmt: skip
        return done(Phase.SUSPENDED, create=False, keep=frozenset())
    if resuming:
        c.set(ConditionType.SUSPENDED, False, Reason.RESUMED, "Resumed from the latest checkpoint")

    def fail(reason: str, message: str) -> Decision:
        c.set(ConditionType.FAILED, True, reason, message)
        c.set(ConditionType.SUCCEEDED, False, reason, message)
        c.story(ready=False, reconciling=False, stalled=True, reason=reason, message=message)
        c.status = c.status.model_copy(update={"completion_time": rfc3339(now), "next_attempt_time": None})
        return done(Phase.FAILED, create=False, keep=frozenset(p.name for p in current if p.finished))

    if spec.active_deadline_seconds is not None and active > spec.active_deadline_seconds:
        return fail(Reason.DEADLINE_EXCEEDED, f"Running for {active}s, past activeDeadlineSeconds "
                                              f"({spec.active_deadline_seconds}s)")  # fmt: skip

    lost = _elastic_losses(current, total, minimum)
    seen = {f.pod_uid for f in previous.failures if f.pod_uid}
    new = [p for p in lost if p.uid is None or p.uid not in seen]
    if lost and (not new or previous.restarts + len(new) <= spec.backoff_limit):
        # Elastic: go on with the survivors; the lost pods are deleted and created again, and rejoin.
        failed = {p.name for p in lost}
        survivors = sum(p.phase == Phase.RUNNING for p in current)
        detail = ", ".join(f"{p.name}: {p.terminated_reason or 'Error'}" for p in lost)
        message = f"Going on with {survivors} of {total} nodes (minNodes {minimum}); replacing {detail}"
        c.status = c.status.model_copy(update={
            "restarts": previous.restarts + len(new),
            "failures": _recorded(previous.failures, [_failure(p, attempt, now, elastic=True) for p in new]),
        })  # fmt: skip
        c.story(ready=True, reconciling=True, stalled=False, reason=Reason.NODE_LOST, message=message)
        return done(Phase.RUNNING, create=True, keep=names - failed)

    failure = _first_failure(current, attempt, now)
    if failure is None and minimum == total:  # an elastic gang replaces a lost rank instead (same name)
        ran = previous.phase == Phase.RUNNING and previous.start_time is not None and not resuming
        failure = _deleted_rank(pods, names, attempt, ran, now)
    if failure is not None:
        failures = _recorded(previous.failures, [failure])
        c.status = c.status.model_copy(update={"failures": failures})
        detail = _told(failure)
        if previous.restarts >= spec.backoff_limit:
            return fail(Reason.BACKOFF_LIMIT_EXCEEDED,
                        f"{previous.restarts + 1} attempts failed (backoffLimit {spec.backoff_limit}); first failure: "
                        f"{_told(failures[0])}")  # fmt: skip
        wait = backoff_seconds(previous.restarts + 1, backoff_base)
        c.story(ready=False, reconciling=True, stalled=False, reason=failure.reason,
                message=f"Rank failed, restarting the whole gang in {wait:.0f}s: {detail}")  # fmt: skip
        c.status = c.status.model_copy(update={
            "restarts": previous.restarts + 1,
            "attempt": attempt + 1,
            "next_attempt_time": rfc3339(now + timedelta(seconds=wait)),
            "active_seconds": active if started else previous.active_seconds,
            "start_time": None,
        })  # fmt: skip
        return Decision(c.status.model_copy(update={"phase": Phase.RESTARTING, "ready": f"0/{total}"}),
                        attempt + 1, False, frozenset(), wait)  # fmt: skip

    next_attempt = parse_time(previous.next_attempt_time)
    if next_attempt is not None and now < next_attempt:
        return done(Phase.RESTARTING, create=False, keep=frozenset(), requeue=(next_attempt - now).total_seconds())
    c.status = c.status.model_copy(update={"next_attempt_time": None})

    # A new gang starts only once the previous one is gone: its pods still hold GPUs and ports.
    lingering = [p for p in pods if p.attempt != attempt]
    if lingering:
        c.story(ready=False, reconciling=True, stalled=False, reason=Reason.RESTARTING,
                message=f"Waiting for {len(lingering)} pod(s) of the previous attempt to terminate")  # fmt: skip
        return done(Phase.RESTARTING, create=False, keep=frozenset(), requeue=1.0)

    if waiting_for and not current:  # references first: a gang starts only with everything it reads
        message = "; ".join(waiting_for)
        c.set(ConditionType.REFERENCES_RESOLVED, False, Reason.REFERENCE_NOT_READY, message)
        c.story(ready=False, reconciling=True, stalled=False, reason=Reason.REFERENCE_NOT_READY, message=message)
        # Nothing wakes a job when what it references changes: look again.
        return done(Phase.PENDING, create=False, keep=frozenset(), requeue=REFERENCE_LOOK_SECONDS)
    if any(cd.type == ConditionType.REFERENCES_RESOLVED for cd in previous.conditions):
        c.set(ConditionType.REFERENCES_RESOLVED, True, Reason.REFERENCES_READY)

    succeeded = [p for p in current if p.phase == Phase.SUCCEEDED]
    if current and len(succeeded) >= minimum and all(p.finished for p in current):
        c.set(ConditionType.SUCCEEDED, True, Reason.SUCCEEDED, f"All {len(succeeded)} nodes finished")
        c.set(ConditionType.FAILED, False, Reason.SUCCEEDED)
        c.story(ready=True, reconciling=False, stalled=False, reason=Reason.SUCCEEDED,
                message=f"Training finished; model in {output_location(job)}")  # fmt: skip
        rank0 = next((p for p in current if p.index == 0), None)
        summary = rank0.summary if rank0 is not None else ""
        metrics = summary_metrics(summary) if summary else {}
        c.status = c.status.model_copy(update={
            "completion_time": rfc3339(now), "output_model": output_location(job),
            "metrics": metrics or previous.metrics,
            "progress": finished_progress(c.status.progress, summary) if summary else c.status.progress,
        })  # fmt: skip
        return done(Phase.SUCCEEDED, create=False, keep=frozenset(p.name for p in current))

    stalled_pod = next((p for p in current if p.waiting_reason in STALLING_WAIT_REASONS), None)
    unschedulable = next((p for p in current if p.unschedulable is not None and not p.scheduled), None)
    created = min((p.created for p in current if p.created), default=None)
    running = [p for p in current if p.phase in (Phase.RUNNING, Phase.SUCCEEDED)]
    if len(running) >= minimum and len(current) >= minimum:
        if not started:
            c.status = c.status.model_copy(update={"start_time": rfc3339(now)})
        message = f"{len(running)} of {total} nodes running"
        if c.status.progress is None:  # said, not guessed: a program that never reports leaves it unknown
            message += "; progress unknown: rank 0 has reported none" + (
                " (a program reports through lepton.sdk)" if spec.trainer is not None else " yet"
            )
        c.story(ready=True, reconciling=False, stalled=False, reason=Reason.RUNNING, message=message)
        return done(Phase.RUNNING, create=True, keep=names)

    if spec.startup_deadline_seconds is not None and created is not None:
        waited = (now - created).total_seconds()
        if waited > spec.startup_deadline_seconds:
            if unschedulable is not None:
                reason, text = str(Reason.UNSCHEDULABLE), unschedulable.unschedulable or ""
            elif stalled_pod is not None:
                reason, text = str(stalled_pod.waiting_reason), stalled_pod.waiting_message
            else:
                reason, text = str(Reason.STARTUP_DEADLINE_EXCEEDED), ""
            return fail(reason, f"Not all pods running after {waited:.0f}s (startupDeadlineSeconds "
                                f"{spec.startup_deadline_seconds}): {text}".rstrip(": "))  # fmt: skip
    if stalled_pod is not None:
        c.story(ready=False, reconciling=False, stalled=True, reason=str(stalled_pod.waiting_reason),
                message=f"{stalled_pod.name}: {stalled_pod.waiting_message}".rstrip(": "))  # fmt: skip
        return done(Phase.STARTING, create=True, keep=names)
    if unschedulable is not None:
        c.story(ready=False, reconciling=True, stalled=False, reason=Reason.UNSCHEDULABLE,
                message=f"No pod starts until all {minimum} fit: {unschedulable.unschedulable}")  # fmt: skip
        return done(Phase.PENDING, create=True, keep=names)
    scheduled = sum(p.scheduled for p in current)
    if current and scheduled >= minimum:
        c.story(ready=False, reconciling=True, stalled=False, reason=Reason.STARTING,
                message=f"{len(running)} of {total} nodes running")  # fmt: skip
        return done(Phase.STARTING, create=True, keep=names)
    c.story(ready=False, reconciling=True, stalled=False, reason=Reason.PENDING,
            message=f"Waiting for {minimum} nodes to be scheduled together ({scheduled} scheduled)")  # fmt: skip
    return done(Phase.PENDING, create=True, keep=names)

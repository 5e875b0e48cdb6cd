"""A TuningStudy's decisions (pure): what to tell its tuner, and from the tuner's reply and the trial
TrainingJobs, the status, which trials to create, stop or delete, and when to look again.

The tuner's storage is the truth about trials (numbers, parameters, states); the TrainingJobs are the
truth about runs. A trial the tuner says runs but has no TrainingJob gets one (a crash between an ask
and a create loses nothing); a run that ended is told (idempotently, every pass, until the tuner has
it); a run of a trial the tuner finished (pruned) or of an ending study is suspended: its pods get
SIGTERM, the trainer checkpoints and exits, and nothing runs after the study ends.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from lepton.api.conditions import ConditionType, Reason
from lepton.api.constants import TERMINAL_PHASES, Label, Phase
from lepton.api.contract import _finite
from lepton.api.kinds import TuningStudy
from lepton.api.trials import ParamValue, TrialSpecError, parameter_text, trial_spec
from lepton.api.tuner import StudySummary, SyncReply, SyncRequest, TrialInfo, TrialReport, TrialResult
from lepton.api.tuningstudy import PARETO_TRIALS, TOP_TRIALS, BestTrial, Trials, TrialSummary, TuningStudyStatus
from lepton.status.clock import parse_time, rfc3339
from lepton.status.story import Story

# Why a run failed without the training being at fault: retried, not counted against maxFailedTrials.
INFRA_REASONS = frozenset({
    "Unschedulable", "StartupDeadlineExceeded", "ImagePullBackOff", "ErrImagePull", "InvalidImageName",
    "Evicted", "Preempted", "DisruptionTarget", "NodeLost", "NodeShutdown", "Terminated",
})  # fmt: skip
LOOK_SECONDS = 15.0  # while running: trial runs wake the study; this catches a tuner that changed
REFERENCE_LOOK_SECONDS = 5.0  # nothing wakes a study when what it references changes
STARTING_LOOK_SECONDS = 2.0  # while the tuner starts or is unreachable


@dataclass(frozen=True)
class RunView:
    """One trial run (a TrainingJob the study owns), as the study reads it."""

    name: str
    number: int
    retry: int
    phase: str | None
    suspended: bool
    deleting: bool
    reason: str = ""  # of its Failed condition
    message: str = ""
    failure_reasons: tuple[str, ...] = ()
    evaluations: Mapping[int, Mapping[str, float]] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    output_model: str | None = None
    body: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> RunView | None:
        meta, status = obj.get("metadata") or {}, obj.get("status") or {}
        labels, notes = meta.get("labels") or {}, meta.get("annotations") or {}
        try:
            number, retry = int(labels.get(Label.TRIAL, "")), int(notes.get(Label.RETRY, "0"))
        except ValueError:
            return None  # not a trial of ours (labels edited): left alone
        conditions = status.get("conditions") or []
        failed: Mapping[str, Any] = next(
            (c for c in conditions if c.get("type") == ConditionType.FAILED and c.get("status") == "True"), {}
        )
        evaluations: dict[int, dict[str, float]] = {}
        for entry in status.get("evaluations") or []:
            metrics = {k: v for k, raw in (entry.get("metrics") or {}).items() if (v := _number(raw)) is not None}
            if isinstance(entry.get("step"), int):
                evaluations[int(entry["step"])] = metrics
        final = {k: v for k, raw in (status.get("metrics") or {}).items() if (v := _number(raw)) is not None}
        return cls(
            name=str(meta.get("name", "")), number=number, retry=retry, phase=status.get("phase"),
            suspended=bool((obj.get("spec") or {}).get("suspend")), deleting=bool(meta.get("deletionTimestamp")),
            reason=str(failed.get("reason") or ""), message=str(failed.get("message") or ""),
            failure_reasons=tuple(str(f.get("reason")) for f in status.get("failures") or []),
            evaluations=evaluations, metrics=final, output_model=status.get("outputModel"), body=obj,
        )  # fmt: skip

    @property
    def finished(self) -> bool:
        return self.phase in TERMINAL_PHASES

    @property
    def infrastructure_failure(self) -> bool:
        """Failed because of where it ran, not what it ran."""
        if self.phase != Phase.FAILED:
            return False
        if self.reason in INFRA_REASONS:
            return True
        return (
            self.reason == Reason.BACKOFF_LIMIT_EXCEEDED
            and bool(self.failure_reasons)
            and all(r in INFRA_REASONS for r in self.failure_reasons)
        )


def _number(raw: Any) -> float | None:
    try:
        return _finite(float(raw))
    except (TypeError, ValueError):
        return None


def current_runs(runs: Sequence[RunView]) -> dict[int, RunView]:
    """Each trial's latest run (its highest retry)."""
    latest: dict[int, RunView] = {}
    for run in runs:
        if run.number not in latest or run.retry > latest[run.number].retry:
            latest[run.number] = run
    return latest


@dataclass(frozen=True)
class Ending:
    """Why the study stops asking: its outcome once no trial runs any more."""

    phase: str
    reason: str
    message: str


def ending(study: TuningStudy, summary: StudySummary | None, now: datetime) -> Ending | None:
    spec, status = study.spec, study.status
    started = parse_time(status.start_time)
    elapsed = (now - started).total_seconds() if started is not None else None
    deadline = spec.active_deadline_seconds
    if elapsed is not None and deadline is not None and elapsed > deadline:
        why = f"Running for longer than activeDeadlineSeconds ({deadline}s)"
        return Ending(Phase.FAILED, Reason.DEADLINE_EXCEEDED, why)
    if summary is None:
        return None
    if summary.fail > spec.max_failed_trials:
        why = f"{summary.fail} trials failed, more than maxFailedTrials ({spec.max_failed_trials})"
        return Ending(Phase.FAILED, Reason.TOO_MANY_FAILED_TRIALS, why)
    done, budget = summary.complete + summary.pruned + summary.fail, spec.trial_budget()
    if done >= budget:
        grid = f" (the grid's {budget} points)" if budget < spec.max_trials else ""
        return Ending(
            Phase.SUCCEEDED, Reason.MAX_TRIALS_REACHED, f"{done} of maxTrials {spec.max_trials}{grid} finished"
        )
    objectives = spec.objective_list()
    if spec.goal is not None and summary.best and summary.best[0].values:
        value = summary.best[0].values[0]
        if value <= spec.goal if objectives[0].direction == "minimize" else value >= spec.goal:
            return Ending(Phase.SUCCEEDED, Reason.GOAL_REACHED,
                          f"Trial {summary.best[0].number} reached the goal {spec.goal:g} ({value:.6g})")  # fmt: skip
    limit = spec.max_duration_seconds
    if elapsed is not None and limit is not None and elapsed > limit:
        return Ending(Phase.SUCCEEDED, Reason.MAX_DURATION_REACHED, f"maxDurationSeconds ({limit}s) passed")
    return None


def _result(study: TuningStudy, run: RunView) -> TrialResult | None:
    """What to tell about a run that ended, or None while it runs (or is to be retried)."""
    if run.phase == Phase.SUCCEEDED:
        wanted = [o.metric for o in study.spec.objective_list()]
        missing = [m for m in wanted if m not in run.metrics]
        if missing:
            reported = ", ".join(sorted(run.metrics)) or "nothing"
            why = f"{run.name} did not report {', '.join(missing)} (it reported: {reported})"
            return TrialResult(number=run.number, state="fail", message=why[:1024])
        return TrialResult(number=run.number, state="complete", values=[run.metrics[m] for m in wanted])
    if run.phase == Phase.FAILED and not (run.infrastructure_failure and run.retry < study.spec.backoff_limit):
        return TrialResult(number=run.number, state="fail", message=f"{run.name}: {run.reason}: {run.message}"[:1024])
    return None


def sync_request(study: TuningStudy, runs: Sequence[RunView], now: datetime,
                 last: SyncReply | None = None) -> SyncRequest:  # fmt: skip
    """What to tell the tuner this pass (idempotent: repeated until the tuner has it)."""
    spec = study.spec
    latest = current_runs(runs)
    stop = ending(study, last.summary if last is not None else None, now)
    asking = study.status.phase == Phase.RUNNING and not spec.suspend and stop is None
    results = [r for run in latest.values() if (r := _result(study, run)) is not None]
    unstarted: list[int] = []
    if stop is not None:  # an ending study stops its running trials: they count as pruned
        why = f"study ending: {stop.message}"[:1024]
        results += [TrialResult(number=run.number, state="pruned", message=why)
                    for run in latest.values() if not run.finished]  # fmt: skip
        # …and those asked in the very sync that ended it (a result told, then an ask): they never get a
        # run, and left running in the tuner the study would never end.
        unstarted = [t.number for t in (last.trials if last is not None else []) if t.state == "running"
                     and t.number not in latest]  # fmt: skip
        results += [TrialResult(number=n, state="pruned", message=why) for n in unstarted]
    if last is not None:  # a trial whose parameters make no valid TrainingJob fails at once
        for trial in last.trials:
            if trial.state == "running" and trial.number not in latest and trial.number not in unstarted:
                try:
                    trial_spec(spec.trial_template.training_job, trial.parameters, "trial", None)
                except TrialSpecError as exc:
                    results.append(TrialResult(number=trial.number, state="fail", message=str(exc)[:1024]))
    reports: list[TrialReport] = []
    objectives = spec.objective_list()
    if len(objectives) == 1:
        metric = objectives[0].metric
        for run in runs:
            reports += [TrialReport(number=run.number, step=step, value=values[metric])
                        for step, values in sorted(run.evaluations.items()) if metric in values]  # fmt: skip
    return SyncRequest(
        study=f"{study.metadata.namespace or 'default'}/{study.metadata.name}",
        uid=study.metadata.uid or "",
        parallelism=spec.parallelism if asking else 0,
        max_trials=spec.trial_budget(),
        results=results,
        reports=reports,
        known=sorted({*latest, *unstarted}),
    )


@dataclass(frozen=True)
class TunerView:
    """The tuner pod as the controller saw it, and how the last sync went."""

    exists: bool = False
    ready: bool = False
    waiting_reason: str = ""  # ImagePullBackOff, CrashLoopBackOff…
    message: str = ""
    unschedulable: str = ""  # the scheduler's words (e.g. an unbound PVC)
    refused: bool = False  # 401: the pod holds a token of an earlier operator key; it is started again
    reply: SyncReply | None = None
    error: str = ""  # why the last sync failed


@dataclass(frozen=True)
class TrialStart:
    """A run to create: trial `number`'s first, or its `retry`-th after infrastructure failures."""

    number: int
    parameters: Mapping[str, ParamValue]
    retry: int = 0


@dataclass(frozen=True)
class StudyDecision:
    status: TuningStudyStatus
    tuner: bool  # the tuner pod must exist
    start: list[TrialStart]  # runs to create
    suspend: list[tuple[Mapping[str, Any], bool]]  # runs to stop (True) or resume (False), as observed
    keep: frozenset[str]  # trial TrainingJobs that may stay; every other trial is deleted
    requeue_after: float | None


def _values_text(info: TrialInfo) -> list[str]:
    return [f"{v:.6g}" for v in info.values or []]


def _summary(info: TrialInfo, runs: Mapping[int, RunView], several: bool) -> TrialSummary:
    values = _values_text(info)
    run = runs.get(info.number)
    return TrialSummary(number=info.number, value=None if several else (values[0] if values else None),
                        values=values if several else None,
                        parameters={k: parameter_text(v) for k, v in sorted(info.parameters.items())},
                        training_job=run.name if run else None)  # fmt: skip


def _best(info: TrialInfo, runs: Mapping[int, RunView], previous: BestTrial | None, several: bool) -> BestTrial:
    run = runs.get(info.number)
    kept = previous if previous is not None and previous.number == info.number else None
    values = _values_text(info)
    return BestTrial(
        number=info.number, value=values[0] if values else "", values=values if several else None,
        parameters={k: parameter_text(v) for k, v in sorted(info.parameters.items())},
        training_job=run.name if run else (kept.training_job if kept else None),
        model=(run.output_model if run else None) or (kept.model if kept else None),
    )  # fmt: skip


def _retained(study: TuningStudy, latest: Mapping[int, RunView], runs: Sequence[RunView], best: int | None,
              finished: set[int]) -> frozenset[str]:  # fmt: skip
    """Runs that may stay: every live one (suspended with the study included), the best trial's, and
    the newest `trialRetention` of those done (ended, or stopped because the tuner finished the trial)."""
    done = sorted((r for r in runs if r.finished or (r.suspended and r.number in finished)),
                  key=lambda r: (r.number, r.retry), reverse=True)  # fmt: skip
    done_names = {r.name for r in done}
    keep = {r.name for r in runs if r.name not in done_names}
    keep |= {r.name for r in done[: study.spec.trial_retention]}
    if best is not None and best in latest:
        keep.add(latest[best].name)
    return frozenset(keep)


def _record(c: Story[TuningStudyStatus], study: TuningStudy, summary: StudySummary,
            latest: Mapping[int, RunView]) -> None:  # fmt: skip
    """Counters, best, top and Pareto trials from the tuner's summary (bounded, whatever the trial count)."""
    spec, previous = study.spec, study.status
    several = len(spec.objective_list()) > 1
    retried = max(previous.trials.retried if previous.trials else 0, sum(r.retry for r in latest.values()))
    c.update(
        trials=Trials(total=summary.total - summary.waiting, running=summary.running, succeeded=summary.complete,
                      pruned=summary.pruned, failed=summary.fail, retried=retried),
        trials_done=f"{summary.complete + summary.pruned + summary.fail}/{spec.trial_budget()}",
        top_trials=[_summary(t, latest, several) for t in summary.top[:TOP_TRIALS]],
        pareto_front=[_summary(t, latest, several) for t in summary.best[:PARETO_TRIALS]] if several else [],
        best_trial=_best(summary.best[0], latest, previous.best_trial, several) if summary.best else None,
    )  # fmt: skip


def _tuner_story(c: Story[TuningStudyStatus], tuner: TunerView) -> None:
    """Why there is no answer from the tuner yet."""
    if tuner.waiting_reason:
        c.story(ready=False, reconciling=False, stalled=True, reason=tuner.waiting_reason,
                message=f"tuner pod: {tuner.message or tuner.waiting_reason}")  # fmt: skip
    elif tuner.unschedulable:
        c.story(ready=False, reconciling=True, stalled=False, reason=Reason.UNSCHEDULABLE,
                message=f"tuner pod: {tuner.unschedulable}"[:1000])  # fmt: skip
    elif tuner.refused:
        c.story(ready=False, reconciling=True, stalled=False, reason=Reason.TUNER_UNREACHABLE,
                message="the tuner pod holds a token of an earlier operator key: starting it again (the study "
                "is in its storage)")  # fmt: skip
    elif tuner.ready and tuner.error:
        c.story(ready=False, reconciling=True, stalled=False, reason=Reason.TUNER_UNREACHABLE,
                message=f"tuner: {tuner.error}"[:1000])  # fmt: skip
    else:
        c.story(ready=False, reconciling=True, stalled=False, reason=Reason.TUNER_STARTING,
                message="Waiting for the tuner pod to open the study's storage")  # fmt: skip


def _finish(c: Story[TuningStudyStatus], stop: Ending, now: datetime) -> None:
    if stop.phase == Phase.SUCCEEDED:
        c.set(ConditionType.SUCCEEDED, True, stop.reason, stop.message)
        c.set(ConditionType.FAILED, False, stop.reason)
        c.story(ready=True, reconciling=False, stalled=False, reason=stop.reason, message=stop.message)
    else:
        c.set(ConditionType.FAILED, True, stop.reason, stop.message)
        c.set(ConditionType.SUCCEEDED, False, stop.reason, stop.message)
        c.story(ready=False, reconciling=False, stalled=True, reason=stop.reason, message=stop.message)
    c.update(completion_time=rfc3339(now))


def _actions(study: TuningStudy, latest: Mapping[int, RunView], running: Sequence[RunView], reply: SyncReply, *,
             stop: Ending | None) -> tuple[list[TrialStart], list[tuple[Mapping[str, Any], bool]]]:  # fmt: skip
    """Runs to stop (their trial finished in the tuner, or the study ends), to resume (suspended with
    the study), and to create (a trial the tuner runs without a run: its first run, or a retry after
    an infrastructure failure)."""
    states = {t.number: t.state for t in reply.trials}
    suspend = [(r.body, True) for r in running if stop is not None or states.get(r.number, "running") != "running"]
    if stop is not None:
        return [], suspend
    start: list[TrialStart] = []
    template = study.spec.trial_template.training_job
    for trial in reply.trials:
        run = latest.get(trial.number)
        if trial.state != "running":
            continue
        if run is not None and run.suspended and not run.finished:
            suspend.append((run.body, False))
        elif run is None or (run.infrastructure_failure and run.retry < study.spec.backoff_limit):
            try:
                trial_spec(template, trial.parameters, "trial", None)
            except TrialSpecError:
                continue  # told as failed by the next sync
            start.append(TrialStart(trial.number, trial.parameters, 0 if run is None else run.retry + 1))
    return start, suspend


def _look_again(study: TuningStudy, status: TuningStudyStatus, stop: Ending | None, now: datetime) -> float:
    requeue = STARTING_LOOK_SECONDS if study.status.phase != Phase.RUNNING or stop is not None else LOOK_SECONDS
    begun = parse_time(status.start_time)
    if study.spec.max_duration_seconds is not None and begun is not None:
        left = (begun + timedelta(seconds=study.spec.max_duration_seconds) - now).total_seconds()
        requeue = max(min(requeue, left + 0.5), 0.5)
    return requeue


def decide(study: TuningStudy, runs: Sequence[RunView], tuner: TunerView, *, waiting: Sequence[str] = (),
           dataset_version: str | None = None, now: datetime) -> StudyDecision:  # fmt: skip
    spec, previous = study.spec, study.status
    generation = int(study.metadata.generation or 0)
    latest = current_runs(runs)
    reply = tuner.reply
    status = previous.model_copy(update={"observed_generation": generation,
                                         "tuner": f"{study.metadata.name}-tuner",
                                         "dataset_version": previous.dataset_version or dataset_version})  # fmt: skip
    c = Story(status, generation, rfc3339(now))
    if reply is not None:
        _record(c, study, reply.summary, latest)
    finished = {t.number for t in reply.trials if t.state != "running"} if reply is not None else set()

    def out(phase: str, *, tuner_pod: bool, start: list[TrialStart] | None = None,
            suspend: list[tuple[Mapping[str, Any], bool]] | None = None,
            requeue: float | None = None) -> StudyDecision:  # fmt: skip
        best = c.status.best_trial.number if c.status.best_trial else None
        keep = _retained(study, latest, runs, best, finished)
        return StudyDecision(c.status.model_copy(update={"phase": phase}), tuner_pod, start or [], suspend or [],
                             keep, requeue)  # fmt: skip

    if previous.phase in TERMINAL_PHASES:  # finished: no tuner, no running trial; retention still applies
        return out(str(previous.phase), tuner_pod=False)
    running = [r for r in latest.values() if not r.finished and not r.suspended and not r.deleting]
    if spec.suspend:
        c.set(ConditionType.SUSPENDED, True, Reason.SUSPENDED, "Trials suspended (checkpoints kept), tuner stopped")
        c.story(ready=False, reconciling=False, stalled=False, reason=Reason.SUSPENDED, message="Suspended")
        return out(Phase.SUSPENDED, tuner_pod=False, suspend=[(r.body, True) for r in running])
    if any(cd.type == ConditionType.SUSPENDED and cd.status == "True" for cd in previous.conditions):
        c.set(ConditionType.SUSPENDED, False, Reason.RESUMED, "Resumed")
    if waiting:
        message = "; ".join(waiting)
        c.set(ConditionType.REFERENCES_RESOLVED, False, Reason.REFERENCE_NOT_READY, message)
        c.story(ready=False, reconciling=True, stalled=False, reason=Reason.REFERENCE_NOT_READY, message=message)
        return out(Phase.PENDING, tuner_pod=False, requeue=REFERENCE_LOOK_SECONDS)
    if any(cd.type == ConditionType.REFERENCES_RESOLVED for cd in previous.conditions):
        c.set(ConditionType.REFERENCES_RESOLVED, True, Reason.REFERENCES_READY)
    if reply is None:
        _tuner_story(c, tuner)
        phase = Phase.RUNNING if previous.phase == Phase.RUNNING else Phase.PENDING
        return out(phase, tuner_pod=not tuner.refused, requeue=STARTING_LOOK_SECONDS)

    if not previous.start_time:
        c.update(start_time=rfc3339(now))
    stop = ending(study.model_copy(update={"status": c.status}), reply.summary, now)
    if stop is not None and not running and reply.summary.running == 0:
        _finish(c, stop, now)
        return out(stop.phase, tuner_pod=False)
    start, suspend = _actions(study, latest, running, reply, stop=stop)
    if stop is not None:
        c.story(ready=True, reconciling=True, stalled=False, reason=Reason.STOPPING_TRIALS,
                message=f"{stop.message}; stopping {len(running)} running trial(s)")  # fmt: skip
    else:
        c.story(ready=True, reconciling=False, stalled=False, reason=Reason.TRIALS_RUNNING,
                message=f"{len(running) + len(start)} trial(s) running, {c.status.trials_done} finished")  # fmt: skip
    return out(
        Phase.RUNNING, tuner_pod=True, start=start, suspend=suspend, requeue=_look_again(study, c.status, stop, now)
    )


def parameters_annotation(obj: Mapping[str, Any]) -> dict[str, str]:
    """A trial's parameters as its annotation shows them."""
    raw = ((obj.get("metadata") or {}).get("annotations") or {}).get(Label.PARAMETERS, "{}")
    try:
        doc = json.loads(raw)
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in doc.items()} if isinstance(doc, dict) else {}

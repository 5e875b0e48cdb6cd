"""One sync on the Optuna study (`lepton.api.tuner`): report, prune, tell, ask, reply.

Every step reads the study's storage first and changes only what storage does not hold yet, so a
repeated sync changes nothing and a sync after a crash finishes what the crashed one began. Syncs are
serialized by a lock: exactly one ask or tell runs at a time, in the calling (HTTP handler) thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, Trial, TrialState

from lepton.api.tuner import StudySummary, SyncReply, SyncRequest, TrialInfo, TrialResult, TunerConfig
from lepton.api.tuner import TrialState as StateName
from lepton.api.tuningstudy import PARETO_TRIALS, TOP_TRIALS
from lepton.workloads.tuner import space
from lepton.workloads.tuner.metrics import TunerMetrics
from lepton.workloads.tuner.storage import SEED_ATTR, WARM_PREFIX

STATE_NAMES: dict[TrialState, StateName] = {
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
    TrialState.COMPLETE: "complete",
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "fail",
}
TELL_STATES = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "fail": TrialState.FAIL}
MESSAGE_ATTR = "lepton.message"  # trial user attribute: why the caller failed or stopped it


class SyncRequestError(ValueError):
    """A sync the tuner refuses before it changes anything (HTTP 400)."""


@dataclass
class Changes:
    """What one sync changed, for its log line."""

    reported: int = 0
    pruned: list[int] = field(default_factory=list)
    told: dict[str, list[int]] = field(default_factory=dict)
    repaired: list[int] = field(default_factory=list)
    unknown: list[int] = field(default_factory=list)
    asked: list[int] = field(default_factory=list)
    ask_seconds: float = 0.0

    def line(self, summary: StudySummary) -> str | None:
        parts = [f"reported {self.reported} value(s)"] if self.reported else []
        parts += [f"pruned {self.pruned}"] if self.pruned else []
        parts += [f"told {state} {numbers}" for state, numbers in sorted(self.told.items())]
        parts += [f"completed the interrupted ask of {self.repaired}"] if self.repaired else []
        parts += [f"ignored unknown trial(s) {self.unknown}"] if self.unknown else []
        parts += [f"asked {self.asked} in {self.ask_seconds:.3f}s"] if self.asked else []
        if not parts:
            return None
        return f"sync: {'; '.join(parts)}; now {summary.running} running, {summary.total} trials"


class StudyService:
    def __init__(self, study: optuna.Study, config: TunerConfig, metrics: TunerMetrics) -> None:
        self.study = study
        self.study_key, self.uid = config.study, config.uid
        self.metrics = metrics
        self.lock = threading.Lock()
        self.distributions = space.distributions(config.search_space)
        self.objectives = len(study.directions)

    def observe(self) -> StudySummary:
        """The study's summary now, into the metrics (at start, before any sync)."""
        with self.lock:
            summary = summarize(self.study.get_trials(deepcopy=False), self.study)
            self.metrics.observe_summary(summary)
            return summary

    def conflict(self, request: SyncRequest) -> str | None:
        """Why a sync is for another study (HTTP 409), or None."""
        if request.study != self.study_key or request.uid != self.uid:
            return (
                f"this tuner holds study {self.study_key} (uid {self.uid}); "
                f"the sync is for {request.study} (uid {request.uid})"
            )
        return None

    def check(self, request: SyncRequest) -> None:
        for result in request.results:
            if result.state == "complete" and len(result.values or []) != self.objectives:
                raise SyncRequestError(
                    f"results: trial {result.number} is complete with {len(result.values or [])} value(s); "
                    f"the study has {self.objectives} objective(s)"
                )

    def sync(self, request: SyncRequest) -> tuple[SyncReply, str | None]:
        """Report, tell, ask, reply (see `lepton.api.tuner`); returns the reply and its log line."""
        self.check(request)
        with self.lock:
            changes = Changes()
            self._repair(changes)
            self._report(request, changes)
            self._tell(request.results, changes)
            self._ask(request.parallelism, request.max_trials, changes)
            trials = self.study.get_trials(deepcopy=False)
            known = set(request.known)
            reply = SyncReply(
                trials=[info(t) for t in trials if t.state == TrialState.RUNNING or t.number in known],
                summary=summarize(trials, self.study),
            )
            self.metrics.observe_summary(reply.summary)
            return reply, changes.line(reply.summary)

    def _by_number(self) -> dict[int, FrozenTrial]:
        return {t.number: t for t in self.study.get_trials(deepcopy=False)}

    def _repair(self, changes: Changes) -> None:
        """A running trial without all its parameters was being asked when the process died: its
        suggestions are completed now (same number, nothing lost, nothing duplicated)."""
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            missing = [name for name in self.distributions if name not in t.params]
            if missing:
                trial = Trial(self.study, t._trial_id)
                for name in missing:
                    suggest(trial, name, self.distributions[name])
                changes.repaired.append(t.number)

    def _report(self, request: SyncRequest, changes: Changes) -> None:
        if self.objectives > 1 or not request.reports:  # Optuna prunes single-objective studies only
            return
        trials = self._by_number()
        steps: dict[int, dict[int, float]] = {}
        for report in request.reports:
            steps.setdefault(report.number, {}).setdefault(report.step, report.value)
        for number, values in sorted(steps.items()):
            t = trials.get(number)
            if t is None:
                changes.unknown.append(number)
                continue
            new = sorted(step for step in values if step not in t.intermediate_values)
            if t.state != TrialState.RUNNING or not new:
                continue
            trial = Trial(self.study, t._trial_id)
            for step in new:
                trial.report(values[step], step)
                changes.reported += 1
                if trial.should_prune():  # told at once: the decision survives any crash
                    self._finish(number, TrialState.PRUNED, None)
                    changes.pruned.append(number)
                    break

    def _tell(self, results: Sequence[TrialResult], changes: Changes) -> None:
        if not results:
            return
        trials = self._by_number()
        for result in results:
            t = trials.get(result.number)
            if t is None:
                changes.unknown.append(result.number)
                continue
            if t.state != TrialState.RUNNING:  # finished already (told before, or pruned)
                continue
            if result.message:
                self.study._storage.set_trial_user_attr(t._trial_id, MESSAGE_ATTR, result.message)
            values = result.values if result.state == "complete" else None
            self._finish(result.number, TELL_STATES[result.state], values)
            changes.told.setdefault(result.state, []).append(result.number)

    def _finish(self, number: int, state: TrialState, values: list[float] | None) -> None:
        """Tell a trial's end. Study.tell takes a trial NUMBER (not its storage id: they differ in an RDB)."""
        frozen = self.study.tell(number, values, state=state, skip_if_finished=True)
        if frozen.duration is not None:
            self.metrics.duration.observe(frozen.duration.total_seconds())

    def _ask(self, parallelism: int, max_trials: int, changes: Changes) -> None:
        trials = [t for t in self.study.get_trials(deepcopy=False) if not warm(t)]  # warm trials ran elsewhere
        running = sum(t.state == TrialState.RUNNING for t in trials)
        asked = sum(t.state != TrialState.WAITING for t in trials)  # enqueued, not asked: no budget yet
        while running < parallelism and asked < max_trials:
            started = time.perf_counter()
            trial = self.study.ask(self.distributions)  # a waiting (enqueued) trial first
            elapsed = time.perf_counter() - started
            self.metrics.suggest.observe(elapsed)
            changes.ask_seconds += elapsed
            changes.asked.append(trial.number)
            running, asked = running + 1, asked + 1


def suggest(trial: Trial, name: str, dist: BaseDistribution) -> None:
    if isinstance(dist, FloatDistribution):
        trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    elif isinstance(dist, IntDistribution):
        trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    elif isinstance(dist, CategoricalDistribution):
        trial.suggest_categorical(name, dist.choices)
    else:
        raise TypeError(f"parameter {name}: unsupported distribution {type(dist).__name__}")


def info(t: FrozenTrial) -> TrialInfo:
    return TrialInfo(
        number=t.number,
        state=STATE_NAMES.get(t.state, "fail"),
        parameters=dict(t.params),
        values=list(t.values) if t.state == TrialState.COMPLETE and t.values is not None else None,
        last_step=t.last_step,
        duration_seconds=t.duration.total_seconds() if t.duration is not None else None,
    )


def _key(direction: StudyDirection) -> float:
    return 1.0 if direction == StudyDirection.MINIMIZE else -1.0


def warm(trial: FrozenTrial) -> bool:
    """A finished trial of another study added for the warm start: it guides the sampler, but it ran
    nowhere here, spends no budget and has no model to hand on."""
    return str(trial.user_attrs.get(SEED_ATTR, "")).startswith(WARM_PREFIX)


def summarize(trials: Sequence[FrozenTrial], study: optuna.Study) -> StudySummary:
    """Counts by state, the best trial (several objectives: the Pareto front, best first objective
    first, at most PARETO_TRIALS) and the TOP_TRIALS best complete trials, best first; trials of
    this study only (warm-start trials left out)."""
    trials = [t for t in trials if not warm(t)]
    directions = study.directions
    counts = {name: 0 for name in STATE_NAMES.values()}
    for t in trials:
        counts[STATE_NAMES.get(t.state, "fail")] += 1
    sign = _key(directions[0])
    complete = sorted(
        (t for t in trials if t.state == TrialState.COMPLETE and t.values is not None),
        key=lambda t: (sign * t.values[0], t.number),
    )
    if len(directions) == 1:
        best = complete[:1]
    else:  # the Pareto front, best first objective first
        front = {t.number for t in study.best_trials if not warm(t)}
        best = [t for t in complete if t.number in front][:PARETO_TRIALS]
    return StudySummary(
        total=len(trials),
        running=counts["running"],
        waiting=counts["waiting"],
        complete=counts["complete"],
        pruned=counts["pruned"],
        fail=counts["fail"],
        best=[info(t) for t in best],
        top=[info(t) for t in complete[:TOP_TRIALS]],
    )

"""The contract between the operator (or the local backend) and a study's tuner process
(`python -m lepton.workloads.tuner`), which alone holds the Optuna study.

The tuner reads one TunerConfig (JSON in $LEPTON_TUNER_CONFIG) and serves HTTP on TUNER_PORT:
- `POST /v1/sync` (SyncRequest -> SyncReply), guarded by the study's bearer token when one is set;
- `GET /healthz` (200 once the storage is open) and `GET /metrics` (Prometheus), open.
With `dashboard` on (the default) it also serves optuna-dashboard, read-only, on 127.0.0.1:DASHBOARD_PORT:
the pod's loopback only, so it is reachable through `kubectl port-forward` (`leptonctl tune dashboard`)
and from nothing else on the pod network.

One sync does everything, and is idempotent, so a caller that crashes and repeats it loses nothing
and duplicates nothing:
1. `reports` are reported as intermediate values first (a step already reported, or a trial already
   finished in storage, is skipped), so a trial's last evaluations reach storage before its result;
   a running trial its pruner stops is told PRUNED at once, in storage, so the decision survives any
   crash;
2. `results` are told (a trial already finished in storage, e.g. just pruned, is left as it is);
3. new trials are asked (enqueued ones first) while fewer than `parallelism` run and fewer than
   `maxTrials` exist; `parallelism: 0` asks none;
4. the reply lists every trial still running in storage, and every trial the request named, with its
   parameters and state, and a bounded summary (counts, best, top, Pareto front).
A trial number the caller has not seen yet (asked before a crash) is in the reply's running trials:
the operator creates its TrainingJob then, under the trial's deterministic name.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lepton.api.base import ApiModel
from lepton.api.tuningstudy import Objective, Parameter, Pruner, Sampler

TUNER_CONFIG_ENV = "LEPTON_TUNER_CONFIG"
TUNER_PORT = 8080
DASHBOARD_PORT = 8081  # optuna-dashboard, on the tuner pod's loopback only
STORAGE_URL_ENV = "LEPTON_TUNER_STORAGE_URL"  # set from the storage secret's key, never in the config
JOURNAL_FILE = "journal.log"  # the journal's file name inside its directory

ParamValue = float | int | str
TrialState = Literal["running", "waiting", "complete", "pruned", "fail"]


class WarmTrial(ApiModel):
    """A finished trial of another study, added as COMPLETE before the first ask (fromStudy)."""

    parameters: dict[str, str] = Field(description="Its parameters as text.")
    values: list[float] = Field(min_length=1, description="Its objective values.")


class TunerConfig(ApiModel):
    study: str = Field(description="namespace/name of the TuningStudy.")
    uid: str = Field(description="UID of the TuningStudy: a sync for another study is refused (409).")
    storage: Literal["journal", "rdb"] = Field(description="journal: a file under journalDir; rdb: $" + STORAGE_URL_ENV)
    journal_dir: str | None = Field(default=None, description="Directory of the journal file (journal).")
    objectives: list[Objective] = Field(min_length=1, description="What to optimise.")
    search_space: list[Parameter] = Field(min_length=1, description="The parameters.")
    sampler: Sampler = Field(default_factory=Sampler, description="Optuna sampler.")
    pruner: Pruner = Field(default_factory=Pruner, description="Optuna pruner.")
    enqueue: list[dict[str, str]] = Field(default_factory=list, description="Parameter sets to try first.")
    warm_start: list[WarmTrial] = Field(default_factory=list, description="Finished trials to add first.")
    host: str = Field(default="0.0.0.0", description="Address to bind.")
    port: int = Field(default=TUNER_PORT, ge=0, le=65535, description="HTTP port (0: any free port).")
    dashboard: bool = Field(default=True, description="Serve optuna-dashboard (read-only) on 127.0.0.1 only.")
    dashboard_port: int = Field(
        default=DASHBOARD_PORT, ge=0, le=65535, description="The dashboard's port on 127.0.0.1 (0: any free port)."
    )


def optuna_study_name(study: str, uid: str) -> str:
    """The Optuna study name: namespace/name plus the UID's first part, so a study deleted and created
    again under the same name on a shared RDB starts afresh instead of continuing the old one."""
    return f"{study}-{uid[:8]}"


class TrialReport(ApiModel):
    number: int = Field(ge=0, description="Trial number.")
    step: int = Field(ge=0, description="The evaluation's optimizer step.")
    value: float = Field(description="The objective's value at that step.")


class TrialResult(ApiModel):
    number: int = Field(ge=0, description="Trial number.")
    state: Literal["complete", "pruned", "fail"] = Field(description="How it ended.")
    values: list[float] | None = Field(default=None, description="Objective values (complete).")
    message: str = Field(default="", max_length=1024, description="Why, for a failed or stopped trial.")


class SyncRequest(ApiModel):
    study: str = Field(description="namespace/name of the TuningStudy.")
    uid: str = Field(description="Its UID.")
    parallelism: int = Field(ge=0, description="Trials that may run at once; 0: ask for none.")
    max_trials: int = Field(ge=0, description="Trials that may exist in total (finished ones included).")
    results: list[TrialResult] = Field(default_factory=list, description="Trials that ended since.")
    reports: list[TrialReport] = Field(default_factory=list, description="Intermediate values since.")
    known: list[int] = Field(default_factory=list, description="Trial numbers whose state the caller wants back.")


class TrialInfo(ApiModel):
    number: int = Field(description="Trial number.")
    state: TrialState = Field(description="Its state in storage.")
    parameters: dict[str, ParamValue] = Field(default_factory=dict, description="Suggested parameters.")
    values: list[float] | None = Field(default=None, description="Objective values (complete).")
    last_step: int | None = Field(default=None, description="Last intermediate step reported.")
    duration_seconds: float | None = Field(default=None, description="Start to finish, when finished.")


class StudySummary(ApiModel):
    total: int = Field(default=0, description="Trials in storage.")
    running: int = Field(default=0)
    waiting: int = Field(default=0, description="Enqueued, not asked yet.")
    complete: int = Field(default=0)
    pruned: int = Field(default=0)
    fail: int = Field(default=0)
    best: list[TrialInfo] = Field(
        default_factory=list, description="One objective: the best trial; several: the Pareto front (≤ 20)."
    )
    top: list[TrialInfo] = Field(default_factory=list, description="The best complete trials, best first (≤ 5).")


class SyncReply(ApiModel):
    trials: list[TrialInfo] = Field(default_factory=list, description="Running trials and those named in known.")
    summary: StudySummary = Field(default_factory=StudySummary, description="The study as a whole.")

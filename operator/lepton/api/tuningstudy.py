"""TuningStudy: Optuna hyper-parameter search whose trials are TrainingJobs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lepton.api.base import INT32_MAX, UINT32_MAX, ApiModel, Int, Rule, exactly_one, immutable, ordered
from lepton.api.common import CommonStatus, JobLifecycle, PvcPath, Scheduling, SecretKeyRef
from lepton.api.trainingjob import TrainingJobSpec


class Objective(ApiModel):
    metric: str = Field(description="Metric reported by trials, e.g. eval_loss.", min_length=1, max_length=128)
    direction: Literal["minimize", "maximize"] = Field(default="minimize", description="Optimisation direction.")


class Parameter(ApiModel):
    """One dimension of the search space, written into the trial's hyperparameters."""

    rules = (
        Rule(
            cel="self.type == 'categorical' ? (has(self.choices) && size(self.choices) > 0) "
            ": (has(self.low) && has(self.high) && self.low < self.high)",
            message="parameter: categorical needs choices; int and float need low < high",
            check=lambda p: (
                bool(p.choices)
                if p.type == "categorical"
                else (p.low is not None and p.high is not None and p.low < p.high)
            ),
        ),
        Rule(
            cel="!(has(self.log) && self.log) || (has(self.low) && self.low > 0.0)",
            message="parameter: a log-scale range needs low > 0",
            check=lambda p: not p.log or (p.low is not None and p.low > 0),
        ),
    )

    name: str = Field(
        description="Hyperparameter name (camelCase, as in the TrainingJob spec), e.g. learningRate.",
        pattern=r"^[a-zA-Z][a-zA-Z0-9]*$",
        max_length=64,
    )
    type: Literal["float", "int", "categorical"] = Field(description="Distribution type.")
    low: float | None = Field(default=None, description="Lower bound (float, int).")
    high: float | None = Field(default=None, description="Upper bound (float, int).")
    log: bool = Field(default=False, description="Sample on a log scale.")
    step: float | None = Field(default=None, gt=0, description="Discretisation step.")
    choices: list[str] | None = Field(default=None, max_length=256, description="Values (categorical).")


class Sampler(ApiModel):
    type: Literal["tpe", "random", "cmaes", "grid", "qmc"] = Field(default="tpe", description="Optuna sampler.")
    seed: Int | None = Field(default=None, ge=0, le=UINT32_MAX, description="Seed for reproducible suggestions.")


class Pruner(ApiModel):
    type: Literal["none", "median", "hyperband", "successive-halving"] = Field(
        default="median", description="Optuna pruner: stops unpromising trials early."
    )
    warmup_steps: Int = Field(default=0, ge=0, le=INT32_MAX, description="Steps before a trial may be pruned.")


class StudyStorage(ApiModel):
    """Persistent Optuna storage, so the study survives operator and pod restarts."""

    rules = (exactly_one("pvc", "urlSecretRef", where="storage"),)

    pvc: PvcPath | None = Field(default=None, description="SQLite file inside a PVC (journal storage).")
    url_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key with an RDB URL (postgresql://…); never shown in status."
    )


class TrialTemplate(ApiModel):
    training_job: TrainingJobSpec = Field(description="Spec of each trial's TrainingJob; parameters override it.")


class TuningStudySpec(JobLifecycle):
    rules = (
        ordered("parallelism", "maxTrials", where="study"),
        Rule(
            cel="self.searchSpace.all(p, self.searchSpace.exists_one(q, q.name == p.name))",
            message="searchSpace: parameter names must be unique",
            check=lambda s: len({p.name for p in s.search_space}) == len(s.search_space),
        ),
        immutable("objective", "objective"),
        immutable("searchSpace", "searchSpace"),
    )

    objective: Objective = Field(description="What to optimise.")
    search_space: list[Parameter] = Field(min_length=1, max_length=64, description="Parameters to search.")
    sampler: Sampler = Field(default_factory=Sampler, description="How to suggest parameters.")
    pruner: Pruner = Field(default_factory=Pruner, description="How to stop bad trials early.")
    max_trials: Int = Field(default=20, ge=1, le=10000, description="Trials to run in total.")
    parallelism: Int = Field(default=1, ge=1, le=1000, description="Trials running at once.")
    max_failed_trials: Int = Field(
        default=3, ge=0, le=10000, description="Fail the study after this many failed trials."
    )
    storage: StudyStorage | None = Field(default=None, description="Persistent storage; default: operator-managed.")
    trial_template: TrialTemplate = Field(description="The TrainingJob each trial runs.")
    scheduling: Scheduling = Field(default_factory=Scheduling, description="Queue, priority and placement.")


class Trials(ApiModel):
    total: int = Field(default=0, description="Trials started.")
    running: int = Field(default=0, description="Trials running.")
    succeeded: int = Field(default=0, description="Trials completed.")
    pruned: int = Field(default=0, description="Trials pruned.")
    failed: int = Field(default=0, description="Trials failed.")


class BestTrial(ApiModel):
    number: int = Field(description="Optuna trial number.")
    value: str = Field(description="Objective value (decimal string).")
    parameters: dict[str, str] = Field(default_factory=dict, description="Parameters of the best trial.")
    training_job: str | None = Field(default=None, description="The TrainingJob that ran it.")
    model: str | None = Field(default=None, description="Location of its model.")


class TuningStudyStatus(CommonStatus):
    trials: Trials | None = Field(default=None, description="Trial counts.")
    best_trial: BestTrial | None = Field(default=None, description="Best trial so far.")
    start_time: str | None = Field(default=None, description="When the first trial started.")
    completion_time: str | None = Field(default=None, description="When the study finished.")

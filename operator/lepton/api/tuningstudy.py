"""TuningStudy: Optuna hyper-parameter search whose trials are TrainingJobs.

One tuner pod per study (`python -m lepton.workloads.tuner`) holds the Optuna study in persistent
storage and is the only process that asks and tells; the operator alone creates and stops the trials'
TrainingJobs, and talks to the tuner over HTTP (`api/contract.py`: SyncRequest / SyncReply).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from lepton.api.base import INT32_MAX, UINT32_MAX, ApiModel, Int, Rule, exactly_one, immutable, ordered
from lepton.api.common import CommonStatus, Lineage, LocalObjectReference, PvcPath, Scheduling, SecretKeyRef
from lepton.api.trainingjob import Hyperparameters, TrainingJobSpec

# What a parameter may set in each trial's TrainingJob: a hyperparameter, or the gang's size.
RESOURCE_TARGETS = ("nodes", "gpusPerNode", "procsPerNode")
HYPERPARAMETER_TARGETS = tuple(info.alias or name for name, info in Hyperparameters.model_fields.items())
TARGETS = HYPERPARAMETER_TARGETS + RESOURCE_TARGETS
TOP_TRIALS = 5  # status.topTrials holds at most this many
PARETO_TRIALS = 20  # status.paretoFront holds at most this many
TRIAL_NUMBER_DIGITS = 5  # maxTrials ≤ 10000: trial numbers 0…9999
MAX_NAME = 40  # <study>-<number>-r<retry> stays within a TrainingJob name's 50 characters


class Objective(ApiModel):
    metric: str = Field(
        description="Metric reported by trials: eval_loss, loss (training), or eval_accuracy "
        "(sequence-classification); the value at each evaluation is the intermediate value pruners read.",
        min_length=1,
        max_length=128,
    )
    direction: Literal["minimize", "maximize"] = Field(default="minimize", description="Optimisation direction.")


class Parameter(ApiModel):
    """One dimension of the search space, written into each trial's TrainingJob."""

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
        Rule(
            cel="!(has(self.log) && self.log) || !has(self.step)",
            message="parameter: log and step cannot be combined (Optuna samples a log range continuously)",
            check=lambda p: not p.log or p.step is None,
        ),
    )

    name: str = Field(
        description="What the parameter sets in each trial: a hyperparameter (camelCase, as in the "
        "TrainingJob spec, e.g. learningRate) or nodes, gpusPerNode, procsPerNode; with a trainer template "
        "(your own program), a key of trainer.hyperparameters (e.g. lr, hidden_size).",
        pattern=r"^[a-zA-Z][a-zA-Z0-9_]*$",
        max_length=64,
    )
    type: Literal["float", "int", "categorical"] = Field(
        description="float: FloatDistribution; int: IntDistribution; categorical: CategoricalDistribution."
    )
    low: float | None = Field(default=None, description="Lower bound, inclusive (float, int).")
    high: float | None = Field(default=None, description="Upper bound, inclusive (float, int).")
    log: bool = Field(default=False, description="Sample on a log scale (float, int).")
    step: float | None = Field(default=None, gt=0, description="Discretisation step (float, int; grid needs it).")
    choices: list[str] | None = Field(
        default=None, max_length=256, description="Values (categorical), converted to the field's type."
    )


class Sampler(ApiModel):
    type: Literal["tpe", "random", "cmaes", "grid", "qmc", "gp", "nsga2"] = Field(
        default="tpe",
        description="Optuna sampler: tpe (TPESampler), random, cmaes (one objective), grid (every float "
        "parameter needs a step), qmc (Sobol), gp (Gaussian process), nsga2 (genetic, for several objectives).",
    )
    seed: Int | None = Field(default=None, ge=0, le=UINT32_MAX, description="Seed for reproducible suggestions.")
    startup_trials: Int | None = Field(
        default=None,
        ge=0,
        le=10000,
        description="Random trials before the model-based sampler takes over (tpe, gp, cmaes); default: Optuna's.",
    )


class Pruner(ApiModel):
    rules = (
        Rule(
            cel="self.type != 'percentile' || has(self.percentile)",
            message="pruner: type percentile needs percentile (e.g. 25 keeps the best quarter)",
            check=lambda p: p.type != "percentile" or p.percentile is not None,
        ),
        ordered("minResource", "maxResource", where="pruner"),
    )

    type: Literal["none", "median", "percentile", "hyperband", "successive-halving", "wilcoxon"] = Field(
        default="median",
        description="Optuna pruner: stops unpromising trials early (the trial is suspended, "
        "its checkpoint kept, and it counts as pruned).",
    )
    warmup_steps: Int = Field(
        default=0,
        ge=0,
        le=INT32_MAX,
        description="median, percentile: steps before a trial may be pruned; wilcoxon: its startup steps.",
    )
    startup_trials: Int = Field(
        default=5, ge=0, le=10000, description="median, percentile: finished trials before any pruning."
    )
    interval_steps: Int = Field(default=1, ge=1, le=INT32_MAX, description="median, percentile: steps between checks.")
    percentile: float | None = Field(
        default=None, ge=0, le=100, description="percentile: a trial below this percentile of others is pruned."
    )
    min_resource: Int | None = Field(
        default=None, ge=1, le=INT32_MAX, description="hyperband, successive-halving: steps of the first rung."
    )
    max_resource: Int | None = Field(
        default=None, ge=1, le=INT32_MAX, description="hyperband: steps of a full trial; default: learnt."
    )
    reduction_factor: Int = Field(
        default=3, ge=2, le=100, description="hyperband, successive-halving: 1/factor of trials go on per rung."
    )
    min_early_stopping_rate: Int = Field(default=0, ge=0, le=100, description="successive-halving: s.")
    p_threshold: float = Field(default=0.1, gt=0, lt=1, description="wilcoxon: prune below this p-value.")


class StudyStorage(ApiModel):
    """Persistent Optuna storage, so the study survives tuner and operator restarts. Without it, the
    operator creates a 1Gi PVC NAME-tuner (default StorageClass, deleted with the study) holding a journal."""

    rules = (exactly_one("pvc", "urlSecretRef", where="storage"),)

    pvc: PvcPath | None = Field(default=None, description="Journal file (Optuna JournalStorage) inside a PVC.")
    url_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key with an RDB URL (postgresql://…, mysql+pymysql://…); reaches the tuner only as a "
        "secretKeyRef environment variable, never status or logs.",
    )


# One warm-start parameter set: name -> value as text (bounded, so the apiserver can price its CEL rule).
ParameterSet = Annotated[dict[str, Annotated[str, StringConstraints(max_length=256)]], Field(max_length=64)]


class TrialTemplate(ApiModel):
    training_job: TrainingJobSpec = Field(
        description="Spec of each trial's TrainingJob; the study sets the parameters, pins the Dataset "
        "version, gives each trial its own output directory (output/<study>-<number>), and a "
        "startupDeadlineSeconds of 900 when the template sets none (a trial that cannot start is retried)."
    )


def _objectives(spec: TuningStudySpec) -> list[Objective]:
    return spec.objectives or ([spec.objective] if spec.objective is not None else [])


class TuningStudySpec(ApiModel):
    rules = (
        exactly_one("objective", "objectives", where="study"),
        ordered("parallelism", "maxTrials", where="study"),
        Rule(
            cel="has(self.trialTemplate.trainingJob.trainer) || self.searchSpace.all(p, p.name in ["
            + ", ".join(f"'{t}'" for t in TARGETS)
            + "])",
            message="searchSpace: a parameter's name must be a hyperparameter of the trial's TrainingJob "
            "(learningRate, batchSize, warmupSteps, weightDecay, …) or one of nodes, gpusPerNode, procsPerNode; "
            "a template with trainer (your own program) takes any name",
            check=lambda s: (
                s.trial_template.training_job.trainer is not None or all(p.name in TARGETS for p in s.search_space)
            ),
        ),
        Rule(
            cel="self.searchSpace.all(p, self.searchSpace.exists_one(q, q.name == p.name))",
            message="searchSpace: parameter names must be unique",
            check=lambda s: len({p.name for p in s.search_space}) == len(s.search_space),
        ),
        Rule(
            cel="!has(self.objectives) || size(self.objectives) == 1 "
            "|| (has(self.pruner) && self.pruner.type == 'none')",
            message="pruner: Optuna cannot prune a study with several objectives; set pruner.type: none",
            check=lambda s: len(_objectives(s)) <= 1 or s.pruner.type == "none",
        ),
        Rule(
            cel="!has(self.goal) || !has(self.objectives) || size(self.objectives) == 1",
            message="goal: a goal value needs a single objective",
            check=lambda s: s.goal is None or len(_objectives(s)) <= 1,
        ),
        Rule(
            cel="!has(self.sampler) || self.sampler.type != 'cmaes' "
            "|| !has(self.objectives) || size(self.objectives) == 1",
            message="sampler: cmaes optimises one objective; use nsga2, tpe or gp for several",
            check=lambda s: s.sampler.type != "cmaes" or len(_objectives(s)) <= 1,
        ),
        Rule(
            cel="!has(self.sampler) || self.sampler.type != 'grid' "
            "|| self.searchSpace.all(p, p.type != 'float' || has(p.step))",
            message="sampler: grid needs a step on every float parameter",
            check=lambda s: s.sampler.type != "grid" or all(p.type != "float" or p.step for p in s.search_space),
        ),
        Rule(
            cel="!has(self.enqueue) || self.enqueue.all(e, e.all(k, self.searchSpace.exists(p, p.name == k)))",
            message="enqueue: every parameter set may name only parameters of the searchSpace",
            check=lambda s: all(k in {p.name for p in s.search_space} for e in s.enqueue for k in e),
        ),
        immutable("objective", "objective"),
        immutable("objectives", "objectives"),
        immutable("searchSpace", "searchSpace"),
        immutable("sampler", "sampler"),
        immutable("storage", "storage"),
    )

    objective: Objective | None = Field(default=None, description="What to optimise (one objective).")
    objectives: list[Objective] | None = Field(
        default=None,
        min_length=1,
        max_length=4,
        description="Several objectives: the study finds their Pareto front (status.paretoFront); no pruning.",
    )
    search_space: list[Parameter] = Field(min_length=1, max_length=64, description="Parameters to search.")
    sampler: Sampler = Field(default_factory=Sampler, description="How to suggest parameters.")
    pruner: Pruner = Field(default_factory=Pruner, description="How to stop bad trials early.")
    max_trials: Int = Field(default=20, ge=1, le=10000, description="Trials to finish in total; may change mid-run.")
    parallelism: Int = Field(default=1, ge=1, le=1000, description="Trials running at once; may change mid-run.")
    max_failed_trials: Int = Field(
        default=3,
        ge=0,
        le=10000,
        description="Fail the study when more trials than this failed in training "
        "(infrastructure failures are retried and do not count).",
    )
    max_duration_seconds: Int | None = Field(
        default=None,
        ge=1,
        le=INT32_MAX,
        description="Budget: after this long, running trials are stopped "
        "(counted as pruned) and the study succeeds with the best so far.",
    )
    goal: float | None = Field(
        default=None,
        description="End the study (Succeeded) once a trial reaches this objective value "
        "(≤ when minimizing, ≥ when maximizing).",
    )
    enqueue: list[ParameterSet] = Field(
        default_factory=list,
        max_length=100,
        description="Warm start: parameter sets tried first, in "
        "order (name -> value as text; parameters left out are sampled).",
    )
    from_study: LocalObjectReference | None = Field(
        default=None,
        description="Warm start: the finished top trials of this TuningStudy (same namespace) "
        "are added to this study before it asks for new ones; waits until that study has finished.",
    )
    storage: StudyStorage | None = Field(
        default=None, description="Where Optuna keeps the study; default: a journal on a PVC the operator creates."
    )
    trial_template: TrialTemplate = Field(description="The TrainingJob each trial runs.")
    trial_retention: Int = Field(
        default=10,
        ge=1,
        le=10000,
        description="Finished trial TrainingJobs kept (the best and the newest); "
        "older ones are deleted, their results stay in the study's storage.",
    )
    suspend: bool = Field(
        default=False,
        description="Stop asking for trials, suspend running ones (checkpoints kept) and stop the "
        "tuner; false again resumes them.",
    )
    active_deadline_seconds: Int | None = Field(
        default=None, ge=1, le=INT32_MAX,
        description="Fail with DeadlineExceeded when the study runs longer than this (suspended time included).",
    )  # fmt: skip
    ttl_seconds_after_finished: Int | None = Field(
        default=None, ge=0, le=INT32_MAX,
        description="Delete the study (and its trials) this many seconds after it succeeds or fails.",
    )  # fmt: skip
    backoff_limit: Int = Field(
        default=3,
        ge=0,
        le=100,
        description="Retries per trial after infrastructure failures (unschedulable, "
        "image pull, preemption), which do not count as failed trials.",
    )
    scheduling: Scheduling = Field(
        default_factory=Scheduling, description="Placement of the tuner pod (the trials use the template's)."
    )

    def objective_list(self) -> list[Objective]:
        return _objectives(self)

    def trial_budget(self) -> int:
        """maxTrials, or the grid's size when a grid search has fewer points (Optuna would repeat them)."""
        if self.sampler.type != "grid":
            return self.max_trials
        size = 1
        for p in self.search_space:
            if p.type == "categorical":
                size *= len(p.choices or [])
            elif p.low is not None and p.high is not None:
                step = p.step or 1
                size *= int((p.high - p.low) / step + 1e-9) + 1  # the grid's points: low, low + step, … ≤ high
        return max(1, min(self.max_trials, size))


class Trials(ApiModel):
    total: int = Field(default=0, description="Trials the study has asked for (Optuna trial numbers used).")
    running: int = Field(default=0, description="Trials running.")
    succeeded: int = Field(default=0, description="Trials completed with an objective value.")
    pruned: int = Field(default=0, description="Trials stopped early (by the pruner, or when the study ended).")
    failed: int = Field(default=0, description="Trials whose training failed (counted against maxFailedTrials).")
    retried: int = Field(default=0, description="Trial runs retried after infrastructure failures.")


class TrialSummary(ApiModel):
    number: int = Field(description="Optuna trial number.")
    value: str | None = Field(default=None, description="Objective value (decimal string), one objective.")
    values: list[str] | None = Field(default=None, description="Objective values, several objectives.")
    parameters: dict[str, str] = Field(default_factory=dict, description="Its parameters.")
    training_job: str | None = Field(default=None, description="The TrainingJob that ran it.")


class BestTrial(ApiModel):
    number: int = Field(description="Optuna trial number.")
    value: str = Field(description="Objective value (decimal string; several objectives: the first).")
    values: list[str] | None = Field(default=None, description="Every objective value, several objectives.")
    parameters: dict[str, str] = Field(default_factory=dict, description="Parameters of the best trial.")
    training_job: str | None = Field(default=None, description="The TrainingJob that ran it.")
    model: str | None = Field(
        default=None, description="Location of its model: what modelFrom.tuningStudy resolves to."
    )


class TuningStudyStatus(CommonStatus):
    trials: Trials | None = Field(default=None, description="Trial counts.")
    trials_done: str | None = Field(default=None, description="Finished trials / maxTrials, e.g. '7/12'.")
    best_trial: BestTrial | None = Field(default=None, description="Best trial so far.")
    top_trials: list[TrialSummary] = Field(
        default_factory=list, max_length=TOP_TRIALS, description="The best finished trials, best first."
    )
    pareto_front: list[TrialSummary] = Field(
        default_factory=list, max_length=PARETO_TRIALS, description="Several objectives: Pareto-optimal trials."
    )
    dataset_version: str | None = Field(
        default=None, description="Version of the referenced Dataset every trial trains on, pinned at the start."
    )
    lineage: Lineage | None = Field(
        default=None, description="What every trial is built from: the data version and the model trials start from."
    )
    tuner: str | None = Field(default=None, description="The tuner pod holding the Optuna study.")
    start_time: str | None = Field(default=None, description="When the study started.")
    completion_time: str | None = Field(default=None, description="When the study finished.")


def trial_name(study: str, number: int, retry: int = 0) -> str:
    """A trial's TrainingJob: NAME-<number>, and NAME-<number>-r<k> for its k-th infrastructure retry."""
    return f"{study}-{number}" if retry == 0 else f"{study}-{number}-r{retry}"

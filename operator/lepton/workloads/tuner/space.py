"""The study's spec in Optuna's terms: distributions, parameter values written as text, the sampler
and the pruner. Pure construction, no storage."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.pruners import (
    BasePruner,
    HyperbandPruner,
    MedianPruner,
    NopPruner,
    PercentilePruner,
    SuccessiveHalvingPruner,
    WilcoxonPruner,
)
from optuna.samplers import (
    BaseSampler,
    CmaEsSampler,
    GPSampler,
    NSGAIISampler,
    QMCSampler,
    RandomSampler,
    TPESampler,
)
from optuna.trial import FrozenTrial, TrialState

from lepton.api.tuner import ParamValue
from lepton.api.tuningstudy import Parameter, Pruner, Sampler

GridValue = str | int | float
# What a sampler needs beyond Optuna itself, imported only when it samples: missing, it fails at the
# first model-based suggestion (GPSampler after its startup trials), so the tuner refuses at start.
NEEDS = {"gp": ("torch", "scipy"), "cmaes": ("cmaes",), "qmc": ("scipy",)}


class SpaceError(ValueError):
    """A spec the tuner cannot turn into Optuna objects (a configuration error: exit code 2)."""


def distribution(p: Parameter) -> BaseDistribution:
    """One parameter's Optuna distribution."""
    if p.type == "categorical":
        return CategoricalDistribution(list(p.choices or []))
    if p.low is None or p.high is None:
        raise SpaceError(f"parameter {p.name}: {p.type} needs low and high")
    if p.type == "int":
        step = int(p.step) if p.step is not None else 1
        return IntDistribution(int(p.low), int(p.high), log=p.log, step=step or 1)
    return FloatDistribution(p.low, p.high, log=p.log, step=p.step)


def distributions(space: Sequence[Parameter]) -> dict[str, BaseDistribution]:
    return {p.name: distribution(p) for p in space}


def value_of(p: Parameter, text: str) -> ParamValue:
    """A parameter value written as text (enqueue, warm start) as Optuna holds it: int for an int
    parameter, float for a float one, the choice itself for a categorical one; it must lie in the space."""
    value: ParamValue
    text = text.strip()
    if p.type == "categorical":
        value = text
    else:
        try:
            number = float(text)
        except ValueError:
            raise SpaceError(f"parameter {p.name}: {text!r} is not a number") from None
        if not math.isfinite(number):
            raise SpaceError(f"parameter {p.name}: {text!r} is not a finite number")
        if p.type == "int" and not number.is_integer():
            raise SpaceError(f"parameter {p.name}: {text!r} is not an integer")
        value = int(number) if p.type == "int" else number
    dist = distribution(p)
    if (p.type == "categorical" and value not in (p.choices or [])) or not dist._contains(dist.to_internal_repr(value)):
        raise SpaceError(f"parameter {p.name}: {text!r} is not in its search space ({_describe(p)})")
    return value


def values_of(space: Sequence[Parameter], texts: Mapping[str, str]) -> dict[str, ParamValue]:
    """A parameter set written as text; every name must be a parameter of the space."""
    by_name = {p.name: p for p in space}
    unknown = sorted(set(texts) - set(by_name))
    if unknown:
        raise SpaceError(f"unknown parameter(s) {', '.join(unknown)}: the search space has {', '.join(by_name)}")
    return {name: value_of(by_name[name], text) for name, text in texts.items()}


def _describe(p: Parameter) -> str:
    if p.type == "categorical":
        return "one of " + ", ".join(p.choices or [])
    extra = (", log" if p.log else "") + (f", step {p.step:g}" if p.step is not None else "")
    return f"{p.type} in [{p.low:g}, {p.high:g}]{extra}"


def grid(space: Sequence[Parameter]) -> dict[str, list[GridValue]]:
    """The grid sampler's points: int low..high by step (1), float low..high by step, the choices."""
    points: dict[str, list[GridValue]] = {}
    for p in space:
        if p.type == "categorical":
            points[p.name] = list(p.choices or [])
        elif p.low is None or p.high is None or (p.type == "float" and p.step is None):
            raise SpaceError(f"parameter {p.name}: the grid sampler needs low, high and (float) a step")
        elif p.type == "int":
            points[p.name] = list(range(int(p.low), int(p.high) + 1, int(p.step or 1) or 1))
        else:  # decimal arithmetic: 0.1 + 2 * 0.1 is 0.3, not 0.30000000000000004
            low, step = Decimal(repr(p.low)), Decimal(repr(p.step))
            count = int((Decimal(repr(p.high)) - low) / step)
            points[p.name] = [float(low + i * step) for i in range(count + 1)]
    return points


class AskTellGridSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler, less its stop at the last grid point: its `after_trial` calls
    `study.stop()`, which raises outside `optimize` (so a `tell` of the last point would raise after
    storing it). The tuner's caller decides when the study ends (maxTrials)."""

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        return


def _missing(kind: str) -> list[str]:
    return [m for m in NEEDS.get(kind, ()) if importlib.util.find_spec(m) is None]


def sampler(spec: Sampler, space: Sequence[Parameter]) -> BaseSampler:
    """The spec's sampler, seeded; startupTrials where the sampler has them (tpe, gp, cmaes)."""
    missing = _missing(spec.type)
    if missing:
        raise SpaceError(f"sampler {spec.type} needs {', '.join(missing)}, which is not installed here")
    seed = spec.seed
    startup: dict[str, Any] = {} if spec.startup_trials is None else {"n_startup_trials": spec.startup_trials}
    if spec.type == "tpe":
        return TPESampler(seed=seed, **startup)
    if spec.type == "random":
        return RandomSampler(seed=seed)
    if spec.type == "cmaes":
        return CmaEsSampler(seed=seed, **startup)
    if spec.type == "grid":
        return AskTellGridSampler(grid(space), seed=seed)
    if spec.type == "qmc":
        return QMCSampler(seed=seed)
    if spec.type == "gp":
        return GPSampler(seed=seed, **startup)
    if spec.type == "nsga2":
        return NSGAIISampler(seed=seed)
    raise SpaceError(f"unknown sampler {spec.type!r}")


def pruner(spec: Pruner) -> BasePruner:
    """The spec's pruner with its parameters (Optuna's defaults where the spec leaves one out)."""
    if spec.type == "none":
        return NopPruner()
    if spec.type == "median":
        return MedianPruner(
            n_startup_trials=spec.startup_trials, n_warmup_steps=spec.warmup_steps, interval_steps=spec.interval_steps
        )
    if spec.type == "percentile":
        if spec.percentile is None:
            raise SpaceError("pruner percentile needs percentile")
        return PercentilePruner(
            spec.percentile,
            n_startup_trials=spec.startup_trials,
            n_warmup_steps=spec.warmup_steps,
            interval_steps=spec.interval_steps,
        )
    if spec.type == "hyperband":
        return HyperbandPruner(
            min_resource=spec.min_resource or 1,
            max_resource=spec.max_resource or "auto",
            reduction_factor=spec.reduction_factor,
        )
    if spec.type == "successive-halving":
        return SuccessiveHalvingPruner(
            min_resource=spec.min_resource or "auto",
            reduction_factor=spec.reduction_factor,
            min_early_stopping_rate=spec.min_early_stopping_rate,
        )
    if spec.type == "wilcoxon":  # Optuna's WilcoxonPruner waits for steps, not trials: warmupSteps
        return WilcoxonPruner(p_threshold=spec.p_threshold, n_startup_steps=spec.warmup_steps)
    raise SpaceError(f"unknown pruner {spec.type!r}")

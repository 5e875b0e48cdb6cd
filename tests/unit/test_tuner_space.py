"""The search space, sampler and pruner of a TuningStudy in Optuna's terms, table by table (the one
unit test that imports Optuna: the tuner's own translation of the spec)."""

from __future__ import annotations

import importlib.util
import warnings
from typing import Any

import optuna
import pytest
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
    CmaEsSampler,
    GPSampler,
    GridSampler,
    NSGAIISampler,
    QMCSampler,
    RandomSampler,
    TPESampler,
)

from lepton.api.tuningstudy import Parameter, Pruner, Sampler
from lepton.workloads.tuner import space

optuna.logging.set_verbosity(optuna.logging.WARNING)


def quietly(make: Any) -> Any:
    """`make()` without the warning Optuna gives when it shortens a range to whole steps."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make()


def param(name: str = "learningRate", type: str = "float", **fields: Any) -> Parameter:
    return Parameter.model_validate({"name": name, "type": type, **fields})


LR = param(low=1e-4, high=1e-1, log=True)
BATCH = param("batchSize", "int", low=8, high=64, step=8)
CHOICE = param("batchSize", "categorical", choices=["16", "32", "64"])


@pytest.mark.parametrize(
    ("parameter", "expected"),
    [
        (param(low=0.001, high=0.1), FloatDistribution(0.001, 0.1)),
        (param(low=1e-5, high=1e-1, log=True), FloatDistribution(1e-5, 1e-1, log=True)),
        (param("weightDecay", low=0, high=1, step=0.25), FloatDistribution(0.0, 1.0, step=0.25)),
        (
            param("weightDecay", low=0, high=1, step=0.3),
            quietly(lambda: FloatDistribution(0.0, 1.0, step=0.3)),
        ),  # high 0.9
        (param("warmupSteps", "int", low=0, high=100), IntDistribution(0, 100)),
        (param("batchSize", "int", low=1, high=1024, log=True), IntDistribution(1, 1024, log=True)),
        (param("batchSize", "int", low=8, high=64, step=8), IntDistribution(8, 64, step=8)),
        (param("nodes", "int", low=1.0, high=4.0), IntDistribution(1, 4)),
        (param("warmupSteps", "int", low=0, high=10, step=0.5), IntDistribution(0, 10, step=1)),  # int(0.5) or 1
        (
            param("lrScheduler", "categorical", choices=["linear", "cosine"]),
            CategoricalDistribution(["linear", "cosine"]),
        ),
        (CHOICE, CategoricalDistribution(["16", "32", "64"])),
    ],
    ids=lambda x: x.model_dump_json(exclude_none=True) if isinstance(x, Parameter) else None,
)
def test_every_parameter_form_maps_to_its_exact_distribution(parameter: Parameter, expected: BaseDistribution) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna warns when it shortens a range to whole steps
        got = space.distribution(parameter)
    assert type(got) is type(expected)
    assert got == expected
    assert space.distributions([LR, BATCH]) == {"learningRate": space.distribution(LR),
                                                "batchSize": space.distribution(BATCH)}  # fmt: skip


def test_categorical_choices_stay_text() -> None:
    dist = space.distribution(CHOICE)
    assert isinstance(dist, CategoricalDistribution)
    assert dist.choices == ("16", "32", "64")
    assert all(type(c) is str for c in dist.choices)


@pytest.mark.parametrize(
    ("parameter", "text", "expected"),
    [
        (BATCH, "16", 16),
        (BATCH, " 64 ", 64),
        (BATCH, "16.0", 16),
        (param("nodes", "int", low=1, high=4), "3", 3),
        (LR, "0.001", 0.001),
        (LR, "1e-3", 0.001),
        (LR, "0.1", 0.1),
        (param("weightDecay", low=0, high=1, step=0.1), "0.3", 0.3),
        (CHOICE, "32", "32"),
        (param("lrScheduler", "categorical", choices=["linear", "cosine"]), "cosine", "cosine"),
    ],
)
def test_text_becomes_the_value_optuna_holds(parameter: Parameter, text: str, expected: Any) -> None:
    value = space.value_of(parameter, text)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("parameter", "text", "words"),
    [
        (BATCH, "sixteen", "batchSize: 'sixteen' is not a number"),
        (BATCH, "16.5", "batchSize: '16.5' is not an integer"),
        (BATCH, "12", "batchSize: '12' is not in its search space (int in [8, 64], step 8)"),
        (BATCH, "128", "not in its search space"),
        (LR, "nan", "learningRate: 'nan' is not a finite number"),
        (LR, "inf", "is not a finite number"),
        (LR, "0.5", "learningRate: '0.5' is not in its search space (float in [0.0001, 0.1], log)"),
        (param("weightDecay", low=0, high=1, step=0.25), "0.3", "not in its search space"),
        (CHOICE, "48", "batchSize: '48' is not in its search space (one of 16, 32, 64)"),
    ],
)
def test_text_outside_the_space_is_refused_with_its_reason(parameter: Parameter, text: str, words: str) -> None:
    with pytest.raises(space.SpaceError) as caught:
        space.value_of(parameter, text)
    assert words in str(caught.value)


def test_a_parameter_set_names_only_parameters_of_the_space() -> None:
    assert space.values_of([LR, BATCH], {"batchSize": "16", "learningRate": "0.01"}) == {
        "batchSize": 16, "learningRate": 0.01,
    }  # fmt: skip
    with pytest.raises(space.SpaceError, match=r"unknown parameter\(s\) epochs: the search space has learningRate"):
        space.values_of([LR], {"epochs": "3"})


@pytest.mark.parametrize(
    ("parameter", "points"),
    [
        (param("warmupSteps", "int", low=1, high=4), [1, 2, 3, 4]),
        (param("batchSize", "int", low=8, high=32, step=8), [8, 16, 24, 32]),
        (param("batchSize", "int", low=8, high=30, step=8), [8, 16, 24]),
        (param("weightDecay", low=0, high=0.3, step=0.1), [0.0, 0.1, 0.2, 0.3]),
        (param(low=0.001, high=0.003, step=0.001), [0.001, 0.002, 0.003]),
        (param("weightDecay", low=0, high=1, step=0.3), [0.0, 0.3, 0.6, 0.9]),
        (CHOICE, ["16", "32", "64"]),
    ],
)
def test_grid_points(parameter: Parameter, points: list[Any]) -> None:
    got = space.grid([parameter])[parameter.name]
    assert got == points
    assert [type(p) for p in got] == [type(p) for p in points]


def test_grid_needs_a_step_on_floats() -> None:
    with pytest.raises(space.SpaceError, match="learningRate: the grid sampler needs low, high and"):
        space.grid([LR])


def first_suggestion(sampler: optuna.samplers.BaseSampler, directions: int = 1) -> dict[str, Any]:
    study = optuna.create_study(sampler=sampler, directions=["minimize"] * directions)
    return study.ask(space.distributions([param(low=0.001, high=0.1, step=0.001), BATCH])).params


@pytest.mark.parametrize(
    ("kind", "cls", "startup"),
    [
        ("tpe", TPESampler, 7),
        ("random", RandomSampler, None),
        ("cmaes", CmaEsSampler, 7),
        ("grid", GridSampler, None),
        ("qmc", QMCSampler, None),
        ("gp", GPSampler, 7),
        ("nsga2", NSGAIISampler, None),
    ],
)
def test_every_sampler_type_is_its_class_seeded(kind: str, cls: type, startup: int | None) -> None:
    spec = Sampler.model_validate({"type": kind, "seed": 3, "startupTrials": 7})
    space_ = [param(low=0.001, high=0.1, step=0.001), BATCH]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        made = [space.sampler(spec, space_) for _ in range(2)]
        other = space.sampler(spec.model_copy(update={"seed": 4}), space_)
        assert type(made[0]) is cls or (kind == "grid" and type(made[0]) is space.AskTellGridSampler)
        assert isinstance(made[0], cls)
        if startup is not None:
            assert made[0]._n_startup_trials == startup  # type: ignore[attr-defined]
        # The seed reaches the sampler: the same seed suggests the same first point, another seed not.
        assert first_suggestion(made[0]) == first_suggestion(made[1]) != first_suggestion(other)


def test_startup_trials_left_out_keep_optunas_default() -> None:
    assert space.sampler(Sampler(type="tpe"), [LR])._n_startup_trials == 10  # type: ignore[attr-defined]
    assert space.sampler(Sampler(type="cmaes"), [LR])._n_startup_trials == 1  # type: ignore[attr-defined]


def test_a_sampler_whose_library_is_missing_is_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "torch" else real(name))
    with pytest.raises(space.SpaceError, match="sampler gp needs torch, which is not installed here"):
        space.sampler(Sampler(type="gp"), [LR])
    assert isinstance(space.sampler(Sampler(type="tpe"), [LR]), TPESampler)


def test_grid_sampler_covers_the_grid_once_and_its_last_tell_does_not_raise() -> None:
    parameter = param("batchSize", "int", low=8, high=32, step=8)
    study = optuna.create_study(sampler=space.sampler(Sampler(type="grid", seed=1), [parameter]))
    trials = [study.ask(space.distributions([parameter])) for _ in range(4)]
    for t in trials:
        study.tell(t, 1.0)  # Optuna's own GridSampler calls study.stop() here, which raises outside optimize()
    assert sorted(t.params["batchSize"] for t in study.trials) == [8, 16, 24, 32]
    plain = optuna.create_study(sampler=optuna.samplers.GridSampler({"batchSize": [8]}))
    trial = plain.ask(space.distributions([parameter]))
    with pytest.raises(RuntimeError, match=r"Study\.stop"):
        plain.tell(trial, 1.0)


@pytest.mark.parametrize(
    ("fields", "cls", "attributes"),
    [
        ({"type": "none"}, NopPruner, {}),
        ({"type": "median"}, MedianPruner, {"_n_startup_trials": 5, "_n_warmup_steps": 0, "_interval_steps": 1}),
        ({"type": "median", "startupTrials": 2, "warmupSteps": 30, "intervalSteps": 10}, MedianPruner,
         {"_n_startup_trials": 2, "_n_warmup_steps": 30, "_interval_steps": 10, "_percentile": 50.0}),
        ({"type": "percentile", "percentile": 25, "startupTrials": 3, "warmupSteps": 4, "intervalSteps": 5},
         PercentilePruner, {"_percentile": 25.0, "_n_startup_trials": 3, "_n_warmup_steps": 4, "_interval_steps": 5}),
        ({"type": "hyperband"}, HyperbandPruner, {"_min_resource": 1, "_max_resource": "auto", "_reduction_factor": 3}),
        ({"type": "hyperband", "minResource": 10, "maxResource": 270, "reductionFactor": 3}, HyperbandPruner,
         {"_min_resource": 10, "_max_resource": 270, "_reduction_factor": 3}),
        ({"type": "successive-halving"}, SuccessiveHalvingPruner,
         {"_min_resource": None, "_reduction_factor": 3, "_min_early_stopping_rate": 0}),  # None: "auto"
        ({"type": "successive-halving", "minResource": 5, "reductionFactor": 4, "minEarlyStoppingRate": 1},
         SuccessiveHalvingPruner, {"_min_resource": 5, "_reduction_factor": 4, "_min_early_stopping_rate": 1}),
        ({"type": "wilcoxon", "pThreshold": 0.05, "warmupSteps": 3}, WilcoxonPruner,
         {"_p_threshold": 0.05, "_n_startup_steps": 3}),
    ],
)  # fmt: skip
def test_every_pruner_type_is_its_class_with_its_parameters(
    fields: dict[str, Any], cls: type[BasePruner], attributes: dict[str, Any]
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        made = space.pruner(Pruner.model_validate(fields))
    assert type(made) is cls
    assert {name: getattr(made, name) for name in attributes} == attributes

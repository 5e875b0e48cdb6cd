"""How a trial's parameters become its TrainingJob spec (pure): the API's meaning of a search-space
parameter, shared by the operator, its status decisions and the local backend."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from lepton.api.trainingjob import TrainingJobSpec
from lepton.api.tuningstudy import RESOURCE_TARGETS

DEFAULT_STARTUP_DEADLINE = 900  # seconds, for a template that sets no startupDeadlineSeconds
ParamValue = float | int | str


class TrialSpecError(ValueError):
    """The parameters make a TrainingJob spec that does not validate (e.g. a choice its field refuses)."""


def parameter_text(value: ParamValue) -> str:
    """How status and annotations show a parameter: floats with up to 6 significant digits."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _typed(value: ParamValue, field: str, template: Mapping[str, Any]) -> Any:
    """A parameter as its TrainingJob field wants it: categorical choices arrive as text."""
    if isinstance(value, str):
        for convert in (int, float):
            try:
                number = convert(value)
            except ValueError:
                continue
            return number if math.isfinite(number) else value
        return value
    if isinstance(value, float) and value.is_integer() and isinstance(template.get(field), int):
        return int(value)
    return value


def trial_spec(template: TrainingJobSpec, parameters: Mapping[str, ParamValue], output_leaf: str,
               dataset_version: str | None) -> TrainingJobSpec:  # fmt: skip
    """The template with `parameters` applied; raises TrialSpecError when the result is invalid."""
    wire = template.to_wire()
    program = dict(wire["trainer"]) if "trainer" in wire else None  # your own program: its hyperparameters
    hyper = dict((program or wire).get("hyperparameters") or {})
    for name, value in parameters.items():
        if name in RESOURCE_TARGETS:
            wire[name] = _typed(value, name, wire)
            if name == "nodes":  # a searched size is a fixed size
                wire.pop("minNodes", None)
                wire.pop("maxNodes", None)
        else:
            hyper[name] = _typed(value, name, hyper)
    if program is not None:
        wire["trainer"] = {**program, "hyperparameters": hyper}
    else:
        wire["hyperparameters"] = hyper
    out = dict(wire["output"])
    if "pvc" in out:
        pvc = dict(out["pvc"])
        pvc["path"] = f"{str(pvc.get('path') or '').rstrip('/')}/{output_leaf}".lstrip("/")
        out["pvc"] = pvc
    elif "uri" in out:
        out["uri"] = f"{str(out['uri']).rstrip('/')}/{output_leaf}"
    wire["output"] = out
    data = dict(wire.get("data") or {})
    if "datasetRef" in data and dataset_version and not data["datasetRef"].get("version"):
        data["datasetRef"] = {**data["datasetRef"], "version": dataset_version}
    if data:
        wire["data"] = data
    # A trial that cannot start (unschedulable, image pull) fails after this and is retried as an
    # infrastructure failure, instead of waiting forever.
    wire.setdefault("startupDeadlineSeconds", DEFAULT_STARTUP_DEADLINE)
    try:
        return TrainingJobSpec.model_validate(wire)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise TrialSpecError(f"the parameters make an invalid TrainingJob: {problems}") from exc

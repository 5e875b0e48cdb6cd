"""The order `leptonctl run -f DIR` runs a folder in: each resource after those it references, whatever
the order of the files; a cycle or a name given twice is refused in one line."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest
import yaml

from lepton.api.kinds import Resource
from lepton.api.validation import parse
from lepton.local import LocalRunError
from lepton.local.pipeline import ordered
from tests.conftest import EXAMPLES

PIPELINE = [parse(yaml.safe_load(p.read_text())) for p in sorted((EXAMPLES / "pipeline").glob("*.yaml"))]
EXPECTED = ["Dataset", "TuningStudy", "TrainingJob", "InferenceService"]


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))), ids=str)
def test_every_file_order_runs_in_dependency_order(order: tuple[int, ...]) -> None:
    assert [r.kind for r in ordered([PIPELINE[i] for i in order])] == EXPECTED


def renamed(resource: Resource, **changes: Any) -> Resource:
    doc = copy.deepcopy(resource.to_wire())
    for path, value in changes.items():
        node = doc
        *parents, leaf = path.split("__")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return parse(doc)


def test_unrelated_resources_keep_their_order_and_outside_references_wait_for_earlier_runs() -> None:
    job = next(r for r in PIPELINE if r.kind == "TrainingJob")
    other = renamed(job, metadata__name="other", spec__model={"trainingJob": {"name": "trained-before"}})
    assert [r.metadata.name for r in ordered([other, job])] == ["other", "pipeline-final"]


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        (lambda: [PIPELINE[0], PIPELINE[0]], "Dataset 'pipeline-tickets' is given twice"),
        (lambda: [renamed(next(r for r in PIPELINE if r.kind == "TrainingJob"), metadata__name="a",
                          spec__model={"trainingJob": {"name": "b"}}),
                  renamed(next(r for r in PIPELINE if r.kind == "TrainingJob"), metadata__name="b",
                          spec__model={"trainingJob": {"name": "a"}})],
         "a cycle: TrainingJob a -> TrainingJob b -> TrainingJob a"),
    ],
    ids=["twice", "cycle"],
)  # fmt: skip
def test_what_cannot_be_ordered_is_refused(resources: Any, message: str) -> None:
    with pytest.raises(LocalRunError, match=message):
        ordered(resources())

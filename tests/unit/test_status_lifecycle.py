"""The status a resource gets before it has children: accepted, or stalled on an invalid spec."""

from __future__ import annotations

import pytest

from lepton.api.conditions import get_condition
from lepton.api.trainingjob import TrainingJobStatus
from lepton.status.lifecycle import accepted, invalid_spec

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def conditions(status: TrainingJobStatus) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in status.conditions}


@pytest.mark.parametrize(
    ("step", "phase", "expected"),
    [
        (
            "accepted",
            "Pending",
            {
                "Ready": ("False", "AwaitingController"),
                "Reconciling": ("True", "AwaitingController"),
                "Stalled": ("False", "Reconciled"),
            },
        ),
        (
            "invalid",
            "Invalid",
            {
                "Ready": ("False", "InvalidSpec"),
                "Reconciling": ("False", "InvalidSpec"),
                "Stalled": ("True", "InvalidSpec"),
            },
        ),
    ],
)
def test_conditions_tell_one_story(step: str, phase: str, expected: dict[str, tuple[str, str]]) -> None:
    new = (
        accepted(TrainingJobStatus(), 4, "TrainingJob", T0)
        if step == "accepted"
        else invalid_spec(TrainingJobStatus(), 4, "spec.nodes: bad", T0)
    )
    assert new.phase == phase and new.observed_generation == 4
    assert conditions(new) == expected
    assert all(c.observed_generation == 4 for c in new.conditions)


def test_fixing_the_spec_clears_the_stall_and_keeps_kind_fields() -> None:
    stalled = invalid_spec(TrainingJobStatus(restarts=2), 1, "bad", T0)
    fixed = accepted(stalled, 2, "TrainingJob", T1)
    assert fixed.phase == "Pending" and fixed.restarts == 2
    stall = get_condition(fixed.conditions, "Stalled")
    assert stall is not None and stall.status == "False" and stall.last_transition_time == T1


def test_reconciling_again_changes_nothing() -> None:
    once = accepted(TrainingJobStatus(), 1, "TrainingJob", T0)
    assert accepted(once, 1, "TrainingJob", T1) == once


def test_invalid_message_says_what_to_fix() -> None:
    new = invalid_spec(TrainingJobStatus(), 1, "spec.nodes: Invalid value: 0", T0)
    ready = get_condition(new.conditions, "Ready")
    assert ready is not None and "spec.nodes" in ready.message

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


# (the stall's reason, the phase before) -> after `recovered`: Stalled, phase
RECOVERIES = [
    ("NameConflict", "Stalled", ("False", "Reconciled"), "Pending"),
    ("ChildRejected", "Stalled", ("False", "Reconciled"), "Pending"),
    ("ReconcileError", "Running", ("False", "Reconciled"), "Running"),
    ("InvalidSpec", "Invalid", ("True", "InvalidSpec"), "Invalid"),  # the user's to fix, not the kernel's
]


@pytest.mark.parametrize(("reason", "phase", "stalled_after", "phase_after"), RECOVERIES)
def test_a_kernel_stall_ends_once_a_pass_goes_through(
    reason: str, phase: str, stalled_after: tuple[str, str], phase_after: str
) -> None:
    from lepton.status.lifecycle import is_kernel_stall, kernel_stall, recovered

    status = kernel_stall(TrainingJobStatus(), 4, reason, "why", T0).model_copy(update={"phase": phase})
    assert is_kernel_stall(status) == (reason != "InvalidSpec")
    after = recovered(status, T1)
    assert (conditions(after)["Stalled"], after.phase) == (stalled_after, phase_after)
    untouched = TrainingJobStatus(phase="Running")
    assert recovered(untouched, T1) is untouched  # no stall: the very same status (no events derived)


def test_a_kernel_stall_keeps_the_rest_of_the_status() -> None:
    from lepton.status.lifecycle import kernel_stall

    before = TrainingJobStatus(phase="Running", restarts=2)
    after = kernel_stall(before, 3, "ChildRejected", "the apiserver rejected Pod 'x'", T0)
    assert (after.phase, after.restarts, after.observed_generation) == ("Stalled", 2, 3)
    stall = get_condition(after.conditions, "Stalled")
    assert stall is not None and (stall.status, stall.reason) == ("True", "ChildRejected")

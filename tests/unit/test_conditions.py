"""set_condition follows kstatus: transition time moves only when the status flips."""

from __future__ import annotations

import pytest

from lepton.api.conditions import Condition, get_condition, is_true, set_condition

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def ready(status: str, reason: str = "R", message: str = "") -> list[Condition]:
    return set_condition([], "Ready", status, reason, message, now=T0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("before", "status", "reason", "message", "expected_time"),
    [
        ("False", "False", "R", "", T0),  # nothing changed
        ("False", "False", "Other", "new words", T0),  # reason/message change is not a transition
        ("False", "True", "R", "", T1),  # a flip moves the time
        ("True", "Unknown", "R", "", T1),
    ],
)
def test_last_transition_time_moves_only_on_a_flip(
    before: str, status: str, reason: str, message: str, expected_time: str
) -> None:
    after = set_condition(ready(before), "Ready", status, reason, message, now=T1)  # type: ignore[arg-type]
    (cond,) = after
    assert (cond.status, cond.reason, cond.message) == (status, reason, message)
    assert cond.last_transition_time == expected_time


def test_set_condition_is_pure_and_keeps_order() -> None:
    conds = set_condition(ready("False"), "Stalled", "False", "Ok", now=T0)
    snapshot = [c.model_copy() for c in conds]
    updated = set_condition(conds, "Ready", "True", "Done", now=T1, observed_generation=3)
    assert conds == snapshot
    assert [c.type for c in updated] == ["Ready", "Stalled"]
    assert updated[0].observed_generation == 3
    assert is_true(updated, "Ready") and not is_true(updated, "Stalled") and not is_true(updated, "Missing")
    assert get_condition(updated, "Missing") is None


def test_unchanged_conditions_compare_equal() -> None:
    """Equality is what lets the controller skip a status patch."""
    once = set_condition(ready("True"), "Ready", "True", "R", now=T1)
    assert once == ready("True")


def test_wire_form_is_camel_case() -> None:
    (cond,) = set_condition([], "Ready", "True", "R", observed_generation=1, now=T0)
    assert cond.to_wire() == {
        "type": "Ready",
        "status": "True",
        "reason": "R",
        "message": "",
        "lastTransitionTime": T0,
        "observedGeneration": 1,
    }

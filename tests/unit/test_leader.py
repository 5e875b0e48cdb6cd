"""Leader election: who may write the Lease, and what the settings accept."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from lepton.controller.leader import LeaseTimings, claim, released
from lepton.controller.settings import Settings, SettingsError

NOW = datetime(2026, 11, 29, 12, 0, 0, 123456, tzinfo=UTC)
STAMP = "2026-11-29T12:00:00.123456Z"
EARLIER = "2026-11-29T11:00:00.000000Z"


def lease(holder: str | None, transitions: int = 3, acquired: str = EARLIER) -> dict[str, Any]:
    return {"spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "acquireTime": acquired,
                     "renewTime": EARLIER, "leaseTransitions": transitions}}  # fmt: skip


@pytest.mark.parametrize(
    ("current", "expired", "expected"),
    [
        # no Lease yet: create it, no transition counted
        (None, False, {"holderIdentity": "me", "acquireTime": STAMP, "leaseTransitions": 0}),
        # mine: renew, keeping when it was acquired and the transition count
        (lease("me"), False, {"holderIdentity": "me", "acquireTime": EARLIER, "leaseTransitions": 3}),
        (lease("me"), True, {"holderIdentity": "me", "acquireTime": EARLIER, "leaseTransitions": 3}),
        # another's, still running: hands off
        (lease("other"), False, None),
        # another's, not renewed for a whole duration: taken, one transition more
        (lease("other"), True, {"holderIdentity": "me", "acquireTime": STAMP, "leaseTransitions": 4}),
        # released (a clean stop): taken at once
        (lease(None), False, {"holderIdentity": "me", "acquireTime": STAMP, "leaseTransitions": 4}),
        (lease(""), False, {"holderIdentity": "me", "acquireTime": STAMP, "leaseTransitions": 4}),
    ],
    ids=["absent", "mine", "mine-late", "others-running", "others-expired", "released", "released-empty"],
)
def test_who_may_write_the_lease(
    current: dict[str, Any] | None, expired: bool, expected: dict[str, Any] | None
) -> None:
    got = claim(current, "me", expired=expired, duration=15, now=NOW)
    if expected is None:
        assert got is None
        return
    assert got is not None
    assert {k: got[k] for k in expected} == expected
    assert (got["renewTime"], got["leaseDurationSeconds"]) == (STAMP, 15)


def test_a_released_lease_has_no_holder_and_a_short_duration() -> None:
    spec = released(lease("me"), NOW)
    assert (spec["holderIdentity"], spec["leaseDurationSeconds"], spec["leaseTransitions"]) == (None, 1, 3)
    assert spec["renewTime"] == STAMP


def test_a_leader_gives_up_before_anyone_may_take_over() -> None:
    for duration in (3, 15, 60, 300):
        t = LeaseTimings.of(duration)
        # it declares the loss at most renew_deadline + retry after its last renewal began; a standby
        # takes over no sooner than a whole duration after it saw that renewal
        assert t.renew_deadline + t.retry < t.duration, t
    assert LeaseTimings.of(15) == LeaseTimings(15, 10, 2)


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"LEPTON_LEADER_ELECTION": "yes"}, "LEPTON_LEADER_ELECTION must be true or false"),
        ({"LEPTON_LEADER_ELECTION": "true"}, "set LEPTON_OPERATOR_NAMESPACE"),
        ({"LEPTON_LEADER_ELECTION": "true", "LEPTON_OPERATOR_NAMESPACE": "ops", "LEPTON_LEASE_SECONDS": "2"},
         "from 3 to 300"),
        ({"LEPTON_LEADER_ELECTION": "true", "LEPTON_OPERATOR_NAMESPACE": "ops", "LEPTON_LEASE_NAME": "Bad_Name"},
         "DNS-1123"),
    ],
)  # fmt: skip
def test_leader_election_settings_say_what_to_fix(env: dict[str, str], problem: str) -> None:
    with pytest.raises(SettingsError, match=problem):
        Settings.from_env({"LEPTON_PROGRESS_KEY": "k" * 32, **env})


def test_every_replica_has_its_own_identity() -> None:
    env = {"LEPTON_PROGRESS_KEY": "k" * 32, "LEPTON_LEADER_ELECTION": "true", "LEPTON_OPERATOR_NAMESPACE": "ops",
           "LEPTON_POD_NAME": "lepton-7d9f-abcde"}  # fmt: skip
    a, b = Settings.from_env(env).leader_election, Settings.from_env(env).leader_election
    assert a is not None and b is not None
    assert (a.namespace, a.lease, a.lease_seconds) == ("ops", "lepton-operator", 15.0)
    assert a.identity.startswith("lepton-7d9f-abcde_") and a.identity != b.identity  # a restarted pod too
    assert Settings.from_env({"LEPTON_PROGRESS_KEY": "k" * 32}).leader_election is None

"""The kopf fix: a watcher that ends before its first listing (its namespace went away) releases the
operator's index readiness, so the other objects' handlers run (operator/lepton/controller/kopf_fixes.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kopf._cogs.aiokits.aiotoggles import ToggleSet
from kopf._core.reactor import queueing

from lepton.controller import kopf_fixes


async def listing_forever(**_: Any) -> None:
    await asyncio.sleep(3600)  # a watcher whose first listing never ends: its namespace is being deleted


def test_a_watcher_stopped_before_listing_no_longer_holds_readiness() -> None:
    async def scenario() -> tuple[bool, bool]:
        indexed = ToggleSet(all)
        gone = await indexed.make_toggle(name="pods@deleted-namespace")
        task = asyncio.create_task(kopf_fixes.releasing(listing_forever)(operator_indexed=indexed,
                                                                         resource_indexed=gone))  # fmt: skip
        await asyncio.sleep(0.01)
        before = indexed.is_on()
        task.cancel()  # what kopf does to the watchers of a namespace that went away
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(indexed.wait_for(True), timeout=1)  # handlers may run again
        return before, indexed.is_on()

    assert asyncio.run(scenario()) == (False, True)


def test_applied_once_to_the_watcher_kopf_spawns() -> None:
    original = queueing.watcher
    try:
        kopf_fixes.apply()
        kopf_fixes.apply()
        assert getattr(queueing.watcher, "lepton_releasing", False)
        assert queueing.watcher is not original
    finally:
        queueing.watcher = original  # type: ignore[assignment]

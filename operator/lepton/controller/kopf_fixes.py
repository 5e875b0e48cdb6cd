"""A fix for kopf (seen with 1.45.2), applied before the operator starts: a watcher that stops before
its first listing must not hold the operator's index readiness forever.

kopf runs no handler until every (resource, namespace) watcher of an indexed resource has listed once.
When a watched namespace goes away (deleted, or no longer matching the glob) before its watchers have
listed, kopf stops them but never drops their readiness toggles, so from then on no handler of any
object runs: the operator answers /healthz and reconciles nothing, with nothing in its log. It happened
when the operator started while a namespace matching its glob was being deleted. The watcher is wrapped
so that, however it ends, its own toggle goes with it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from kopf._core.reactor import queueing

Watcher = Callable[..., Awaitable[None]]


def releasing(watcher: Watcher) -> Watcher:
    """`watcher`, dropping its index-readiness toggle when it ends (finished, failed or cancelled)."""

    async def wrapped(**kwargs: Any) -> None:
        try:
            await watcher(**kwargs)
        finally:
            indexed, toggle = kwargs.get("operator_indexed"), kwargs.get("resource_indexed")
            if indexed is not None and toggle is not None:
                await indexed.drop_toggle(toggle)

    wrapped.lepton_releasing = True  # type: ignore[attr-defined]
    return wrapped


def apply() -> None:
    """Idempotent: kopf's orchestrator looks `queueing.watcher` up at each spawn."""
    if not getattr(queueing.watcher, "lepton_releasing", False):
        queueing.watcher = releasing(queueing.watcher)  # type: ignore[assignment]

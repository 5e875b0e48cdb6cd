"""kopf handlers: read the body into its model once, compute status with pure functions, and patch
status only when it changed. Children arrive with each kind's own issue."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import kopf

from lepton.api import KindInfo
from lepton.api.common import CommonStatus
from lepton.api.conditions import now_rfc3339
from lepton.api.validation import ManifestError, parse
from lepton.controller.metrics import OperatorMetrics
from lepton.controller.patching import status_patch
from lepton.status.lifecycle import accepted, invalid_spec


def _plain(body: Mapping[str, Any]) -> dict[str, Any]:
    return {k: body[k] for k in body}


def _previous_status(info: KindInfo, body: Mapping[str, Any]) -> CommonStatus:
    raw = dict(body.get("status") or {})
    try:
        return info.status.model_validate(raw)
    except ValueError:
        # A status the schema allowed but the model does not (an older operator wrote it): start afresh.
        return info.status()


def compute_status(info: KindInfo, body: Mapping[str, Any], now: str) -> tuple[CommonStatus, str]:
    """The status the resource should have, and the outcome label ("ok" or "invalid")."""
    generation = int(body.get("metadata", {}).get("generation") or 0)
    previous = _previous_status(info, body)
    try:
        parse(_plain(body))
    except ManifestError as exc:
        return invalid_spec(previous, generation, "; ".join(exc.problems), now), "invalid"
    return accepted(previous, generation, info.kind, now), "ok"


def make_reconciler(info: KindInfo, metrics: OperatorMetrics) -> Callable[..., Awaitable[None]]:
    # async: the work is CPU-light, and kopf would otherwise hop to a thread pool for each call.
    async def reconcile(body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, **_: Any) -> None:
        started = time.perf_counter()
        outcome = "error"
        try:
            new, outcome = compute_status(info, body, now_rfc3339())
            old = dict(body.get("status") or {})
            changes = status_patch(old, new.to_wire())
            if changes:
                patch.status.update(changes)
            if outcome == "invalid":
                logger.warning("spec is invalid: %s", new.conditions[-1].message)
            metrics.observe_phase(info.kind, body.metadata.namespace or "", body.metadata.name or "", new.phase)
        finally:
            metrics.reconciles.labels(kind=info.kind, outcome=outcome).inc()
            metrics.duration.labels(kind=info.kind).observe(time.perf_counter() - started)

    reconcile.__name__ = f"reconcile_{info.plural}"
    return reconcile


def make_forgetter(info: KindInfo, metrics: OperatorMetrics) -> Callable[..., Awaitable[None]]:
    async def forget(body: kopf.Body, **_: Any) -> None:
        metrics.observe_phase(info.kind, body.metadata.namespace or "", body.metadata.name or "", None)

    forget.__name__ = f"forget_{info.plural}"
    return forget

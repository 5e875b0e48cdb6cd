"""The generic reconciler every kind runs on: one loop per object that cannot die.

A pass observes (the object as last seen, its owned children from kopf indexes, what it references),
decides (the kind's pure `Binding.plan`), acts (children created, corrected or deleted — only owned
ones), patches status only when it changed, posts the events the status change tells, deletes the
object when its TTL ran out, and says when to look again.

What keeps writes and passes few at scale: a burst of child events (a gang's pods created, bound and
started) is one pass (CHILD_BATCH_SECONDS); a status on its way up (the kind's `settling` phases) is
written at most SETTLE_SECONDS late, merged with the steps that follow, while anything a user acts on
is written at once; a child just created is not posted again before its watch shows it; the object is
parsed once per resourceVersion.

Any exception in a pass is logged with the object's key, counted in
`lepton_reconcile_errors_total{kind,reason}` and retried with capped exponential backoff; an error the
apiserver will repeat (a child it rejects, a name taken by someone else's object) or one that persists
becomes `Stalled=True` with the cause in words. Only cancellation ends a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import kopf

from lepton.api import KindInfo, Resource
from lepton.api.common import CommonStatus
from lepton.api.conditions import EventReason, Reason
from lepton.api.constants import TERMINAL_PHASES
from lepton.api.kinds import API_VERSION
from lepton.api.validation import ManifestError, parse
from lepton.controller.children import ChildRejectedError, NameConflictError, converge, owned, recheck_after
from lepton.controller.events import EventRecorder
from lepton.controller.kube import KubeClient, KubeError
from lepton.controller.metrics import OperatorMetrics
from lepton.controller.patching import status_patch
from lepton.status.clock import rfc3339, ttl_remaining
from lepton.status.events import common_events
from lepton.status.lifecycle import invalid_spec, is_kernel_stall, kernel_stall, may_wait, recovered
from lepton.status.plan import ChildKey, EventNote, Observed, Plan
from lepton.status.references import Resolution, references, resolve, with_lineage

Key = tuple[str, str]  # (namespace, name)
R = TypeVar("R", bound=Resource)
log = logging.getLogger("lepton.reconciler")

ERROR_BACKOFF = (1.0, 60.0)  # first retry after an error, cap
STALL_AFTER = 5  # consecutive failed passes before the error is written into status
IDLE_SECONDS = 300.0  # a quiet object is looked at this often anyway
STALL_RETRY = (5.0, 300.0)  # first look again after a kernel stall, cap
# A child's change is acted on this long after it arrives, so the burst a gang makes (every pod created,
# bound, started within moments) is one pass instead of one per event; the object's own changes are not held.
CHILD_BATCH_SECONDS = 0.25
SETTLE_SECONDS = 5.0  # a status on its way up is written at most this late, merged with the steps that follow


@dataclass(frozen=True)
class ChildKind:
    """A kind of child the operator watches through an index (so a pass costs no API read)."""

    api_version: str
    kind: str
    plural: str
    pruned: bool = False  # owned children of this kind that the plan does not want are deleted
    # Read only: objects another controller makes from a child (a Deployment's pods), matched by the
    # resource's labels instead of its controller UID; read for status, never written or deleted.
    read_only: bool = False


class Binding(ABC, Generic[R]):
    """What one kind adds to the skeleton: its children, its references, its pure plan."""

    info: KindInfo
    children: tuple[ChildKind, ...] = ()  # watched through indexes
    settling: frozenset[str] = frozenset()  # phases on the way up whose status may wait (`may_wait`)
    fetched: tuple[ChildKind, ...] = ()  # read by `fetch_children` (kinds the cluster may not serve)

    async def prepare(self, client: KubeClient) -> None:
        """Learn what the plan needs of the cluster (e.g. discovery), before each pass; cheap when known."""

    def learned(self) -> Hashable:
        """What `prepare` knows of the cluster. It is shared by all objects of the kind, so one object's
        pass may learn it (an API installed meanwhile) while another sleeps on an unchanged fingerprint:
        a change makes every object's next pass run in full."""
        return None

    def needs_references(self, resource: R, observed: Observed) -> bool:
        """Whether to fetch referenced objects this pass (else the last resolution is reused)."""
        return True

    async def fetch_children(self, client: KubeClient, key: Key, body: Mapping[str, Any]) -> dict[str, list[Any]]:
        """Children of kinds the cluster may not serve (so no watch can be set up for them), read by
        name each pass: {kind: [objects]}. Only those the resource controls are kept."""
        return {}

    async def observe_extra(self, key: Key, body: Mapping[str, Any], observed: Observed) -> Any:
        """Anything else a plan reads (e.g. a workload's progress report); must not raise on bad data."""
        return None

    @abstractmethod
    def plan(self, resource: R, observed: Observed, resolution: Resolution, now: datetime, extra: Any) -> Plan:
        """Pure: the status, the children, the events, and when to look again."""

    def next_look(self, body: Mapping[str, Any]) -> tuple[float, bool]:
        """(seconds until the next pass without any event, whether that pass runs even if nothing changed)."""
        return IDLE_SECONDS, False

    def forget(self, key: Key) -> None:
        """Drop per-object caches."""


@dataclass
class _State:
    body: Mapping[str, Any]
    wake: asyncio.Event
    task: asyncio.Task[None] | None = None
    failures: int = 0
    due: float | None = None  # monotonic time a plan asked to be looked at again (backoff, deadline, TTL)
    stalls: int = 0  # passes in a row that ended in a stall the kernel wrote (NameConflict, ChildRejected)
    fingerprint: tuple[Any, ...] | None = None
    written: dict[str, Any] | None = None  # the status the last pass wrote: its echo needs no pass of its own
    resolution: Resolution | None = None
    created: dict[ChildKey, float] | None = None  # children this loop created (monotonic time)
    own_change: bool = True  # woken by the object itself (not only by its children): no batching
    parsed: tuple[str, Any] | None = None  # (resourceVersion, the resource or the ManifestError) of the last parse
    held_since: float | None = None  # monotonic time the status first differed from the one written


def _now() -> datetime:
    return datetime.now(UTC)


class Reconciler(Generic[R]):
    def __init__(
        self, binding: Binding[R], client: KubeClient, metrics: OperatorMetrics, recorder: EventRecorder, *,
        error_backoff: tuple[float, float] = ERROR_BACKOFF, stall_after: int = STALL_AFTER,
        settle: float = SETTLE_SECONDS, child_batch: float = CHILD_BATCH_SECONDS,
    ) -> None:  # fmt: skip
        self.binding, self.client, self.metrics, self.recorder = binding, client, metrics, recorder
        self.kind = binding.info.kind
        self.error_backoff, self.stall_after, self.settle = error_backoff, stall_after, settle
        self.child_batch = child_batch
        self.indexes: dict[str, kopf.Index[Key, dict[str, Any]]] = {}
        self._states: dict[Key, _State] = {}

    # --- the loops ----------------------------------------------------------------------------
    def track(self, key: Key, body: Mapping[str, Any]) -> None:
        """The object was seen (added or changed): remember it and wake (or start) its loop."""
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = _State(body, asyncio.Event(), created={})
        state.body = body
        state.own_change = True
        state.wake.set()
        if state.task is None or state.task.done():
            state.task = asyncio.create_task(self._loop(key), name=f"{self.kind} {key[0]}/{key[1]}")
            self.metrics.loops.labels(kind=self.kind).set(len(self._states))

    def poke(self, key: Key) -> None:
        """A child changed: look again."""
        state = self._states.get(key)
        if state is not None:
            state.wake.set()

    async def forget(self, key: Key) -> None:
        state = self._states.pop(key, None)
        self.binding.forget(key)
        self.recorder.forget(self.kind, *key)
        self.metrics.forget(self.kind, *key)
        self.metrics.loops.labels(kind=self.kind).set(len(self._states))
        if state is not None and state.task is not None and state.task is not asyncio.current_task():
            state.task.cancel()
            await asyncio.gather(state.task, return_exceptions=True)

    async def stop_all(self) -> None:
        for key in list(self._states):
            await self.forget(key)

    async def _loop(self, key: Key) -> None:
        while (state := self._states.get(key)) is not None:
            if state.wake.is_set() and not state.own_change and self.child_batch > 0:
                await asyncio.sleep(self.child_batch)  # the rest of the burst joins this pass
            state.wake.clear()
            state.own_change = False
            try:
                wait = await self._pass(key, state)
                state.failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a loop survives anything; the error is counted and retried
                if await self._vanished(key, exc):
                    return
                wait = await self._failed(key, state, exc)
            if key not in self._states:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.wake.wait(), timeout=max(wait, 0.0))

    async def _vanished(self, key: Key, exc: Exception) -> bool:
        """kopf tells no DELETED for an object removed while its watch was down (an apiserver restart, a
        namespace deleted meanwhile): a pass failing with 404 asks whether the object itself is gone, and
        then its loop ends instead of retrying forever."""
        if not (isinstance(exc, KubeError) and exc.status == 404):
            return False
        try:
            if await self.client.get(API_VERSION, self.kind, *key) is not None:
                return False
        except Exception:  # cannot tell: the ordinary retry follows
            return False
        log.info("%s %s/%s is gone (deleted while unwatched): its loop ends", self.kind, *key)
        await self.forget(key)
        return True

    async def _failed(self, key: Key, state: _State, exc: Exception) -> float:
        state.failures += 1
        state.fingerprint = None  # whatever happened, the next pass runs in full
        reason = f"http_{exc.status}" if isinstance(exc, KubeError) else type(exc).__name__
        self.metrics.errors.labels(kind=self.kind, reason=reason).inc()
        self.metrics.reconciles.labels(kind=self.kind, outcome="error").inc()
        base, cap = self.error_backoff
        wait = float(min(cap, base * 2 ** (state.failures - 1)))
        log.warning("%s %s/%s: reconcile failed (%d in a row, retry in %.0fs): %s: %s", self.kind, *key,
                    state.failures, wait, type(exc).__name__, exc, exc_info=not isinstance(exc, KubeError))  # fmt: skip
        if state.failures >= self.stall_after:
            with contextlib.suppress(Exception):  # the apiserver may be the very thing that is down
                message = f"{state.failures} reconciles in a row failed; the last: {type(exc).__name__}: {exc}"
                await self._write_stall(state.body, Reason.RECONCILE_ERROR, message[:1000])
        return wait

    # --- one pass -----------------------------------------------------------------------------
    async def _pass(self, key: Key, state: _State) -> float:
        body = state.body
        await self.binding.prepare(self.client)
        observed = await self._observe(key, body)
        extra = await self.binding.observe_extra(key, body, observed)
        every, force = self.binding.next_look(body)
        children, generation = _children_fingerprint(observed), _meta(body).get("generation")
        learned = self.binding.learned()
        fingerprint = (generation, _canonical(body.get("status")), children, repr(extra), learned)
        due = state.due is not None and time.monotonic() >= state.due - 0.05
        if fingerprint == state.fingerprint and not force and not due:
            return every if state.due is None else min(every, state.due - time.monotonic())
        started, outcome = time.perf_counter(), "ok"
        try:
            requeue, outcome = await self._reconcile(state, body, observed, extra)
        finally:
            self.metrics.duration.labels(kind=self.kind).observe(time.perf_counter() - started)
        self.metrics.reconciles.labels(kind=self.kind, outcome=outcome).inc()
        if state.written is not None:
            # The watch will echo the status just written; a plan is a fixed point of its own status, so
            # that echo alone needs no pass (anything else that changed in between still runs one).
            fingerprint = (generation, _canonical(state.written), children, repr(extra), learned)
            state.written = None
        state.fingerprint = fingerprint if outcome != "stalled" else None  # a stall is looked at again in full
        state.due = time.monotonic() + requeue if requeue is not None else None
        return min(every, requeue) if requeue is not None else every

    async def _observe(self, key: Key, body: Mapping[str, Any]) -> Observed:
        uid = str(_meta(body).get("uid") or "")
        found: dict[str, list[Mapping[str, Any]]] = {}
        for child in self.binding.children:
            index = self.indexes.get(child.plural)
            store: list[Mapping[str, Any]] = list(index.get(key, [])) if index is not None else []
            found[child.kind] = store if child.read_only else owned(store, uid)
        for kind, objs in (await self.binding.fetch_children(self.client, key, body)).items():
            found[kind] = owned(objs, uid)
        return Observed(found)

    async def _reconcile(self, state: _State, body: Mapping[str, Any], observed: Observed,
                         extra: Any) -> tuple[float | None, str]:  # fmt: skip
        meta = _meta(body)
        try:
            resource = self._parse(state, body)
        except ManifestError as exc:
            info = self.binding.info
            previous = _previous_status(info.status, body)
            new = invalid_spec(previous, int(meta.get("generation") or 0), "; ".join(exc.problems), _stamp())
            await self._write_status(body, previous, new, common_events(previous, new))
            state.written = new.to_wire()
            return None, "invalid"
        resolution = await self._resolve(state, resource, observed)
        plan: Plan = self.binding.plan(resource, observed, resolution, _now(), extra)  # type: ignore[arg-type]
        status = planned = with_lineage(plan.status, resolution)
        try:
            pruned = [c.kind for c in (*self.binding.children, *self.binding.fetched) if c.pruned]
            await converge(self.client, str(meta.get("uid") or ""), plan, observed.children, pruned=pruned,
                           created=state.created if state.created is not None else {})  # fmt: skip
        except (NameConflictError, ChildRejectedError) as exc:
            reason = Reason.NAME_CONFLICT if isinstance(exc, NameConflictError) else Reason.CHILD_REJECTED
            status = kernel_stall(resource.status, int(meta.get("generation") or 0), reason, str(exc), _stamp())
        else:
            status, state.stalls = recovered(status, _stamp()), 0
        requeue = plan.requeue_after
        recheck = recheck_after(state.created or {}, (c.kind for c in self.binding.children))
        if recheck is not None:  # created, not seen yet: if the watch never shows it, look then
            requeue = min(requeue, recheck) if requeue is not None else recheck
        events = list(plan.events) if status is planned else common_events(resource.status, status)
        held = self._hold(state, body, resource.status, status)
        if held is not None:  # the events of this step are told, merged, with the write that follows
            self.metrics.observe_phase(self.kind, str(meta.get("namespace")), str(meta.get("name")), status.phase)
            return min(held, requeue) if requeue is not None else held, "ok"
        await self._write_status(body, resource.status, status, events)
        state.written = status.to_wire()
        self.metrics.observe(self.kind, body, resource.status, status)
        if status is not planned and is_kernel_stall(status):
            # What stalls it may go away without an event of ours (a user deletes the object holding the
            # name, an admin creates a PriorityClass): look again, less and less often.
            state.stalls += 1
            return min(STALL_RETRY[1], STALL_RETRY[0] * 2 ** (state.stalls - 1)), "stalled"
        return await self._ttl(body, resource, status, requeue), "ok"

    @staticmethod
    def _parse(state: _State, body: Mapping[str, Any]) -> Resource:
        """The object as a model; parsed once per resourceVersion (a pass woken by a child reuses it)."""
        version = str(_meta(body).get("resourceVersion") or "")
        if state.parsed is None or not version or state.parsed[0] != version:
            try:
                state.parsed = (version, parse({k: body[k] for k in body}))
            except ManifestError as exc:
                state.parsed = (version, exc)
        if isinstance(state.parsed[1], ManifestError):
            raise state.parsed[1]
        return state.parsed[1]

    def _hold(self, state: _State, body: Mapping[str, Any], old: CommonStatus, new: CommonStatus) -> float | None:
        """Seconds the new status may still wait before it is written, or None: write it now (or there
        is nothing to write). The wait is counted from the first step not written, so a status on its
        way up is never more than `settle` seconds behind."""
        changed = status_patch(dict(body.get("status") or {}), new.to_wire())
        if not changed or not may_wait(old, new, self.binding.settling):
            state.held_since = None
            return None
        now = time.monotonic()
        if state.held_since is None:
            state.held_since = now
        left = state.held_since + self.settle - now
        if left <= 0:
            state.held_since = None
            return None
        return left

    async def _resolve(self, state: _State, resource: Resource, observed: Observed) -> Resolution:
        refs = references(resource)
        if not refs:
            return resolve(resource, {})  # nothing to fetch: the lineage of what it names directly
        if (
            state.resolution is not None
            and state.resolution.ready
            and not self.binding.needs_references(resource, observed)  # type: ignore[arg-type]
        ):
            return state.resolution
        namespace = resource.metadata.namespace or ""
        found = {(kind, name): await self.client.get(API_VERSION, kind, namespace, name) for kind, name in refs}
        state.resolution = resolve(resource, found)
        return state.resolution

    async def _ttl(self, body: Mapping[str, Any], resource: Resource, status: CommonStatus,
                   requeue: float | None) -> float | None:  # fmt: skip
        ttl = getattr(resource.spec, "ttl_seconds_after_finished", None)
        finished = getattr(status, "completion_time", None) if status.phase in TERMINAL_PHASES else None
        remaining = ttl_remaining(ttl, finished, _now())
        if remaining is None:
            return requeue
        if remaining > 0:
            return min(requeue, remaining) if requeue is not None else remaining
        meta = _meta(body)
        log.info("%s %s/%s: ttlSecondsAfterFinished passed, deleting it", self.kind, meta["namespace"], meta["name"])
        await self.recorder.post(body, [EventNote(EventReason.TTL_DELETED, f"Deleted {ttl}s after it finished")])
        await self.client.delete(API_VERSION, self.kind, meta["namespace"], meta["name"])
        return None

    async def _write_status(self, body: Mapping[str, Any], old: CommonStatus, new: CommonStatus,
                            events: list[EventNote]) -> None:  # fmt: skip
        changes = status_patch(dict(body.get("status") or {}), new.to_wire())
        if changes:
            meta = _meta(body)
            await self.client.patch_status(API_VERSION, self.kind, meta["namespace"], meta["name"], changes)
        if events:
            await self.recorder.post(body, events)

    async def _write_stall(self, body: Mapping[str, Any], reason: str, message: str) -> None:
        previous = _previous_status(self.binding.info.status, body)
        new = kernel_stall(previous, int(_meta(body).get("generation") or 0), reason, message, _stamp())
        await self._write_status(body, previous, new, common_events(previous, new))


def _meta(body: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = body.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _stamp() -> str:
    return rfc3339(_now())


def _previous_status(model: type[CommonStatus], body: Mapping[str, Any]) -> CommonStatus:
    try:
        return model.model_validate(dict(body.get("status") or {}))
    except ValueError:  # a status the schema allowed but the model does not (an older operator wrote it)
        return model()


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _children_fingerprint(observed: Observed) -> tuple[tuple[str, str, str, str], ...]:
    return tuple(sorted(
        (kind, str(_meta(o).get("name")), str(_meta(o).get("resourceVersion")), str(_meta(o).get("deletionTimestamp")))
        for kind, objs in observed.children.items() for o in objs
    ))  # fmt: skip

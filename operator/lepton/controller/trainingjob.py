"""The TrainingJob controller: one daemon per job that keeps the gang as `decide` says.

Pods are seen through a kopf index (an in-memory cache filled by one watch), so a loop costs no API
call; the daemon acts only when the decision differs from what exists. Pod names are deterministic
per attempt, so an operator restarted mid-way recreates nothing that already exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import kopf

from lepton.api import GROUP, VERSION, TrainingJob
from lepton.api.contract import METRICS_PORT, ProgressReport
from lepton.api.kinds import API_VERSION
from lepton.api.trainingjob import TrainingJobStatus
from lepton.api.validation import ManifestError, parse
from lepton.controller.kube import PLURALS, KubeClient, KubeError, api_path
from lepton.controller.metrics import OperatorMetrics
from lepton.controller.patching import status_patch
from lepton.controller.progress import fetch_progress
from lepton.render.trainingjob import RenderSettings, Resolved, render
from lepton.status.lifecycle import invalid_spec
from lepton.status.references import Resolution, references, resolve
from lepton.status.trainingjob import TERMINAL, PodView, decide, parse_time

PROGRESS_SECONDS = 10.0  # how often rank 0's progress is read while a job runs
POLL_SECONDS = 1.0  # while time-sensitive (backoff, deadlines); otherwise events wake the loop
INDEX = "trainingjob_pods"


PodIndex = kopf.Index[tuple[str, str], dict[str, Any]]


def pods_of(index: PodIndex, namespace: str, name: str) -> list[dict[str, Any]]:
    store: Iterable[dict[str, Any]] = index.get((namespace, name), [])
    return list(store)


class TrainingJobController:
    def __init__(self, client: KubeClient, metrics: OperatorMetrics, settings: RenderSettings,
                 backoff_base: float) -> None:  # fmt: skip
        self.client, self.metrics, self.settings, self.backoff_base = client, metrics, settings, backoff_base
        self._gang_checked = False
        self._bodies: dict[tuple[str, str], Mapping[str, Any]] = {}
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._wake: dict[tuple[str, str], asyncio.Event] = {}
        self._index: PodIndex | None = None
        self._drift: dict[tuple[str, str], int] = {}
        self._progress: dict[tuple[str, str], ProgressReport] = {}
        self._scraped: dict[tuple[str, str], float] = {}

    async def _render_settings(self) -> RenderSettings:
        if not self._gang_checked:  # native gang scheduling, when the cluster serves it
            serves = await self.client.serves("scheduling.k8s.io/v1beta1", "podgroups")
            self.settings = RenderSettings(self.settings.trainer_image, serves, self.settings.termination_grace_seconds)
            self._gang_checked = True
        return self.settings

    async def reconcile_once(self, body: Mapping[str, Any], raw_pods: list[dict[str, Any]]) -> float | None:
        """One pass: decide, then make the pods and status match. Returns when to look again."""
        started = time.perf_counter()
        outcome = "error"
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        try:
            try:
                job = parse({k: body[k] for k in body})
            except ManifestError as exc:
                outcome = "invalid"
                previous = TrainingJobStatus.model_validate(body.get("status") or {})
                new = invalid_spec(previous, int(meta.get("generation") or 0), "; ".join(exc.problems),
                                   _now_str())  # fmt: skip
                await self._patch_status(body, new.to_wire())
                return None
            assert isinstance(job, TrainingJob)
            resolution = await self._resolve(job, raw_pods)
            decision = decide(
                job, [PodView.of(p) for p in raw_pods], datetime.now(UTC), backoff_base=self.backoff_base,
                waiting_for=resolution.waiting, progress=self._progress.get((namespace, name)),
            )  # fmt: skip
            existing = {p["metadata"]["name"]: p for p in raw_pods}
            for pod_name, pod in existing.items():
                if pod_name not in decision.keep and not pod["metadata"].get("deletionTimestamp"):
                    await self.client.delete("v1", "Pod", namespace, pod_name)
            if decision.create:
                settings = await self._render_settings()
                resolved = Resolved(model_uri=resolution.uris.get("model"), data_uri=resolution.uris.get("data"),
                                    teacher_uri=resolution.uris.get("teacher"))  # fmt: skip
                desired = render(job, decision.attempt, settings, resolved)
                for child in desired:
                    if child["kind"] != "Pod" or child["metadata"]["name"] not in existing:
                        await self.client.apply(child)
            await self._patch_status(body, decision.status.to_wire())
            self.metrics.observe_phase("TrainingJob", namespace, name, decision.status.phase)
            outcome = "ok"
            return float(decision.requeue_after) if decision.requeue_after is not None else None
        finally:
            self.metrics.reconciles.labels(kind="TrainingJob", outcome=outcome).inc()
            self.metrics.duration.labels(kind="TrainingJob").observe(time.perf_counter() - started)

    async def _scrape(self, key: tuple[str, str], body: Mapping[str, Any], raw_pods: list[dict[str, Any]]) -> None:
        """Every PROGRESS_SECONDS while running, read rank 0's /progress over the pod network: the
        training pods need no API access and no sidecar for their progress to reach status."""
        if (body.get("status") or {}).get("phase") != "Running":
            return
        if time.monotonic() - self._scraped.get(key, 0.0) < PROGRESS_SECONDS:
            return
        self._scraped[key] = time.monotonic()
        attempt = str((body.get("status") or {}).get("attempt", 0))
        rank0 = next((p for p in raw_pods if p["metadata"].get("labels", {}).get("lepton.ai/node-index") == "0"
                      and p["metadata"]["labels"].get("lepton.ai/attempt") == attempt), None)  # fmt: skip
        ip = (rank0 or {}).get("status", {}).get("podIP")
        if ip:
            report = await fetch_progress(f"http://{ip}:{METRICS_PORT}/progress")
            if report is not None:
                self._progress[key] = ProgressReport.parse(report)

    async def _resolve(self, job: TrainingJob, raw_pods: list[dict[str, Any]]) -> Resolution:
        """Fetch what the job references (only before its gang exists) and resolve it purely."""
        refs = references(job)
        if not refs or raw_pods:
            return resolve(job, {}) if not refs else Resolution()
        namespace = job.metadata.namespace or ""
        found = {
            (kind, name): await self.client.request("GET", api_path(API_VERSION, PLURALS[kind], namespace, name))
            for kind, name in refs
        }
        return resolve(job, found)

    async def _patch_status(self, body: Mapping[str, Any], new: dict[str, Any]) -> None:
        changes = status_patch(dict(body.get("status") or {}), new)
        if changes:
            meta = body["metadata"]
            await self.client.patch_status(API_VERSION, "TrainingJob", meta["namespace"], meta["name"], changes)

    async def ttl_expired(self, body: Mapping[str, Any]) -> float | None:
        """Seconds until a finished job's TTL runs out (0: now); None when no TTL applies."""
        status, spec = body.get("status") or {}, body.get("spec") or {}
        ttl, finished = spec.get("ttlSecondsAfterFinished"), parse_time(status.get("completionTime"))
        if ttl is None or finished is None or status.get("phase") not in TERMINAL:
            return None
        return max(0.0, float(ttl) - (datetime.now(UTC) - finished).total_seconds())

    # --- one loop per job, woken by job and pod events ------------------------------------------
    def track(self, key: tuple[str, str], body: Mapping[str, Any], index: PodIndex, logger: kopf.Logger) -> None:
        self._bodies[key] = body
        self._index = index
        wake = self._wake.setdefault(key, asyncio.Event())
        wake.set()
        if key not in self._tasks or self._tasks[key].done():
            self._tasks[key] = asyncio.create_task(self._loop(key, logger), name=f"trainingjob {key[0]}/{key[1]}")

    def poke(self, key: tuple[str, str]) -> None:
        if key in self._wake:
            self._wake[key].set()

    def drifted(self, key: tuple[str, str]) -> None:
        """Something changed an owned object (the Service): reconcile, which re-applies it."""
        self._drift[key] = self._drift.get(key, 0) + 1
        self.poke(key)

    async def forget(self, key: tuple[str, str]) -> None:
        task = self._tasks.pop(key, None)
        self._bodies.pop(key, None)
        self._wake.pop(key, None)
        self._drift.pop(key, None)
        self._progress.pop(key, None)
        self._scraped.pop(key, None)
        self.metrics.observe_phase("TrainingJob", key[0], key[1], None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def stop_all(self) -> None:
        for key in list(self._tasks):
            await self.forget(key)

    async def _loop(self, key: tuple[str, str], logger: kopf.Logger) -> None:
        namespace, name = key
        last: tuple[Any, ...] | None = None
        while key in self._bodies:
            body = self._bodies[key]
            self._wake[key].clear()
            raw_pods = pods_of(self._index, namespace, name) if self._index is not None else []
            # Act only when something the decision reads changed, or when time matters (backoff, deadlines).
            await self._scrape(key, body, raw_pods)
            fingerprint = (repr(body.get("metadata", {}).get("generation")), repr(body.get("status")),
                           _pods_fingerprint(raw_pods), self._drift.get(key, 0),
                           repr(self._progress.get(key)))  # fmt: skip
            wait = PROGRESS_SECONDS if (body.get("status") or {}).get("phase") == "Running" else POLL_SECONDS * 10
            if fingerprint != last or _time_sensitive(body):
                try:
                    requeue = await self.reconcile_once(body, raw_pods)
                    last = fingerprint
                    wait = POLL_SECONDS if _time_sensitive(body) else wait
                    if requeue is not None:
                        wait = min(wait, requeue)
                except KubeError as exc:
                    logger.warning("reconcile failed, retrying: %s", exc)
                    last, wait = None, 2.0
            remaining = await self.ttl_expired(body)
            if remaining is not None and remaining <= 0:
                logger.info("ttlSecondsAfterFinished passed: deleting the TrainingJob")
                await self.client.delete(API_VERSION, "TrainingJob", namespace, name)
                return
            if remaining is not None:
                wait = min(wait, remaining)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake[key].wait(), timeout=wait)


def _now_str() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _pods_fingerprint(pods: list[dict[str, Any]]) -> tuple[tuple[str, str, str], ...]:
    return tuple(sorted((p["metadata"]["name"], p["metadata"].get("resourceVersion", ""),
                         str(p["metadata"].get("deletionTimestamp"))) for p in pods))  # fmt: skip


def _time_sensitive(body: Mapping[str, Any]) -> bool:
    status, spec = body.get("status") or {}, body.get("spec") or {}
    return bool(status.get("nextAttemptTime") or spec.get("activeDeadlineSeconds")
                or spec.get("startupDeadlineSeconds"))  # fmt: skip


def register(registry: kopf.OperatorRegistry, controller: TrainingJobController) -> None:
    """Handlers without finalizers: deleting a job never waits for the operator, and ownerReferences
    let the garbage collector remove its children."""

    @kopf.index("pods", labels={"lepton.ai/kind": "TrainingJob"}, registry=registry, id=INDEX)
    async def trainingjob_pods(body: kopf.Body, labels: Mapping[str, str], **_: Any) -> dict[tuple[str, str], Any]:
        key = (str(body.metadata.namespace), labels.get("lepton.ai/name", ""))
        controller.poke(key)
        return {key: dict(body)}

    @kopf.on.event(GROUP, VERSION, "trainingjobs", registry=registry, id="gang")
    async def trainingjob_event(event: kopf.RawEvent, body: kopf.Body, logger: kopf.Logger, **kwargs: Any) -> None:
        key = (str(body.metadata.namespace), str(body.metadata.name))
        if event.get("type") == "DELETED":
            await controller.forget(key)
        else:
            controller.track(key, {k: body[k] for k in body}, kwargs[INDEX], logger)

    @kopf.on.event("services", labels={"lepton.ai/kind": "TrainingJob"}, registry=registry, id="service-drift")
    async def service_event(body: kopf.Body, labels: Mapping[str, str], **_: Any) -> None:
        controller.drifted((str(body.metadata.namespace), labels.get("lepton.ai/name", "")))

    @kopf.on.cleanup(registry=registry)
    async def stop_loops(**_: Any) -> None:
        await controller.stop_all()

    del trainingjob_pods, trainingjob_event, service_event, stop_loops  # registered; nothing else refers to them

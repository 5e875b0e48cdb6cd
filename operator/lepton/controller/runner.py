"""Run the operator: kopf configured for Lepton, plus the metrics and health HTTP server."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import kopf
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from lepton.controller import kopf_fixes
from lepton.controller.kube import KubeClient
from lepton.controller.leader import LeaseKeeper, LeaseTimings
from lepton.controller.metrics import OperatorMetrics
from lepton.controller.registry import build_registry
from lepton.controller.settings import ANNOTATION_PREFIX, LeaderElection, Settings

log = logging.getLogger("lepton")


class NoDiffBase(kopf.AnnotationsDiffBaseStorage):
    """The skeleton registers no create/update handlers, so kopf needs no diff-base; yet kopf builds one
    (a deep copy of the whole object) on every watch event, which was over half the operator's CPU per
    event. Nothing is ever stored, so `fetch` finds nothing."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None


def configure(settings: kopf.OperatorSettings, watch: Settings) -> None:
    """kopf's own bookkeeping in annotations under our prefix, so `status` holds only schema fields."""
    # Watching exact namespaces needs no cluster-wide reads: kopf then neither lists namespaces nor
    # watches CRDs, so a namespaced install holds no cluster-scoped permission at all.
    settings.scanning.disabled = bool(watch.namespaces) and not any("*" in n or "?" in n for n in watch.namespaces)
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = NoDiffBase(prefix=ANNOTATION_PREFIX, key="last-handled-configuration")
    settings.persistence.finalizer = f"{ANNOTATION_PREFIX}/finalizer"
    settings.posting.level = logging.WARNING  # events for problems, not for every reconcile
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30


def health_app(metrics: OperatorMetrics, ready: threading.Event | asyncio.Event,
               standby: asyncio.Event | None = None) -> web.Application:  # fmt: skip
    async def metrics_view(_: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(_: web.Request) -> web.Response:
        if ready.is_set():
            return web.Response(text="ok")
        if standby is not None and standby.is_set():  # healthy and ready to take over: a rollout completes
            return web.Response(text="standby")
        return web.Response(status=503, text="starting")

    app = web.Application()
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def serve(settings: Settings, *, stop_flag: asyncio.Event | None = None) -> None:
    """Run kopf and the HTTP endpoints until stopped; with leader election, kopf only while leading."""
    metrics = OperatorMetrics()
    election = settings.leader_election
    client = KubeClient(user_agent=f"lepton-operator ({election.identity})" if election else "lepton-operator")
    registry = build_registry(metrics, client, settings)
    ready, standby = asyncio.Event(), asyncio.Event()
    kopf_settings = kopf.OperatorSettings()
    configure(kopf_settings, settings)

    runner = web.AppRunner(health_app(metrics, ready, standby), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.metrics_host, settings.metrics_port)
    await site.start()
    log.info(
        "metrics and health on %s:%d; watching %s",
        settings.metrics_host,
        settings.metrics_port,
        ", ".join(settings.namespaces) or "all namespaces",
    )
    kopf_fixes.apply()

    async def operate() -> None:
        await kopf.operator(
            registry=registry,
            settings=kopf_settings,
            clusterwide=settings.clusterwide,
            namespaces=list(settings.namespaces),
            standalone=True,
            ready_flag=ready,
            stop_flag=stop_flag,
        )

    try:
        if election is None:
            metrics.leader.set(1)
            await operate()
        else:
            await _lead(election, metrics, operate, kopf_settings=kopf_settings, user_agent=client.user_agent,
                        standby=standby, stop_flag=stop_flag)  # fmt: skip
    finally:
        await runner.cleanup()
        await client.close()


async def _lead(election: LeaderElection, metrics: OperatorMetrics, operate: Callable[[], Coroutine[Any, Any, None]],
                *, kopf_settings: kopf.OperatorSettings, user_agent: str, standby: asyncio.Event,
                stop_flag: asyncio.Event | None) -> None:  # fmt: skip
    """Stand by until this replica holds the Lease, then operate; the Lease is kept on a thread of its
    own, which ends the process at once if it is lost. A clean stop releases it for the standby."""
    info = kopf.login_with_service_account(settings=kopf_settings) or kopf.login_with_kubeconfig(settings=kopf_settings)
    if info is None:
        raise RuntimeError("no credentials: neither a ServiceAccount nor KUBECONFIG")

    def changed(leading: bool) -> None:
        metrics.leader.set(1 if leading else 0)
        metrics.leader_transitions.inc()

    keeper = LeaseKeeper(info, election.namespace, election.lease, election.identity,
                         LeaseTimings.of(election.lease_seconds), user_agent=user_agent, on_change=changed)  # fmt: skip
    keeper.start()
    standby.set()
    try:
        while not keeper.leading.is_set():
            if stop_flag is not None and stop_flag.is_set():
                return
            await asyncio.sleep(0.1)
        standby.clear()
        await operate()
    finally:
        await asyncio.to_thread(keeper.stop)  # releases the Lease when held


def run(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # kopf logs every handler call ("Handler ... succeeded") at INFO: one line per watch event is noise
    # at scale and costs CPU; the reconciler logs what matters (errors, stalls, TTL deletions).
    if settings.log_level != "DEBUG":
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    asyncio.run(serve(settings))

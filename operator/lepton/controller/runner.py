"""Run the operator: kopf configured for Lepton, plus the metrics and health HTTP server."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import kopf
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from lepton.controller import kopf_fixes
from lepton.controller.kube import KubeClient
from lepton.controller.metrics import OperatorMetrics
from lepton.controller.registry import build_registry
from lepton.controller.settings import ANNOTATION_PREFIX, Settings


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


def health_app(metrics: OperatorMetrics, ready: threading.Event | asyncio.Event) -> web.Application:
    async def metrics_view(_: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(_: web.Request) -> web.Response:
        if ready.is_set():
            return web.Response(text="ok")
        return web.Response(status=503, text="starting")

    app = web.Application()
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def serve(settings: Settings, *, stop_flag: asyncio.Event | None = None) -> None:
    """Run kopf and the HTTP endpoints until stopped."""
    metrics = OperatorMetrics()
    client = KubeClient()
    registry = build_registry(metrics, client, settings)
    ready = asyncio.Event()
    kopf_settings = kopf.OperatorSettings()
    configure(kopf_settings, settings)

    runner = web.AppRunner(health_app(metrics, ready), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.metrics_host, settings.metrics_port)
    await site.start()
    logging.getLogger("lepton").info(
        "metrics and health on %s:%d; watching %s",
        settings.metrics_host,
        settings.metrics_port,
        ", ".join(settings.namespaces) or "all namespaces",
    )
    kopf_fixes.apply()
    try:
        await kopf.operator(
            registry=registry,
            settings=kopf_settings,
            clusterwide=settings.clusterwide,
            namespaces=list(settings.namespaces),
            standalone=True,
            ready_flag=ready,
            stop_flag=stop_flag,
        )
    finally:
        await runner.cleanup()
        await client.close()


def run(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # kopf logs every handler call ("Handler ... succeeded") at INFO: one line per watch event is noise
    # at scale and costs CPU; the reconciler logs what matters (errors, stalls, TTL deletions).
    if settings.log_level != "DEBUG":
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    asyncio.run(serve(settings))

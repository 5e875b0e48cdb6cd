"""The activator: where requests for an InferenceService at zero go, held until a replica can answer.

While a service with `autoscaling.minReplicas: 0` has no ready replica, the operator points its
Service at the activator (no selector; an EndpointSlice of the activator's addresses). For each
request the activator:
1. finds the InferenceService from the Host header (`NAME.NAMESPACE.svc…`, or a bare `NAME` when one
   service at zero has it);
2. holds it in that service's bounded queue (runtime.maxQueueLength), and on the first one scales the
   primary Deployment to one replica through its scale subresource;
3. waits until a replica says its model is loaded: a Running primary pod whose own
   /v2/health/ready answers 200 (asked directly, so a pod marked Ready too early is not trusted);
4. forwards every held request to it, streaming the answer back, and goes on forwarding whatever
   still arrives until the operator hands routing back to the Service's selector.
A request held past `autoscaling.activationTimeoutSeconds` gets 503 with Retry-After; no request
ever gets "model not ready". Health and /metrics requests never scale anything up: the activator
answers them itself (a Prometheus scrape through the Service must not keep a service awake).

It runs as its own small Deployment (the chart's `activator`), not in the operator: it is on the data
path, so it must not share an event loop with reconciles, and it keeps working while the operator's
leader changes. It needs only: get/list InferenceServices and pods, get/patch deployments/scale.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from lepton.api.constants import Label
from lepton.api.contract import SERVER_PORT
from lepton.controller.kube import KubeClient, KubeError, api_path

ACTIVATOR_PORT = 8012
POLL_SECONDS = 0.2  # how often pods are read and probed while requests are held
READY_TTL = 5.0  # how long a replica found ready is trusted without asking again
RESOLVE_TTL = 2.0  # how long an InferenceService read is reused
RETRY_AFTER = 10
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "transfer-encoding", "upgrade", "host", "content-length"})  # fmt: skip
NOT_ACTIVATING = frozenset({"/metrics", "/v2/health/live", "/v2/health/ready", "/healthz"})
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
log = logging.getLogger("lepton.activator")


class RefusedError(Exception):
    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.retry_after = status, message, retry_after

    def response(self) -> web.Response:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}
        return web.json_response({"error": self.message}, status=self.status, headers=headers)


def parse_host(host: str) -> tuple[str, str | None] | None:
    """(name, namespace or None) from a Host header: NAME, NAME.NS, NAME.NS.svc[.cluster-domain][:port]."""
    host = host.strip().lower()
    if host.startswith("["):  # an IPv6 literal: no service name in it
        return None
    host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    parts = host.split(".")
    if not parts[0] or not all(p.replace("-", "").isalnum() for p in parts):
        return None
    if len(parts) == 1:
        return parts[0], None
    if len(parts) == 2 or parts[2] == "svc":
        return parts[0], parts[1]
    return None


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("lepton_activator_requests", "Requests the activator answered, by outcome.",
                                ["outcome"], registry=r)  # fmt: skip
        self.held = Gauge("lepton_activator_held_requests", "Requests held now, waiting for a replica.", registry=r)
        self.hold_seconds = Histogram("lepton_activator_hold_seconds", "Time a request was held before forwarding.",
                                      buckets=BUCKETS, registry=r)  # fmt: skip
        self.cold_start = Histogram(
            "lepton_activator_cold_start_seconds",
            "A scale-up from zero, by phase: scale_up (request to a Running pod with an address), model_load "
            "(to its /v2/health/ready answering 200).", ["phase"], buckets=BUCKETS, registry=r,
        )  # fmt: skip
        self.scale_ups = Counter("lepton_activator_scale_ups", "Deployments scaled from zero to one.", registry=r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


@dataclass
class Wake:
    """One InferenceService's activation: its held requests, the replicas found ready, timings."""

    namespace: str
    name: str
    ready: list[str] = field(default_factory=list)  # pod IPs whose model is loaded
    ready_at: float = 0.0  # monotonic time `ready` was last confirmed
    event: asyncio.Event = field(default_factory=asyncio.Event)
    held: int = 0
    task: asyncio.Task[None] | None = None
    timings: dict[str, float] = field(default_factory=dict)  # phase -> seconds, of the last cold start
    turn: int = 0

    def fresh(self) -> bool:
        return bool(self.ready) and time.monotonic() - self.ready_at < READY_TTL

    def pick(self) -> str:
        self.turn += 1
        return self.ready[self.turn % len(self.ready)]


class Activator:
    def __init__(self, client: KubeClient, *, poll: float = POLL_SECONDS) -> None:
        self.client, self.poll = client, poll
        self.metrics = Metrics()
        self.wakes: dict[tuple[str, str], Wake] = {}
        self._resolved: dict[tuple[str, str | None], tuple[float, dict[str, Any]]] = {}
        self._http: aiohttp.ClientSession | None = None

    async def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)
        return self._http

    async def close(self) -> None:
        for wake in self.wakes.values():
            if wake.task is not None:
                wake.task.cancel()
        if self._http is not None:
            await self._http.close()

    # --- which service --------------------------------------------------------------------------
    async def resolve(self, host: str) -> dict[str, Any]:
        parsed = parse_host(host)
        if parsed is None:
            raise RefusedError(404, f"host {host[:200]!r} names no InferenceService: call NAME.NAMESPACE.svc")
        name, namespace = parsed
        cached = self._resolved.get(parsed)
        if cached is not None and time.monotonic() - cached[0] < RESOLVE_TTL:
            return cached[1]
        if namespace is not None:
            path = api_path("lepton.ai/v1alpha1", "inferenceservices", namespace, name)
            found = await self.client.request("GET", path)
            items = [found] if found is not None else []
        else:
            listed = await self.client.request("GET", api_path("lepton.ai/v1alpha1", "inferenceservices", None),
                                               params={"fieldSelector": f"metadata.name={name}"})  # fmt: skip
            items = [i for i in (listed or {}).get("items") or [] if _scales_to_zero(i)]
            if len(items) > 1:
                raise RefusedError(421, f"several InferenceServices named {name!r} scale to zero: call "
                                   f"{name}.NAMESPACE.svc")  # fmt: skip
        if not items or not _scales_to_zero(items[0]):
            where = f"{namespace}/{name}" if namespace else name
            raise RefusedError(404, f"no InferenceService {where} with autoscaling.minReplicas 0: the activator serves "
                               "only services that scale to zero")  # fmt: skip
        self._resolved[parsed] = (time.monotonic(), items[0])
        return items[0]

    # --- the request path -----------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path in NOT_ACTIVATING:
            return self.own(request)
        started = time.monotonic()
        try:
            svc = await self.resolve(request.headers.get("Host", request.host))
            spec = svc.get("spec") or {}
            if spec.get("suspend"):
                raise RefusedError(503, "the InferenceService is suspended (spec.suspend)", RETRY_AFTER)
            runtime, scaling = spec.get("runtime") or {}, spec.get("autoscaling") or {}
            body = await _read_body(request, int(runtime.get("maxRequestBytes") or 1048576))
            meta = svc["metadata"]
            wake = self.wakes.setdefault((meta["namespace"], meta["name"]), Wake(meta["namespace"], meta["name"]))
            deadline = started + float(scaling.get("activationTimeoutSeconds") or 300)
            for attempt in range(3):
                ip = await self.await_ready(wake, deadline, int(runtime.get("maxQueueLength") or 256))
                try:
                    response = await self.forward(request, body, ip, started, float(runtime.get(
                        "requestTimeoutSeconds") or 30))  # fmt: skip
                except aiohttp.ClientConnectorError:  # nothing was sent: the replica went away, find another
                    wake.ready = [r for r in wake.ready if r != ip]
                    if attempt == 2:
                        raise RefusedError(502, "no replica accepted the connection", RETRY_AFTER) from None
                    continue
                self.metrics.requests.labels("forwarded").inc()
                return response
        except RefusedError as refused:
            self.metrics.requests.labels(_outcome(refused.status)).inc()
            return refused.response()
        except KubeError as exc:
            self.metrics.requests.labels("apiserver_error").inc()
            log.warning("apiserver: %s", exc)
            return RefusedError(503, f"the activator cannot ask the apiserver: {exc}", RETRY_AFTER).response()
        raise AssertionError("unreachable")

    def own(self, request: web.Request) -> web.Response:
        if request.path == "/metrics":
            return web.Response(body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})
        return web.json_response({"activator": "ready", "note": "requests are held while a replica loads"})

    async def await_ready(self, wake: Wake, deadline: float, max_held: int) -> str:
        """A ready replica's address, holding the caller until there is one or its deadline passes."""
        if wake.fresh():
            return wake.pick()
        if wake.held >= max_held:
            raise RefusedError(503, f"{wake.held} requests are already held for {wake.namespace}/{wake.name} "
                               "(runtime.maxQueueLength): retry later", RETRY_AFTER)  # fmt: skip
        wake.held += 1
        self.metrics.held.inc()
        held_from = time.monotonic()
        try:
            if wake.task is None or wake.task.done():
                wake.event.clear()
                wake.task = asyncio.create_task(self.activate(wake))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.event.wait(), max(deadline - time.monotonic(), 0))
            if not wake.ready:
                waited = time.monotonic() - held_from
                raise RefusedError(503, f"no replica of {wake.namespace}/{wake.name} has loaded its model after "
                                   f"{waited:.0f}s (autoscaling.activationTimeoutSeconds): retry later",
                              max(RETRY_AFTER, math.ceil(waited)))  # fmt: skip
            self.metrics.hold_seconds.observe(time.monotonic() - held_from)
            return wake.pick()
        finally:
            wake.held -= 1
            self.metrics.held.dec()

    async def activate(self, wake: Wake) -> None:
        """Scale the primary up if it is at zero, then look for a ready replica until one is found or
        nobody waits any more. Never raises: the held requests run into their deadlines instead."""
        started = time.monotonic()
        running_at: float | None = None
        scaled = False  # this activation scaled from zero: its timings are a cold start's
        scale = api_path("apps/v1", "deployments", wake.namespace, f"{wake.name}-primary", "scale")
        selector = f"{Label.KIND}=InferenceService,{Label.NAME}={wake.name},{Label.ROLE}=primary"
        wake.timings = {}
        try:
            current = await self.client.request("GET", scale)
            if current is not None and not (current.get("spec") or {}).get("replicas"):
                await self.client.request("PATCH", scale, body={"spec": {"replicas": 1}},
                                          content_type="application/merge-patch+json")  # fmt: skip
                self.metrics.scale_ups.inc()
                scaled = True
                log.info("%s/%s: a request at zero: scaled to one replica", wake.namespace, wake.name)
            while wake.held > 0:
                pods = await self.client.request("GET", api_path("v1", "pods", wake.namespace),
                                                 params={"labelSelector": selector})  # fmt: skip
                ips = [ip for ip in map(_running_ip, (pods or {}).get("items") or []) if ip]
                if ips and running_at is None:
                    running_at = time.monotonic()
                    wake.timings["scale_up"] = running_at - started
                    if scaled:
                        self.metrics.cold_start.labels("scale_up").observe(running_at - started)
                answers = await asyncio.gather(*(self.probe(ip) for ip in ips))
                ready = [ip for ip, ok in zip(ips, answers, strict=True) if ok]
                if ready:
                    wake.ready, wake.ready_at = ready, time.monotonic()
                    if running_at is not None:
                        wake.timings["model_load"] = wake.ready_at - running_at
                        if scaled:
                            self.metrics.cold_start.labels("model_load").observe(wake.ready_at - running_at)
                    wake.event.set()
                    return
                await asyncio.sleep(self.poll)
        except Exception as exc:  # the loop must not die silently: the held requests time out with words
            log.warning("%s/%s: activation failed: %s", wake.namespace, wake.name, exc)
            await asyncio.sleep(self.poll)

    async def probe(self, ip: str) -> bool:
        http = await self.http()
        try:
            async with http.get(f"http://{ip}:{SERVER_PORT}/v2/health/ready",
                                timeout=aiohttp.ClientTimeout(total=1.0)) as rsp:  # fmt: skip
                return rsp.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def forward(self, request: web.Request, body: bytes, ip: str, started: float,
                      timeout: float) -> web.StreamResponse:  # fmt: skip
        """The replica's answer, streamed. A connection refused is raised (nothing was sent: the caller may
        try another replica); a replica that fails after that is a 502 or 504, never retried (the request
        may have had its effect), and one that breaks mid-answer ends the answer there."""
        http = await self.http()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["X-Forwarded-Host"] = request.headers.get("Host", "")
        response: web.StreamResponse | None = None
        try:
            async with http.request(request.method, f"http://{ip}:{SERVER_PORT}{request.path_qs}", data=body,
                                    headers=headers, allow_redirects=False,
                                    timeout=aiohttp.ClientTimeout(total=timeout + 5)) as upstream:  # fmt: skip
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for key, value in upstream.headers.items():
                    if key.lower() not in HOP_BY_HOP:
                        response.headers.add(key, value)
                response.headers["X-Lepton-Activator-Seconds"] = f"{time.monotonic() - started:.3f}"
                if upstream.headers.get("Content-Length") is not None:
                    response.content_length = int(upstream.headers["Content-Length"])
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except aiohttp.ClientConnectorError:
            raise
        except (aiohttp.ClientError, TimeoutError) as exc:
            if response is not None and response.prepared:
                log.warning("the answer from %s broke off: %s", ip, exc or type(exc).__name__)
                return response
            if isinstance(exc, TimeoutError):
                raise RefusedError(504, f"the replica did not answer within {timeout:.0f}s "
                                        "(runtime.requestTimeoutSeconds)") from None  # fmt: skip
            raise RefusedError(502, f"the replica failed the request: {type(exc).__name__}", RETRY_AFTER) from None


def _scales_to_zero(svc: Mapping[str, Any]) -> bool:
    scaling = (svc.get("spec") or {}).get("autoscaling") or {}
    return scaling.get("minReplicas") == 0


def _running_ip(pod: Mapping[str, Any]) -> str | None:
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    if meta.get("deletionTimestamp") or status.get("phase") != "Running":
        return None
    ip = status.get("podIP")
    return str(ip) if ip else None


def _outcome(status: int) -> str:
    outcomes = {404: "not_found", 421: "ambiguous", 413: "too_large", 502: "upstream_error", 504: "upstream_timeout"}
    return outcomes.get(status, "unavailable")


async def _read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise RefusedError(413, f"request body exceeds the limit of {limit} bytes (runtime.maxRequestBytes)")
    chunks, size = [], 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise RefusedError(413, f"request body exceeds the limit of {limit} bytes (runtime.maxRequestBytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def build_app(activator: Activator, max_body: int = 64 * 1024 * 1024) -> web.Application:
    app = web.Application(client_max_size=max_body)
    app.router.add_route("*", "/{tail:.*}", activator.handle)
    return app


async def serve(host: str, port: int, client: KubeClient, *, ready: asyncio.Event | None = None) -> None:
    """Serve until cancelled (SIGTERM in `leptonctl activator`)."""
    activator = Activator(client)
    runner = web.AppRunner(build_app(activator), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("activator listening on %s:%s", host, port)
    print(f"lepton-activator ready on http://{host}:{port}", flush=True)
    if ready is not None:
        ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        await activator.close()
        await runner.cleanup()
        await client.close()


def login(client: KubeClient) -> None:
    """In a pod: its ServiceAccount; elsewhere: KUBECONFIG (as the operator logs in, through kopf)."""
    import kopf

    settings = kopf.OperatorSettings()
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise KubeError(0, "no credentials: neither a ServiceAccount token nor a kubeconfig was found")
    client.login(info)


def main(host: str, port: int) -> int:
    import signal

    client = KubeClient(user_agent="lepton-activator")
    try:
        login(client)
    except KubeError as exc:
        log.error("%s", exc)
        return 1

    async def run() -> None:
        task = asyncio.create_task(serve(host, port, client))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(run())
    return 0

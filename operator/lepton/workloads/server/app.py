"""The aiohttp application: routes, the one place errors become responses, metrics per route template.

Why aiohttp: it is already the operator's HTTP stack (its metrics and health servers), so the project
has one HTTP stack to know and patch; it is asyncio-native, streams responses (server-sent events)
without extra layers, limits body size (`client_max_size`) and header size in its parser, and lets the
event loop stay free while the forward runs in the batcher's worker thread. An ASGI framework would
add a server (uvicorn) and a second stack for the same job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from . import requestlog, routes_openai, routes_v2
from .errors import ApiError, is_openai
from .state import STATE, State, state_of

log = logging.getLogger("lepton.server")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ROLE_HEADER = "X-Lepton-Role"
UNMATCHED = "unmatched"  # the route label of requests no route matched (bounded, unlike raw paths)
NOT_COUNTED = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"})  # not "in flight" work


def route_label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


def _from_http(exc: web.HTTPException, request: web.Request) -> ApiError:
    """aiohttp's own refusals (no route, wrong method, body too large) in the server's error shapes."""
    path = request.path[:200]
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return ApiError(405, f"method {request.method[:16]} is not allowed on {path}; use {allowed}",
                        headers={"Allow": allowed})  # fmt: skip
    if exc.status == 404:
        return ApiError(404, f"no route for {request.method[:16]} {path}")
    if exc.status == 413:
        return ApiError(413, f"request body exceeds the limit of {request.app[STATE].config.max_request_bytes} bytes",
                        close=True)  # fmt: skip
    return ApiError(exc.status, exc.reason or "request refused")


@web.middleware
async def handle(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = state_of(request)
    route = route_label(request)
    started = time.monotonic()
    request["started"] = started
    counted = route not in NOT_COUNTED
    if counted:
        state.inflight += 1
        state.last_arrival = started
        state.metrics.inflight.inc()
        state.metrics.last_request.set_to_current_time()
    try:
        response = await handler(request)
    except ApiError as exc:
        response = exc.response(is_openai(request.path))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _from_http(exc, request).response(is_openai(request.path))
    except Exception as exc:
        log.exception("%s %s failed", request.method, route)
        response = ApiError(500, f"internal error: {type(exc).__name__}").response(is_openai(request.path))
    finally:
        if counted:
            state.inflight -= 1
            state.metrics.inflight.dec()
    state.metrics.requests.labels(route, str(response.status)).inc()
    state.metrics.request_seconds.labels(route).observe(time.monotonic() - started)
    return response


async def metrics(request: web.Request) -> web.Response:
    m = state_of(request).metrics
    return web.Response(body=m.exposition(), headers={"Content-Type": m.content_type})


def build_app(state: State) -> web.Application:
    app = web.Application(middlewares=[handle], client_max_size=state.config.max_request_bytes)
    app[STATE] = state
    routes_v2.add_routes(app, v2="v2" in state.config.protocols)
    if "openai" in state.config.protocols:
        routes_openai.add_routes(app)
    app.router.add_get("/metrics", metrics, allow_head=False)
    requestlog.add_routes(app)  # POST /v1/feedback, and the request log's writer

    async def tag_role(request: web.Request, response: web.StreamResponse) -> None:
        response.headers[ROLE_HEADER] = state.config.role

    app.on_response_prepare.append(tag_role)
    return app

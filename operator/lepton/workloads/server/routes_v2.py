"""Open Inference Protocol v2 (REST) routes: server and model metadata, health, and infer for text tasks.

Infer takes one BYTES input "text" of shape [n] (n strings) and answers, per task:
- causal-lm: "text_output" BYTES [n] and "finish_reason" BYTES [n] ("stop" or "length"); parameters
  max_tokens, temperature, top_p, seed.
- sequence-classification: "logits" FP32 [n, labels] (row-major, flattened) and "label" BYTES [n].
- embeddings: "embedding" FP32 [n, hidden] (the mean of the last hidden states over the real tokens).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from . import requestlog
from .protocol import BODY_READ_SECONDS, parse_v2, read_json, v2_output
from .service import Sampling
from .state import VERSION, State, started_of, state_of
from .work import Classified, Embedded

DEFAULT_MAX_TOKENS = 16
DRIFT_SUMMARY = ("enabled", "reason", "metric", "threshold", "windowInputs", "minInputs")  # in the model metadata


async def server_metadata(request: web.Request) -> web.Response:
    return web.json_response({"name": "lepton-server", "version": VERSION, "extensions": []})


async def live(request: web.Request) -> web.Response:
    return web.json_response({"live": True})


async def ready(request: web.Request) -> web.Response:
    state = state_of(request)
    if state.ready:
        return web.json_response({"ready": True})
    return web.json_response({"ready": False, "reason": state.why_not_ready()}, status=503)


def _tensors(state: State) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    model = state.service.model if state.service else None
    labels = len(model.labels) if model else -1
    hidden = model.hidden_size if model else -1
    inputs = [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    outputs = {
        "causal-lm": [{"name": "text_output", "datatype": "BYTES", "shape": [-1]},
                      {"name": "finish_reason", "datatype": "BYTES", "shape": [-1]}],
        "sequence-classification": [{"name": "logits", "datatype": "FP32", "shape": [-1, labels]},
                                    {"name": "label", "datatype": "BYTES", "shape": [-1]}],
        "embeddings": [{"name": "embedding", "datatype": "FP32", "shape": [-1, hidden]}],
    }[state.config.task]  # fmt: skip
    return inputs, outputs


async def model_metadata(request: web.Request) -> web.Response:
    state = state_of(request)
    state.check_name(request.match_info["name"])
    c = state.config
    inputs, outputs = _tensors(state)
    body: dict[str, Any] = {
        "name": c.name,
        "versions": ["1"],
        "platform": "transformers",
        "inputs": inputs,
        "outputs": outputs,
        "task": c.task,
        "role": c.role,
        "ready": state.ready,
        "metadata": dict(state.metadata),
        "parameters": {
            "maxBatchSize": c.max_batch_size,
            "maxInputTokens": state.service.input_limit if state.service else c.max_input_tokens,
            "maxOutputTokens": c.max_output_tokens,
            "labels": list(state.service.model.labels) if state.service else [],
        },
        "drift": {k: v for k, v in _drift(state).items() if k in DRIFT_SUMMARY},
    }
    return web.json_response(body)


def _drift(state: State) -> dict[str, Any]:
    """Drift scoring of this replica (spec.drift): the window and scores, or why it is off."""
    service = state.service
    if service is None:
        return {"enabled": False, "reason": "the model is not loaded yet"}
    if service.drift is None:
        return {"enabled": False, "reason": service.drift_off}
    return service.drift.view()


async def model_drift(request: web.Request) -> web.Response:
    state = state_of(request)
    state.check_name(request.match_info["name"])
    return web.json_response(_drift(state))


async def model_ready(request: web.Request) -> web.Response:
    state = state_of(request)
    state.check_name(request.match_info["name"])
    return web.json_response({"name": state.config.name, "ready": state.ready}, status=200 if state.ready else 503)


async def infer(request: web.Request) -> web.Response:
    state = state_of(request)
    state.check_name(request.match_info["name"])
    c = state.config
    doc = await read_json(request, c.max_request_bytes, min(BODY_READ_SECONDS, c.request_timeout_seconds))
    req = parse_v2(doc, c.task, c.max_queue_length)
    service = state.require()
    where = [f"inputs.text.data[{i}]" for i in range(len(req.texts))]
    ids = await service.tokenize(req.texts, where)
    started = started_of(request)
    outputs: dict[str, dict[str, Any]] = {}
    logged: list[str | None] = [None] * len(req.texts)  # what the request log records as each output
    n = len(req.texts)
    if c.task == "causal-lm":
        p = req.parameters
        sampling = Sampling(service.max_tokens(p.max_tokens, DEFAULT_MAX_TOKENS, "parameters.max_tokens"),
                            p.temperature, p.top_p, p.seed)  # fmt: skip
        pendings = service.submit(service.jobs("generate", ids, sampling), started)
        gens = [service.generation(x, started) for x in pendings]
        try:
            texts = await asyncio.gather(*(g.complete() for g in gens))
        finally:
            for x in pendings:
                x.cancel()
        outputs["text_output"] = v2_output("text_output", "BYTES", [n], list(texts))
        logged = list(texts)
        outputs["finish_reason"] = v2_output("finish_reason", "BYTES", [n], [g.finish_reason for g in gens])
    elif c.task == "sequence-classification":
        classified: list[Classified] = await service.classify(service.submit(service.jobs("classify", ids), started))
        width = len(classified[0].logits)
        flat = [v for r in classified for v in r.logits]
        outputs["logits"] = v2_output("logits", "FP32", [n, width], flat)
        outputs["label"] = v2_output("label", "BYTES", [n], [r.label for r in classified])
        logged = [r.label for r in classified]
    else:
        embedded: list[Embedded] = await service.embed(service.submit(service.jobs("embed", ids), started))
        width = len(embedded[0].vector)
        outputs["embedding"] = v2_output("embedding", "FP32", [n, width], [v for r in embedded for v in r.vector])
    body: dict[str, Any] = {"model_name": c.name, "model_version": "1", "outputs": [outputs[o] for o in req.outputs]}
    if req.id is not None:
        body["id"] = req.id
    response_id = requestlog.new_response_id("infer")
    response = web.json_response(body)
    requestlog.tag(response, response_id)
    requestlog.record(request, response_id, list(req.texts), logged)
    return response


def add_routes(app: web.Application, v2: bool) -> None:
    """Health and server metadata always (the probes use them); model routes when v2 is served."""
    app.router.add_get("/v2", server_metadata, allow_head=False)
    app.router.add_get("/v2/health/live", live, allow_head=False)
    app.router.add_get("/v2/health/ready", ready, allow_head=False)
    if v2:
        app.router.add_get("/v2/models/{name}", model_metadata, allow_head=False)
        app.router.add_get("/v2/models/{name}/ready", model_ready, allow_head=False)
        app.router.add_get("/v2/models/{name}/drift", model_drift, allow_head=False)
        app.router.add_post("/v2/models/{name}/infer", infer)

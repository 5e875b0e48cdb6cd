"""OpenAI-compatible routes: /v1/models, /v1/completions, /v1/chat/completions (both streamable as
server-sent events ending in `data: [DONE]`), /v1/embeddings.

Completions and chat need a causal-lm model. Embeddings are served for embeddings models and for
causal-lm models (the mean of the causal model's last hidden states over the real tokens), which is
what the InferenceService rule "the openai protocol serves completions and embeddings of causal-lm
models" promises. A streamed request takes one prompt (one choice); an error after the stream began is
sent as a `data: {"error": ...}` event before `data: [DONE]`.
"""

from __future__ import annotations

import base64
import json
import struct
import time
from typing import Any

from aiohttp import web

from . import requestlog
from .errors import ApiError
from .openai_protocol import ChatRequest, CompletionRequest, EmbeddingRequest
from .protocol import BODY_READ_SECONDS, parse, read_json
from .service import Generation, Sampling, Service
from .state import State, started_of, state_of

COMPLETION_DEFAULT_TOKENS = 16


async def _body(request: web.Request, state: State) -> dict[str, Any]:
    c = state.config
    return await read_json(request, c.max_request_bytes, min(BODY_READ_SECONDS, c.request_timeout_seconds))


def _needs_generation(state: State, route: str) -> None:
    if state.config.task != "causal-lm":
        raise ApiError(400, f"{route} needs a causal-lm model; {state.config.name!r} is a {state.config.task} "
                       "model", param="model", code="model_not_supported")  # fmt: skip


def _model(state: State, name: str | None) -> None:
    if name is not None:
        state.check_name(name)


async def models(request: web.Request) -> web.Response:
    state = state_of(request)
    entry = {"id": state.config.name, "object": "model", "created": 0, "owned_by": "lepton"}
    return web.json_response({"object": "list", "data": [entry]})


async def completions(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    _needs_generation(state, "/v1/completions")
    req: CompletionRequest = parse(CompletionRequest, await _body(request, state))
    _model(state, req.model)
    prompts, stops = req.prompts(), req.stops()
    if req.stream and len(prompts) > 1:
        raise ApiError(400, "stream: true takes a single prompt", param="prompt")
    service = state.require()
    where = ["prompt" if isinstance(req.prompt, str) else f"prompt[{i}]" for i in range(len(prompts))]
    ids = await service.tokenize(prompts, where)
    sampling = _sampling(service, req, req.max_tokens, COMPLETION_DEFAULT_TOKENS)
    return await _run(request, service, "text_completion", ids, sampling=sampling, stops=stops, stream=req.stream,
                      usage_chunk=_usage_wanted(req), logged=prompts)  # fmt: skip


async def chat(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    _needs_generation(state, "/v1/chat/completions")
    req: ChatRequest = parse(ChatRequest, await _body(request, state))
    _model(state, req.model)
    turns, stops, wanted = req.turns(), req.stops(), req.wanted_tokens()
    service = state.require()
    prompt = service.model.chat_prompt(turns)
    ids = await service.tokenize([prompt], ["messages"], special=not service.model.has_chat_template)
    param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
    sampling = _sampling(service, req, wanted, state.config.max_output_tokens, param)
    return await _run(request, service, "chat.completion", ids, sampling=sampling, stops=stops, stream=req.stream,
                      usage_chunk=_usage_wanted(req), logged=[prompt])  # fmt: skip


def _usage_wanted(req: CompletionRequest | ChatRequest) -> bool:
    return bool(req.stream_options and req.stream_options.include_usage)


def _sampling(
    service: Service, req: CompletionRequest | ChatRequest, asked: int | None, default: int, param: str = "max_tokens"
) -> Sampling:
    max_tokens = service.max_tokens(asked, default, param)
    return Sampling(max_tokens, req.temperature, req.top_p, req.seed)


async def _run(
    request: web.Request,
    service: Service,
    obj: str,
    ids: list[list[int]],
    *,
    sampling: Sampling,
    stops: list[str],
    stream: bool,
    usage_chunk: bool,
    logged: list[str],
) -> web.StreamResponse:
    """Generate; `logged` are the inputs the request log records beside the texts answered."""
    started = started_of(request)
    pendings = service.submit(service.jobs("generate", ids, sampling), started)
    gens = [service.generation(p, started, stops) for p in pendings]
    response_id = requestlog.new_response_id("chatcmpl" if obj.startswith("chat") else "cmpl")
    head = {"id": response_id, "created": int(time.time()), "model": service.config.name}
    if stream:
        return await _stream(request, gens[0], obj, head, usage_chunk, logged=logged)
    try:
        texts = [await g.complete() for g in gens]
    finally:
        for p in pendings:
            p.cancel()
    choices = [_choice(obj, i, text, g.finish_reason) for i, (text, g) in enumerate(zip(texts, gens, strict=True))]
    response = web.json_response({**head, "object": obj, "choices": choices, "usage": _usage(gens)})
    requestlog.tag(response, response_id)
    requestlog.record(request, response_id, logged, list(texts))
    return response


def _choice(obj: str, index: int, text: str, finish: str | None) -> dict[str, Any]:
    if obj == "chat.completion":
        return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": None,
                "finish_reason": finish}  # fmt: skip
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}


def _delta(obj: str, text: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
    if obj == "chat.completion":
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
        if text:
            delta["content"] = text
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}


def _usage(gens: list[Generation]) -> dict[str, int]:
    prompt = sum(g.prompt_tokens for g in gens)
    completion = sum(len(g.tokens) for g in gens)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _stream(
    request: web.Request, gen: Generation, obj: str, head: dict[str, Any], usage_chunk: bool, *, logged: list[str]
) -> web.StreamResponse:
    chunk_obj = "chat.completion.chunk" if obj == "chat.completion" else "text_completion"
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    requestlog.tag(resp, head["id"])
    await resp.prepare(request)
    said: list[str] = []

    async def send(doc: dict[str, Any] | str) -> None:
        data = doc if isinstance(doc, str) else json.dumps(doc)
        await resp.write(f"data: {data}\n\n".encode())

    try:
        if obj == "chat.completion":
            await send({**head, "object": chunk_obj, "choices": [_delta(obj, None, None, first=True)]})
        try:
            async for text in gen.deltas():
                said.append(text)
                await send({**head, "object": chunk_obj, "choices": [_delta(obj, text, None)]})
            await send({**head, "object": chunk_obj, "choices": [_delta(obj, None, gen.finish_reason)]})
            if usage_chunk:
                await send({**head, "object": chunk_obj, "choices": [], "usage": _usage([gen])})
        except ApiError as exc:
            await send(exc.openai_body())
        await send("[DONE]")
        await resp.write_eof()
        requestlog.record(request, head["id"], logged, ["".join(said)])
    except ConnectionError:  # the client went away: stop generating for it
        gen.pending.cancel()
    return resp


async def embeddings(request: web.Request) -> web.Response:
    state = state_of(request)
    if state.config.task == "sequence-classification":
        raise ApiError(400, f"/v1/embeddings needs an embeddings or causal-lm model; {state.config.name!r} is a "
                       "sequence-classification model", param="model", code="model_not_supported")  # fmt: skip
    req: EmbeddingRequest = parse(EmbeddingRequest, await _body(request, state))
    _model(state, req.model)
    texts = req.texts()
    service = state.require()
    where = ["input" if isinstance(req.input, str) else f"input[{i}]" for i in range(len(texts))]
    ids = await service.tokenize(texts, where)
    vectors = await service.embed(service.submit(service.jobs("embed", ids), started_of(request)))
    data = []
    for i, v in enumerate(vectors):
        value: Any = list(v.vector)
        if req.encoding_format == "base64":
            value = base64.b64encode(struct.pack(f"<{len(v.vector)}f", *v.vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": value})
    tokens = sum(len(x) for x in ids)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    response_id = requestlog.new_response_id("embd")
    response = web.json_response({"object": "list", "data": data, "model": state.config.name, "usage": usage})
    requestlog.tag(response, response_id)
    requestlog.record(request, response_id, texts, [None] * len(texts))
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/models", models, allow_head=False)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/embeddings", embeddings)

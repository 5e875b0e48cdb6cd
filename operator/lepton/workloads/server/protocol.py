"""Reading request bodies and validating Open Inference Protocol v2 requests.

Nothing a client sends reaches the model unchecked: the body is read under a size limit (413) and a
time limit (408, then the connection is closed), must be UTF-8 JSON without NaN/Infinity (400) holding
an object, and is then validated by strict pydantic models (no coercion: "5" is not 5, true is not 1)
that forbid unknown fields, so a typo is a 400 naming the field rather than a silently ignored option.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ApiError

MAX_SEED = 2**63 - 1
BODY_READ_SECONDS = 10.0


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def read_json(request: web.Request, limit: int, timeout: float) -> dict[str, Any]:
    """The request's JSON object, or an ApiError that says what is wrong with the body."""
    kind = request.headers.get("Content-Type")
    if kind is not None and request.content_type != "application/json" and not request.content_type.endswith("+json"):
        raise ApiError(415, f"Content-Type must be application/json, not {kind[:100]!r}")
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"request body of {request.content_length} bytes exceeds the limit of {limit} bytes",
                       close=True)  # fmt: skip
    try:
        raw = await asyncio.wait_for(request.read(), timeout=timeout)
    except TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {timeout:g} s", close=True) from None
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, f"request body exceeds the limit of {limit} bytes", close=True) from None
    if not raw.strip():
        raise ApiError(400, "the request body is empty: send a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"the request body is not valid UTF-8 (byte {exc.start})") from None
    try:
        doc = json.loads(text, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise ApiError(
            400, f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except ValueError as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "the request body is nested too deeply") from None
    if not isinstance(doc, dict):
        raise ApiError(400, f"the request body must be a JSON object, not {type(doc).__name__}")
    return doc


def validation_error(exc: ValidationError) -> ApiError:
    """The first problem pydantic found, as a 400 naming the field (OpenAI's `param`)."""
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"])
    msg = str(first["msg"])
    if first["type"] == "extra_forbidden":
        msg = "unknown field (not part of this API)"
    elif first["type"] == "missing":
        msg = "required field is missing"
    return ApiError(400, f"{where}: {msg}" if where else msg, param=where or None)


def parse(model: type[Strict], doc: dict[str, Any]) -> Any:
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise validation_error(exc) from None


def check_text(text: str, where: str) -> None:
    if not text:
        raise ApiError(400, f"{where} is empty: give some text", param=where)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, f"{where} holds a lone surrogate escape; it is not valid Unicode", param=where) from None


# --- Open Inference Protocol v2 ------------------------------------------------------------------------


class V2Tensor(Strict):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]
    parameters: dict[str, Any] | None = None


class V2RequestedOutput(Strict):
    name: str
    parameters: dict[str, Any] | None = None


class V2Parameters(Strict):
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)


class V2Request(Strict):
    id: str | None = Field(default=None, max_length=256)
    parameters: V2Parameters = Field(default_factory=V2Parameters)
    inputs: list[V2Tensor] = Field(min_length=1)
    outputs: list[V2RequestedOutput] | None = None


OUTPUTS: dict[str, tuple[str, ...]] = {
    "causal-lm": ("text_output", "finish_reason"),
    "sequence-classification": ("logits", "label"),
    "embeddings": ("embedding",),
}
GENERATION_PARAMETERS = ("max_tokens", "temperature", "top_p", "seed")


@dataclass(frozen=True)
class V2Infer:
    id: str | None
    texts: list[str]
    parameters: V2Parameters
    outputs: tuple[str, ...]


def parse_v2(doc: dict[str, Any], task: str, max_texts: int) -> V2Infer:
    """A v2 infer request for a text task: one BYTES input "text" of shape [n] holding n strings."""
    req: V2Request = parse(V2Request, doc)
    if len(req.inputs) != 1 or req.inputs[0].name != "text":
        names = ", ".join(repr(t.name) for t in req.inputs)
        raise ApiError(400, f"inputs: expected exactly one input named 'text', got {names}", param="inputs")
    tensor = req.inputs[0]
    if tensor.datatype != "BYTES":
        raise ApiError(400, f"inputs.text: datatype must be BYTES (strings), not {tensor.datatype[:32]!r}")
    if len(tensor.shape) != 1 or tensor.shape[0] < 1:
        raise ApiError(400, f"inputs.text: shape must be [n] with n >= 1 texts, not {tensor.shape[:8]}")
    if tensor.shape[0] != len(tensor.data):
        raise ApiError(400, f"inputs.text: shape {tensor.shape} says {tensor.shape[0]} texts but data holds "
                       f"{len(tensor.data)}")  # fmt: skip
    if len(tensor.data) > max_texts:
        raise ApiError(400, f"inputs.text: at most {max_texts} texts per request (maxQueueLength)")
    for i, value in enumerate(tensor.data):
        if not isinstance(value, str):
            raise ApiError(400, f"inputs.text.data[{i}]: expected a string, not {type(value).__name__}")
        check_text(value, f"inputs.text.data[{i}]")
    if task != "causal-lm":
        given = req.parameters.model_fields_set & set(GENERATION_PARAMETERS)
        if given:
            raise ApiError(400, f"parameters.{sorted(given)[0]}: generation parameters apply to causal-lm "
                           f"models only; this model's task is {task}")  # fmt: skip
    known = OUTPUTS[task]
    wanted = known
    if req.outputs is not None:
        unknown = [o.name for o in req.outputs if o.name not in known]
        if unknown:
            raise ApiError(400, f"outputs: unknown output {unknown[0][:64]!r}; this model has {', '.join(known)}")
        wanted = tuple(o.name for o in req.outputs) or known
    return V2Infer(req.id, list(tensor.data), req.parameters, wanted)


def v2_output(name: str, datatype: Literal["BYTES", "FP32"], shape: list[int], data: list[Any]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}

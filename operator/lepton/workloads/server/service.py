"""The data plane between the routes and the batcher, shared by the v2 and OpenAI routes: tokenize and
check limits, queue, wait for results, assemble generated text (streamed or whole), and map the
batcher's failures to HTTP statuses (queue full 429, deadline 504)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from lepton.api.contract import ServerConfig

from .batcher import Batcher, DeadlineExceededError, Pending, QueueFullError, WithdrawnError
from .drift import monitor
from .errors import ApiError
from .metrics import Metrics
from .work import Classified, Embedded, Generated, Job, Kind, Model, Result

INLINE_TOKENIZE_CHARS = 16384  # longer texts are tokenized off the event loop


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stops: Sequence[str] = ()


class Service:
    def __init__(self, config: ServerConfig, model: Model, batcher: Batcher[Job, Result], metrics: Metrics) -> None:
        self.config = config
        self.model = model
        self.batcher = batcher
        self.metrics = metrics
        self.input_limit = min(config.max_input_tokens, model.context)
        self.drift, self.drift_off = monitor(config.drift, config.model_path, model.labels)
        metrics.drift.monitor = self.drift

    def max_tokens(self, asked: int | None, default: int, param: str = "max_tokens") -> int:
        limit = self.config.max_output_tokens
        if asked is not None and asked > limit:
            raise ApiError(400, f"{param} is {asked}; this server generates at most {limit} tokens per request "
                           "(maxOutputTokens)", param=param)  # fmt: skip
        return min(asked or default, limit)

    async def tokenize(self, texts: Sequence[str], where: Sequence[str], special: bool = True) -> list[list[int]]:
        out = []
        for text, name in zip(texts, where, strict=True):
            if len(text) > INLINE_TOKENIZE_CHARS:
                ids = await asyncio.to_thread(self.model.encode, text, special)
            else:
                ids = self.model.encode(text, special)
            if not ids:
                raise ApiError(400, f"{name} holds no tokens", param=name)
            if len(ids) > self.input_limit:
                raise ApiError(400, f"{name} has {len(ids)} tokens; this server accepts at most {self.input_limit} "
                               "input tokens (maxInputTokens)", param=name, code="context_length_exceeded")  # fmt: skip
            out.append(ids)
        if self.drift is not None:  # inputs that passed every check, on the event loop
            self.drift.observe(out)
        return out

    def jobs(self, kind: Kind, inputs: Sequence[Sequence[int]], sampling: Sampling | None = None) -> list[Job]:
        if sampling is None:
            return [Job(kind, tuple(ids)) for ids in inputs]
        for ids in inputs:
            if len(ids) + sampling.max_tokens > self.model.context:
                raise ApiError(400, f"the prompt has {len(ids)} tokens and max_tokens is {sampling.max_tokens}: "
                               f"together more than the model's context of {self.model.context} tokens",
                               param="max_tokens", code="context_length_exceeded")  # fmt: skip
        return [
            Job(kind, tuple(ids), sampling.max_tokens, sampling.temperature, sampling.top_p, sampling.seed)
            for ids in inputs
        ]

    def submit(self, jobs: Sequence[Job], started: float) -> list[Pending[Job]]:
        timeout = self.config.request_timeout_seconds - (time.monotonic() - started)
        if timeout <= 0:
            raise ApiError(504, self._late())
        try:
            return self.batcher.submit([(j, j.length) for j in jobs], timeout, group=jobs[0].kind)
        except QueueFullError as exc:
            raise ApiError(429, f"{exc} (maxQueueLength {self.config.max_queue_length})",
                           headers={"Retry-After": "1"}) from None  # fmt: skip

    def _late(self) -> str:
        return f"the request was not answered within {self.config.request_timeout_seconds:g} s (requestTimeoutSeconds)"

    async def result(self, pending: Pending[Job]) -> Result:
        try:
            return await pending.result()  # type: ignore[no-any-return]
        except DeadlineExceededError:
            raise ApiError(504, self._late()) from None
        except WithdrawnError:
            raise ApiError(503, "the server is shutting down; retry", headers={"Retry-After": "1"}) from None

    async def results(self, pendings: Sequence[Pending[Job]]) -> list[Result]:
        try:
            return list(await asyncio.gather(*(self.result(p) for p in pendings)))
        finally:
            for p in pendings:
                p.cancel()  # whatever was not answered is dropped (no-op for what was)

    async def classify(self, pendings: Sequence[Pending[Job]]) -> list[Classified]:
        classified = [r for r in await self.results(pendings) if isinstance(r, Classified)]
        if self.drift is not None:
            self.drift.observe_labels([r.label for r in classified])
        return classified

    async def embed(self, pendings: Sequence[Pending[Job]]) -> list[Embedded]:
        return [r for r in await self.results(pendings) if isinstance(r, Embedded)]

    def generation(self, pending: Pending[Job], started: float, stops: Sequence[str] = ()) -> Generation:
        return Generation(self, pending, started, tuple(stops))


@dataclass
class Generation:
    """One request's generated text as it is produced. Deltas concatenate to the final text: a delta is
    held back while the text ends in an incomplete UTF-8 sequence (byte-level tokens) or could be the
    start of a stop sequence; at a stop sequence the text ends before it and the work is withdrawn."""

    service: Service
    pending: Pending[Job]
    started: float
    stops: tuple[str, ...]
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = "stop"

    @property
    def prompt_tokens(self) -> int:
        return len(self.pending.payload.ids)

    async def deltas(self) -> AsyncIterator[str]:
        model = self.service.model
        try:
            async for token in self.pending.events():
                if not self.tokens:
                    self.service.metrics.ttft.observe(time.monotonic() - self.started)
                self.tokens.append(token)
                full = model.decode(self.tokens)
                cut = _first_stop(full, self.stops)
                if cut is not None:
                    self.pending.cancel()
                    self.finish_reason = "stop"
                    if full[:cut].startswith(self.text) and cut > len(self.text):
                        yield full[len(self.text) : cut]
                    self.text = full[:cut]
                    return
                safe = len(full) - _held_back(full, self.stops)
                if safe > len(self.text) and full.startswith(self.text):
                    delta, self.text = full[len(self.text) : safe], full[:safe]
                    yield delta
            result = self.pending.value
        except DeadlineExceededError:
            raise ApiError(504, self.service._late()) from None
        except WithdrawnError:
            raise ApiError(503, "the server is shutting down; retry", headers={"Retry-After": "1"}) from None
        finally:
            self.pending.cancel()
        if isinstance(result, Generated):
            self.finish_reason = "length" if result.finish_reason == "length" else "stop"
            self.tokens = list(result.tokens)
        final = model.decode(self.tokens)
        if final.startswith(self.text) and len(final) > len(self.text):
            yield final[len(self.text) :]
        self.text = final

    async def complete(self) -> str:
        async for _ in self.deltas():
            pass
        return self.text


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Characters at the end of `text` not to send yet: a partial UTF-8 character, or a prefix of a stop."""
    hold = len(text) - len(text.rstrip("\ufffd"))
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:size]):
                hold = max(hold, size)
                break
    return hold

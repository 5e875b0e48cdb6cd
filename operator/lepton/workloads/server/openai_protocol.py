"""OpenAI-compatible request models (/v1/completions, /v1/chat/completions, /v1/embeddings).

Like OpenAI itself, an unrecognised field is a 400 naming it. Fields OpenAI defines but this server does
not implement are accepted only at their neutral value (n=1, echo=false, no logprobs, no penalties, no
tools), so a client that sends its defaults works and one that asks for more learns it is not there.
Differences from OpenAI, on purpose: temperature defaults to 0 (greedy, reproducible and equal
batched or alone); max_tokens defaults to 16 for completions (as OpenAI) and to the server's
maxOutputTokens for chat.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .errors import ApiError
from .protocol import MAX_SEED, Strict, check_text

MAX_PROMPTS = 256
MAX_STOPS = 4


class StreamOptions(Strict):
    include_usage: bool = False


class TextPart(Strict):
    type: Literal["text"]
    text: str


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = Field(default=None, max_length=256)


class ResponseFormat(Strict):
    type: Literal["text"]


class Sampling(Strict):
    model: str | None = Field(default=None, max_length=256)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=-MAX_SEED, le=MAX_SEED)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    n: Literal[1] = 1
    user: str | None = Field(default=None, max_length=256)
    presence_penalty: Literal[0] = 0
    frequency_penalty: Literal[0] = 0
    logit_bias: dict[str, Any] | None = None

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOPS:
            raise ApiError(400, f"stop: at most {MAX_STOPS} sequences", param="stop")
        for i, s in enumerate(stops):
            if not s:
                raise ApiError(400, f"stop[{i}] is empty", param="stop")
        if self.logit_bias:
            raise ApiError(400, "logit_bias is not supported by this server", param="logit_bias")
        if self.stream_options is not None and not self.stream:
            raise ApiError(400, "stream_options is only allowed with stream: true", param="stream_options")
        return stops


class CompletionRequest(Sampling):
    prompt: str | list[str]
    echo: Literal[False] = False
    logprobs: None = None
    best_of: Literal[1] | None = None
    suffix: None = None

    def prompts(self) -> list[str]:
        return text_list(self.prompt, "prompt", "prompts")


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1, max_length=1024)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: Literal[False] = False
    top_logprobs: None = None
    response_format: ResponseFormat | None = None
    tools: list[Any] | None = Field(default=None, max_length=0)
    tool_choice: Literal["none"] | None = None
    parallel_tool_calls: bool | None = None

    def turns(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for i, m in enumerate(self.messages):
            content = m.content if isinstance(m.content, str) else "".join(p.text for p in m.content)
            check_text(content, f"messages[{i}].content")
            out.append(("system" if m.role == "developer" else m.role, content))
        return out

    def wanted_tokens(self) -> int | None:
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise ApiError(400, "give max_tokens or max_completion_tokens, not both", param="max_tokens")
        return self.max_completion_tokens or self.max_tokens


class EmbeddingRequest(Strict):
    model: str | None = Field(default=None, max_length=256)
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: None = None
    user: str | None = Field(default=None, max_length=256)

    def texts(self) -> list[str]:
        return text_list(self.input, "input", "texts")


def text_list(value: str | list[str], field: str, what: str) -> list[str]:
    """One text or a list of them (OpenAI accepts both), each checked, at most MAX_PROMPTS."""
    texts = [value] if isinstance(value, str) else value
    if not texts:
        raise ApiError(400, f"{field}: give at least one {what[:-1]}", param=field)
    if len(texts) > MAX_PROMPTS:
        raise ApiError(400, f"{field}: at most {MAX_PROMPTS} {what} per request", param=field)
    for i, text in enumerate(texts):
        check_text(text, field if isinstance(value, str) else f"{field}[{i}]")
    return texts

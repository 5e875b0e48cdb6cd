"""The units of work between the HTTP layer and the model, and the model's interface as the HTTP layer
sees it. Kept free of torch so the routes, the protocol parsing and the batcher import in a blink: the
server answers /v2/health/live (and 503 on ready) while torch is still being imported and loaded."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from lepton.api.inferenceservice import ServeTask

from .batcher import Pending

Kind = Literal["generate", "classify", "embed"]
FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True)
class Job:
    """One text to run: its token ids, and for generation the sampling settings."""

    kind: Kind
    ids: tuple[int, ...]
    max_tokens: int = 0
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    @property
    def length(self) -> int:
        """What the batcher counts: the sequence length the forward reaches (prompt + new tokens)."""
        return len(self.ids) + self.max_tokens


@dataclass(frozen=True)
class Generated:
    tokens: tuple[int, ...]  # without the end-of-sequence token
    finish_reason: FinishReason


@dataclass(frozen=True)
class Classified:
    logits: tuple[float, ...]
    label: str


@dataclass(frozen=True)
class Embedded:
    vector: tuple[float, ...]


Result = Generated | Classified | Embedded


class Model(Protocol):
    """A loaded, warmed model (lepton.workloads.server.model.LoadedModel)."""

    @property
    def task(self) -> ServeTask: ...

    @property
    def context(self) -> int:
        """Most positions the model takes (prompt + generated)."""

    @property
    def labels(self) -> Sequence[str]:
        """Classification labels by index."""

    @property
    def has_chat_template(self) -> bool: ...

    @property
    def hidden_size(self) -> int:
        """The length of an embedding."""

    def encode(self, text: str, special: bool = True) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def chat_prompt(self, messages: Sequence[tuple[str, str]]) -> str: ...

    def forward(self, items: Sequence[Pending[Job]]) -> list[Result]: ...

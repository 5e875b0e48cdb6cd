"""The model: transformers loading, and batched forwards whose results equal unbatched ones.

Why each request in a batch gets what it would get alone:
- Classification and embeddings pad on the RIGHT with an attention mask: a real token never attends to
  padding (masked; and for causal models padding lies in its future), positions are the same as alone,
  and pooling (the last real token, or the masked mean) reads real tokens only.
- Generation pads on the LEFT (so every row's next token is in the last column) with an attention mask
  AND explicit position ids (cumulative sum of the mask), so a row's positions start at 0 exactly as
  alone; the decode loop then feeds one token per row with the past key/values, extends the mask and
  advances each row's position by one. Each row stops on its own (end-of-sequence or its max_tokens);
  a finished row keeps being fed (its output is ignored) so the cache keeps one shape.
- Greedy decoding (temperature 0, the default) is an argmax: batched and alone agree token for token
  as long as the logits agree to float rounding (batched matrix products may round in another order;
  only an exact near-tie of the top two logits could differ). Sampling (temperature > 0) draws from a
  per-request torch.Generator seeded with the request's seed: reproducible per seed and batch
  composition, not guaranteed equal batched vs alone.
- Per request, not per batch: the generation settings of the model's generation_config (repetition
  penalty, top_k, ...) are NOT applied; what a request asks (max_tokens, temperature, top_p, seed) is all.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from lepton.api.contract import ServerConfig
from lepton.api.inferenceservice import ServeTask

from .batcher import Pending
from .work import Classified, Embedded, FinishReason, Generated, Job, Result

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CLASSES: dict[str, Any] = {
    "causal-lm": AutoModelForCausalLM,
    "sequence-classification": AutoModelForSequenceClassification,
    "embeddings": AutoModel,
}
UNBOUNDED = 1 << 30


class LoadError(Exception):
    """The model could not be loaded; the message's first line says what failed."""


def _device(asked: str) -> torch.device:
    if asked == "cuda" and not torch.cuda.is_available():
        raise LoadError("device cuda was asked for, but torch sees no CUDA device")
    if asked == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(asked)


def _dtype(asked: str, device: torch.device) -> torch.dtype | str:
    if asked == "auto":
        return "auto" if device.type == "cuda" else torch.float32  # half precision is slow or absent on CPU
    return DTYPES[asked]


def load(config: ServerConfig) -> LoadedModel:
    """Load tokenizer and model from the local directory, on the configured device and precision."""
    path = Path(config.model_path)
    if not path.is_dir():
        raise LoadError(f"model path {path} does not exist or is not a directory")
    if not (path / "config.json").is_file():
        raise LoadError(f"model path {path} holds no config.json (expected a save_pretrained directory)")
    device = _device(config.device)
    transformers.utils.logging.set_verbosity_error()  # no progress bars or advice in the server's log
    transformers.utils.logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = CLASSES[config.task].from_pretrained(path, dtype=_dtype(config.dtype, device), local_files_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LoadError(f"cannot load the {config.task} model from {path}: {first}") from exc
    return LoadedModel(config.task, tokenizer, model.to(device).eval(), device)


class LoadedModel:
    """A tokenizer and a model in eval mode; `forward` runs one batch (in the batcher's worker thread)."""

    def __init__(
        self, task: ServeTask, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, device: torch.device
    ) -> None:
        self.task = task
        self.tokenizer = tokenizer
        self.model = model
        self.device = device
        self.pad_id = self._pad_id()
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = self.pad_id  # sequence classifiers find the last real token with it
        self.eos_ids = self._eos_ids()
        self.context = self._context()
        self.takes_positions = "position_ids" in inspect.signature(model.forward).parameters
        id2label = getattr(model.config, "id2label", None) or {}
        count = getattr(model.config, "num_labels", 0) if task == "sequence-classification" else 0
        self.labels: list[str] = [str(id2label.get(i, f"LABEL_{i}")) for i in range(count)]
        self.has_chat_template = bool(getattr(tokenizer, "chat_template", None))
        config = model.config
        self.hidden_size = int(getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0) or 0)

    def _pad_id(self) -> int:
        for candidate in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if isinstance(candidate, int):
                return candidate
        return 0  # padding is masked everywhere; its id only has to exist

    def _eos_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        gen = getattr(self.model, "generation_config", None)
        for value in (self.tokenizer.eos_token_id, getattr(gen, "eos_token_id", None)):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, list):
                ids.update(v for v in value if isinstance(v, int))
        return frozenset(ids)

    def _context(self) -> int:
        config = self.model.config
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return UNBOUNDED

    # --- text ---------------------------------------------------------------------------------------

    def encode(self, text: str, special: bool = True) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=special, verbose=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def chat_prompt(self, messages: Sequence[tuple[str, str]]) -> str:
        """The tokenizer's chat template when it has one; otherwise lines of 'role: content' and a last
        line 'assistant:' for the model to continue."""
        if self.has_chat_template:
            turns = [{"role": role, "content": content} for role, content in messages]
            return str(self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True))
        return "".join(f"{role}: {content}\n" for role, content in messages) + "assistant:"

    # --- batches ------------------------------------------------------------------------------------

    def forward(self, items: Sequence[Pending[Job]]) -> list[Result]:
        """One batch of one kind (the batcher groups by kind)."""
        jobs = [x.payload for x in items]
        return self.run(jobs, [x.alive for x in items], [x.emit for x in items])

    @torch.inference_mode()
    def run(
        self, jobs: Sequence[Job], alive: Sequence[Callable[[], bool]], emit: Sequence[Callable[[Any], None]]
    ) -> list[Result]:
        kind = jobs[0].kind
        if any(j.kind != kind for j in jobs):
            raise ValueError("one batch holds one kind of job")
        if kind == "generate":
            return list(self._generate(jobs, alive, emit))
        if kind == "classify":
            return list(self._classify(jobs))
        return list(self._embed(jobs))

    def warm_up(self) -> None:
        """One forward through the serving path, so the first request pays no lazy initialisation."""
        ids = tuple(self.encode("Hello")) or (self.pad_id,)
        kind = {"causal-lm": "generate", "sequence-classification": "classify", "embeddings": "embed"}[self.task]
        job = Job(kind, ids, max_tokens=1 if kind == "generate" else 0)  # type: ignore[arg-type]
        self.run([job], [lambda: True], [lambda _: None])

    def _right_padded(self, jobs: Sequence[Job]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(j.ids) for j in jobs)
        ids = torch.full((len(jobs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for row, job in enumerate(jobs):
            ids[row, : len(job.ids)] = torch.tensor(job.ids)
            mask[row, : len(job.ids)] = 1
        return ids.to(self.device), mask.to(self.device)

    def _classify(self, jobs: Sequence[Job]) -> list[Classified]:
        ids, mask = self._right_padded(jobs)
        logits = self.model(input_ids=ids, attention_mask=mask).logits.float().cpu()
        return [
            Classified(tuple(row.tolist()), self.labels[int(row.argmax())] if self.labels else str(int(row.argmax())))
            for row in logits
        ]

    def _embed(self, jobs: Sequence[Job]) -> list[Embedded]:
        """Mean of the last hidden states over the real tokens (the causal-lm's own, before its head)."""
        ids, mask = self._right_padded(jobs)
        if self.task == "causal-lm":
            hidden = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        else:
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(torch.float32)
        pooled = (hidden.float() * weights).sum(dim=1) / weights.sum(dim=1)
        return [Embedded(tuple(row.tolist())) for row in pooled.cpu()]

    def _generate(
        self, jobs: Sequence[Job], alive: Sequence[Callable[[], bool]], emit: Sequence[Callable[[Any], None]]
    ) -> list[Generated]:
        count, width = len(jobs), max(len(j.ids) for j in jobs)
        ids = torch.full((count, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((count, width), dtype=torch.long)
        for row, job in enumerate(jobs):
            ids[row, width - len(job.ids) :] = torch.tensor(job.ids)
            mask[row, width - len(job.ids) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        generators = [_generator(j.seed) if j.temperature > 0 else None for j in jobs]
        out_tokens: list[list[int]] = [[] for _ in jobs]
        finished: list[FinishReason | None] = [None] * count
        inputs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "use_cache": True}
        if self.takes_positions:
            inputs["position_ids"] = positions
        next_position = positions[:, -1:] + 1
        while True:
            out = self.model(**inputs)
            logits = out.logits[:, -1, :].float()
            chosen = logits.argmax(dim=-1).tolist()
            for row, job in enumerate(jobs):
                if finished[row] is not None:
                    continue
                token = chosen[row] if generators[row] is None else _sample(logits[row], job, generators[row])
                chosen[row] = token
                if token in self.eos_ids:
                    finished[row] = "stop"
                    continue
                out_tokens[row].append(token)
                emit[row](token)
                if len(out_tokens[row]) >= job.max_tokens:
                    finished[row] = "length"
                elif not alive[row]():
                    finished[row] = "cancelled"
            if all(f is not None for f in finished):
                break
            feed = torch.tensor([t if f is None else self.pad_id for t, f in zip(chosen, finished, strict=True)])
            mask = torch.cat([mask, torch.ones((count, 1), dtype=mask.dtype, device=self.device)], dim=-1)
            inputs = {
                "input_ids": feed.view(count, 1).to(self.device),
                "attention_mask": mask,
                "past_key_values": out.past_key_values,
                "use_cache": True,
            }
            if self.takes_positions:
                inputs["position_ids"] = next_position
            next_position = next_position + 1
        return [Generated(tuple(t), f or "stop") for t, f in zip(out_tokens, finished, strict=True)]


def _generator(seed: int | None) -> torch.Generator:
    gen = torch.Generator()
    gen.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
    return gen


def _sample(logits: torch.Tensor, job: Job, gen: torch.Generator | None) -> int:
    """One token from softmax(logits / temperature), restricted to the top-p nucleus, drawn with `gen`."""
    probs = torch.softmax(logits.cpu() / job.temperature, dim=-1)
    if job.top_p < 1.0:
        ordered, index = probs.sort(descending=True)
        keep = (ordered.cumsum(0) - ordered) < job.top_p  # the most likely token is always kept
        probs = torch.zeros_like(probs).scatter(0, index[keep], ordered[keep])
    return int(torch.multinomial(probs, 1, generator=gen).item())


def timed_load(config: ServerConfig) -> tuple[LoadedModel, float]:
    """Load and warm up; the seconds it took (lepton_server_model_load_seconds)."""
    start = time.monotonic()
    model = load(config)
    model.warm_up()
    return model, time.monotonic() - start

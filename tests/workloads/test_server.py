"""The model server as a real process on CPU, over real HTTP, with tiny models built here.

Servers (started together, once per module):
- lm: causal-lm, batches of up to 8 with a 20 ms delay, v2 + OpenAI, a 64 KiB body limit.
- classifier / embedder: a tiny GPT-2 sequence classifier and the tiny model as an embeddings model
  (v2 only; the classifier plays the canary role).
- slow: causal-lm with a 2-request queue and a 1.5 s batch delay (a lone request waits there: it is in
  flight long enough to fill the queue or to be caught by SIGTERM) and a 4 s request timeout.
Results are compared with the same models called directly in this process, one text at a time.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lepton.local.backend import free_port

NAME = "tiny"
HEADERS = {"Content-Type": "application/json"}


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Server:
    """One `python -m lepton.workloads.server` process; `seen` records the ready statuses while starting."""

    config: dict[str, Any]
    log: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    seen: list[tuple[str, int, str]] = field(default_factory=list)

    def start(self, extra_env: dict[str, str] | None = None) -> Server:
        self.port = self.port or free_port()
        config = {"name": NAME, "host": "127.0.0.1", "port": self.port, **self.config}
        env = {**os.environ, "LEPTON_SERVER_CONFIG": json.dumps(config), "OMP_NUM_THREADS": "1",
               "TOKENIZERS_PARALLELISM": "false", "LEPTON_TERMINATION_LOG": str(self.log.with_suffix(".term")),
               **(extra_env or {})}  # fmt: skip
        self.proc = subprocess.Popen([sys.executable, "-m", "lepton.workloads.server"], env=env,
                                     stdout=self.log.open("wb"), stderr=subprocess.STDOUT)  # fmt: skip
        return self

    def wait_ready(self, timeout: float = 120) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            for path in ("/v2/health/live", "/v2/health/ready"):
                try:
                    r = self.call("GET", path, timeout=2)
                except OSError:
                    break
                self.seen.append((path, r.status, r.body.decode()))
            if self.seen and self.seen[-1][:2] == ("/v2/health/ready", 200):
                return self
            time.sleep(0.02)
        raise AssertionError(f"server not ready in {timeout}s:\n{self.log.read_text()[-3000:]}")

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = body if isinstance(body, bytes | None) else json.dumps(body).encode()
            conn.request(method, path, body=data, headers=HEADERS if headers is None else headers)
            resp = conn.getresponse()
            return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    def post(self, path: str, body: Any, **kw: Any) -> Reply:
        return self.call("POST", path, body, **kw)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def rss_kib(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def metrics(self) -> dict[str, float]:
        out = {}
        for line in self.call("GET", "/metrics").body.decode().splitlines():
            if line and not line.startswith("#"):
                key, value = line.rsplit(" ", 1)
                out[key] = float(value)
        return out


def raw(port: int, data: bytes, wait: float = 10, then: bytes = b"", pause: float = 0) -> bytes:
    """Send bytes over a plain socket (optionally more after a pause) and read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        if then:
            time.sleep(pause)
            with contextlib.suppress(OSError):
                s.sendall(then)
        chunks = []
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


# --- models and servers ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import AutoConfig, AutoTokenizer, GPT2ForSequenceClassification

    out = tmp_path_factory.mktemp("classifier")
    config = AutoConfig.from_pretrained(tiny_model, num_labels=3,
                                        id2label={0: "billing", 1: "shipping", 2: "other"},
                                        label2id={"billing": 0, "shipping": 1, "other": 2})  # fmt: skip
    torch.manual_seed(1)
    GPT2ForSequenceClassification(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def servers(
    tiny_model: Path, classifier_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Server]]:
    logs = tmp_path_factory.mktemp("server-logs")
    lm = {"task": "causal-lm", "modelPath": str(tiny_model), "maxBatchSize": 8, "maxBatchDelayMs": 20,
          "maxOutputTokens": 32, "maxRequestBytes": 65536, "requestTimeoutSeconds": 60,
          "metadata": {"trainingJob": "default/tiny-gpt2", "step": "40"}}  # fmt: skip
    configs: dict[str, dict[str, Any]] = {
        "lm": lm,
        "classifier": {"task": "sequence-classification", "modelPath": str(classifier_model), "role": "canary",
                       "protocols": ["v2"]},
        "embedder": {"task": "embeddings", "modelPath": str(tiny_model), "protocols": ["v2"]},
        "slow": {**lm, "maxQueueLength": 2, "maxBatchDelayMs": 1500, "requestTimeoutSeconds": 4, "drainSeconds": 20},
    }  # fmt: skip
    started = {name: Server(config, logs / f"{name}.log").start() for name, config in configs.items()}
    try:
        for server in started.values():
            server.wait_ready()
        yield started
    finally:
        for server in started.values():
            server.stop()


@pytest.fixture(scope="module")
def lm(servers: dict[str, Server]) -> Server:
    return servers["lm"]


@dataclass
class Direct:
    """The served models, called directly one text at a time: what the server must reproduce."""

    tokenizer: Any
    lm: Any
    classifier: Any
    base: Any

    def generate(self, prompt: str, max_tokens: int) -> tuple[str, int]:
        import torch

        ids = self.tokenizer(prompt, return_tensors="pt")["input_ids"]
        out = self.lm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, do_sample=False,
                               pad_token_id=self.tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()  # fmt: skip
        if out and out[-1] == self.tokenizer.eos_token_id:
            out = out[:-1]
        return self.tokenizer.decode(out, skip_special_tokens=True), len(out)

    def logits(self, text: str) -> list[float]:
        ids = self.tokenizer(text, return_tensors="pt")["input_ids"]
        return [float(x) for x in self.classifier(input_ids=ids).logits[0]]

    def embedding(self, text: str) -> list[float]:
        ids = self.tokenizer(text, return_tensors="pt")["input_ids"]
        return [float(x) for x in self.base(input_ids=ids).last_hidden_state[0].mean(dim=0)]


@pytest.fixture(scope="module")
def direct(tiny_model: Path, classifier_model: Path) -> Direct:
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    models: list[Any] = [
        AutoModelForCausalLM.from_pretrained(tiny_model),
        AutoModelForSequenceClassification.from_pretrained(classifier_model),
        AutoModel.from_pretrained(tiny_model),
    ]
    for model in models:
        model.eval()
    return Direct(AutoTokenizer.from_pretrained(tiny_model), *models)


PROMPTS = [
    "Hello",
    "My order has not arrived and I have been waiting for two weeks",
    "refund please",
    "The app crashes when I open the settings page on my phone",
    "a",
    "Why is the invoice wrong again this month?",
    "Can I change the shipping address of an order that already left the warehouse?",
    "thanks",
]


def completion(server: Server, prompt: str, max_tokens: int, **extra: Any) -> Reply:
    return server.post("/v1/completions", {"model": NAME, "prompt": prompt, "max_tokens": max_tokens, **extra})


def v2_infer(texts: list[str], **parameters: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]}
    if parameters:
        doc["parameters"] = parameters
    return doc


# --- lifecycle and metadata --------------------------------------------------------------------------------


def test_ready_is_503_until_the_model_is_loaded(lm: Server) -> None:
    statuses = [(path, status) for path, status, _ in lm.seen]
    first_ready_200 = statuses.index(("/v2/health/ready", 200))
    loading = [body for path, status, body in lm.seen[:first_ready_200] if path.endswith("ready") and status == 503]
    assert loading, f"ready never answered 503 before the model was loaded: {statuses[:10]}"
    assert json.loads(loading[0]) == {"ready": False, "reason": "loading: the model is not loaded yet"}
    assert ("/v2/health/live", 200) in statuses[:first_ready_200]  # alive (not restarted) while loading
    assert lm.metrics()["lepton_server_model_load_seconds"] > 0
    assert "lepton-server ready on http://127.0.0.1:" + str(lm.port) in lm.log.read_text()


def test_metadata_routes_and_role_header(servers: dict[str, Server]) -> None:
    lm, classifier = servers["lm"], servers["classifier"]
    server_meta = lm.call("GET", "/v2")
    assert server_meta.status == 200 and server_meta.json()["name"] == "lepton-server"
    meta = lm.call("GET", f"/v2/models/{NAME}").json()
    assert meta["name"] == NAME and meta["task"] == "causal-lm"
    assert meta["metadata"] == {"trainingJob": "default/tiny-gpt2", "step": "40"}
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in meta["outputs"]] == ["text_output", "finish_reason"]
    cmeta = classifier.call("GET", f"/v2/models/{NAME}").json()
    assert cmeta["outputs"][0] == {"name": "logits", "datatype": "FP32", "shape": [-1, 3]}
    assert cmeta["parameters"]["labels"] == ["billing", "shipping", "other"]
    assert lm.call("GET", f"/v2/models/{NAME}/ready").json() == {"name": NAME, "ready": True}
    assert lm.call("GET", "/v2/models/other/ready").status == 404
    assert lm.call("GET", "/v1/models").json()["data"][0]["id"] == NAME
    for reply in (server_meta, lm.call("GET", "/nope"), lm.call("GET", "/metrics")):
        assert reply.headers["x-lepton-role"] == "primary"
    for reply in (classifier.call("GET", "/v2/health/ready"), classifier.post("/v2/models/x/infer", {})):
        assert reply.headers["x-lepton-role"] == "canary"
    assert classifier.call("GET", "/v1/models").status == 404  # openai not served there


# --- results equal unbatched inference ---------------------------------------------------------------------


def test_generation_batched_equals_the_model_alone(lm: Server, direct: Direct) -> None:
    """One v2 request with 8 texts (one batch, left-padded) and 8 concurrent OpenAI requests with their
    own max_tokens (rows stopping at different steps) give what greedy generate gives per prompt."""
    expected = {(p, k): direct.generate(p, k) for p in PROMPTS for k in (3, 12)}
    before = lm.metrics()
    reply = lm.post(f"/v2/models/{NAME}/infer", v2_infer(PROMPTS, max_tokens=12))
    assert reply.status == 200, reply.body
    after = lm.metrics()
    assert after["lepton_server_batch_size_count"] - before["lepton_server_batch_size_count"] == 1  # one forward
    assert after["lepton_server_batch_size_sum"] - before["lepton_server_batch_size_sum"] == len(PROMPTS)
    outputs = {o["name"]: o for o in reply.json()["outputs"]}
    assert outputs["text_output"]["shape"] == [len(PROMPTS)]
    assert outputs["text_output"]["data"] == [expected[(p, 12)][0] for p in PROMPTS]
    assert outputs["finish_reason"]["data"] == ["length" if expected[(p, 12)][1] == 12 else "stop" for p in PROMPTS]
    wanted = [(p, 3 if i % 2 else 12) for i, p in enumerate(PROMPTS)]
    with ThreadPoolExecutor(len(wanted)) as pool:
        replies = list(pool.map(lambda w: completion(lm, w[0], w[1]), wanted))
    for w, r in zip(wanted, replies, strict=True):
        assert r.status == 200, r.body
        body = r.json()
        assert body["choices"][0]["text"] == expected[w][0], w
        assert body["usage"]["completion_tokens"] == expected[w][1]


def test_64_concurrent_clients_get_their_own_answers_in_batches(lm: Server, direct: Direct) -> None:
    prompts = [f"{PROMPTS[i % len(PROMPTS)]} {i}" for i in range(64)]
    expected = [direct.generate(p, 6)[0] for p in prompts]
    before = lm.metrics()
    with ThreadPoolExecutor(64) as pool:
        replies = list(pool.map(lambda p: completion(lm, p, 6), prompts))
    assert [r.status for r in replies] == [200] * 64
    assert [r.json()["choices"][0]["text"] for r in replies] == expected
    after = lm.metrics()
    batches = after["lepton_server_batch_size_count"] - before["lepton_server_batch_size_count"]
    singles = after['lepton_server_batch_size_bucket{le="1.0"}'] - before['lepton_server_batch_size_bucket{le="1.0"}']
    assert 0 < batches < 64 and singles < batches  # some forwards carried several requests
    assert after["lepton_server_batch_size_sum"] - before["lepton_server_batch_size_sum"] == 64


def test_classification_batched_equals_the_model_alone(servers: dict[str, Server], direct: Direct) -> None:
    reply = servers["classifier"].post(f"/v2/models/{NAME}/infer", v2_infer(PROMPTS) | {"id": "req-1"})
    assert reply.status == 200, reply.body
    body = reply.json()
    assert body["id"] == "req-1" and body["model_name"] == NAME
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["logits"]["shape"] == [len(PROMPTS), 3] and outputs["logits"]["datatype"] == "FP32"
    rows = [outputs["logits"]["data"][i * 3 : i * 3 + 3] for i in range(len(PROMPTS))]
    labels = ["billing", "shipping", "other"]
    for prompt, row, label in zip(PROMPTS, rows, outputs["label"]["data"], strict=True):
        alone = direct.logits(prompt)
        assert max(abs(a - b) for a, b in zip(row, alone, strict=True)) < 1e-5
        assert label == labels[alone.index(max(alone))]
    only = servers["classifier"].post(f"/v2/models/{NAME}/infer", v2_infer(["x"]) | {"outputs": [{"name": "label"}]})
    assert [o["name"] for o in only.json()["outputs"]] == ["label"]


def test_embeddings_batched_equal_the_model_alone(servers: dict[str, Server], direct: Direct) -> None:
    reply = servers["embedder"].post(f"/v2/models/{NAME}/infer", v2_infer(PROMPTS))
    assert reply.status == 200, reply.body
    out = reply.json()["outputs"][0]
    width = out["shape"][1]
    assert out["name"] == "embedding" and out["shape"] == [len(PROMPTS), 64]
    openai = servers["lm"].post("/v1/embeddings", {"model": NAME, "input": PROMPTS})  # the causal-lm, mean-pooled
    packed = servers["lm"].post("/v1/embeddings", {"input": PROMPTS[1], "encoding_format": "base64"})
    assert openai.status == 200 and packed.status == 200, (openai.body, packed.body)
    for i, prompt in enumerate(PROMPTS):
        alone = direct.embedding(prompt)
        served = out["data"][i * width : (i + 1) * width]
        assert max(abs(a - b) for a, b in zip(served, alone, strict=True)) < 1e-5
        via_openai = openai.json()["data"][i]["embedding"]
        assert max(abs(a - b) for a, b in zip(via_openai, alone, strict=True)) < 1e-5
    unpacked = struct.unpack("<64f", base64.b64decode(packed.json()["data"][0]["embedding"]))
    assert max(abs(a - b) for a, b in zip(unpacked, direct.embedding(PROMPTS[1]), strict=True)) < 1e-5


def test_sampling_is_reproducible_per_seed(lm: Server) -> None:
    def sample(seed: int) -> str:
        r = completion(lm, "Hello", 12, temperature=1.0, top_p=0.95, seed=seed)
        assert r.status == 200, r.body
        return str(r.json()["choices"][0]["text"])

    first = sample(7)
    assert sample(7) == first
    assert any(sample(s) != first for s in (8, 9, 10))


# --- streaming ---------------------------------------------------------------------------------------------


def sse(reply: Reply) -> list[Any]:
    assert reply.status == 200, reply.body
    assert reply.headers["content-type"].startswith("text/event-stream")
    events = [e for e in reply.body.decode().split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    return [json.loads(e[6:]) for e in events[:-1]]


def test_streaming_completions_and_chat_end_with_done(lm: Server, direct: Direct) -> None:
    prompt = PROMPTS[3]
    chunks = sse(completion(lm, prompt, 10, stream=True))
    assert "".join(c["choices"][0]["text"] for c in chunks) == direct.generate(prompt, 10)[0]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["object"] == "text_completion" for c in chunks)

    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "where is my order"}]
    whole = lm.post("/v1/chat/completions", {"model": NAME, "messages": messages, "max_tokens": 8})
    assert whole.status == 200, whole.body
    answer = whole.json()["choices"][0]["message"]
    # no chat template in the tiny tokenizer: "role: content" lines, then "assistant:"
    assert answer["content"] == direct.generate("system: be brief\nuser: where is my order\nassistant:", 8)[0]
    streamed = sse(lm.post("/v1/chat/completions", {"messages": messages, "max_tokens": 8, "stream": True,
                                                    "stream_options": {"include_usage": True}}))  # fmt: skip
    assert streamed[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in streamed[:-1]) == answer["content"]
    assert streamed[-2]["choices"][0]["finish_reason"] == "length"
    assert streamed[-1]["choices"] == [] and streamed[-1]["usage"]["completion_tokens"] == 8


def test_stop_sequences_end_the_text_before_them(lm: Server, direct: Direct) -> None:
    full, _ = direct.generate(PROMPTS[1], 20)
    stop = full[5:8]
    cut = full.index(stop)
    reply = completion(lm, PROMPTS[1], 20, stop=[stop])
    assert reply.json()["choices"][0] | {"text": None} == {"index": 0, "text": None, "logprobs": None,
                                                            "finish_reason": "stop"}  # fmt: skip
    assert reply.json()["choices"][0]["text"] == full[:cut]
    chunks = sse(completion(lm, PROMPTS[1], 20, stop=stop, stream=True))
    assert "".join(c["choices"][0]["text"] for c in chunks) == full[:cut]


# --- bad input: every refusal is a 4xx that says what is wrong, and the server carries on --------------------

INFER = f"/v2/models/{NAME}/infer"
TEXT = {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hello"]}
OK_V2 = {"inputs": [TEXT]}
CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "hi"}]


@dataclass(frozen=True)
class Bad:
    name: str
    path: str
    body: Any
    status: int
    says: str = ""  # a piece of the message
    method: str = "POST"
    headers: dict[str, str] | None = None


def with_text(**changes: Any) -> dict[str, Any]:
    return {"inputs": [TEXT | changes]}


BAD = [
    Bad("malformed json", INFER, b'{"inputs": [', 400, "not valid JSON"),
    Bad("empty body", INFER, b"", 400, "empty"),
    Bad("whitespace body", INFER, b"  \n ", 400, "empty"),
    Bad("json array", INFER, b"[1, 2]", 400, "JSON object"),
    Bad("json string", INFER, b'"hello"', 400, "JSON object"),
    Bad("invalid utf-8", INFER, b'{"inputs": "\xff\xfe"}', 400, "UTF-8"),
    Bad("NaN", INFER, b'{"inputs": [], "parameters": {"temperature": NaN}}', 400, "NaN"),
    Bad("Infinity", INFER, b'{"inputs": [], "parameters": {"temperature": Infinity}}', 400, "Infinity"),
    Bad("deep nesting", INFER, b"[" * 60000, 400, "nested too deeply"),
    Bad("missing inputs", INFER, {}, 400, "inputs: required field is missing"),
    Bad("no inputs", INFER, {"inputs": []}, 400, "inputs"),
    Bad("inputs not a list", INFER, {"inputs": "hello"}, 400, "inputs"),
    Bad("wrong input name", INFER, with_text(name="prompt"), 400, "named 'text'"),
    Bad("two inputs", INFER, {"inputs": [TEXT, TEXT]}, 400, "exactly one input"),
    Bad("wrong datatype", INFER, with_text(datatype="FP32"), 400, "BYTES"),
    Bad("shape mismatch", INFER, with_text(shape=[3]), 400, "data holds 1"),
    Bad("huge shape", INFER, with_text(shape=[10**20]), 400, "shape"),
    Bad("2-d shape", INFER, with_text(shape=[1, 1]), 400, "shape must be [n]"),
    Bad("negative shape", INFER, with_text(shape=[-1]), 400, "shape must be [n]"),
    Bad("shape of strings", INFER, with_text(shape=["1"]), 400, "inputs.0.shape.0"),
    Bad("number in data", INFER, with_text(data=[5]), 400, "expected a string"),
    Bad("nested data", INFER, with_text(data=[["hello"]]), 400, "expected a string"),
    Bad("empty text", INFER, with_text(data=[""]), 400, "is empty"),
    Bad(
        "lone surrogate",
        INFER,
        b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["\\ud800"]}]}',
        400,
        "surrogate",
    ),
    Bad("unknown top-level field", INFER, OK_V2 | {"input": []}, 400, "input: unknown field"),
    Bad("unknown parameter", INFER, OK_V2 | {"parameters": {"beams": 4}}, 400, "parameters.beams: unknown field"),
    Bad("max_tokens as string", INFER, OK_V2 | {"parameters": {"max_tokens": "5"}}, 400, "max_tokens"),
    Bad("max_tokens as bool", INFER, OK_V2 | {"parameters": {"max_tokens": True}}, 400, "max_tokens"),
    Bad("max_tokens zero", INFER, OK_V2 | {"parameters": {"max_tokens": 0}}, 400, "greater than or equal to 1"),
    Bad("max_tokens negative", INFER, OK_V2 | {"parameters": {"max_tokens": -5}}, 400, "max_tokens"),
    Bad("max_tokens huge", INFER, OK_V2 | {"parameters": {"max_tokens": 10**30}}, 400, "max_tokens"),
    Bad("max_tokens over the limit", INFER, OK_V2 | {"parameters": {"max_tokens": 33}}, 400, "at most 32"),
    Bad("temperature too high", INFER, OK_V2 | {"parameters": {"temperature": 5}}, 400, "temperature"),
    Bad("seed negative", INFER, OK_V2 | {"parameters": {"seed": -1}}, 400, "seed"),
    Bad("unknown output", INFER, OK_V2 | {"outputs": [{"name": "logits"}]}, 400, "unknown output 'logits'"),
    Bad("too many input tokens", INFER, with_text(data=["word " * 400]), 400, "at most 128 input tokens"),
    Bad("unknown model", "/v2/models/gpt-9/infer", OK_V2, 404, "'gpt-9' not found"),
    Bad("text/plain", INFER, b"hello", 415, "application/json", headers={"Content-Type": "text/plain"}),
    Bad(
        "form body",
        INFER,
        b"a=1",
        415,
        "application/json",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ),
    Bad("GET on infer", INFER, None, 405, "use POST", method="GET"),
    Bad("POST on ready", "/v2/health/ready", b"{}", 405, "use GET"),
    Bad("body over the limit", INFER, b"x" * 70000, 413, "65536"),
    Bad("unknown route", "/v2/models/tiny/explain", OK_V2, 404, "no route"),
    Bad("completion without prompt", "/v1/completions", {"model": NAME}, 400, "prompt: required field is missing"),
    Bad("completion prompt a number", "/v1/completions", {"prompt": 5}, 400, "prompt"),
    Bad("completion prompt list empty", "/v1/completions", {"prompt": []}, 400, "at least one prompt"),
    Bad("completion token prompt", "/v1/completions", {"prompt": [1, 2, 3]}, 400, "prompt"),
    Bad("completion n=2", "/v1/completions", {"prompt": "x", "n": 2}, 400, "n:"),
    Bad("completion logprobs", "/v1/completions", {"prompt": "x", "logprobs": 5}, 400, "logprobs"),
    Bad("completion unknown field", "/v1/completions", {"prompt": "x", "beam_width": 2}, 400, "beam_width"),
    Bad("completion other model", "/v1/completions", {"prompt": "x", "model": "gpt-9"}, 404, "not found"),
    Bad("completion max_tokens over", "/v1/completions", {"prompt": "x", "max_tokens": 100}, 400, "at most 32"),
    Bad("completion stream of two", "/v1/completions", {"prompt": ["a", "b"], "stream": True}, 400, "single prompt"),
    Bad("completion five stops", "/v1/completions", {"prompt": "x", "stop": list("abcde")}, 400, "at most 4"),
    Bad("completion stream not bool", "/v1/completions", {"prompt": "x", "stream": "yes"}, 400, "stream"),
    Bad("chat without messages", CHAT, {"messages": []}, 400, "messages"),
    Bad("chat unknown role", CHAT, {"messages": [{"role": "wizard", "content": "hi"}]}, 400, "role"),
    Bad("chat content a number", CHAT, {"messages": [{"role": "user", "content": 5}]}, 400, "content"),
    Bad("chat empty content", CHAT, {"messages": [{"role": "user", "content": ""}]}, 400, "is empty"),
    Bad("chat tools", CHAT, {"messages": USER, "tools": [{"type": "function"}]}, 400, "tools"),
    Bad("chat both limits", CHAT, {"messages": USER, "max_tokens": 2, "max_completion_tokens": 2}, 400, "not both"),
    Bad("chat max_tokens over", CHAT, {"messages": USER, "max_completion_tokens": 64}, 400, "at most 32"),
    Bad("chat json mode", CHAT, {"messages": USER, "response_format": {"type": "json_object"}}, 400, "response_format"),
    Bad("embeddings empty list", "/v1/embeddings", {"input": []}, 400, "at least one text"),
    Bad("embeddings dimensions", "/v1/embeddings", {"input": "x", "dimensions": 8}, 400, "dimensions"),
    Bad("GET on completions", "/v1/completions", None, 405, "use POST", method="GET"),
    Bad("unknown openai route", "/v1/responses", {}, 404, "no route"),
]


def check_bad(server: Server, case: Bad) -> None:
    headers = HEADERS if case.headers is None else case.headers
    reply = server.call(case.method, case.path, case.body, headers=headers)
    assert reply.status == case.status, (case.name, reply.status, reply.body[:300])
    body = reply.json()
    if case.path.startswith("/v1/"):
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}, case.name
        message = error["message"]
        assert error["type"] == ("not_found_error" if case.status == 404 else "invalid_request_error"), case.name
    else:
        assert set(body) == {"error"}, case.name
        message = body["error"]
    assert isinstance(message, str) and case.says in message, (case.name, message)
    assert reply.headers["x-lepton-role"] == "primary"


def test_bad_requests_get_a_4xx_that_says_why_and_memory_stays_flat(lm: Server) -> None:
    assert len(BAD) >= 40
    for case in BAD:
        check_bad(lm, case)
    rss = [lm.rss_kib()]
    for _ in range(4):
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda c: check_bad(lm, c), BAD))
        rss.append(lm.rss_kib())
    assert rss[-1] - rss[1] < 16 * 1024, f"RSS grew while repeating bad requests (KiB): {rss}"
    assert completion(lm, "still serving", 2).status == 200
    assert lm.call("GET", "/v2/health/ready").status == 200


def test_prompt_plus_max_tokens_beyond_the_context_is_refused(lm: Server, direct: Direct) -> None:
    words = 1
    while len(direct.tokenizer("word " * words)["input_ids"]) < 110:
        words += 1
    reply = completion(lm, "word " * words, 32)
    assert reply.status == 400
    assert reply.json()["error"]["code"] == "context_length_exceeded"
    assert "context of 128 tokens" in reply.json()["error"]["message"]


def test_broken_http_gets_a_4xx_or_a_clean_close(lm: Server) -> None:
    port = lm.port
    cases = {
        "huge header": b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
        "many headers": b"GET /v2 HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(2000))
        + b"\r\n",
        "garbage request line": b"HELLO THERE\r\n\r\n",
        "bad content-length": b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        "bad chunk size": b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nhello\r\n0\r\n\r\n",
        "chunked over the limit": b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
        b"\r\nTransfer-Encoding: chunked\r\n\r\n" + b"8000\r\n" + b"x" * 0x8000 + b"\r\n"
        + b"8000\r\n" + b"x" * 0x8000 + b"\r\n" + b"8000\r\n" + b"x" * 0x8000 + b"\r\n0\r\n\r\n",
    }  # fmt: skip
    for name, data in cases.items():
        answer = raw(port, data)
        if answer:  # else: the server closed the connection without a word, which is clean too
            status = int(answer.split(b" ", 2)[1])
            assert 400 <= status < 500, (name, answer[:200])
            if name == "chunked over the limit":
                assert status == 413
    assert lm.call("GET", "/v2/health/ready").status == 200


# --- the queue, slow clients, metrics ----------------------------------------------------------------------


def test_a_full_queue_answers_429_with_retry_after(servers: dict[str, Server]) -> None:
    slow = servers["slow"]
    with ThreadPoolExecutor(2) as pool:
        queued = [pool.submit(completion, slow, p, 2) for p in ("one", "two")]
        time.sleep(0.4)  # both now wait in the queue for the batch to fill (1.5 s)
        refused = completion(slow, "three", 2)
        assert refused.status == 429, refused.body
        assert refused.headers["retry-after"] == "1"
        assert "queue is full" in refused.json()["error"]["message"]
        assert [f.result().status for f in queued] == [200, 200]
    assert slow.metrics()['lepton_server_requests_total{code="429",route="/v1/completions"}'] == 1


def test_slow_and_endless_bodies_get_408(servers: dict[str, Server]) -> None:
    port = servers["slow"].port
    head = b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    partial = head + b"Content-Length: 100\r\n\r\n" + b'{"inputs": '
    endless = head + b"Transfer-Encoding: chunked\r\n\r\n" + b'5\r\n{"inp\r\n'
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda d: raw(port, d, wait=15), (partial, endless)))
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"did not arrive within 4 s" in answer
    assert servers["slow"].call("GET", "/v2/health/ready").status == 200


def test_metrics_reflect_the_traffic(lm: Server) -> None:
    before = lm.metrics()
    for prompt in PROMPTS[:3]:
        assert completion(lm, prompt, 4).status == 200
    assert lm.post(INFER, v2_infer(["a", "b"], max_tokens=2)).status == 200
    assert lm.call("GET", "/v2/models/nope").status == 404
    after = lm.metrics()

    def delta(key: str) -> float:
        return after.get(key, 0) - before.get(key, 0)

    assert delta('lepton_server_requests_total{code="200",route="/v1/completions"}') == 3
    assert delta('lepton_server_requests_total{code="200",route="/v2/models/{name}/infer"}') == 1
    assert delta('lepton_server_requests_total{code="404",route="/v2/models/{name}"}') == 1
    assert delta('lepton_server_request_seconds_count{route="/v1/completions"}') == 3
    assert delta("lepton_server_time_to_first_token_seconds_count") == 5  # 3 prompts + 2 texts
    assert delta("lepton_server_queue_wait_seconds_count") == 5
    assert delta("lepton_server_batch_size_sum") == 5
    assert after["lepton_server_queue_depth"] == 0
    assert after["lepton_server_inflight_requests"] == 0  # health and metrics requests are not counted
    assert not [k for k in after if "/v2/models/tiny" in k or "nope" in k]  # route templates, never raw paths


# --- failing starts and graceful stops ---------------------------------------------------------------------


def test_a_missing_model_exits_non_zero_with_a_termination_message(tmp_path: Path) -> None:
    server = Server({"task": "causal-lm", "modelPath": str(tmp_path / "no-such-model")}, tmp_path / "bad.log").start()
    assert server.proc is not None
    try:
        code = server.proc.wait(timeout=90)
    finally:
        server.stop()
    assert code != 0
    message = (tmp_path / "bad.term").read_text()
    assert message.splitlines()[0] == f"model load failed: model path {tmp_path / 'no-such-model'} does not exist or " \
        "is not a directory"  # fmt: skip
    assert "model load failed" in (tmp_path / "bad.log").read_text()


def test_an_invalid_configuration_exits_2_with_a_termination_message(tmp_path: Path) -> None:
    server = Server({"task": "translation", "modelPath": "/x", "maxBatchSize": 0}, tmp_path / "bad.log").start()
    assert server.proc is not None
    assert server.proc.wait(timeout=60) == 2
    message = (tmp_path / "bad.term").read_text()
    assert message.startswith("invalid server configuration: task: ")
    assert "maxBatchSize" in message


def test_sigterm_finishes_requests_in_flight_then_exits_0(servers: dict[str, Server], direct: Direct) -> None:
    """Last: it stops the slow server. A lone request waits 1.5 s for a batch to fill; SIGTERM comes
    meanwhile: ready turns 503 at once, a request sent during the drain is still answered, both finish,
    then the process exits 0."""
    slow = servers["slow"]
    assert slow.proc is not None
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(completion, slow, PROMPTS[0], 5)
        time.sleep(0.3)
        slow.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 1.0
        while (ready := slow.call("GET", "/v2/health/ready")).status != 503:
            assert time.monotonic() < deadline, "ready did not turn 503 on SIGTERM"
            time.sleep(0.02)
        assert ready.json() == {"ready": False, "reason": "draining: the server is shutting down"}
        assert not first.done()
        late = pool.submit(completion, slow, PROMPTS[2], 5)
        assert first.result().status == 200 and late.result().status == 200
        assert first.result().json()["choices"][0]["text"] == direct.generate(PROMPTS[0], 5)[0]
    assert slow.proc.wait(timeout=30) == 0
    assert "draining" in slow.log.read_text()

"""P3's baseline: the model server a straightforward implementation would be.

aiohttp with the routes the benchmark uses (POST /v1/completions, GET /v2/health/ready and
/v2/health/live), the model loaded with transformers once at start, and exactly one request per
`model.generate(...)`: greedy, `max_new_tokens` = the request's max_tokens, run in a worker thread so
the event loop keeps accepting, and under one lock so forwards never overlap (two concurrent forwards
on a CPU model only fight over the same cores). No batching, no queue limit: requests wait for the lock.

    python -m benchmarks.naive_server --model DIR --name tiny --port 8081 --threads 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any, cast

import torch
from aiohttp import web
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class NaiveModel:
    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    max_output_tokens: int
    lock: asyncio.Lock

    def generate(self, prompt: str, max_tokens: int) -> tuple[str, int, int]:
        """One prompt, one greedy `generate`: (completion text, prompt tokens, completion tokens)."""
        with torch.inference_mode():
            enc = self.tokenizer(prompt, return_tensors="pt")
            out = cast(Any, self.model).generate(**enc, max_new_tokens=max_tokens, do_sample=False,
                                                 pad_token_id=self.tokenizer.pad_token_id)  # fmt: skip
        prompt_len = int(enc["input_ids"].shape[1])
        new = out[0, prompt_len:]
        return str(self.tokenizer.decode(new, skip_special_tokens=True)), prompt_len, int(new.shape[0])


MODEL_KEY = web.AppKey("model", NaiveModel)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "invalid_request_error"}}, status=status)


async def completions(request: web.Request) -> web.Response:
    state = request.app[MODEL_KEY]
    try:
        body: Any = await request.json()
    except ValueError:
        return _error(400, "the body is not JSON")
    if not isinstance(body, dict):
        return _error(400, "the body must be a JSON object")
    prompt, max_tokens = body.get("prompt"), body.get("max_tokens", 16)
    if not isinstance(prompt, str) or not prompt:
        return _error(400, "'prompt' must be a non-empty string")
    if not isinstance(max_tokens, int) or not 1 <= max_tokens <= state.max_output_tokens:
        return _error(400, f"'max_tokens' must be an integer in 1..{state.max_output_tokens}")
    if body.get("temperature", 0) not in (0, 0.0):
        return _error(400, "only greedy decoding (temperature 0) is served")
    async with state.lock:
        text, n_prompt, n_new = await asyncio.to_thread(state.generate, prompt, max_tokens)
    return web.json_response({
        "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
        "model": state.name,
        "choices": [{"index": 0, "text": text, "finish_reason": "length" if n_new == max_tokens else "stop"}],
        "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_new, "total_tokens": n_prompt + n_new},
    })  # fmt: skip


async def healthy(_: web.Request) -> web.Response:
    """The model is loaded before the app listens, so both probes are simply true."""
    return web.json_response({"ready": True})


def make_app(state: NaiveModel) -> web.Application:
    app = web.Application(client_max_size=1 << 20)
    app[MODEL_KEY] = state
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v2/health/ready", healthy)
    app.router.add_get("/v2/health/live", healthy)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="save_pretrained directory")
    parser.add_argument("--name", default="tiny", help="model name (accepted, not checked, in requests)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")),
                        help="torch intra-op threads (default: $OMP_NUM_THREADS, else 1)")  # fmt: skip
    parser.add_argument("--max-output-tokens", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.train(False)  # inference mode for dropout
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    state = NaiveModel(args.name, model, tokenizer, args.max_output_tokens, asyncio.Lock())
    web.run_app(make_app(state), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()

"""`python -m lepton.workloads.server`: read the ServerConfig, serve, load the model, drain on SIGTERM.

Lifecycle, in the order a pod sees it:
1. The HTTP port opens first (live 200, ready 503), then the model loads and warms up in the forward
   worker thread: probes get answers during a long load, and torch is imported only there.
2. Ready: /v2/health/ready answers 200, and one line on stdout gives the real address
   (`lepton-server ready on http://HOST:PORT (model NAME, load 1.2s)`), the real port when 0 was asked.
3. A load failure writes a short message (first line: what failed) to the termination log
   ($LEPTON_TERMINATION_LOG, default /dev/termination-log, skipped when not writable), where Kubernetes
   shows it in the pod's lastState, logs it, and exits 1. An invalid configuration exits 2 the same way.
4. SIGTERM or SIGINT: ready turns 503 at once; requests are still answered (the endpoints may take a
   moment to drop the pod; the Deployment's preStop sleep covers most of it) until nothing is in flight
   and nothing arrived for QUIET_SECONDS, or drainSeconds passed; then the port closes and it exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path

from aiohttp import web
from pydantic import ValidationError

from lepton.api.contract import SERVER_CONFIG_ENV, ServerConfig

from .app import build_app
from .batcher import Batcher, Worker
from .metrics import Metrics
from .service import Service
from .state import State
from .work import Job, Model, Result

TERMINATION_LOG_ENV = "LEPTON_TERMINATION_LOG"
TERMINATION_LOG = "/dev/termination-log"
QUIET_SECONDS = 0.5
LINGER_SECONDS = 2.0
MESSAGE_LIMIT = 4000  # Kubernetes keeps at most 4096 bytes of a termination message

log = logging.getLogger("lepton.server")


def terminate_message(message: str) -> None:
    """Log `message` and leave it where Kubernetes reads why the container stopped."""
    log.error("%s", message)
    path = os.environ.get(TERMINATION_LOG_ENV, TERMINATION_LOG)
    with contextlib.suppress(OSError):
        Path(path).write_text(message[:MESSAGE_LIMIT] + "\n")


def _load(config: ServerConfig) -> tuple[Model, float]:
    from .model import timed_load  # torch and transformers load here, in the worker thread

    return timed_load(config)


def _failure(exc: BaseException) -> str:
    from .model import LoadError

    if isinstance(exc, LoadError):
        return f"model load failed: {exc}"
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"model load failed: {type(exc).__name__}: {detail}".rstrip(": ")


async def serve(config: ServerConfig) -> int:
    metrics = Metrics()
    state = State(config, metrics)
    # lingering_time: after refusing a body (408, 413) aiohttp reads what the client still sends, so the
    # client sees the answer rather than a reset; 2 s of that is plenty (its default is 10 s per connection)
    runner = web.AppRunner(build_app(state), access_log=None, handle_signals=False, lingering_time=LINGER_SECONDS)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    host, port = runner.addresses[0][:2]
    log.info("listening on http://%s:%s; loading %s model %r from %s", host, port, config.task, config.name,
             config.model_path)  # fmt: skip

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    worker = Worker()
    loading = asyncio.ensure_future(worker.run(lambda: _load(config)))
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not loading.done():  # asked to stop while loading: nothing is in flight, the loader is a daemon
        log.info("stopping before the model finished loading")
        await runner.cleanup()
        return 0
    stopping.cancel()
    if (error := loading.exception()) is not None:
        terminate_message(_failure(error))
        await runner.cleanup()
        return 1
    model, seconds = loading.result()
    batcher: Batcher[Job, Result] = Batcher(
        model.forward,
        max_batch_size=config.max_batch_size,
        max_batch_tokens=config.max_batch_tokens,
        max_batch_delay=config.max_batch_delay_ms / 1000,
        max_queue_length=config.max_queue_length,
        worker=worker,
        observer=metrics,
    )
    batcher.start()
    state.service = Service(config, model, batcher, metrics)
    metrics.load_seconds.set(seconds)
    metrics.last_request.set_to_current_time()  # a replica that just loaded is not idle yet
    print(f"lepton-server ready on http://{host}:{port} (model {config.name}, load {seconds:.1f}s)", flush=True)

    await stop.wait()
    state.draining = True
    log.info("draining: up to %gs for in-flight requests", config.drain_seconds)
    deadline = time.monotonic() + config.drain_seconds
    while time.monotonic() < deadline:
        if state.inflight == 0 and time.monotonic() - state.last_arrival >= min(QUIET_SECONDS, config.drain_seconds):
            break
        await asyncio.sleep(0.05)
    if state.inflight:
        log.warning("drain window over with %d requests in flight; closing them", state.inflight)
    await runner.shutdown()
    await runner.cleanup()
    await batcher.close()
    worker.stop()
    log.info("stopped")
    return 0


def read_config(argv: list[str] | None) -> ServerConfig | str:
    """The configuration, or the message that says why there is none."""
    parser = argparse.ArgumentParser(
        prog="python -m lepton.workloads.server",
        description=f"Serve a transformers model. The configuration (a ServerConfig JSON document) comes from "
        f"--config or the {SERVER_CONFIG_ENV} environment variable.",
    )
    parser.add_argument("--config", type=Path, help="ServerConfig JSON file")
    args = parser.parse_args(argv)
    try:
        text = args.config.read_text() if args.config else os.environ.get(SERVER_CONFIG_ENV)
    except OSError as exc:
        return f"invalid server configuration: cannot read {args.config}: {exc.strerror}"
    if not text:
        return f"invalid server configuration: none given (pass --config or set {SERVER_CONFIG_ENV})"
    try:
        return ServerConfig.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'document'}: {e['msg']}" for e in exc.errors())
        return f"invalid server configuration: {problems}"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = read_config(argv)
    if isinstance(config, str):
        terminate_message(config)
        return 2
    return asyncio.run(serve(config))


if __name__ == "__main__":
    raise SystemExit(main())

"""The request log: a sampled share of answered requests, and the clients' feedback, PII-masked and
appended as JSON lines to files of this replica's own (the layout is in lepton.api.requestlog).

- Sampling is a hash of the response id against `sampleRate`: every replica decides alike, so the
  feedback on a response is kept exactly when the response was.
- Nothing is written unmasked: inputs, outputs and feedback are masked with lepton.api.pii's patterns
  (the Dataset maskPii step's), then the whole JSON line is masked again until nothing matches (a JSON
  escape such as `\\n` can join characters into a new match), so a scan of the stored bytes with the same
  patterns finds nothing.
- The event loop only hashes the id and queues the raw record (bounded in bytes; beyond it records are
  dropped and counted); one writer thread masks, serialises and appends with one write() per line to a
  file opened O_EXCL|O_APPEND. A new file every UTC hour, past `maxFileBytes`, on every start and after
  a failed write (so a torn line can only end a closed file); a closed file is never written again.
- `maxBytesPerDay` bounds what this replica writes per UTC day (today's files of this replica count at
  start); past it records are dropped and counted. A logging failure is counted and logged, never
  answered to the client: requests do not wait for, or fail by, the log.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import threading
import uuid
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter
from pydantic import Field

from lepton.api.contract import RequestLogConfig
from lepton.api.pii import PATTERNS, mask, ordered
from lepton.api.requestlog import FEEDBACK_ROUTE, LOG_SUFFIX, RESPONSE_ID_HEADER

from .errors import ApiError
from .protocol import BODY_READ_SECONDS, Strict, parse, read_json
from .state import STATE, state_of

log = logging.getLogger("lepton.server.requestlog")
RESPONSE_ID = r"^(cmpl|chatcmpl|infer|embd)-[0-9a-f]{32}$"
MAX_LABEL_CHARS = 1024
MASK_ROUNDS = 4
PLAIN = ("type", "responseId", "time", "route")  # fields the server itself writes: never free text
_ESCAPE = re.compile(r"\\(?:u[0-9a-fA-F]{4}|.)")


def new_response_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def sampled(response_id: str, rate: float) -> bool:
    """Whether `response_id` is in the recorded share: the same answer on every replica."""
    if rate >= 1:
        return True
    value = int.from_bytes(hashlib.sha256(response_id.encode()).digest()[:8], "big")
    return value < rate * 2**64


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class LogMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.records = Counter(
            "lepton_server_request_log_records", "Records written to the request log, by type (request, feedback).",
            ["type"], registry=registry,
        )  # fmt: skip
        self.bytes = Counter("lepton_server_request_log_bytes", "Bytes written to the request log.", registry=registry)
        self.dropped = Counter(
            "lepton_server_request_log_dropped",
            "Records not written: budget (maxBytesPerDay spent), queue (the writer fell behind), unsampled "
            "(feedback on a response that was not recorded).", ["reason"], registry=registry,
        )  # fmt: skip
        self.failures = Counter(
            "lepton_server_request_log_failures", "Records lost to a failed write (see the server's log).",
            registry=registry,
        )  # fmt: skip
        self.masked = Counter(
            "lepton_server_request_log_masked", "PII matches masked before writing.", registry=registry
        )


def _replica_name(config: RequestLogConfig) -> str:
    raw = config.replica or f"{socket.gethostname()}-{os.getpid()}"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", raw)[:100] or "replica"


class LogWriter:
    """The one writer thread and its files. `submit` never blocks; `close` writes what is queued."""

    def __init__(self, config: RequestLogConfig, metrics: LogMetrics) -> None:
        self.config, self.metrics = config, metrics
        self.root = Path(config.directory)
        self.replica = _replica_name(config)
        self.entities = ordered(config.entities)
        self._queue: deque[tuple[dict[str, Any], int]] = deque()
        self._queued_bytes = 0
        self._cond = threading.Condition()
        self._closing = False
        self._busy = False
        self._fd: int | None = None
        self._file_hour = ""
        self._file_bytes = 0
        self._day = ""
        self._day_bytes = 0
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)

    def start(self) -> None:
        self._thread.start()

    # --- the event loop's side ----------------------------------------------------------------------
    def submit(self, record: dict[str, Any], size: int) -> None:
        with self._cond:
            if self._closing or self._queued_bytes + size > self.config.max_queue_bytes:
                self.metrics.dropped.labels("queue").inc()
                return
            self._queue.append((record, size))
            self._queued_bytes += size
            self._cond.notify()

    def close(self, timeout: float = 10) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def idle(self) -> bool:
        with self._cond:
            return not self._queue and not self._busy

    # --- the writer thread --------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    break
                record, size = self._queue.popleft()
                self._queued_bytes -= size
                self._busy = True
            try:
                self._write(self._line(record))
            except Exception:  # never let the writer die: count, log, go on with a new file
                self.metrics.failures.inc()
                log.exception("request log: a record could not be written")
                self._close_file()
            finally:
                with self._cond:
                    self._busy = False
        self._close_file()

    def _mask(self, text: str) -> str:
        masked, found = mask(text, self.entities)
        if found:
            self.metrics.masked.inc(found)
        return masked

    def _line(self, record: dict[str, Any]) -> bytes:
        """One JSON line; every free text masked, then masked again as it is encoded (below)."""
        parts = []
        for key, value in record.items():
            if isinstance(value, str) and key not in PLAIN:
                encoded = json.dumps(self._mask(value), ensure_ascii=False)
                encoded = '"' + self._mask_encoded(encoded[1:-1]) + '"'
            else:
                encoded = json.dumps(value, ensure_ascii=False)
            parts.append(f"{json.dumps(key)}:{encoded}")
        line = "{" + ",".join(parts) + "}"
        json.loads(line)  # never write a line that does not read back
        return (line + "\n").encode()

    def _mask_encoded(self, encoded: str) -> str:
        """Mask a JSON string's encoded content: an escape (`\\n`, `\\u0001`) turns a control character
        into letters or digits that can join their neighbours into a new match ("john\\n@x.com"). A match
        that begins inside an escape is masked from the escape's end, so escapes stay whole."""
        for _ in range(MASK_ROUNDS):
            changed = False
            for entity in self.entities:
                escapes = [m.span() for m in _ESCAPE.finditer(encoded)]
                out, last = [], 0
                for m in PATTERNS[entity].finditer(encoded):
                    start, end = m.span()
                    for a, b in escapes:
                        if a < start < b:
                            start = b
                        if a < end < b:
                            end = a
                    if start >= end:
                        raise ValueError("a match inside one escape; record not written")
                    out += [encoded[last:start], f"<{entity}>"]
                    last, changed = end, True
                    self.metrics.masked.inc()
                encoded = "".join(out) + encoded[last:]
            if not changed:
                return encoded
        raise ValueError("masking did not settle; record not written")

    def _write(self, data: bytes) -> None:
        now = datetime.now(UTC)
        day = now.strftime("%Y%m%d")
        if day != self._day:
            self._day, self._day_bytes = day, self._written_today(day)
        if self._day_bytes + len(data) > self.config.max_bytes_per_day:
            self.metrics.dropped.labels("budget").inc()
            return
        hour = now.strftime("%Y%m%dT%H")
        if self._fd is not None and (
            hour != self._file_hour or self._file_bytes + len(data) > self.config.max_file_bytes
        ):
            self._close_file()
        if self._fd is None:
            self._open(now)
            self._file_hour = hour
        assert self._fd is not None
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._file_bytes += len(data)
        self._day_bytes += len(data)
        self.metrics.bytes.inc(len(data))
        self.metrics.records.labels(str(json.loads(data)["type"])).inc()

    def _written_today(self, day: str) -> int:
        with contextlib.suppress(OSError):
            return sum(p.stat().st_size for p in self.root.glob(f"{day}T*-{self.replica}*{LOG_SUFFIX}"))
        return 0

    def _open(self, now: datetime) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        stem = f"{now.strftime('%Y%m%dT%H%M%SZ')}-{self.replica}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND
        for n in range(1000):
            path = self.root / f"{stem}{f'.{n}' if n else ''}{LOG_SUFFIX}"
            try:
                self._fd = os.open(path, flags, 0o644)
            except FileExistsError:
                continue
            self._file_bytes = 0
            log.info("request log: writing %s", path)
            return
        raise OSError(f"no free file name for {stem} in {self.root}")

    def _close_file(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.fsync(fd)
            with contextlib.suppress(OSError):
                os.close(fd)


class RequestLog:
    """What the routes call: `record` an answered request, `feedback` on one."""

    def __init__(self, config: RequestLogConfig, registry: CollectorRegistry) -> None:
        self.config = config
        self.metrics = LogMetrics(registry)
        self.writer = LogWriter(config, self.metrics)

    def record(self, response_id: str, route: str, model: str, inputs: list[str], outputs: list[str | None]) -> None:
        """Queue one line per input (its output beside it) when the response is in the sample."""
        if not sampled(response_id, self.config.sample_rate):
            return
        when = _now()
        for i, (text, out) in enumerate(zip(inputs, outputs, strict=True)):
            doc = {"type": "request", "responseId": response_id, "time": when, "route": route, "model": model,
                   "index": i, "input": text, "output": out}  # fmt: skip
            self.writer.submit(doc, len(text) + len(out or "") + 256)

    def feedback(self, response_id: str, label: int | str | None, correction: str | None) -> bool:
        if not sampled(response_id, self.config.sample_rate):
            self.metrics.dropped.labels("unsampled").inc()
            return False
        doc: dict[str, Any] = {"type": "feedback", "responseId": response_id, "time": _now()}
        if label is not None:
            doc["label"] = label
        if correction is not None:
            doc["correction"] = correction
        self.writer.submit(doc, len(correction or "") + len(str(label)) + 256)
        return True


# --- POST /v1/feedback --------------------------------------------------------------------------------
class Feedback(Strict):
    response_id: str = Field(alias="responseId", pattern=RESPONSE_ID)
    label: int | str | None = Field(default=None)
    correction: str | None = Field(default=None, min_length=1)


async def feedback(request: web.Request) -> web.Response:
    state = state_of(request)
    if state.request_log is None:
        raise ApiError(404, f"request logging is off for this service: POST {FEEDBACK_ROUTE} needs the "
                       "InferenceService's spec.logging", code="feedback_not_enabled")  # fmt: skip
    c = state.config
    doc = await read_json(request, c.max_request_bytes, min(BODY_READ_SECONDS, c.request_timeout_seconds))
    body: Feedback = parse(Feedback, doc)
    if body.label is None and body.correction is None:
        raise ApiError(400, "feedback needs a label, a correction, or both", param="label")
    if isinstance(body.label, str) and not 0 < len(body.label) <= MAX_LABEL_CHARS:
        raise ApiError(400, f"label: give 1 to {MAX_LABEL_CHARS} characters", param="label")
    if isinstance(body.label, int) and not -(2**63) <= body.label < 2**63:
        raise ApiError(400, "label: an integer label must fit in 64 bits", param="label")
    recorded = state.request_log.feedback(body.response_id, body.label, body.correction)
    return web.json_response({"responseId": body.response_id, "recorded": recorded})


def add_routes(app: web.Application) -> None:
    """POST /v1/feedback (a clear 404 when logging is off), and the writer's start and stop."""
    app.router.add_post(FEEDBACK_ROUTE, feedback)

    async def start(app: web.Application) -> None:
        state = app[STATE]
        if state.config.request_log is not None:
            state.request_log = RequestLog(state.config.request_log, state.metrics.registry)
            state.request_log.writer.start()

    async def stop(app: web.Application) -> None:
        state = app[STATE]
        if state.request_log is not None:
            state.request_log.writer.close()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)


def tag(response: web.StreamResponse, response_id: str) -> None:
    response.headers[RESPONSE_ID_HEADER] = response_id


def record(request: web.Request, response_id: str, inputs: list[str], outputs: list[str | None]) -> None:
    """Record an answered request when logging is on; never raises."""
    state = state_of(request)
    if state.request_log is None:
        return
    try:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else request.path[:200]
        state.request_log.record(response_id, route, state.config.name, inputs, outputs)
    except Exception:
        state.request_log.metrics.failures.inc()
        log.exception("request log: a record could not be queued")


__all__ = ["RequestLog", "add_routes", "new_response_id", "record", "sampled", "tag"]

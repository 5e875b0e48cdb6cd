"""Request logging of an InferenceService: a sampled share of its requests and responses, PII-masked
before anything is written, appended as JSON lines to a rotated store that a Dataset reads back
(`sources: [{requestLog: …}]`), with the clients' feedback labels joined by response id.

The store is a directory: each replica appends to files of its own, named so that they sort by time
(`<UTC start, yyyymmddThhmmssZ>-<replica>.jsonl`), a new one every hour, past `maxFileBytes`, and on
every start; a file is never rewritten. One JSON object a line:

    {"type": "request", "responseId": "cmpl-…", "time": "…Z", "route": "/v1/completions", "model": "…",
     "index": 0, "input": "…", "output": "…"}
    {"type": "feedback", "responseId": "cmpl-…", "time": "…Z", "label": 1, "correction": "…"}
"""

from __future__ import annotations

from pydantic import Field

from lepton.api.base import ApiModel, Int, exactly_one, local_uri, not_supported
from lepton.api.common import PvcPath
from lepton.api.pii import ALL_PII, PiiEntity

LOG_SUFFIX = ".jsonl"
RESPONSE_ID_HEADER = "X-Lepton-Response-Id"
FEEDBACK_ROUTE = "/v1/feedback"


class LogS3(ApiModel):
    """An S3-compatible bucket prefix. Not supported yet: the server image carries no S3 client."""

    uri: str = Field(
        description="s3://bucket/prefix/ the log files go under.",
        pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$",
        max_length=2048,
    )
    endpoint: str | None = Field(
        default=None, description="Endpoint URL of an S3-compatible store; default: AWS.", pattern=r"^https?://",
        max_length=2048,
    )  # fmt: skip
    region: str | None = Field(default=None, description="Region; default: us-east-1.", max_length=64)
    secret_name: str | None = Field(
        default=None, description="Secret with the keys accessKeyId and secretAccessKey.", max_length=253
    )


class LogDestination(ApiModel):
    """Where the log files are appended: a directory in a PVC (mounted read-write), or a local directory
    (the local backend)."""

    rules = (
        exactly_one("pvc", "uri", "s3", where="logging.destination"),
        local_uri("logging.destination"),
        not_supported("s3", "logging.destination", "log to a PVC and read it from a Dataset's requestLog source"),
    )

    pvc: PvcPath | None = Field(default=None, description="A directory inside a PersistentVolumeClaim.")
    uri: str | None = Field(
        default=None,
        description="A local directory or file:// URI (the local backend; use pvc on a cluster).",
        min_length=1,
        max_length=2048,
    )
    s3: LogS3 | None = Field(
        default=None, description="Not supported yet (rejected when set): an S3-compatible bucket prefix."
    )


class RequestLogging(ApiModel):
    """Record a sampled share of requests and their responses, PII-masked before anything is written."""

    sample_rate: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="Share of answered requests recorded (0 < x <= 1), decided by a hash of the response id, "
        "so every replica agrees on it and a response's feedback is kept exactly when the response is.",
    )
    max_bytes_per_day: Int = Field(
        default=1073741824,
        ge=1024,
        le=2**50,
        description="Most bytes one replica writes per UTC day; past it records are dropped and counted "
        "(lepton_server_request_log_dropped_total{reason=budget}).",
    )
    max_file_bytes: Int = Field(
        default=67108864, ge=1024, le=2**40, description="A log file past this size is closed and a new one begun."
    )
    destination: LogDestination = Field(description="Where the log files go.")
    entities: list[PiiEntity] = Field(
        default_factory=lambda: list(ALL_PII),
        min_length=1,
        description="PII masked in inputs, outputs and feedback before they are written: email, phone, ip "
        "(the Dataset maskPii step's patterns).",
    )

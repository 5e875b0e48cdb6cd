"""Dataset: sources read and prepared by a declarative pipeline, each distinct result published under
its content hash.

A preparation runs in this order: read every source, apply the `pipeline` steps in the order given
(row-wise cleaning, filtering, deduplication, masking, labelling), `split` by a stable hash of a key
column, `decontaminate` (drop training rows near-duplicating a validation or test row), `augment` the
training split, `tokenize`. Split, decontamination, augmentation and tokenisation are fixed stages
rather than steps: their order is not a choice a user can get wrong.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, WithJsonSchema
from pydantic_core import PydanticCustomError

from lepton.api.base import (
    INT32_MAX,
    UINT32_MAX,
    ApiModel,
    Int,
    Rule,
    exactly_one,
    json_type,
    local_uri,
    type_error,
)
from lepton.api.common import CommonStatus, ModelSource, PvcPath, Resources, Scheduling, SecretKeyRef, StorageLocation
from lepton.api.pii import ALL_PII, PiiEntity

Format = Literal["auto", "jsonl", "csv", "parquet", "text"]
SPLITS = ("train", "validation", "test")
VERSIONS_DIR = "versions"  # <output>/versions/<version>/<split>/part-NNNNN.parquet + manifest.json
MANIFEST = "manifest.json"
_SCHEME = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://")


def version_location(root: str, version: str) -> str:
    """Where one published version lives under the Dataset's output location."""
    return f"{root.rstrip('/')}/{VERSIONS_DIR}/{version}"


def _scalar(value: Any) -> int | str:
    kind = json_type(value)
    if kind == "string" and len(value) > 1024:
        raise PydanticCustomError(
            "string_too_long", "should have at most {max_length} characters", {"max_length": 1024}
        )
    if kind in ("string", "integer"):
        return value if isinstance(value, str) else int(value)
    raise type_error("integer,string", value)


# A value a filter compares with or a fill writes: an integer or a string (quote decimals: "0.5"); the
# workload converts it to the column's type and fails with the column named when it cannot.
Scalar = Annotated[
    int | str, BeforeValidator(_scalar), WithJsonSchema({"x-kubernetes-int-or-string": True, "maxLength": 1024})
]


# --- sources ------------------------------------------------------------------------------------
class HttpSource(ApiModel):
    url: str = Field(description="http(s) URL of one file.", pattern=r"^https?://", max_length=2048)
    headers_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding extra request headers ('Name: value', one per line), e.g. Authorization.",
    )
    sha256: str | None = Field(
        default=None, pattern=r"^[a-f0-9]{64}$", description="Expected SHA-256 of the file; a mismatch fails."
    )


class S3Credentials(ApiModel):
    """A Secret with the access key pair, passed to the pod as environment variables (secretKeyRef)."""

    secret_name: str = Field(description="Name of the Secret.", min_length=1, max_length=253)
    access_key_id_key: str = Field(default="accessKeyId", description="Key holding the access key id.")
    secret_access_key_key: str = Field(default="secretAccessKey", description="Key holding the secret key.")


class S3Source(ApiModel):
    uri: str = Field(
        description="s3://bucket/key of one object, or s3://bucket/prefix/ (ending in '/') for every object "
        "under the prefix, in key order.",
        pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$",
        max_length=2048,
    )
    endpoint: str | None = Field(
        default=None,
        description="Endpoint URL of an S3-compatible store (MinIO, Ceph, SeaweedFS); default: AWS.",
        pattern=r"^https?://",
        max_length=2048,
    )
    region: str | None = Field(default=None, description="Region; default: us-east-1.", max_length=64)
    credentials: S3Credentials | None = Field(
        default=None,
        description="Access keys from a Secret; without it the pod's ambient credentials (e.g. a workload "
        "identity) are used.",
    )


class HubSource(ApiModel):
    """Data files of a dataset repository on the model hub. Not testable without internet access: the
    download is implemented with the hub's client library, but no test here reaches a hub."""

    id: str = Field(description="Dataset repository id, e.g. 'org/name'.", min_length=1, max_length=256)
    revision: str | None = Field(default=None, description="Branch, tag or commit; default: main.", max_length=256)
    files: str = Field(
        default="*", description="Glob of the repository's files to read (e.g. 'data/*.parquet').", max_length=256
    )
    token_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding an access token for gated or private datasets."
    )


class RequestLogSource(ApiModel):
    """An InferenceService's request log (its spec.logging.destination): one row per recorded request and
    prompt, with columns text (the input), output, responseId, time, route, model and, with feedback,
    label and correction from POST /v1/feedback. Files still being written are read up to their last
    whole line, so new records give a new version."""

    rules = (
        exactly_one("pvc", "uri", where="requestLog"),
        local_uri("requestLog"),
    )

    pvc: PvcPath | None = Field(default=None, description="The log directory inside a PersistentVolumeClaim.")
    uri: str | None = Field(
        default=None, description="A local log directory (the local backend).", min_length=1, max_length=2048
    )
    feedback: bool = Field(
        default=True,
        description="Join the clients' feedback by response id: columns label and correction (null where none "
        "came; the latest feedback of a response wins).",
    )


class DataSource(ApiModel):
    """One input: exactly one of a local path, a PVC path, an HTTP(S) URL, an S3 object or prefix, a hub
    dataset, an InferenceService's request log. Sources are read in order and concatenated; their columns
    must agree."""

    rules = (
        exactly_one("uri", "pvc", "http", "s3", "hub", "requestLog", where="source"),
        Rule(
            cel="!has(self.requestLog) || self.format == 'auto'",
            message="source: a requestLog has its own format: leave format unset",
            check=lambda s: s.request_log is None or s.format == "auto",
        ),
        Rule(
            cel="!has(self.uri) || !self.uri.matches('^[a-zA-Z][a-zA-Z0-9+.-]*://') || self.uri.startsWith('file://')",
            message="source: uri is a local path or file:// URI; an s3:// URI goes under s3, an http(s) URL under http",
            check=lambda s: s.uri is None or not _SCHEME.match(s.uri) or s.uri.startswith("file://"),
        ),
    )

    uri: str | None = Field(
        default=None,
        description="A local file or directory, or a file:// URI (local backend; use pvc on a cluster).",
        min_length=1,
        max_length=2048,
    )
    pvc: PvcPath | None = Field(default=None, description="A file or directory inside a PersistentVolumeClaim.")
    http: HttpSource | None = Field(default=None, description="Download one file over HTTP(S).")
    s3: S3Source | None = Field(default=None, description="Read from an S3-compatible object store.")
    hub: HubSource | None = Field(default=None, description="Read a dataset repository on the model hub.")
    request_log: RequestLogSource | None = Field(
        default=None, description="Read an InferenceService's request log (and its feedback)."
    )
    format: Format = Field(
        default="auto",
        description="jsonl, csv, parquet or text (one row per line, column 'text'); auto: from the file name.",
    )


# --- pipeline steps -----------------------------------------------------------------------------
class DropMissing(ApiModel):
    columns: list[str] = Field(
        default_factory=list, description="Drop rows where any of these is null; empty: any column."
    )
    empty_strings: bool = Field(default=True, description="Count empty or blank strings as missing.")


class FillMissing(ApiModel):
    column: str = Field(description="Column whose nulls to fill.", min_length=1)
    value: Scalar = Field(description="Value written instead of null, converted to the column's type.")


class Normalize(ApiModel):
    column: str | None = Field(default=None, description="Text column; default: the Dataset's textField.")
    unicode: Literal["NFKC", "NFC", "none"] = Field(default="NFKC", description="Unicode normal form.")
    whitespace: bool = Field(default=True, description="Collapse runs of whitespace to one space and trim.")
    case: Literal["keep", "lower", "upper"] = Field(default="keep", description="Case folding.")


FilterOperator = Literal["Eq", "Ne", "Lt", "Le", "Gt", "Ge", "In", "NotIn", "NotNull"]


class Filter(ApiModel):
    """Keep the rows where `column` (or its length, in characters) compares true: a declarative
    comparison, never an expression that is evaluated."""

    rules = (
        Rule(
            cel="self.operator in ['In', 'NotIn'] ? (has(self.values) && !has(self.value)) : "
            "(self.operator == 'NotNull' ? (!has(self.value) && !has(self.values)) : "
            "(has(self.value) && !has(self.values)))",
            message="filter: In and NotIn take values, NotNull takes neither, every other operator takes value",
            check=lambda f: (
                (f.values is not None and f.value is None)
                if f.operator in ("In", "NotIn")
                else (f.value is None and f.values is None)
                if f.operator == "NotNull"
                else (f.value is not None and f.values is None)
            ),
        ),
        Rule(
            cel="!self.length || self.operator in ['Eq', 'Ne', 'Lt', 'Le', 'Gt', 'Ge']",
            message="filter: length compares a number: use Eq, Ne, Lt, Le, Gt or Ge",
            check=lambda f: not f.length or f.operator in ("Eq", "Ne", "Lt", "Le", "Gt", "Ge"),
        ),
    )

    column: str | None = Field(default=None, description="Column compared; default: the Dataset's textField.")
    length: bool = Field(default=False, description="Compare the text's length in characters, not its value.")
    operator: FilterOperator = Field(description="Eq, Ne, Lt, Le, Gt, Ge, In, NotIn or NotNull.")
    value: Scalar | None = Field(default=None, description="What the column is compared with.")
    values: list[Scalar] | None = Field(default=None, max_length=1000, description="For In and NotIn.")


class Dedupe(ApiModel):
    """Exact: rows whose text is byte-identical after the steps before this one. MinHash: word n-gram
    shingles, `bands` × `rowsPerBand` hashes; two rows sharing every hash of any one band are duplicates
    (the first kept). 14 × 8 (datatrove's choice) catches pairs of Jaccard similarity 0.8 with 92%
    probability and pairs of 0.5 with 5%: similarity s is caught with 1 - (1 - s^r)^b."""

    method: Literal["exact", "minhash"] = Field(default="exact", description="exact or minhash.")
    column: str | None = Field(default=None, description="Text column; default: the Dataset's textField.")
    ngram: Int = Field(default=5, ge=1, le=32, description="MinHash: words per shingle.")
    bands: Int = Field(default=14, ge=1, le=64, description="MinHash: LSH bands.")
    rows_per_band: Int = Field(default=8, ge=1, le=32, description="MinHash: hashes per band.")
    seed: Int = Field(default=1, ge=0, le=UINT32_MAX, description="MinHash: seed of the hash permutations.")


class MaskPii(ApiModel):
    column: str | None = Field(default=None, description="Text column; default: the Dataset's textField.")
    entities: list[PiiEntity] = Field(
        default_factory=lambda: list(ALL_PII), min_length=1, description="What to mask: email, phone, ip."
    )
    replacement: str = Field(default="<{entity}>", max_length=64, description="Mask; {entity} names the kind.")


class MapLabels(ApiModel):
    column: str = Field(default="label", description="Label column.", min_length=1)
    mapping: dict[str, Scalar] = Field(min_length=1, description="Old value (as text) -> new value.")
    unmapped: Literal["keep", "drop", "null"] = Field(
        default="keep", description="Rows whose label is not in the mapping: keep as is, drop, or set null."
    )


class KeywordRule(ApiModel):
    contains: list[str] = Field(
        min_length=1, max_length=256, description="Words or phrases; the rule matches when the text has any."
    )
    label: Scalar = Field(description="Label given when the rule matches.")


class AutoLabel(ApiModel):
    """Rule-based labelling: the first keyword rule whose phrase the text contains (case-insensitive)
    sets the label; rows already labelled keep theirs unless `overwrite`."""

    column: str = Field(default="label", description="Label column to write.", min_length=1)
    text_column: str | None = Field(default=None, description="Text read; default: the Dataset's textField.")
    keywords: list[KeywordRule] = Field(min_length=1, max_length=256, description="Rules, tried in order.")
    default: Scalar | None = Field(default=None, description="Label when no rule matches; default: null.")
    overwrite: bool = Field(default=False, description="Replace existing labels too.")


class Step(ApiModel):
    """One step of the pipeline: exactly one field set."""

    rules = (
        exactly_one(
            "select", "rename", "dropMissing", "fillMissing", "normalize", "filter", "dedupe", "maskPii",
            "mapLabels", "autoLabel", where="pipeline step",
        ),
    )  # fmt: skip

    select: list[str] | None = Field(default=None, min_length=1, description="Keep only these columns, in order.")
    rename: dict[str, str] | None = Field(default=None, min_length=1, description="Old column name -> new name.")
    drop_missing: DropMissing | None = Field(default=None, description="Drop rows with missing values.")
    fill_missing: FillMissing | None = Field(default=None, description="Fill a column's missing values.")
    normalize: Normalize | None = Field(default=None, description="Unicode, whitespace and case normalisation.")
    filter: Filter | None = Field(default=None, description="Keep rows passing a comparison.")
    dedupe: Dedupe | None = Field(default=None, description="Remove exact or near duplicates.")
    mask_pii: MaskPii | None = Field(default=None, description="Mask e-mail addresses, phone numbers, IPs.")
    map_labels: MapLabels | None = Field(default=None, description="Rename label values.")
    auto_label: AutoLabel | None = Field(default=None, description="Label rows by keyword rules.")


# --- fixed stages -------------------------------------------------------------------------------
class Split(ApiModel):
    """Rows go to a split by a keyed hash of the key column: a row's split never changes when rows are
    added or removed, or when the pipeline runs elsewhere."""

    rules = (
        Rule(
            cel="self.train + self.validation + self.test > 0.999 && self.train + self.validation + self.test < 1.001",
            message="split: train + validation + test must add up to 1",
            # The same double arithmetic as the CEL expression, in the same order.
            check=lambda s: s.train + s.validation + s.test > 0.999 and s.train + s.validation + s.test < 1.001,
        ),
    )

    train: float = Field(default=0.9, ge=0, le=1, description="Fraction of rows for training.")
    validation: float = Field(default=0.1, ge=0, le=1, description="Fraction for validation.")
    test: float = Field(default=0.0, ge=0, le=1, description="Fraction for testing.")
    key: str | None = Field(default=None, description="Column hashed; default: the Dataset's textField.")
    seed: Int = Field(default=0, ge=0, le=UINT32_MAX, description="Seed of the hash.")


class Decontaminate(ApiModel):
    """Drop training rows that near-duplicate (MinHash, as in dedupe) a validation or test row."""

    ngram: Int = Field(default=5, ge=1, le=32, description="Words per shingle.")
    bands: Int = Field(default=14, ge=1, le=64, description="LSH bands.")
    rows_per_band: Int = Field(default=8, ge=1, le=32, description="Hashes per band.")


class Augment(ApiModel):
    """Seeded text augmentation of the training split only: each training row gets `copies` extra
    variants; validation and test rows are never augmented."""

    method: Literal["random-deletion", "random-swap"] = Field(description="Delete or swap random words.")
    probability: float = Field(default=0.1, gt=0, le=1, description="Chance each word is touched.")
    copies: Int = Field(default=1, ge=1, le=16, description="Augmented copies per training row.")
    seed: Int = Field(default=0, ge=0, le=UINT32_MAX, description="Seed: the same seed gives the same rows.")


class Tokenize(ApiModel):
    tokenizer: ModelSource = Field(description="Model whose tokenizer (tokenizer.json) to use.")
    max_length: Int = Field(default=512, ge=8, le=131072, description="Truncate to this many tokens.")


class DatasetSpec(ApiModel):
    """Where data comes from, how it is prepared, and where its versions are published."""

    sources: list[DataSource] = Field(min_length=1, max_length=64, description="Inputs, concatenated in order.")
    text_field: str = Field(default="text", description="The text column steps use by default.", min_length=1)
    pipeline: list[Step] = Field(default_factory=list, max_length=64, description="Steps, applied in order.")
    split: Split | None = Field(default=None, description="Train/validation/test split; default: all train.")
    decontaminate: Decontaminate | None = Field(
        default=None, description="Remove training rows near-duplicating validation or test rows."
    )
    augment: Augment | None = Field(default=None, description="Augment the training split.")
    tokenize: Tokenize | None = Field(default=None, description="Add input_ids to every split.")
    output: StorageLocation = Field(description="Root of the published versions (one directory per version).")
    retain: Int = Field(default=3, ge=1, le=100, description="Published versions kept; older ones are deleted.")
    refresh: str | None = Field(
        default=None,
        max_length=63,
        description="Change to prepare again with an unchanged spec (a source's content may have changed); "
        "an unchanged result keeps its version and is not recomputed.",
    )
    suspend: bool = Field(default=False, description="Do not start a preparation; a running one is stopped.")
    ttl_seconds_after_finished: Int | None = Field(
        default=None,
        ge=0,
        le=INT32_MAX,
        description="Delete the finished preparation Job (and its pod) after this many seconds; the Dataset "
        "and its versions stay.",
    )
    active_deadline_seconds: Int | None = Field(
        default=None, ge=1, le=INT32_MAX, description="Fail a preparation running longer than this."
    )
    backoff_limit: Int = Field(default=2, ge=0, le=20, description="Retries of a failed preparation pod.")
    image: str | None = Field(
        default=None, description="Data image; default: the operator's data image.", max_length=1024
    )
    resources: Resources = Field(
        default_factory=Resources,
        description="CPU/memory of the preparation pod (default: 1 CPU, 2Gi); the memory limit bounds its batches.",
    )
    scheduling: Scheduling = Field(default_factory=Scheduling, description="Priority and placement.")


# --- status -------------------------------------------------------------------------------------
class SplitRows(ApiModel):
    train: int = Field(default=0, description="Rows in the training split.")
    validation: int = Field(default=0, description="Rows in the validation split.")
    test: int = Field(default=0, description="Rows in the test split.")


class StepCount(ApiModel):
    step: str = Field(description="Step, e.g. '3:dedupe' (index in the pipeline, kind) or 'split'.")
    rows_in: int = Field(description="Rows in.")
    rows_out: int = Field(description="Rows out.")
    details: dict[str, int] = Field(
        default_factory=dict, description="What the step counted, e.g. {email: 3} for maskPii."
    )


class DatasetStatus(CommonStatus):
    version: str | None = Field(default=None, description="Content hash (sha256) of the current version.")
    location: str | None = Field(default=None, description="Directory of the current version.")
    rows: SplitRows | None = Field(default=None, description="Rows per split of the current version.")
    total_rows: int | None = Field(default=None, description="Rows of the current version, all splits.")
    bytes: int | None = Field(default=None, description="Bytes of the current version's Parquet files.")
    columns: list[str] = Field(default_factory=list, description="Columns of the current version.")
    steps: list[StepCount] = Field(default_factory=list, description="Rows in and out of each step.")
    versions: list[str] = Field(default_factory=list, description="Published versions, newest first.")
    reused: bool | None = Field(
        default=None, description="The last preparation found its version already published: nothing recomputed."
    )
    last_prepared_time: str | None = Field(default=None, description="When the current version was published.")
    prepared_spec: str | None = Field(
        default=None, description="Hash of the spec the last finished preparation ran (a new one runs when it changes)."
    )
    job: str | None = Field(default=None, description="The preparation Job of the current spec.")


# The summary the data workload writes to its termination message (at most 4 KiB) and the operator
# reads back: the workload has no API access.
class PreparationError(ApiModel):
    reason: str = Field(description="SourceUnreachable, BadFormat, EmptyResult, CredentialsMissing, …")
    message: str = Field(description="What went wrong, in words (never a secret).")
    file: str | None = Field(default=None, description="Input file, for BadFormat.")
    line: int | None = Field(default=None, description="1-based line, for BadFormat.")


class PreparationSummary(ApiModel):
    version: str | None = Field(default=None, description="Version published (or found published).")
    reused: bool = Field(default=False, description="The version existed: nothing recomputed.")
    rows: SplitRows | None = Field(default=None, description="Rows per split.")
    bytes: int | None = Field(default=None, description="Bytes of Parquet written.")
    columns: list[str] = Field(default_factory=list, description="Columns.")
    steps: list[StepCount] = Field(default_factory=list, description="Per-step counts.")
    versions: list[str] = Field(default_factory=list, description="Versions kept after retention, newest first.")
    error: PreparationError | None = Field(default=None, description="Why the preparation failed.")

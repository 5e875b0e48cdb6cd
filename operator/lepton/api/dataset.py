"""Dataset: a declarative preparation pipeline whose outputs are versioned by content hash."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lepton.api.base import INT32_MAX, UINT32_MAX, ApiModel, Int, Rule, exactly_one, local_uri, ordered
from lepton.api.common import (
    CommonStatus,
    ModelSource,
    PvcPath,
    Resources,
    Scheduling,
    SecretKeyRef,
    StorageLocation,
)


class HttpSource(ApiModel):
    url: str = Field(description="http(s) URL of a file.", pattern=r"^https?://", max_length=2048)
    headers_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key with extra request headers (e.g. Authorization), one per line."
    )
    sha256: str | None = Field(
        default=None, pattern=r"^[a-f0-9]{64}$", description="Expected digest; a mismatch fails the run."
    )


class S3Source(ApiModel):
    uri: str = Field(description="s3://bucket/prefix of one or more files.", pattern=r"^s3://", max_length=2048)
    endpoint: str | None = Field(default=None, description="S3-compatible endpoint URL (MinIO, Ceph).")
    credentials_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding credentials, mounted as a file."
    )


class DataSource(ApiModel):
    """One input of the pipeline."""

    rules = (exactly_one("http", "s3", "pvc", "uri", where="source"), local_uri("source"))

    http: HttpSource | None = Field(default=None, description="Download over HTTP(S).")
    s3: S3Source | None = Field(default=None, description="Read from an S3-compatible object store.")
    pvc: PvcPath | None = Field(default=None, description="Read from a PersistentVolumeClaim.")
    uri: str | None = Field(
        default=None,
        description="A local path or file:// URI (for object stores use s3).",
        min_length=1,
        max_length=2048,
    )
    format: Literal["auto", "jsonl", "csv", "parquet", "text"] = Field(
        default="auto", description="Input format; auto guesses from the extension."
    )


class CleanStep(ApiModel):
    rules = (ordered("minChars", "maxChars", where="clean"),)

    normalize_unicode: bool = Field(default=True, description="NFKC-normalise text.")
    collapse_whitespace: bool = Field(default=True, description="Collapse runs of whitespace.")
    drop_empty: bool = Field(default=True, description="Drop rows whose text is empty.")
    min_chars: Int | None = Field(default=None, ge=0, le=INT32_MAX, description="Drop rows shorter than this.")
    max_chars: Int | None = Field(default=None, ge=1, le=INT32_MAX, description="Drop rows longer than this.")


class DedupeStep(ApiModel):
    method: Literal["exact", "minhash"] = Field(default="exact", description="Exact hash or near-duplicate MinHash.")
    threshold: float = Field(default=0.9, gt=0, le=1, description="Jaccard similarity above which rows are duplicates.")


PiiEntity = Literal["email", "phone", "ip", "credit-card"]
ALL_PII: tuple[PiiEntity, ...] = ("email", "phone", "ip", "credit-card")


class PiiStep(ApiModel):
    entities: list[PiiEntity] = Field(default_factory=lambda: list(ALL_PII), description="What to mask.")
    replacement: str = Field(default="<{entity}>", description="Mask text; {entity} is replaced by the kind.")


class AugmentStep(ApiModel):
    method: Literal["none", "random-deletion", "random-swap"] = Field(default="none", description="Augmentation.")
    copies: Int = Field(default=1, ge=1, le=16, description="Augmented copies per training row.")


class SplitStep(ApiModel):
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
    seed: Int = Field(default=0, ge=0, le=UINT32_MAX, description="Seed of the deterministic split.")


class TokenizeStep(ApiModel):
    tokenizer: ModelSource = Field(description="Model whose tokenizer to use.")
    max_length: Int = Field(default=512, ge=8, le=131072, description="Truncate to this many tokens.")


class DatasetSpec(ApiModel):
    """Where data comes from, how it is prepared, and where the versions are published."""

    rules = (
        Rule(
            cel="!has(self.tokenize) || has(self.split)",
            message="tokenize needs split: tokenised outputs are written per split",
            check=lambda s: s.tokenize is None or s.split is not None,
        ),
    )

    sources: list[DataSource] = Field(min_length=1, max_length=64, description="Inputs, concatenated in order.")
    text_field: str = Field(default="text", description="Column holding the text.", min_length=1)
    clean: CleanStep | None = Field(default=None, description="Normalisation and filtering.")
    dedupe: DedupeStep | None = Field(default=None, description="Duplicate removal.")
    pii: PiiStep | None = Field(default=None, description="PII masking.")
    augment: AugmentStep | None = Field(default=None, description="Augmentation of the training split.")
    split: SplitStep | None = Field(default=None, description="Train/validation/test split.")
    tokenize: TokenizeStep | None = Field(default=None, description="Tokenisation of every split.")
    output: StorageLocation = Field(description="Where versions are published (one directory per hash).")
    image: str | None = Field(
        default=None, description="Data image; default: the operator's data image.", max_length=1024
    )
    resources: Resources = Field(default_factory=Resources, description="CPU/memory of the preparation pod.")
    scheduling: Scheduling = Field(default_factory=Scheduling, description="Queue, priority and placement.")


class SplitRows(ApiModel):
    train: int = Field(default=0, description="Rows in the training split.")
    validation: int = Field(default=0, description="Rows in the validation split.")
    test: int = Field(default=0, description="Rows in the test split.")


class DatasetStatus(CommonStatus):
    version: str | None = Field(default=None, description="Content hash of the current published version.")
    location: str | None = Field(default=None, description="Where the current version is.")
    rows: SplitRows | None = Field(default=None, description="Rows per split of the current version.")
    versions: list[str] = Field(default_factory=list, description="Published versions, newest first.")

"""A source's input files (location-independent name, size, digest, format) and each file read as a
stream of Arrow tables of bounded size.

- path: a file, or every non-hidden file under a directory in sorted relative-path order; digests are
  SHA-256 of the bytes, streamed.
- http(s): downloaded once into the cache (temp file + rename), checked against `sha256` when given.
- s3: listed with boto3 (one object, or every object under a prefix ending in '/', in key order); the
  digest is the ETag, so the version is known before any byte is downloaded. Objects are downloaded
  into the cache in chunks when read.
- request log: an InferenceService's log directory (workloads/data/requestlog.py).
- hub: a dataset repository fetched with the hub's client library (`huggingface_hub`), then read like
  a directory. Not tested here: no test environment reaches a hub.

Secrets arrive as the names of environment variables; no message ever includes their values.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from lepton.api.contract import DataInput
from lepton.workloads.data.errors import DataError, Reason
from lepton.workloads.data.formats import read_file

FileFormat = Literal["jsonl", "csv", "parquet", "text"]
EXTENSIONS: dict[str, FileFormat] = {
    ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".txt": "text",
}  # fmt: skip
CHUNK = 1 << 20


@dataclass(frozen=True)
class InputFile:
    source: int  # index in DataConfig.sources
    name: str  # location-independent: relative path, URL, s3://bucket/key, hub://id/path
    size: int | None
    digest: str  # sha256:<hex> of the bytes, or etag:<etag> (S3)
    format: FileFormat
    local: str | None = None  # where the bytes are on this machine (None: an S3 object not downloaded yet)


def _format(declared: str, name: str) -> FileFormat:
    if declared != "auto":
        return declared  # type: ignore[return-value]
    fmt = EXTENSIONS.get(Path(name.split("?", maxsplit=1)[0]).suffix.lower())
    if fmt is None:
        raise DataError(Reason.BAD_FORMAT, "unknown file extension: set the source's format", file=name)
    return fmt


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def _path_inputs(root: Path, declared: str, index: int, prefix: str = "") -> list[InputFile]:
    if root.is_file():
        files = [(root.name, root)]
    elif root.is_dir():
        files = sorted(
            (p.relative_to(root).as_posix(), p)
            for p in root.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
    else:
        raise DataError(Reason.SOURCE_UNREACHABLE, f"{root}: no such file or directory")
    return [InputFile(index, prefix + name, p.stat().st_size, sha256_file(p), _format(declared, name), str(p))
            for name, p in files]  # fmt: skip


def _secret(env: str | None, what: str) -> str | None:
    if env is None:
        return None
    value = os.environ.get(env, "")
    if not value.strip():
        raise DataError(Reason.CREDENTIALS_MISSING, f"{what}: environment variable {env} is not set")
    return value


def _http_input(source: DataInput, index: int, cache: Path) -> InputFile:
    url = source.url or ""
    request = urllib.request.Request(url, headers={"User-Agent": "lepton-data"})
    for line in (_secret(source.headers_env, "HTTP headers") or "").splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip():
            request.add_header(name.strip(), value.strip())
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"http-{hashlib.sha256(url.encode()).hexdigest()[:24]}"
    partial = target.with_suffix(".partial")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(request, timeout=60) as rsp, partial.open("wb") as fh:
            while chunk := rsp.read(CHUNK):
                fh.write(chunk)
                digest.update(chunk)
    except urllib.error.HTTPError as exc:
        raise DataError(Reason.SOURCE_UNREACHABLE, f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(Reason.SOURCE_UNREACHABLE, f"{url}: {reason}") from None
    if source.sha256 and digest.hexdigest() != source.sha256:
        partial.unlink(missing_ok=True)
        raise DataError(Reason.DIGEST_MISMATCH, f"{url}: SHA-256 is {digest.hexdigest()}, not {source.sha256}")
    partial.replace(target)
    return InputFile(index, url, target.stat().st_size, f"sha256:{digest.hexdigest()}",
                     _format(source.format, url), str(target))  # fmt: skip


def s3_client(source: DataInput) -> Any:
    import boto3
    from botocore.config import Config

    if (source.access_key_env is None) != (source.secret_key_env is None):
        missing = "secret access key" if source.secret_key_env is None else "access key id"
        raise DataError(Reason.CREDENTIALS_MISSING, f"S3: the {missing} is not configured (only one key of the pair)")
    access = _secret(source.access_key_env, "S3 access key id")
    secret = _secret(source.secret_key_env, "S3 secret access key")
    # Neither configured: boto3's default chain (a workload identity, instance profile, AWS_* variables).
    return boto3.client(
        "s3", endpoint_url=source.endpoint, region_name=source.region or "us-east-1",
        aws_access_key_id=access, aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 3, "mode": "standard"}, s3={"addressing_style": "path"}),
    )  # fmt: skip


REJECTED = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403")


def _s3_error(exc: Exception, where: str) -> Exception:
    """The DataError for a boto3 failure (its messages hold no key), or `exc` itself when it is none."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in REJECTED or status == 403:
            return DataError(Reason.CREDENTIALS_REJECTED, f"{where}: the store refused the credentials ({code})")
        if code in ("NoSuchBucket", "NoSuchKey", "404") or status == 404:
            return DataError(Reason.SOURCE_UNREACHABLE, f"{where}: no such bucket or object ({code or status})")
        return DataError(Reason.SOURCE_UNREACHABLE, f"{where}: {code or status}")
    if isinstance(exc, NoCredentialsError):
        return DataError(Reason.CREDENTIALS_MISSING, f"{where}: no credentials configured or found")
    if isinstance(exc, BotoCoreError):
        return DataError(Reason.SOURCE_UNREACHABLE, f"{where}: {exc}")
    return exc


def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def _s3_inputs(source: DataInput, index: int) -> list[InputFile]:
    uri = source.s3_uri or ""
    bucket, key = _split_s3(uri)
    client = s3_client(source)
    try:
        if key and not key.endswith("/"):
            head = client.head_object(Bucket=bucket, Key=key)
            objects = [(key, int(head["ContentLength"]), str(head["ETag"]))]
        else:
            objects = []
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
                objects += [(o["Key"], int(o["Size"]), str(o["ETag"])) for o in page.get("Contents", [])
                            if not o["Key"].endswith("/")]  # fmt: skip
    except Exception as exc:
        raise _s3_error(exc, uri) from None
    if not objects:
        raise DataError(Reason.SOURCE_UNREACHABLE, f"{uri}: no objects")
    return [InputFile(index, f"s3://{bucket}/{k}", size, f"etag:{etag.strip(chr(34))}", _format(source.format, k))
            for k, size, etag in sorted(objects)]  # fmt: skip


def _hub_inputs(source: DataInput, index: int, cache: Path) -> list[InputFile]:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise DataError(Reason.SOURCE_UNREACHABLE, "hub sources need the huggingface_hub package") from None
    token = _secret(source.token_env, "hub token")
    try:
        root = snapshot_download(repo_id=source.hub_id or "", repo_type="dataset", revision=source.revision,
                                 allow_patterns=source.files, token=token, cache_dir=str(cache / "hub"))  # fmt: skip
    except Exception as exc:
        raise DataError(Reason.SOURCE_UNREACHABLE, f"hub dataset {source.hub_id}: {type(exc).__name__}") from None
    return _path_inputs(Path(root), source.format, index, prefix=f"hub://{source.hub_id}/")


def list_inputs(source: DataInput, index: int, cache_dir: Path) -> list[InputFile]:
    if source.request_log:
        from lepton.workloads.data.requestlog import list_log_inputs  # it builds on this module

        return list_log_inputs(source, index, cache_dir)
    if source.path is not None:
        return _path_inputs(Path(source.path), source.format, index)
    if source.url is not None:
        return [_http_input(source, index, cache_dir)]
    if source.s3_uri is not None:
        return _s3_inputs(source, index)
    return _hub_inputs(source, index, cache_dir)


def _local(source: DataInput, file: InputFile, cache_dir: Path) -> Path:
    if file.local is not None:
        return Path(file.local)
    bucket, key = _split_s3(file.name)
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"s3-{hashlib.sha256((file.name + file.digest).encode()).hexdigest()[:24]}"
    if not target.exists():
        partial = target.with_suffix(".partial")
        try:
            body = s3_client(source).get_object(Bucket=bucket, Key=key)["Body"]
            with partial.open("wb") as fh:
                for chunk in body.iter_chunks(CHUNK):
                    fh.write(chunk)
        except Exception as exc:
            raise _s3_error(exc, file.name) from None
        partial.replace(target)
    return target


def read_batches(source: DataInput, file: InputFile, cache_dir: Path, batch_bytes: int) -> Iterator[pa.Table]:
    """The file as tables of about `batch_bytes` of input each."""
    if source.request_log:
        from lepton.workloads.data.requestlog import read_log

        yield from read_log(source, file, cache_dir, batch_bytes)
        return
    yield from read_file(_local(source, file, cache_dir), file.format, file.name, batch_bytes)

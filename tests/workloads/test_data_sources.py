"""The data workload's sources against real servers: files and directories, a real HTTP server, a real
S3-compatible store (SeaweedFS); every format, digests, credentials, errors with file and line, and
batches of bounded size."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from lepton.api.contract import DataInput
from lepton.workloads.data.errors import DataError, Reason
from lepton.workloads.data.sources import InputFile, list_inputs, read_batches
from tests.workloads.conftest import FileServer, S3Store

ROWS = [{"text": "hello world", "n": 1}, {"text": "ünïcode, with a comma", "n": 2}, {"text": "third", "n": 3}]


def encode(fmt: str, rows: list[dict[str, Any]]) -> bytes:
    if fmt in ("jsonl", "json", "ndjson"):
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    if fmt == "csv":
        table = pa.Table.from_pylist(rows)
        sink = pa.BufferOutputStream()
        pacsv.write_csv(table, sink)
        return sink.getvalue().to_pybytes()
    if fmt == "parquet":
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(rows), sink)
        return sink.getvalue().to_pybytes()
    assert fmt == "txt"
    return "".join(r["text"] + "\n" for r in rows).encode()


def source(**fields: Any) -> DataInput:
    return DataInput.model_validate(fields)


def read_all(src: DataInput, cache: Path, batch_bytes: int = 1 << 20) -> tuple[list[InputFile], list[dict[str, Any]]]:
    files = list_inputs(src, 0, cache)
    rows = [r for f in files for t in read_batches(src, f, cache, batch_bytes) for r in t.to_pylist()]
    return files, rows


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def expected(ext: str) -> list[dict[str, Any]]:
    return [{"text": r["text"]} for r in ROWS] if ext == "txt" else ROWS


# --- paths ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ext", "fmt"),
    [("jsonl", "jsonl"), ("json", "jsonl"), ("ndjson", "jsonl"), ("csv", "csv"), ("parquet", "parquet"),
     ("txt", "text")],
)  # fmt: skip
def test_every_format_from_a_file(tmp_path: Path, ext: str, fmt: str) -> None:
    data = encode(ext, ROWS)
    (tmp_path / f"rows.{ext}").write_bytes(data)
    files, rows = read_all(source(path=str(tmp_path / f"rows.{ext}")), tmp_path / "cache")
    assert [(f.name, f.size, f.digest, f.format) for f in files] == [(f"rows.{ext}", len(data), sha(data), fmt)]
    assert rows == expected(ext)


def test_a_directory_in_sorted_relative_order_without_hidden_files(tmp_path: Path) -> None:
    root = tmp_path / "data"
    layout = {"b.jsonl": ROWS[1:2], "a/z.jsonl": ROWS[0:1], "c.csv": ROWS[2:3], ".hidden.jsonl": ROWS,
              ".git/x.jsonl": ROWS, "a/.swap.txt": ROWS}  # fmt: skip
    for name, rows in layout.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(encode(name.rsplit(".", 1)[1], rows))
    files, rows = read_all(source(path=str(root)), tmp_path / "cache")
    assert [f.name for f in files] == ["a/z.jsonl", "b.jsonl", "c.csv"]
    assert [f.format for f in files] == ["jsonl", "jsonl", "csv"]
    assert rows == [ROWS[0], ROWS[1], ROWS[2]]


@pytest.mark.parametrize(("declared", "reason"), [("auto", Reason.BAD_FORMAT), ("jsonl", None)])
def test_an_unknown_extension_needs_a_declared_format(tmp_path: Path, declared: str, reason: str | None) -> None:
    (tmp_path / "rows.data").write_bytes(encode("jsonl", ROWS))
    src = source(path=str(tmp_path / "rows.data"), format=declared)
    if reason is None:
        assert read_all(src, tmp_path / "cache")[1] == ROWS
        return
    with pytest.raises(DataError) as err:
        list_inputs(src, 0, tmp_path / "cache")
    assert (err.value.reason, err.value.file) == (reason, "rows.data")


def test_a_missing_path_is_unreachable(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        list_inputs(source(path=str(tmp_path / "nothing")), 0, tmp_path)
    assert err.value.reason == Reason.SOURCE_UNREACHABLE


def test_names_and_digests_do_not_depend_on_the_location_but_on_every_byte(tmp_path: Path) -> None:
    for where in ("one", "two/deeper"):
        (tmp_path / where / "sub").mkdir(parents=True)
        (tmp_path / where / "sub" / "rows.jsonl").write_bytes(encode("jsonl", ROWS))
        (tmp_path / where / "more.txt").write_bytes(b"x\n")
    one, two = (list_inputs(source(path=str(tmp_path / w)), 0, tmp_path) for w in ("one", "two/deeper"))
    assert [(f.name, f.digest) for f in one] == [(f.name, f.digest) for f in two]
    assert all(str(tmp_path) not in f.name for f in one)
    changed = bytearray(encode("jsonl", ROWS))
    changed[10] ^= 1
    (tmp_path / "two/deeper/sub/rows.jsonl").write_bytes(bytes(changed))
    three = list_inputs(source(path=str(tmp_path / "two/deeper")), 0, tmp_path)
    assert [f.digest == g.digest for f, g in zip(one, three, strict=True)] == [True, False]


# --- malformed input --------------------------------------------------------------------------------
GOOD_LINE = '{"text": "fine", "n": 1}\n'


@pytest.mark.parametrize(
    ("name", "content", "batch_bytes", "line"),
    [
        ("broken.jsonl", GOOD_LINE * 2 + '{"text": "no end"\n' + GOOD_LINE, 1 << 20, 3),
        ("blank-lines.jsonl", GOOD_LINE + "\n\n" + GOOD_LINE + "not json\n", 1 << 20, 5),
        ("late.jsonl", GOOD_LINE * 4000 + "[1, 2]\n" + GOOD_LINE, 4096, 4001),  # not an object, in a later block
        ("fields.csv", "text,n\na,1\nb,2\nc,3,4\n", 1 << 20, 4),
        ("quoted.csv", 'text,n\n"multi\nline",1\nb,2,3\n', 1 << 20, 4),
        ("types.csv", "text,n\n" + "a,1\n" * 20000 + "b,not-a-number\n", 1 << 16, 20002),
        ("bad-utf8.txt", "ok\nok\n", 1 << 20, 3),
    ],
)
def test_malformed_input_names_the_file_and_line(
    tmp_path: Path, name: str, content: str, batch_bytes: int, line: int
) -> None:
    data = content.encode() + (b"\xff\xfe\n" if name.endswith(".txt") else b"")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / name).write_bytes(data)
    src = source(path=str(tmp_path / "in"))
    with pytest.raises(DataError) as err:
        read_all(src, tmp_path / "cache", batch_bytes)
    assert (err.value.reason, err.value.file, err.value.line) == (Reason.BAD_FORMAT, name, line)


# --- bounded memory ------------------------------------------------------------------------------
@pytest.mark.parametrize("ext", ["jsonl", "csv", "parquet", "txt"])
def test_a_batch_holds_about_batch_bytes_of_input(tmp_path: Path, ext: str) -> None:
    rows = [{"text": f"row {i} " + "w" * 90, "n": i} for i in range(40_000)]  # ~4 MB of jsonl
    path = tmp_path / f"big.{ext}"
    if ext == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=10_000)
    else:
        path.write_bytes(encode(ext, rows))
    batch_bytes = 256 << 10
    src = source(path=str(path))
    (file,) = list_inputs(src, 0, tmp_path / "cache")
    tables = list(read_batches(src, file, tmp_path / "cache", batch_bytes))
    assert sum(t.num_rows for t in tables) == len(rows)
    assert tables[0].column("text").to_pylist()[:2] == [r["text"] for r in rows[:2]]
    per_row = max(len(json.dumps(r)) for r in rows)
    assert max(t.num_rows for t in tables) * per_row <= 2 * batch_bytes
    assert len(tables) >= len(rows) * 100 // (2 * batch_bytes)


# --- HTTP ---------------------------------------------------------------------------------------------
TOKEN = "Bearer s3cret-http-token"


@pytest.mark.parametrize(
    ("auth", "headers", "digest", "path", "reason"),
    [
        (TOKEN, f"Authorization: {TOKEN}\nX-Other: 1\n", "right", "rows.csv", None),
        (None, None, None, "rows.csv", None),
        (TOKEN, None, None, "rows.csv", Reason.SOURCE_UNREACHABLE),  # 401
        (TOKEN, "Authorization: Bearer wrong\n", None, "rows.csv", Reason.SOURCE_UNREACHABLE),
        (None, None, "wrong", "rows.csv", Reason.DIGEST_MISMATCH),
        (None, None, None, "missing.csv", Reason.SOURCE_UNREACHABLE),  # 404
        (TOKEN, "", None, "rows.csv", Reason.CREDENTIALS_MISSING),  # the env var is set but empty
    ],
)
def test_an_http_source(
    tmp_path: Path, file_server: FileServer, monkeypatch: pytest.MonkeyPatch,
    auth: str | None, headers: str | None, digest: str | None, path: str, reason: str | None,
) -> None:  # fmt: skip
    data = encode("csv", ROWS)
    (file_server.root / "rows.csv").write_bytes(data)
    file_server.auth = auth
    fields: dict[str, Any] = {"url": file_server.url(path)}
    if headers is not None:
        monkeypatch.setenv("LEPTON_TEST_HEADERS", headers)
        fields["headersEnv"] = "LEPTON_TEST_HEADERS"
    if digest is not None:
        fields["sha256"] = hashlib.sha256(data if digest == "right" else b"other").hexdigest()
    src, cache = source(**fields), tmp_path / "cache"
    if reason is None:
        files, rows = read_all(src, cache)
        assert [(f.name, f.digest, f.size, f.format) for f in files] == [(src.url, sha(data), len(data), "csv")]
        assert rows == ROWS
        assert not list(cache.glob("*.partial"))
        return
    with pytest.raises(DataError) as err:
        list_inputs(src, 0, cache)
    assert err.value.reason == reason
    assert "s3cret" not in str(err.value)
    if reason == Reason.SOURCE_UNREACHABLE:
        assert src.url in err.value.message and ("404" if path == "missing.csv" else "401") in err.value.message
    assert not [p for p in cache.glob("*") if not p.name.endswith(".partial")] if cache.exists() else True


# --- S3 -------------------------------------------------------------------------------------------------
ACCESS_ENV, SECRET_ENV = "LEPTON_TEST_S3_ACCESS", "LEPTON_TEST_S3_SECRET"


def s3_source(store: S3Store, uri: str, **extra: Any) -> DataInput:
    fields = {"s3Uri": uri, "endpoint": store.endpoint, "accessKeyEnv": ACCESS_ENV, "secretKeyEnv": SECRET_ENV}
    return source(**(fields | extra))


@pytest.fixture
def s3_keys(s3_store: S3Store, monkeypatch: pytest.MonkeyPatch) -> S3Store:
    """The store's keys in the env vars a pod gets from the credentials Secret."""
    monkeypatch.setenv(ACCESS_ENV, s3_store.access_key)
    monkeypatch.setenv(SECRET_ENV, s3_store.secret_key)
    return s3_store


def test_an_s3_object_by_key_with_its_etag(tmp_path: Path, s3_keys: S3Store) -> None:
    data = encode("parquet", ROWS)
    client = s3_keys.client()
    client.put_object(Bucket=s3_keys.bucket, Key="single/rows.parquet", Body=data)
    etag = client.head_object(Bucket=s3_keys.bucket, Key="single/rows.parquet")["ETag"].strip('"')
    src = s3_source(s3_keys, f"s3://{s3_keys.bucket}/single/rows.parquet")
    files, rows = read_all(src, tmp_path / "cache")
    assert [(f.name, f.size, f.digest, f.format) for f in files] == [
        (f"s3://{s3_keys.bucket}/single/rows.parquet", len(data), f"etag:{etag}", "parquet")
    ]
    assert etag == hashlib.md5(data).hexdigest()  # a single-part upload's ETag is the MD5 of its bytes
    assert rows == ROWS
    assert not list((tmp_path / "cache").glob("*.partial"))


def test_an_s3_prefix_lists_every_object_in_key_order(tmp_path: Path, s3_keys: S3Store) -> None:
    client = s3_keys.client()
    objects = {"prefix/b.jsonl": ROWS[1:2], "prefix/a.csv": ROWS[0:1], "prefix/sub/c.jsonl": ROWS[2:3],
               "prefixed-not/x.jsonl": ROWS}  # fmt: skip
    for key, rows in objects.items():
        client.put_object(Bucket=s3_keys.bucket, Key=key, Body=encode(key.rsplit(".", 1)[1], rows))
    src = s3_source(s3_keys, f"s3://{s3_keys.bucket}/prefix/")
    files, rows = read_all(src, tmp_path / "cache")
    assert [f.name for f in files] == [f"s3://{s3_keys.bucket}/prefix/{k}" for k in ("a.csv", "b.jsonl", "sub/c.jsonl")]
    assert all(f.digest.startswith("etag:") and len(f.digest) > 10 for f in files)
    assert rows == ROWS
    # Changing one object's bytes changes only its digest, and the new bytes are read (not a stale cache).
    client.put_object(Bucket=s3_keys.bucket, Key="prefix/b.jsonl", Body=encode("jsonl", ROWS[2:3]))
    files2, rows2 = read_all(src, tmp_path / "cache")
    assert [f.digest == g.digest for f, g in zip(files, files2, strict=True)] == [True, False, True]
    assert rows2 == [ROWS[0], ROWS[2], ROWS[2]]
    # A "directory" key (what consoles create for an empty folder) is not an input. (Written last: SeaweedFS
    # stalls an overwrite under a prefix holding one for about a minute.)
    client.put_object(Bucket=s3_keys.bucket, Key="prefix/empty-dir/", Body=b"")
    assert list_inputs(src, 0, tmp_path / "cache") == files2


@pytest.mark.parametrize(
    ("access", "secret", "uri", "extra", "reason"),
    [
        ("right", "wrong", "s3://data/err/rows.jsonl", {}, Reason.CREDENTIALS_REJECTED),
        ("right", "wrong", "s3://data/err/", {}, Reason.CREDENTIALS_REJECTED),
        ("unknown", "right", "s3://data/err/", {}, Reason.CREDENTIALS_REJECTED),
        (None, "right", "s3://data/err/", {}, Reason.CREDENTIALS_MISSING),  # env var unset
        ("right", "", "s3://data/err/rows.jsonl", {}, Reason.CREDENTIALS_MISSING),  # env var empty
        ("right", "right", "s3://data/err/", {"secretKeyEnv": None}, Reason.CREDENTIALS_MISSING),  # half a pair
        ("right", "right", "s3://no-such-bucket/rows.jsonl", {}, Reason.SOURCE_UNREACHABLE),
        ("right", "right", "s3://no-such-bucket/", {}, Reason.SOURCE_UNREACHABLE),
        ("right", "right", "s3://data/err/missing.jsonl", {}, Reason.SOURCE_UNREACHABLE),
        ("right", "right", "s3://data/nothing-here/", {}, Reason.SOURCE_UNREACHABLE),
    ],
)
def test_s3_failures_say_why_without_the_keys(
    tmp_path: Path, s3_store: S3Store, monkeypatch: pytest.MonkeyPatch,
    access: str | None, secret: str, uri: str, extra: dict[str, Any], reason: str,
) -> None:  # fmt: skip
    s3_store.client().put_object(Bucket=s3_store.bucket, Key="err/rows.jsonl", Body=encode("jsonl", ROWS))
    values = {"right": s3_store.access_key, "unknown": "AKUNKNOWN0000000"}
    monkeypatch.delenv(ACCESS_ENV, raising=False)
    if access is not None:
        monkeypatch.setenv(ACCESS_ENV, values[access])
    secrets = {"right": s3_store.secret_key, "wrong": "not-the-secret-key-at-all"}
    monkeypatch.setenv(SECRET_ENV, secrets.get(secret, secret))
    with pytest.raises(DataError) as err:
        list_inputs(s3_source(s3_store, uri, **extra), 0, tmp_path / "cache")
    assert err.value.reason == reason
    for key in (s3_store.access_key, s3_store.secret_key, "not-the-secret-key-at-all"):
        assert key not in str(err.value)


def test_s3_keys_revoked_after_listing_are_rejected_when_read(
    tmp_path: Path, s3_keys: S3Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3_keys.client().put_object(Bucket=s3_keys.bucket, Key="late/rows.jsonl", Body=encode("jsonl", ROWS))
    src = s3_source(s3_keys, f"s3://{s3_keys.bucket}/late/")
    (file,) = list_inputs(src, 0, tmp_path / "cache")
    monkeypatch.setenv(SECRET_ENV, "changed-secret")
    with pytest.raises(DataError) as err:
        list(read_batches(src, file, tmp_path / "cache", 1 << 20))
    assert err.value.reason == Reason.CREDENTIALS_REJECTED


# --- hub (no test here reaches a hub: only what fails before or without the network) ---------------
HUB_PROBE = """
import sys
from pathlib import Path
from lepton.api.contract import DataInput
from lepton.workloads.data.errors import DataError
from lepton.workloads.data.sources import list_inputs
try:
    list_inputs(DataInput.model_validate({"hubId": "lepton-test/none", "tokenEnv": "LEPTON_TEST_HUB_TOKEN"}), 0,
                Path(sys.argv[1]))
except DataError as exc:
    print(exc.reason)
"""


@pytest.mark.parametrize(("token", "reason"), [(None, Reason.CREDENTIALS_MISSING), ("hf_x", Reason.SOURCE_UNREACHABLE)])
def test_a_hub_source_fails_plainly_offline(tmp_path: Path, token: str | None, reason: str) -> None:
    # HF_HUB_OFFLINE is read when huggingface_hub is imported: hence a process of its own.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))} | {"HF_HUB_OFFLINE": "1"}
    if token is not None:
        env["LEPTON_TEST_HUB_TOKEN"] = token
    out = subprocess.run([sys.executable, "-c", HUB_PROBE, str(tmp_path)], env=env, capture_output=True, text=True,
                         timeout=60, check=True)  # fmt: skip
    assert out.stdout.strip() == reason

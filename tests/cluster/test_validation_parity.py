"""Validation parity, proven by generation: `leptonctl validate` (lepton.api.validation.parse) accepts
exactly what the real kube-apiserver accepts, and where both reject, every line it prints appears in
the apiserver's message.

Hypothesis mutates the shipped examples (wrong types, out-of-range and huge numbers, integral floats,
inf/NaN, missing, extra, null and snake_case fields, bad names, quantities, references and URIs,
unicode, long strings and lists), at least CASES_PER_KIND distinct manifests per kind, generated up
front with a fixed seed. Each goes to the apiserver as a server-side dry-run create (POST
?dryRun=All&fieldValidation=Strict, as `kubectl create --dry-run=server --validate=strict` sends it,
with the body a Go client would send: 2.0 written as 2), many at once over keep-alive connections.
"""

from __future__ import annotations

import base64
import copy
import http.client
import itertools
import json
import math
import os
import re
import ssl
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from lepton.api import GROUP, KINDS, VERSION
from lepton.api.base import wire_int
from lepton.api.crd import crd_for
from lepton.api.validation import ManifestError, parse
from tests.cluster.kube import Kube
from tests.conftest import EXAMPLES

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

CASES_PER_KIND = int(os.environ.get("LEPTON_PARITY_CASES", "2000"))
SEED = int(os.environ.get("LEPTON_PARITY_SEED", "0"))  # CI: always 0; another seed explores further
WORKERS = 16
Path_ = tuple[str | int, ...]

# --- the apiserver, over HTTP with the kubeconfig's credentials --------------------------------------


class Apiserver:
    """Dry-run creates over one keep-alive HTTPS connection per thread."""

    def __init__(self, kubeconfig: Path) -> None:
        config = yaml.safe_load(kubeconfig.read_text())
        context = next(c["context"] for c in config["contexts"] if c["name"] == config["current-context"])
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
        self._tmp = tempfile.TemporaryDirectory()
        self.ssl = ssl.create_default_context(cafile=self._file(cluster, "certificate-authority"))
        cert, key = self._file(user, "client-certificate"), self._file(user, "client-key")
        if cert and key:
            self.ssl.load_cert_chain(cert, key)
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if user.get("token"):
            self.headers["Authorization"] = f"Bearer {user['token']}"
        self.netloc = urlsplit(cluster["server"]).netloc
        self._local = threading.local()

    def _file(self, section: dict[str, Any], key: str) -> str | None:
        if section.get(key):
            return str(section[key])
        if section.get(f"{key}-data"):
            path = Path(self._tmp.name) / key
            path.write_bytes(base64.b64decode(section[f"{key}-data"]))
            return str(path)
        return None

    def dry_run_create(self, namespace: str, plural: str, body: str) -> tuple[int, str]:
        url = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{plural}?dryRun=All&fieldValidation=Strict"
        for attempt in range(5):
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = http.client.HTTPSConnection(self.netloc, context=self.ssl, timeout=60)
            try:
                conn.request("POST", url, body=body.encode(), headers=self.headers)
                rsp = conn.getresponse()
                data = rsp.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                time.sleep(0.2 * (attempt + 1))
                continue
            if rsp.status == 429 or rsp.status >= 500:
                time.sleep(float(rsp.getheader("Retry-After") or 0.2 * (attempt + 1)))
                continue
            return rsp.status, "" if rsp.status < 300 else str(json.loads(data).get("message", data.decode()))
        raise RuntimeError(f"no answer from the apiserver for {url}")


def go_client_json(doc: Any) -> tuple[str, bool]:
    """The body a Go client sends for this document (json.Marshal writes 2.0 as 2), and whether it
    is JSON at all (.inf and .nan are not: kubectl refuses them, the apiserver cannot parse them)."""

    def convert(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, list):
            return [convert(v) for v in value]
        if isinstance(value, float):
            nonlocal finite
            finite = finite and math.isfinite(value)
            as_int = wire_int(value)
            return as_int if as_int is not None else value
        return value

    finite = True
    body = json.dumps(convert(doc), ensure_ascii=False, allow_nan=True)
    return body, finite


# --- generation ------------------------------------------------------------------------------------------

TEXT = 'aé中😀\u200d\u00a0\u0301١Ａλ-._/:A1 \n\t"\\'
NAMES = [
    "a", "abc", "tiny-gpt2", "a.b", "a-", "-a", "1abc", "9", "Abc", "a_b", "a b", "é", "a\n", "", ".", "a..b",
    "x" * 45, "x" * 50, "x" * 51, "x" * 63, "x" * 64, "x" * 253, "x" * 254, "a" + "-b" * 30, "abc.def.ghi",
]  # fmt: skip
QUANTITIES = [
    "1", "0", "500m", "4Gi", "64Gi", "1.5", ".5", "5.", "+1", "-1", "1e3", "1E3", "1e-3", "1E", "1Ei", "1ki",
    "1k", "1K", "lots", "", " 1", "1 ", "1\n", "١", "0x10", "1e1000", "1.2.3", "Gi", 1, 0, 64, -5, 2**62, 2**63,
    1.5, 2.0, True, None, [], {},
]  # fmt: skip
URIS = [
    "/models/x", "examples/models/tiny-gpt2", "file:///models/x", "s3://bucket/key", "gs://bucket/key",
    "S3://bucket/key", "hdfs://nn/x", "http://example.com/x", "https://example.com/f.jsonl", "s3:/x", "s3",
    "", "x" * 2048, "x" * 2049, "é" * 2048, "😀" * 2049,
]  # fmt: skip
STRINGS = ["", "x", "ok", "eval_loss", "learningRate", "org/model", "a" * 64, "a" * 257, "é中😀", "s3://b/k"]
INTS = [0, 1, -1, 2, 7, 8, 63, 64, 65, 100, 101, 1024, 1025, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53 + 1,
        2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 10**30]  # fmt: skip
FLOATS = [0.0, -0.0, 0.5, 1.0, 2.0, 1.5, 0.999, 1e-9, 1e9, 1e21, 1e30, float(2**63), 3.0, 100000.0, 123456.5]
EDGES = [0.0, 0.001, 0.0005, 0.0010000000000000009, 0.4995, 0.5, 0.5005, 0.9989999999999999, 0.999, 0.9999999999999999,
         1.0, 1.0009999999999999, 1.001, 5e-324, 1e-300, 1e300]  # fmt: skip
NON_FINITE = [math.inf, -math.inf, math.nan]
JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False),
              st.text(TEXT, max_size=6)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(TEXT, max_size=4), inner, max_size=3)),
    max_leaves=6,
)  # fmt: skip
ENVELOPE = ("apiVersion", "kind")  # the URL names the kind; parse checks these two itself
WRONG = [None, True, False, "2", "yes", "", 2, 2.5, [], [1], {}, {"a": 1}, [{"a": 1}]]


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", lambda m: "_" + m.group(1).lower(), name)


@dataclass
class Space:
    """Where mutations can land in one kind's documents: every schema path (set or not)."""

    root: dict[str, Any]
    paths: list[tuple[Path_, dict[str, Any]]] = field(default_factory=list)

    @classmethod
    def of(cls, kind: str) -> Space:
        root = crd_for(KINDS[kind])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        space = cls(root)
        space._walk(("spec",), root["properties"]["spec"])
        return space

    def _walk(self, path: Path_, node: dict[str, Any]) -> None:
        self.paths.append((path, node))
        for name, child in node.get("properties", {}).items():
            self._walk((*path, name), child)
        if "items" in node:
            self._walk((*path, 0), node["items"])
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            self._walk((*path, "cpu" if extra.get("x-kubernetes-int-or-string") else "zone"), extra)


def valid(draw: Any, node: dict[str, Any], depth: int = 0) -> Any:
    """A value the schema node allows (CEL rules aside)."""
    if "enum" in node:
        return draw(st.sampled_from(node["enum"]))
    if node.get("x-kubernetes-int-or-string"):
        return draw(st.sampled_from(["1", "500m", "4Gi", "0", 2, "1.5", "1e3", "64Mi"]))
    kind = node.get("type")
    if kind == "boolean":
        return draw(st.booleans())
    if kind in ("integer", "number"):
        low = node.get("minimum", -5)
        high = node.get("maximum", low + 1000)
        if node.get("exclusiveMinimum"):
            low += 1e-3 if kind == "number" else 1
        if node.get("exclusiveMaximum"):
            high -= 1e-3 if kind == "number" else 1
        if kind == "integer":
            low, high = math.ceil(low), math.floor(high)
            return draw(st.one_of(st.sampled_from([low, high]), st.integers(low, min(high, low + 20)),
                                  st.integers(low, high)))  # fmt: skip
        choices = [st.sampled_from([low, high]), st.floats(low, high)]
        if math.ceil(low) <= math.floor(high):  # e.g. (0, 0.5] holds no integer
            choices.append(st.integers(math.ceil(low), math.floor(high)))
        return draw(st.one_of(*choices))
    if kind == "string":
        pattern = node.get("pattern")
        pool = [s for s in (*NAMES, *URIS, *STRINGS) if isinstance(s, str)]
        low, high = node.get("minLength", 0), node.get("maxLength", 10**9)
        if pattern:
            pool = [s for s in pool if re.fullmatch(pattern[1:-1], s) and low <= len(s) <= high]
        else:
            pool = [s for s in pool if low <= len(s) <= high and "://" not in s] or ["x"]
        if pattern and not pool:
            return draw(st.from_regex(pattern, fullmatch=True).filter(lambda s: low <= len(s) <= high))
        return draw(st.one_of(st.sampled_from(pool), st.text(TEXT, min_size=max(low, 1), max_size=min(high, 12))))
    if kind == "array":
        size = max(node.get("minItems", 0), 1)
        return [valid(draw, node["items"], depth + 1) for _ in range(size)]
    if kind == "object":
        out: dict[str, Any] = {}
        props = node.get("properties", {})
        for name in node.get("required", []):
            out[name] = valid(draw, props[name], depth + 1)
        optional = [n for n in props if n not in out]
        if optional and depth < 3 and draw(st.booleans()):
            name = draw(st.sampled_from(optional))
            out[name] = valid(draw, props[name], depth + 1)
        return out
    return None


def invalid(draw: Any, node: dict[str, Any]) -> Any:
    """A value the schema node (probably) rejects, or an edge of what it allows."""
    kind = node.get("type")
    options: list[Any] = list(WRONG)
    if node.get("x-kubernetes-int-or-string"):
        options = QUANTITIES
    elif kind in ("integer", "number"):
        options += INTS + FLOATS
        for bound in ("minimum", "maximum"):
            if bound in node:
                b = node[bound]
                options += [
                    b - 1,
                    b + 1,
                    b - 0.5,
                    b + 0.5,
                    float(b),
                    math.nextafter(b, -math.inf),
                    math.nextafter(b, math.inf),
                ]
        if draw(st.integers(0, 24)) == 0:
            options = NON_FINITE
    elif kind == "string":
        options += [*NAMES, *URIS, *STRINGS]
        if "maxLength" in node:
            options += ["x" * node["maxLength"], "x" * (node["maxLength"] + 1), "é" * (node["maxLength"] + 1)]
        if "enum" in node:
            options += [v.upper() for v in node["enum"]] + [v + " " for v in node["enum"]]
    elif kind == "array":
        item = valid(draw, node["items"])
        options += [[], [item, item], [None], [item, 5], [item] * (node.get("maxItems", 3) + 1)]
    elif kind == "object":
        options += [{"unknownField": 1}, {k: None for k in node.get("properties", {})}]
    return draw(st.sampled_from(options))


def _get(doc: Any, path: Path_) -> Any:
    for part in path:
        if isinstance(part, int):
            if not isinstance(doc, list) or part >= len(doc):
                return None
        elif not isinstance(doc, dict):
            return None
        doc = doc[part] if isinstance(part, int) else doc.get(part)
    return doc


def _set(doc: dict[str, Any], path: Path_, value: Any) -> None:
    parent: Any = doc
    for part, nxt in itertools.pairwise(path):
        child = _get(parent, (part,))
        if not isinstance(child, list if isinstance(nxt, int) else dict):
            child = [] if isinstance(nxt, int) else {}
            _put(parent, part, child, fresh=True)
        parent = _get(parent, (part,))
    _put(parent, path[-1], value)


def _put(parent: Any, key: str | int, value: Any, fresh: bool = False) -> None:
    value = value if fresh else copy.deepcopy(value)  # the pools' lists and dicts are shared
    if isinstance(key, int):
        if key < len(parent):
            parent[key] = value
        else:
            parent.append(value)
    else:
        parent[key] = value


def _objects(doc: Any, path: Path_ = ()) -> list[Path_]:
    out = [path] if isinstance(doc, dict) else []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else []
    for key, child in items:
        out += _objects(child, (*path, key))
    return out


def mutations(space: Space) -> list[Callable[[Any, dict[str, Any]], None]]:
    def set_valid(draw: Any, doc: dict[str, Any]) -> None:
        path, node = draw(st.sampled_from(space.paths))
        _set(doc, path, valid(draw, node))

    def set_invalid(draw: Any, doc: dict[str, Any]) -> None:
        path, node = draw(st.sampled_from(space.paths))
        _set(doc, path, invalid(draw, node))

    def delete(draw: Any, doc: dict[str, Any]) -> None:
        path = draw(st.sampled_from(_objects(doc)))
        target = _get(doc, path)
        keys = sorted(k for k in target if path or k not in ENVELOPE)
        if keys:
            del target[draw(st.sampled_from(keys))]

    def add_unknown(draw: Any, doc: dict[str, Any]) -> None:
        target = _get(doc, draw(st.sampled_from(_objects(doc))))
        names = [_snake(k) for k in target if _snake(k) != k] + ["extra", "gpuPerNode", "é", "a.b", "status"]
        _put(target, draw(st.sampled_from(names)), draw(st.sampled_from([0, "x", None, {}, {"a": 1}, [1]])))

    def snake_case(draw: Any, doc: dict[str, Any]) -> None:
        path = draw(st.sampled_from(_objects(doc)))
        target = _get(doc, path)
        camel = [k for k in target if _snake(k) != k and (path or k not in ENVELOPE)]
        if camel:
            key = draw(st.sampled_from(camel))
            target[_snake(key)] = target.pop(key)

    def rename(draw: Any, doc: dict[str, Any]) -> None:
        if isinstance(doc.get("metadata"), dict):
            doc["metadata"]["name"] = draw(st.one_of(st.sampled_from(NAMES), st.text(TEXT + "abc-.1", max_size=8)))

    def odd_metadata(draw: Any, doc: dict[str, Any]) -> None:
        key, value = draw(st.sampled_from([("name", 5), ("name", None), ("labels", {"a": 1}), ("labels", {"a": "b"}),
                                           ("extra", "x"), ("annotations", []), ("generateName", True)]))  # fmt: skip
        if isinstance(doc.get("metadata"), dict):
            _put(doc["metadata"], key, value)

    def quantity(draw: Any, doc: dict[str, Any]) -> None:
        paths = [p for p, n in space.paths if n.get("x-kubernetes-int-or-string")]
        if paths:
            path = draw(st.sampled_from(paths))
            key = draw(st.sampled_from(["cpu", "memory", "nvidia.com/gpu", "ephemeral-storage", "lots of"]))
            _set(doc, (*path[:-1], key), draw(st.sampled_from(QUANTITIES)))

    def number_edge(draw: Any, doc: dict[str, Any]) -> None:  # e.g. split fractions around a sum of 1
        paths = [p for p, n in space.paths if n.get("type") == "number"]
        if paths:
            _set(doc, draw(st.sampled_from(paths)), draw(st.sampled_from(EDGES)))

    def any_json(draw: Any, doc: dict[str, Any]) -> None:
        paths = [p for p in _objects(doc) if p]
        target = _get(doc, draw(st.sampled_from(paths))) if paths else None
        if target:
            _put(target, draw(st.sampled_from(sorted(target))), draw(JSON))

    def uri(draw: Any, doc: dict[str, Any]) -> None:
        paths = [p for p, _ in space.paths if p[-1] == "uri"]
        _set(doc, draw(st.sampled_from(paths)), draw(st.sampled_from(URIS)))

    weighted = [(set_valid, 6), (set_invalid, 6), (delete, 2), (add_unknown, 1), (snake_case, 1), (rename, 2),
                (odd_metadata, 1), (quantity, 1), (uri, 2), (number_edge, 2), (any_json, 1)]  # fmt: skip
    return [m for m, weight in weighted for _ in range(weight)]


def bases(kind: str) -> list[dict[str, Any]]:
    """The shipped valid examples of `kind` (the quickstart's included)."""
    paths = sorted(EXAMPLES.glob("*.yaml")) + sorted(EXAMPLES.glob("quickstart/*.yaml"))
    docs = [yaml.safe_load(p.read_text()) for p in paths]
    return [d for d in docs if d.get("kind") == kind]


def generate(kind: str, count: int) -> list[dict[str, Any]]:
    """At least `count` distinct mutated manifests of `kind`, the same ones on every run (fixed seeds)."""
    space, docs = Space.of(kind), bases(kind)
    moves = mutations(space)
    seen: dict[str, dict[str, Any]] = {}

    @st.composite
    def manifest(draw: Any) -> dict[str, Any]:
        doc = copy.deepcopy(draw(st.sampled_from(docs)))
        for _ in range(draw(st.sampled_from([1, 1, 1, 2, 2, 3]))):
            draw(st.sampled_from(moves))(draw, doc)
        return doc

    for round_ in range(10):  # hypothesis repeats itself: rounds with fixed seeds until there are enough

        @hypothesis.seed(SEED + round_)
        @hypothesis.settings(
            max_examples=count,
            database=None,
            deadline=None,
            phases=[hypothesis.Phase.generate],
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        @hypothesis.given(manifest())
        def collect(doc: dict[str, Any]) -> None:
            seen.setdefault(json.dumps(doc, sort_keys=True, default=repr), doc)

        collect()
        if len(seen) >= count:
            break
    assert len(seen) >= count, f"{kind}: only {len(seen)} distinct cases generated"
    return list(seen.values())


# --- the test --------------------------------------------------------------------------------------------


@dataclass
class Case:
    kind: str
    doc: dict[str, Any]
    local: list[str] | None = None  # None: accepted
    status: int = 0
    message: str = ""
    json_ok: bool = True


def local_verdict(doc: dict[str, Any]) -> list[str] | None:
    try:
        parse(doc)
    except ManifestError as exc:
        return exc.problems
    return None


def disagreement(case: Case) -> str | None:
    accepted = case.status == 201
    if accepted != (case.local is None):
        return "apiserver accepts, local rejects" if accepted else "apiserver rejects, local accepts"
    if accepted or not case.json_ok:
        return None
    missing = [line for line in case.local or [] if line not in case.message]
    return f"local lines not in the apiserver's message: {missing}" if missing else None


def test_local_validation_agrees_with_the_apiserver(
    kube: Kube, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    cases = [Case(kind, doc) for kind in KINDS for doc in generate(kind, CASES_PER_KIND)]
    generated_s = time.monotonic() - started
    for case in cases:
        case.local = local_verdict(case.doc)
    api = Apiserver(kube.kubeconfig)

    def send(case: Case) -> None:
        body, case.json_ok = go_client_json(case.doc)
        case.status, case.message = api.dry_run_create(namespace, KINDS[case.kind].plural, body)

    sent = time.monotonic()
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(send, cases))
    finished = time.monotonic()

    counts: Counter[tuple[str, str]] = Counter()
    wrong: list[tuple[Case, str]] = []
    for case in cases:
        counts[case.kind, "cases"] += 1
        counts[case.kind, "accepted" if case.status == 201 else "rejected"] += 1
        counts[case.kind, "not JSON (inf/NaN)"] += not case.json_ok
        counts[case.kind, "local lines compared"] += len(case.local or []) if case.json_ok else 0
        problem = disagreement(case)
        if problem:
            wrong.append((case, problem))
    rate = len(cases) / (finished - sent)
    lines = [
        f"validation parity: {len(cases)} cases, {len(wrong)} disagreements; generated and checked locally in "
        f"{sent - started:.1f}s (generation {generated_s:.1f}s), apiserver dry runs {finished - sent:.1f}s "
        f"({rate:.0f}/s, {WORKERS} at once)"
    ]
    columns = ("cases", "accepted", "rejected", "local lines compared", "not JSON (inf/NaN)")
    lines += [f"  {kind}: " + ", ".join(f"{counts[kind, c]} {c}" for c in columns) for kind in KINDS]
    with capsys.disabled():  # the counts belong in every run's log, not only a failing one's
        print("\n" + "\n".join(lines))
    for case, problem in wrong[:15]:
        print(f"\n--- {case.kind}: {problem}\n{json.dumps(case.doc, ensure_ascii=False, default=repr)}\n"
              f"local: {case.local}\napiserver {case.status}: {case.message}", file=sys.stderr)  # fmt: skip
    assert not wrong, f"{len(wrong)} disagreements (first ones above)"
    for kind in KINDS:
        assert counts[kind, "accepted"] and counts[kind, "rejected"], f"{kind}: the cases do not cover both verdicts"

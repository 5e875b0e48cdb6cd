"""Closed-loop HTTP load from a separate process, for P3 (benchmarks/server_throughput.py).

Closed loop: C workers each send a request, wait for its answer and send the next, so exactly C requests
are in flight and the offered load follows the server's speed (what concurrency C means). The generator
is vegeta (`attack -rate=0 -workers=C -max-workers=C`), built once from the Go module proxy into
$LEPTON_CACHE/bin/vegeta-<version>/ (default ~/.cache/lepton) when missing, like hack/build-binaries.sh
does for the control plane (but not by it: CI does not need vegeta). When it cannot be built, the same
closed loop runs in a separate Python process with aiohttp (`python -m benchmarks.loadgen ...`).

Both give per-request records; `summarize` counts only successful requests (HTTP 200, no transport error)
in throughput and latency, and counts the rest as errors by message.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

VEGETA_VERSION = "v12.13.0"
VEGETA_MODULE = "github.com/tsenart/vegeta/v12"
TIMEOUT_S = 60


@dataclass(frozen=True)
class Hit:
    """One request: start (unix seconds), latency (seconds), HTTP code (0: none), error, response body."""

    start: float
    latency: float
    code: int
    error: str
    body: bytes


@dataclass
class Load:
    """What one attack measured; rates and latencies over successful requests only."""

    concurrency: int
    requests: int
    ok: int
    rps: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    errors: Counter[str] = field(default_factory=Counter)
    texts: Counter[str] = field(default_factory=Counter)  # completion text of each successful answer
    completion_tokens: Counter[int] = field(default_factory=Counter)  # usage.completion_tokens (-1: absent)

    @property
    def failed(self) -> int:
        return self.requests - self.ok


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (the value below which a fraction q of the samples lie); nan when empty."""
    if not sorted_values:
        return math.nan
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def summarize(hits: list[Hit], concurrency: int) -> Load:
    """Throughput = successes / (last answer - first request), the window vegeta's own report uses."""
    good = [h for h in hits if h.code == 200 and not h.error]
    lat = sorted(h.latency for h in good)
    window = max((h.start + h.latency for h in hits), default=0.0) - min((h.start for h in hits), default=0.0)
    load = Load(concurrency, len(hits), len(good), len(good) / window if window > 0 else 0.0,
                percentile(lat, 0.50) * 1e3, percentile(lat, 0.99) * 1e3,
                sum(lat) / len(lat) * 1e3 if lat else math.nan)  # fmt: skip
    for h in hits:
        if h.code != 200 or h.error:
            load.errors[h.error or f"HTTP {h.code}: {h.body[:120].decode(errors='replace')}"] += 1
            continue
        try:
            answer = json.loads(h.body)
            load.texts[answer["choices"][0]["text"]] += 1
            load.completion_tokens[int(answer.get("usage", {}).get("completion_tokens", -1))] += 1
        except (ValueError, KeyError, IndexError, TypeError):
            load.texts["<unparsable answer>"] += 1
    return load


class Generator(Protocol):
    name: str

    def attack(self, url: str, bodies: list[bytes], concurrency: int, duration: float) -> list[Hit]: ...


def _log(msg: str) -> None:
    print(f"[loadgen] {msg}", file=sys.stderr, flush=True)


def vegeta_path() -> Path:
    cache = Path(os.environ.get("LEPTON_CACHE") or Path.home() / ".cache" / "lepton")
    return cache / "bin" / f"vegeta-{VEGETA_VERSION}" / "vegeta"


def ensure_vegeta() -> Path | None:
    """The cached vegeta, built with `go install` only when missing (into a temporary directory, then renamed
    into place, so an interrupted build leaves nothing behind); None when it cannot be built."""
    dest = vegeta_path()
    if os.access(dest, os.X_OK):
        return dest
    if shutil.which("go") is None:
        _log("no go tool: cannot build vegeta")
        return None
    _log(f"building vegeta {VEGETA_VERSION} into {dest.parent} (once)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        env = {**os.environ, "GOBIN": tmp, "GOTOOLCHAIN": "local", "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false"}
        proc = subprocess.run(["go", "install", "-trimpath", "-ldflags", "-s -w", f"{VEGETA_MODULE}@{VEGETA_VERSION}"],
                              env=env, capture_output=True, text=True, check=False)  # fmt: skip
        if proc.returncode != 0:
            _log(f"vegeta build failed:\n{proc.stderr[-2000:]}")
            return None
        os.replace(Path(tmp) / "vegeta", dest)
    return dest


@dataclass
class Vegeta:
    path: Path
    name: str = f"vegeta {VEGETA_VERSION}"

    def attack(self, url: str, bodies: list[bytes], concurrency: int, duration: float) -> list[Hit]:
        with tempfile.TemporaryDirectory() as tmp:
            targets, results = Path(tmp) / "targets.jsonl", Path(tmp) / "results.bin"
            targets.write_text("".join(json.dumps({
                "method": "POST", "url": url, "body": base64.b64encode(b).decode(),
                "header": {"Content-Type": ["application/json"]}}) + "\n" for b in bodies))  # fmt: skip
            subprocess.run([str(self.path), "attack", "-format=json", f"-targets={targets}", "-rate=0",
                            f"-workers={concurrency}", f"-max-workers={concurrency}", f"-duration={duration}s",
                            f"-timeout={TIMEOUT_S}s", f"-output={results}"], check=True)  # fmt: skip
            enc = subprocess.run([str(self.path), "encode", "-to=csv", str(results)], capture_output=True,
                                 text=True, check=True)  # fmt: skip
        # csv columns: timestamp (unix ns), code, latency (ns), bytes out, bytes in, error, body (base64), ...
        return [Hit(int(r[0]) / 1e9, int(r[2]) / 1e9, int(r[1]), r[5], base64.b64decode(r[6]))
                for r in csv.reader(enc.stdout.splitlines()) if r]  # fmt: skip


@dataclass
class PythonLoad:
    """The fallback: the same closed loop in a separate Python process (this module's `main`)."""

    name: str = "Python aiohttp closed loop (vegeta could not be built)"

    def attack(self, url: str, bodies: list[bytes], concurrency: int, duration: float) -> list[Hit]:
        with tempfile.TemporaryDirectory() as tmp:
            src, out = Path(tmp) / "bodies.jsonl", Path(tmp) / "hits.jsonl"
            src.write_text("".join(json.dumps(b.decode()) + "\n" for b in bodies))
            subprocess.run([sys.executable, "-m", "benchmarks.loadgen", "--url", url, "--bodies", str(src),
                            "--concurrency", str(concurrency), "--duration", str(duration), "--out", str(out)],
                           check=True, cwd=Path(__file__).resolve().parent.parent)  # fmt: skip
            rows = [json.loads(line) for line in out.read_text().splitlines()]
        return [Hit(r["start"], r["latency"], r["code"], r["error"], base64.b64decode(r["body"])) for r in rows]


def generator(force_python: bool = False) -> Generator:
    path = None if force_python else ensure_vegeta()
    return Vegeta(path) if path else PythonLoad()


async def _closed_loop(url: str, bodies: list[bytes], concurrency: int, duration: float) -> list[Hit]:
    import aiohttp

    hits: list[Hit] = []
    deadline = time.monotonic() + duration
    counter = iter(range(1 << 62))
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency), timeout=timeout) as session:

        async def worker() -> None:
            while time.monotonic() < deadline:
                body = bodies[next(counter) % len(bodies)]
                start, t0 = time.time(), time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        data = await resp.read()
                    hits.append(Hit(start, time.perf_counter() - t0, resp.status, "", data))
                except (aiohttp.ClientError, TimeoutError) as exc:
                    hits.append(Hit(start, time.perf_counter() - t0, 0, f"{type(exc).__name__}: {exc}", b""))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return hits


def main() -> None:
    parser = argparse.ArgumentParser(description="closed-loop POST load (P3's fallback generator)")
    parser.add_argument("--url", required=True)
    parser.add_argument("--bodies", type=Path, required=True, help="JSON lines, each a request body as a string")
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    bodies = [json.loads(line).encode() for line in args.bodies.read_text().splitlines() if line.strip()]
    hits = asyncio.run(_closed_loop(args.url, bodies, args.concurrency, args.duration))
    rows = ({"start": h.start, "latency": h.latency, "code": h.code, "error": h.error,
             "body": base64.b64encode(h.body).decode()} for h in hits)  # fmt: skip
    args.out.write_text("".join(json.dumps(row) + "\n" for row in rows))


if __name__ == "__main__":
    main()
